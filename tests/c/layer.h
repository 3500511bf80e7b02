/*
 * layer.h - a random NEAT layer problem held both as float64 reference data and as typed,
 * strided neat_tensor views, shared by the kernel, thread and error tests.
 */
#ifndef NEAT_TEST_LAYER_H
#define NEAT_TEST_LAYER_H

#include "reference.h"
#include "util.h"

typedef struct layer_spec {
    int64_t N, d_in, d_out, r;
    neat_activation act;
    int num_hidden;
    int bias;
    neat_dtype dtype;
    int layout_x, layout_w, layout_a; /* LAYOUT_* */
    double scale;
    uint64_t seed;
} layer_spec;

typedef struct layer {
    layer_spec spec;
    /* float64 values, already rounded to dtype */
    double *x, *W, *b, *A, *B, *H[NEAT_MAX_HIDDEN], *dy;
    /* typed views of the same values */
    tbuf tx, tW, tb, tA, tB, tH[NEAT_MAX_HIDDEN], tdy;
    neat_tensor hidden[NEAT_MAX_HIDDEN];
    neat_args args;
    ref_problem ref;
} layer;

void layer_init(layer *l, const layer_spec *s);
void layer_free(layer *l);
/* Prints the spec for failure messages. */
void layer_describe(const layer_spec *s, char *buf, size_t n);

/* Workspace-sized calls: query, allocate, run, free. */
neat_status call_forward(int with_base, neat_tensor *y, const neat_args *args,
                         const neat_exec *exec);
neat_status call_backward(int with_base, const neat_grads *g, const neat_tensor *dy,
                          const neat_args *args, const neat_exec *exec);
neat_status call_compute_g(neat_tensor *G, const neat_args *args, const neat_exec *exec);

#endif /* NEAT_TEST_LAYER_H */
