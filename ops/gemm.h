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

/*
 * A fused second term: neat_gemm_ex computes
 *
 *   C = alpha * A B + alpha2 * A2 B2 + beta * C + D,   A2: (M, K2), B2: (K2, N), D: (M, N)
 *
 * with K2 small (a low-rank term) and D an optional strided view (NULL: none; a bias broadcast
 * over rows is D with rsd = 0). On the packed path A2 B2 is an extra K segment of each tile's
 * last K slice (the accumulator is scaled by alpha, then alpha2 * A2 B2 added to it in
 * registers) and D is added in the first K slice's store, so neither costs a pass over C.
 * Per element: t = alpha * (A B)_slice0 + beta * C + D, then t += alpha * (A B)_slice for each
 * further slice, the last one's accumulator carrying alpha2 * A2 B2 before it is added; fixed
 * for a shape, never dependent on the lanes. Shapes that take a skinny path (or K <= 0) run
 * the three terms one after the other instead. Scratch: neat_gemm_ex_scratch_bytes.
 */
typedef struct neat_gemm_extra {
    int64_t K2;
    double alpha2;
    const void *A2;
    int64_t rsa2, csa2;
    const void *B2;
    int64_t rsb2, csb2;
    const void *D; /* NULL: no D */
    int64_t rsd, csd;
} neat_gemm_extra;

/* Scratch that neat_gemm needs for this shape with up to `lanes` concurrent lanes. */
size_t neat_gemm_scratch_bytes_mnk(neat_dtype dtype, int64_t M, int64_t N, int64_t K,
                                   int32_t lanes);
/* Scratch that neat_gemm_ex needs with a second term of inner size K2 (K2 = 0: the same as
 * neat_gemm_scratch_bytes_mnk). */
size_t neat_gemm_ex_scratch_bytes(neat_dtype dtype, int64_t M, int64_t N, int64_t K, int64_t K2,
                                  int32_t lanes);

/* The K slice of dtype's packed path (KC): the K span whose partial sum an output element adds
 * to C in one step. Callers that split K themselves (ops/qgemm.c) cut it on these borders. */
int64_t neat_gemm_k_slice(neat_dtype dtype);

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
/* C = alpha A B + alpha2 A2 B2 + beta C + D (ex NULL: the same as neat_gemm). */
void neat_gemm_ex(neat_dtype dtype, int64_t M, int64_t N, int64_t K, double alpha,
                  const void *A, int64_t rsa, int64_t csa, const void *B, int64_t rsb,
                  int64_t csb, double beta, void *C, int64_t rsc, int64_t csc,
                  const neat_gemm_extra *ex, void *scratch, const neat_exec *exec);

#endif /* NEAT_GEMM_H */
