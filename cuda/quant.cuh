// quant.cuh - the frozen W of a call as the CUDA products read it: a float view, or a quantized
// W (neat_qweight, docs/design.md §2.8, §5.2) dequantized one panel at a time into the workspace.
//
// Every product with W goes through wgemm(). With a float W it is the one gemm() it always was.
// With a quantized W the product is cut into panels of op(W): pk rows of the sum by po output
// columns, as many of the sum as fit (a split sum costs one more beta = 1 pass over the output per
// panel, and a half output one more rounding; it splits only past 64 columns' worth of budget,
// K > 8192 in bfloat16 at the smallest budget), the output columns as wide as the panel budget
// allows and evened out over them. Each panel is dequantized by one kernel (the values of
// ops/quant.c, bit for bit) and multiplied by cuBLAS, beta as asked for the first panel of the sum
// and 1 after it. One panel buffer, carved
// once per call, serves every product of the call: they run one after the other on the stream.
// The grid of panels depends only on the shapes and the budget, so the results depend on nothing
// else either (no atomics, a fixed order: run-to-run identical like the float path).
//
// The budget: an eighth of a float W in the compute dtype, within [1 MiB, 8 MiB] (a 4096 x 4096
// bfloat16 W: 4 MiB panels, 512 columns of a full sum, 8 panels per product), or
// NEAT_CUDA_QPANEL_KB KiB when the environment sets it (read at every call; tests shrink it to
// take many panels in every product).
// Change it between calls, never between a size query and the call it sizes.
#pragma once

#include "common.cuh"

namespace neat_cuda {

struct Weight {
    Mat w;                        // float: W, blas_ready in T; quantized: shape and dtype, no data
    const neat_qweight *q = nullptr;
    Mat panel;                    // quantized: the panel buffer (p, dt; sizes set per panel)
};

// W's shape and dtype as a Mat: the float view itself, or a quantized W's (no data).
inline Mat weight_view(const neat_tensor *W, const neat_qweight *q)
{
    return q ? mat_contig(nullptr, q->dtype, q->d_out, q->d_in) : mat_of(W);
}

// W of the call in T: a float W (q == nullptr) made blas_ready (ready_input); a quantized one
// gets its panel buffer, sized for the largest panel of either orientation. Carves; launches
// only the float copy, if one is needed.
neat_status weight_prepare(Ctx &ctx, const neat_tensor *W, const neat_qweight *q, neat_dtype T,
                           Weight *out);

// C = alpha * A op(W) + beta * C with op(W) = W^T (trans) or W, as gemm() does for a float W.
neat_status wgemm(Ctx &ctx, Mat C, Mat A, const Weight &W, bool trans, double alpha, double beta);

// W[i0 : i0 + rows, k0 : k0 + cols] of q into dst (row-major, row stride ld, dtype dt) on
// ctx.stream; the values of ops/quant.c's neat_dequant_panel, in any of the four dtypes.
neat_status launch_dequant(Ctx &ctx, const neat_qweight &q, int64_t i0, int64_t rows, int64_t k0,
                           int64_t cols, Mat dst);

} // namespace neat_cuda
