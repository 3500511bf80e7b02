/*
 * provider.h - a GEMM provider for neat_exec.gemm (neat.h, neat_gemm_fn) used by the tests: a
 * plain strided product that also checks every call against the provider contract (dtype, dims
 * above 16, C's elements distinct and apart from A and B, the calling thread) and counts calls.
 * Its arithmetic (float64 accumulation in k order) never depends on the thread count, so the
 * library's bit-identity across lanes must still hold with it.
 */
#ifndef NEAT_TEST_PROVIDER_H
#define NEAT_TEST_PROVIDER_H

#include <pthread.h>

#include "neat.h"

typedef struct test_provider {
    long calls;        /* every call, declined ones included */
    long declined;     /* calls answered "decline" (nonzero) */
    long bad;          /* calls whose arguments broke the contract; first one described below */
    char first_bad[160];
    long decline_every; /* 0: compute every call; k > 0: decline every k-th call */
    long beta_nonzero;  /* calls with beta != 0 (accumulating into C) */
    pthread_t owner;    /* the thread expected to make every call */
} test_provider;

/* A provider that expects its calls from the current thread. */
test_provider test_provider_make(long decline_every);
/* neat_gemm_fn; user is a test_provider. */
int test_provider_gemm(neat_dtype dtype, int64_t M, int64_t N, int64_t K, double alpha,
                       const void *A, int64_t rsa, int64_t csa, const void *B, int64_t rsb,
                       int64_t csb, double beta, void *C, int64_t rsc, int64_t csc, void *user);

#endif /* NEAT_TEST_PROVIDER_H */
