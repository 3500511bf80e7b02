// entry.cuh - how every neat_cuda_* entry point runs its plan (internal).
//
// A plan is a function of Ctx that carves its workspace and launches its work; with ctx.dry it
// only carves. The size query runs the plan dry. The compute call runs it dry first with the
// real outputs (an output that cuBLAS cannot write needs scratch the size query could not see),
// checks the caller's buffer against that, then runs it for real.
#pragma once

#include "common.cuh"

namespace neat_cuda {

template <typename Plan>
neat_status plan_size(const char *fn, int device, const neat_exec *exec, size_t *bytes, Plan &&plan)
{
    Ctx ctx;
    ctx.fn = fn;
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
    if (need > workspace_bytes || (need > 0 && !workspace))
        return neat_set_error(NEAT_ERR_WORKSPACE,
                              "%s: these arguments need %zu bytes of workspace; got %zu%s (an "
                              "output with no unit stride needs scratch the size query cannot "
                              "foresee: give it a unit stride)",
                              fn, need, workspace_bytes, workspace ? "" : " at a NULL pointer");
    Ctx ctx;
    ctx.fn = fn;
    ctx.dry = false;
    ctx.device = device;
    ctx.exec = exec;
    ctx.workspace = workspace;
    return plan(ctx);
}

} // namespace neat_cuda
