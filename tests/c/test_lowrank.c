/*
 * test_lowrank.c - neat_lowrank_forward (inference with G kept): y = x W^T + b + s (x G^T) B^T.
 *
 * Random shapes, layouts, dtypes and lane counts against a float64 reference; workspace and y
 * at their exact sizes against guard pages; G from neat_compute_g must give neat_linear_forward's
 * y bit for bit (the same products in the same order); every bad argument gets a message that
 * names it.
 */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "guard.h"
#include "util.h"

static double tol_for(neat_dtype dt) { return dt == NEAT_FLOAT64 ? 1e-12 : 2e-5; }

/* ref = x W^T + b + s (x G^T) B^T in float64, from row-major values. */
static void reference(const double *x, const double *W, const double *b, const double *G,
                      const double *B, double s, int64_t N, int64_t d_in, int64_t d_out,
                      int64_t r, double *ref)
{
    double *U = xmalloc((size_t)(N * r + 1) * sizeof(double));
    for (int64_t n = 0; n < N; n++)
        for (int64_t k = 0; k < r; k++) {
            double acc = 0;
            for (int64_t i = 0; i < d_in; i++)
                acc += x[n * d_in + i] * G[k * d_in + i];
            U[n * r + k] = acc;
        }
    for (int64_t n = 0; n < N; n++)
        for (int64_t o = 0; o < d_out; o++) {
            double base = b ? b[o] : 0, low = 0;
            for (int64_t i = 0; i < d_in; i++)
                base += x[n * d_in + i] * W[o * d_in + i];
            for (int64_t k = 0; k < r; k++)
                low += U[n * r + k] * B[o * r + k];
            ref[n * d_out + o] = base + s * low;
        }
    free(U);
}

static int64_t pick(uint64_t *rng, int64_t lo, int64_t hi)
{
    return lo + (int64_t)(rng_next(rng) % (uint64_t)(hi - lo + 1));
}

/* One random case: shapes around the GEMM's block edges and skinny paths, any layouts. */
static void random_case(uint64_t *rng, int idx)
{
    neat_dtype dt = rng_next(rng) % 2 ? NEAT_FLOAT64 : NEAT_FLOAT32;
    size_t es = dt == NEAT_FLOAT64 ? 8 : 4;
    int64_t N = rng_next(rng) % 8 == 0 ? 0 : pick(rng, 1, rng_next(rng) % 3 ? 40 : 300);
    int64_t d_in = pick(rng, 1, rng_next(rng) % 3 ? 70 : 600);
    int64_t d_out = pick(rng, 1, rng_next(rng) % 3 ? 70 : 400);
    int64_t r = pick(rng, 1, 20);
    int with_bias = (int)(rng_next(rng) % 2);
    int lanes = (int)pick(rng, 1, 4);
    double s = rng_uniform(rng, -3, 3);
    int lx = (int)(rng_next(rng) % LAYOUT_COUNT), lw = (int)(rng_next(rng) % LAYOUT_COUNT);
    int lg = (int)(rng_next(rng) % LAYOUT_COUNT), lb = (int)(rng_next(rng) % LAYOUT_COUNT);

    double *x = xmalloc((size_t)(N * d_in + 1) * 8), *W = xmalloc((size_t)(d_out * d_in) * 8);
    double *b = xmalloc((size_t)d_out * 8), *G = xmalloc((size_t)(r * d_in) * 8);
    double *B = xmalloc((size_t)(d_out * r) * 8), *ref = xmalloc((size_t)(N * d_out + 1) * 8);
    double *got = xmalloc((size_t)(N * d_out + 1) * 8);
    fill_random(rng, x, N * d_in, -1, 1);
    fill_random(rng, W, d_out * d_in, -1, 1);
    fill_random(rng, b, d_out, -1, 1);
    fill_random(rng, G, r * d_in, -1, 1);
    fill_random(rng, B, d_out * r, -1, 1);
    /* the reference sees exactly the values the kernel reads */
    round_to(dt, x, N * d_in);
    round_to(dt, W, d_out * d_in);
    round_to(dt, b, d_out);
    round_to(dt, G, r * d_in);
    round_to(dt, B, d_out * r);
    reference(x, W, with_bias ? b : NULL, G, B, s, N, d_in, d_out, r, ref);

    tbuf tx = tb_make(dt, N, d_in, lx, x, NAN), tw = tb_make(dt, d_out, d_in, lw, W, NAN);
    tbuf tbias = tb_make1(dt, d_out, 1 + (int64_t)(rng_next(rng) % 3), b, NAN);
    tbuf tg = tb_make(dt, r, d_in, lg, G, NAN), tB = tb_make(dt, d_out, r, lb, B, NAN);
    neat_lowrank_args la = {&tx.t, &tw.t, with_bias ? &tbias.t : NULL, &tg.t, &tB.t, s};
    neat_exec exec = {.parallel_for = pthread_parallel_for, .parallel_user = &lanes,
                      .num_threads = lanes};

    size_t bytes = 0;
    neat_status st = neat_lowrank_forward_workspace_size(&la, &exec, &bytes);
    CHECK(st == NEAT_OK, "case %d: size query: %s", idx, neat_last_error());
    gbuf ws = guard_alloc(bytes, rng_next(rng) % 2 ? GUARD_BACK : GUARD_FRONT, GUARD_FLUSH);
    gbuf yb = guard_alloc((size_t)(N * d_out) * es, GUARD_BACK, GUARD_FLUSH);
    int64_t ysizes[2] = {N, d_out};
    /* on the inputs' device: tests/cuda_emu runs this file on CUDA views too */
    neat_tensor y = neat_tensor_contiguous(yb.p, dt, 2, ysizes, tw.t.device);
    st = neat_lowrank_forward(&y, &la, ws.p, bytes, &exec);
    CHECK(st == NEAT_OK, "case %d: %s", idx, neat_last_error());
    for (int64_t i = 0; i < N * d_out; i++)
        got[i] = dt == NEAT_FLOAT64 ? ((double *)yb.p)[i] : ((float *)yb.p)[i];
    double err = rel_err(got, ref, N * d_out);
    CHECK(err <= tol_for(dt),
          "case %d: %s N=%lld d_in=%lld d_out=%lld r=%lld bias=%d lanes=%d layouts=%d%d%d%d: "
          "rel err %.3g",
          idx, dt == NEAT_FLOAT64 ? "f64" : "f32", (long long)N, (long long)d_in,
          (long long)d_out, (long long)r, with_bias, lanes, lx, lw, lg, lb, err);
    guard_free(&ws);
    guard_free(&yb);
    tb_free(&tx), tb_free(&tw), tb_free(&tbias), tb_free(&tg), tb_free(&tB);
    free(x), free(W), free(b), free(G), free(B), free(ref), free(got);
}

/* G from neat_compute_g, then neat_lowrank_forward == neat_linear_forward, bit for bit. */
static void matches_linear_forward(neat_dtype dt, int64_t N, int64_t d_in, int64_t d_out,
                                   int64_t r, int num_hidden, neat_activation act, int lanes)
{
    uint64_t rng = 7;
    size_t es = dt == NEAT_FLOAT64 ? 8 : 4;
    double *v = xmalloc((size_t)(N * d_in + d_out * d_in + d_out + 2 * r * d_out + 8 * r * r) * 8);
    double *x = v, *W = x + N * d_in, *b = W + d_out * d_in, *A = b + d_out, *B = A + r * d_out;
    double *H = B + d_out * r;
    fill_random(&rng, v, N * d_in + d_out * d_in + d_out + 2 * r * d_out + 8 * r * r, -1, 1);
    tbuf tx = tb_make(dt, N, d_in, LAYOUT_CONTIG, x, 0), tw = tb_make(dt, d_out, d_in, LAYOUT_CONTIG, W, 0);
    tbuf tbias = tb_make1(dt, d_out, 1, b, 0), tA = tb_make(dt, r, d_out, LAYOUT_CONTIG, A, 0);
    tbuf tB = tb_make(dt, d_out, r, LAYOUT_CONTIG, B, 0);
    tbuf th[8];
    neat_tensor hv[8];
    for (int i = 0; i < num_hidden; i++) {
        th[i] = tb_make(dt, r, r, LAYOUT_CONTIG, H + i * r * r, 0);
        hv[i] = th[i].t;
    }
    neat_args args = {&tx.t, &tw.t, &tbias.t, &tA.t, &tB.t, hv, num_hidden, act, 1.5};
    neat_exec exec = {.parallel_for = pthread_parallel_for, .parallel_user = &lanes,
                      .num_threads = lanes};
    int64_t gs[2] = {r, d_in}, ys[2] = {N, d_out};
    void *gdata = xmalloc((size_t)(r * d_in) * es), *y1 = xmalloc((size_t)(N * d_out) * es + 1);
    void *y2 = xmalloc((size_t)(N * d_out) * es + 1);
    neat_tensor Gt = neat_tensor_contiguous(gdata, dt, 2, gs, tw.t.device);
    neat_tensor Y1 = neat_tensor_contiguous(y1, dt, 2, ys, tw.t.device);
    neat_tensor Y2 = neat_tensor_contiguous(y2, dt, 2, ys, tw.t.device);
    size_t b1 = 0, b2 = 0, b3 = 0;
    CHECK(neat_compute_g_workspace_size(&args, &exec, &b1) == NEAT_OK, "%s", neat_last_error());
    CHECK(neat_linear_forward_workspace_size(&args, &exec, &b2) == NEAT_OK, "%s", neat_last_error());
    neat_lowrank_args la = {&tx.t, &tw.t, &tbias.t, &Gt, &tB.t, 1.5};
    CHECK(neat_lowrank_forward_workspace_size(&la, &exec, &b3) == NEAT_OK, "%s", neat_last_error());
    size_t most = b1 > b2 ? (b1 > b3 ? b1 : b3) : (b2 > b3 ? b2 : b3);
    void *ws = xmalloc(most + 1);
    CHECK(neat_compute_g(&Gt, &args, ws, b1, &exec) == NEAT_OK, "%s", neat_last_error());
    CHECK(neat_linear_forward(&Y1, &args, ws, b2, &exec) == NEAT_OK, "%s", neat_last_error());
    CHECK(neat_lowrank_forward(&Y2, &la, ws, b3, &exec) == NEAT_OK, "%s", neat_last_error());
    CHECK(memcmp(y1, y2, (size_t)(N * d_out) * es) == 0,
          "%s N=%lld d_in=%lld d_out=%lld r=%lld hidden=%d lanes=%d: lowrank with G kept differs "
          "from neat_linear_forward",
          dt == NEAT_FLOAT64 ? "f64" : "f32", (long long)N, (long long)d_in, (long long)d_out,
          (long long)r, num_hidden, lanes);
    free(ws), free(gdata), free(y1), free(y2), free(v);
    tb_free(&tx), tb_free(&tw), tb_free(&tbias), tb_free(&tA), tb_free(&tB);
    for (int i = 0; i < num_hidden; i++)
        tb_free(&th[i]);
}

/* Calls with one thing wrong; the message must name what. */
static void expect_error(neat_status st, neat_status want, const char *needle, const char *what)
{
    CHECK(st == want, "%s: status %d, want %d (%s)", what, (int)st, (int)want, neat_last_error());
    CHECK(strstr(neat_last_error(), needle) != NULL, "%s: message \"%s\" lacks \"%s\"", what,
          neat_last_error(), needle);
}

static void errors(void)
{
    int64_t N = 5, d_in = 7, d_out = 6, r = 3;
    tbuf tx = tb_make(NEAT_FLOAT32, N, d_in, LAYOUT_CONTIG, NULL, 0.5);
    tbuf tw = tb_make(NEAT_FLOAT32, d_out, d_in, LAYOUT_CONTIG, NULL, 0.5);
    tbuf tg = tb_make(NEAT_FLOAT32, r, d_in, LAYOUT_CONTIG, NULL, 0.5);
    tbuf tB = tb_make(NEAT_FLOAT32, d_out, r, LAYOUT_CONTIG, NULL, 0.5);
    tbuf ty = tb_make(NEAT_FLOAT32, N, d_out, LAYOUT_CONTIG, NULL, 0);
    tbuf bad_g = tb_make(NEAT_FLOAT32, r, d_out, LAYOUT_CONTIG, NULL, 0.5);     /* (r, d_out) */
    tbuf bad_B = tb_make(NEAT_FLOAT32, d_out, r + 1, LAYOUT_CONTIG, NULL, 0.5); /* wrong r */
    tbuf g64 = tb_make(NEAT_FLOAT64, r, d_in, LAYOUT_CONTIG, NULL, 0.5);
    tbuf bad_bias = tb_make1(NEAT_FLOAT32, d_out + 1, 1, NULL, 0.5);
    neat_lowrank_args ok = {&tx.t, &tw.t, NULL, &tg.t, &tB.t, 1.0}, la;
    size_t bytes = 0;
    CHECK(neat_lowrank_forward_workspace_size(&ok, NULL, &bytes) == NEAT_OK, "%s", neat_last_error());
    void *ws = xmalloc(bytes + 64);

    expect_error(neat_lowrank_forward_workspace_size(NULL, NULL, &bytes), NEAT_ERR_INVALID_ARGUMENT,
                 "args must not be NULL", "NULL args");
    expect_error(neat_lowrank_forward_workspace_size(&ok, NULL, NULL), NEAT_ERR_INVALID_ARGUMENT,
                 "bytes must not be NULL", "NULL bytes");
    expect_error(neat_lowrank_forward(NULL, &ok, ws, bytes, NULL), NEAT_ERR_INVALID_ARGUMENT,
                 "y must not be NULL", "NULL y");
    la = ok, la.G = NULL;
    expect_error(neat_lowrank_forward(&ty.t, &la, ws, bytes, NULL), NEAT_ERR_INVALID_ARGUMENT,
                 "G must not be NULL", "NULL G");
    la = ok, la.G = &bad_g.t;
    expect_error(neat_lowrank_forward(&ty.t, &la, ws, bytes, NULL), NEAT_ERR_INVALID_ARGUMENT,
                 "G must have shape (r, d_in)", "G of the wrong shape");
    la = ok, la.B = &bad_B.t;
    expect_error(neat_lowrank_forward(&ty.t, &la, ws, bytes, NULL), NEAT_ERR_INVALID_ARGUMENT,
                 "to match weight and G", "B of the wrong rank");
    la = ok, la.G = &g64.t;
    expect_error(neat_lowrank_forward(&ty.t, &la, ws, bytes, NULL), NEAT_ERR_INVALID_ARGUMENT,
                 "G has dtype float64 but weight has float32", "G of another dtype");
    la = ok, la.bias = &bad_bias.t;
    expect_error(neat_lowrank_forward(&ty.t, &la, ws, bytes, NULL), NEAT_ERR_INVALID_ARGUMENT,
                 "bias must have shape", "bias of the wrong length");
    la = ok, la.scale = NAN;
    expect_error(neat_lowrank_forward(&ty.t, &la, ws, bytes, NULL), NEAT_ERR_INVALID_ARGUMENT,
                 "scale must be finite", "NaN scale");
    if (bytes > 0)
        expect_error(neat_lowrank_forward(&ty.t, &ok, ws, bytes - 1, NULL), NEAT_ERR_WORKSPACE,
                     "neat_lowrank_forward_workspace_size", "workspace one byte short");
    la = ok, la.x = &ty.t; /* y (5, 6) read as x: wrong d_in, and y would alias an input */
    expect_error(neat_lowrank_forward(&ty.t, &la, ws, bytes, NULL), NEAT_ERR_INVALID_ARGUMENT,
                 "x must have shape", "x of the wrong width");
    la = ok, la.G = &tw.t; /* weight (6, 7) as G: r = 6, and B (6, 3) no longer matches */
    expect_error(neat_lowrank_forward(&ty.t, &la, ws, bytes, NULL), NEAT_ERR_INVALID_ARGUMENT,
                 "B must have shape (d_out, r) = (6, 6)", "B against G's rank");
    /* the workspace may not overlap a tensor of the call, nor y an input */
    expect_error(neat_lowrank_forward(&ty.t, &ok, tx.t.data, bytes > 0 ? bytes : 1, NULL),
                 NEAT_ERR_INVALID_ARGUMENT, "shares memory with input x", "workspace over x");
    neat_tensor y_over_x = tx.t;
    y_over_x.sizes[1] = d_out;
    expect_error(neat_lowrank_forward(&y_over_x, &ok, ws, bytes, NULL), NEAT_ERR_INVALID_ARGUMENT,
                 "output y shares memory with input x", "y over x");
    free(ws);
    tb_free(&tx), tb_free(&tw), tb_free(&tg), tb_free(&tB), tb_free(&ty), tb_free(&bad_g);
    tb_free(&bad_B), tb_free(&g64), tb_free(&bad_bias);
}

int main(void)
{
    uint64_t rng = 0x10a4a11ULL;
    const char *env = getenv("NEAT_LOWRANK_CASES");
    int cases = env ? atoi(env) : 300;
    for (int i = 0; i < cases; i++)
        random_case(&rng, i);
    for (int lanes = 1; lanes <= 3; lanes += 2) {
        matches_linear_forward(NEAT_FLOAT32, 37, 300, 29, 8, 0, NEAT_ACT_RELU, lanes);
        matches_linear_forward(NEAT_FLOAT64, 64, 96, 80, 5, 2, NEAT_ACT_GELU, lanes);
        matches_linear_forward(NEAT_FLOAT32, 3, 700, 9, 4, 4, NEAT_ACT_SIN, lanes);
    }
    errors();
    return check_exit("test_lowrank");
}
