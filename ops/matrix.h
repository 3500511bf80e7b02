/*
 * matrix.h - the few elementwise matrix loops the kernels need besides GEMM (internal).
 * Every matrix is (rows, cols) with a row stride and a column stride in elements.
 */
#ifndef NEAT_MATRIX_H
#define NEAT_MATRIX_H

#include "neat.h"

/* dst = src */
void neat_mat_copy(neat_dtype dtype, int64_t rows, int64_t cols, const void *src, int64_t srs,
                   int64_t scs, void *dst, int64_t drs, int64_t dcs);
/* dst += src */
void neat_mat_add(neat_dtype dtype, int64_t rows, int64_t cols, const void *src, int64_t srs,
                  int64_t scs, void *dst, int64_t drs, int64_t dcs);
/* dst = 0 */
void neat_mat_zero(neat_dtype dtype, int64_t rows, int64_t cols, void *dst, int64_t drs,
                   int64_t dcs);
/* out[j] = sum over i of src[i, j], summed in row order */
void neat_mat_colsum(neat_dtype dtype, int64_t rows, int64_t cols, const void *src, int64_t srs,
                     int64_t scs, void *out, int64_t os);

#endif /* NEAT_MATRIX_H */
