/*
 * activation.c - instantiates activation_impl.h for float and double.
 */
#include "activation.h"

#include <tgmath.h>

#define NEAT_SQRT1_2 0.70710678118654752440        /* 1 / sqrt(2) */
#define NEAT_SQRT_2_PI 0.79788456080286535588      /* sqrt(2 / pi) */
#define NEAT_INV_SQRT_2PI 0.39894228040143267794   /* 1 / sqrt(2 pi) */

#define T float
#define SFX f32
#include "activation_impl.h"
#undef T
#undef SFX

#define T double
#define SFX f64
#include "activation_impl.h"
#undef T
#undef SFX

void neat_act_forward(neat_dtype dtype, neat_activation act, int64_t rows, int64_t cols,
                      const void *Z, int64_t ldz, const void *skip, int64_t lds, void *G,
                      int64_t ldg)
{
    if (dtype == NEAT_FLOAT64)
        neat_act_forward_f64(act, rows, cols, Z, ldz, skip, lds, G, ldg);
    else
        neat_act_forward_f32(act, rows, cols, Z, ldz, skip, lds, G, ldg);
}

void neat_act_backward(neat_dtype dtype, neat_activation act, int64_t rows, int64_t cols,
                       const void *Z, int64_t ldz, const void *dG, int64_t ldd, void *dZ,
                       int64_t lddz)
{
    if (dtype == NEAT_FLOAT64)
        neat_act_backward_f64(act, rows, cols, Z, ldz, dG, ldd, dZ, lddz);
    else
        neat_act_backward_f32(act, rows, cols, Z, ldz, dG, ldd, dZ, lddz);
}
