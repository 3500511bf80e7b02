/*
 * view.c - the checks every view gets whatever its role: sizes, strides, extent, data pointer,
 * and for outputs no aliasing; plus the names of dtypes and devices in messages.
 */
#include <stdint.h>
#include <stdio.h>

#include "backend.h"
#include "validate.h"

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

const char *neat_device_name(neat_device_type t)
{
    return t == NEAT_DEVICE_CPU ? "cpu" : t == NEAT_DEVICE_CUDA ? "cuda" : "unknown";
}

void neat_dims_str(const int64_t *v, int32_t ndim, char *buf, size_t n)
{
    int off = snprintf(buf, n, "(");
    for (int32_t d = 0; d < ndim && d < NEAT_MAX_DIMS && off > 0 && (size_t)off < n; d++)
        off += snprintf(buf + off, n - (size_t)off, "%s%lld", d ? ", " : "", (long long)v[d]);
    if (off > 0 && (size_t)off < n)
        snprintf(buf + off, n - (size_t)off, ")");
}

/* Bytes per element; unknown dtypes are rejected before any range is needed, and 8 keeps a
 * range computed for one anyway on the large (conservative) side. */
static int64_t neat_elem_size(neat_dtype d)
{
    return d == NEAT_FLOAT32 ? 4 : d == NEAT_BFLOAT16 || d == NEAT_FLOAT16 ? 2 : 8;
}

/* The most bytes one view may span: what a pointer difference can express. */
static const int64_t neat_max_view_bytes = PTRDIFF_MAX < INT64_MAX ? (int64_t)PTRDIFF_MAX
                                                                   : INT64_MAX;

/*
 * Bytes from a view's data pointer to the end of its last element, over the dims that have more
 * than one index. Returns 0 when that does not fit in a pointer difference (or a stride is
 * negative): a view refused here never reaches signed-overflow arithmetic, neither in this file
 * nor in the kernels' offset computations, which stay below the offset checked here.
 */
static int neat_extent_bytes(const neat_tensor *t, int64_t *bytes)
{
    int64_t off = 0, b, es = neat_elem_size(t->dtype);
    for (int32_t d = 0; d < t->ndim; d++) {
        int64_t step;
        if (t->sizes[d] <= 1)
            continue;
        if (t->strides[d] < 0 || __builtin_mul_overflow(t->sizes[d] - 1, t->strides[d], &step) ||
            __builtin_add_overflow(off, step, &off))
            return 0;
    }
    if (__builtin_mul_overflow(off, es, &b) || __builtin_add_overflow(b, es, &b) ||
        b > neat_max_view_bytes)
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

/* The rules of neat_check_layout, in the order they are checked. */
typedef enum neat_defect {
    NEAT_BAD_NDIM,
    NEAT_BAD_SIZE,
    NEAT_BAD_STRIDE,
    NEAT_BAD_NUMEL,
    NEAT_BAD_EXTENT,
    NEAT_BAD_DATA,
    NEAT_BAD_WRAP,
    NEAT_BAD_ALIAS
} neat_defect;

/* The message of a failed rule; all formatting happens here, never for a valid view. d is the
 * dim concerned, v the element count, the byte extent or the aliased span. */
static neat_status neat_layout_error(const neat_check *c, unsigned key, const neat_tensor *t,
                                     neat_defect defect, int32_t d, int64_t v)
{
    char name[64], shape[160], strides[160];
    neat_key_name(c, key, name, sizeof name);
    neat_dims_str(t->sizes, t->ndim, shape, sizeof shape);
    neat_dims_str(t->strides, t->ndim, strides, sizeof strides);
    const char *fn = c->fn;
    switch (defect) {
    case NEAT_BAD_NDIM:
        return neat_set_error(NEAT_ERR_INVALID_ARGUMENT, "%s: %s has ndim %d; a view has 0..%d dims",
                              fn, name, (int)t->ndim, NEAT_MAX_DIMS);
    case NEAT_BAD_SIZE:
        return neat_set_error(NEAT_ERR_INVALID_ARGUMENT,
                              "%s: %s has size %lld in dim %d; sizes must be >= 0", fn, name,
                              (long long)t->sizes[d], (int)d);
    case NEAT_BAD_STRIDE:
        return neat_set_error(NEAT_ERR_INVALID_ARGUMENT,
                              "%s: %s has stride %lld in dim %d; strides must be >= 0", fn, name,
                              (long long)t->strides[d], (int)d);
    case NEAT_BAD_NUMEL:
        return neat_set_error(NEAT_ERR_INVALID_ARGUMENT,
                              "%s: %s has shape %s, more elements than int64 can count "
                              "(the limit is %lld)",
                              fn, name, shape, (long long)INT64_MAX);
    case NEAT_BAD_EXTENT:
        return neat_set_error(NEAT_ERR_INVALID_ARGUMENT,
                              "%s: %s with shape %s and strides %s spans more bytes than a "
                              "pointer difference can hold (the limit is PTRDIFF_MAX = %lld "
                              "bytes from data to the end of the last element)",
                              fn, name, shape, strides, (long long)neat_max_view_bytes);
    case NEAT_BAD_DATA:
        return neat_set_error(NEAT_ERR_INVALID_ARGUMENT,
                              "%s: %s has %lld elements but its data pointer is NULL", fn, name,
                              (long long)v);
    case NEAT_BAD_WRAP:
        return neat_set_error(NEAT_ERR_INVALID_ARGUMENT,
                              "%s: %s spans %lld bytes from its data pointer %p, past the end of "
                              "the address space",
                              fn, name, (long long)v, t->data);
    case NEAT_BAD_ALIAS:
        break;
    }
    if (t->strides[d] == 0)
        return neat_set_error(NEAT_ERR_INVALID_ARGUMENT,
                              "%s: output %s has stride 0 in dim %d of size %lld; an output's "
                              "elements must not overlap",
                              fn, name, (int)d, (long long)t->sizes[d]);
    return neat_set_error(NEAT_ERR_INVALID_ARGUMENT,
                          "%s: output %s with shape %s and strides %s has overlapping "
                          "elements: dim %d has stride %lld but the dims of smaller "
                          "stride already span %lld elements; an output's elements must "
                          "not overlap (sorted by stride, each stride must exceed that "
                          "span)",
                          fn, name, shape, strides, (int)d, (long long)t->strides[d],
                          (long long)v);
}

neat_status neat_check_layout(const neat_check *c, unsigned key, const neat_tensor *t,
                              int is_output, neat_span *span)
{
    int64_t numel = 1, bytes;
    if (t->ndim < 0 || t->ndim > NEAT_MAX_DIMS)
        return neat_layout_error(c, key, t, NEAT_BAD_NDIM, 0, 0);
    for (int32_t d = 0; d < t->ndim; d++) {
        if (t->sizes[d] < 0)
            return neat_layout_error(c, key, t, NEAT_BAD_SIZE, d, 0);
        if (t->strides[d] < 0)
            return neat_layout_error(c, key, t, NEAT_BAD_STRIDE, d, 0);
    }
    for (int32_t d = 0; d < t->ndim; d++)
        if (__builtin_mul_overflow(numel, t->sizes[d], &numel))
            return neat_layout_error(c, key, t, NEAT_BAD_NUMEL, d, 0);
    /* checked even for empty views: kernels may still form pointers from their strides */
    if (!neat_extent_bytes(t, &bytes))
        return neat_layout_error(c, key, t, NEAT_BAD_EXTENT, 0, 0);
    if (numel > 0 && !t->data)
        return neat_layout_error(c, key, t, NEAT_BAD_DATA, 0, numel);
    if (numel > 0 && (uintptr_t)t->data > UINTPTR_MAX - (uintptr_t)bytes)
        return neat_layout_error(c, key, t, NEAT_BAD_WRAP, 0, bytes);
    /* an empty view has no elements to overlap, whatever its strides say */
    if (is_output && numel > 0) {
        int64_t aliased = 0;
        int32_t d = neat_aliasing_dim(t, &aliased);
        if (d >= 0)
            return neat_layout_error(c, key, t, NEAT_BAD_ALIAS, d, aliased);
    }
    span->key = key;
    span->lo = span->hi = (uintptr_t)t->data;
    if (numel > 0)
        span->hi += (uintptr_t)bytes;
    return NEAT_OK;
}
