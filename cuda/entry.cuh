// entry.cuh - how every neat_cuda_* entry point runs its plan (internal).
//
// A plan is a function of Ctx that carves its workspace and launches its work; with ctx.dry it
// only carves. The size query runs the plan dry. The compute call runs it dry again with the
// real y / dy (which the query does not see), checks that this carves no more than the query
// reported (plans never let the layout of y or dy change what they carve: one that cuBLAS cannot
// take goes through a stage reserved either way), then runs it for real. Messages start with the
// caller's name for the call where exec->names gives one, else with fn.
#pragma once

#include "common.cuh"

namespace neat_cuda {

template <typename Plan>
neat_status plan_size(const char *fn, int device, const neat_exec *exec, size_t *bytes, Plan &&plan)
{
    Ctx ctx;
    ctx.fn = neat_message_prefix(exec, fn);
    ctx.dry = true;
    ctx.device = device;
    ctx.exec = exec;
    NEAT_CUDA_TRY(plan(ctx));
    *bytes = ctx.carver.used;
    return NEAT_OK;
}

template <typename Plan>
neat_status plan_run(const char *fn, int device, const neat_exec *exec, void *workspace,
                     size_t workspace_bytes, Plan &&plan)
{
    size_t need = 0;
    NEAT_CUDA_TRY(plan_size(fn, device, exec, &need, plan));
    // ops/dispatch.c has checked workspace_bytes against the size query already; this only
    // trips if the plan carved differently with the real y or dy, a bug of this backend.
    if (need > workspace_bytes || (need > 0 && !workspace))
        return neat_set_error(NEAT_ERR_INTERNAL,
                              "%s: the call needs %zu bytes of workspace but its size query "
                              "reported less (%zu bytes given): a bug in the CUDA backend",
                              neat_message_prefix(exec, fn), need, workspace_bytes);
    Ctx ctx;
    ctx.fn = neat_message_prefix(exec, fn);
    ctx.dry = false;
    ctx.device = device;
    ctx.exec = exec;
    ctx.workspace = workspace;
    return plan(ctx);
}

} // namespace neat_cuda
