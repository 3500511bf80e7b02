/*
 * util.h - test helpers: deterministic random numbers, typed strided test tensors built from
 * double values, and error measures.
 */
#ifndef NEAT_TEST_UTIL_H
#define NEAT_TEST_UTIL_H

#include <stddef.h>
#include <stdint.h>

#include "neat.h"

/* Layouts a 2-D test tensor can take. */
enum {
    LAYOUT_CONTIG = 0,     /* row-major, row stride = cols */
    LAYOUT_TRANSPOSED = 1, /* a transposed view of a (cols, rows) array: strides (1, rows) */
    LAYOUT_PADDED = 2,     /* row-major with row stride cols + 3 */
    LAYOUT_COUNT = 3
};

typedef struct tbuf {
    neat_tensor t;
    void *storage;
    int64_t storage_elems;
} tbuf;

uint64_t rng_next(uint64_t *state);
/* Uniform in [lo, hi). */
double rng_uniform(uint64_t *state, double lo, double hi);
void fill_random(uint64_t *state, double *v, int64_t n, double lo, double hi);

/* The device test tensors are labelled with: cpu:0. tests/cuda_emu/on_cuda.c wraps this and the
 * two constructors below at link time (-Wl,--wrap), so that a test runs unchanged on cuda:0
 * through the emulated CUDA backend (device memory is host memory there). */
neat_device tb_device(void);

/* A (rows, cols) tensor in layout with every storage element set to fill, then vals (row-major,
 * may be NULL) written into the view. Values are rounded to dtype. */
tbuf tb_make(neat_dtype dtype, int64_t rows, int64_t cols, int layout, const double *vals,
             double fill);
/* A 1-D tensor of n elements with element stride `stride`. */
tbuf tb_make1(neat_dtype dtype, int64_t n, int64_t stride, const double *vals, double fill);
/* Reads the view into row-major doubles (n = rows * cols). */
void tb_read(const tbuf *b, double *out);
/* Reads one storage element. */
double tb_storage_at(const tbuf *b, int64_t i);
/* 1 if every storage element outside the view equals fill (NaN matches NaN). */
int tb_padding_is(const tbuf *b, double fill);
/* 1 if every storage element (view included) equals fill. */
int tb_all_are(const tbuf *b, double fill);
void tb_free(tbuf *b);
/* Element (i, j) of the view (j ignored for 1-D views). */
double tb_get(const tbuf *b, int64_t i, int64_t j);
void tb_set(tbuf *b, int64_t i, int64_t j, double v);

/* Rounds values to what dtype can hold (in place). */
void round_to(neat_dtype dtype, double *v, int64_t n);

/* ||a - b|| / ||b||, or ||a|| when ||b|| == 0; NaN if a has a NaN. */
double rel_err(const double *a, const double *b, int64_t n);
/* Prints the first few mismatches. */
void print_mismatches(const char *what, const double *got, const double *ref, int64_t rows,
                      int64_t cols, double tol);

void *xmalloc(size_t n);

/*
 * A parallel-for hook (neat_exec.parallel_for) on real threads: [begin, end) is cut into
 * chunks of at least grain iterations, at most *(int *)user of them (64 at most), and each
 * chunk runs on a thread of its own, all concurrently; returns when every chunk is done.
 */
void pthread_parallel_for(int64_t begin, int64_t end, int64_t grain, neat_parallel_body body,
                          void *ctx, void *user);

#endif /* NEAT_TEST_UTIL_H */
