/*
 * test_kernels.c - every public kernel (linear / adapter forward and backward, compute_g)
 * against the float64 reference over shapes x activations x depths x dtypes, with strided
 * inputs and outputs, bias on and off, scale != 1, every gradient alone and all together.
 * Tolerances (docs/design.md §4), relative Frobenius: float64 1e-12, float32 1e-5.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "layer.h"

#define SENTINEL 7.0

static double tol_for(neat_dtype dt)
{
    return dt == NEAT_FLOAT64 ? 1e-12 : 1e-5;
}

/* Compares an output view with the reference and checks its padding still holds fill. */
static void expect_close(const char *desc, const char *what, const tbuf *out, const double *ref,
                         double tol, double fill)
{
    int64_t rows = out->t.sizes[0], cols = out->t.ndim == 2 ? out->t.sizes[1] : 1;
    double *got = xmalloc((size_t)(rows * cols + 1) * sizeof *got);
    tb_read(out, got);
    double err = rel_err(got, ref, rows * cols);
    CHECK(err <= tol, "%s: %s rel err %.3g > %g", desc, what, err, tol);
    if (!(err <= tol))
        print_mismatches(what, got, ref, rows, cols, tol);
    CHECK(tb_padding_is(out, fill), "%s: %s wrote outside its view", desc, what);
    free(got);
}

enum { G_DX, G_DW, G_DB, G_DA, G_DB_, G_DH_ALL, G_DH_ONE, G_COUNT };
static const char *const grad_names[G_COUNT] = {"dx", "dweight", "dbias", "dA", "dB",
                                                "dhidden (all)", "dhidden (last)"};

typedef struct refs {
    double *y_base, *y_adapter, *G, *y_linear;
    double *dx_base, *dx_adapter, *dx_linear, *dW_base, *dW_adapter, *dW_linear;
    double *db, *dA, *dB, *dH[NEAT_MAX_HIDDEN];
} refs;

static void refs_compute(const layer *l, refs *R)
{
    const layer_spec *s = &l->spec;
    int64_t ny = s->N * s->d_out + 1, nx = s->N * s->d_in + 1, nw = s->d_out * s->d_in;
    R->y_base = xmalloc((size_t)ny * 8), R->y_adapter = xmalloc((size_t)ny * 8);
    R->y_linear = xmalloc((size_t)ny * 8);
    R->G = xmalloc((size_t)(s->r * s->d_in) * 8);
    R->dx_base = xmalloc((size_t)nx * 8), R->dx_adapter = xmalloc((size_t)nx * 8);
    R->dx_linear = xmalloc((size_t)nx * 8);
    R->dW_base = xmalloc((size_t)nw * 8), R->dW_adapter = xmalloc((size_t)nw * 8);
    R->dW_linear = xmalloc((size_t)nw * 8);
    R->db = xmalloc((size_t)s->d_out * 8);
    R->dA = xmalloc((size_t)(s->r * s->d_out) * 8), R->dB = xmalloc((size_t)(s->r * s->d_out) * 8);
    ref_grads g = {R->dx_base, R->dx_adapter, R->dW_base, R->dW_adapter, R->db, R->dA, R->dB, {0}};
    for (int i = 0; i < s->num_hidden; i++) g.dH[i] = R->dH[i] = xmalloc((size_t)(s->r * s->r) * 8);
    ref_forward(&l->ref, R->y_base, R->y_adapter);
    ref_compute_g(&l->ref, R->G);
    ref_backward(&l->ref, l->dy, &g);
    for (int64_t i = 0; i < s->N * s->d_out; i++) R->y_linear[i] = R->y_base[i] + R->y_adapter[i];
    for (int64_t i = 0; i < s->N * s->d_in; i++) R->dx_linear[i] = R->dx_base[i] + R->dx_adapter[i];
    for (int64_t i = 0; i < nw; i++) R->dW_linear[i] = R->dW_base[i] + R->dW_adapter[i];
}

static void refs_free(refs *R, int nh)
{
    free(R->y_base), free(R->y_adapter), free(R->y_linear), free(R->G);
    free(R->dx_base), free(R->dx_adapter), free(R->dx_linear);
    free(R->dW_base), free(R->dW_adapter), free(R->dW_linear);
    free(R->db), free(R->dA), free(R->dB);
    for (int i = 0; i < nh; i++) free(R->dH[i]);
}

/* Runs one backward with the gradients in `want` (bit i = G_* i); checks requested ones against
 * the reference and that the others' buffers are untouched. */
static void check_backward(const layer *l, const refs *R, int with_base, unsigned want,
                           int layout_out, const char *desc)
{
    const layer_spec *s = &l->spec;
    neat_dtype dt = s->dtype;
    double tol = tol_for(dt);
    int nh = s->num_hidden;
    unsigned dh_mask = 0; /* which hidden gradients are requested */
    if (want & (1u << G_DH_ALL))
        dh_mask = (1u << nh) - 1;
    if ((want & (1u << G_DH_ONE)) && nh > 0)
        dh_mask |= 1u << (nh - 1);
#define FILL(bit) ((want & (1u << (bit))) ? NAN : SENTINEL)
    tbuf dx = tb_make(dt, s->N, s->d_in, layout_out, NULL, FILL(G_DX));
    tbuf dW = tb_make(dt, s->d_out, s->d_in, (layout_out + 1) % LAYOUT_COUNT, NULL, FILL(G_DW));
    tbuf db = tb_make1(dt, s->d_out, 1 + layout_out, NULL, FILL(G_DB));
    tbuf dA = tb_make(dt, s->r, s->d_out, (layout_out + 2) % LAYOUT_COUNT, NULL, FILL(G_DA));
    tbuf dB = tb_make(dt, s->d_out, s->r, layout_out, NULL, FILL(G_DB_));
#undef FILL
    tbuf dH[NEAT_MAX_HIDDEN];
    neat_tensor dhv[NEAT_MAX_HIDDEN];
    for (int i = 0; i < nh; i++) {
        dH[i] = tb_make(dt, s->r, s->r, (i + layout_out) % LAYOUT_COUNT, NULL,
                        (dh_mask >> i) & 1 ? NAN : SENTINEL);
        dhv[i] = dH[i].t;
        if (!((dh_mask >> i) & 1))
            dhv[i].data = NULL; /* "not requested" */
    }
    neat_grads g = {0};
    g.dx = (want & (1u << G_DX)) ? &dx.t : NULL;
    g.dweight = (want & (1u << G_DW)) ? &dW.t : NULL;
    g.dbias = with_base && (want & (1u << G_DB)) ? &db.t : NULL;
    g.dA = (want & (1u << G_DA)) ? &dA.t : NULL;
    g.dB = (want & (1u << G_DB_)) ? &dB.t : NULL;
    g.dhidden = dh_mask ? dhv : NULL;

    neat_status st = call_backward(with_base, &g, &l->tdy.t, &l->args, NULL);
    CHECK(st == NEAT_OK, "%s: backward returned %d: %s", desc, (int)st, neat_last_error());
    if (g.dx)
        expect_close(desc, "dx", &dx, with_base ? R->dx_linear : R->dx_adapter, tol, NAN);
    else
        CHECK(tb_all_are(&dx, SENTINEL), "%s: dx written but not requested", desc);
    if (g.dweight)
        expect_close(desc, "dweight", &dW, with_base ? R->dW_linear : R->dW_adapter, tol, NAN);
    else
        CHECK(tb_all_are(&dW, SENTINEL), "%s: dweight written but not requested", desc);
    if (g.dbias)
        expect_close(desc, "dbias", &db, R->db, tol, NAN);
    else if (!(want & (1u << G_DB))) /* adapter calls never get dbias */
        CHECK(tb_all_are(&db, SENTINEL), "%s: dbias written but not requested", desc);
    if (g.dA)
        expect_close(desc, "dA", &dA, R->dA, tol, NAN);
    else
        CHECK(tb_all_are(&dA, SENTINEL), "%s: dA written but not requested", desc);
    if (g.dB)
        expect_close(desc, "dB", &dB, R->dB, tol, NAN);
    else
        CHECK(tb_all_are(&dB, SENTINEL), "%s: dB written but not requested", desc);
    for (int i = 0; i < nh; i++) {
        char name[32];
        snprintf(name, sizeof name, "dhidden[%d]", i);
        if ((dh_mask >> i) & 1)
            expect_close(desc, name, &dH[i], R->dH[i], tol, NAN);
        else
            CHECK(tb_all_are(&dH[i], SENTINEL), "%s: %s written but not requested", desc, name);
    }
    tb_free(&dx), tb_free(&dW), tb_free(&db), tb_free(&dA), tb_free(&dB);
    for (int i = 0; i < nh; i++) tb_free(&dH[i]);
}

static void run_case(const layer_spec *s, int layout_out, int grads_alone)
{
    layer l;
    layer_init(&l, s);
    refs R;
    refs_compute(&l, &R);
    char base[300], desc[400];
    layer_describe(s, base, sizeof base);
    double tol = tol_for(s->dtype);

    for (int with_base = 1; with_base >= 0; with_base--) {
        snprintf(desc, sizeof desc, "%s %s out-layout %d", with_base ? "linear" : "adapter", base,
                 layout_out);
        neat_args args = l.args;
        if (!with_base)
            args.bias = NULL;
        tbuf y = tb_make(s->dtype, s->N, s->d_out, layout_out, NULL, NAN);
        neat_status st = call_forward(with_base, &y.t, &args, NULL);
        CHECK(st == NEAT_OK, "%s: forward returned %d: %s", desc, (int)st, neat_last_error());
        expect_close(desc, "y", &y, with_base ? R.y_linear : R.y_adapter, tol, NAN);
        tb_free(&y);

        layer tmp = l;
        tmp.args = args;
        unsigned all = (1u << G_COUNT) - 1;
        check_backward(&tmp, &R, with_base, all & ~(1u << G_DH_ONE), layout_out, desc);
        if (grads_alone)
            for (int gi = 0; gi < G_COUNT; gi++) {
                if (gi == G_DB && !with_base)
                    continue;
                char d2[480];
                snprintf(d2, sizeof d2, "%s [%s alone]", desc, grad_names[gi]);
                check_backward(&tmp, &R, with_base, 1u << gi, layout_out, d2);
            }
    }

    /* G alone; compute_g needs neither x nor B */
    snprintf(desc, sizeof desc, "compute_g %s", base);
    tbuf G = tb_make(s->dtype, s->r, s->d_in, layout_out, NULL, NAN);
    neat_args args = l.args;
    if (layout_out == LAYOUT_TRANSPOSED)
        args.x = NULL, args.B = NULL;
    neat_status st = call_compute_g(&G.t, &args, NULL);
    CHECK(st == NEAT_OK, "%s: returned %d: %s", desc, (int)st, neat_last_error());
    expect_close(desc, "G", &G, R.G, tol, NAN);
    tb_free(&G);

    refs_free(&R, s->num_hidden);
    layer_free(&l);
}

/* NaN in x reaches y (and the backward) without a crash. */
static void nan_case(neat_dtype dt)
{
    layer_spec s = {5, 37, 53, 3, NEAT_ACT_GELU, 2, 1, dt, 0, 0, 0, 0.5, 99};
    layer l;
    layer_init(&l, &s);
    if (dt == NEAT_FLOAT64)
        ((double *)l.tx.t.data)[0] = NAN;
    else
        ((float *)l.tx.t.data)[0] = NAN;
    tbuf y = tb_make(dt, s.N, s.d_out, 0, NULL, 0);
    CHECK(call_forward(1, &y.t, &l.args, NULL) == NEAT_OK, "NaN forward: %s", neat_last_error());
    int row0_nan = 1, rest_finite = 1;
    for (int64_t o = 0; o < s.d_out; o++) {
        row0_nan &= isnan(tb_storage_at(&y, o));
        for (int64_t i = 1; i < s.N; i++) rest_finite &= isfinite(tb_storage_at(&y, i * s.d_out + o));
    }
    CHECK(row0_nan && rest_finite, "NaN in x[0, 0] must make y[0, :] NaN and leave other rows "
          "finite (row0 NaN %d, rest finite %d)", row0_nan, rest_finite);
    tbuf dx = tb_make(dt, s.N, s.d_in, 0, NULL, 0), dA = tb_make(dt, s.r, s.d_out, 0, NULL, 0);
    neat_grads g = {0};
    g.dx = &dx.t, g.dA = &dA.t;
    CHECK(call_backward(1, &g, &l.tdy.t, &l.args, NULL) == NEAT_OK, "NaN backward: %s",
          neat_last_error());
    CHECK(isnan(tb_storage_at(&dA, 0)), "NaN in x must reach dA (dG = dU^T x)");
    tb_free(&y), tb_free(&dx), tb_free(&dA);
    layer_free(&l);
}

/* One case of the matrix; idx picks the seed, layouts, bias and scale. */
static void matrix_case(int d, int si, int act, int di, int idx)
{
    static const int64_t shapes[][4] = {
        {5, 37, 53, 3}, {1, 37, 53, 3}, {0, 37, 53, 3}, {64, 130, 70, 8}, {3, 1, 1, 1},
    };
    static const int depths[] = {0, 2, 4, 6, 8};
    static const double scales[] = {1.0, 0.37, -1.5};
    layer_spec s;
    s.N = shapes[si][0], s.d_in = shapes[si][1];
    s.d_out = shapes[si][2], s.r = shapes[si][3];
    s.act = (neat_activation)act;
    s.num_hidden = depths[di];
    s.bias = idx % 2;
    s.dtype = d ? NEAT_FLOAT64 : NEAT_FLOAT32;
    s.layout_x = idx % LAYOUT_COUNT;
    s.layout_w = (idx / 3) % LAYOUT_COUNT;
    s.layout_a = (idx / 9) % LAYOUT_COUNT;
    s.scale = scales[idx % 3];
    s.seed = 1000 + (uint64_t)idx;
    /* every gradient alone on a rotating subset keeps the run short */
    run_case(&s, (idx / 2) % LAYOUT_COUNT, idx % 4 == 0);
}

int main(void)
{
    int idx = 0;
    for (int d = 0; d < 2; d++)
        for (int si = 0; si < 5; si++)
            for (int act = 0; act <= NEAT_ACT_IDENTITY; act++)
                for (int di = 0; di < 5; di++, idx++) matrix_case(d, si, act, di, idx);
    /* activations appended to the enum later (sin2pi) continue the case numbering, so adding
     * one leaves the seeds and layouts of every earlier case as they were */
    for (int d = 0; d < 2; d++)
        for (int si = 0; si < 5; si++)
            for (int act = NEAT_ACT_IDENTITY + 1; act <= NEAT_ACT_LAST; act++)
                for (int di = 0; di < 5; di++, idx++) matrix_case(d, si, act, di, idx);
    nan_case(NEAT_FLOAT32);
    nan_case(NEAT_FLOAT64);
    return check_exit("test_kernels");
}
