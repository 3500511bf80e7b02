/*
 * bench_gemm.c - single-thread GFLOP/s of ops/gemm.c and the time of a NEAT layer's forward +
 * backward, on random data; a tool, not a test (timings never gate tests). Usage:
 * bench_gemm [M N K | fused]
 */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "gemm.h"
#include "layer.h"
#include "util.h"

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* Random values in [-1, 1): timing on zeros would flatter the kernel (and the memory system). */
static void fill(neat_dtype dt, void *p, int64_t n, uint64_t *state)
{
    for (int64_t i = 0; i < n; i++) {
        double v = rng_uniform(state, -1, 1);
        if (dt == NEAT_FLOAT64)
            ((double *)p)[i] = v;
        else
            ((float *)p)[i] = (float)v;
    }
}

/* Best of 5 single-thread runs of C = A B; tb: B is a transposed view (rsb = 1, as W in x W^T). */
static void bench(neat_dtype dt, int64_t M, int64_t N, int64_t K, int tb)
{
    size_t es = dt == NEAT_FLOAT64 ? 8 : 4;
    uint64_t rng = 1;
    void *A = xmalloc((size_t)(M * K) * es), *B = xmalloc((size_t)(K * N) * es);
    void *C = xmalloc((size_t)(M * N) * es);
    fill(dt, A, M * K, &rng), fill(dt, B, K * N, &rng);
    void *scratch = xmalloc(neat_gemm_scratch_bytes_mnk(dt, M, N, K, 1));
    double best = 1e30;
    for (int rep = 0; rep < 5; rep++) {
        double t = now();
        neat_gemm(dt, M, N, K, 1.0, A, K, 1, B, tb ? 1 : N, tb ? K : 1, 0.0, C, N, 1, scratch,
                  NULL);
        t = now() - t;
        best = t < best ? t : best;
    }
    printf("gemm %s M=%lld N=%lld K=%lld B%s: %.1f GFLOP/s\n", dt == NEAT_FLOAT64 ? "f64" : "f32",
           (long long)M, (long long)N, (long long)K, tb ? "^T" : "", 2.0 * (double)(M * N * K) / best / 1e9);
    free(A), free(B), free(C), free(scratch);
}

static void bench_layer(int64_t d, int64_t N, int64_t r)
{
    layer_spec s = {N, d, d, r, NEAT_ACT_RELU, 0, 1, NEAT_FLOAT32, 0, 0, 0, 1.0, 1};
    layer l;
    layer_init(&l, &s);
    tbuf y = tb_make(NEAT_FLOAT32, N, d, 0, NULL, 0), dx = tb_make(NEAT_FLOAT32, N, d, 0, NULL, 0);
    tbuf dA = tb_make(NEAT_FLOAT32, r, d, 0, NULL, 0), dB = tb_make(NEAT_FLOAT32, d, r, 0, NULL, 0);
    neat_grads g = {&dx.t, NULL, NULL, &dA.t, &dB.t, NULL};
    double best = 1e30;
    for (int rep = 0; rep < 3; rep++) {
        double t = now();
        call_forward(1, &y.t, &l.args, NULL);
        call_backward(1, &g, &l.tdy.t, &l.args, NULL);
        t = now() - t;
        best = t < best ? t : best;
    }
    /* the floor (docs/design.md §5): the frozen layer's own two matmuls, x W^T and dy W */
    void *scratch = malloc(neat_gemm_scratch_bytes_mnk(NEAT_FLOAT32, N, d, d, 1));
    double floor = 1e30;
    for (int rep = 0; rep < 3; rep++) {
        double t = now();
        neat_gemm(NEAT_FLOAT32, N, d, d, 1.0, l.tx.t.data, d, 1, l.tW.t.data, 1, d, 0.0,
                  y.t.data, d, 1, scratch, NULL);
        neat_gemm(NEAT_FLOAT32, N, d, d, 1.0, l.tdy.t.data, d, 1, l.tW.t.data, d, 1, 0.0,
                  dx.t.data, d, 1, scratch, NULL);
        t = now() - t;
        floor = t < floor ? t : floor;
    }
    free(scratch);
    printf("layer f32 d=%lld N=%lld r=%lld fwd+bwd (dx, dA, dB): %.1f ms = %.2f x its two main "
           "matmuls (%.1f ms)\n",
           (long long)d, (long long)N, (long long)r, best * 1e3, best / floor, floor * 1e3);
    tb_free(&y), tb_free(&dx), tb_free(&dA), tb_free(&dB);
    layer_free(&l);
}

/* y = x W^T + s U B^T + b (the forward's shape): the fused neat_gemm_ex against the three passes
 * it replaces (GEMM, K = r GEMM with beta 1, bias loop) and against the main GEMM alone; best of
 * 5, single thread, interleaved. */
static void bench_fused(int64_t M, int64_t N, int64_t K, int64_t r)
{
    uint64_t rng = 3;
    float *x = xmalloc((size_t)(M * K) * 4), *W = xmalloc((size_t)(N * K) * 4);
    float *U = xmalloc((size_t)(M * r) * 4), *Bm = xmalloc((size_t)(N * r) * 4);
    float *bias = xmalloc((size_t)N * 4), *y = xmalloc((size_t)(M * N) * 4);
    fill(NEAT_FLOAT32, x, M * K, &rng), fill(NEAT_FLOAT32, W, N * K, &rng);
    fill(NEAT_FLOAT32, U, M * r, &rng), fill(NEAT_FLOAT32, Bm, N * r, &rng);
    fill(NEAT_FLOAT32, bias, N, &rng);
    size_t sb = neat_gemm_ex_scratch_bytes(NEAT_FLOAT32, M, N, K, r, 1);
    void *scratch = xmalloc(sb);
    neat_gemm_extra ex = {r, 0.5, U, r, 1, Bm, 1, r, bias, 0, 1};
    double best[3] = {1e30, 1e30, 1e30};
    for (int rep = 0; rep < 5; rep++) {
        for (int v = 0; v < 3; v++) {
            double t = now();
            if (v == 0) {
                neat_gemm_ex(NEAT_FLOAT32, M, N, K, 1.0, x, K, 1, W, 1, K, 0.0, y, N, 1, &ex,
                             scratch, NULL);
            } else {
                neat_gemm(NEAT_FLOAT32, M, N, K, 1.0, x, K, 1, W, 1, K, 0.0, y, N, 1, scratch,
                          NULL);
                if (v == 2) {
                    neat_gemm(NEAT_FLOAT32, M, N, r, 0.5, U, r, 1, Bm, 1, r, 1.0, y, N, 1,
                              scratch, NULL);
                    for (int64_t i = 0; i < M; i++)
                        for (int64_t j = 0; j < N; j++) y[i * N + j] += bias[j];
                }
            }
            t = now() - t;
            best[v] = t < best[v] ? t : best[v];
        }
    }
    printf("fused x W^T + s U B^T + b, M=%lld N=%lld K=%lld r=%lld: fused %.1f ms, unfused %.1f "
           "ms, main GEMM alone %.1f ms\n",
           (long long)M, (long long)N, (long long)K, (long long)r, best[0] * 1e3, best[2] * 1e3,
           best[1] * 1e3);
    free(x), free(W), free(U), free(Bm), free(bias), free(y), free(scratch);
}

int main(int argc, char **argv)
{
    if (argc == 2 && argv[1][0] == 'f') { /* bench_gemm fused: only the fused-GEMM comparison */
        bench_fused(2048, 1024, 1024, 8);
        bench_fused(2048, 4096, 4096, 8);
        return 0;
    }
    if (argc == 4) {
        for (int d = 0; d < 2; d++)
            for (int tb = 0; tb < 2; tb++)
                bench(d ? NEAT_FLOAT64 : NEAT_FLOAT32, atoll(argv[1]), atoll(argv[2]),
                      atoll(argv[3]), tb);
        return 0;
    }
    for (int d = 0; d < 2; d++) {
        neat_dtype dt = d ? NEAT_FLOAT64 : NEAT_FLOAT32;
        bench(dt, 2048, 1024, 1024, 1); /* y = x W^T */
        bench(dt, 2048, 1024, 1024, 0); /* dx = dy W */
        bench(dt, 2048, 8, 4096, 1);    /* U = x G^T (skinny N: dot path) */
        bench(dt, 8, 64, 4096, 0);      /* Z_0 = A W[:, blk] in the G stack (skinny M) */
    }
    bench_fused(2048, 1024, 1024, 8);
    bench_fused(2048, 4096, 4096, 8);
    bench_layer(1024, 2048, 8);
    return 0;
}
