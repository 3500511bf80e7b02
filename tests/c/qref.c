/*
 * qref.c - quantized test weights and the reference dequantizer (see qref.h). Compiled without
 * FMA contraction (tests/c/CMakeLists.txt): code2 * absmax2 + offset is two float32 roundings.
 */
#include "qref.h"

#include <stdio.h>
#include <string.h>

#include "util.h"

const float qref_nf4_code[16] = {
    -1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f,
    -0.28444138169288635f, -0.18477343022823334f, -0.09105003625154495f, 0.0f,
    0.07958029955625534f, 0.16093020141124725f, 0.24611230194568634f, 0.33791524171829224f,
    0.44070982933044434f, 0.5626170039176941f, 0.7229568362236023f, 1.0f};

/* bitsandbytes' FP4 (e2m1 without inf/nan) values over their maximum, 12 */
const float qref_fp4_code[16] = {
    0.0f / 12, 0.0625f / 12, 8.0f / 12, 12.0f / 12, 4.0f / 12, 6.0f / 12, 2.0f / 12, 3.0f / 12,
    -0.0f / 12, -0.0625f / 12, -8.0f / 12, -12.0f / 12, -4.0f / 12, -6.0f / 12, -2.0f / 12,
    -3.0f / 12};

static int64_t cdiv(int64_t a, int64_t b)
{
    return (a + b - 1) / b;
}

static float *floats(gbuf *g, int64_t n, int side, uint64_t *rng, double lo, double hi)
{
    *g = guard_alloc((size_t)n * sizeof(float), side, GUARD_FLUSH);
    float *p = g->p;
    for (int64_t i = 0; i < n; i++) p[i] = (float)rng_uniform(rng, lo, hi);
    return p;
}

static uint8_t *bytes(gbuf *g, int64_t n, int side, uint64_t *rng)
{
    *g = guard_alloc((size_t)n, side, GUARD_FLUSH);
    uint8_t *p = g->p;
    for (int64_t i = 0; i < n; i++) p[i] = (uint8_t)(rng_next(rng) >> 56);
    return p;
}

void qref_make(qref *r, const qref_spec *s, neat_dtype dt, int64_t d_out, int64_t d_in,
               int side, uint64_t *rng)
{
    memset(r, 0, sizeof *r);
    neat_qweight *q = &r->q;
    q->format = s->format;
    q->dtype = dt;
    q->device = tb_device();
    q->d_out = d_out, q->d_in = d_in;
    int64_t n = d_out * d_in;
    if (s->format == NEAT_QFMT_INT8_ROW) {
        q->row_stride = d_in + s->row_pad;
        int64_t extent = (d_out - 1) * q->row_stride + d_in;
        r->data = guard_alloc((size_t)extent, side, GUARD_FLUSH);
        int8_t *cb = r->data.p;
        for (int64_t i = 0; i < extent; i++) /* bitsandbytes' codes are -127..127 */
            cb[i] = (int8_t)((int64_t)(rng_next(rng) % 255) - 127);
        q->data = cb;
        q->scb = floats(&r->scb, d_out, side, rng, 0.5, 1.5);
        return;
    }
    q->blocksize = s->blocksize;
    q->data = bytes(&r->data, (n + 1) / 2, side, rng);
    r->code = guard_alloc(16 * sizeof(float), side, GUARD_FLUSH);
    memcpy(r->code.p, s->format == NEAT_QFMT_NF4 ? qref_nf4_code : qref_fp4_code,
           16 * sizeof(float));
    q->code = r->code.p;
    int64_t nblocks = cdiv(n, s->blocksize);
    if (!s->nested) {
        q->absmax = floats(&r->absmax, nblocks, side, rng, 0.5, 1.5);
        return;
    }
    q->nested = 1;
    q->blocksize2 = s->blocksize2;
    q->absmax_q = bytes(&r->absmax_q, nblocks, side, rng);
    q->code2 = floats(&r->code2, 256, side, rng, -0.5, 0.5);
    q->absmax2 = floats(&r->absmax2, cdiv(nblocks, s->blocksize2), side, rng, 0.5, 1.0);
    q->offset = (float)rng_uniform(rng, 0.8, 1.2);
}

void qref_free(qref *r)
{
    guard_free(&r->data), guard_free(&r->code), guard_free(&r->absmax);
    guard_free(&r->absmax_q), guard_free(&r->code2), guard_free(&r->absmax2);
    guard_free(&r->scb);
}

void qref_dequant(const neat_qweight *q, double *W)
{
    int64_t n = q->d_out * q->d_in;
    for (int64_t e = 0; e < n; e++) {
        float w;
        if (q->format == NEAT_QFMT_INT8_ROW) {
            int64_t i = e / q->d_in, k = e % q->d_in;
            int8_t c = ((const int8_t *)q->data)[i * q->row_stride + k];
            float t = (float)c * q->scb[i];
            w = t * 7.874015718698502e-3f;
        } else {
            uint8_t b = ((const uint8_t *)q->data)[e / 2];
            int c = e % 2 == 0 ? b >> 4 : b & 15;
            int64_t j = e / q->blocksize;
            float am;
            if (q->nested) {
                float t = q->code2[q->absmax_q[j]] * q->absmax2[j / q->blocksize2];
                am = t + q->offset;
            } else {
                am = q->absmax[j];
            }
            w = q->code[c] * am;
        }
        W[e] = w;
    }
}

void qref_describe(const qref_spec *s, char *buf, size_t n)
{
    if (s->format == NEAT_QFMT_INT8_ROW)
        snprintf(buf, n, "int8 row_pad=%lld", (long long)s->row_pad);
    else if (s->nested)
        snprintf(buf, n, "%s nested bs=%lld/%lld", s->format == NEAT_QFMT_NF4 ? "nf4" : "fp4",
                 (long long)s->blocksize, (long long)s->blocksize2);
    else
        snprintf(buf, n, "%s bs=%lld", s->format == NEAT_QFMT_NF4 ? "nf4" : "fp4",
                 (long long)s->blocksize);
}
