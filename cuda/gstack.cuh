// gstack.cuh - the r-by-r network that turns Z_0 = A W into G (docs/design.md §1.1) and its backward
// (docs/design.md §1.2), on the device. Kernels and launchers in gstack.cu.
//
// Everything is column-independent: G's column j depends only on Z_0's column j, so each kernel
// is one thread per (row, column) element, a whole layer (r-term dot product with H, activation,
// U-Net residual) fused into one launch. Intermediates are float32 (float64 for float64) r x d_in
// scratch matrices in the workspace (row stride scratch_ld, the same for all of them); hidden
// weights H are read in whatever dtype and strides the caller prepared (prepare_hidden).
#pragma once

#include "common.cuh"

namespace neat_cuda {

// Per-level buffers of one stack evaluation, all (r, d_in) scratch in the accumulation dtype.
// Level 0 is act(A W); level l = 1..num_hidden is the output of hidden layer l.
struct Stack {
    int num_hidden = 0;
    Mat Z[NEAT_MAX_HIDDEN + 1]; // pre-activations; Z[l] for l >= 1 only kept when asked
    Mat G[NEAT_MAX_HIDDEN + 1]; // outputs
};

// The hidden weights as the stack reads them, H[0..num_hidden): each in `dt` (x's dtype: a
// float32 H of a mixed-precision call is rounded to it, as A and B are, see neat.h), in place
// when it already has that dtype, else a converted scratch copy.
neat_status prepare_hidden(Ctx &ctx, const neat_args *args, neat_dtype dt, Mat *H);

// From Z0 ((r, d_in) scratch in the accumulation dtype) writes the final G into `out` (any dtype,
// any strides). keep = true stores every level's Z and G in *st for stack_backward.
neat_status stack_forward(Ctx &ctx, const neat_args *args, const Mat *H, Mat Z0, Mat out, bool keep,
                          Stack *st);

// From dG (gradient of the final G, scratch like Z0) and a kept Stack, writes dZ0 (scratch like
// Z0) and every requested grads->dhidden[i].
neat_status stack_backward(Ctx &ctx, const neat_args *args, const Mat *H, const neat_grads *grads,
                           const Stack &st, Mat dG, Mat dZ0);

} // namespace neat_cuda
