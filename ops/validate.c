/*
 * validate.c - argument checks shared by every public entry point and both devices.
 */
#include "validate.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>

#include "backend.h"

#define NEAT_TRY(expr)                                                                         \
    do {                                                                                       \
        neat_status neat_try_ = (expr);                                                        \
        if (neat_try_ != NEAT_OK)                                                              \
            return neat_try_;                                                                  \
    } while (0)

typedef enum neat_role {
    NEAT_ROLE_BASE,  /* shares weight's dtype */
    NEAT_ROLE_PARAM, /* shares A's dtype */
    NEAT_ROLE_EITHER /* G on CUDA: either of the two */
} neat_role;

const char *neat_dtype_name(neat_dtype dtype)
{
    switch (dtype) {
    case NEAT_FLOAT32: return "float32";
    case NEAT_FLOAT64: return "float64";
    case NEAT_BFLOAT16: return "bfloat16";
    case NEAT_FLOAT16: return "float16";
    }
    return "unknown dtype";
}

static const char *neat_device_name(neat_device_type t)
{
    return t == NEAT_DEVICE_CPU ? "cpu" : t == NEAT_DEVICE_CUDA ? "cuda" : "unknown";
}

static void neat_dims_str(const int64_t *v, int32_t ndim, char *buf, size_t n)
{
    int off = snprintf(buf, n, "(");
    for (int32_t d = 0; d < ndim && d < NEAT_MAX_DIMS && off > 0 && (size_t)off < n; d++)
        off += snprintf(buf + off, n - (size_t)off, "%s%lld", d ? ", " : "", (long long)v[d]);
    if (off > 0 && (size_t)off < n)
        snprintf(buf + off, n - (size_t)off, ")");
}

static void neat_shape_str(const neat_tensor *t, char *buf, size_t n)
{
    neat_dims_str(t->sizes, t->ndim, buf, n);
}

/*
 * How an expected shape is explained in a message: a format with up to three %lld values. It is
 * formatted only when a check fails: formatting every description on every call cost more than
 * the checks themselves (a few microseconds per call, which small layers notice).
 */
typedef struct neat_desc {
    const char *fmt;
    long long a, b, c;
} neat_desc;

static neat_desc neat_d(const char *fmt, int64_t a, int64_t b, int64_t c)
{
    neat_desc d = {fmt, (long long)a, (long long)b, (long long)c};
    return d;
}

static void neat_desc_str(const neat_desc *d, char *buf, size_t n)
{
    snprintf(buf, n, d->fmt, d->a, d->b, d->c);
}

/* Argument names of the hidden layers and their gradients, without formatting them per call. */
static const char *const neat_hidden_names[NEAT_MAX_HIDDEN] = {
    "hidden[0]", "hidden[1]", "hidden[2]", "hidden[3]",
    "hidden[4]", "hidden[5]", "hidden[6]", "hidden[7]"};
static const char *const neat_dhidden_names[NEAT_MAX_HIDDEN] = {
    "dhidden[0]", "dhidden[1]", "dhidden[2]", "dhidden[3]",
    "dhidden[4]", "dhidden[5]", "dhidden[6]", "dhidden[7]"};

static int neat_is_half(neat_dtype d)
{
    return d == NEAT_BFLOAT16 || d == NEAT_FLOAT16;
}

/* Bytes per element; unknown dtypes are rejected before any range is needed, and 8 keeps a
 * range computed for one anyway on the large (conservative) side. */
static int64_t neat_elem_size(neat_dtype d)
{
    return d == NEAT_FLOAT32 ? 4 : neat_is_half(d) ? 2 : 8;
}

/* The most bytes one view may span: what a pointer difference can express. */
static const int64_t neat_max_view_bytes = PTRDIFF_MAX < INT64_MAX ? (int64_t)PTRDIFF_MAX
                                                                   : INT64_MAX;

/*
 * The largest element offset of a view, over the dims that have more than one index. Returns 0
 * when that cannot be represented in int64 (or a stride is negative): a view refused here never
 * reaches signed-overflow arithmetic, neither in this file nor in the kernels' offset
 * computations, which stay below the offset checked here.
 */
static int neat_max_offset(const neat_tensor *t, int64_t *off)
{
    int64_t o = 0;
    if (t->ndim < 0 || t->ndim > NEAT_MAX_DIMS)
        return 0;
    for (int32_t d = 0; d < t->ndim; d++) {
        int64_t step;
        if (t->sizes[d] <= 1)
            continue;
        if (t->strides[d] < 0 || __builtin_mul_overflow(t->sizes[d] - 1, t->strides[d], &step) ||
            __builtin_add_overflow(o, step, &o))
            return 0;
    }
    *off = o;
    return 1;
}

/* Bytes from a view's data pointer to the end of its last element; returns 0 when that does
 * not fit in a pointer difference. */
static int neat_extent_bytes(const neat_tensor *t, int64_t *bytes)
{
    int64_t off, b, es = neat_elem_size(t->dtype);
    if (!neat_max_offset(t, &off) || __builtin_mul_overflow(off, es, &b) ||
        __builtin_add_overflow(b, es, &b) || b > neat_max_view_bytes)
        return 0;
    *bytes = b;
    return 1;
}

/*
 * The first dim (sorted by stride) whose elements land on offsets already used by the dims of
 * smaller stride, or -1. Each stride must exceed the span of all smaller ones: that makes every
 * index tuple's offset unique. It is sufficient, not necessary (a few exotic interleavings are
 * refused), and every layout PyTorch gives a fresh or sliced tensor satisfies it. Expects a
 * view that passed the extent check, so the running span cannot overflow.
 */
static int32_t neat_aliasing_dim(const neat_tensor *t, int64_t *span_out)
{
    int32_t order[NEAT_MAX_DIMS], n = 0;
    for (int32_t d = 0; d < t->ndim; d++) {
        if (t->sizes[d] <= 1)
            continue; /* a single index never collides with itself */
        int32_t k = n++;
        while (k > 0 && t->strides[order[k - 1]] > t->strides[d]) {
            order[k] = order[k - 1];
            k--;
        }
        order[k] = d;
    }
    int64_t span = 0;
    for (int32_t k = 0; k < n; k++) {
        int32_t d = order[k];
        if (t->strides[d] <= span) {
            *span_out = span;
            return d;
        }
        span += (t->sizes[d] - 1) * t->strides[d];
    }
    return -1;
}

/*
 * What every view must satisfy whatever its role: non-negative strides, an element count and a
 * byte extent that int64 / ptrdiff_t can hold, data where there are elements, no wrap past the
 * end of the address space; and for outputs, no two elements at one address.
 */
static neat_status neat_check_layout(const char *fn, const char *name, const neat_tensor *t,
                                     int is_output)
{
    char shape[160], strides[160];
    if (t->ndim < 0 || t->ndim > NEAT_MAX_DIMS)
        return neat_set_error(NEAT_ERR_INVALID_ARGUMENT,
                              "%s: %s has ndim %d; a view has 0..%d dims", fn, name,
                              (int)t->ndim, NEAT_MAX_DIMS);
    neat_dims_str(t->sizes, t->ndim, shape, sizeof shape);
    neat_dims_str(t->strides, t->ndim, strides, sizeof strides);
    for (int32_t d = 0; d < t->ndim; d++) {
        if (t->sizes[d] < 0)
            return neat_set_error(NEAT_ERR_INVALID_ARGUMENT,
                                  "%s: %s has size %lld in dim %d; sizes must be >= 0", fn, name,
                                  (long long)t->sizes[d], (int)d);
        if (t->strides[d] < 0)
            return neat_set_error(NEAT_ERR_INVALID_ARGUMENT,
                                  "%s: %s has stride %lld in dim %d; strides must be >= 0", fn,
                                  name, (long long)t->strides[d], (int)d);
    }
    int64_t numel = 1;
    for (int32_t d = 0; d < t->ndim; d++)
        if (__builtin_mul_overflow(numel, t->sizes[d], &numel))
            return neat_set_error(NEAT_ERR_INVALID_ARGUMENT,
                                  "%s: %s has shape %s, more elements than int64 can count "
                                  "(the limit is %lld)",
                                  fn, name, shape, (long long)INT64_MAX);
    /* checked even for empty views: kernels may still form pointers from their strides */
    int64_t bytes;
    if (!neat_extent_bytes(t, &bytes))
        return neat_set_error(NEAT_ERR_INVALID_ARGUMENT,
                              "%s: %s with shape %s and strides %s spans more bytes than a "
                              "pointer difference can hold (the limit is PTRDIFF_MAX = %lld "
                              "bytes from data to the end of the last element)",
                              fn, name, shape, strides, (long long)neat_max_view_bytes);
    if (numel > 0 && !t->data)
        return neat_set_error(NEAT_ERR_INVALID_ARGUMENT,
                              "%s: %s has %lld elements but its data pointer is NULL", fn, name,
                              (long long)numel);
    if (numel > 0 && (uintptr_t)t->data > UINTPTR_MAX - (uintptr_t)bytes)
        return neat_set_error(NEAT_ERR_INVALID_ARGUMENT,
                              "%s: %s spans %lld bytes from its data pointer %p, past the end of "
                              "the address space",
                              fn, name, (long long)bytes, t->data);
    /* an empty view has no elements to overlap, whatever its strides say */
    if (is_output && numel > 0) {
        int64_t span = 0;
        int32_t d = neat_aliasing_dim(t, &span);
        if (d >= 0 && t->strides[d] == 0)
            return neat_set_error(NEAT_ERR_INVALID_ARGUMENT,
                                  "%s: output %s has stride 0 in dim %d of size %lld; an output's "
                                  "elements must not overlap",
                                  fn, name, (int)d, (long long)t->sizes[d]);
        if (d >= 0)
            return neat_set_error(NEAT_ERR_INVALID_ARGUMENT,
                                  "%s: output %s with shape %s and strides %s has overlapping "
                                  "elements: dim %d has stride %lld but the dims of smaller "
                                  "stride already span %lld elements; an output's elements must "
                                  "not overlap (sorted by stride, each stride must exceed that "
                                  "span)",
                                  fn, name, shape, strides, (int)d, (long long)t->strides[d],
                                  (long long)span);
    }
    return NEAT_OK;
}

/*
 * Checks one view: presence, rank, sizes against expect (-1: any), device, dtype (by role),
 * then its layout (neat_check_layout). desc is how the expected shape is explained in the
 * message.
 */
static neat_status neat_check_view(const char *fn, const char *name, const neat_tensor *t,
                                   int32_t ndim, const int64_t *expect, neat_desc desc_fmt,
                                   int is_output, neat_role role, const neat_problem *p)
{
    char got[160], desc[200];
    if (!t)
        return neat_set_error(NEAT_ERR_INVALID_ARGUMENT, "%s: %s must not be NULL", fn, name);
    if (t->ndim != ndim) {
        neat_desc_str(&desc_fmt, desc, sizeof desc);
        return neat_set_error(NEAT_ERR_INVALID_ARGUMENT,
                              "%s: %s must be %d-D with shape %s; got a %d-D view", fn, name,
                              ndim, desc, t->ndim);
    }
    for (int32_t d = 0; d < ndim; d++)
        if (t->sizes[d] < 0 || (expect[d] >= 0 && t->sizes[d] != expect[d])) {
            neat_desc_str(&desc_fmt, desc, sizeof desc);
            neat_dims_str(t->sizes, t->ndim, got, sizeof got);
            return neat_set_error(NEAT_ERR_INVALID_ARGUMENT, "%s: %s must have shape %s; got %s",
                                  fn, name, desc, got);
        }
    if (t->device.type != p->device.type || t->device.index != p->device.index)
        return neat_set_error(NEAT_ERR_INVALID_ARGUMENT,
                              "%s: %s is on %s:%d but weight is on %s:%d; all tensors of a call "
                              "must be on one device",
                              fn, name, neat_device_name(t->device.type), (int)t->device.index,
                              neat_device_name(p->device.type), (int)p->device.index);
    int dtype_ok = role == NEAT_ROLE_BASE    ? t->dtype == p->dtype
                   : role == NEAT_ROLE_PARAM ? t->dtype == p->param_dtype
                                             : t->dtype == p->dtype || t->dtype == p->param_dtype;
    if (!dtype_ok) {
        if (p->device.type == NEAT_DEVICE_CPU)
            return neat_set_error(NEAT_ERR_INVALID_ARGUMENT,
                                  "%s: %s has dtype %s but weight has %s; on CPU every tensor of "
                                  "a call must share one dtype (float32 or float64)",
                                  fn, name, neat_dtype_name(t->dtype), neat_dtype_name(p->dtype));
        if (role == NEAT_ROLE_BASE)
            return neat_set_error(NEAT_ERR_INVALID_ARGUMENT,
                                  "%s: %s has dtype %s but weight has %s; x, weight, bias, y and "
                                  "their gradients must share one dtype",
                                  fn, name, neat_dtype_name(t->dtype), neat_dtype_name(p->dtype));
        return neat_set_error(NEAT_ERR_INVALID_ARGUMENT,
                              "%s: %s has dtype %s but %s has %s; A, B, hidden%s and their "
                              "gradients must share one dtype",
                              fn, name, neat_dtype_name(t->dtype), p->param_name,
                              neat_dtype_name(p->param_dtype), role == NEAT_ROLE_EITHER ? ", G" : "");
    }
    return neat_check_layout(fn, name, t, is_output);
}

/*
 * The kernels size their workspace and index their buffers with int64 and size_t products of
 * two problem dims (G is r x d_in, U is N x r, the GEMM pack buffers scale with r, ...), times
 * the element size, summed over a few buffers and up to NEAT_MAX_THREADS lanes. Capping every
 * such product at NEAT_MAX_MATRIX_ELEMS keeps all of that arithmetic far from overflow.
 */
static neat_status neat_check_matrix(const char *fn, const char *who, const char *what,
                                     int64_t rows, int64_t cols)
{
    int64_t n;
    if (__builtin_mul_overflow(rows, cols, &n) || n > NEAT_MAX_MATRIX_ELEMS)
        return neat_set_error(NEAT_ERR_INVALID_ARGUMENT,
                              "%s: %s: %s = (%lld, %lld) has more than 2^%d = %lld elements, "
                              "the limit for any matrix a call reads, writes or forms",
                              fn, who, what, (long long)rows, (long long)cols,
                              NEAT_MAX_MATRIX_LOG2, (long long)NEAT_MAX_MATRIX_ELEMS);
    return NEAT_OK;
}

/* The byte range [lo, hi) a view can touch; lo == hi when it has no elements. A view whose
 * range cannot be represented (never one that passed neat_check_layout) gets the whole address
 * space, so it is taken to overlap everything rather than nothing. */
static void neat_byte_range(const neat_tensor *t, uintptr_t *lo, uintptr_t *hi)
{
    int64_t bytes;
    *lo = *hi = 0;
    if (t->ndim < 0 || t->ndim > NEAT_MAX_DIMS) {
        *hi = UINTPTR_MAX;
        return;
    }
    for (int32_t d = 0; d < t->ndim; d++)
        if (t->sizes[d] == 0)
            return;
    if (!neat_extent_bytes(t, &bytes) || (uintptr_t)t->data > UINTPTR_MAX - (uintptr_t)bytes) {
        *hi = UINTPTR_MAX;
        return;
    }
    *lo = (uintptr_t)t->data;
    *hi = *lo + (uintptr_t)bytes;
}

typedef struct neat_named {
    const char *name;
    const neat_tensor *t;
} neat_named;

/*
 * Outputs must not share memory with inputs or with each other: the kernels write outputs
 * while still reading inputs. Checked on byte ranges, so interleaved views of one buffer are
 * rejected too (a conservative rule that fresh outputs always pass).
 */
/* The first of ts[0..n) whose (non-empty) byte range meets [lo, hi), or NULL. */
static const neat_named *neat_first_overlap(uintptr_t lo, uintptr_t hi, const neat_named *ts,
                                            int n)
{
    for (int j = 0; j < n; j++) {
        uintptr_t lo2, hi2;
        neat_byte_range(ts[j].t, &lo2, &hi2);
        if (lo2 != hi2 && lo < hi2 && lo2 < hi)
            return &ts[j];
    }
    return NULL;
}

static neat_status neat_check_overlap(const char *fn, const neat_named *outs, int n_out,
                                      const neat_named *ins, int n_in)
{
    for (int i = 0; i < n_out; i++) {
        uintptr_t lo, hi;
        neat_byte_range(outs[i].t, &lo, &hi);
        if (lo == hi)
            continue;
        const neat_named *o = neat_first_overlap(lo, hi, ins, n_in);
        int is_input = o != NULL;
        if (!o)
            o = neat_first_overlap(lo, hi, outs, i);
        if (o)
            return neat_set_error(NEAT_ERR_INVALID_ARGUMENT,
                                  "%s: output %s shares memory with %s %s; outputs must not "
                                  "overlap inputs or other outputs",
                                  fn, outs[i].name, is_input ? "input" : "output", o->name);
    }
    return NEAT_OK;
}

/* The inputs of args that are present, with their argument names. */
static int neat_inputs(const neat_args *args, neat_named *ins)
{
    int n = 0;
    const neat_named fixed[] = {{"x", args->x}, {"weight", args->weight}, {"bias", args->bias},
                                {"A", args->A}, {"B", args->B}};
    for (int i = 0; i < 5; i++)
        if (fixed[i].t)
            ins[n++] = fixed[i];
    for (int32_t i = 0; i < args->num_hidden; i++) {
        ins[n].name = neat_hidden_names[i];
        ins[n++].t = &args->hidden[i];
    }
    return n;
}

/* weight defines the device, the base dtype and (d_out, d_in) of a call. */
static neat_status neat_check_weight(const char *fn, const neat_tensor *W, neat_problem *p)
{
    neat_desc desc;
    char got[160];
    if (!W)
        return neat_set_error(NEAT_ERR_INVALID_ARGUMENT, "%s: weight must not be NULL", fn);
    if (W->ndim != 2)
        return neat_set_error(NEAT_ERR_INVALID_ARGUMENT,
                              "%s: weight must be 2-D with shape (d_out, d_in); got a %d-D view",
                              fn, W->ndim);
    if (W->sizes[0] < 1 || W->sizes[1] < 1) {
        neat_shape_str(W, got, sizeof got);
        return neat_set_error(NEAT_ERR_INVALID_ARGUMENT,
                              "%s: weight must have shape (d_out, d_in) with d_out >= 1 and "
                              "d_in >= 1; got %s",
                              fn, got);
    }
    p->device = W->device;
    p->d_out = W->sizes[0];
    p->d_in = W->sizes[1];
    p->dtype = W->dtype;
    if (W->device.type == NEAT_DEVICE_CPU) {
        if (neat_is_half(W->dtype))
            return neat_set_error(NEAT_ERR_INVALID_ARGUMENT,
                                  "%s: weight has dtype %s; on CPU the dtypes are float32 and "
                                  "float64",
                                  fn, neat_dtype_name(W->dtype));
        if (W->dtype != NEAT_FLOAT32 && W->dtype != NEAT_FLOAT64)
            return neat_set_error(NEAT_ERR_INVALID_ARGUMENT,
                                  "%s: weight has dtype %d, not a neat_dtype; on CPU the dtypes "
                                  "are float32 and float64",
                                  fn, (int)W->dtype);
    } else if (W->device.type == NEAT_DEVICE_CUDA) {
        if (W->dtype != NEAT_FLOAT32 && W->dtype != NEAT_FLOAT64 && !neat_is_half(W->dtype))
            return neat_set_error(NEAT_ERR_INVALID_ARGUMENT,
                                  "%s: weight has dtype %d; on CUDA the dtypes are float32, "
                                  "float64, bfloat16 and float16",
                                  fn, (int)W->dtype);
        if (W->device.index < 0)
            return neat_set_error(NEAT_ERR_INVALID_ARGUMENT,
                                  "%s: weight is on cuda:%d; a CUDA ordinal must be >= 0", fn,
                                  (int)W->device.index);
    } else {
        return neat_set_error(NEAT_ERR_INVALID_ARGUMENT,
                              "%s: weight has device type %d; expected cpu (0) or cuda (1)", fn,
                              (int)W->device.type);
    }
    /* weight is the reference the others are compared with, but its own layout gets the same
     * checks as theirs: the kernels read it just the same */
    desc = neat_d("(d_out, d_in) = (%lld, %lld)", p->d_out, p->d_in, 0);
    NEAT_TRY(neat_check_view(fn, "weight", W, 2, (const int64_t[]){p->d_out, p->d_in}, desc, 0,
                             NEAT_ROLE_BASE, p));
    NEAT_TRY(neat_check_matrix(fn, "weight", "(d_out, d_in)", p->d_out, p->d_in));
    return NEAT_OK;
}

/*
 * The first adapter factor (A, or G for neat_lowrank_forward) sets r and the parameter dtype.
 * Its dtype has its own rule, checked before it becomes the reference for B and hidden.
 */
static neat_status neat_check_factor(const char *fn, const char *name, const char *shape,
                                     const neat_tensor *F, neat_problem *p)
{
    char got[160];
    if (!F)
        return neat_set_error(NEAT_ERR_INVALID_ARGUMENT, "%s: %s must not be NULL", fn, name);
    if (F->ndim == 2 && F->sizes[0] < 1) {
        neat_shape_str(F, got, sizeof got);
        return neat_set_error(NEAT_ERR_INVALID_ARGUMENT,
                              "%s: %s must have shape %s with r >= 1; got %s", fn, name, shape,
                              got);
    }
    p->r = F->ndim == 2 ? F->sizes[0] : 0;
    p->param_name = name;
    p->param_dtype = F->dtype;
    if (p->device.type == NEAT_DEVICE_CPU || !neat_is_half(p->dtype)) {
        if (F->dtype != p->dtype)
            return neat_set_error(NEAT_ERR_INVALID_ARGUMENT,
                                  "%s: %s has dtype %s but weight has %s; %s", fn, name,
                                  neat_dtype_name(F->dtype), neat_dtype_name(p->dtype),
                                  p->device.type == NEAT_DEVICE_CPU
                                      ? "on CPU every tensor of a call must share one dtype"
                                      : "the adapter may differ from weight only as float32 "
                                        "with a bfloat16/float16 weight");
    } else if (F->dtype != p->dtype && F->dtype != NEAT_FLOAT32) {
        return neat_set_error(NEAT_ERR_INVALID_ARGUMENT,
                              "%s: %s has dtype %s but weight has %s; %s must have weight's "
                              "dtype or float32",
                              fn, name, neat_dtype_name(F->dtype), neat_dtype_name(p->dtype),
                              name);
    }
    return NEAT_OK;
}

/* x (N, d_in), B (d_out, r) and bias (d_out) against the problem weight and the factor set. */
static neat_status neat_check_x_b_bias(const char *fn, const neat_tensor *x, const neat_tensor *B,
                                       const neat_tensor *bias, int need_x_B, neat_problem *p)
{
    neat_desc desc;
    p->N = 0;
    if (x || need_x_B) {
        desc = neat_d("(N, d_in) = (N, %lld) to match weight (%lld, %lld)", p->d_in, p->d_out, p->d_in);
        NEAT_TRY(neat_check_view(fn, "x", x, 2, (const int64_t[]){-1, p->d_in}, desc, 0,
                                 NEAT_ROLE_BASE, p));
        p->N = x->sizes[0];
        NEAT_TRY(neat_check_matrix(fn, "x", "(N, d_in)", p->N, p->d_in));
        NEAT_TRY(neat_check_matrix(fn, "x and weight", "y's shape (N, d_out)", p->N, p->d_out));
        NEAT_TRY(neat_check_matrix(fn, "x and the adapter", "U's shape (N, r)", p->N, p->r));
    }
    if (B || need_x_B) {
        desc = neat_d(p->param_name[0] == 'G' ? "(d_out, r) = (%lld, %lld) to match weight and G"
                                              : "(d_out, r) = (%lld, %lld) to match weight and A",
                      p->d_out, p->r, 0);
        NEAT_TRY(neat_check_view(fn, "B", B, 2, (const int64_t[]){p->d_out, p->r}, desc, 0,
                                 NEAT_ROLE_PARAM, p));
    }
    if (bias) {
        desc = neat_d("(d_out) = (%lld) to match weight", p->d_out, 0, 0);
        NEAT_TRY(neat_check_view(fn, "bias", bias, 1, (const int64_t[]){p->d_out}, desc, 0,
                                 NEAT_ROLE_BASE, p));
    }
    return NEAT_OK;
}

/* weight and A define the problem; then the rest of args is checked against them. */
static neat_status neat_check_args(const char *fn, const neat_args *args, int with_base,
                                   int need_x_B, neat_problem *p)
{
    neat_desc desc;
    if (!args)
        return neat_set_error(NEAT_ERR_INVALID_ARGUMENT, "%s: args must not be NULL", fn);
    NEAT_TRY(neat_check_weight(fn, args->weight, p));
    const neat_tensor *A = args->A;
    NEAT_TRY(neat_check_factor(fn, "A", "(r, d_out)", A, p));
    desc = neat_d("(r, d_out) = (r, %lld) to match weight (%lld, %lld)", p->d_out, p->d_out, p->d_in);
    NEAT_TRY(neat_check_view(fn, "A", A, 2, (const int64_t[]){-1, p->d_out}, desc, 0,
                             NEAT_ROLE_PARAM, p));
    NEAT_TRY(neat_check_matrix(fn, "A", "(r, d_out)", p->r, p->d_out));
    NEAT_TRY(neat_check_matrix(fn, "A and weight", "G's shape (r, d_in)", p->r, p->d_in));
    /* bounds r itself (to 2^20), which the GEMM pack buffers scale with, hidden layers or not */
    NEAT_TRY(neat_check_matrix(fn, "A", "a hidden layer's shape (r, r)", p->r, p->r));

    if (args->bias && !with_base)
        return neat_set_error(NEAT_ERR_INVALID_ARGUMENT,
                              "%s: bias must be NULL for the adapter entry points (the "
                              "adapter term has no bias)",
                              fn);
    NEAT_TRY(neat_check_x_b_bias(fn, args->x, args->B, args->bias, need_x_B, p));
    if (args->num_hidden < 0 || args->num_hidden > NEAT_MAX_HIDDEN || args->num_hidden % 2)
        return neat_set_error(NEAT_ERR_INVALID_ARGUMENT,
                              "%s: num_hidden must be even and in 0..%d; got %d", fn,
                              NEAT_MAX_HIDDEN, (int)args->num_hidden);
    if (args->num_hidden > 0 && !args->hidden)
        return neat_set_error(NEAT_ERR_INVALID_ARGUMENT,
                              "%s: hidden must not be NULL when num_hidden = %d", fn,
                              (int)args->num_hidden);
    for (int32_t i = 0; i < args->num_hidden; i++) {
        const char *name = neat_hidden_names[i];
        desc = neat_d("(%lld, %lld)", p->r, p->r, 0);
        NEAT_TRY(neat_check_view(fn, name, &args->hidden[i], 2, (const int64_t[]){p->r, p->r},
                                 desc, 0, NEAT_ROLE_PARAM, p));
    }
    if ((int)args->activation < 0 || (int)args->activation > (int)NEAT_ACT_LAST)
        return neat_set_error(NEAT_ERR_INVALID_ARGUMENT, "%s: activation %d is not a neat_activation",
                              fn, (int)args->activation);
    if (!isfinite(args->scale))
        return neat_set_error(NEAT_ERR_INVALID_ARGUMENT, "%s: scale must be finite; got %g", fn,
                              args->scale);
    return NEAT_OK;
}

neat_status neat_validate_forward(const char *fn, const neat_tensor *y, const neat_args *args,
                                  int with_base, neat_problem *p)
{
    NEAT_TRY(neat_check_args(fn, args, with_base, 1, p));
    if (y) {
        neat_desc desc;
        desc = neat_d("(N, d_out) = (%lld, %lld)", p->N, p->d_out, 0);
        NEAT_TRY(neat_check_view(fn, "y", y, 2, (const int64_t[]){p->N, p->d_out}, desc, 1,
                                 NEAT_ROLE_BASE, p));
        neat_named ins[5 + NEAT_MAX_HIDDEN], out = {"y", y};
        int n_in = neat_inputs(args, ins);
        NEAT_TRY(neat_check_overlap(fn, &out, 1, ins, n_in));
    }
    return NEAT_OK;
}

/* The requested gradients of grads, with their argument names. */
static int neat_grad_outputs(const neat_grads *grads, const neat_args *args, neat_named *outs)
{
    int n = 0;
    const neat_named gs[] = {{"dx", grads->dx}, {"dweight", grads->dweight},
                             {"dbias", grads->dbias}, {"dA", grads->dA}, {"dB", grads->dB}};
    for (int i = 0; i < 5; i++)
        if (gs[i].t)
            outs[n++] = gs[i];
    for (int32_t i = 0; grads->dhidden && i < args->num_hidden; i++) {
        if (!grads->dhidden[i].data)
            continue; /* not requested */
        outs[n].name = neat_dhidden_names[i];
        outs[n++].t = &grads->dhidden[i];
    }
    return n;
}

neat_status neat_validate_backward(const char *fn, const neat_grads *grads, const neat_tensor *dy,
                                   const neat_args *args, int with_base, neat_problem *p)
{
    neat_desc desc;
    NEAT_TRY(neat_check_args(fn, args, with_base, 1, p));
    if (!grads)
        return neat_set_error(NEAT_ERR_INVALID_ARGUMENT,
                              "%s: grads must not be NULL (set its members to NULL instead)", fn);
    int64_t N = p->N, d_in = p->d_in, d_out = p->d_out, r = p->r;
    desc = neat_d("(N, d_out) = (%lld, %lld)", N, d_out, 0);
    if (dy)
        NEAT_TRY(neat_check_view(fn, "dy", dy, 2, (const int64_t[]){N, d_out}, desc, 0,
                                 NEAT_ROLE_BASE, p));
    desc = neat_d("(N, d_in) = (%lld, %lld) like x", N, d_in, 0);
    if (grads->dx)
        NEAT_TRY(neat_check_view(fn, "dx", grads->dx, 2, (const int64_t[]){N, d_in}, desc, 1,
                                 NEAT_ROLE_BASE, p));
    desc = neat_d("(d_out, d_in) = (%lld, %lld) like weight", d_out, d_in, 0);
    if (grads->dweight)
        NEAT_TRY(neat_check_view(fn, "dweight", grads->dweight, 2,
                                 (const int64_t[]){d_out, d_in}, desc, 1, NEAT_ROLE_BASE, p));
    if (grads->dbias) {
        if (!with_base)
            return neat_set_error(NEAT_ERR_INVALID_ARGUMENT,
                                  "%s: dbias must be NULL for the adapter entry points", fn);
        desc = neat_d("(d_out) = (%lld)", d_out, 0, 0);
        NEAT_TRY(neat_check_view(fn, "dbias", grads->dbias, 1, (const int64_t[]){d_out}, desc, 1,
                                 NEAT_ROLE_BASE, p));
    }
    desc = neat_d("(r, d_out) = (%lld, %lld) like A", r, d_out, 0);
    if (grads->dA)
        NEAT_TRY(neat_check_view(fn, "dA", grads->dA, 2, (const int64_t[]){r, d_out}, desc, 1,
                                 NEAT_ROLE_PARAM, p));
    desc = neat_d("(d_out, r) = (%lld, %lld) like B", d_out, r, 0);
    if (grads->dB)
        NEAT_TRY(neat_check_view(fn, "dB", grads->dB, 2, (const int64_t[]){d_out, r}, desc, 1,
                                 NEAT_ROLE_PARAM, p));
    if (grads->dhidden) {
        for (int32_t i = 0; i < args->num_hidden; i++) {
            if (!grads->dhidden[i].data)
                continue; /* not requested */
            const char *name = neat_dhidden_names[i];
            desc = neat_d("(%lld, %lld) like hidden[%lld]", r, r, i);
            NEAT_TRY(neat_check_view(fn, name, &grads->dhidden[i], 2, (const int64_t[]){r, r},
                                     desc, 1, NEAT_ROLE_PARAM, p));
        }
    }
    neat_named ins[6 + NEAT_MAX_HIDDEN], outs[5 + NEAT_MAX_HIDDEN];
    int n_in = neat_inputs(args, ins);
    if (dy)
        ins[n_in].name = "dy", ins[n_in++].t = dy;
    int n_out = neat_grad_outputs(grads, args, outs);
    /* a workspace query (dy == NULL) has no buffers worth comparing yet */
    if (dy)
        NEAT_TRY(neat_check_overlap(fn, outs, n_out, ins, n_in));
    return NEAT_OK;
}

neat_status neat_validate_compute_g(const char *fn, const neat_tensor *G, const neat_args *args,
                                    neat_problem *p)
{
    NEAT_TRY(neat_check_args(fn, args, 1, 0, p));
    if (G) {
        neat_desc desc;
        desc = neat_d("(r, d_in) = (%lld, %lld)", p->r, p->d_in, 0);
        NEAT_TRY(neat_check_view(fn, "G", G, 2, (const int64_t[]){p->r, p->d_in}, desc, 1,
                                 p->device.type == NEAT_DEVICE_CPU ? NEAT_ROLE_PARAM
                                                                   : NEAT_ROLE_EITHER,
                                 p));
        neat_named ins[5 + NEAT_MAX_HIDDEN], out = {"G", G};
        int n_in = neat_inputs(args, ins);
        NEAT_TRY(neat_check_overlap(fn, &out, 1, ins, n_in));
    }
    return NEAT_OK;
}

neat_status neat_validate_exec(const char *fn, const neat_exec *exec)
{
    if (exec && exec->num_threads > NEAT_MAX_THREADS)
        return neat_set_error(NEAT_ERR_INVALID_ARGUMENT,
                              "%s: exec->num_threads is %d; at most %d lanes are supported (the "
                              "workspace holds scratch for each)",
                              fn, (int)exec->num_threads, NEAT_MAX_THREADS);
    return NEAT_OK;
}

/*
 * The kernels write the workspace while they read the inputs and before or while they write
 * the outputs, so any shared byte would corrupt one of them. The whole range the caller hands
 * over counts, not only the bytes this call happens to use: the library may use all of it.
 */
static neat_status neat_check_workspace_overlap(const char *fn, const void *workspace,
                                                size_t workspace_bytes, const neat_named *ins,
                                                int n_in, const neat_named *outs, int n_out)
{
    if (!workspace || workspace_bytes == 0)
        return NEAT_OK;
    uintptr_t lo = (uintptr_t)workspace;
    if (workspace_bytes > UINTPTR_MAX - lo)
        return neat_set_error(NEAT_ERR_INVALID_ARGUMENT,
                              "%s: workspace of %zu bytes at %p runs past the end of the address "
                              "space",
                              fn, workspace_bytes, workspace);
    uintptr_t hi = lo + workspace_bytes;
    const neat_named *o = neat_first_overlap(lo, hi, ins, n_in);
    int is_input = o != NULL;
    if (!o)
        o = neat_first_overlap(lo, hi, outs, n_out);
    if (o)
        return neat_set_error(NEAT_ERR_INVALID_ARGUMENT,
                              "%s: workspace (%zu bytes at %p) shares memory with %s %s; the "
                              "workspace must not overlap any tensor of the call",
                              fn, workspace_bytes, workspace, is_input ? "input" : "output",
                              o->name);
    return NEAT_OK;
}

neat_status neat_validate_workspace(const char *fn, const void *workspace, size_t workspace_bytes,
                                    const neat_args *args, const neat_tensor *dy,
                                    const char *out_name, const neat_tensor *out,
                                    const neat_grads *grads)
{
    neat_named ins[6 + NEAT_MAX_HIDDEN], outs[6 + NEAT_MAX_HIDDEN];
    int n_in = neat_inputs(args, ins), n_out = 0;
    if (dy)
        ins[n_in].name = "dy", ins[n_in++].t = dy;
    if (out)
        outs[n_out].name = out_name, outs[n_out++].t = out;
    if (grads)
        n_out += neat_grad_outputs(grads, args, outs + n_out);
    return neat_check_workspace_overlap(fn, workspace, workspace_bytes, ins, n_in, outs, n_out);
}

/* ---- neat_lowrank_forward ---- */

static int neat_lowrank_inputs(const neat_lowrank_args *la, neat_named *ins)
{
    int n = 0;
    const neat_named all[] = {{"x", la->x}, {"weight", la->weight}, {"bias", la->bias},
                              {"G", la->G}, {"B", la->B}};
    for (int i = 0; i < 5; i++)
        if (all[i].t)
            ins[n++] = all[i];
    return n;
}

neat_status neat_validate_lowrank(const char *fn, const neat_tensor *y,
                                  const neat_lowrank_args *la, neat_problem *p)
{
    neat_desc desc;
    if (!la)
        return neat_set_error(NEAT_ERR_INVALID_ARGUMENT, "%s: args must not be NULL", fn);
    NEAT_TRY(neat_check_weight(fn, la->weight, p));
    NEAT_TRY(neat_check_factor(fn, "G", "(r, d_in)", la->G, p));
    desc = neat_d("(r, d_in) = (r, %lld) to match weight (%lld, %lld)", p->d_in, p->d_out, p->d_in);
    NEAT_TRY(neat_check_view(fn, "G", la->G, 2, (const int64_t[]){-1, p->d_in}, desc, 0,
                             NEAT_ROLE_PARAM, p));
    NEAT_TRY(neat_check_matrix(fn, "G", "(r, d_in)", p->r, p->d_in));
    NEAT_TRY(neat_check_matrix(fn, "G and weight", "B's shape (d_out, r)", p->d_out, p->r));
    NEAT_TRY(neat_check_x_b_bias(fn, la->x, la->B, la->bias, 1, p));
    if (!isfinite(la->scale))
        return neat_set_error(NEAT_ERR_INVALID_ARGUMENT, "%s: scale must be finite; got %g", fn,
                              la->scale);
    if (y) {
        desc = neat_d("(N, d_out) = (%lld, %lld)", p->N, p->d_out, 0);
        NEAT_TRY(neat_check_view(fn, "y", y, 2, (const int64_t[]){p->N, p->d_out}, desc, 1,
                                 NEAT_ROLE_BASE, p));
        neat_named ins[5], out = {"y", y};
        NEAT_TRY(neat_check_overlap(fn, &out, 1, ins, neat_lowrank_inputs(la, ins)));
    }
    return NEAT_OK;
}

neat_status neat_validate_lowrank_workspace(const char *fn, const void *workspace,
                                            size_t workspace_bytes, const neat_lowrank_args *la,
                                            const neat_tensor *y)
{
    neat_named ins[5], out = {"y", y};
    return neat_check_workspace_overlap(fn, workspace, workspace_bytes, ins,
                                        neat_lowrank_inputs(la, ins), &out, 1);
}
