/*
 * gemm.h - the CPU matrix multiply every CPU kernel of torch-neat is built on (internal).
 *
 *   C = alpha * A B + beta * C,   A: (M, K), B: (K, N), C: (M, N)
 *
 * Every operand is a strided view given by a pointer, a row stride and a column stride (in
 * elements), so a transpose is a swap of the two strides and costs nothing. When beta == 0, C is
 * never read (it may hold NaN); K == 0 still writes beta * C.
 *
 * The output is cut into tiles, each computed by one lane; every element's arithmetic (its K
 * order, its K slices) depends only on (M, N, K), the strides and the dtype, never on the lane
 * count, so results are bit-identical for any thread count. Shapes with one output dimension
 * <= 16 take skinny paths that read the large operand in place. Pack buffers live in
 * caller-provided scratch (neat_gemm_scratch_bytes_mnk for the same lane count); nothing here
 * allocates.
 */
#ifndef NEAT_GEMM_H
#define NEAT_GEMM_H

#include "neat.h"

/* Scratch that neat_gemm needs for this shape with up to `lanes` concurrent lanes. */
size_t neat_gemm_scratch_bytes_mnk(neat_dtype dtype, int64_t M, int64_t N, int64_t K,
                                   int32_t lanes);

/* Lanes a call with this exec may use (>= 1). */
int32_t neat_exec_lanes(const neat_exec *exec);

void neat_gemm_f32(int64_t M, int64_t N, int64_t K, float alpha,
                   const float *A, int64_t rsa, int64_t csa,
                   const float *B, int64_t rsb, int64_t csb, float beta,
                   float *C, int64_t rsc, int64_t csc, void *scratch, const neat_exec *exec);
void neat_gemm_f64(int64_t M, int64_t N, int64_t K, double alpha,
                   const double *A, int64_t rsa, int64_t csa,
                   const double *B, int64_t rsb, int64_t csb, double beta,
                   double *C, int64_t rsc, int64_t csc, void *scratch, const neat_exec *exec);

/* Type-erased form for code written once for both CPU dtypes (dtype is FLOAT32 or FLOAT64). */
void neat_gemm(neat_dtype dtype, int64_t M, int64_t N, int64_t K, double alpha,
               const void *A, int64_t rsa, int64_t csa, const void *B, int64_t rsb, int64_t csb,
               double beta, void *C, int64_t rsc, int64_t csc, void *scratch,
               const neat_exec *exec);

#endif /* NEAT_GEMM_H */
