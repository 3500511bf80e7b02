/*
 * test_gemm.c - ops/gemm.c against a naive loop: odd sizes (0, 1, not multiples of the register
 * tile or cache blocks), every transpose / stride combination, beta 0 over NaN-filled C,
 * beta != 0, alpha != 1, the skinny paths (one dimension <= 16), and bit-identical results for
 * any lane count.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "gemm.h"
#include "util.h"

/* Runs lanes in reverse order: any dependence of the result on lane order would show. */
static void reverse_for(int64_t begin, int64_t end, int64_t grain, neat_parallel_body body,
                        void *ctx, void *user)
{
    (void)grain, (void)user;
    for (int64_t i = end - 1; i >= begin; i--) body(i, i + 1, ctx);
}

static uint64_t rng = 42;

static void run_case(neat_dtype dt, int64_t M, int64_t N, int64_t K, int la, int lb, int lc,
                     double alpha, double beta)
{
    double *a = xmalloc((size_t)(M * K + 1) * sizeof(double));
    double *b = xmalloc((size_t)(K * N + 1) * sizeof(double));
    double *c0 = xmalloc((size_t)(M * N + 1) * sizeof(double));
    double *ref = xmalloc((size_t)(M * N + 1) * sizeof(double));
    double *got = xmalloc((size_t)(M * N + 1) * sizeof(double));
    fill_random(&rng, a, M * K, -1, 1);
    fill_random(&rng, b, K * N, -1, 1);
    fill_random(&rng, c0, M * N, -1, 1);
    round_to(dt, a, M * K), round_to(dt, b, K * N), round_to(dt, c0, M * N);
    double fill = beta == 0 ? NAN : 0.25;
    tbuf A = tb_make(dt, M, K, la, a, 0.5), B = tb_make(dt, K, N, lb, b, 0.5);
    tbuf C = tb_make(dt, M, N, lc, beta == 0 ? NULL : c0, fill);
    for (int64_t i = 0; i < M; i++)
        for (int64_t j = 0; j < N; j++) {
            double s = 0;
            for (int64_t k = 0; k < K; k++) s += a[i * K + k] * b[k * N + j];
            ref[i * N + j] = alpha * s + (beta == 0 ? 0 : beta * c0[i * N + j]);
        }
    void *scratch = xmalloc(neat_gemm_scratch_bytes_mnk(dt, M, N, K, 1));
    neat_gemm(dt, M, N, K, alpha, A.t.data, A.t.strides[0], A.t.strides[1], B.t.data,
              B.t.strides[0], B.t.strides[1], beta, C.t.data, C.t.strides[0], C.t.strides[1],
              scratch, NULL);
    tb_read(&C, got);
    double err = rel_err(got, ref, M * N), tol = dt == NEAT_FLOAT64 ? 1e-13 : 2e-6;
    int nan_free = 1;
    for (int64_t i = 0; i < M * N; i++)
        if (isnan(got[i]))
            nan_free = 0;
    CHECK(nan_free && err <= tol, "%s M=%lld N=%lld K=%lld layouts A%d B%d C%d alpha=%g beta=%g: "
          "rel err %.3g (tol %g)%s",
          dt == NEAT_FLOAT64 ? "f64" : "f32", (long long)M, (long long)N, (long long)K, la, lb,
          lc, alpha, beta, err, tol, nan_free ? "" : ", NaN in output");
    if (!(nan_free && err <= tol))
        print_mismatches("C", got, ref, M, N, tol);
    CHECK(tb_padding_is(&C, fill), "C's padding was written (M=%lld N=%lld K=%lld)",
          (long long)M, (long long)N, (long long)K);

    /* any lane count, any lane order: the same bits */
    if (M * N * K > 0) {
        tbuf C2 = tb_make(dt, M, N, lc, beta == 0 ? NULL : c0, fill);
        void *scratch7 = xmalloc(neat_gemm_scratch_bytes_mnk(dt, M, N, K, 7));
        neat_exec ex = {reverse_for, NULL, 7, NULL};
        neat_gemm(dt, M, N, K, alpha, A.t.data, A.t.strides[0], A.t.strides[1], B.t.data,
                  B.t.strides[0], B.t.strides[1], beta, C2.t.data, C2.t.strides[0],
                  C2.t.strides[1], scratch7, &ex);
        size_t bytes = (size_t)C.storage_elems * (dt == NEAT_FLOAT64 ? 8 : 4);
        CHECK(memcmp(C.storage, C2.storage, bytes) == 0,
              "7 lanes differ from 1 lane (M=%lld N=%lld K=%lld)", (long long)M, (long long)N,
              (long long)K);
        free(scratch7);
        tb_free(&C2);
    }
    free(scratch);
    tb_free(&A), tb_free(&B), tb_free(&C);
    free(a), free(b), free(c0), free(ref), free(got);
}

int main(void)
{
    /* small shapes get every layout combination; large ones a few */
    static const int64_t small[][3] = {
        {1, 1, 1}, {0, 5, 3}, {5, 0, 3}, {5, 3, 0}, {3, 1, 7}, {1, 9, 4},
        {17, 33, 19}, {14, 32, 5}, {29, 7, 13}, {8, 24, 9}, {2, 40, 3},
    };
    static const int64_t large[][3] = {
        {15, 31, 385},  /* K over both KC */
        {300, 70, 50},  /* M over MC (f64) */
        {29, 1030, 7},  /* N over NC */
        {300, 8, 64},   /* skinny N: computed transposed */
        {341, 5, 20},   /* M over MC (f32), skinny */
        {8, 300, 257},  /* skinny M */
        {97, 113, 263},
        {2000, 7, 600}, /* skinny N, long K: the dot path, split over lanes */
        {9, 2000, 600}, /* skinny M: the direct path, K slices, split over lanes */
        {3, 37, 700},   /* skinny M, short last strip */
    };
    static const double ab[][2] = {{1, 0}, {-0.7, 1}, {1.3, 0.5}, {2, 0}};
    int n_small = (int)(sizeof small / sizeof small[0]);
    int n_large = (int)(sizeof large / sizeof large[0]);
    for (int d = 0; d < 2; d++) {
        neat_dtype dt = d ? NEAT_FLOAT64 : NEAT_FLOAT32;
        int idx = 0;
        for (int s = 0; s < n_small; s++)
            for (int la = 0; la < LAYOUT_COUNT; la++)
                for (int lb = 0; lb < LAYOUT_COUNT; lb++)
                    for (int lc = 0; lc < LAYOUT_COUNT; lc++, idx++)
                        run_case(dt, small[s][0], small[s][1], small[s][2], la, lb, lc,
                                 ab[idx % 4][0], ab[idx % 4][1]);
        for (int s = 0; s < n_large; s++)
            for (int l = 0; l < LAYOUT_COUNT; l++, idx++)
                run_case(dt, large[s][0], large[s][1], large[s][2], l, (l + 1) % LAYOUT_COUNT,
                         (l + 2) % LAYOUT_COUNT, ab[idx % 4][0], ab[idx % 4][1]);
    }
    return check_exit("test_gemm");
}
