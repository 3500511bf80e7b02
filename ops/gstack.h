/*
 * gstack.h - the column-block engine for G and its backward (internal; docs/design.md §1.1, §1.2).
 *
 * Column j of G depends only on column j of W, so d_in is processed in blocks of
 * NEAT_GSTACK_BS columns: Z_0 = A W[:, blk], G_0 = act(Z_0), then the hidden stack with its
 * U-Net residuals, all on r x bs tiles that stay in cache. The backward recomputes the block's
 * forward (no saved activations) and runs back through it while W's block is still hot.
 *
 * Blocks are split into contiguous groups whose count depends only on the shapes; each group
 * keeps its own dA / dH partial sums, and the partials are reduced in group order afterwards,
 * so results are bit-identical for any thread count.
 *
 * With a quantized W (qw != NULL; args->weight is then a data-less view of its shape, quant.h)
 * each group dequantizes W[:, blk] into a panel of its own, NEAT_GSTACK_QROWS rows at a time:
 * Z_0 = A W[:, blk] accumulates over those row panels, and the backward's A-gradient
 * dZ_0 W[:, blk]^T reuses the panel when one panel holds the whole block, else dequantizes
 * each row panel again. dweight is never asked for with a quantized W (it is frozen).
 */
#ifndef NEAT_GSTACK_H
#define NEAT_GSTACK_H

#include "neat.h"

#define NEAT_GSTACK_BS 64

/* What the backward writes; NULL members are not computed. */
typedef struct neat_gstack_out {
    void *G;             /* (r, d_in) with row stride g_rs, column stride g_cs, or NULL */
    int64_t g_rs, g_cs;
    const neat_tensor *dA;                    /* overwritten */
    const neat_tensor *dH[NEAT_MAX_HIDDEN];   /* overwritten */
    const neat_tensor *dweight;               /* += A^T dZ_0 when dweight_accumulate, else = */
    int dweight_accumulate;
} neat_gstack_out;

/* Rows of W in one group's panel (a block of NEAT_GSTACK_BS columns): 256 KiB of float32. */
#define NEAT_GSTACK_QROWS 1024

/* Scratch for neat_gstack_forward (backward = 0) or neat_gstack_backward (backward = 1); qw is
 * the quantized W or NULL. */
size_t neat_gstack_scratch_bytes(const neat_args *args, const neat_qweight *qw, int backward);

/* G = stack(act(A W)); G is (r, d_in) with strides (g_rs, g_cs). args->x and args->B unused. */
void neat_gstack_forward(const neat_args *args, const neat_qweight *qw, void *G, int64_t g_rs,
                         int64_t g_cs, void *scratch, const neat_exec *exec);

/* With dU (N, r) contiguous: dG = dU^T x, back through the stack to dA, dH and A^T dZ_0. */
void neat_gstack_backward(const neat_args *args, const neat_qweight *qw, const void *dU,
                          const neat_gstack_out *out, void *scratch, const neat_exec *exec);

#endif /* NEAT_GSTACK_H */
