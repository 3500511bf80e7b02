/*
 * qref.c - quantized test weights and the reference dequantizer (see qref.h). Compiled without
 * FMA contraction (tests/c/CMakeLists.txt): code2 * absmax2 + offset is two float32 roundings.
 */
#include "qref.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
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

static void *alloc(gbuf *g, size_t bytes, int side)
{
    *g = guard_alloc(bytes, side, GUARD_FLUSH);
    return g->p;
}

/* The index of the table entry nearest v (the first of a tie). */
static int nearest(const float *table, int n, double v)
{
    int best = 0;
    for (int i = 1; i < n; i++)
        if (fabs(table[i] - v) < fabs(table[best] - v))
            best = i;
    return best;
}

/*
 * The storage comes from quantizing a random W uniform in [-1, 1) the way bitsandbytes does
 * (absmax per block or row, nearest code), so the dequantized W is distributed like the float
 * tests' W (zero mean: uniformly random codes would give NF4's nonzero mean instead). Bytes no
 * element reads (the odd last low nibble, int8 row padding) are random.
 */
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
    double *w = xmalloc((size_t)n * sizeof *w);
    fill_random(rng, w, n, -1, 1);
    if (s->format == NEAT_QFMT_INT8_ROW) {
        q->row_stride = d_in + s->row_pad;
        int64_t extent = (d_out - 1) * q->row_stride + d_in;
        int8_t *cb = alloc(&r->data, (size_t)extent, side);
        float *scb = alloc(&r->scb, (size_t)d_out * sizeof(float), side);
        for (int64_t i = 0; i < extent; i++) cb[i] = (int8_t)(rng_next(rng) >> 56);
        for (int64_t i = 0; i < d_out; i++) {
            double m = 0;
            for (int64_t k = 0; k < d_in; k++) m = fmax(m, fabs(w[i * d_in + k]));
            scb[i] = (float)(m > 0 ? m : 1);
            for (int64_t k = 0; k < d_in; k++)
                cb[i * q->row_stride + k] = (int8_t)lround(w[i * d_in + k] / scb[i] * 127);
        }
        q->data = cb, q->scb = scb;
        free(w);
        return;
    }
    q->blocksize = s->blocksize;
    float *code = alloc(&r->code, 16 * sizeof(float), side);
    memcpy(code, s->format == NEAT_QFMT_NF4 ? qref_nf4_code : qref_fp4_code, 16 * sizeof(float));
    q->code = code;
    int64_t nblocks = cdiv(n, s->blocksize);
    float *amax = xmalloc((size_t)nblocks * sizeof *amax);
    for (int64_t j = 0; j < nblocks; j++) {
        double m = 0;
        for (int64_t e = j * s->blocksize; e < n && e < (j + 1) * s->blocksize; e++)
            m = fmax(m, fabs(w[e]));
        amax[j] = (float)(m > 0 ? m : 1);
    }
    uint8_t *data = alloc(&r->data, (size_t)(n + 1) / 2, side);
    for (int64_t i = 0; i < (n + 1) / 2; i++) /* the odd last low nibble stays random */
        data[i] = (uint8_t)(rng_next(rng) >> 56);
    for (int64_t e = 0; e < n; e++) {
        int c = nearest(code, 16, w[e] / amax[e / s->blocksize]);
        data[e / 2] = (uint8_t)(e % 2 == 0 ? (data[e / 2] & 15) | c << 4 : (data[e / 2] & 0xf0) | c);
    }
    q->data = data;
    if (!s->nested) {
        q->absmax = alloc(&r->absmax, (size_t)nblocks * sizeof(float), side);
        memcpy((float *)q->absmax, amax, (size_t)nblocks * sizeof(float));
    } else {
        /* absmax less its mean, blockwise over blocksize2 on a 256-level table in [-1, 1] */
        q->nested = 1;
        q->blocksize2 = s->blocksize2;
        double mean = 0;
        for (int64_t j = 0; j < nblocks; j++) mean += amax[j];
        q->offset = (float)(mean / (double)nblocks);
        float *code2 = alloc(&r->code2, 256 * sizeof(float), side);
        for (int i = 0; i < 256; i++) code2[i] = (float)(-1 + 2.0 * i / 255);
        int64_t n2 = cdiv(nblocks, s->blocksize2);
        float *absmax2 = alloc(&r->absmax2, (size_t)n2 * sizeof(float), side);
        uint8_t *aq = alloc(&r->absmax_q, (size_t)nblocks, side);
        for (int64_t g = 0; g < n2; g++) {
            double m = 0;
            for (int64_t j = g * s->blocksize2; j < nblocks && j < (g + 1) * s->blocksize2; j++)
                m = fmax(m, fabs(amax[j] - q->offset));
            absmax2[g] = (float)(m > 0 ? m : 1);
        }
        for (int64_t j = 0; j < nblocks; j++)
            aq[j] = (uint8_t)nearest(code2, 256, (amax[j] - q->offset) / absmax2[j / s->blocksize2]);
        q->code2 = code2, q->absmax2 = absmax2, q->absmax_q = aq;
    }
    free(amax);
    free(w);
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
