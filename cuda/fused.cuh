// fused.cuh - the rank-r products of a NEAT step as kernels of their own (docs/design.md §8.17):
// the fused path that NEAT_CUDA_RANK_PATH=fused selects (entry.cuh), next to the cuBLAS path.
//
// Two kernels serve the forward and the backward (T: x's dtype; Acc: float32, float64 for float64):
//
//   rows   out = (s in M^T) E^T + bias   and / or   u = s in M^T
//          One pass over the rows of `in`: a block takes a tile of rows, sums u over K in tiles
//          (in and M staged in shared memory), keeps u in shared memory in Acc and expands it
//          against E tile by tile of out's columns. out is written, not accumulated: the frozen
//          product then adds onto it through cuBLAS with beta = 1.
//            forward   in = x, M = G, E = B, bias: y = s (x G^T) B^T + b (before y += x W^T)
//            backward  in = dy, M = B^T, E = G^T, u = dU: dU = s dy B and dx = dU G in one
//                      pass over dy (before dx += dy W); with no out, u alone: U = x G^T
//   cols   dB = s dy^T U and db = dy^T 1 in one pass over dy: a block takes a strip of dy's
//          columns and walks all of N (dy and U tiles in shared memory), so each sum over N is
//          one block's, in a fixed order: no atomics, no partial buffers, run-to-run identical.
//
// Operands are read in place with any strides; an adapter operand (B, or G given in A's dtype)
// that is float32 in a half call is rounded to T as it is read (the mixed-precision rule of
// neat.h), everything accumulates in Acc, outputs are rounded once. r <= kFusedMaxRank.
//
// Versions (the sandbox, tests/cuda_emu/test_fused.cpp, checks each at several configurations):
//   1  plain: one thread per row (rows) or column (cols), grid-stride, no shared memory; the
//      baseline to measure against
//   2  tiled: the shared-memory kernels described above (the default)
#pragma once

#include "common.cuh"

namespace neat_cuda {

constexpr int64_t kFusedMaxRank = 64;

// Whether the fused kernels take rank r (above kFusedMaxRank the cuBLAS path serves the call).
inline bool fused_rank_ok(int64_t r) { return r >= 1 && r <= kFusedMaxRank; }

struct FusedCfg {
    int version = 2;   // 1 plain, 2 tiled
    int threads = 256; // threads per block (a multiple of 32, at most 1024)
    int rows = 16;     // v2: rows of `in` per block (rows), columns of dy per block (cols)
    int tile = 32;     // v2: the K tile and the out-column tile (rows); the N tile (cols)
};

// The default configuration of each kernel, as the backend launches it.
FusedCfg fused_rows_default();
FusedCfg fused_cols_default();

struct RowsArgs {
    Mat in;   // (N, K), T
    Mat M;    // (r, K), T or float32
    Mat E;    // (D, r), T or float32; unused without out
    Mat bias; // (D, 1), T; p == nullptr: none
    Mat out;  // (N, D), T; p == nullptr: u only
    Mat u;    // (N, r), T; p == nullptr: not saved
    double scale = 1.0;
};

struct ColsArgs {
    Mat dy;   // (N, D), T
    Mat U;    // (N, r), T; not read (p may be nullptr) without dB
    Mat dB;   // (D, r), T or float32; p == nullptr: not wanted
    Mat db;   // (D, 1), T; p == nullptr: not wanted
    double scale = 1.0;
};

// Launch the kernels on ctx.stream (no-ops when ctx.dry or nothing is to be written). A
// configuration the kernel cannot run (too many outputs per thread, too much shared memory, r out
// of range) is NEAT_ERR_INTERNAL with a message that says which limit.
neat_status launch_fused_rows(Ctx &ctx, const RowsArgs &a, const FusedCfg &cfg = fused_rows_default());
neat_status launch_fused_cols(Ctx &ctx, const ColsArgs &a, const FusedCfg &cfg = fused_cols_default());

} // namespace neat_cuda
