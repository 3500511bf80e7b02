// neat_torch_gemm.h - torch's own matmul as the C library's GEMM provider (neat_exec.gemm).
//
// The large products of a CPU call (x W^T, dy W, dy^T x) can run on torch's BLAS (MKL, oneDNN,
// OpenBLAS: whatever this torch was built with) on torch's intra-op pool, the rank-r terms on
// the C library beside them. Which of the two GEMMs serves a product is a plan per thread count
// and size class, decided once per process by timing both on one representative shape per class
// and cached, never searched per call. NEAT_CPU_GEMM overrides it: "own" (the C library's GEMM
// only, bit-identical across thread counts), "host" (torch's for every large product), "auto"
// or unset (the timed plan).
#pragma once

#include <string>

#include "neat.h"

namespace neat_torch {

// Fills exec.gemm / exec.gemm_user per NEAT_CPU_GEMM and the cached plan; exec must already
// carry the parallel-for hook and thread count the calls will use (the plan is timed with it).
void install_host_gemm(neat_exec &exec);

// Which GEMM serves each size class under exec (as install_host_gemm left it), e.g.
// "small=own medium=host large=host".
std::string host_gemm_plan(const neat_exec &exec);

// The mode in force: "own", "host" or "auto" (for benchmarks and tests, via neat::cpu_gemm_info).
const char *host_gemm_mode();

}  // namespace neat_torch
