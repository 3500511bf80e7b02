/*
 * test_provider.c - neat_exec.gemm, the host GEMM provider (neat.h, neat_gemm_fn).
 *
 * With the checking provider of provider.h every entry point must give what it gives on the
 * library's own GEMM, within the dtype's tolerance (the provider sums in another order); a
 * provider that declines must change nothing, bit for bit; only the large products reach it
 * (x W^T, dy^T x, dy W: the rank-r terms and small layers never do), always from the calling
 * thread, never with arguments outside the contract. neat_gemm_ex's extra terms (alpha2 A2 B2,
 * D, beta C) ride beside a provided product as they do on the fused path. Built against the
 * emulated CUDA backend (tests/cuda_emu wraps tb_make), the views say cuda:0 and the provider
 * must never be called: CUDA products stay on cuBLAS.
 */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "gemm.h"
#include "layer.h"
#include "provider.h"

static double tol_for(neat_dtype dt) { return dt == NEAT_FLOAT64 ? 1e-12 : 2e-5; }

enum { R_Y, R_YA, R_DX, R_DW, R_DB, R_DA, R_DBB, R_COUNT };
static const char *const r_names[R_COUNT] = {"y", "y (adapter)", "dx", "dweight", "dbias", "dA",
                                             "dB"};

typedef struct results {
    tbuf t[R_COUNT];
    long calls_fwd, calls_bwd, calls_adapter;
} results;

static int64_t rows_of(const layer_spec *s, int i)
{
    const int64_t rows[R_COUNT] = {s->N, s->N, s->N, s->d_out, s->d_out, s->r, s->d_out};
    return rows[i];
}

static int64_t cols_of(const layer_spec *s, int i)
{
    const int64_t cols[R_COUNT] = {s->d_out, s->d_out, s->d_in, s->d_in, 1, s->d_out, s->r};
    return cols[i];
}

/* Every entry point of the layer with exec (provider p or none); counts p's calls per phase. */
static void run_all(layer *l, const neat_exec *exec, test_provider *p, results *out)
{
    const layer_spec *s = &l->spec;
    for (int i = 0; i < R_COUNT; i++)
        out->t[i] = i == R_DB ? tb_make1(s->dtype, s->d_out, 1, NULL, NAN)
                              : tb_make(s->dtype, rows_of(s, i), cols_of(s, i), LAYOUT_PADDED,
                                        NULL, NAN);
    long c0 = p ? p->calls : 0;
    CHECK(call_forward(1, &out->t[R_Y].t, &l->args, exec) == NEAT_OK, "linear forward: %s",
          neat_last_error());
    long c1 = p ? p->calls : 0;
    neat_grads g = {&out->t[R_DX].t, &out->t[R_DW].t, s->bias ? &out->t[R_DB].t : NULL,
                    &out->t[R_DA].t, &out->t[R_DBB].t, NULL};
    CHECK(call_backward(1, &g, &l->tdy.t, &l->args, exec) == NEAT_OK, "linear backward: %s",
          neat_last_error());
    long c2 = p ? p->calls : 0;
    neat_args aa = l->args;
    aa.bias = NULL;
    CHECK(call_forward(0, &out->t[R_YA].t, &aa, exec) == NEAT_OK, "adapter forward: %s",
          neat_last_error());
    neat_grads ga = {NULL, NULL, NULL, &out->t[R_DA].t, &out->t[R_DBB].t, NULL};
    CHECK(call_backward(0, &ga, &l->tdy.t, &aa, exec) == NEAT_OK, "adapter backward: %s",
          neat_last_error());
    long c3 = p ? p->calls : 0;
    out->calls_fwd = c1 - c0, out->calls_bwd = c2 - c1, out->calls_adapter = c3 - c2;
}

static void free_results(results *r)
{
    for (int i = 0; i < R_COUNT; i++) tb_free(&r->t[i]);
}

/* A product the provider is offered: on the CPU, every dim above the skinny limit. */
static int big(int64_t a, int64_t b, int64_t c)
{
    return tb_device().type == NEAT_DEVICE_CPU && a > 16 && b > 16 && c > 16;
}

/* One layer: own GEMM, the computing provider, one declining every call, one every 2nd. */
static void layer_case(const layer_spec *s, int lanes)
{
    char desc[256];
    layer_describe(s, desc, sizeof desc);
    layer l;
    layer_init(&l, s);
    neat_exec own = {.parallel_for = pthread_parallel_for, .parallel_user = &lanes,
                     .num_threads = lanes};
    results r0, r1, r2, r3;
    run_all(&l, &own, NULL, &r0);

    test_provider p = test_provider_make(0);
    neat_exec with = own;
    with.gemm = test_provider_gemm, with.gemm_user = &p;
    run_all(&l, &with, &p, &r1);
    CHECK(p.bad == 0, "%s: %ld calls broke the provider contract: %s", desc, p.bad, p.first_bad);
    /* the large products of each phase (docs/design.md §1.1, §1.2): forward x W^T;
     * backward dy^T x (dweight) and dy W (dx); the adapter's products are all rank r */
    long want_fwd = big(s->N, s->d_out, s->d_in);
    long want_bwd = big(s->d_out, s->d_in, s->N) + big(s->N, s->d_in, s->d_out);
    CHECK(r1.calls_fwd == want_fwd && r1.calls_bwd == want_bwd && r1.calls_adapter == 0,
          "%s: provider calls fwd %ld bwd %ld adapter %ld, expected %ld %ld 0", desc,
          r1.calls_fwd, r1.calls_bwd, r1.calls_adapter, want_fwd, want_bwd);
    for (int i = 0; i < R_COUNT; i++) {
        if (i == R_DB && !s->bias)
            continue;
        int64_t n = rows_of(s, i) * cols_of(s, i);
        double *a = xmalloc((size_t)n * 8), *b = xmalloc((size_t)n * 8);
        tb_read(&r0.t[i], a);
        tb_read(&r1.t[i], b);
        double err = rel_err(b, a, n);
        CHECK(err <= tol_for(s->dtype), "%s lanes=%d: %s with the provider: rel err %.3g > %g",
              desc, lanes, r_names[i], err, tol_for(s->dtype));
        free(a), free(b);
    }

    for (long every = 1; every <= 2; every++) {
        test_provider q = test_provider_make(every);
        neat_exec dec = own;
        dec.gemm = test_provider_gemm, dec.gemm_user = &q;
        results *rr = every == 1 ? &r2 : &r3;
        run_all(&l, &dec, &q, rr);
        CHECK(q.bad == 0, "%s: %s", desc, q.first_bad);
        CHECK(q.calls == want_fwd + want_bwd && q.declined == (every == 1 ? q.calls : q.calls / 2),
              "%s: declining provider: %ld calls, %ld declined", desc, q.calls, q.declined);
        /* declining every call is the own GEMM, bit for bit */
        if (every == 1)
            for (int i = 0; i < R_COUNT; i++)
                CHECK(memcmp(r0.t[i].storage, r2.t[i].storage,
                             (size_t)r0.t[i].storage_elems * (s->dtype == NEAT_FLOAT64 ? 8 : 4)) ==
                          0,
                      "%s: %s changed although the provider declined every call", desc,
                      r_names[i]);
    }
    free_results(&r0), free_results(&r1), free_results(&r2), free_results(&r3);
    layer_free(&l);
}

/* neat_lowrank_forward hands x W^T to the provider and adds the rank-r term and bias itself. */
static void lowrank_case(neat_dtype dt)
{
    layer_spec s = {48, 40, 36, 5, NEAT_ACT_RELU, 0, 1, dt, LAYOUT_TRANSPOSED, LAYOUT_CONTIG,
                    LAYOUT_PADDED, 0.75, 11};
    layer l;
    layer_init(&l, &s);
    tbuf G = tb_make(dt, s.r, s.d_in, LAYOUT_CONTIG, NULL, 0);
    neat_exec own = {0};
    CHECK(call_compute_g(&G.t, &l.args, &own) == NEAT_OK, "compute_g: %s", neat_last_error());
    neat_lowrank_args la = {&l.tx.t, &l.tW.t, &l.tb.t, &G.t, &l.tB.t, s.scale};
    tbuf y0 = tb_make(dt, s.N, s.d_out, LAYOUT_CONTIG, NULL, NAN);
    tbuf y1 = tb_make(dt, s.N, s.d_out, LAYOUT_CONTIG, NULL, NAN);
    test_provider p = test_provider_make(0);
    neat_exec with = {0};
    with.gemm = test_provider_gemm, with.gemm_user = &p;
    for (int k = 0; k < 2; k++) {
        const neat_exec *e = k ? &with : &own;
        size_t bytes = 0;
        CHECK(neat_lowrank_forward_workspace_size(&la, e, &bytes) == NEAT_OK, "lowrank size");
        void *ws = xmalloc(bytes);
        CHECK(neat_lowrank_forward(k ? &y1.t : &y0.t, &la, ws, bytes, e) == NEAT_OK,
              "lowrank: %s", neat_last_error());
        free(ws);
    }
    long want = big(s.N, s.d_out, s.d_in);
    CHECK(p.calls == want && p.bad == 0, "lowrank: %ld provider calls (%ld expected), %s",
          p.calls, want, p.first_bad);
    double *a = xmalloc((size_t)(s.N * s.d_out) * 8), *b = xmalloc((size_t)(s.N * s.d_out) * 8);
    tb_read(&y0, a);
    tb_read(&y1, b);
    double err = rel_err(b, a, s.N * s.d_out);
    CHECK(err <= tol_for(dt), "lowrank with the provider: rel err %.3g", err);
    free(a), free(b);
    tb_free(&G), tb_free(&y0), tb_free(&y1);
    layer_free(&l);
}

/* neat_gemm_ex directly: alpha, beta C, alpha2 A2 B2 and D beside a provided product, against
 * a float64 loop. */
static void gemm_ex_case(neat_dtype dt, double beta, int with_d, int64_t K2)
{
    const int64_t M = 37, N = 29, K = 41;
    const double alpha = 1.5, alpha2 = -0.7;
    uint64_t rng = 3;
    double *a = xmalloc(M * K * 8), *b = xmalloc(K * N * 8), *a2 = xmalloc(M * 8 * 8);
    double *b2 = xmalloc(8 * N * 8), *d = xmalloc(M * N * 8), *c = xmalloc(M * N * 8);
    double *ref = xmalloc(M * N * 8), *got = xmalloc(M * N * 8);
    fill_random(&rng, a, M * K, -1, 1), fill_random(&rng, b, K * N, -1, 1);
    fill_random(&rng, a2, M * 8, -1, 1), fill_random(&rng, b2, 8 * N, -1, 1);
    fill_random(&rng, d, M * N, -1, 1), fill_random(&rng, c, M * N, -1, 1);
    round_to(dt, a, M * K), round_to(dt, b, K * N), round_to(dt, a2, M * 8);
    round_to(dt, b2, 8 * N), round_to(dt, d, M * N), round_to(dt, c, M * N);
    for (int64_t i = 0; i < M; i++)
        for (int64_t j = 0; j < N; j++) {
            double s = 0, s2 = 0;
            for (int64_t k = 0; k < K; k++) s += a[i * K + k] * b[k * N + j];
            for (int64_t k = 0; k < K2; k++) s2 += a2[i * 8 + k] * b2[k * N + j];
            ref[i * N + j] = alpha * s + alpha2 * s2 + beta * c[i * N + j] +
                             (with_d ? d[i * N + j] : 0);
        }
    tbuf tA = tb_make(dt, M, K, LAYOUT_TRANSPOSED, a, 0), tB = tb_make(dt, K, N, LAYOUT_PADDED, b, 0);
    tbuf tA2 = tb_make(dt, M, 8, LAYOUT_CONTIG, a2, 0), tB2 = tb_make(dt, 8, N, LAYOUT_CONTIG, b2, 0);
    tbuf tD = tb_make(dt, M, N, LAYOUT_TRANSPOSED, d, 0);
    tbuf tC = tb_make(dt, M, N, LAYOUT_PADDED, beta == 0 ? NULL : c, NAN);
    neat_gemm_extra ex = {K2, alpha2, tA2.t.data, tA2.t.strides[0], tA2.t.strides[1],
                          tB2.t.data, tB2.t.strides[0], tB2.t.strides[1],
                          with_d ? tD.t.data : NULL, tD.t.strides[0], tD.t.strides[1]};
    test_provider p = test_provider_make(0);
    neat_exec with = {0};
    with.gemm = test_provider_gemm, with.gemm_user = &p;
    void *scratch = xmalloc(neat_gemm_ex_scratch_bytes(dt, M, N, K, K2, 1));
    neat_gemm_ex(dt, M, N, K, alpha, tA.t.data, tA.t.strides[0], tA.t.strides[1], tB.t.data,
                 tB.t.strides[0], tB.t.strides[1], beta, tC.t.data, tC.t.strides[0],
                 tC.t.strides[1], &ex, scratch, &with);
    tb_read(&tC, got);
    double err = rel_err(got, ref, M * N);
    CHECK(p.calls == 1 && p.bad == 0 && p.beta_nonzero == (beta != 0),
          "gemm_ex: %ld calls, %ld with beta != 0, %s", p.calls, p.beta_nonzero, p.first_bad);
    CHECK(err <= tol_for(dt), "gemm_ex %s beta=%g D=%d K2=%lld: rel err %.3g",
          dt == NEAT_FLOAT64 ? "f64" : "f32", beta, with_d, (long long)K2, err);
    CHECK(tb_padding_is(&tC, NAN), "gemm_ex: C's padding was written");
    free(scratch);
    tb_free(&tA), tb_free(&tB), tb_free(&tA2), tb_free(&tB2), tb_free(&tD), tb_free(&tC);
    free(a), free(b), free(a2), free(b2), free(d), free(c), free(ref), free(got);
}

int main(void)
{
    for (int di = 0; di < 2; di++) {
        neat_dtype dt = di ? NEAT_FLOAT64 : NEAT_FLOAT32;
        /* large enough for every big product; then small layers (N = 8, d = 64: none) */
        layer_spec big_s = {40, 50, 45, 4, NEAT_ACT_RELU, 2, 1, dt, LAYOUT_CONTIG,
                            LAYOUT_TRANSPOSED, LAYOUT_PADDED, 0.5, 5};
        layer_case(&big_s, 1);
        layer_case(&big_s, 3);
        layer_spec tall = {70, 20, 90, 3, NEAT_ACT_GELU, 0, 0, dt, LAYOUT_PADDED, LAYOUT_CONTIG,
                           LAYOUT_CONTIG, 1.25, 6};
        layer_case(&tall, 2);
        layer_spec small = {8, 64, 64, 8, NEAT_ACT_RELU, 2, 1, dt, LAYOUT_CONTIG, LAYOUT_CONTIG,
                            LAYOUT_CONTIG, 1.0, 7};
        layer_case(&small, 2);
        lowrank_case(dt);
        for (int k = 0; k < 8; k++)
            gemm_ex_case(dt, k & 1 ? 0.5 : 0.0, (k >> 1) & 1, k & 4 ? 5 : 0);
    }
    return check_exit("test_provider");
}
