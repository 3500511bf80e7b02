// launch.cuh - the one way the backend launches a kernel (docs/design.md §8.14).
//
// Every kernel is a grid-stride loop over n items started here, so the launch configuration is
// decided in one place and a host build can take it over: with NEAT_CUDA_EMULATE (the test-only
// build of tests/cuda_emu) the grid runs on the CPU, one simulated thread after another. That is
// only sound while kernels use neither shared memory nor barriers; the emulation header makes
// either a compile error rather than a silent wrong answer.
#pragma once

#include "common.cuh"

namespace neat_cuda {

namespace launch_detail {
// Keeps the kernel's parameter types out of deduction, so the arguments convert to them (nullptr
// to a typed pointer, a double to Acc) exactly as in a <<<...>>> call.
template <typename T> struct Exact {
    using type = T;
};
} // namespace launch_detail

// Launches kernel(args...) over n items on ctx.stream and checks the launch.
template <typename... P>
neat_status launch(Ctx &ctx, const char *name, void (*kernel)(P...), int64_t n,
                   typename launch_detail::Exact<P>::type... args)
{
    const dim3 grid(grid_for(n)), block(kThreads);
#ifdef NEAT_CUDA_EMULATE
    neat_emu::run_grid(name, grid, block, ctx.stream, [&] { kernel(args...); });
#else
    kernel<<<grid, block, 0, ctx.stream>>>(args...);
#endif
    NEAT_CUDA_LAUNCHED(ctx, name);
    return NEAT_OK;
}

} // namespace neat_cuda
