/*
 * bench_qgemm.c - the cost of the frozen products with a quantized W (ops/qgemm.c: dequantize a
 * panel, multiply it) against the float GEMM on the same, dequantized W; a tool, not a test
 * (timings never gate tests). Best of 5, float32, interleaved, with 1 and 2 threads through a
 * pthread parallel-for. Usage: bench_qgemm [N d_out d_in]
 */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "gemm.h"
#include "qgemm.h"
#include "qref.h"
#include "quant.h"
#include "util.h"

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static void bench(const qref_spec *qs, int64_t N, int64_t d_out, int64_t d_in, int threads)
{
    uint64_t rng = 7;
    qref r;
    qref_make(&r, qs, NEAT_FLOAT32, d_out, d_in, GUARD_BACK, &rng);
    float *W = xmalloc((size_t)(d_out * d_in) * 4);
    neat_dequant_panel(&r.q, NEAT_FLOAT32, 0, d_out, 0, d_in, W, d_in);
    float *x = xmalloc((size_t)(N * d_in) * 4), *dy = xmalloc((size_t)(N * d_out) * 4);
    float *y = xmalloc((size_t)(N * d_out) * 4), *dx = xmalloc((size_t)(N * d_in) * 4);
    for (int64_t i = 0; i < N * d_in; i++) x[i] = (float)rng_uniform(&rng, -1, 1);
    for (int64_t i = 0; i < N * d_out; i++) dy[i] = (float)rng_uniform(&rng, -1, 1);
    int th = threads;
    neat_exec ex = {pthread_parallel_for, &th, th, NULL, 0, NULL, NULL, NULL};
    size_t sb = neat_gemm_scratch_bytes_mnk(NEAT_FLOAT32, N, d_out, d_in, threads);
    size_t sb2 = neat_gemm_scratch_bytes_mnk(NEAT_FLOAT32, N, d_in, d_out, threads);
    size_t qb = neat_qgemm_scratch_bytes(NEAT_FLOAT32, &r.q, 1, N, 0, threads);
    size_t qb2 = neat_qgemm_scratch_bytes(NEAT_FLOAT32, &r.q, 0, N, 0, threads);
    void *s = xmalloc(sb > sb2 ? sb : sb2), *qs_ = xmalloc(qb > qb2 ? qb : qb2);
    float *P = xmalloc((size_t)(d_out * d_in) * 4);
    double best[5] = {1e30, 1e30, 1e30, 1e30, 1e30};
    for (int rep = 0; rep < 5; rep++) {
        for (int v = 0; v < 5; v++) {
            double t = now();
            switch (v) {
            case 0: /* y = x W^T, float W */
                neat_gemm(NEAT_FLOAT32, N, d_out, d_in, 1.0, x, d_in, 1, W, 1, d_in, 0.0, y,
                          d_out, 1, s, &ex);
                break;
            case 1: /* the same over panels of the quantized W */
                neat_qgemm(NEAT_FLOAT32, &r.q, 1, N, x, d_in, 1, y, d_out, 1, NULL, qs_, &ex);
                break;
            case 2: /* dx = dy W, float W */
                neat_gemm(NEAT_FLOAT32, N, d_in, d_out, 1.0, dy, d_out, 1, W, d_in, 1, 0.0, dx,
                          d_in, 1, s, &ex);
                break;
            case 3:
                neat_qgemm(NEAT_FLOAT32, &r.q, 0, N, dy, d_out, 1, dx, d_in, 1, NULL, qs_, &ex);
                break;
            default: /* dequantizing all of W once, for scale */
                neat_dequant_panel_par(&r.q, NEAT_FLOAT32, 0, d_out, 0, d_in, P, d_in, &ex);
                break;
            }
            t = now() - t;
            best[v] = t < best[v] ? t : best[v];
        }
    }
    char name[64];
    qref_describe(qs, name, sizeof name);
    double gf = 2.0 * (double)N * (double)d_out * (double)d_in / 1e9;
    printf("%-22s N=%lld d_out=%lld d_in=%lld threads=%d: x W^T float %.2f ms (%.0f GFLOP/s), "
           "quantized %.2f ms (x%.3f); dy W float %.2f ms, quantized %.2f ms (x%.3f); "
           "dequantizing all of W %.2f ms\n",
           name, (long long)N, (long long)d_out, (long long)d_in, threads, best[0] * 1e3,
           gf / best[0], best[1] * 1e3, best[1] / best[0], best[2] * 1e3, best[3] * 1e3,
           best[3] / best[2], best[4] * 1e3);
    free(W), free(x), free(dy), free(y), free(dx), free(s), free(qs_), free(P);
    qref_free(&r);
}

int main(int argc, char **argv)
{
    int64_t N = 2048, d_out = 1024, d_in = 1024;
    if (argc == 4)
        N = atoll(argv[1]), d_out = atoll(argv[2]), d_in = atoll(argv[3]);
    const qref_spec specs[] = {{NEAT_QFMT_NF4, 0, 64, 0, 0},
                               {NEAT_QFMT_NF4, 1, 64, 256, 0},
                               {NEAT_QFMT_INT8_ROW, 0, 0, 0, 0}};
    for (int t = 1; t <= 2; t++)
        for (int i = 0; i < 3; i++) bench(&specs[i], N, d_out, d_in, t);
    return 0;
}
