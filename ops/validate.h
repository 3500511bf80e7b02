/*
 * validate.h - the one place every public call's arguments are checked (internal).
 *
 * After these return NEAT_OK the backends may rely on everything backend.h promises. Every
 * failure sets a message naming the function, the argument, what was expected and what was got.
 */
#ifndef NEAT_VALIDATE_H
#define NEAT_VALIDATE_H

#include "neat.h"

#include <stddef.h>

/*
 * Size limits (stated in shim/neat.h). Every matrix a call reads, writes or forms internally
 * (x, weight, y, A, B, G = (r, d_in), U = (N, r), an (r, r) product) has at most
 * 2^NEAT_MAX_MATRIX_LOG2 elements, so r <= 2^20. With at most NEAT_MAX_THREADS lanes, the
 * CPU workspace (its largest terms: l lanes of GEMM pack buffers that grow with r, the G stack's
 * per-group dA/dH partials, the skinny GEMM's copies of a 2^40-element operand) stays below
 * 2^52 bytes, far from size_t overflow, and the int64 products behind it below 2^48.
 */
#define NEAT_MAX_MATRIX_LOG2 40
#define NEAT_MAX_MATRIX_ELEMS ((int64_t)1 << NEAT_MAX_MATRIX_LOG2)
#define NEAT_MAX_THREADS (1 << 16)

/* The shapes, device and dtypes of a validated call. */
typedef struct neat_problem {
    neat_device device;
    neat_dtype dtype;       /* x, weight, bias, y, dy, dx, dweight, dbias */
    neat_dtype param_dtype; /* A (or G), B, hidden and their gradients */
    const char *param_name; /* "A", or "G" for neat_lowrank_forward */
    int64_t N, d_in, d_out, r;
} neat_problem;

/* y may be NULL (workspace query). */
neat_status neat_validate_forward(const char *fn, const neat_tensor *y, const neat_args *args,
                                  int with_base, neat_problem *p);
/* dy may be NULL (workspace query); grads may not. */
neat_status neat_validate_backward(const char *fn, const neat_grads *grads, const neat_tensor *dy,
                                   const neat_args *args, int with_base, neat_problem *p);
/* G may be NULL (workspace query); args->x and args->B may be NULL. */
neat_status neat_validate_compute_g(const char *fn, const neat_tensor *G, const neat_args *args,
                                    neat_problem *p);

/* exec may be NULL; checked by size queries and compute calls alike (the sizes depend on it). */
neat_status neat_validate_exec(const char *fn, const neat_exec *exec);
/*
 * After the validate_* call of the same entry point: [workspace, workspace + workspace_bytes)
 * must not overlap args' inputs, dy (may be NULL), out (may be NULL; named out_name) or the
 * requested members of grads (may be NULL).
 */
neat_status neat_validate_workspace(const char *fn, const void *workspace, size_t workspace_bytes,
                                    const neat_args *args, const neat_tensor *dy,
                                    const char *out_name, const neat_tensor *out,
                                    const neat_grads *grads);

/* neat_lowrank_forward: y may be NULL (workspace query); then the workspace against its tensors. */
neat_status neat_validate_lowrank(const char *fn, const neat_tensor *y,
                                  const neat_lowrank_args *args, neat_problem *p);
neat_status neat_validate_lowrank_workspace(const char *fn, const void *workspace,
                                            size_t workspace_bytes, const neat_lowrank_args *args,
                                            const neat_tensor *y);

const char *neat_dtype_name(neat_dtype dtype);

#endif /* NEAT_VALIDATE_H */
