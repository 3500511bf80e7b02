// block.cuh - shared memory for block kernels (docs/design.md §8.14, §8.17).
//
// Kernels that share data within a block are started by launch_blocks() (cuda/launch.cuh) and
// declare their shared memory only through these macros, never with __shared__ directly: under
// nvcc they are __shared__ declarations; in the host emulation (tests/cuda_emu) they map to the
// per-block buffers of the fiber runner, where __syncthreads() is a real barrier between fibers.
//
//   NEAT_SHARED_DYNAMIC(T, name)      T *name: the block's dynamic shared memory (the bytes given
//                                     to launch_blocks), 16-byte aligned
//   NEAT_SHARED_ARRAY(T, name, n)     T *name: a static array of n elements (a pointer, not an
//                                     array, in both builds: index it, do not take its sizeof)
#pragma once

#include "common.cuh"

#ifdef NEAT_CUDA_EMULATE
#define NEAT_SHARED_DYNAMIC(T, name)                                                               \
    T *name = static_cast<T *>(::neat_emu::dynamic_shared(__FILE__, __LINE__))
#define NEAT_SHARED_ARRAY(T, name, n)                                                              \
    T *name = static_cast<T *>(::neat_emu::static_shared(                                          \
        __FILE__ ":" NEAT_BLOCK_STR(__LINE__) ":" #name, sizeof(T) * static_cast<size_t>(n)))
#define NEAT_BLOCK_STR(x) NEAT_BLOCK_STR2(x)
#define NEAT_BLOCK_STR2(x) #x
#else
#define NEAT_SHARED_DYNAMIC(T, name)                                                               \
    extern __shared__ __align__(16) unsigned char neat_dynamic_shared_[];                          \
    T *name = reinterpret_cast<T *>(neat_dynamic_shared_)
#define NEAT_SHARED_ARRAY(T, name, n)                                                              \
    __shared__ __align__(16) T name##_storage_[n];                                                 \
    T *name = name##_storage_
#endif
