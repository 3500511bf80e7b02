/*
 * dispatch.c - the public compute entry points of neat.h: validate once, check the workspace
 * (its size, and that it overlaps no tensor of the call), then route by device to the CPU or
 * CUDA backend (backend.h).
 */
#include "backend.h"
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
} neat_backend;

static const neat_backend neat_cpu_backend = {
    neat_cpu_forward_workspace_size,  neat_cpu_forward,
    neat_cpu_backward_workspace_size, neat_cpu_backward,
    neat_cpu_compute_g_workspace_size, neat_cpu_compute_g,
    neat_cpu_lowrank_forward_workspace_size, neat_cpu_lowrank_forward,
};

#ifdef NEAT_WITH_CUDA
static const neat_backend neat_cuda_backend = {
    neat_cuda_forward_workspace_size,  neat_cuda_forward,
    neat_cuda_backward_workspace_size, neat_cuda_backward,
    neat_cuda_compute_g_workspace_size, neat_cuda_compute_g,
    neat_cuda_lowrank_forward_workspace_size, neat_cuda_lowrank_forward,
};
#endif

/* The backend for a validated device, or NULL with the error set. */
static const neat_backend *neat_backend_for(const char *fn, const neat_problem *p)
{
    if (p->device.type == NEAT_DEVICE_CPU)
        return &neat_cpu_backend;
#ifdef NEAT_WITH_CUDA
    (void)fn; /* only the CPU-only build has an error to report here */
    return &neat_cuda_backend;
#else
    neat_set_error(NEAT_ERR_UNSUPPORTED,
                   "%s: the tensors are on cuda:%d but this library was built without CUDA "
                   "(neat_has_cuda() == 0)",
                   fn, (int)p->device.index);
    return NULL;
#endif
}

static neat_status neat_check_workspace(const char *fn, const char *query, size_t need,
                                        const void *workspace, size_t workspace_bytes)
{
    if (workspace_bytes < need || (need > 0 && !workspace))
        return neat_set_error(NEAT_ERR_WORKSPACE,
                              "%s: workspace must have at least %zu bytes (as %s reports for "
                              "these arguments); got %zu bytes%s",
                              fn, need, query, workspace_bytes,
                              workspace ? "" : " at a NULL pointer");
    return NEAT_OK;
}

static neat_status neat_null_out(const char *fn, const char *what)
{
    return neat_set_error(NEAT_ERR_INVALID_ARGUMENT, "%s: %s must not be NULL", fn, what);
}

/* ---- forward ---- */

static neat_status neat_forward_size(const char *fn, const neat_args *args, int with_base,
                                     const neat_exec *exec, size_t *bytes)
{
    neat_problem p;
    if (!bytes)
        return neat_null_out(fn, "bytes");
    neat_status st = neat_validate_forward(fn, NULL, args, with_base, &p);
    if (st == NEAT_OK)
        st = neat_validate_exec(fn, exec);
    if (st != NEAT_OK)
        return st;
    const neat_backend *be = neat_backend_for(fn, &p);
    return be ? be->forward_workspace_size(args, with_base, exec, bytes) : NEAT_ERR_UNSUPPORTED;
}

static neat_status neat_forward(const char *fn, const char *query, neat_tensor *y,
                                const neat_args *args, int with_base, void *workspace,
                                size_t workspace_bytes, const neat_exec *exec)
{
    neat_problem p;
    if (!y)
        return neat_null_out(fn, "y");
    neat_status st = neat_validate_forward(fn, y, args, with_base, &p);
    if (st == NEAT_OK)
        st = neat_validate_exec(fn, exec);
    if (st != NEAT_OK)
        return st;
    const neat_backend *be = neat_backend_for(fn, &p);
    if (!be)
        return NEAT_ERR_UNSUPPORTED;
    size_t need = 0;
    st = be->forward_workspace_size(args, with_base, exec, &need);
    if (st == NEAT_OK)
        st = neat_check_workspace(fn, query, need, workspace, workspace_bytes);
    if (st == NEAT_OK)
        st = neat_validate_workspace(fn, workspace, workspace_bytes, args, NULL, "y", y, NULL);
    if (st == NEAT_OK)
        st = be->forward(y, args, with_base, workspace, workspace_bytes, exec);
    return st;
}

neat_status neat_linear_forward_workspace_size(const neat_args *args, const neat_exec *exec,
                                               size_t *bytes)
{
    return neat_forward_size("neat_linear_forward_workspace_size", args, 1, exec, bytes);
}

neat_status neat_linear_forward(neat_tensor *y, const neat_args *args, void *workspace,
                                size_t workspace_bytes, const neat_exec *exec)
{
    return neat_forward("neat_linear_forward", "neat_linear_forward_workspace_size", y, args, 1,
                        workspace, workspace_bytes, exec);
}

neat_status neat_adapter_forward_workspace_size(const neat_args *args, const neat_exec *exec,
                                                size_t *bytes)
{
    return neat_forward_size("neat_adapter_forward_workspace_size", args, 0, exec, bytes);
}

neat_status neat_adapter_forward(neat_tensor *y, const neat_args *args, void *workspace,
                                 size_t workspace_bytes, const neat_exec *exec)
{
    return neat_forward("neat_adapter_forward", "neat_adapter_forward_workspace_size", y, args,
                        0, workspace, workspace_bytes, exec);
}

/* ---- backward ---- */

static neat_status neat_backward_size(const char *fn, const neat_grads *grads,
                                      const neat_args *args, int with_base,
                                      const neat_exec *exec, size_t *bytes)
{
    neat_problem p;
    if (!bytes)
        return neat_null_out(fn, "bytes");
    neat_status st = neat_validate_backward(fn, grads, NULL, args, with_base, &p);
    if (st == NEAT_OK)
        st = neat_validate_exec(fn, exec);
    if (st != NEAT_OK)
        return st;
    const neat_backend *be = neat_backend_for(fn, &p);
    return be ? be->backward_workspace_size(grads, args, with_base, exec, bytes)
              : NEAT_ERR_UNSUPPORTED;
}

static neat_status neat_backward(const char *fn, const char *query, const neat_grads *grads,
                                 const neat_tensor *dy, const neat_args *args, int with_base,
                                 void *workspace, size_t workspace_bytes, const neat_exec *exec)
{
    neat_problem p;
    if (!dy)
        return neat_null_out(fn, "dy");
    neat_status st = neat_validate_backward(fn, grads, dy, args, with_base, &p);
    if (st == NEAT_OK)
        st = neat_validate_exec(fn, exec);
    if (st != NEAT_OK)
        return st;
    const neat_backend *be = neat_backend_for(fn, &p);
    if (!be)
        return NEAT_ERR_UNSUPPORTED;
    size_t need = 0;
    st = be->backward_workspace_size(grads, args, with_base, exec, &need);
    if (st == NEAT_OK)
        st = neat_check_workspace(fn, query, need, workspace, workspace_bytes);
    if (st == NEAT_OK)
        st = neat_validate_workspace(fn, workspace, workspace_bytes, args, dy, NULL, NULL, grads);
    if (st == NEAT_OK)
        st = be->backward(grads, dy, args, with_base, workspace, workspace_bytes, exec);
    return st;
}

neat_status neat_linear_backward_workspace_size(const neat_grads *grads, const neat_args *args,
                                                const neat_exec *exec, size_t *bytes)
{
    return neat_backward_size("neat_linear_backward_workspace_size", grads, args, 1, exec,
                              bytes);
}

neat_status neat_linear_backward(const neat_grads *grads, const neat_tensor *dy,
                                 const neat_args *args, void *workspace, size_t workspace_bytes,
                                 const neat_exec *exec)
{
    return neat_backward("neat_linear_backward", "neat_linear_backward_workspace_size", grads, dy,
                         args, 1, workspace, workspace_bytes, exec);
}

neat_status neat_adapter_backward_workspace_size(const neat_grads *grads, const neat_args *args,
                                                 const neat_exec *exec, size_t *bytes)
{
    return neat_backward_size("neat_adapter_backward_workspace_size", grads, args, 0, exec,
                              bytes);
}

neat_status neat_adapter_backward(const neat_grads *grads, const neat_tensor *dy,
                                  const neat_args *args, void *workspace, size_t workspace_bytes,
                                  const neat_exec *exec)
{
    return neat_backward("neat_adapter_backward", "neat_adapter_backward_workspace_size", grads,
                         dy, args, 0, workspace, workspace_bytes, exec);
}

/* ---- G ---- */

neat_status neat_compute_g_workspace_size(const neat_args *args, const neat_exec *exec,
                                          size_t *bytes)
{
    const char *fn = "neat_compute_g_workspace_size";
    neat_problem p;
    if (!bytes)
        return neat_null_out(fn, "bytes");
    neat_status st = neat_validate_compute_g(fn, NULL, args, &p);
    if (st == NEAT_OK)
        st = neat_validate_exec(fn, exec);
    if (st != NEAT_OK)
        return st;
    const neat_backend *be = neat_backend_for(fn, &p);
    return be ? be->compute_g_workspace_size(args, exec, bytes) : NEAT_ERR_UNSUPPORTED;
}

neat_status neat_compute_g(neat_tensor *G, const neat_args *args, void *workspace,
                           size_t workspace_bytes, const neat_exec *exec)
{
    const char *fn = "neat_compute_g";
    neat_problem p;
    if (!G)
        return neat_null_out(fn, "G");
    neat_status st = neat_validate_compute_g(fn, G, args, &p);
    if (st == NEAT_OK)
        st = neat_validate_exec(fn, exec);
    if (st != NEAT_OK)
        return st;
    const neat_backend *be = neat_backend_for(fn, &p);
    if (!be)
        return NEAT_ERR_UNSUPPORTED;
    size_t need = 0;
    st = be->compute_g_workspace_size(args, exec, &need);
    if (st == NEAT_OK)
        st = neat_check_workspace(fn, "neat_compute_g_workspace_size", need, workspace,
                                  workspace_bytes);
    if (st == NEAT_OK)
        st = neat_validate_workspace(fn, workspace, workspace_bytes, args, NULL, "G", G, NULL);
    if (st == NEAT_OK)
        st = be->compute_g(G, args, workspace, workspace_bytes, exec);
    return st;
}

/* ---- inference with G kept ---- */

neat_status neat_lowrank_forward_workspace_size(const neat_lowrank_args *args,
                                                const neat_exec *exec, size_t *bytes)
{
    const char *fn = "neat_lowrank_forward_workspace_size";
    neat_problem p;
    if (!bytes)
        return neat_null_out(fn, "bytes");
    neat_status st = neat_validate_lowrank(fn, NULL, args, &p);
    if (st == NEAT_OK)
        st = neat_validate_exec(fn, exec);
    if (st != NEAT_OK)
        return st;
    const neat_backend *be = neat_backend_for(fn, &p);
    return be ? be->lowrank_workspace_size(args, exec, bytes) : NEAT_ERR_UNSUPPORTED;
}

neat_status neat_lowrank_forward(neat_tensor *y, const neat_lowrank_args *args, void *workspace,
                                 size_t workspace_bytes, const neat_exec *exec)
{
    const char *fn = "neat_lowrank_forward";
    neat_problem p;
    if (!y)
        return neat_null_out(fn, "y");
    neat_status st = neat_validate_lowrank(fn, y, args, &p);
    if (st == NEAT_OK)
        st = neat_validate_exec(fn, exec);
    if (st != NEAT_OK)
        return st;
    const neat_backend *be = neat_backend_for(fn, &p);
    if (!be)
        return NEAT_ERR_UNSUPPORTED;
    size_t need = 0;
    st = be->lowrank_workspace_size(args, exec, &need);
    if (st == NEAT_OK)
        st = neat_check_workspace(fn, "neat_lowrank_forward_workspace_size", need, workspace,
                                  workspace_bytes);
    if (st == NEAT_OK)
        st = neat_validate_lowrank_workspace(fn, workspace, workspace_bytes, args, y);
    if (st == NEAT_OK)
        st = be->lowrank(y, args, workspace, workspace_bytes, exec);
    return st;
}
