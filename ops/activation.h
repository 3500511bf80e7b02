/*
 * activation.h - the elementwise activations of docs/design.md §1.3 and their derivatives (internal).
 * Blocks are rows x cols with a row stride (ld); columns are contiguous.
 */
#ifndef NEAT_ACTIVATION_H
#define NEAT_ACTIVATION_H

#include "neat.h"

/* G = act(Z) + skip (skip may be NULL: no residual). G may alias skip, not Z. */
void neat_act_forward(neat_dtype dtype, neat_activation act, int64_t rows, int64_t cols,
                      const void *Z, int64_t ldz, const void *skip, int64_t lds, void *G,
                      int64_t ldg);

/* dZ = dG * act'(Z). dZ may alias dG. */
void neat_act_backward(neat_dtype dtype, neat_activation act, int64_t rows, int64_t cols,
                       const void *Z, int64_t ldz, const void *dG, int64_t ldd, void *dZ,
                       int64_t lddz);

#endif /* NEAT_ACTIVATION_H */
