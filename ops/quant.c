/*
 * quant.c - the quantized weight descriptor: its checks and its dequantizer (see quant.h).
 *
 * The values must be bitsandbytes' own: each is formed in float32 by the same operations in the
 * same order (code * absmax; code2 * absmax2 then + offset; CB * SCB then * 1/127), so this
 * file is compiled without FMA contraction (ops/CMakeLists.txt), which would round
 * code2 * absmax2 + offset once instead of twice.
 */
#include "quant.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "backend.h"

#define NEAT_INVALID(...) neat_set_error(NEAT_ERR_INVALID_ARGUMENT, __VA_ARGS__)

/* 1/127 as float32: what bitsandbytes' int8_vectorwise_dequant multiplies CB * SCB by. */
#define NEAT_INT8_SCALE 7.874015718698502e-3f

static const char *const neat_qf_names[NEAT_QF_COUNT] = {
    [NEAT_QF_DATA] = "data",       [NEAT_QF_CODE] = "code",   [NEAT_QF_ABSMAX] = "absmax",
    [NEAT_QF_ABSMAX_Q] = "absmax_q", [NEAT_QF_CODE2] = "code2", [NEAT_QF_ABSMAX2] = "absmax2",
    [NEAT_QF_SCB] = "scb"};

_Static_assert(NEAT_QF_COUNT == NEAT_QWEIGHT_SPANS, "validate.h counts a qweight's spans");

const char *neat_qweight_field(unsigned index)
{
    return index < NEAT_QF_COUNT ? neat_qf_names[index] : "?";
}

static int neat_is_4bit(const neat_qweight *q)
{
    return q->format == NEAT_QFMT_NF4 || q->format == NEAT_QFMT_FP4;
}

static const char *neat_qformat_name(neat_qformat f)
{
    return f == NEAT_QFMT_NF4 ? "NEAT_QFMT_NF4" : f == NEAT_QFMT_FP4 ? "NEAT_QFMT_FP4"
                                                                     : "NEAT_QFMT_INT8_ROW";
}

neat_status neat_check_qformat(const neat_check *c, const neat_qweight *q)
{
    if (neat_is_4bit(q) || q->format == NEAT_QFMT_INT8_ROW)
        return NEAT_OK;
    return NEAT_INVALID("%s: %s.format is %d; expected NEAT_QFMT_NF4 (1), NEAT_QFMT_FP4 (2) or "
                        "NEAT_QFMT_INT8_ROW (3)",
                        c->fn, neat_arg_name(c, NEAT_ARG_QWEIGHT), (int)q->format);
}

/* bitsandbytes' block sizes are powers of two (64 .. 4096, 32 on some builds); the cap keeps
 * e / blocksize and its neighbours far from overflow. */
static int neat_is_blocksize(int64_t b)
{
    return b >= 16 && b <= ((int64_t)1 << 40) && (b & (b - 1)) == 0;
}

static int64_t neat_cdiv64(int64_t a, int64_t b)
{
    return (a + b - 1) / b;
}

/* One field of the descriptor: a pointer the format needs or must not have. */
typedef struct neat_qfield {
    const char *name;
    const void *p;
} neat_qfield;

/* The fields a format does not read must be unset: a value there is a caller's mix-up (a
 * nested state passed as plain, an int8 stride on a 4-bit weight), not something to ignore. */
static neat_status neat_check_unset(const neat_check *c, const char *q, const char *why,
                                    const neat_qfield *f, int n, const int64_t *ints,
                                    const char *const *int_names, int n_ints)
{
    for (int i = 0; i < n; i++)
        if (f[i].p)
            return NEAT_INVALID("%s: %s.%s must be NULL %s (the field is not read there)", c->fn,
                                q, f[i].name, why);
    for (int i = 0; i < n_ints; i++)
        if (ints[i])
            return NEAT_INVALID("%s: %s.%s must be 0 %s (the field is not read there); got %lld",
                                c->fn, q, int_names[i], why, (long long)ints[i]);
    return NEAT_OK;
}

/* One array of the descriptor: present, aligned for its element type, within the address
 * space; then an input span, so that no output and no workspace may overlap it. */
static neat_status neat_qarray(neat_check *c, unsigned field, const void *p, int64_t elems,
                               size_t esize, const char *what)
{
    const char *q = neat_arg_name(c, NEAT_ARG_QWEIGHT), *name = neat_qweight_field(field);
    if (!p)
        return NEAT_INVALID("%s: %s.%s must not be NULL (%s)", c->fn, q, name, what);
    if ((uintptr_t)p % esize)
        return NEAT_INVALID("%s: %s.%s at %p is not aligned to its %zu-byte elements", c->fn, q,
                            name, p, esize);
    /* cannot wrap: the 4-bit counts derive from a W of at most 2^40 elements, and CB's extent
     * (1-byte elements) was checked against PTRDIFF_MAX */
    uintptr_t lo = (uintptr_t)p, bytes = (uintptr_t)elems * esize;
    if (bytes > (uintptr_t)PTRDIFF_MAX || bytes > UINTPTR_MAX - lo)
        return NEAT_INVALID("%s: %s.%s (%lld elements at %p) runs past the end of the address "
                            "space",
                            c->fn, q, name, (long long)elems, p);
    if (bytes == 0)
        return NEAT_OK;
    if (c->n_in == NEAT_MAX_SPANS)
        return neat_set_error(NEAT_ERR_INTERNAL, "%s: too many tensors", c->fn);
    c->in[c->n_in++] = (neat_span){lo, lo + bytes, NEAT_KEY(NEAT_ARG_QWEIGHT, field)};
    return NEAT_OK;
}

static neat_status neat_check_4bit(neat_check *c, const neat_qweight *q, int64_t n)
{
    const char *name = neat_arg_name(c, NEAT_ARG_QWEIGHT);
    char why[64];
    snprintf(why, sizeof why, "for %s", neat_qformat_name(q->format));
    const neat_qfield int8_fields[] = {{"scb", q->scb}};
    const int64_t int8_ints[] = {q->row_stride};
    static const char *const int8_int_names[] = {"row_stride"};
    NEAT_TRY(neat_check_unset(c, name, why, int8_fields, 1, int8_ints, int8_int_names, 1));
    if (!neat_is_blocksize(q->blocksize))
        return NEAT_INVALID("%s: %s.blocksize must be a power of two >= 16 (bitsandbytes uses 64 "
                            ".. 4096); got %lld",
                            c->fn, name, (long long)q->blocksize);
    int64_t nblocks = neat_cdiv64(n, q->blocksize);
    NEAT_TRY(neat_qarray(c, NEAT_QF_DATA, q->data, (n + 1) / 2, 1,
                         "ceil(d_out * d_in / 2) bytes of 4-bit codes"));
    NEAT_TRY(neat_qarray(c, NEAT_QF_CODE, q->code, 16, sizeof(float),
                         "the 16 floats of the 4-bit code table"));
    if (q->nested != 0 && q->nested != 1)
        return NEAT_INVALID("%s: %s.nested must be 0 or 1; got %d", c->fn, name, (int)q->nested);
    if (!q->nested) {
        const neat_qfield nested_fields[] = {
            {"absmax_q", q->absmax_q}, {"code2", q->code2}, {"absmax2", q->absmax2}};
        const int64_t nested_ints[] = {q->blocksize2};
        static const char *const nested_int_names[] = {"blocksize2"};
        NEAT_TRY(neat_check_unset(c, name, "when nested = 0", nested_fields, 3, nested_ints,
                                  nested_int_names, 1));
        if (q->offset != 0)
            return NEAT_INVALID("%s: %s.offset must be 0 when nested = 0 (the field is not read "
                                "there); got %g",
                                c->fn, name, (double)q->offset);
        return neat_qarray(c, NEAT_QF_ABSMAX, q->absmax, nblocks, sizeof(float),
                           "ceil(d_out * d_in / blocksize) floats when nested = 0");
    }
    if (q->absmax)
        return NEAT_INVALID("%s: %s.absmax must be NULL when nested = 1 (absmax is formed from "
                            "absmax_q, code2, absmax2 and offset)",
                            c->fn, name);
    NEAT_TRY(neat_qarray(c, NEAT_QF_ABSMAX_Q, q->absmax_q, nblocks, 1,
                         "ceil(d_out * d_in / blocksize) uint8 codes when nested = 1"));
    NEAT_TRY(neat_qarray(c, NEAT_QF_CODE2, q->code2, 256, sizeof(float),
                         "the 256 floats of absmax's code table when nested = 1"));
    if (!neat_is_blocksize(q->blocksize2))
        return NEAT_INVALID("%s: %s.blocksize2 must be a power of two >= 16 when nested = 1 "
                            "(bitsandbytes uses 256); got %lld",
                            c->fn, name, (long long)q->blocksize2);
    NEAT_TRY(neat_qarray(c, NEAT_QF_ABSMAX2, q->absmax2, neat_cdiv64(nblocks, q->blocksize2),
                         sizeof(float), "ceil(nblocks / blocksize2) floats when nested = 1"));
    if (!isfinite(q->offset))
        return NEAT_INVALID("%s: %s.offset must be finite; got %g", c->fn, name,
                            (double)q->offset);
    return NEAT_OK;
}

static neat_status neat_check_int8(neat_check *c, const neat_qweight *q)
{
    const char *name = neat_arg_name(c, NEAT_ARG_QWEIGHT);
    const neat_qfield fields[] = {{"code", q->code},   {"absmax", q->absmax},
                                  {"absmax_q", q->absmax_q}, {"code2", q->code2},
                                  {"absmax2", q->absmax2}};
    const int64_t ints[] = {q->blocksize, q->nested, q->blocksize2};
    static const char *const int_names[] = {"blocksize", "nested", "blocksize2"};
    NEAT_TRY(neat_check_unset(c, name, "for NEAT_QFMT_INT8_ROW", fields, 5, ints, int_names, 3));
    if (q->offset != 0)
        return NEAT_INVALID("%s: %s.offset must be 0 for NEAT_QFMT_INT8_ROW (the field is not "
                            "read there); got %g",
                            c->fn, name, (double)q->offset);
    int64_t d_out = q->d_out, d_in = q->d_in, span;
    if (q->row_stride < d_in)
        return NEAT_INVALID("%s: %s.row_stride must be >= d_in = %lld (CB's rows may not "
                            "overlap); got %lld",
                            c->fn, name, (long long)d_in, (long long)q->row_stride);
    if (__builtin_mul_overflow(d_out - 1, q->row_stride, &span) ||
        span > PTRDIFF_MAX - d_in)
        return NEAT_INVALID("%s: %s.row_stride %lld makes CB's %lld rows span more than "
                            "PTRDIFF_MAX bytes",
                            c->fn, name, (long long)q->row_stride, (long long)d_out);
    NEAT_TRY(neat_qarray(c, NEAT_QF_DATA, q->data, span + d_in, 1,
                         "CB: d_out rows of d_in int8 values, row_stride apart"));
    return neat_qarray(c, NEAT_QF_SCB, q->scb, d_out, sizeof(float),
                       "SCB: d_out float32 row scales");
}

neat_status neat_check_qweight_fields(neat_check *c, const neat_qweight *q)
{
    /* d_out * d_in <= 2^40: the qweight row's matrix limit has passed */
    if (neat_is_4bit(q))
        return neat_check_4bit(c, q, q->d_out * q->d_in);
    return neat_check_int8(c, q);
}

const neat_args *neat_qargs(const neat_args *args, const neat_qweight *qw, neat_args *copy,
                            neat_tensor *shape)
{
    if (!qw)
        return args;
    *copy = *args;
    *shape = neat_qweight_shape(qw);
    copy->weight = shape;
    return copy;
}

neat_tensor neat_qweight_shape(const neat_qweight *q)
{
    neat_tensor t;
    memset(&t, 0, sizeof t);
    t.dtype = q->dtype;
    t.ndim = 2;
    t.sizes[0] = q->d_out, t.sizes[1] = q->d_in;
    t.strides[0] = q->d_in, t.strides[1] = 1;
    t.device = q->device;
    return t;
}

/* ---- the dequantizer ---- */

/* absmax of block j, as bitsandbytes forms it (dequantize_blockwise, then += offset) */
static float neat_block_absmax(const neat_qweight *q, int64_t j)
{
    if (!q->nested)
        return q->absmax[j];
    float a = q->code2[q->absmax_q[j]] * q->absmax2[j / q->blocksize2];
    return a + q->offset;
}

/* n elements of flat W from element e on, 4-bit codes: one absmax per block segment, then the
 * codes two per byte (high nibble first). */
#define NEAT_DEFINE_DQ4(T, SFX)                                                                 \
    static void neat_dq4_##SFX(const neat_qweight *q, int64_t e, int64_t n, T *dst)            \
    {                                                                                           \
        const uint8_t *d = q->data;                                                             \
        const float *code = q->code;                                                            \
        int64_t bs = q->blocksize, end = e + n;                                                 \
        while (e < end) {                                                                       \
            int64_t blk = e / bs, stop = (blk + 1) * bs < end ? (blk + 1) * bs : end;           \
            float s = neat_block_absmax(q, blk);                                                \
            if (e & 1)                                                                          \
                *dst++ = (T)(code[d[e >> 1] & 15] * s), e++;                                    \
            for (; e + 1 < stop; e += 2, dst += 2) {                                            \
                unsigned b = d[e >> 1];                                                         \
                dst[0] = (T)(code[b >> 4] * s);                                                 \
                dst[1] = (T)(code[b & 15] * s);                                                 \
            }                                                                                   \
            if (e < stop)                                                                       \
                *dst++ = (T)(code[d[e >> 1] >> 4] * s), e++;                                    \
        }                                                                                       \
    }

/* W[i, k0 : k0 + n] of an int8 weight */
#define NEAT_DEFINE_DQ8(T, SFX)                                                                 \
    static void neat_dq8_##SFX(const neat_qweight *q, int64_t i, int64_t k0, int64_t n, T *dst) \
    {                                                                                           \
        const int8_t *cb = (const int8_t *)q->data + i * q->row_stride + k0;                    \
        float s = q->scb[i];                                                                    \
        for (int64_t k = 0; k < n; k++) dst[k] = (T)(((float)cb[k] * s) * NEAT_INT8_SCALE);     \
    }

NEAT_DEFINE_DQ4(float, f32)
NEAT_DEFINE_DQ4(double, f64)
NEAT_DEFINE_DQ8(float, f32)
NEAT_DEFINE_DQ8(double, f64)

void neat_dequant_panel(const neat_qweight *q, neat_dtype dtype, int64_t i0, int64_t rows,
                        int64_t k0, int64_t cols, void *dst, int64_t ld)
{
    int four = neat_is_4bit(q);
    for (int64_t r = 0; r < rows; r++) {
        int64_t i = i0 + r;
        if (dtype == NEAT_FLOAT64) {
            double *out = (double *)dst + r * ld;
            if (four)
                neat_dq4_f64(q, i * q->d_in + k0, cols, out);
            else
                neat_dq8_f64(q, i, k0, cols, out);
        } else {
            float *out = (float *)dst + r * ld;
            if (four)
                neat_dq4_f32(q, i * q->d_in + k0, cols, out);
            else
                neat_dq8_f32(q, i, k0, cols, out);
        }
    }
}

typedef struct neat_dq_job {
    const neat_qweight *q;
    neat_dtype dtype;
    int64_t i0, k0, cols, ld;
    char *dst;
    size_t es;
} neat_dq_job;

static void neat_dq_rows(int64_t begin, int64_t end, void *ctx)
{
    const neat_dq_job *j = ctx;
    neat_dequant_panel(j->q, j->dtype, j->i0 + begin, end - begin, j->k0, j->cols,
                       j->dst + (size_t)(begin * j->ld) * j->es, j->ld);
}

/* Elements below which a panel is not worth waking other lanes for. */
#define NEAT_DQ_GRAIN 16384

void neat_dequant_panel_par(const neat_qweight *q, neat_dtype dtype, int64_t i0, int64_t rows,
                            int64_t k0, int64_t cols, void *dst, int64_t ld,
                            const neat_exec *exec)
{
    neat_dq_job job = {q, dtype, i0, k0, cols, ld, dst,
                       dtype == NEAT_FLOAT64 ? sizeof(double) : sizeof(float)};
    int64_t grain = cols > 0 ? (NEAT_DQ_GRAIN + cols - 1) / cols : rows;
    if (exec && exec->parallel_for && exec->num_threads > 1 && rows >= 2 * grain)
        exec->parallel_for(0, rows, grain, neat_dq_rows, &job, exec->parallel_user);
    else
        neat_dq_rows(0, rows, &job);
}
