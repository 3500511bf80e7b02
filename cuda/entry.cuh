// entry.cuh - how every neat_cuda_* entry point runs its plan (internal).
//
// A plan is a function of Ctx that carves its workspace and launches its work; with ctx.dry it
// only carves. The size query runs the plan dry. The compute call runs it dry again with the
// real y / dy (which the query does not see), checks that this carves no more than the query
// reported (plans never let the layout of y or dy change what they carve: one that cuBLAS cannot
// take goes through a stage reserved either way), then runs it for real. Messages start with the
// caller's name for the call where exec->names gives one, else with fn.
//
// The rank-r path is chosen here, once per call, for the size query and the compute call alike:
// NEAT_CUDA_RANK_PATH in the environment, read at every call, is `cublas` (the default) or `fused`
// (the kernels of fused.cuh). cuBLAS stays the default until a GPU measures the fused path faster
// (docs/design.md §5). Change it between calls, not between a size query and the call it sizes:
// the two paths carve different workspaces (the compute call's check below catches a mismatch).
#pragma once

#include <cstdlib>
#include <cstring>

#include "common.cuh"

namespace neat_cuda {

// Reads NEAT_CUDA_RANK_PATH into *fused; anything but unset, empty, cublas or fused is an error.
inline neat_status rank_path(const char *fn, bool *fused)
{
    const char *v = std::getenv("NEAT_CUDA_RANK_PATH");
    *fused = false;
    if (!v || !*v || std::strcmp(v, "cublas") == 0) return NEAT_OK;
    if (std::strcmp(v, "fused") == 0) {
        *fused = true;
        return NEAT_OK;
    }
    return neat_set_error(NEAT_ERR_INVALID_ARGUMENT,
                          "%s: NEAT_CUDA_RANK_PATH is '%s'; expected 'cublas' (the default) or "
                          "'fused'", fn, v);
}

namespace entry_detail {
inline void init_ctx(Ctx &ctx, const char *fn, bool dry, bool fused, int device, const neat_exec *exec)
{
    ctx.fn = neat_message_prefix(exec, fn);
    ctx.dry = dry;
    ctx.fused = fused;
    ctx.device = device;
    ctx.exec = exec;
}

template <typename Plan>
neat_status plan_size_on(const char *fn, bool fused, int device, const neat_exec *exec,
                         size_t *bytes, Plan &plan)
{
    Ctx ctx;
    init_ctx(ctx, fn, /*dry=*/true, fused, device, exec);
    NEAT_CUDA_TRY(plan(ctx));
    *bytes = ctx.carver.used;
    return NEAT_OK;
}
} // namespace entry_detail

template <typename Plan>
neat_status plan_size(const char *fn, int device, const neat_exec *exec, size_t *bytes, Plan &&plan)
{
    bool fused = false;
    NEAT_CUDA_TRY(rank_path(neat_message_prefix(exec, fn), &fused));
    return entry_detail::plan_size_on(fn, fused, device, exec, bytes, plan);
}

template <typename Plan>
neat_status plan_run(const char *fn, int device, const neat_exec *exec, void *workspace,
                     size_t workspace_bytes, Plan &&plan)
{
    bool fused = false;
    NEAT_CUDA_TRY(rank_path(neat_message_prefix(exec, fn), &fused));
    size_t need = 0;
    NEAT_CUDA_TRY(entry_detail::plan_size_on(fn, fused, device, exec, &need, plan));
    // ops/dispatch.c has checked workspace_bytes against the size query already; this only
    // trips if the plan carved differently with the real y or dy, a bug of this backend.
    if (need > workspace_bytes || (need > 0 && !workspace))
        return neat_set_error(NEAT_ERR_INTERNAL,
                              "%s: the call needs %zu bytes of workspace but its size query "
                              "reported less (%zu bytes given): a bug in the CUDA backend",
                              neat_message_prefix(exec, fn), need, workspace_bytes);
    Ctx ctx;
    entry_detail::init_ctx(ctx, fn, /*dry=*/false, fused, device, exec);
    ctx.workspace = workspace;
    return plan(ctx);
}

} // namespace neat_cuda
