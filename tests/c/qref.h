/*
 * qref.h - quantized test weights: random bitsandbytes-format storage (NF4 / FP4, plain or
 * nested, and LLM.int8 rows) in guard-page buffers of exactly their size, and a plain
 * per-element reference dequantizer written from the format rules of shim/neat.h, independent
 * of ops/quant.c.
 */
#ifndef NEAT_TEST_QREF_H
#define NEAT_TEST_QREF_H

#include <stdint.h>

#include "guard.h"
#include "neat.h"

/* bitsandbytes' own tables (get_4bit_type("nf4") / ("fp4")), passed in as any caller would. */
extern const float qref_nf4_code[16];
extern const float qref_fp4_code[16];

typedef struct qref_spec {
    neat_qformat format;
    int nested;                     /* 4-bit only */
    int64_t blocksize, blocksize2;  /* 4-bit; blocksize2 when nested */
    int64_t row_pad;                /* int8: row_stride = d_in + row_pad */
} qref_spec;

typedef struct qref {
    neat_qweight q; /* points into the buffers below */
    gbuf data, code, absmax, absmax_q, code2, absmax2, scb;
} qref;

/* A random quantized (d_out, d_in) weight for compute dtype dt; every array in a mapping of
 * exactly its size against a guard page on `side` (guard.h), padding (the odd low nibble,
 * int8 row padding) random too. */
void qref_make(qref *r, const qref_spec *s, neat_dtype dt, int64_t d_out, int64_t d_in,
               int side, uint64_t *rng);
void qref_free(qref *r);

/* W (d_out * d_in, row-major) from q's rules, element by element. */
void qref_dequant(const neat_qweight *q, double *W);

/* "nf4 nested bs=64/256" */
void qref_describe(const qref_spec *s, char *buf, size_t n);

#endif /* NEAT_TEST_QREF_H */
