/*
 * activation_impl.h - activations written once, included by activation.c with T and SFX
 * defined; <tgmath.h> there picks erff/erf, tanhf/tanh, ... from T.
 */
#define NEAT_CAT_(a, b) a##b
#define NEAT_CAT(a, b) NEAT_CAT_(a, b)
#define NEAT_FN(name) NEAT_CAT(name, SFX)

static T NEAT_FN(neat_act_)(neat_activation act, T z)
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
    case NEAT_ACT_IDENTITY:
    default:
        return z;
    }
}

static T NEAT_FN(neat_act_grad_)(neat_activation act, T z)
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
    case NEAT_ACT_IDENTITY:
    default:
        return (T)1;
    }
}

static void NEAT_FN(neat_act_forward_)(neat_activation act, int64_t rows, int64_t cols,
                                       const T *Z, int64_t ldz, const T *skip, int64_t lds,
                                       T *G, int64_t ldg)
{
    for (int64_t i = 0; i < rows; i++) {
        const T *z = Z + i * ldz;
        T *g = G + i * ldg;
        if (skip) {
            const T *s = skip + i * lds;
            for (int64_t j = 0; j < cols; j++) g[j] = NEAT_FN(neat_act_)(act, z[j]) + s[j];
        } else {
            for (int64_t j = 0; j < cols; j++) g[j] = NEAT_FN(neat_act_)(act, z[j]);
        }
    }
}

static void NEAT_FN(neat_act_backward_)(neat_activation act, int64_t rows, int64_t cols,
                                        const T *Z, int64_t ldz, const T *dG, int64_t ldd,
                                        T *dZ, int64_t lddz)
{
    for (int64_t i = 0; i < rows; i++) {
        const T *z = Z + i * ldz;
        const T *d = dG + i * ldd;
        T *o = dZ + i * lddz;
        for (int64_t j = 0; j < cols; j++) o[j] = d[j] * NEAT_FN(neat_act_grad_)(act, z[j]);
    }
}

#undef NEAT_FN
#undef NEAT_CAT
#undef NEAT_CAT_
