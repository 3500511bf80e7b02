/*
 * test_quant.c - quantized frozen weights (the neat_q* entry points, docs/design.md §5.2).
 *
 *   - the library's dequantizer (ops/quant.h) against the plain reference of qref.c, bit for
 *     bit, on random rectangles of every format;
 *   - every quantized entry point against its float twin run on the reference-dequantized W:
 *     forward (linear, adapter, lowrank), compute_g and every gradient (dx, dbias, dA, dB,
 *     dhidden), at docs/design.md §4's bounds (float32 1e-5, float64 1e-12), for NF4 and FP4
 *     with and without nesting, several block sizes, d_in not a multiple of the block size, odd
 *     d_out * d_in, int8 with a row stride > d_in, depth 2..10 and every activation, with
 *     shapes that take several panels in every product;
 *   - every workspace exactly the queried size against a guard page (both sides, misaligned
 *     too), one byte short refused, and the size below a float copy of W;
 *   - thread counts 1..4 bit for bit;
 *   - an error naming the field for each bad descriptor field; on CUDA without a CUDA build,
 *     NEAT_ERR_UNSUPPORTED.
 *
 * Built a second time as test_quant_cuda (tests/cuda_emu, NEAT_TEST_ON_CUDA): every tensor and
 * the qweight on cuda:0, each call through cuda/ on the emulated runtime, and the CUDA
 * dequantizer (cuda/quant.cu) held to the reference bit for bit like the CPU one. Thread
 * counts change nothing there (the CUDA backend ignores them), which the same checks confirm.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "guard.h"
#include "layer.h"
#include "qref.h"
#include "quant.h"

typedef struct qcase {
    qref_spec q;
    int64_t N, d_in, d_out, r;
    int nh;
    neat_activation act;
    neat_dtype dt;
} qcase;

/* Everything one run of the six entry points writes. */
typedef struct outs {
    tbuf y, ya, yl, G, dx, db, dA, dB, dH[NEAT_MAX_HIDDEN], dxa, dAa, dBa, dHa[NEAT_MAX_HIDDEN];
} outs;

/* How a run hands out workspaces: exactly the queried size, against a guard on `side`,
 * starting `misalign` bytes past a 64-byte boundary (GUARD_FLUSH: flush with the guard). */
typedef struct wsmode {
    int side, misalign;
} wsmode;

static size_t es_of(neat_dtype dt)
{
    return dt == NEAT_FLOAT64 ? 8 : 4;
}

/* One call through its size query with a guarded workspace of exactly that size; with qw it
 * is the neat_q* call, else the float one. A workspace one byte short must be refused. */
enum { E_LINEAR, E_ADAPTER, E_G, E_LOWRANK, E_BWD, E_ABWD };
static const char *const entry_names[] = {"linear_forward", "adapter_forward", "compute_g",
                                          "lowrank_forward", "linear_backward",
                                          "adapter_backward"};

static neat_status size_of(int e, const neat_qweight *qw, const neat_args *a,
                           const neat_lowrank_args *la, const neat_grads *g,
                           const neat_exec *ex, size_t *bytes)
{
    switch (e) {
    case E_LINEAR:
        return qw ? neat_qlinear_forward_workspace_size(a, qw, ex, bytes)
                  : neat_linear_forward_workspace_size(a, ex, bytes);
    case E_ADAPTER:
        return qw ? neat_qadapter_forward_workspace_size(a, qw, ex, bytes)
                  : neat_adapter_forward_workspace_size(a, ex, bytes);
    case E_G:
        return qw ? neat_qcompute_g_workspace_size(a, qw, ex, bytes)
                  : neat_compute_g_workspace_size(a, ex, bytes);
    case E_LOWRANK:
        return qw ? neat_qlowrank_forward_workspace_size(la, qw, ex, bytes)
                  : neat_lowrank_forward_workspace_size(la, ex, bytes);
    case E_BWD:
        return qw ? neat_qlinear_backward_workspace_size(g, a, qw, ex, bytes)
                  : neat_linear_backward_workspace_size(g, a, ex, bytes);
    default:
        return qw ? neat_qadapter_backward_workspace_size(g, a, qw, ex, bytes)
                  : neat_adapter_backward_workspace_size(g, a, ex, bytes);
    }
}

static neat_status compute(int e, const neat_qweight *qw, neat_tensor *out, const neat_args *a,
                           const neat_lowrank_args *la, const neat_grads *g,
                           const neat_tensor *dy, void *ws, size_t bytes, const neat_exec *ex)
{
    switch (e) {
    case E_LINEAR:
        return qw ? neat_qlinear_forward(out, a, qw, ws, bytes, ex)
                  : neat_linear_forward(out, a, ws, bytes, ex);
    case E_ADAPTER:
        return qw ? neat_qadapter_forward(out, a, qw, ws, bytes, ex)
                  : neat_adapter_forward(out, a, ws, bytes, ex);
    case E_G:
        return qw ? neat_qcompute_g(out, a, qw, ws, bytes, ex) : neat_compute_g(out, a, ws, bytes, ex);
    case E_LOWRANK:
        return qw ? neat_qlowrank_forward(out, la, qw, ws, bytes, ex)
                  : neat_lowrank_forward(out, la, ws, bytes, ex);
    case E_BWD:
        return qw ? neat_qlinear_backward(g, dy, a, qw, ws, bytes, ex)
                  : neat_linear_backward(g, dy, a, ws, bytes, ex);
    default:
        return qw ? neat_qadapter_backward(g, dy, a, qw, ws, bytes, ex)
                  : neat_adapter_backward(g, dy, a, ws, bytes, ex);
    }
}

static void call(int e, const neat_qweight *qw, neat_tensor *out, const neat_args *a,
                 const neat_lowrank_args *la, const neat_grads *g, const neat_tensor *dy,
                 const neat_exec *ex, wsmode m, const char *what)
{
    size_t bytes = 0;
    neat_status st = size_of(e, qw, a, la, g, ex, &bytes);
    CHECK(st == NEAT_OK, "%s: %s%s size: %s", what, qw ? "q" : "", entry_names[e],
          neat_last_error());
    gbuf ws = guard_alloc(bytes, m.side, m.misalign);
    if (qw && bytes > 0) {
        st = compute(e, qw, out, a, la, g, dy, ws.p, bytes - 1, ex);
        CHECK(st == NEAT_ERR_WORKSPACE, "%s: q%s accepted a workspace one byte short (%d)", what,
              entry_names[e], (int)st);
    }
    st = compute(e, qw, out, a, la, g, dy, ws.p, bytes, ex);
    CHECK(st == NEAT_OK, "%s: %s%s: %s", what, qw ? "q" : "", entry_names[e], neat_last_error());
    guard_free(&ws);
}

static void outs_make(outs *o, const layer_spec *s)
{
    neat_dtype dt = s->dtype;
    memset(o, 0, sizeof *o);
    o->y = tb_make(dt, s->N, s->d_out, LAYOUT_PADDED, NULL, NAN);
    o->ya = tb_make(dt, s->N, s->d_out, LAYOUT_CONTIG, NULL, NAN);
    o->yl = tb_make(dt, s->N, s->d_out, LAYOUT_TRANSPOSED, NULL, NAN);
    o->G = tb_make(dt, s->r, s->d_in, LAYOUT_CONTIG, NULL, NAN);
    o->dx = tb_make(dt, s->N, s->d_in, LAYOUT_TRANSPOSED, NULL, NAN);
    o->dxa = tb_make(dt, s->N, s->d_in, LAYOUT_CONTIG, NULL, NAN);
    o->db = tb_make1(dt, s->d_out, 2, NULL, NAN);
    o->dA = tb_make(dt, s->r, s->d_out, LAYOUT_PADDED, NULL, NAN);
    o->dAa = tb_make(dt, s->r, s->d_out, LAYOUT_CONTIG, NULL, NAN);
    o->dB = tb_make(dt, s->d_out, s->r, LAYOUT_CONTIG, NULL, NAN);
    o->dBa = tb_make(dt, s->d_out, s->r, LAYOUT_TRANSPOSED, NULL, NAN);
    for (int i = 0; i < s->num_hidden; i++) {
        o->dH[i] = tb_make(dt, s->r, s->r, i % LAYOUT_COUNT, NULL, NAN);
        o->dHa[i] = tb_make(dt, s->r, s->r, LAYOUT_CONTIG, NULL, NAN);
    }
}

static void outs_free(outs *o, int nh)
{
    tb_free(&o->y), tb_free(&o->ya), tb_free(&o->yl), tb_free(&o->G), tb_free(&o->dx);
    tb_free(&o->dxa), tb_free(&o->db), tb_free(&o->dA), tb_free(&o->dAa), tb_free(&o->dB);
    tb_free(&o->dBa);
    for (int i = 0; i < nh; i++) tb_free(&o->dH[i]), tb_free(&o->dHa[i]);
}

/*
 * The six entry points on layer l: the float ones on l's W (qw NULL), or the quantized ones
 * (args.weight NULL). lowrank takes Gin as its G, the same input for both runs.
 */
static void run_all(const layer *l, const neat_qweight *qw, const tbuf *Gin, const neat_exec *ex,
                    wsmode m, outs *o, const char *what)
{
    const layer_spec *s = &l->spec;
    neat_args a = l->args, ad = l->args;
    ad.bias = NULL;
    if (qw)
        a.weight = ad.weight = NULL;
    neat_lowrank_args la = {a.x, a.weight, a.bias, Gin ? &Gin->t : &o->G.t, a.B, a.scale};
    call(E_LINEAR, qw, &o->y.t, &a, NULL, NULL, NULL, ex, m, what);
    call(E_ADAPTER, qw, &o->ya.t, &ad, NULL, NULL, NULL, ex, m, what);
    call(E_G, qw, &o->G.t, &a, NULL, NULL, NULL, ex, m, what);
    call(E_LOWRANK, qw, &o->yl.t, NULL, &la, NULL, NULL, ex, m, what);
    neat_tensor dh[NEAT_MAX_HIDDEN], dha[NEAT_MAX_HIDDEN];
    for (int i = 0; i < s->num_hidden; i++) dh[i] = o->dH[i].t, dha[i] = o->dHa[i].t;
    neat_grads g = {&o->dx.t, NULL, &o->db.t, &o->dA.t, &o->dB.t, s->num_hidden ? dh : NULL};
    call(E_BWD, qw, NULL, &a, NULL, &g, &l->tdy.t, ex, m, what);
    neat_grads ga = {&o->dxa.t, NULL, NULL, &o->dAa.t, &o->dBa.t, s->num_hidden ? dha : NULL};
    call(E_ABWD, qw, NULL, &ad, NULL, &ga, &l->tdy.t, ex, m, what);
}

static double tol_for(neat_dtype dt)
{
    return dt == NEAT_FLOAT64 ? 1e-12 : 1e-5; /* docs/design.md §4 */
}

static void expect_close(const tbuf *got, const tbuf *want, const char *name, const char *what,
                         neat_dtype dt)
{
    int64_t rows = got->t.sizes[0], cols = got->t.ndim == 2 ? got->t.sizes[1] : 1;
    int64_t n = rows * cols;
    double *g = xmalloc((size_t)(n + 1) * 8), *w = xmalloc((size_t)(n + 1) * 8);
    tb_read(got, g), tb_read(want, w);
    double err = rel_err(g, w, n), tol = tol_for(dt);
    CHECK(err <= tol, "%s: %s rel err %.3g > %g against the float path on the dequantized W",
          what, name, err, tol);
    if (!(err <= tol))
        print_mismatches(name, g, w, rows, cols, tol);
    /* a zero reference would make the comparison hollow */
    double norm = 0;
    for (int64_t i = 0; i < n; i++) norm += w[i] * w[i];
    CHECK(n == 0 || norm > 0, "%s: %s is all zeros in the float path", what, name);
    CHECK(tb_padding_is(got, NAN), "%s: %s wrote outside its view", what, name);
    free(g), free(w);
}

static int same_bits(const tbuf *a, const tbuf *b)
{
    size_t es = es_of(a->t.dtype);
    return a->storage_elems == b->storage_elems &&
           memcmp(a->storage, b->storage, (size_t)a->storage_elems * es) == 0;
}

#define FOR_OUTS(X, nh)                                                                        \
    do {                                                                                       \
        X(y); X(ya); X(yl); X(G); X(dx); X(db); X(dA); X(dB); X(dxa); X(dAa); X(dBa);          \
        for (int i_ = 0; i_ < (nh); i_++) {                                                    \
            X(dH[i_]);                                                                         \
            X(dHa[i_]);                                                                        \
        }                                                                                      \
    } while (0)

static void describe(const qcase *c, char *buf, size_t n)
{
    char q[64];
    qref_describe(&c->q, q, sizeof q);
    snprintf(buf, n, "%s %s N=%lld d_in=%lld d_out=%lld r=%lld depth=%d act=%s", q,
             c->dt == NEAT_FLOAT64 ? "f64" : "f32", (long long)c->N, (long long)c->d_in,
             (long long)c->d_out, (long long)c->r, c->nh + 2, neat_activation_name(c->act));
}

/* Sets l's W, its views and its reference, to the reference-dequantized W of r. */
static void use_dequantized(layer *l, const qref *r)
{
    const layer_spec *s = &l->spec;
    qref_dequant(&r->q, l->W);
    for (int64_t i = 0; i < s->d_out; i++)
        for (int64_t k = 0; k < s->d_in; k++) tb_set(&l->tW, i, k, l->W[i * s->d_in + k]);
}

static void check_case(const qcase *c, uint64_t seed, int thread_check)
{
    char what[256];
    describe(c, what, sizeof what);
    layer_spec s = {c->N, c->d_in, c->d_out, c->r, c->act, c->nh, 1, c->dt,
                    LAYOUT_PADDED, LAYOUT_TRANSPOSED, LAYOUT_TRANSPOSED, 0.75, seed};
    layer l;
    layer_init(&l, &s);
    uint64_t rng = seed * 7919 + 17;
    qref r;
    qref_make(&r, &c->q, c->dt, c->d_out, c->d_in, GUARD_BACK, &rng);
    use_dequantized(&l, &r);

    wsmode flush = {GUARD_BACK, GUARD_FLUSH};
    outs f, q;
    outs_make(&f, &s), outs_make(&q, &s);
    run_all(&l, NULL, NULL, NULL, flush, &f, what);
    tbuf Gin = tb_make(c->dt, c->r, c->d_in, LAYOUT_TRANSPOSED, NULL, 0);
    double *gv = xmalloc((size_t)(c->r * c->d_in) * 8);
    tb_read(&f.G, gv);
    for (int64_t i = 0; i < c->r; i++)
        for (int64_t k = 0; k < c->d_in; k++) tb_set(&Gin, i, k, gv[i * c->d_in + k]);
    free(gv);
    /* the float lowrank on Gin, so that both see the same G */
    neat_lowrank_args la = {l.args.x, l.args.weight, l.args.bias, &Gin.t, l.args.B, l.args.scale};
    call(E_LOWRANK, NULL, &f.yl.t, NULL, &la, NULL, NULL, NULL, flush, what);

    run_all(&l, &r.q, &Gin, NULL, flush, &q, what);
#define CLOSE(f_) expect_close(&q.f_, &f.f_, #f_, what, c->dt)
    if (c->N > 0) {
        CLOSE(y), CLOSE(ya), CLOSE(yl), CLOSE(dx), CLOSE(dxa), CLOSE(dB), CLOSE(dBa), CLOSE(db);
    }
    CLOSE(G);
    if (c->N > 0) {
        CLOSE(dA), CLOSE(dAa);
        for (int i = 0; i < c->nh; i++) CLOSE(dH[i]), CLOSE(dHa[i]);
    }
#undef CLOSE

    /* the same bits from a guard on the other side, a misaligned start, and 1..4 threads */
    static const wsmode modes[] = {{GUARD_FRONT, GUARD_FLUSH}, {GUARD_BACK, 24}};
    for (int t = 1; t <= (thread_check ? 4 : 2); t++) {
        int threads = t;
        neat_exec ex = {pthread_parallel_for, &threads, threads, NULL, 0, NULL, NULL, NULL};
        outs o;
        outs_make(&o, &s);
        run_all(&l, &r.q, &Gin, &ex, modes[t % 2], &o, what);
#define SAME(f_) CHECK(same_bits(&o.f_, &q.f_), "%s: " #f_ " differs with %d threads", what, t)
        FOR_OUTS(SAME, c->nh);
#undef SAME
        outs_free(&o, c->nh);
    }
    tb_free(&Gin);
    outs_free(&f, c->nh), outs_free(&q, c->nh);
    qref_free(&r);
    layer_free(&l);
}

/* The dequantizers: the CPU one, and on test_quant_cuda the CUDA one too. */
#ifdef NEAT_TEST_ON_CUDA
#define DEQUANTIZERS 2
#else
#define DEQUANTIZERS 1
#endif

/* The library's dequantizer(s) against the reference, bit for bit, on rectangles of W. */
static void check_dequant(const qref_spec *qs, int64_t d_out, int64_t d_in, uint64_t seed)
{
    char what[64];
    qref_describe(qs, what, sizeof what);
    uint64_t rng = seed;
    for (int d = 0; d < 2; d++) {
        neat_dtype dt = d ? NEAT_FLOAT64 : NEAT_FLOAT32;
        qref r;
        qref_make(&r, qs, dt, d_out, d_in, d ? GUARD_FRONT : GUARD_BACK, &rng);
        double *W = xmalloc((size_t)(d_out * d_in) * 8);
        qref_dequant(&r.q, W);
        int nonzero = 0;
        for (int t = 0; t < 20; t++) {
            int64_t i0 = (int64_t)(rng_next(&rng) % (uint64_t)d_out);
            int64_t k0 = (int64_t)(rng_next(&rng) % (uint64_t)d_in);
            int64_t rows = 1 + (int64_t)(rng_next(&rng) % (uint64_t)(d_out - i0));
            int64_t cols = 1 + (int64_t)(rng_next(&rng) % (uint64_t)(d_in - k0));
            if (t == 0)
                i0 = k0 = 0, rows = d_out, cols = d_in;
            int64_t ld = cols + (t % 3);
            void *P = xmalloc((size_t)(rows * ld) * es_of(dt));
            int threads = 1 + t % 4;
            neat_exec ex = {pthread_parallel_for, &threads, threads, NULL, 0, NULL, NULL, NULL};
            for (int dev = 0; dev < DEQUANTIZERS; dev++) {
                const char *who = dev ? "cuda" : "cpu";
                memset(P, 0xff, (size_t)(rows * ld) * es_of(dt));
                if (dev) {
#ifdef NEAT_TEST_ON_CUDA
                    CHECK(neat_cuda_dequant_panel(&r.q, dt, i0, rows, k0, cols, P, ld, NULL) ==
                              NEAT_OK,
                          "%s: cuda dequant: %s", what, neat_last_error());
#endif
                } else {
                    neat_dequant_panel_par(&r.q, dt, i0, rows, k0, cols, P, ld, &ex);
                }
                int bad = 0;
                for (int64_t i = 0; i < rows; i++)
                    for (int64_t k = 0; k < cols; k++) {
                        double v = dt == NEAT_FLOAT64 ? ((double *)P)[i * ld + k]
                                                      : ((float *)P)[i * ld + k];
                        double want = W[(i0 + i) * d_in + k0 + k];
                        bad += v != want;
                        nonzero += want != 0;
                    }
                CHECK(bad == 0, "%s %s: %s dequant of W[%lld:+%lld, %lld:+%lld]: %d elements "
                                "differ from the reference",
                      what, d ? "f64" : "f32", who, (long long)i0, (long long)rows,
                      (long long)k0, (long long)cols, bad);
            }
            free(P);
        }
        CHECK(nonzero > 0, "%s: the reference W is all zeros", what);
        free(W);
        qref_free(&r);
    }
}

/*
 * Nothing the size of W: for a 2048 x 2048 W (16 MiB as float32) every quantized call's
 * workspace, at 1 and 4 threads, stays below a quarter of a float copy of W.
 */
static void check_no_w_sized_buffer(void)
{
    const qref_spec specs[] = {{NEAT_QFMT_NF4, 1, 64, 256, 0}, {NEAT_QFMT_INT8_ROW, 0, 0, 0, 0}};
    for (int k = 0; k < 2; k++) {
        layer_spec s = {8, 2048, 2048, 4, NEAT_ACT_RELU, 2, 1, NEAT_FLOAT32, 0, 0, 0, 1.0, 3};
        layer l;
        layer_init(&l, &s);
        uint64_t rng = 9;
        qref r;
        qref_make(&r, &specs[k], NEAT_FLOAT32, 2048, 2048, GUARD_BACK, &rng);
        neat_args a = l.args, ad = l.args;
        a.weight = ad.weight = NULL, ad.bias = NULL;
        tbuf dx = tb_make(NEAT_FLOAT32, 8, 2048, 0, NULL, 0), dA = tb_make(NEAT_FLOAT32, 4, 2048, 0, NULL, 0);
        tbuf G = tb_make(NEAT_FLOAT32, 4, 2048, 0, NULL, 0);
        neat_grads g = {&dx.t, NULL, NULL, &dA.t, NULL, NULL};
        neat_lowrank_args la = {a.x, NULL, a.bias, &G.t, a.B, 1.0};
        size_t w_bytes = (size_t)2048 * 2048 * sizeof(float);
        for (int t = 1; t <= 4; t += 3) {
            int threads = t;
            neat_exec ex = {pthread_parallel_for, &threads, threads, NULL, 0, NULL, NULL, NULL};
            for (int e = 0; e < 6; e++) {
                size_t bytes = 0;
                neat_status st = size_of(e, &r.q, e == E_ADAPTER || e == E_ABWD ? &ad : &a, &la,
                                         &g, &ex, &bytes);
                CHECK(st == NEAT_OK && bytes < w_bytes / 4,
                      "q%s with %d threads asks for %zu bytes; a float W is %zu (%s)",
                      entry_names[e], t, bytes, w_bytes, neat_last_error());
            }
        }
        tb_free(&dx), tb_free(&dA), tb_free(&G);
        qref_free(&r);
        layer_free(&l);
    }
}

/* ---- errors ---- */

static int has(const char *s)
{
    return strstr(neat_last_error(), s) != NULL;
}

/* A small valid setup for the error checks. */
typedef struct esetup {
    layer l;
    qref r;
    tbuf y, dx, dW, G;
} esetup;

static void esetup_make(esetup *e, const qref_spec *qs, neat_dtype dt)
{
    layer_spec s = {5, 37, 53, 3, NEAT_ACT_RELU, 2, 1, dt, 0, 0, 0, 1.0, 99};
    layer_init(&e->l, &s);
    uint64_t rng = 5;
    qref_make(&e->r, qs, dt, 53, 37, GUARD_BACK, &rng);
    e->l.args.weight = NULL;
    e->y = tb_make(dt, 5, 53, 0, NULL, 0);
    e->dx = tb_make(dt, 5, 37, 0, NULL, 0);
    e->dW = tb_make(dt, 53, 37, 0, NULL, 0);
    e->G = tb_make(dt, 3, 37, 0, NULL, 0);
}

static void esetup_free(esetup *e)
{
    tb_free(&e->y), tb_free(&e->dx), tb_free(&e->dW), tb_free(&e->G);
    qref_free(&e->r);
    layer_free(&e->l);
}

/* The forward size query and the compute call with q must fail with st, naming `field`. */
static void expect_refused(esetup *e, const neat_qweight *q, neat_status st,
                           const char *field, const char *what)
{
    size_t bytes = 0;
    neat_status got = neat_qlinear_forward_workspace_size(&e->l.args, q, NULL, &bytes);
    CHECK(got == st && has(field), "%s: query gave %d \"%s\", expected %d naming %s", what,
          (int)got, neat_last_error(), (int)st, field);
    char buf[256];
    got = neat_qcompute_g(&e->G.t, &e->l.args, q, buf, sizeof buf, NULL);
    CHECK(got == st && has(field), "%s: qcompute_g gave %d \"%s\", expected %d naming %s", what,
          (int)got, neat_last_error(), (int)st, field);
}

static void check_errors(void)
{
    const qref_spec nf4 = {NEAT_QFMT_NF4, 0, 64, 0, 0}, nested = {NEAT_QFMT_FP4, 1, 64, 16, 0};
    const qref_spec int8 = {NEAT_QFMT_INT8_ROW, 0, 0, 0, 3};
    esetup e;
    neat_qweight q;

    esetup_make(&e, &nf4, NEAT_FLOAT32);
    size_t bytes = 0;
    CHECK(neat_qlinear_forward_workspace_size(&e.l.args, &e.r.q, NULL, &bytes) == NEAT_OK,
          "valid setup refused: %s", neat_last_error());
    expect_refused(&e, NULL, NEAT_ERR_INVALID_ARGUMENT, "qweight must not be NULL", "NULL");
    q = e.r.q, q.format = (neat_qformat)0;
    expect_refused(&e, &q, NEAT_ERR_INVALID_ARGUMENT, "qweight.format is 0", "format 0");
    q = e.r.q, q.format = (neat_qformat)9;
    expect_refused(&e, &q, NEAT_ERR_INVALID_ARGUMENT, "qweight.format is 9", "format 9");
    q = e.r.q, q.blocksize = 100;
    expect_refused(&e, &q, NEAT_ERR_INVALID_ARGUMENT, "qweight.blocksize must be a power of two",
                   "blocksize 100");
    q = e.r.q, q.blocksize = 8;
    expect_refused(&e, &q, NEAT_ERR_INVALID_ARGUMENT, "qweight.blocksize", "blocksize 8");
    q = e.r.q, q.absmax = NULL;
    expect_refused(&e, &q, NEAT_ERR_INVALID_ARGUMENT, "qweight.absmax must not be NULL",
                   "absmax NULL");
    q = e.r.q, q.data = NULL;
    expect_refused(&e, &q, NEAT_ERR_INVALID_ARGUMENT, "qweight.data must not be NULL", "data");
    q = e.r.q, q.code = NULL;
    expect_refused(&e, &q, NEAT_ERR_INVALID_ARGUMENT, "qweight.code must not be NULL", "code");
    q = e.r.q, q.nested = 2;
    expect_refused(&e, &q, NEAT_ERR_INVALID_ARGUMENT, "qweight.nested must be 0 or 1", "nested 2");
    q = e.r.q, q.code2 = q.absmax;
    expect_refused(&e, &q, NEAT_ERR_INVALID_ARGUMENT, "qweight.code2 must be NULL when nested = 0",
                   "code2 without nesting");
    q = e.r.q, q.row_stride = 37;
    expect_refused(&e, &q, NEAT_ERR_INVALID_ARGUMENT, "qweight.row_stride must be 0",
                   "int8 stride on nf4");
    q = e.r.q, q.absmax = (const float *)((const char *)q.absmax + 2);
    expect_refused(&e, &q, NEAT_ERR_INVALID_ARGUMENT, "qweight.absmax at", "misaligned absmax");
    q = e.r.q, q.d_out = 0;
    expect_refused(&e, &q, NEAT_ERR_INVALID_ARGUMENT, "qweight must have shape (d_out, d_in) with",
                   "d_out 0");
    q = e.r.q, q.d_in = 38;
    expect_refused(&e, &q, NEAT_ERR_INVALID_ARGUMENT, "to match qweight (53, 38)", "d_in vs x");
    q = e.r.q, q.d_out = 52;
    expect_refused(&e, &q, NEAT_ERR_INVALID_ARGUMENT, "A must have shape (r, d_out) = (r, 52)",
                   "d_out vs A");
    q = e.r.q, q.dtype = NEAT_FLOAT16;
    if (tb_device().type == NEAT_DEVICE_CPU) /* a half W is a CUDA dtype; there x must match it */
        expect_refused(&e, &q, NEAT_ERR_INVALID_ARGUMENT, "qweight has dtype float16", "f16 on cpu");
    else
        expect_refused(&e, &q, NEAT_ERR_INVALID_ARGUMENT, "but qweight has float16", "f16 vs x");
    q = e.r.q, q.dtype = NEAT_FLOAT64;
    expect_refused(&e, &q, NEAT_ERR_INVALID_ARGUMENT, "but qweight has float64", "dtype vs A");
    {
        /* B disagrees: (d_out + 1, r) */
        neat_args a = e.l.args;
        tbuf B2 = tb_make(NEAT_FLOAT32, 54, 3, 0, NULL, 0);
        a.B = &B2.t;
        CHECK(neat_qlinear_forward_workspace_size(&a, &e.r.q, NULL, &bytes) ==
                      NEAT_ERR_INVALID_ARGUMENT &&
                  has("B must have shape (d_out, r) = (53, 3) to match qweight and A"),
              "B vs qweight: %s", neat_last_error());
        tb_free(&B2);
        /* weight given too */
        a = e.l.args;
        a.weight = &e.dW.t;
        CHECK(neat_qlinear_forward_workspace_size(&a, &e.r.q, NULL, &bytes) ==
                      NEAT_ERR_INVALID_ARGUMENT &&
                  has("weight must be NULL for the quantized entry points"),
              "weight and qweight: %s", neat_last_error());
        neat_lowrank_args la = {e.l.args.x, &e.dW.t, NULL, &e.G.t, e.l.args.B, 1.0};
        CHECK(neat_qlowrank_forward_workspace_size(&la, &e.r.q, NULL, &bytes) ==
                      NEAT_ERR_INVALID_ARGUMENT &&
                  has("weight must be NULL"),
              "lowrank weight and qweight: %s", neat_last_error());
        /* dweight of a frozen weight */
        neat_grads g = {&e.dx.t, &e.dW.t, NULL, NULL, NULL, NULL};
        CHECK(neat_qlinear_backward_workspace_size(&g, &e.l.args, &e.r.q, NULL, &bytes) ==
                      NEAT_ERR_INVALID_ARGUMENT &&
                  has("dweight must be NULL with a quantized weight"),
              "dweight: %s", neat_last_error());
        /* an output over one of qweight's arrays, a workspace over another */
        float *big = xmalloc(3 * 37 * sizeof(float));
        memcpy(big + 1, e.r.q.absmax, 31 * sizeof(float)); /* ceil(53 * 37 / 64) blocks */
        neat_tensor over = neat_tensor_contiguous(big, NEAT_FLOAT32, 2, (int64_t[]){3, 37},
                                                  tb_device());
        neat_qweight qa = e.r.q;
        qa.absmax = big + 1;
        char ws[4096];
        CHECK(neat_qcompute_g(&over, &e.l.args, &qa, ws, sizeof ws, NULL) ==
                      NEAT_ERR_INVALID_ARGUMENT &&
                  has("output G shares memory with input qweight.absmax"),
              "G over absmax: %s", neat_last_error());
        size_t wsb = 1 << 18; /* more than either backend asks for */
        char *wbuf = xmalloc(wsb);
        memcpy(wbuf + 100, e.r.q.data, (53 * 37 + 1) / 2);
        qa = e.r.q;
        qa.data = wbuf + 100;
        CHECK(neat_qcompute_g(&e.G.t, &e.l.args, &qa, wbuf, wsb, NULL) ==
                      NEAT_ERR_INVALID_ARGUMENT &&
                  has("workspace") && has("shares memory with input qweight.data"),
              "workspace over data: %s", neat_last_error());
        free(big), free(wbuf);
        /* the caller's name for qweight */
        neat_names names = {0};
        names.call = "neat::qlinear";
        names.arg[NEAT_ARG_QWEIGHT] = "weight_quant";
        neat_exec ex = {0};
        ex.names = &names;
        q = e.r.q, q.blocksize = 3;
        CHECK(neat_qlinear_forward_workspace_size(&e.l.args, &q, &ex, &bytes) ==
                      NEAT_ERR_INVALID_ARGUMENT &&
                  has("neat::qlinear: weight_quant.blocksize"),
              "renamed: %s", neat_last_error());
    }
    /* on CUDA: computed with a CUDA build, refused as unsupported without one; a qweight on
     * another device than the tensors is refused naming it */
    {
        neat_device cuda = {NEAT_DEVICE_CUDA, 0};
        neat_tensor x = *e.l.args.x, A = *e.l.args.A, B = *e.l.args.B, b = *e.l.args.bias;
        neat_tensor H[2] = {e.l.hidden[0], e.l.hidden[1]};
        x.device = A.device = B.device = b.device = H[0].device = H[1].device = cuda;
        neat_args a = e.l.args;
        a.x = &x, a.A = &A, a.B = &B, a.bias = &b, a.hidden = H;
        q = e.r.q, q.device = cuda;
        neat_status got = neat_qlinear_forward_workspace_size(&a, &q, NULL, &bytes);
        if (neat_has_cuda())
            CHECK(got == NEAT_OK, "cuda: %s", neat_last_error());
        else
            CHECK(got == NEAT_ERR_UNSUPPORTED && has("built without CUDA"), "cuda: %s",
                  neat_last_error());
        q.device.index = 1;
        CHECK(neat_qlinear_forward_workspace_size(&a, &q, NULL, &bytes) ==
                      NEAT_ERR_INVALID_ARGUMENT &&
                  has("cuda:1") && has("cuda:0"),
              "qweight on cuda:1: %s", neat_last_error());
        q.device = (neat_device){NEAT_DEVICE_CPU, 0};
        CHECK(neat_qlinear_forward_workspace_size(&a, &q, NULL, &bytes) ==
                      NEAT_ERR_INVALID_ARGUMENT &&
                  has("qweight") && has("cpu"),
              "qweight on cpu, tensors on cuda: %s", neat_last_error());
    }
    esetup_free(&e);

    esetup_make(&e, &nested, NEAT_FLOAT32);
    CHECK(neat_qlinear_forward_workspace_size(&e.l.args, &e.r.q, NULL, &bytes) == NEAT_OK,
          "valid nested setup refused: %s", neat_last_error());
    q = e.r.q, q.absmax_q = NULL;
    expect_refused(&e, &q, NEAT_ERR_INVALID_ARGUMENT, "qweight.absmax_q must not be NULL",
                   "absmax_q");
    q = e.r.q, q.code2 = NULL;
    expect_refused(&e, &q, NEAT_ERR_INVALID_ARGUMENT, "qweight.code2 must not be NULL", "code2");
    q = e.r.q, q.absmax2 = NULL;
    expect_refused(&e, &q, NEAT_ERR_INVALID_ARGUMENT, "qweight.absmax2 must not be NULL",
                   "absmax2");
    q = e.r.q, q.blocksize2 = 0;
    expect_refused(&e, &q, NEAT_ERR_INVALID_ARGUMENT, "qweight.blocksize2 must be a power of two",
                   "blocksize2");
    q = e.r.q, q.absmax = q.code2;
    expect_refused(&e, &q, NEAT_ERR_INVALID_ARGUMENT, "qweight.absmax must be NULL when nested = 1",
                   "absmax with nesting");
    q = e.r.q, q.offset = NAN;
    expect_refused(&e, &q, NEAT_ERR_INVALID_ARGUMENT, "qweight.offset must be finite", "offset");
    q = e.r.q, q.nested = 0;
    expect_refused(&e, &q, NEAT_ERR_INVALID_ARGUMENT, "qweight.absmax_q must be NULL",
                   "nested fields, nested = 0");
    esetup_free(&e);

    esetup_make(&e, &int8, NEAT_FLOAT64);
    CHECK(neat_qlinear_forward_workspace_size(&e.l.args, &e.r.q, NULL, &bytes) == NEAT_OK,
          "valid int8 setup refused: %s", neat_last_error());
    q = e.r.q, q.row_stride = 36;
    expect_refused(&e, &q, NEAT_ERR_INVALID_ARGUMENT, "qweight.row_stride must be >= d_in = 37",
                   "stride < d_in");
    q = e.r.q, q.row_stride = INT64_MAX / 2;
    expect_refused(&e, &q, NEAT_ERR_INVALID_ARGUMENT, "qweight.row_stride", "huge stride");
    q = e.r.q, q.scb = NULL;
    expect_refused(&e, &q, NEAT_ERR_INVALID_ARGUMENT, "qweight.scb must not be NULL", "scb");
    q = e.r.q, q.blocksize = 64;
    expect_refused(&e, &q, NEAT_ERR_INVALID_ARGUMENT, "qweight.blocksize must be 0", "blocksize");
    q = e.r.q, q.absmax = e.r.q.scb;
    expect_refused(&e, &q, NEAT_ERR_INVALID_ARGUMENT, "qweight.absmax must be NULL", "absmax");
    q = e.r.q, q.data = NULL;
    expect_refused(&e, &q, NEAT_ERR_INVALID_ARGUMENT, "qweight.data must not be NULL", "CB");
    esetup_free(&e);
}

int main(void)
{
    CHECK(neat_abi_version() == 5 && NEAT_ABI_VERSION == 5, "ABI version %d",
          neat_abi_version());

    /* the dequantizer, bit for bit */
    const qref_spec dq[] = {
        {NEAT_QFMT_NF4, 0, 64, 0, 0},   {NEAT_QFMT_NF4, 0, 16, 0, 0},
        {NEAT_QFMT_FP4, 0, 128, 0, 0},  {NEAT_QFMT_NF4, 1, 64, 256, 0},
        {NEAT_QFMT_FP4, 1, 32, 16, 0},  {NEAT_QFMT_NF4, 0, 4096, 0, 0},
        {NEAT_QFMT_INT8_ROW, 0, 0, 0, 0}, {NEAT_QFMT_INT8_ROW, 0, 0, 0, 7}};
    for (size_t i = 0; i < sizeof dq / sizeof *dq; i++) check_dequant(&dq[i], 53, 37, 11 + i);
    check_dequant(&dq[3], 301, 517, 3); /* many blocks, absmax2 blocks */

    /* the entry points against the float path; depth = nh + 2 */
    const qcase cases[] = {
        {{NEAT_QFMT_NF4, 0, 64, 0, 0}, 37, 37, 53, 3, 0, NEAT_ACT_RELU, NEAT_FLOAT32},
        {{NEAT_QFMT_NF4, 1, 128, 256, 0}, 29, 37, 53, 3, 2, NEAT_ACT_GELU, NEAT_FLOAT64},
        {{NEAT_QFMT_FP4, 0, 256, 0, 0}, 17, 45, 31, 4, 4, NEAT_ACT_SILU, NEAT_FLOAT32},
        {{NEAT_QFMT_FP4, 1, 64, 16, 0}, 5, 33, 41, 2, 6, NEAT_ACT_TANH, NEAT_FLOAT64},
        {{NEAT_QFMT_NF4, 0, 4096, 0, 0}, 3, 53, 37, 5, 8, NEAT_ACT_SIN, NEAT_FLOAT32},
        {{NEAT_QFMT_INT8_ROW, 0, 0, 0, 3}, 1, 37, 53, 3, 2, NEAT_ACT_SIN2PI, NEAT_FLOAT64},
        {{NEAT_QFMT_FP4, 1, 32, 256, 0}, 0, 37, 53, 3, 2, NEAT_ACT_IDENTITY, NEAT_FLOAT32},
        {{NEAT_QFMT_NF4, 0, 16, 0, 0}, 23, 19, 7, 2, 0, NEAT_ACT_GELU_TANH, NEAT_FLOAT32},
        /* several panels in every product: x W^T (d_out > one panel's columns, d_in > a K
         * slice), dy W (d_out > a K slice), the G stack (d_out > NEAT_GSTACK_QROWS) */
        {{NEAT_QFMT_NF4, 1, 64, 16, 0}, 40, 70, 1100, 4, 2, NEAT_ACT_GELU_TANH, NEAT_FLOAT32},
        {{NEAT_QFMT_INT8_ROW, 0, 0, 0, 5}, 45, 400, 700, 6, 0, NEAT_ACT_IDENTITY, NEAT_FLOAT32},
        {{NEAT_QFMT_NF4, 0, 1024, 0, 0}, 20, 400, 700, 3, 4, NEAT_ACT_SILU, NEAT_FLOAT64},
        {{NEAT_QFMT_FP4, 0, 512, 0, 0}, 300, 1023, 513, 8, 2, NEAT_ACT_RELU, NEAT_FLOAT32},
    };
    int n = (int)(sizeof cases / sizeof *cases);
    for (int i = 0; i < n; i++) check_case(&cases[i], 1000 + (uint64_t)i, i >= 8);

    check_no_w_sized_buffer();
    check_errors();
    return check_exit("test_quant");
}
