// gstack.cuh - the r-by-r network that turns Z_0 = A W into G (DESIGN 1.1) and its backward
// (DESIGN 1.2), on the device. Kernels and launchers in gstack.cu.
//
// Everything is column-independent: G's column j depends only on Z_0's column j, so each kernel
// is one thread per (row, column) element, a whole layer (r-term dot product with H, activation,
// U-Net residual) fused into one launch. Intermediates are float32 (float64 for float64) r x d_in
// matrices in the workspace; hidden weights H are read in their own dtype and strides.
#pragma once

#include "common.cuh"

namespace neat_cuda {

// Per-level buffers of one stack evaluation, all (r, d_in) contiguous in the accumulation dtype.
// Level 0 is act(A W); level l = 1..num_hidden is the output of hidden layer l.
struct Stack {
    int num_hidden = 0;
    Mat Z[NEAT_MAX_HIDDEN + 1]; // pre-activations; Z[l] for l >= 1 only kept when asked
    Mat G[NEAT_MAX_HIDDEN + 1]; // outputs
};

// From Z0 (r, d_in, accumulation dtype, contiguous) writes the final G into `out` (any dtype,
// any strides). keep = true stores every level's Z and G in *st for stack_backward.
neat_status stack_forward(Ctx &ctx, const neat_args *args, Mat Z0, Mat out, bool keep, Stack *st);

// From dG (gradient of the final G, accumulation dtype, contiguous) and a kept Stack, writes dZ0
// (accumulation dtype, contiguous) and every requested grads->dhidden[i].
neat_status stack_backward(Ctx &ctx, const neat_args *args, const neat_grads *grads, const Stack &st,
                           Mat dG, Mat dZ0);

} // namespace neat_cuda
