/*
 * qgemm.h - the frozen products with a quantized W (x W^T, dy W) as loops over panels of W
 * (internal; docs/design.md §5.2).
 *
 *   trans = 1:  C = A W^T + ex    (M, d_out), K = d_in:  the forward's x W^T
 *   trans = 0:  C = A W + ex      (M, d_in),  K = d_out: the backward's dy W
 *
 * W is cut into panels of pk rows of K (the GEMM's own K slice, so splitting K adds no pass
 * over C that the GEMM would not make itself) by po output columns, po as large as the panel
 * budget allows. Panels are taken one after the other, in an order fixed by the shapes: each is
 * dequantized once into the workspace, its rows spread over exec's lanes, then multiplied by
 * the existing GEMM (gemm.h) on exec's lanes, into C's po columns with beta = 0 for the first K
 * panel and beta = 1 for the others. ex's D rides on the first K panel, its rank-K2 term on the
 * last. Nothing depends on the lane count, so neither do the results.
 */
#ifndef NEAT_QGEMM_H
#define NEAT_QGEMM_H

#include "gemm.h"
#include "neat.h"

/* Most bytes of one panel. 1 MiB keeps a float32 panel 682 columns wide at the K slice of
 * 384, where the GEMM's repacking of A per panel costs ~2% (bench_qgemm: 256 KiB panels, 170
 * columns, made x W^T and dy W 1.2-1.4x the float GEMM on one thread; 1 MiB, 1.04-1.09x). */
#ifndef NEAT_QPANEL_BYTES
#define NEAT_QPANEL_BYTES (1 << 20)
#endif

/* Scratch of neat_qgemm for M rows of A, a second term of inner size K2 (0: none) and up to
 * `lanes` lanes: the panel and the GEMM's pack buffers. */
size_t neat_qgemm_scratch_bytes(neat_dtype dtype, const neat_qweight *q, int trans, int64_t M,
                                int64_t K2, int32_t lanes);

/* C = A op(W) + ex (ex may be NULL; its B2 and D are (K2, n) and (M, n) over all of C's n
 * columns). A: (M, K) at A[i*rsa + k*csa]; C at C[i*rsc + j*csc]. */
void neat_qgemm(neat_dtype dtype, const neat_qweight *q, int trans, int64_t M, const void *A,
                int64_t rsa, int64_t csa, void *C, int64_t rsc, int64_t csc,
                const neat_gemm_extra *ex, void *scratch, const neat_exec *exec);

#endif /* NEAT_QGEMM_H */
