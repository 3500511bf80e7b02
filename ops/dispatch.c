/*
 * dispatch.c - the public compute entry points of neat.h. One driver runs each of them from its
 * description in op_table.c: validate once, ask the backend for the workspace size, check the
 * workspace (its size, and that it overlaps no tensor of the call), then route by device to the
 * CPU or CUDA backend (backend.h).
 */
#include "backend.h"
#include "op_table.h"
#include "validate.h"

typedef struct neat_backend {
    neat_status (*forward_workspace_size)(const neat_args *, int, const neat_exec *, size_t *);
    neat_status (*forward)(neat_tensor *, const neat_args *, int, void *, size_t,
                           const neat_exec *);
    neat_status (*backward_workspace_size)(const neat_grads *, const neat_args *, int,
                                           const neat_exec *, size_t *);
    neat_status (*backward)(const neat_grads *, const neat_tensor *, const neat_args *, int,
                            void *, size_t, const neat_exec *);
    neat_status (*compute_g_workspace_size)(const neat_args *, const neat_exec *, size_t *);
    neat_status (*compute_g)(neat_tensor *, const neat_args *, void *, size_t,
                             const neat_exec *);
    neat_status (*lowrank_workspace_size)(const neat_lowrank_args *, const neat_exec *, size_t *);
    neat_status (*lowrank)(neat_tensor *, const neat_lowrank_args *, void *, size_t,
                           const neat_exec *);
    /* the same with a quantized W (the neat_q* calls) */
    neat_status (*qforward_workspace_size)(const neat_args *, const neat_qweight *, int,
                                           const neat_exec *, size_t *);
    neat_status (*qforward)(neat_tensor *, const neat_args *, const neat_qweight *, int, void *,
                            size_t, const neat_exec *);
    neat_status (*qbackward_workspace_size)(const neat_grads *, const neat_args *,
                                            const neat_qweight *, int, const neat_exec *,
                                            size_t *);
    neat_status (*qbackward)(const neat_grads *, const neat_tensor *, const neat_args *,
                             const neat_qweight *, int, void *, size_t, const neat_exec *);
    neat_status (*qcompute_g_workspace_size)(const neat_args *, const neat_qweight *,
                                             const neat_exec *, size_t *);
    neat_status (*qcompute_g)(neat_tensor *, const neat_args *, const neat_qweight *, void *,
                              size_t, const neat_exec *);
    neat_status (*qlowrank_workspace_size)(const neat_lowrank_args *, const neat_qweight *,
                                           const neat_exec *, size_t *);
    neat_status (*qlowrank)(neat_tensor *, const neat_lowrank_args *, const neat_qweight *,
                            void *, size_t, const neat_exec *);
} neat_backend;

#define NEAT_BACKEND_TABLE(prefix)                                                              \
    {prefix##_forward_workspace_size,          prefix##_forward,                               \
     prefix##_backward_workspace_size,         prefix##_backward,                              \
     prefix##_compute_g_workspace_size,        prefix##_compute_g,                             \
     prefix##_lowrank_forward_workspace_size,  prefix##_lowrank_forward,                       \
     prefix##_qforward_workspace_size,         prefix##_qforward,                              \
     prefix##_qbackward_workspace_size,        prefix##_qbackward,                             \
     prefix##_qcompute_g_workspace_size,       prefix##_qcompute_g,                            \
     prefix##_qlowrank_forward_workspace_size, prefix##_qlowrank_forward}

static const neat_backend neat_cpu_backend = NEAT_BACKEND_TABLE(neat_cpu);

#ifdef NEAT_WITH_CUDA
static const neat_backend neat_cuda_backend = NEAT_BACKEND_TABLE(neat_cuda);
#endif

/* The backend for a validated device, or NULL with the error set. */
static const neat_backend *neat_backend_for(const neat_check *c)
{
    if (c->p.device.type == NEAT_DEVICE_CPU)
        return &neat_cpu_backend;
#ifdef NEAT_WITH_CUDA
    return &neat_cuda_backend;
#else
    neat_set_error(NEAT_ERR_UNSUPPORTED,
                   "%s: the tensors are on cuda:%d but this library was built without CUDA "
                   "(neat_has_cuda() == 0)",
                   c->fn, (int)c->p.device.index);
    return NULL;
#endif
}

/* A backend's quantized functions (the qweight's device is the call's: validation). */
static neat_status neat_qbackend_size(const neat_backend *be, const neat_entry *e,
                                      const neat_call *k, const neat_exec *exec, size_t *bytes)
{
    const neat_qweight *q = k->qweight;
    switch (e->op) {
    case NEAT_OP_FORWARD:
        return be->qforward_workspace_size(k->args, q, e->with_base, exec, bytes);
    case NEAT_OP_BACKWARD:
        return be->qbackward_workspace_size(k->grads, k->args, q, e->with_base, exec, bytes);
    case NEAT_OP_COMPUTE_G: return be->qcompute_g_workspace_size(k->args, q, exec, bytes);
    case NEAT_OP_LOWRANK: return be->qlowrank_workspace_size(k->lowrank, q, exec, bytes);
    }
    return neat_set_error(NEAT_ERR_INTERNAL, "%s: unknown op %d", e->fn, (int)e->op);
}

static neat_status neat_qbackend_run(const neat_backend *be, const neat_entry *e,
                                     const neat_call *k, void *ws, size_t ws_bytes,
                                     const neat_exec *exec)
{
    const neat_qweight *q = k->qweight;
    switch (e->op) {
    case NEAT_OP_FORWARD: return be->qforward(k->out, k->args, q, e->with_base, ws, ws_bytes, exec);
    case NEAT_OP_BACKWARD:
        return be->qbackward(k->grads, k->dy, k->args, q, e->with_base, ws, ws_bytes, exec);
    case NEAT_OP_COMPUTE_G: return be->qcompute_g(k->out, k->args, q, ws, ws_bytes, exec);
    case NEAT_OP_LOWRANK: return be->qlowrank(k->out, k->lowrank, q, ws, ws_bytes, exec);
    }
    return neat_set_error(NEAT_ERR_INTERNAL, "%s: unknown op %d", e->fn, (int)e->op);
}

static neat_status neat_backend_size(const neat_backend *be, const neat_entry *e,
                                     const neat_call *k, const neat_exec *exec, size_t *bytes)
{
    if (e->quantized)
        return neat_qbackend_size(be, e, k, exec, bytes);
    switch (e->op) {
    case NEAT_OP_FORWARD: return be->forward_workspace_size(k->args, e->with_base, exec, bytes);
    case NEAT_OP_BACKWARD:
        return be->backward_workspace_size(k->grads, k->args, e->with_base, exec, bytes);
    case NEAT_OP_COMPUTE_G: return be->compute_g_workspace_size(k->args, exec, bytes);
    case NEAT_OP_LOWRANK: return be->lowrank_workspace_size(k->lowrank, exec, bytes);
    }
    return neat_set_error(NEAT_ERR_INTERNAL, "%s: unknown op %d", e->fn, (int)e->op);
}

static neat_status neat_backend_run(const neat_backend *be, const neat_entry *e,
                                    const neat_call *k, void *ws, size_t ws_bytes,
                                    const neat_exec *exec)
{
    if (e->quantized)
        return neat_qbackend_run(be, e, k, ws, ws_bytes, exec);
    switch (e->op) {
    case NEAT_OP_FORWARD: return be->forward(k->out, k->args, e->with_base, ws, ws_bytes, exec);
    case NEAT_OP_BACKWARD:
        return be->backward(k->grads, k->dy, k->args, e->with_base, ws, ws_bytes, exec);
    case NEAT_OP_COMPUTE_G: return be->compute_g(k->out, k->args, ws, ws_bytes, exec);
    case NEAT_OP_LOWRANK: return be->lowrank(k->out, k->lowrank, ws, ws_bytes, exec);
    }
    return neat_set_error(NEAT_ERR_INTERNAL, "%s: unknown op %d", e->fn, (int)e->op);
}

/*
 * Every public call: the size query of e when query != 0 (the size goes to *bytes), else its
 * compute call with the caller's workspace.
 */
static neat_status neat_run(const neat_entry *e, const neat_call *k, int query, size_t *bytes,
                            void *workspace, size_t workspace_bytes, const neat_exec *exec)
{
    neat_check c;
    neat_check_begin(&c, e, exec, query);
    const void *needed = e->op == NEAT_OP_BACKWARD ? (const void *)k->dy : (const void *)k->out;
    if (query ? !bytes : !needed)
        return neat_set_error(NEAT_ERR_INVALID_ARGUMENT, "%s: %s must not be NULL", c.fn,
                              query ? "bytes" : neat_arg_name(&c, e->needed));
    NEAT_TRY(neat_validate(&c, e, k, exec, query));
    const neat_backend *be = neat_backend_for(&c);
    if (!be)
        return NEAT_ERR_UNSUPPORTED;
    if (query)
        return neat_backend_size(be, e, k, exec, bytes);
    size_t need = 0;
    NEAT_TRY(neat_backend_size(be, e, k, exec, &need));
    if (workspace_bytes < need || (need > 0 && !workspace))
        return neat_set_error(NEAT_ERR_WORKSPACE,
                              "%s: workspace must have at least %zu bytes (as %s reports for "
                              "these arguments); got %zu bytes%s",
                              c.fn, need, e->query, workspace_bytes,
                              workspace ? "" : " at a NULL pointer");
    NEAT_TRY(neat_validate_workspace(&c, workspace, workspace_bytes));
    return neat_backend_run(be, e, k, workspace, workspace_bytes, exec);
}

static neat_status neat_query(const neat_entry *e, neat_call k, const neat_exec *exec,
                              size_t *bytes)
{
    return neat_run(e, &k, 1, bytes, NULL, 0, exec);
}

static neat_status neat_compute(const neat_entry *e, neat_call k, void *workspace,
                                size_t workspace_bytes, const neat_exec *exec)
{
    return neat_run(e, &k, 0, NULL, workspace, workspace_bytes, exec);
}

/* ---- the entry points: each names its description and passes its arguments on ---- */

neat_status neat_linear_forward_workspace_size(const neat_args *args, const neat_exec *exec,
                                               size_t *bytes)
{
    return neat_query(&neat_linear_forward_entry, (neat_call){.args = args}, exec, bytes);
}

neat_status neat_linear_forward(neat_tensor *y, const neat_args *args, void *workspace,
                                size_t workspace_bytes, const neat_exec *exec)
{
    neat_call k = {.args = args, .out = y};
    return neat_compute(&neat_linear_forward_entry, k, workspace, workspace_bytes, exec);
}

neat_status neat_adapter_forward_workspace_size(const neat_args *args, const neat_exec *exec,
                                                size_t *bytes)
{
    return neat_query(&neat_adapter_forward_entry, (neat_call){.args = args}, exec, bytes);
}

neat_status neat_adapter_forward(neat_tensor *y, const neat_args *args, void *workspace,
                                 size_t workspace_bytes, const neat_exec *exec)
{
    neat_call k = {.args = args, .out = y};
    return neat_compute(&neat_adapter_forward_entry, k, workspace, workspace_bytes, exec);
}

neat_status neat_linear_backward_workspace_size(const neat_grads *grads, const neat_args *args,
                                                const neat_exec *exec, size_t *bytes)
{
    neat_call k = {.args = args, .grads = grads};
    return neat_query(&neat_linear_backward_entry, k, exec, bytes);
}

neat_status neat_linear_backward(const neat_grads *grads, const neat_tensor *dy,
                                 const neat_args *args, void *workspace, size_t workspace_bytes,
                                 const neat_exec *exec)
{
    neat_call k = {.args = args, .grads = grads, .dy = dy};
    return neat_compute(&neat_linear_backward_entry, k, workspace, workspace_bytes, exec);
}

neat_status neat_adapter_backward_workspace_size(const neat_grads *grads, const neat_args *args,
                                                 const neat_exec *exec, size_t *bytes)
{
    neat_call k = {.args = args, .grads = grads};
    return neat_query(&neat_adapter_backward_entry, k, exec, bytes);
}

neat_status neat_adapter_backward(const neat_grads *grads, const neat_tensor *dy,
                                  const neat_args *args, void *workspace, size_t workspace_bytes,
                                  const neat_exec *exec)
{
    neat_call k = {.args = args, .grads = grads, .dy = dy};
    return neat_compute(&neat_adapter_backward_entry, k, workspace, workspace_bytes, exec);
}

neat_status neat_compute_g_workspace_size(const neat_args *args, const neat_exec *exec,
                                          size_t *bytes)
{
    return neat_query(&neat_compute_g_entry, (neat_call){.args = args}, exec, bytes);
}

neat_status neat_compute_g(neat_tensor *G, const neat_args *args, void *workspace,
                           size_t workspace_bytes, const neat_exec *exec)
{
    neat_call k = {.args = args, .out = G};
    return neat_compute(&neat_compute_g_entry, k, workspace, workspace_bytes, exec);
}

neat_status neat_lowrank_forward_workspace_size(const neat_lowrank_args *args,
                                                const neat_exec *exec, size_t *bytes)
{
    return neat_query(&neat_lowrank_forward_entry, (neat_call){.lowrank = args}, exec, bytes);
}

neat_status neat_lowrank_forward(neat_tensor *y, const neat_lowrank_args *args, void *workspace,
                                 size_t workspace_bytes, const neat_exec *exec)
{
    neat_call k = {.lowrank = args, .out = y};
    return neat_compute(&neat_lowrank_forward_entry, k, workspace, workspace_bytes, exec);
}

/* ---- the quantized entry points (ABI 5): the same, with qweight in the call ---- */

neat_status neat_qlinear_forward_workspace_size(const neat_args *args,
                                                const neat_qweight *qweight,
                                                const neat_exec *exec, size_t *bytes)
{
    neat_call k = {.args = args, .qweight = qweight};
    return neat_query(&neat_qlinear_forward_entry, k, exec, bytes);
}

neat_status neat_qlinear_forward(neat_tensor *y, const neat_args *args,
                                 const neat_qweight *qweight, void *workspace,
                                 size_t workspace_bytes, const neat_exec *exec)
{
    neat_call k = {.args = args, .out = y, .qweight = qweight};
    return neat_compute(&neat_qlinear_forward_entry, k, workspace, workspace_bytes, exec);
}

neat_status neat_qlinear_backward_workspace_size(const neat_grads *grads, const neat_args *args,
                                                 const neat_qweight *qweight,
                                                 const neat_exec *exec, size_t *bytes)
{
    neat_call k = {.args = args, .grads = grads, .qweight = qweight};
    return neat_query(&neat_qlinear_backward_entry, k, exec, bytes);
}

neat_status neat_qlinear_backward(const neat_grads *grads, const neat_tensor *dy,
                                  const neat_args *args, const neat_qweight *qweight,
                                  void *workspace, size_t workspace_bytes, const neat_exec *exec)
{
    neat_call k = {.args = args, .grads = grads, .dy = dy, .qweight = qweight};
    return neat_compute(&neat_qlinear_backward_entry, k, workspace, workspace_bytes, exec);
}

neat_status neat_qadapter_forward_workspace_size(const neat_args *args,
                                                 const neat_qweight *qweight,
                                                 const neat_exec *exec, size_t *bytes)
{
    neat_call k = {.args = args, .qweight = qweight};
    return neat_query(&neat_qadapter_forward_entry, k, exec, bytes);
}

neat_status neat_qadapter_forward(neat_tensor *y, const neat_args *args,
                                  const neat_qweight *qweight, void *workspace,
                                  size_t workspace_bytes, const neat_exec *exec)
{
    neat_call k = {.args = args, .out = y, .qweight = qweight};
    return neat_compute(&neat_qadapter_forward_entry, k, workspace, workspace_bytes, exec);
}

neat_status neat_qadapter_backward_workspace_size(const neat_grads *grads,
                                                  const neat_args *args,
                                                  const neat_qweight *qweight,
                                                  const neat_exec *exec, size_t *bytes)
{
    neat_call k = {.args = args, .grads = grads, .qweight = qweight};
    return neat_query(&neat_qadapter_backward_entry, k, exec, bytes);
}

neat_status neat_qadapter_backward(const neat_grads *grads, const neat_tensor *dy,
                                   const neat_args *args, const neat_qweight *qweight,
                                   void *workspace, size_t workspace_bytes,
                                   const neat_exec *exec)
{
    neat_call k = {.args = args, .grads = grads, .dy = dy, .qweight = qweight};
    return neat_compute(&neat_qadapter_backward_entry, k, workspace, workspace_bytes, exec);
}

neat_status neat_qcompute_g_workspace_size(const neat_args *args, const neat_qweight *qweight,
                                           const neat_exec *exec, size_t *bytes)
{
    neat_call k = {.args = args, .qweight = qweight};
    return neat_query(&neat_qcompute_g_entry, k, exec, bytes);
}

neat_status neat_qcompute_g(neat_tensor *G, const neat_args *args, const neat_qweight *qweight,
                            void *workspace, size_t workspace_bytes, const neat_exec *exec)
{
    neat_call k = {.args = args, .out = G, .qweight = qweight};
    return neat_compute(&neat_qcompute_g_entry, k, workspace, workspace_bytes, exec);
}

neat_status neat_qlowrank_forward_workspace_size(const neat_lowrank_args *args,
                                                 const neat_qweight *qweight,
                                                 const neat_exec *exec, size_t *bytes)
{
    neat_call k = {.lowrank = args, .qweight = qweight};
    return neat_query(&neat_qlowrank_forward_entry, k, exec, bytes);
}

neat_status neat_qlowrank_forward(neat_tensor *y, const neat_lowrank_args *args,
                                  const neat_qweight *qweight, void *workspace,
                                  size_t workspace_bytes, const neat_exec *exec)
{
    neat_call k = {.lowrank = args, .out = y, .qweight = qweight};
    return neat_compute(&neat_qlowrank_forward_entry, k, workspace, workspace_bytes, exec);
}
