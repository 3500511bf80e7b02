// compute_g.cu - neat_cuda_compute_g: G = stack(act(A W)), (r, d_in), written in G's own dtype
// and strides (the last stack kernel or a convert writes it, so any view works). A and the hidden
// weights are rounded to W's dtype first when they are float32 with a half W (as in the forward).
// A quantized W (neat_cuda_qcompute_g) enters A W panel by panel (quant.cuh).
#include "blas.cuh"
#include "entry.cuh"
#include "gstack.cuh"
#include "quant.cuh"

namespace neat_cuda {
namespace {

neat_status compute_g_plan(Ctx &ctx, neat_tensor *G, const neat_args *args, const neat_qweight *q)
{
    const Mat W = weight_view(args->weight, q), A = mat_of(args->A);
    const int64_t d_in = W.cols, r = A.rows;
    if (r == 0 || d_in == 0) return NEAT_OK;
    const neat_dtype T = W.dt, acc = acc_dtype(T);
    NEAT_CUDA_TRY(begin_call(ctx));
    Mat Ag, H[NEAT_MAX_HIDDEN];
    Weight Wg;
    NEAT_CUDA_TRY(weight_prepare(ctx, args->weight, q, T, &Wg));
    NEAT_CUDA_TRY(ready_input(ctx, A, T, &Ag));
    NEAT_CUDA_TRY(prepare_hidden(ctx, args, T, H));
    Mat Z0 = ctx.scratch(acc, r, d_in);
    NEAT_CUDA_TRY(wgemm(ctx, Z0, Ag, Wg, false, 1.0, 0.0));
    // The size query has no G; its dtype and strides do not change the workspace.
    Mat out = G ? mat_of(G) : mat_contig(nullptr, T, r, d_in);
    Stack st;
    return stack_forward(ctx, args, H, Z0, out, /*keep=*/false, &st);
}

} // namespace
} // namespace neat_cuda

using namespace neat_cuda;

extern "C" neat_status neat_cuda_qcompute_g_workspace_size(const neat_args *args,
                                                           const neat_qweight *qw,
                                                           const neat_exec *exec, size_t *bytes)
{
    const int device = qw ? qw->device.index : args->weight->device.index;
    return plan_size("neat_cuda_compute_g", device, exec, bytes,
                     [&](Ctx &ctx) { return compute_g_plan(ctx, nullptr, args, qw); });
}

extern "C" neat_status neat_cuda_qcompute_g(neat_tensor *G, const neat_args *args,
                                            const neat_qweight *qw, void *workspace,
                                            size_t workspace_bytes, const neat_exec *exec)
{
    const int device = qw ? qw->device.index : args->weight->device.index;
    return plan_run("neat_cuda_compute_g", device, exec, workspace, workspace_bytes,
                    [&](Ctx &ctx) { return compute_g_plan(ctx, G, args, qw); });
}

extern "C" neat_status neat_cuda_compute_g_workspace_size(const neat_args *args,
                                                          const neat_exec *exec, size_t *bytes)
{
    return neat_cuda_qcompute_g_workspace_size(args, nullptr, exec, bytes);
}

extern "C" neat_status neat_cuda_compute_g(neat_tensor *G, const neat_args *args, void *workspace,
                                           size_t workspace_bytes, const neat_exec *exec)
{
    return neat_cuda_qcompute_g(G, args, nullptr, workspace, workspace_bytes, exec);
}
