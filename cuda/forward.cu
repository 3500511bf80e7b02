// forward.cu - neat_cuda_forward: y = [x W^T + b +] s (x G^T) B^T on the caller's stream.
//
// Launch sequence (T = x's dtype, Acc = float32, or float64 for float64):
//   Z0 = A W                        cuBLAS, (r, d_in) in Acc   (A converted to T when it is not)
//   G  = stack(Z0)                  gstack kernels, written in T
//   U  = x G^T                      cuBLAS, (N, r) in T, into the first r columns of Ucat
//   y  = Ucat Bcat^T                cuBLAS, K = r (+1): Bcat = [s B | b], Ucat = [U | 1], so the
//                                   bias rides along in the rank-r product (no extra pass over y)
//   y += x W^T                      cuBLAS, beta = 1 (linear only)
// The main product runs last with beta = 1 so y is written once by the small product and read
// once in the big product's epilogue. The d_out x d_in update matrix is never formed.
#include "blas.cuh"
#include "elementwise.cuh"
#include "entry.cuh"
#include "gstack.cuh"

namespace neat_cuda {
namespace {

neat_status forward_plan(Ctx &ctx, neat_tensor *y, const neat_args *args, int with_base)
{
    const Mat x = mat_of(args->x), W = mat_of(args->weight), A = mat_of(args->A),
              B = mat_of(args->B);
    const int64_t n = x.rows, d_in = W.cols, d_out = W.rows, r = A.rows;
    if (n == 0 || d_out == 0) return NEAT_OK; // y is empty
    const neat_dtype T = W.dt, acc = acc_dtype(T);
    NEAT_CUDA_TRY(begin_call(ctx));

    Mat xg, Wg, Ag;
    NEAT_CUDA_TRY(ready_input(ctx, x, T, &xg));
    NEAT_CUDA_TRY(ready_input(ctx, W, T, &Wg));
    NEAT_CUDA_TRY(ready_input(ctx, A, T, &Ag));

    Mat Z0 = ctx.scratch(acc, r, d_in);
    NEAT_CUDA_TRY(gemm(ctx, Z0, Ag, Wg, 1.0, 0.0));
    Mat G = ctx.scratch(T, r, d_in);
    Stack st;
    NEAT_CUDA_TRY(stack_forward(ctx, args, Z0, G, /*keep=*/false, &st));

    const int64_t hb = args->bias ? 1 : 0;
    Mat Ucat = ctx.scratch(T, n, r + hb);
    NEAT_CUDA_TRY(gemm(ctx, col_slice(Ucat, 0, r), xg, transposed(G), 1.0, 0.0));
    Mat Bc;
    double alpha = 1.0;
    if (!args->bias && B.dt == T && blas_ready(B)) {
        Bc = B;
        alpha = args->scale;
    } else {
        Bc = ctx.scratch(T, d_out, r + hb);
        NEAT_CUDA_TRY(launch_convert(ctx, col_slice(Bc, 0, r), B, args->scale));
        if (hb) {
            NEAT_CUDA_TRY(launch_fill(ctx, col_slice(Ucat, r, 1), 1.0));
            NEAT_CUDA_TRY(launch_convert(ctx, col_slice(Bc, r, 1), mat_of(args->bias)));
        }
    }

    // The size query has no y: it assumes one cuBLAS can write (the binding's always is).
    Output yo;
    if (y) {
        NEAT_CUDA_TRY(begin_output(ctx, mat_of(y), T, &yo));
    } else {
        yo.work = yo.user = mat_contig(nullptr, T, n, d_out);
    }
    NEAT_CUDA_TRY(gemm(ctx, yo.work, Ucat, transposed(Bc), alpha, 0.0));
    if (with_base) NEAT_CUDA_TRY(gemm(ctx, yo.work, xg, transposed(Wg), 1.0, 1.0));
    return finish_output(ctx, yo);
}

} // namespace
} // namespace neat_cuda

using namespace neat_cuda;

extern "C" neat_status neat_cuda_forward_workspace_size(const neat_args *args, int with_base,
                                                        const neat_exec *exec, size_t *bytes)
{
    return plan_size("neat_cuda_forward", args->x->device.index, exec, bytes,
                     [&](Ctx &ctx) { return forward_plan(ctx, nullptr, args, with_base); });
}

extern "C" neat_status neat_cuda_forward(neat_tensor *y, const neat_args *args, int with_base,
                                         void *workspace, size_t workspace_bytes,
                                         const neat_exec *exec)
{
    return plan_run("neat_cuda_forward", args->x->device.index, exec, workspace, workspace_bytes,
                    [&](Ctx &ctx) { return forward_plan(ctx, y, args, with_base); });
}
