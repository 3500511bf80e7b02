// cuda_emu.h - what the CUDA backend (cuda/*.cu) needs from nvcc, for a host C++ build (test only).
//
// With NEAT_CUDA_EMULATE, cuda/common.cuh includes this instead of <cuda_runtime.h>. The CUDA
// toolkit's own host headers still provide the types and the __half / __nv_bfloat16 conversions,
// so rounding is the device's; under a host compiler they also define __global__, __device__ and
// __host__ as nothing and __forceinline__ as an always-inline hint (crt/host_defines.h). What only
// nvcc provides is here: the per-thread launch coordinates and a grid runner. The runtime calls
// resolve to cuda_runtime_emu.cpp and cuBLAS to cublas_double.cpp, never to the real libraries.
#pragma once

#ifndef NEAT_CUDA_EMULATE
#error "cuda_emu.h is for the NEAT_CUDA_EMULATE host build only"
#endif

#include <cmath>
#include <cstdint>
#include <type_traits>
#include <math.h> // sin(float), exp(float), ... in the global namespace, as device code sees them

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include "emu_log.h"

// Two ways to run a kernel (docs/design.md §8.14):
//   run_grid    grid-stride kernels (launch() in cuda/launch.cuh): every simulated thread runs to
//               its end, one after another. Such a kernel may use neither shared memory nor
//               barriers; either is reported as a violation when it happens.
//   run_blocks  block kernels (launch_blocks()): the threads of a block are cooperative fibers on
//               one host thread (block_emu.cpp). __syncthreads() switches to the next fiber until
//               every thread of the block has arrived; shared memory is one buffer per block,
//               filled with 0xFF bytes (NaN in every float type) before the block starts, so a read
//               of a slot no thread wrote this block shows up. A barrier that not every thread
//               reaches (some exited, or they wait at different __syncthreads) is a violation and
//               fails the launch (cudaErrorLaunchFailure) instead of hanging.
// Raw __shared__ stays a compile error: kernels declare shared memory through cuda/block.cuh,
// which maps to the per-block buffers here and to __shared__ under nvcc.
#undef __shared__
#define __shared__ neat_emu_shared_memory_goes_through_cuda_block_cuh

// The coordinates of the simulated thread the current kernel body runs as (thread_local: two
// host threads may run grids at once, as two streams would). With fibers, the scheduler sets them
// before it resumes a thread; they are read back after every barrier, which is an opaque call.
inline thread_local uint3 threadIdx;
inline thread_local uint3 blockIdx;
inline thread_local dim3 blockDim;
inline thread_local dim3 gridDim;

namespace neat_emu {

// The device's limit on shared memory per block without an opt-in attribute (every GPU CUDA 13
// supports): static and dynamic together.
constexpr size_t kSharedLimit = 48 * 1024;

// Validates a launch as the runtime would (block and grid limits, the stream and its device),
// logs it, and says whether to run it; on false the error is left for cudaGetLastError.
bool launch_begin(const char *kernel, dim3 grid, dim3 block, cudaStream_t stream);

// Leaves err for the next cudaGetLastError, as a failed kernel would.
void fail_launch(cudaError_t err);

// Runs body once for every thread of the grid. Blocks go last to first: any block order is legal
// on the device, and the reverse one shows up a kernel that counts on block 0 finishing first.
template <typename Body>
void run_grid(const char *kernel, dim3 grid, dim3 block, cudaStream_t stream, Body &&body)
{
    if (!launch_begin(kernel, grid, block, stream)) return;
    gridDim = grid;
    blockDim = block;
    for (unsigned bz = grid.z; bz-- > 0;)
        for (unsigned by = grid.y; by-- > 0;)
            for (unsigned bx = grid.x; bx-- > 0;) {
                blockIdx = uint3{bx, by, bz};
                for (unsigned tz = 0; tz < block.z; ++tz)
                    for (unsigned ty = 0; ty < block.y; ++ty)
                        for (unsigned tx = 0; tx < block.x; ++tx) {
                            threadIdx = uint3{tx, ty, tz};
                            body();
                        }
            }
}

// The fiber runner behind run_blocks (block_emu.cpp): entry(body) is one thread's kernel body.
void run_blocks_impl(const char *kernel, dim3 grid, dim3 block, size_t dynamic_shared,
                     cudaStream_t stream, void (*entry)(void *), void *body);

// Runs the grid block by block (last to first, as run_grid), each block's threads as fibers with
// `dynamic_shared` bytes of dynamic shared memory (the third <<<>>> argument).
template <typename Body>
void run_blocks(const char *kernel, dim3 grid, dim3 block, size_t dynamic_shared,
                cudaStream_t stream, Body &&body)
{
    using B = std::remove_reference_t<Body>;
    run_blocks_impl(kernel, grid, block, dynamic_shared, stream,
                    [](void *b) { (*static_cast<B *>(b))(); }, static_cast<void *>(&body));
}

// __syncthreads() of the current block (the site names it in messages and tells barriers apart).
void barrier(const char *file, int line);
// This block's dynamic shared memory (16-byte aligned).
void *dynamic_shared(const char *file, int line);
// This block's static shared array declared at `site` (one per site and block, 16-byte aligned).
void *static_shared(const char *site, size_t bytes);

} // namespace neat_emu

// What nvcc declares for device code; a macro so that every call names its own site.
#define __syncthreads() ::neat_emu::barrier(__FILE__, __LINE__)
