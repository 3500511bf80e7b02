/*
 * reference.h - the naive float64 reference of docs/design.md §1.1 / §1.2, used only by the tests.
 * Every matrix is contiguous row-major double.
 */
#ifndef NEAT_TEST_REFERENCE_H
#define NEAT_TEST_REFERENCE_H

#include <stdint.h>

#include "neat.h"

typedef struct ref_problem {
    int64_t N, d_in, d_out, r;
    int num_hidden;
    neat_activation act;
    double scale;
    const double *x; /* (N, d_in) */
    const double *W; /* (d_out, d_in) */
    const double *b; /* (d_out) or NULL */
    const double *A; /* (r, d_out) */
    const double *B; /* (d_out, r) */
    const double *H[NEAT_MAX_HIDDEN];
} ref_problem;

double ref_act(neat_activation act, double z);
double ref_act_grad(neat_activation act, double z);

/* G (r, d_in) of docs/design.md §1.1, computed with an explicit push/pop stack. */
void ref_compute_g(const ref_problem *p, double *G);

/* y_base = x W^T + b (N, d_out) and y_adapter = s U B^T (N, d_out); either may be NULL. */
void ref_forward(const ref_problem *p, double *y_base, double *y_adapter);

/*
 * Backward of the full layer, split into base and adapter parts so both entry points can be
 * checked: dx = dx_base + dx_adapter, dW = dW_base + dW_adapter; db and dA, dB, dH come from one
 * term only. Every output may be NULL.
 */
typedef struct ref_grads {
    double *dx_base, *dx_adapter; /* (N, d_in) */
    double *dW_base, *dW_adapter; /* (d_out, d_in) */
    double *db;                   /* (d_out) */
    double *dA;                   /* (r, d_out) */
    double *dB;                   /* (d_out, r) */
    double *dH[NEAT_MAX_HIDDEN];  /* (r, r) */
} ref_grads;

void ref_backward(const ref_problem *p, const double *dy, const ref_grads *g);

#endif /* NEAT_TEST_REFERENCE_H */
