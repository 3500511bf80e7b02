/*
 * validate.c - one loop over an entry point's rows (op_table.h) checks every public call:
 * presence, rank, dims, device, dtype, layout and matrix limits per row, then the overlap rules
 * and exec's limits.
 */
#include "validate.h"

#include <math.h>
#include <stdio.h>

#include "backend.h"
#include "quant.h"

#define NEAT_INVALID(...) neat_set_error(NEAT_ERR_INVALID_ARGUMENT, __VA_ARGS__)

/* ---- names ---- */

static const char *const neat_c_names[NEAT_NO_ARG] = {
    [NEAT_ARG_X] = "x", [NEAT_ARG_WEIGHT] = "weight", [NEAT_ARG_BIAS] = "bias", [NEAT_ARG_A] = "A",
    [NEAT_ARG_G] = "G", [NEAT_ARG_B] = "B", [NEAT_ARG_HIDDEN] = "hidden",
    [NEAT_ARG_NUM_HIDDEN] = "num_hidden", [NEAT_ARG_ACTIVATION] = "activation",
    [NEAT_ARG_SCALE] = "scale", [NEAT_ARG_DY] = "dy", [NEAT_ARG_Y] = "y", [NEAT_ARG_DX] = "dx",
    [NEAT_ARG_DWEIGHT] = "dweight", [NEAT_ARG_DBIAS] = "dbias", [NEAT_ARG_DA] = "dA",
    [NEAT_ARG_DB] = "dB", [NEAT_ARG_DHIDDEN] = "dhidden", [NEAT_ARG_QWEIGHT] = "qweight",
    [NEAT_ARG_ADAPTER] = "the adapter",
    [NEAT_ARG_GRADS] = "grads"};

const char *neat_arg_name(const neat_check *c, unsigned arg)
{
    const char *name = c->names && arg <= NEAT_ARG_LAST ? c->names->arg[arg] : NULL;
    return name ? name : arg < NEAT_NO_ARG && neat_c_names[arg] ? neat_c_names[arg] : "?";
}

void neat_key_name(const neat_check *c, unsigned key, char *buf, size_t n)
{
    const char *name = neat_arg_name(c, key >> 8);
    if ((key >> 8) == NEAT_ARG_QWEIGHT)
        snprintf(buf, n, "%s.%s", name, neat_qweight_field((key & 0xff) - 1));
    else if ((key & 0xff) == 0)
        snprintf(buf, n, "%s", name);
    else
        snprintf(buf, n, "%s[%u]", name, (key & 0xff) - 1);
}

static const char *const neat_sym_names[NEAT_SYM_COUNT] = {"N", "d_in", "d_out", "r", "i"};

/* A row's dims in symbols, "(r, d_out)"; with min_text the dims it binds, "r >= 1". */
static void neat_sym_text(const neat_row *row, int min_text, char *buf, size_t n)
{
    char inner[64];
    int off = 0;
    inner[0] = '\0';
    for (int d = 0; d < row->rank && d < NEAT_ROW_DIMS && off >= 0 && off < 48; d++) {
        if (min_text && !(row->dims[d] & NEAT_BINDS))
            continue;
        off += snprintf(inner + off, sizeof inner - (size_t)off, "%s%s%s",
                        off == 0 ? "" : min_text ? " and " : ", ",
                        neat_sym_names[NEAT_SYM_OF(row->dims[d])], min_text ? " >= 1" : "");
    }
    snprintf(buf, n, min_text ? "%s" : "(%s)", inner);
}

/* The row's shape text with the values of its symbols. */
static void neat_shape_text(const neat_check *c, const neat_row *row, int32_t index, char *buf,
                            size_t n)
{
    long long v[3];
    for (int i = 0; i < 3; i++)
        v[i] = row->shape_of[i] == NEAT_SYM_INDEX ? index : (long long)c->p.sym[row->shape_of[i]];
    snprintf(buf, n, row->shape, v[0], v[1], v[2]);
}

/* ---- dtypes ---- */

static int neat_is_half(neat_dtype d)
{
    return d == NEAT_BFLOAT16 || d == NEAT_FLOAT16;
}

/* What each role accepts, and the rule its message states on CUDA (on CPU one dtype serves
 * every tensor). A new kind of tensor (a quantized weight's codes or scales) is a new line. */
static const struct neat_role_rule {
    unsigned base, param; /* accepts weight's dtype / the adapter's; a mismatch names the latter */
    const char *rule;
} neat_roles[NEAT_ROLE_COUNT] = {
    [NEAT_ROLE_BASE] = {1, 0, "x, weight, bias, y and their gradients must share one dtype"},
    [NEAT_ROLE_PARAM] = {0, 1, "A, B, hidden and their gradients must share one dtype"},
    [NEAT_ROLE_EITHER] = {1, 1, "A, B, hidden, G and their gradients must share one dtype"},
};

static neat_status neat_check_dtype(const neat_check *c, const neat_row *row, unsigned key,
                                    const neat_tensor *t)
{
    const neat_problem *p = &c->p;
    const struct neat_role_rule *role = &neat_roles[row->role];
    if ((role->base && t->dtype == p->dtype) || (role->param && t->dtype == p->param_dtype))
        return NEAT_OK;
    char name[64];
    neat_key_name(c, key, name, sizeof name);
    const char *got = neat_dtype_name(t->dtype);
    if (p->device.type == NEAT_DEVICE_CPU)
        return NEAT_INVALID("%s: %s has dtype %s but %s has %s; on CPU every tensor of a call "
                            "must share one dtype (float32 or float64)",
                            c->fn, name, got, neat_arg_name(c, p->base_arg),
                            neat_dtype_name(p->dtype));
    if (role->param)
        return NEAT_INVALID("%s: %s has dtype %s but %s has %s; %s", c->fn, name, got,
                            neat_arg_name(c, p->param_arg), neat_dtype_name(p->param_dtype),
                            role->rule);
    return NEAT_INVALID("%s: %s has dtype %s but %s has %s; %s", c->fn, name, got,
                        neat_arg_name(c, p->base_arg), neat_dtype_name(p->dtype), role->rule);
}

/* The dims a defining row binds must be >= 1 (no empty weight, no rank-0 adapter). */
static neat_status neat_check_nonempty(const neat_check *c, const neat_row *row,
                                       const neat_tensor *t)
{
    for (int d = 0; d < row->rank; d++) {
        if (!(row->dims[d] & NEAT_BINDS) || t->sizes[d] >= 1)
            continue;
        char shape[64], min[64], got[160];
        neat_sym_text(row, 0, shape, sizeof shape);
        neat_sym_text(row, 1, min, sizeof min);
        neat_dims_str(t->sizes, t->ndim, got, sizeof got);
        return NEAT_INVALID("%s: %s must have shape %s with %s; got %s", c->fn,
                            neat_arg_name(c, row->arg), shape, min, got);
    }
    return NEAT_OK;
}

/* weight: the device and dtype of the call, each supported on that device. */
static neat_status neat_set_base(neat_check *c, const neat_row *row, const neat_tensor *W)
{
    const char *name = neat_arg_name(c, row->arg);
    NEAT_TRY(neat_check_nonempty(c, row, W));
    c->p.device = W->device;
    c->p.dtype = W->dtype;
    c->p.base_arg = row->arg;
    if (W->device.type == NEAT_DEVICE_CPU) {
        if (neat_is_half(W->dtype))
            return NEAT_INVALID("%s: %s has dtype %s; on CPU the dtypes are float32 and float64",
                                c->fn, name, neat_dtype_name(W->dtype));
        if (W->dtype != NEAT_FLOAT32 && W->dtype != NEAT_FLOAT64)
            return NEAT_INVALID("%s: %s has dtype %d, not a neat_dtype; on CPU the dtypes are "
                                "float32 and float64",
                                c->fn, name, (int)W->dtype);
    } else if (W->device.type == NEAT_DEVICE_CUDA) {
        if (W->dtype != NEAT_FLOAT32 && W->dtype != NEAT_FLOAT64 && !neat_is_half(W->dtype))
            return NEAT_INVALID("%s: %s has dtype %d; on CUDA the dtypes are float32, float64, "
                                "bfloat16 and float16",
                                c->fn, name, (int)W->dtype);
        if (W->device.index < 0)
            return NEAT_INVALID("%s: %s is on cuda:%d; a CUDA ordinal must be >= 0", c->fn, name,
                                (int)W->device.index);
    } else {
        return NEAT_INVALID("%s: %s has device type %d; expected cpu (0) or cuda (1)", c->fn,
                            name, (int)W->device.type);
    }
    return NEAT_OK;
}

/* A (or G): the adapter's dtype, which may differ from weight's only as float32 with a
 * bfloat16/float16 weight on CUDA. Checked before it becomes the reference for B and hidden. */
static neat_status neat_set_param(neat_check *c, const neat_row *row, const neat_tensor *F)
{
    const neat_problem *p = &c->p;
    const char *name = neat_arg_name(c, row->arg), *weight = neat_arg_name(c, p->base_arg);
    if (F->ndim == row->rank)
        NEAT_TRY(neat_check_nonempty(c, row, F));
    c->p.param_arg = row->arg;
    c->p.param_dtype = F->dtype;
    if (p->device.type == NEAT_DEVICE_CPU || !neat_is_half(p->dtype)) {
        if (F->dtype != p->dtype)
            return NEAT_INVALID("%s: %s has dtype %s but %s has %s; %s", c->fn, name,
                                neat_dtype_name(F->dtype), weight, neat_dtype_name(p->dtype),
                                p->device.type == NEAT_DEVICE_CPU
                                    ? "on CPU every tensor of a call must share one dtype"
                                    : "the adapter may differ from weight only as float32 "
                                      "with a bfloat16/float16 weight");
    } else if (F->dtype != p->dtype && F->dtype != NEAT_FLOAT32) {
        return NEAT_INVALID("%s: %s has dtype %s but %s has %s; %s must have weight's dtype or "
                            "float32",
                            c->fn, name, neat_dtype_name(F->dtype), weight,
                            neat_dtype_name(p->dtype), name);
    }
    return NEAT_OK;
}

/* ---- one view ---- */

/*
 * The kernels size their workspace and index their buffers with int64 and size_t products of
 * two problem dims (G is r x d_in, U is N x r, the GEMM pack buffers scale with r, ...), times
 * the element size, summed over a few buffers and up to NEAT_MAX_THREADS lanes. Capping every
 * such product at NEAT_MAX_MATRIX_ELEMS keeps all of that arithmetic far from overflow.
 */
static neat_status neat_check_limits(const neat_check *c, const neat_row *row)
{
    for (int k = 0; k < NEAT_ROW_LIMITS && row->limits[k].what; k++) {
        const neat_limit *l = &row->limits[k];
        int64_t rows = c->p.sym[l->rows], cols = c->p.sym[l->cols], n;
        if (!__builtin_mul_overflow(rows, cols, &n) && n <= NEAT_MAX_MATRIX_ELEMS)
            continue;
        char who[160];
        if (l->who[1] == NEAT_NO_ARG)
            snprintf(who, sizeof who, "%s", neat_arg_name(c, l->who[0]));
        else
            snprintf(who, sizeof who, "%s and %s", neat_arg_name(c, l->who[0]),
                     neat_arg_name(c, l->who[1]));
        return NEAT_INVALID("%s: %s: %s(%s, %s) = (%lld, %lld) has more than 2^%d = %lld "
                            "elements, the limit for any matrix a call reads, writes or forms",
                            c->fn, who, l->what, neat_sym_names[l->rows], neat_sym_names[l->cols],
                            (long long)rows, (long long)cols, NEAT_MAX_MATRIX_LOG2,
                            (long long)NEAT_MAX_MATRIX_ELEMS);
    }
    return NEAT_OK;
}

/* Rank, dims (binding the symbols the row binds), device, dtype and layout of one view. */
static neat_status neat_check_view(neat_check *c, const neat_row *row, const neat_tensor *t,
                                   int32_t index)
{
    char name[64], shape[200], got[160];
    unsigned key = NEAT_KEY(row->arg, index);
    if (row->flags & NEAT_SETS_PARAM)
        NEAT_TRY(neat_set_param(c, row, t));
    if (t->ndim != row->rank) {
        neat_key_name(c, key, name, sizeof name);
        neat_shape_text(c, row, index, shape, sizeof shape);
        return NEAT_INVALID("%s: %s must be %d-D with shape %s; got a %d-D view", c->fn, name,
                            (int)row->rank, shape, (int)t->ndim);
    }
    if (row->flags & NEAT_SETS_BASE)
        NEAT_TRY(neat_set_base(c, row, t));
    for (int d = 0; d < row->rank; d++) {
        int binds = row->dims[d] & NEAT_BINDS;
        if (t->sizes[d] >= 0 && (binds || t->sizes[d] == c->p.sym[row->dims[d]]))
            continue;
        neat_key_name(c, key, name, sizeof name);
        neat_shape_text(c, row, index, shape, sizeof shape);
        neat_dims_str(t->sizes, t->ndim, got, sizeof got);
        return NEAT_INVALID("%s: %s must have shape %s; got %s", c->fn, name, shape, got);
    }
    for (int d = 0; d < row->rank; d++)
        if (row->dims[d] & NEAT_BINDS)
            c->p.sym[NEAT_SYM_OF(row->dims[d])] = t->sizes[d];
    const neat_device *dev = &c->p.device;
    if (t->device.type != dev->type || t->device.index != dev->index) {
        neat_key_name(c, key, name, sizeof name);
        return NEAT_INVALID("%s: %s is on %s:%d but %s is on %s:%d; all tensors of a call must "
                            "be on one device",
                            c->fn, name, neat_device_name(t->device.type), (int)t->device.index,
                            neat_arg_name(c, c->p.base_arg), neat_device_name(dev->type),
                            (int)dev->index);
    }
    NEAT_TRY(neat_check_dtype(c, row, key, t));
    neat_span span;
    int out = (row->flags & NEAT_OUT) != 0;
    NEAT_TRY(neat_check_layout(c, key, t, out, &span));
    if (span.lo == span.hi)
        return NEAT_OK; /* empty: overlaps nothing */
    int *n = out ? &c->n_out : &c->n_in;
    if (*n == NEAT_MAX_SPANS) /* only a table listing a row twice could get here */
        return neat_set_error(NEAT_ERR_INTERNAL, "%s: too many tensors", c->fn);
    (out ? c->out : c->in)[(*n)++] = span;
    return NEAT_OK;
}

/* A quantized W: its format, then the device, dtype and (d_out, d_in) exactly as a weight
 * view sets them, the matrix limit, then the format's fields (quant.c). */
static neat_status neat_check_qweight_row(neat_check *c, const neat_row *row,
                                          const neat_qweight *q)
{
    if (!q)
        return NEAT_INVALID("%s: %s must not be NULL", c->fn, neat_arg_name(c, row->arg));
    NEAT_TRY(neat_check_qformat(c, q));
    neat_tensor shape = neat_qweight_shape(q);
    NEAT_TRY(neat_set_base(c, row, &shape));
    for (int d = 0; d < row->rank; d++)
        c->p.sym[NEAT_SYM_OF(row->dims[d])] = shape.sizes[d];
    NEAT_TRY(neat_check_limits(c, row));
    return neat_check_qweight_fields(c, q);
}

/* ---- the rows ---- */

/* A call's arguments by neat_arg (a list: its first element), and its scalars. */
typedef struct neat_gathered {
    const neat_tensor *t[NEAT_ARG_LAST + 1];
    const neat_qweight *qweight;
    const neat_grads *grads;
    int32_t num_hidden;
    neat_activation activation;
    double scale;
} neat_gathered;

static void neat_gather(const neat_entry *e, const neat_call *call, neat_gathered *g)
{
    for (int i = 0; i <= NEAT_ARG_LAST; i++)
        g->t[i] = NULL;
    g->grads = call->grads;
    g->qweight = call->qweight;
    g->num_hidden = 0;
    g->activation = NEAT_ACT_RELU;
    if (e->op == NEAT_OP_LOWRANK) {
        const neat_lowrank_args *la = call->lowrank;
        g->t[NEAT_ARG_X] = la->x, g->t[NEAT_ARG_WEIGHT] = la->weight;
        g->t[NEAT_ARG_BIAS] = la->bias, g->t[NEAT_ARG_G] = la->G, g->t[NEAT_ARG_B] = la->B;
        g->scale = la->scale;
    } else {
        const neat_args *a = call->args;
        g->t[NEAT_ARG_X] = a->x, g->t[NEAT_ARG_WEIGHT] = a->weight, g->t[NEAT_ARG_BIAS] = a->bias;
        g->t[NEAT_ARG_A] = a->A, g->t[NEAT_ARG_B] = a->B, g->t[NEAT_ARG_HIDDEN] = a->hidden;
        g->num_hidden = a->num_hidden;
        g->activation = a->activation;
        g->scale = a->scale;
    }
    if (call->grads) {
        const neat_grads *gr = call->grads;
        g->t[NEAT_ARG_DX] = gr->dx, g->t[NEAT_ARG_DWEIGHT] = gr->dweight;
        g->t[NEAT_ARG_DBIAS] = gr->dbias, g->t[NEAT_ARG_DA] = gr->dA, g->t[NEAT_ARG_DB] = gr->dB;
        g->t[NEAT_ARG_DHIDDEN] = gr->dhidden;
    }
    g->t[NEAT_ARG_DY] = call->dy;
    if (e->op != NEAT_OP_BACKWARD)
        g->t[e->needed] = call->out;
}

static neat_status neat_check_row(neat_check *c, const neat_row *row, const neat_gathered *g)
{
    const neat_tensor *t = row->arg <= NEAT_ARG_LAST ? g->t[row->arg] : NULL;
    const char *name = neat_arg_name(c, row->arg);
    switch (row->kind) {
    case NEAT_ROW_VIEW:
        if (!t)
            return row->flags & NEAT_OPTIONAL ? NEAT_OK
                                              : NEAT_INVALID("%s: %s must not be NULL", c->fn, name);
        NEAT_TRY(neat_check_view(c, row, t, -1));
        return neat_check_limits(c, row);
    case NEAT_ROW_LIST:
        /* the NEAT_ROW_NUM_HIDDEN row before it has bounded num_hidden */
        for (int32_t i = 0; t && i < g->num_hidden; i++)
            if (!(row->flags & NEAT_OPTIONAL) || t[i].data)
                NEAT_TRY(neat_check_view(c, row, &t[i], i));
        return NEAT_OK;
    case NEAT_ROW_FORBIDDEN:
        return t ? NEAT_INVALID("%s: %s must be NULL %s", c->fn, name, row->shape) : NEAT_OK;
    case NEAT_ROW_NUM_HIDDEN:
        if (g->num_hidden < 0 || g->num_hidden > NEAT_MAX_HIDDEN || g->num_hidden % 2)
            return NEAT_INVALID("%s: %s must be even and in 0..%d; got %d", c->fn, name,
                                NEAT_MAX_HIDDEN, (int)g->num_hidden);
        if (g->num_hidden > 0 && !g->t[NEAT_ARG_HIDDEN])
            return NEAT_INVALID("%s: %s must not be NULL when %s = %d", c->fn,
                                neat_arg_name(c, NEAT_ARG_HIDDEN), name, (int)g->num_hidden);
        return NEAT_OK;
    case NEAT_ROW_ACTIVATION:
        if ((int)g->activation < 0 || (int)g->activation > (int)NEAT_ACT_LAST)
            return NEAT_INVALID("%s: %s %d is not a neat_activation", c->fn, name,
                                (int)g->activation);
        return NEAT_OK;
    case NEAT_ROW_SCALE:
        return isfinite(g->scale) ? NEAT_OK
                                  : NEAT_INVALID("%s: %s must be finite; got %g", c->fn, name,
                                                 g->scale);
    case NEAT_ROW_QWEIGHT:
        return neat_check_qweight_row(c, row, g->qweight);
    case NEAT_ROW_GRADS:
        return g->grads ? NEAT_OK
                        : NEAT_INVALID("%s: %s must not be NULL (set its members to NULL "
                                       "instead)",
                                       c->fn, name);
    }
    return neat_set_error(NEAT_ERR_INTERNAL, "%s: row kind %d", c->fn, (int)row->kind);
}

/* ---- overlaps ---- */

/* Of the spans s[0..n) that meet [lo, hi), the one first in key order, or NULL. */
static const neat_span *neat_first_overlap(uintptr_t lo, uintptr_t hi, const neat_span *s, int n)
{
    const neat_span *first = NULL;
    for (int j = 0; j < n; j++)
        if (lo < s[j].hi && s[j].lo < hi && (!first || s[j].key < first->key))
            first = &s[j];
    return first;
}

/*
 * Outputs must not share memory with inputs or with each other: the kernels write outputs
 * while still reading inputs. Checked on byte ranges, so interleaved views of one buffer are
 * rejected too (a conservative rule that fresh outputs always pass).
 */
static neat_status neat_check_overlaps(const neat_check *c)
{
    for (int i = 0; i < c->n_out; i++) {
        const neat_span *o = &c->out[i];
        const neat_span *hit = neat_first_overlap(o->lo, o->hi, c->in, c->n_in);
        int is_input = hit != NULL;
        if (!hit)
            hit = neat_first_overlap(o->lo, o->hi, c->out, i);
        if (hit) {
            char name[64], other[64];
            neat_key_name(c, o->key, name, sizeof name);
            neat_key_name(c, hit->key, other, sizeof other);
            return NEAT_INVALID("%s: output %s shares memory with %s %s; outputs must not "
                                "overlap inputs or other outputs",
                                c->fn, name, is_input ? "input" : "output", other);
        }
    }
    return NEAT_OK;
}

/*
 * The kernels write the workspace while they read the inputs and before or while they write
 * the outputs, so any shared byte would corrupt one of them. The whole range the caller hands
 * over counts, not only the bytes this call happens to use: the library may use all of it.
 */
neat_status neat_validate_workspace(const neat_check *c, const void *workspace, size_t bytes)
{
    if (!workspace || bytes == 0)
        return NEAT_OK;
    uintptr_t lo = (uintptr_t)workspace;
    if (bytes > UINTPTR_MAX - lo)
        return NEAT_INVALID("%s: workspace of %zu bytes at %p runs past the end of the address "
                            "space",
                            c->fn, bytes, workspace);
    const neat_span *hit = neat_first_overlap(lo, lo + bytes, c->in, c->n_in);
    int is_input = hit != NULL;
    if (!hit)
        hit = neat_first_overlap(lo, lo + bytes, c->out, c->n_out);
    if (!hit)
        return NEAT_OK;
    char name[64];
    neat_key_name(c, hit->key, name, sizeof name);
    return NEAT_INVALID("%s: workspace (%zu bytes at %p) shares memory with %s %s; the workspace "
                        "must not overlap any tensor of the call",
                        c->fn, bytes, workspace, is_input ? "input" : "output", name);
}

/* ---- an entry point ---- */

void neat_check_begin(neat_check *c, const neat_entry *e, const neat_exec *exec, int query)
{
    c->names = exec ? exec->names : NULL;
    c->fn = neat_message_prefix(exec, query ? e->query : e->fn);
    c->n_in = c->n_out = 0;
    c->p.base_arg = NEAT_ARG_WEIGHT;
    for (int s = 0; s < NEAT_SYM_COUNT; s++)
        c->p.sym[s] = 0;
}

neat_status neat_validate(neat_check *c, const neat_entry *e, const neat_call *call,
                          const neat_exec *exec, int query)
{
    neat_gathered g;
    if (e->op == NEAT_OP_LOWRANK ? !call->lowrank : !call->args)
        return NEAT_INVALID("%s: args must not be NULL", c->fn);
    neat_gather(e, call, &g);
    for (const neat_row *const *row = e->rows; *row; row++)
        NEAT_TRY(neat_check_row(c, *row, &g));
    /* a workspace query has no buffers worth comparing yet */
    if (!query)
        NEAT_TRY(neat_check_overlaps(c));
    if (exec && exec->num_threads > NEAT_MAX_THREADS)
        return NEAT_INVALID("%s: exec->num_threads is %d; at most %d lanes are supported (the "
                            "workspace holds scratch for each)",
                            c->fn, (int)exec->num_threads, NEAT_MAX_THREADS);
    return NEAT_OK;
}
