// activation.cuh - the activations of docs/design.md §1.3 and their derivatives, on the device, in the
// accumulation type (float or double). Picked at run time from neat_activation (a uniform branch).
#pragma once

#include "common.cuh"

namespace neat_cuda {

template <typename Acc> struct ActConst;
template <> struct ActConst<float> {
    static constexpr float inv_sqrt2 = 0.70710678118654752440f;
    static constexpr float inv_sqrt2pi = 0.39894228040143267794f;
    static constexpr float sqrt_2_over_pi = 0.79788456080286535588f;
    static constexpr float gelu_c = 0.044715f;
    static constexpr float two_pi = 6.28318530717958647693f;
};
template <> struct ActConst<double> {
    static constexpr double inv_sqrt2 = 0.70710678118654752440;
    static constexpr double inv_sqrt2pi = 0.39894228040143267794;
    static constexpr double sqrt_2_over_pi = 0.79788456080286535588;
    static constexpr double gelu_c = 0.044715;
    static constexpr double two_pi = 6.28318530717958647693;
};

// sin(2 pi z) (want_cos false) or cos(2 pi z) (want_cos true) to about one ulp for every finite z,
// as the CPU kernels compute it. sin(two_pi * z) would round the product, an error that grows with
// |z| (1e-6 at |z| ~ 1 in float). The reduction is exact: f = z - rint(z) and t = f - n/4 (|t| <=
// 1/8) lose nothing, only 2 pi t (|.| <= pi/4) is rounded, and sin(2 pi z) = sin(2 pi t + n pi/2).
// Non-finite z gives NaN through f. (Written with rint/sin/cos rather than sinpi/cospi so that the
// host-emulation build runs the very same code.)
template <typename Acc>
__device__ __forceinline__ Acc sincos_2pi(Acc z, bool want_cos)
{
    const Acc f = z - rint(z);          // exact, |f| <= 1/2
    const Acc n = rint(Acc(4) * f);     // -2..2: the quarter turn
    const Acc t = f - n * Acc(0.25);    // exact, |t| <= 1/8
    const Acc x = ActConst<Acc>::two_pi * t;
    const Acc s = sin(x), c = cos(x);
    if (n == Acc(1)) return want_cos ? -s : c;
    if (n == Acc(-1)) return want_cos ? s : -c;
    if (n == Acc(2) || n == Acc(-2)) return want_cos ? -c : -s;
    return want_cos ? c : s; // n == 0, or NaN
}

// act(z)
template <typename Acc>
__device__ __forceinline__ Acc act_forward(neat_activation act, Acc z)
{
    using K = ActConst<Acc>;
    const Acc one = 1, half = Acc(0.5);
    switch (act) {
    case NEAT_ACT_RELU: // NaN fails the test and stays NaN, as torch.relu and the CPU kernels
        return z <= Acc(0) ? Acc(0) : z;
    case NEAT_ACT_SIN: return sin(z);
    case NEAT_ACT_GELU: return half * z * (one + erf(z * K::inv_sqrt2));
    case NEAT_ACT_GELU_TANH: {
        const Acc u = K::sqrt_2_over_pi * (z + K::gelu_c * z * z * z);
        return half * z * (one + tanh(u));
    }
    case NEAT_ACT_SILU: return z / (one + exp(-z));
    case NEAT_ACT_TANH: return tanh(z);
    case NEAT_ACT_IDENTITY: break;
    case NEAT_ACT_SIN2PI: return sincos_2pi(z, false);
    }
    return z;
}

// act'(z)
template <typename Acc>
__device__ __forceinline__ Acc act_derivative(neat_activation act, Acc z)
{
    using K = ActConst<Acc>;
    const Acc one = 1, half = Acc(0.5);
    switch (act) {
    case NEAT_ACT_RELU: // 0 at z == 0 and 1 at NaN, as PyTorch's threshold_backward and the CPU
        return z <= Acc(0) ? Acc(0) : one;
    case NEAT_ACT_SIN: return cos(z);
    case NEAT_ACT_GELU:
        return half * (one + erf(z * K::inv_sqrt2)) + z * K::inv_sqrt2pi * exp(-half * z * z);
    case NEAT_ACT_GELU_TANH: {
        const Acc u = K::sqrt_2_over_pi * (z + K::gelu_c * z * z * z);
        const Acc t = tanh(u);
        const Acc du = K::sqrt_2_over_pi * (one + Acc(3) * K::gelu_c * z * z);
        return half * (one + t) + half * z * (one - t * t) * du;
    }
    case NEAT_ACT_SILU: {
        const Acc sg = one / (one + exp(-z));
        return sg * (one + z * (one - sg));
    }
    case NEAT_ACT_TANH: {
        const Acc t = tanh(z);
        return one - t * t;
    }
    case NEAT_ACT_IDENTITY: break;
    case NEAT_ACT_SIN2PI: return K::two_pi * sincos_2pi(z, true);
    }
    return one;
}

} // namespace neat_cuda
