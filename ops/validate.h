/*
 * validate.h - the one place every public call's arguments are checked (internal).
 *
 * After these return NEAT_OK the backends may rely on everything backend.h promises. Every
 * failure sets a message naming the function, the argument, what was expected and what was got.
 */
#ifndef NEAT_VALIDATE_H
#define NEAT_VALIDATE_H

#include "neat.h"

/* The shapes, device and dtypes of a validated call. */
typedef struct neat_problem {
    neat_device device;
    neat_dtype dtype;       /* x, weight, bias, y, dy, dx, dweight, dbias */
    neat_dtype param_dtype; /* A, B, hidden and their gradients */
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

const char *neat_dtype_name(neat_dtype dtype);

#endif /* NEAT_VALIDATE_H */
