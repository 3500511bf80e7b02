// launch.cuh - the two ways the backend launches a kernel (docs/design.md §8.14).
//
//   launch()         a grid-stride loop over n items, the configuration decided here. With
//                    NEAT_CUDA_EMULATE (the test-only build of tests/cuda_emu) the grid runs on the
//                    CPU one simulated thread after another, so these kernels use neither shared
//                    memory nor barriers (the emulation reports either as a violation).
//   launch_blocks()  a kernel whose threads cooperate within a block (shared memory declared through
//                    cuda/block.cuh, __syncthreads), with its own grid, block and dynamic shared
//                    bytes. The emulation runs each block's threads as fibers that meet at every
//                    barrier.
// Either way the launch is checked, so a bad configuration comes back as a status.
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

// Launches kernel(args...) with the given grid, block and dynamic shared memory on ctx.stream.
// Shared memory beyond the 48 KiB every device grants without an opt-in is refused here.
template <typename... P>
neat_status launch_blocks(Ctx &ctx, const char *name, void (*kernel)(P...), dim3 grid, dim3 block,
                          size_t shared_bytes, typename launch_detail::Exact<P>::type... args)
{
    if (shared_bytes > kMaxSharedBytes)
        return neat_set_error(NEAT_ERR_INTERNAL,
                              "%s: %s wants %zu bytes of shared memory per block, more than %zu",
                              ctx.fn, name, shared_bytes, kMaxSharedBytes);
#ifdef NEAT_CUDA_EMULATE
    neat_emu::run_blocks(name, grid, block, shared_bytes, ctx.stream, [&] { kernel(args...); });
#else
    kernel<<<grid, block, shared_bytes, ctx.stream>>>(args...);
#endif
    NEAT_CUDA_LAUNCHED(ctx, name);
    return NEAT_OK;
}

} // namespace neat_cuda
