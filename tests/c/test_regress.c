/*
 * test_regress.c - regression tests for the skinny-GEMM workspace overrun and for workspace
 * sizes that grew with K.
 *
 * 1. The skinny paths spaced each lane's scratch by K * XN elements while the size query
 *    reserved min(K, 256) * 3 * vl, so with two or more lanes, K > 256 and a partial last strip
 *    the lanes wrote past the workspace. Here the scratch is exactly the queried size and ends
 *    at a PROT_NONE page, so any overrun faults; the shapes are those of the reported crashes.
 * 2. compute_g of an expanded W with d_out = 2^31 + 7 asked for a 64 GiB workspace because the
 *    skinny path copied the whole long operand; the size must not grow with K.
 */
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "gemm.h"
#include "guard.h"
#include "util.h"

/* Chunks run one after another: enough to give each lane its own scratch slot. */
static void serial_for(int64_t begin, int64_t end, int64_t grain, neat_parallel_body body,
                       void *ctx, void *user)
{
    (void)grain, (void)user;
    for (int64_t i = begin; i < end; i++) body(i, i + 1, ctx);
}

static uint64_t rng = 7;

/* C = A B for M x N x K with A and B in the given layouts, lanes 1..4, scratch against a guard. */
static void skinny_case(neat_dtype dt, int64_t M, int64_t N, int64_t K, int la, int lb)
{
    double *a = xmalloc((size_t)(M * K) * sizeof(double));
    double *b = xmalloc((size_t)(K * N) * sizeof(double));
    double *ref = xmalloc((size_t)(M * N) * sizeof(double));
    double *got = xmalloc((size_t)(M * N) * sizeof(double));
    fill_random(&rng, a, M * K, -1, 1);
    fill_random(&rng, b, K * N, -1, 1);
    round_to(dt, a, M * K), round_to(dt, b, K * N);
    for (int64_t i = 0; i < M; i++)
        for (int64_t j = 0; j < N; j++) {
            double s = 0;
            for (int64_t k = 0; k < K; k++) s += a[i * K + k] * b[k * N + j];
            ref[i * N + j] = s;
        }
    tbuf A = tb_make(dt, M, K, la, a, 0), B = tb_make(dt, K, N, lb, b, 0);
    for (int lanes = 1; lanes <= 4; lanes++) {
        neat_exec exec = {serial_for, NULL, lanes, NULL, 0, NULL, NULL, NULL};
        size_t bytes = neat_gemm_scratch_bytes_mnk(dt, M, N, K, lanes);
        gbuf s = guard_alloc(bytes, lanes % 2 ? GUARD_BACK : GUARD_FRONT, GUARD_FLUSH);
        tbuf C = tb_make(dt, M, N, LAYOUT_CONTIG, NULL, 0);
        neat_gemm(dt, M, N, K, 1.0, A.t.data, A.t.strides[0], A.t.strides[1], B.t.data,
                  B.t.strides[0], B.t.strides[1], 0.0, C.t.data, C.t.strides[0], C.t.strides[1],
                  s.p, &exec);
        tb_read(&C, got);
        double err = rel_err(got, ref, M * N), tol = dt == NEAT_FLOAT64 ? 1e-13 : 2e-6;
        CHECK(err <= tol, "%s M=%lld N=%lld K=%lld layouts A%d B%d lanes %d: rel err %.3g",
              dt == NEAT_FLOAT64 ? "f64" : "f32", (long long)M, (long long)N, (long long)K, la,
              lb, lanes, err);
        tb_free(&C);
        guard_free(&s);
    }
    tb_free(&A), tb_free(&B);
    free(a), free(b), free(ref), free(got);
}

static void huge_k_workspace(void)
{
    const int64_t d_out = ((int64_t)1 << 31) + 7, d_in = 4, r = 8, n = 2;
    float w[4] = {1, 2, 3, 4}, av[8] = {1, 2, 3, 4, 5, 6, 7, 8}, bv[8] = {0}, xv[8] = {0};
    neat_device cpu = {NEAT_DEVICE_CPU, 0};
    /* expanded views: W's rows all alias one row, A's columns one column */
    neat_tensor W = {w, NEAT_FLOAT32, 2, {d_out, d_in}, {0, 1}, cpu};
    neat_tensor A = {av, NEAT_FLOAT32, 2, {r, d_out}, {1, 0}, cpu};
    neat_tensor B = {bv, NEAT_FLOAT32, 2, {d_out, r}, {0, 1}, cpu};
    neat_tensor x = {xv, NEAT_FLOAT32, 2, {n, d_in}, {d_in, 1}, cpu};
    neat_args args;
    memset(&args, 0, sizeof args);
    args.x = &x, args.weight = &W, args.A = &A, args.B = &B;
    args.activation = NEAT_ACT_RELU, args.scale = 1.0;
    const size_t limit = (size_t)64 << 20; /* far below the 64 GiB asked for before */
    for (int threads = 1; threads <= 4; threads++) {
        neat_exec exec = {serial_for, NULL, threads, NULL, 0, NULL, NULL, NULL};
        size_t bytes = 0;
        neat_status st = neat_compute_g_workspace_size(&args, &exec, &bytes);
        CHECK(st == NEAT_OK && bytes < limit, "compute_g, %d threads: status %d, %zu bytes (%s)",
              threads, (int)st, bytes, neat_last_error());
        st = neat_adapter_forward_workspace_size(&args, &exec, &bytes);
        CHECK(st == NEAT_OK && bytes < limit, "adapter forward, %d threads: status %d, %zu bytes",
              threads, (int)st, bytes);
        neat_grads g;
        memset(&g, 0, sizeof g);
        float dxv[8];
        neat_tensor dx = {dxv, NEAT_FLOAT32, 2, {n, d_in}, {d_in, 1}, cpu};
        g.dx = &dx; /* needs G, so the long skinny product */
        st = neat_adapter_backward_workspace_size(&g, &args, &exec, &bytes);
        CHECK(st == NEAT_OK && bytes < limit, "adapter backward (dx), %d threads: status %d, "
              "%zu bytes (%s)", threads, (int)st, bytes, neat_last_error());
    }
    for (int dt = 0; dt < 2; dt++)
        for (int lanes = 1; lanes <= 4; lanes++) {
            neat_dtype d = dt ? NEAT_FLOAT64 : NEAT_FLOAT32;
            size_t a = neat_gemm_scratch_bytes_mnk(d, r, d_in, d_out, lanes);
            size_t b = neat_gemm_scratch_bytes_mnk(d, d_in, r, d_out, lanes);
            CHECK(a < limit && b < limit, "gemm scratch with K = 2^31 + 7, %d lanes: %zu, %zu",
                  lanes, a, b);
        }
}

int main(void)
{
    for (int dt = 0; dt < 2; dt++) {
        neat_dtype d = dt ? NEAT_FLOAT64 : NEAT_FLOAT32;
        /* dA = dZ0 W^T of the first report: M = r = 8, N = d_in = 100, K = d_out = 8192 */
        skinny_case(d, 8, 100, 8192, LAYOUT_CONTIG, LAYOUT_TRANSPOSED);
        skinny_case(d, 8, 100, 8192, LAYOUT_CONTIG, LAYOUT_CONTIG);
        skinny_case(d, 100, 8, 8192, LAYOUT_CONTIG, LAYOUT_CONTIG);
        /* U = x G^T of the second: x transposed (K = 32768 rows of 40) */
        skinny_case(d, 40, 8, 32768, LAYOUT_TRANSPOSED, LAYOUT_TRANSPOSED);
        skinny_case(d, 4, 40, 32768, LAYOUT_CONTIG, LAYOUT_CONTIG);
        /* partial last strips of every width around the strip sizes, K on both sides of 256 */
        for (int64_t n = 17; n <= 53; n += 9)
            for (int64_t k = 250; k <= 1300; k += 350) {
                skinny_case(d, 5, n, k, LAYOUT_CONTIG, LAYOUT_CONTIG);
                skinny_case(d, n, 3, k, LAYOUT_CONTIG, LAYOUT_CONTIG);
            }
    }
    huge_k_workspace();
    return check_exit("test_regress");
}
