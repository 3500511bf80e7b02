// activation.cuh - the activations of DESIGN 1.3 and their derivatives, on the device, in the
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
};
template <> struct ActConst<double> {
    static constexpr double inv_sqrt2 = 0.70710678118654752440;
    static constexpr double inv_sqrt2pi = 0.39894228040143267794;
    static constexpr double sqrt_2_over_pi = 0.79788456080286535588;
    static constexpr double gelu_c = 0.044715;
};

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
    }
    return one;
}

} // namespace neat_cuda
