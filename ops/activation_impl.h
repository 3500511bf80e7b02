/*
 * activation_impl.h - activations written once, included by activation.c with T and SFX
 * defined; <tgmath.h> there picks erff/erf, tanhf/tanh, ... from T.
 */
#ifndef NEAT_2PI
#define NEAT_2PI 6.28318530717958647693 /* 2 pi */
#endif

#define NEAT_CAT_(a, b) a##b
#define NEAT_CAT(a, b) NEAT_CAT_(a, b)
#define NEAT_FN(name) NEAT_CAT(name, SFX)

/*
 * sin(2 pi z) (want_cos = 0) or cos(2 pi z) (want_cos = 1) to about one ulp for every finite z.
 * The plain sin((T)2pi * z) rounds the product, an error that grows with |z| (1e-6 at |z| ~ 1 in
 * float). Here the reduction is exact: f = z - rint(z) and t = f - n/4 (|t| <= 1/8) lose nothing,
 * so only 2 pi t (|.| <= pi/4) is rounded, and sin(2 pi z) = sin(2 pi t + n pi/2). Non-finite z
 * gives NaN through f.
 */
static T NEAT_FN(neat_sincos2pi_)(T z, int want_cos)
{
    T f = z - rint(z);           /* exact, |f| <= 1/2 */
    T n = rint((T)4 * f);        /* -2..2: the quarter turn */
    T t = f - n * (T)0.25;       /* exact, |t| <= 1/8 */
    T x = (T)NEAT_2PI * t;
    T s = sin(x), c = cos(x);
    if (n == 1) return want_cos ? -s : c;
    if (n == -1) return want_cos ? s : -c;
    if (n == 2 || n == -2) return want_cos ? -c : -s;
    return want_cos ? c : s; /* n == 0, or NaN */
}

static inline T NEAT_FN(neat_act_)(neat_activation act, T z)
{
    switch (act) {
    case NEAT_ACT_RELU:
        /* written so that NaN fails the test and propagates, like torch.relu */
        return z <= 0 ? (T)0 : z;
    case NEAT_ACT_SIN:
        return sin(z);
    case NEAT_ACT_GELU:
        return (T)0.5 * z * ((T)1 + erf(z * (T)NEAT_SQRT1_2));
    case NEAT_ACT_GELU_TANH: {
        T u = (T)NEAT_SQRT_2_PI * (z + (T)0.044715 * z * z * z);
        return (T)0.5 * z * ((T)1 + tanh(u));
    }
    case NEAT_ACT_SILU:
        return z / ((T)1 + exp(-z));
    case NEAT_ACT_TANH:
        return tanh(z);
    case NEAT_ACT_SIN2PI:
        return NEAT_FN(neat_sincos2pi_)(z, 0);
    case NEAT_ACT_IDENTITY:
    default:
        return z;
    }
}

static inline T NEAT_FN(neat_act_grad_)(neat_activation act, T z)
{
    switch (act) {
    case NEAT_ACT_RELU:
        /* 0 at z == 0, matching PyTorch's threshold_backward */
        return z <= 0 ? (T)0 : (T)1;
    case NEAT_ACT_SIN:
        return cos(z);
    case NEAT_ACT_GELU: {
        T cdf = (T)0.5 * ((T)1 + erf(z * (T)NEAT_SQRT1_2));
        T pdf = exp((T)-0.5 * z * z) * (T)NEAT_INV_SQRT_2PI;
        return cdf + z * pdf;
    }
    case NEAT_ACT_GELU_TANH: {
        T u = (T)NEAT_SQRT_2_PI * (z + (T)0.044715 * z * z * z);
        T t = tanh(u);
        T du = (T)NEAT_SQRT_2_PI * ((T)1 + (T)(3 * 0.044715) * z * z);
        return (T)0.5 * ((T)1 + t) + (T)0.5 * z * ((T)1 - t * t) * du;
    }
    case NEAT_ACT_SILU: {
        T sg = (T)1 / ((T)1 + exp(-z));
        return sg * ((T)1 + z * ((T)1 - sg));
    }
    case NEAT_ACT_TANH: {
        T t = tanh(z);
        return (T)1 - t * t;
    }
    case NEAT_ACT_SIN2PI:
        return (T)NEAT_2PI * NEAT_FN(neat_sincos2pi_)(z, 1);
    case NEAT_ACT_IDENTITY:
    default:
        return (T)1;
    }
}

/*
 * The loops run once per activation with the activation a constant, so the switch in neat_act_ folds
 * away and relu / identity vectorize: a switch per element cost more than the math of a small layer's
 * G stack. Each element's value is the same scalar expression as before, so results keep their bits.
 */
#define NEAT_ACT_CASES(LOOP)                                                                    \
    switch (act) {                                                                              \
    case NEAT_ACT_RELU: LOOP(NEAT_ACT_RELU); break;                                             \
    case NEAT_ACT_SIN: LOOP(NEAT_ACT_SIN); break;                                               \
    case NEAT_ACT_GELU: LOOP(NEAT_ACT_GELU); break;                                             \
    case NEAT_ACT_GELU_TANH: LOOP(NEAT_ACT_GELU_TANH); break;                                   \
    case NEAT_ACT_SILU: LOOP(NEAT_ACT_SILU); break;                                             \
    case NEAT_ACT_TANH: LOOP(NEAT_ACT_TANH); break;                                             \
    case NEAT_ACT_SIN2PI: LOOP(NEAT_ACT_SIN2PI); break;                                         \
    default: LOOP(NEAT_ACT_IDENTITY); break;                                                    \
    }

static void NEAT_FN(neat_act_forward_)(neat_activation act, int64_t rows, int64_t cols,
                                       const T *Z, int64_t ldz, const T *skip, int64_t lds,
                                       T *G, int64_t ldg)
{
#define NEAT_ACT_FWD(A)                                                                         \
    for (int64_t i = 0; i < rows; i++) {                                                        \
        const T *z = Z + i * ldz;                                                               \
        T *g = G + i * ldg;                                                                     \
        if (skip) {                                                                             \
            const T *s = skip + i * lds;                                                        \
            for (int64_t j = 0; j < cols; j++) g[j] = NEAT_FN(neat_act_)(A, z[j]) + s[j];       \
        } else {                                                                                \
            for (int64_t j = 0; j < cols; j++) g[j] = NEAT_FN(neat_act_)(A, z[j]);              \
        }                                                                                       \
    }
    NEAT_ACT_CASES(NEAT_ACT_FWD)
#undef NEAT_ACT_FWD
}

static void NEAT_FN(neat_act_backward_)(neat_activation act, int64_t rows, int64_t cols,
                                        const T *Z, int64_t ldz, const T *dG, int64_t ldd,
                                        T *dZ, int64_t lddz)
{
#define NEAT_ACT_BWD(A)                                                                         \
    for (int64_t i = 0; i < rows; i++) {                                                        \
        const T *z = Z + i * ldz;                                                               \
        const T *d = dG + i * ldd;                                                              \
        T *o = dZ + i * lddz;                                                                   \
        for (int64_t j = 0; j < cols; j++) o[j] = d[j] * NEAT_FN(neat_act_grad_)(A, z[j]);      \
    }
    NEAT_ACT_CASES(NEAT_ACT_BWD)
#undef NEAT_ACT_BWD
}

#undef NEAT_ACT_CASES
#undef NEAT_FN
#undef NEAT_CAT
#undef NEAT_CAT_
