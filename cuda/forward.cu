// forward.cu - neat_cuda_forward: y = [x W^T + b +] s (x G^T) B^T on the caller's stream, and
// neat_cuda_lowrank_forward: the same from a given G.
//
// Launch sequence (T = x's dtype, Acc = float32, or float64 for float64):
//   Z0 = A W                        cuBLAS, (r, d_in) in Acc   (A, H converted to T if they are not)
//   G  = stack(Z0)                  gstack kernels, written in T
//   U  = s x G^T                    cuBLAS, (N, r) in T, into the first r columns of Ucat (the
//                                   scale rides in alpha: B is used as given, rounded, unscaled)
//   y  = Ucat Bcat^T                cuBLAS, K = r (+1): Bcat = [B | b], Ucat = [s U | 1], so the
//                                   bias rides along in the rank-r product (no extra pass over y)
//   y += x W^T                      cuBLAS, beta = 1 (linear only)
// The main product runs last with beta = 1 so y is written once by the small product and read
// once in the big product's epilogue. The d_out x d_in update matrix is never formed. A y that
// cuBLAS cannot write (neither stride 1) gets both products block by block of rows in a bounded
// stage, then a copy; the stage is reserved whatever y's layout, since the size query has no y.
//
// The fused path (NEAT_CUDA_RANK_PATH=fused, r <= kFusedMaxRank) replaces the U product, the
// conversions and fills of [s U | 1] and [B | b], and the rank-r product by one kernel
// (fused.cuh): y = s (x G^T) B^T + b, written; then y += x W^T as above (beta = 1).
//
// With a quantized W (neat_cuda_qforward, neat_cuda_qlowrank_forward) the products with W (A W and
// x W^T) go through wgemm (quant.cuh): panels of W dequantized into the workspace, W never formed.
#include "blas.cuh"
#include "elementwise.cuh"
#include "entry.cuh"
#include "fused.cuh"
#include "gstack.cuh"
#include "quant.cuh"

namespace neat_cuda {
namespace {

// The fused form of project() below. The frozen product stays cuBLAS's, accumulated onto the
// kernel's y with beta = 1: a cuBLASLt epilogue can add a bias or an activation but not a rank-r
// product, and an augmented operand ([x | s U] against [W | B]) would copy x and W every step.
// The kernel reads any y layout; only the product onto it needs a y cuBLAS can write.
neat_status project_fused(Ctx &ctx, neat_tensor *y, const Mat &xg, const Weight *Wg, const Mat &G,
                          const Mat &B, const Mat &bias, bool has_bias, double scale)
{
    const neat_dtype T = G.dt;
    const int64_t n = xg.rows, d_out = B.rows;
    Mat stage = Wg ? ctx.scratch(T, stage_rows(n, d_out, T), d_out) : Mat{};
    const Mat yv = y ? mat_of(y) : mat_contig(nullptr, T, n, d_out);
    RowsArgs a;
    a.M = G;
    a.E = B;
    a.bias = has_bias ? bias : Mat{};
    a.scale = scale;
    if (!Wg || blas_ready(yv)) {
        a.in = xg;
        a.out = yv;
        NEAT_CUDA_TRY(launch_fused_rows(ctx, a));
        return Wg ? wgemm(ctx, yv, xg, *Wg, true, 1.0, 1.0) : NEAT_OK;
    }
    for (int64_t i0 = 0; i0 < n && !ctx.dry; i0 += stage.rows) {
        const int64_t m = n - i0 < stage.rows ? n - i0 : stage.rows;
        a.in = row_slice(xg, i0, m);
        a.out = row_slice(stage, 0, m);
        NEAT_CUDA_TRY(launch_fused_rows(ctx, a));
        NEAT_CUDA_TRY(wgemm(ctx, a.out, a.in, *Wg, true, 1.0, 1.0));
        NEAT_CUDA_TRY(launch_convert(ctx, row_slice(yv, i0, m), a.out));
    }
    return NEAT_OK;
}

// The part of the forward after G: U = s x G^T, then y = [U | 1] [B | b]^T [+ x W^T]. xg, Wg and
// G are blas_ready in T (W's dtype); B and bias may be in the parameter dtype.
neat_status project(Ctx &ctx, neat_tensor *y, const Mat &xg, const Weight *Wg, const Mat &G,
                    const Mat &B, const Mat &bias, bool has_bias, double scale)
{
    if (ctx.fused && fused_rank_ok(G.rows))
        return project_fused(ctx, y, xg, Wg, G, B, bias, has_bias, scale);
    const neat_dtype T = G.dt;
    const int64_t n = xg.rows, d_out = B.rows, r = G.rows, hb = has_bias ? 1 : 0;
    Mat Ucat = ctx.scratch(T, n, r + hb);
    // s U rounded once to T; B (a float32 B of a mixed call rounded to T) is never pre-scaled,
    // so the rounding does not depend on the bias, B's layout or the scale
    NEAT_CUDA_TRY(gemm(ctx, col_slice(Ucat, 0, r), xg, transposed(G), scale, 0.0));
    Mat Bc;
    if (!has_bias && B.dt == T && blas_ready(B)) {
        Bc = B;
    } else {
        Bc = ctx.scratch(T, d_out, r + hb);
        NEAT_CUDA_TRY(launch_convert(ctx, col_slice(Bc, 0, r), B));
        if (hb) {
            NEAT_CUDA_TRY(launch_fill(ctx, col_slice(Ucat, r, 1), 1.0));
            NEAT_CUDA_TRY(launch_convert(ctx, col_slice(Bc, r, 1), bias));
        }
    }

    // The stage for a y cuBLAS cannot write; the size query (no y) carves it just the same.
    Mat stage = ctx.scratch(T, stage_rows(n, d_out, T), d_out);
    const Mat yv = y ? mat_of(y) : mat_contig(nullptr, T, n, d_out);
    if (blas_ready(yv)) {
        NEAT_CUDA_TRY(gemm(ctx, yv, Ucat, transposed(Bc), 1.0, 0.0));
        return Wg ? wgemm(ctx, yv, xg, *Wg, true, 1.0, 1.0) : NEAT_OK;
    }
    for (int64_t i0 = 0; i0 < n && !ctx.dry; i0 += stage.rows) {
        const int64_t m = n - i0 < stage.rows ? n - i0 : stage.rows;
        const Mat blk = row_slice(stage, 0, m);
        NEAT_CUDA_TRY(gemm(ctx, blk, row_slice(Ucat, i0, m), transposed(Bc), 1.0, 0.0));
        if (Wg) NEAT_CUDA_TRY(wgemm(ctx, blk, row_slice(xg, i0, m), *Wg, true, 1.0, 1.0));
        NEAT_CUDA_TRY(launch_convert(ctx, row_slice(yv, i0, m), blk));
    }
    return NEAT_OK;
}

neat_status forward_plan(Ctx &ctx, neat_tensor *y, const neat_args *args, const neat_qweight *q,
                         int with_base)
{
    const Mat x = mat_of(args->x), W = weight_view(args->weight, q), A = mat_of(args->A),
              B = mat_of(args->B);
    const int64_t n = x.rows, d_in = W.cols, d_out = W.rows, r = A.rows;
    if (n == 0 || d_out == 0) return NEAT_OK; // y is empty
    const neat_dtype T = W.dt, acc = acc_dtype(T);
    NEAT_CUDA_TRY(begin_call(ctx));

    Mat xg, Ag;
    Weight Wg;
    NEAT_CUDA_TRY(ready_input(ctx, x, T, &xg));
    NEAT_CUDA_TRY(weight_prepare(ctx, args->weight, q, T, &Wg));
    NEAT_CUDA_TRY(ready_input(ctx, A, T, &Ag));

    Mat H[NEAT_MAX_HIDDEN];
    NEAT_CUDA_TRY(prepare_hidden(ctx, args, T, H));

    Mat Z0 = ctx.scratch(acc, r, d_in);
    NEAT_CUDA_TRY(wgemm(ctx, Z0, Ag, Wg, false, 1.0, 0.0));
    Mat G = ctx.scratch(T, r, d_in);
    Stack st;
    NEAT_CUDA_TRY(stack_forward(ctx, args, H, Z0, G, /*keep=*/false, &st));

    return project(ctx, y, xg, with_base ? &Wg : nullptr, G, B,
                   args->bias ? mat_of(args->bias) : Mat{}, args->bias != nullptr, args->scale);
}

// y = x W^T + b + s (x G^T) B^T from a given G (in the parameter dtype or W's).
neat_status lowrank_plan(Ctx &ctx, neat_tensor *y, const neat_lowrank_args *la,
                         const neat_qweight *q)
{
    const Mat x = mat_of(la->x), W = weight_view(la->weight, q), G = mat_of(la->G),
              B = mat_of(la->B);
    if (x.rows == 0 || W.rows == 0) return NEAT_OK; // y is empty
    const neat_dtype T = W.dt;
    NEAT_CUDA_TRY(begin_call(ctx));
    Mat xg, Gg;
    Weight Wg;
    NEAT_CUDA_TRY(ready_input(ctx, x, T, &xg));
    NEAT_CUDA_TRY(weight_prepare(ctx, la->weight, q, T, &Wg));
    NEAT_CUDA_TRY(ready_input(ctx, G, T, &Gg));
    return project(ctx, y, xg, &Wg, Gg, B, la->bias ? mat_of(la->bias) : Mat{},
                   la->bias != nullptr, la->scale);
}

} // namespace
} // namespace neat_cuda

using namespace neat_cuda;

extern "C" neat_status neat_cuda_qforward_workspace_size(const neat_args *args,
                                                         const neat_qweight *qw, int with_base,
                                                         const neat_exec *exec, size_t *bytes)
{
    return plan_size("neat_cuda_forward", args->x->device.index, exec, bytes,
                     [&](Ctx &ctx) { return forward_plan(ctx, nullptr, args, qw, with_base); });
}

extern "C" neat_status neat_cuda_qforward(neat_tensor *y, const neat_args *args,
                                          const neat_qweight *qw, int with_base, void *workspace,
                                          size_t workspace_bytes, const neat_exec *exec)
{
    return plan_run("neat_cuda_forward", args->x->device.index, exec, workspace, workspace_bytes,
                    [&](Ctx &ctx) { return forward_plan(ctx, y, args, qw, with_base); });
}

extern "C" neat_status neat_cuda_forward_workspace_size(const neat_args *args, int with_base,
                                                        const neat_exec *exec, size_t *bytes)
{
    return neat_cuda_qforward_workspace_size(args, nullptr, with_base, exec, bytes);
}

extern "C" neat_status neat_cuda_forward(neat_tensor *y, const neat_args *args, int with_base,
                                         void *workspace, size_t workspace_bytes,
                                         const neat_exec *exec)
{
    return neat_cuda_qforward(y, args, nullptr, with_base, workspace, workspace_bytes, exec);
}

extern "C" neat_status neat_cuda_qlowrank_forward_workspace_size(const neat_lowrank_args *args,
                                                                 const neat_qweight *qw,
                                                                 const neat_exec *exec,
                                                                 size_t *bytes)
{
    return plan_size("neat_cuda_lowrank_forward", args->x->device.index, exec, bytes,
                     [&](Ctx &ctx) { return lowrank_plan(ctx, nullptr, args, qw); });
}

extern "C" neat_status neat_cuda_qlowrank_forward(neat_tensor *y, const neat_lowrank_args *args,
                                                  const neat_qweight *qw, void *workspace,
                                                  size_t workspace_bytes, const neat_exec *exec)
{
    return plan_run("neat_cuda_lowrank_forward", args->x->device.index, exec, workspace,
                    workspace_bytes, [&](Ctx &ctx) { return lowrank_plan(ctx, y, args, qw); });
}

extern "C" neat_status neat_cuda_lowrank_forward_workspace_size(const neat_lowrank_args *args,
                                                                const neat_exec *exec,
                                                                size_t *bytes)
{
    return neat_cuda_qlowrank_forward_workspace_size(args, nullptr, exec, bytes);
}

extern "C" neat_status neat_cuda_lowrank_forward(neat_tensor *y, const neat_lowrank_args *args,
                                                 void *workspace, size_t workspace_bytes,
                                                 const neat_exec *exec)
{
    return neat_cuda_qlowrank_forward(y, args, nullptr, workspace, workspace_bytes, exec);
}
