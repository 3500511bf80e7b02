/*
 * backend.h - what ops/dispatch.c calls after validation (internal, not installed).
 *
 * The public entry points in shim/neat.h validate every argument once (ops/validate.c) and then
 * route by device to one of these. A backend may therefore assume: shapes are consistent,
 * dtypes are supported on its device, every view has non-negative strides, outputs do not
 * overlap inputs, and the workspace is at least the size its own *_workspace_size reported.
 *
 * with_base = 1: the full layer (x W^T + b + s U B^T, dW includes dy^T x, dx includes dy W).
 * with_base = 0: the adapter term only (s U B^T); args->bias is NULL, grads->dbias is NULL.
 */
#ifndef NEAT_BACKEND_H
#define NEAT_BACKEND_H

#include "neat.h"

#ifdef __cplusplus
extern "C" {
#endif

#define NEAT_DECLARE_BACKEND(prefix)                                                            \
    neat_status prefix##_forward_workspace_size(const neat_args *args, int with_base,           \
                                                const neat_exec *exec, size_t *bytes);          \
    neat_status prefix##_forward(neat_tensor *y, const neat_args *args, int with_base,          \
                                 void *workspace, size_t workspace_bytes,                       \
                                 const neat_exec *exec);                                        \
    neat_status prefix##_backward_workspace_size(const neat_grads *grads, const neat_args *args, \
                                                 int with_base, const neat_exec *exec,          \
                                                 size_t *bytes);                                \
    neat_status prefix##_backward(const neat_grads *grads, const neat_tensor *dy,               \
                                  const neat_args *args, int with_base, void *workspace,        \
                                  size_t workspace_bytes, const neat_exec *exec);               \
    neat_status prefix##_compute_g_workspace_size(const neat_args *args, const neat_exec *exec, \
                                                  size_t *bytes);                               \
    neat_status prefix##_compute_g(neat_tensor *G, const neat_args *args, void *workspace,      \
                                   size_t workspace_bytes, const neat_exec *exec);

#define NEAT_DECLARE_LOWRANK(prefix)                                                            \
    neat_status prefix##_lowrank_forward_workspace_size(const neat_lowrank_args *args,          \
                                                        const neat_exec *exec, size_t *bytes);  \
    neat_status prefix##_lowrank_forward(neat_tensor *y, const neat_lowrank_args *args,         \
                                         void *workspace, size_t workspace_bytes,               \
                                         const neat_exec *exec);

NEAT_DECLARE_BACKEND(neat_cpu)
NEAT_DECLARE_LOWRANK(neat_cpu)

/*
 * A backend with a quantized W (the neat_q* entry points; qw != NULL): the same contract,
 * args->weight is NULL and qw has passed validation (its device is the call's). qw == NULL is the
 * float call.
 */
#define NEAT_DECLARE_QBACKEND(prefix)                                                           \
    neat_status prefix##_qforward_workspace_size(const neat_args *args, const neat_qweight *qw, \
                                                 int with_base, const neat_exec *exec,          \
                                                 size_t *bytes);                                \
    neat_status prefix##_qforward(neat_tensor *y, const neat_args *args, const neat_qweight *qw, \
                                  int with_base, void *workspace, size_t workspace_bytes,       \
                                  const neat_exec *exec);                                       \
    neat_status prefix##_qbackward_workspace_size(const neat_grads *grads,                      \
                                                  const neat_args *args, const neat_qweight *qw, \
                                                  int with_base, const neat_exec *exec,         \
                                                  size_t *bytes);                               \
    neat_status prefix##_qbackward(const neat_grads *grads, const neat_tensor *dy,              \
                                   const neat_args *args, const neat_qweight *qw,               \
                                   int with_base, void *workspace, size_t workspace_bytes,      \
                                   const neat_exec *exec);                                      \
    neat_status prefix##_qcompute_g_workspace_size(const neat_args *args,                       \
                                                   const neat_qweight *qw,                      \
                                                   const neat_exec *exec, size_t *bytes);       \
    neat_status prefix##_qcompute_g(neat_tensor *G, const neat_args *args,                      \
                                    const neat_qweight *qw, void *workspace,                    \
                                    size_t workspace_bytes, const neat_exec *exec);             \
    neat_status prefix##_qlowrank_forward_workspace_size(const neat_lowrank_args *args,         \
                                                         const neat_qweight *qw,                \
                                                         const neat_exec *exec, size_t *bytes); \
    neat_status prefix##_qlowrank_forward(neat_tensor *y, const neat_lowrank_args *args,        \
                                          const neat_qweight *qw, void *workspace,              \
                                          size_t workspace_bytes, const neat_exec *exec);

NEAT_DECLARE_QBACKEND(neat_cpu)

#ifdef NEAT_WITH_CUDA
NEAT_DECLARE_BACKEND(neat_cuda)
NEAT_DECLARE_LOWRANK(neat_cuda)
NEAT_DECLARE_QBACKEND(neat_cuda)
#endif

/* What a message of a call starts with: the caller's name for the call (neat_exec.names), else
 * own, the C name of the function reporting. */
static inline const char *neat_message_prefix(const neat_exec *exec, const char *own)
{
    return exec && exec->names && exec->names->call ? exec->names->call : own;
}

/* Returns expr's status unless it is NEAT_OK. */
#define NEAT_TRY(expr)                                                                         \
    do {                                                                                       \
        neat_status neat_try_ = (expr);                                                        \
        if (neat_try_ != NEAT_OK)                                                              \
            return neat_try_;                                                                  \
    } while (0)

/* Sets the thread-local message (printf-style) and returns status; used by every backend. */
neat_status neat_set_error(neat_status status, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

#ifdef __cplusplus
}
#endif

#endif /* NEAT_BACKEND_H */
