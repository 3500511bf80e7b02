/*
 * provider.c - the test GEMM provider of provider.h.
 */
#include "provider.h"

#include <stdio.h>
#include <string.h>

test_provider test_provider_make(long decline_every)
{
    test_provider p;
    memset(&p, 0, sizeof p);
    p.decline_every = decline_every;
    p.owner = pthread_self();
    return p;
}

/* Bytes [lo, hi) a strided (rows, cols) view spans. */
static void span(const void *p, int64_t rows, int64_t cols, int64_t rs, int64_t cs, size_t es,
                 uintptr_t *lo, uintptr_t *hi)
{
    *lo = (uintptr_t)p;
    *hi = *lo + (uintptr_t)(((rows - 1) * rs + (cols - 1) * cs) * (int64_t)es + (int64_t)es);
}

static void note_bad(test_provider *t, const char *what)
{
    if (t->bad++ == 0)
        snprintf(t->first_bad, sizeof t->first_bad, "%s", what);
}

int test_provider_gemm(neat_dtype dtype, int64_t M, int64_t N, int64_t K, double alpha,
                       const void *A, int64_t rsa, int64_t csa, const void *B, int64_t rsb,
                       int64_t csb, double beta, void *C, int64_t rsc, int64_t csc, void *user)
{
    test_provider *t = user;
    t->calls++;
    if (!pthread_equal(pthread_self(), t->owner))
        note_bad(t, "called from a thread other than the caller's");
    if (dtype != NEAT_FLOAT32 && dtype != NEAT_FLOAT64) {
        note_bad(t, "dtype is not float32 or float64");
        return 1;
    }
    if (M <= 16 || N <= 16 || K <= 16)
        note_bad(t, "a dim <= 16 (only the large products belong to the provider)");
    if (rsa < 0 || csa < 0 || rsb < 0 || csb < 0 || rsc <= 0 || csc <= 0 ||
        !(rsc >= N * csc || csc >= M * rsc))
        note_bad(t, "bad strides (C's elements must be distinct)");
    size_t es = dtype == NEAT_FLOAT64 ? 8 : 4;
    uintptr_t clo, chi, alo, ahi, blo, bhi;
    span(C, M, N, rsc, csc, es, &clo, &chi);
    span(A, M, K, rsa, csa, es, &alo, &ahi);
    span(B, K, N, rsb, csb, es, &blo, &bhi);
    if ((clo < ahi && alo < chi) || (clo < bhi && blo < chi))
        note_bad(t, "C overlaps A or B");
    if (t->bad)
        return 1;
    if (t->decline_every > 0 && t->calls % t->decline_every == 0) {
        t->declined++;
        return 1;
    }
    t->beta_nonzero += beta != 0;
    for (int64_t i = 0; i < M; i++)
        for (int64_t j = 0; j < N; j++) {
            double acc = 0;
            for (int64_t k = 0; k < K; k++)
                acc += dtype == NEAT_FLOAT64
                           ? ((const double *)A)[i * rsa + k * csa] *
                                 ((const double *)B)[k * rsb + j * csb]
                           : (double)((const float *)A)[i * rsa + k * csa] *
                                 (double)((const float *)B)[k * rsb + j * csb];
            if (dtype == NEAT_FLOAT64) {
                double *c = &((double *)C)[i * rsc + j * csc];
                *c = alpha * acc + (beta == 0 ? 0.0 : beta * *c);
            } else {
                float *c = &((float *)C)[i * rsc + j * csc];
                *c = (float)(alpha * acc + (beta == 0 ? 0.0 : beta * (double)*c));
            }
        }
    return 0;
}
