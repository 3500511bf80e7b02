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
#include <math.h> // sin(float), exp(float), ... in the global namespace, as device code sees them

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include "emu_log.h"

// Running a block's threads one after another is only equivalent to the device while threads do
// not talk to each other. __syncthreads is not declared on the host, so a barrier fails to
// compile; this makes shared memory fail too instead of becoming a per-thread local.
#undef __shared__
#define __shared__ neat_emu_shared_memory_is_not_emulated

// The coordinates of the simulated thread the current kernel body runs as (thread_local: two
// host threads may run grids at once, as two streams would).
inline thread_local uint3 threadIdx;
inline thread_local uint3 blockIdx;
inline thread_local dim3 blockDim;
inline thread_local dim3 gridDim;

namespace neat_emu {

// Validates a launch as the runtime would (block and grid limits, the stream and its device),
// logs it, and says whether to run it; on false the error is left for cudaGetLastError.
bool launch_begin(const char *kernel, dim3 grid, dim3 block, cudaStream_t stream);

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

} // namespace neat_emu
