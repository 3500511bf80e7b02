// backward.cu - neat_cuda_backward: every gradient of DESIGN 1.2 that is asked for, on the
// caller's stream, from the op's inputs alone (nothing saved by the forward but the inputs).
//
// Launch sequence (T = x's dtype, Acc = float32, or float64 for float64), each step only when
// some requested gradient needs it:
//   Z0 = A W, stack forward keeping Z_l, G_l  (cuBLAS + gstack kernels; G also in T)
//   dU = s dy B                  cuBLAS (N, r) in T              dx, dA, dW, dhidden
//   U = x G^T; dB = s dy^T U     cuBLAS                          dB
//   dG = dU^T x                  cuBLAS (r, d_in) in Acc         dA, dW, dhidden
//   stack backward -> dZ0, dH    gstack kernels + cuBLAS for dH = dZ G^T (reduction over d_in)
//   dA = dZ0 W^T                 cuBLAS
//   dx = dU G (+ dy W)           cuBLAS, the second with beta = 1
//   dW = (dy^T x +) A^T dZ0      cuBLAS, the second with beta = 1
//   db = dy^T 1                  cuBLAS against a ones vector (a deterministic column sum)
// No atomics anywhere: every reduction is a cuBLAS product, so results are run-to-run identical.
#include "blas.cuh"
#include "elementwise.cuh"
#include "entry.cuh"
#include "gstack.cuh"

namespace neat_cuda {
namespace {

bool wants_hidden(const neat_grads *g, int num_hidden)
{
    if (!g->dhidden) return false;
    for (int i = 0; i < num_hidden; ++i)
        if (g->dhidden[i].data) return true;
    return false;
}

neat_status backward_plan(Ctx &ctx, const neat_grads *grads, const neat_tensor *dy,
                          const neat_args *args, int with_base)
{
    const Mat x = mat_of(args->x), W = mat_of(args->weight), A = mat_of(args->A),
              B = mat_of(args->B), dY = mat_of(dy);
    const int64_t n = x.rows, d_in = W.cols, r = A.rows;
    const neat_dtype T = W.dt, acc = acc_dtype(T);
    const double s = args->scale;

    const bool want_dx = grads->dx && n > 0, want_dw = grads->dweight != nullptr,
               want_db = with_base && grads->dbias != nullptr, want_da = grads->dA != nullptr,
               want_db_ = grads->dB != nullptr, want_dh = wants_hidden(grads, args->num_hidden);
    const bool need_dz0 = want_da || want_dw || want_dh;
    const bool need_g = want_dx || want_db_;
    if (!(want_dx || need_dz0 || want_db || want_db_)) return NEAT_OK;
    NEAT_CUDA_TRY(begin_call(ctx));

    Mat xg, Wg, Ag, dyg;
    NEAT_CUDA_TRY(ready_input(ctx, x, T, &xg));
    NEAT_CUDA_TRY(ready_input(ctx, W, T, &Wg));
    NEAT_CUDA_TRY(ready_input(ctx, A, T, &Ag));
    NEAT_CUDA_TRY(ready_input(ctx, dY, T, &dyg));

    // Recompute the forward's G (and, for the stack backward, every level's Z and G).
    Mat Z0 = ctx.scratch(acc, r, d_in);
    NEAT_CUDA_TRY(gemm(ctx, Z0, Ag, Wg, 1.0, 0.0));
    Mat G = need_g ? ctx.scratch(T, r, d_in) : mat_contig(nullptr, T, 0, d_in);
    Stack st;
    NEAT_CUDA_TRY(stack_forward(ctx, args, Z0, G, /*keep=*/need_dz0, &st));

    Mat dU;
    if (want_dx || need_dz0) {
        Mat Bg;
        NEAT_CUDA_TRY(ready_input(ctx, B, T, &Bg));
        dU = ctx.scratch(T, n, r);
        NEAT_CUDA_TRY(gemm(ctx, dU, dyg, Bg, s, 0.0));
    }

    if (want_db_) { // dB = s dy^T U, U = x G^T
        Mat U = ctx.scratch(T, n, r);
        NEAT_CUDA_TRY(gemm(ctx, U, xg, transposed(G), 1.0, 0.0));
        Output o;
        NEAT_CUDA_TRY(begin_output(ctx, mat_of(grads->dB), T, &o));
        NEAT_CUDA_TRY(gemm(ctx, o.work, transposed(dyg), U, s, 0.0));
        NEAT_CUDA_TRY(finish_output(ctx, o));
    }

    Mat dZ0T;
    if (need_dz0) {
        Mat dG = ctx.scratch(acc, r, d_in);
        NEAT_CUDA_TRY(gemm(ctx, dG, transposed(dU), xg, 1.0, 0.0));
        Mat dZ0 = ctx.scratch(acc, r, d_in);
        NEAT_CUDA_TRY(stack_backward(ctx, args, grads, st, dG, dZ0));
        if (T == acc) {
            dZ0T = dZ0;
        } else {
            dZ0T = ctx.scratch(T, r, d_in);
            NEAT_CUDA_TRY(launch_convert(ctx, dZ0T, dZ0));
        }
    }

    if (want_da) { // dA = dZ0 W^T
        Output o;
        NEAT_CUDA_TRY(begin_output(ctx, mat_of(grads->dA), T, &o));
        NEAT_CUDA_TRY(gemm(ctx, o.work, dZ0T, transposed(Wg), 1.0, 0.0));
        NEAT_CUDA_TRY(finish_output(ctx, o));
    }

    if (want_dx) { // dx = dU G (+ dy W)
        Output o;
        NEAT_CUDA_TRY(begin_output(ctx, mat_of(grads->dx), T, &o));
        NEAT_CUDA_TRY(gemm(ctx, o.work, dU, G, 1.0, 0.0));
        if (with_base) NEAT_CUDA_TRY(gemm(ctx, o.work, dyg, Wg, 1.0, 1.0));
        NEAT_CUDA_TRY(finish_output(ctx, o));
    }

    if (want_dw) { // dW = (dy^T x +) A^T dZ0
        Output o;
        NEAT_CUDA_TRY(begin_output(ctx, mat_of(grads->dweight), T, &o));
        double beta = 0.0;
        if (with_base) {
            NEAT_CUDA_TRY(gemm(ctx, o.work, transposed(dyg), xg, 1.0, 0.0));
            beta = 1.0;
        }
        NEAT_CUDA_TRY(gemm(ctx, o.work, transposed(Ag), dZ0T, 1.0, beta));
        NEAT_CUDA_TRY(finish_output(ctx, o));
    }

    if (want_db) { // db = dy^T 1
        Mat ones = ctx.scratch(T, n, 1);
        NEAT_CUDA_TRY(launch_fill(ctx, ones, 1.0));
        Output o;
        NEAT_CUDA_TRY(begin_output(ctx, mat_of(grads->dbias), T, &o));
        NEAT_CUDA_TRY(gemm(ctx, o.work, transposed(dyg), ones, 1.0, 0.0));
        NEAT_CUDA_TRY(finish_output(ctx, o));
    }
    return NEAT_OK;
}

} // namespace
} // namespace neat_cuda

using namespace neat_cuda;

extern "C" neat_status neat_cuda_backward_workspace_size(const neat_grads *grads,
                                                         const neat_args *args, int with_base,
                                                         const neat_exec *exec, size_t *bytes)
{
    // The size query sees the same grads and dy views as the compute call, except dy itself:
    // the plan only needs dy's strides, taken as contiguous here (re-checked by the compute call).
    neat_tensor dy{};
    dy.dtype = args->weight->dtype;
    dy.ndim = 2;
    dy.sizes[0] = args->x->sizes[0];
    dy.sizes[1] = args->weight->sizes[0];
    dy.strides[0] = dy.sizes[1];
    dy.strides[1] = 1;
    dy.device = args->x->device;
    return plan_size("neat_cuda_backward", args->x->device.index, exec, bytes,
                     [&](Ctx &ctx) { return backward_plan(ctx, grads, &dy, args, with_base); });
}

extern "C" neat_status neat_cuda_backward(const neat_grads *grads, const neat_tensor *dy,
                                          const neat_args *args, int with_base, void *workspace,
                                          size_t workspace_bytes, const neat_exec *exec)
{
    return plan_run("neat_cuda_backward", args->x->device.index, exec, workspace, workspace_bytes,
                    [&](Ctx &ctx) { return backward_plan(ctx, grads, dy, args, with_base); });
}
