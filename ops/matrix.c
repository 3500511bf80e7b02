/*
 * matrix.c - elementwise loops of matrix.h for float and double. None of these is on a hot
 * path (they touch O(N d_out) or O(r d) elements once), so they stay simple.
 */
#include "matrix.h"

#define NEAT_MAT_LOOPS(T)                                                                      \
    do {                                                                                       \
        for (int64_t i = 0; i < rows; i++)                                                     \
            for (int64_t j = 0; j < cols; j++) NEAT_MAT_BODY(T);                               \
    } while (0)

#define NEAT_MAT_DISPATCH()                                                                    \
    do {                                                                                       \
        if (dtype == NEAT_FLOAT64)                                                             \
            NEAT_MAT_LOOPS(double);                                                            \
        else                                                                                   \
            NEAT_MAT_LOOPS(float);                                                             \
    } while (0)

void neat_mat_copy(neat_dtype dtype, int64_t rows, int64_t cols, const void *src, int64_t srs,
                   int64_t scs, void *dst, int64_t drs, int64_t dcs)
{
#define NEAT_MAT_BODY(T) ((T *)dst)[i * drs + j * dcs] = ((const T *)src)[i * srs + j * scs]
    NEAT_MAT_DISPATCH();
#undef NEAT_MAT_BODY
}

void neat_mat_add(neat_dtype dtype, int64_t rows, int64_t cols, const void *src, int64_t srs,
                  int64_t scs, void *dst, int64_t drs, int64_t dcs)
{
#define NEAT_MAT_BODY(T) ((T *)dst)[i * drs + j * dcs] += ((const T *)src)[i * srs + j * scs]
    NEAT_MAT_DISPATCH();
#undef NEAT_MAT_BODY
}

void neat_mat_zero(neat_dtype dtype, int64_t rows, int64_t cols, void *dst, int64_t drs,
                   int64_t dcs)
{
#define NEAT_MAT_BODY(T) ((T *)dst)[i * drs + j * dcs] = 0
    NEAT_MAT_DISPATCH();
#undef NEAT_MAT_BODY
}

void neat_mat_colsum(neat_dtype dtype, int64_t rows, int64_t cols, const void *src, int64_t srs,
                     int64_t scs, void *out, int64_t os)
{
    /* accumulate in double for both dtypes: N can be large and this costs nothing */
    for (int64_t j = 0; j < cols; j++) {
        double s = 0;
        if (dtype == NEAT_FLOAT64)
            for (int64_t i = 0; i < rows; i++) s += ((const double *)src)[i * srs + j * scs];
        else
            for (int64_t i = 0; i < rows; i++) s += ((const float *)src)[i * srs + j * scs];
        if (dtype == NEAT_FLOAT64)
            ((double *)out)[j * os] = s;
        else
            ((float *)out)[j * os] = (float)s;
    }
}
