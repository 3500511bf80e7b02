// blas.cuh - cuBLAS behind the backend: per-device handle pools (a handle per thread and device
// while the thread lives), a typed GEMM on row-major strided views, and the operand preparation
// that makes a view acceptable to cuBLAS.
#pragma once

#include "common.cuh"

namespace neat_cuda {

// Bytes of the caller's workspace handed to cuBLAS (cublasSetWorkspace) on ctx.device: 32 MiB on
// compute capability 9.0 and newer (Hopper's kernels want that much, as PyTorch gives them), 4 MiB
// before. NEAT_CUBLAS_WORKSPACE_KB in the environment overrides both. Asks the runtime for the
// device's compute capability once per device (no synchronisation); an error is a backend error.
neat_status blas_workspace_bytes(Ctx &ctx, size_t *bytes);

// True when cuBLAS can read m in place: one of its strides is 1 and the other a valid
// leading dimension (size-1 dims may have any stride).
bool blas_ready(const Mat &m);

// C = alpha * A B + beta * C for row-major logical views C (M, N), A (M, K), B (K, N).
// A and B share a dtype; C has that dtype, or float32 when A and B are half. Each view must be
// blas_ready. Accumulation in float32 (float64 for float64), never reduced to a half output type
// on the way; float32 inputs are rounded to TF32 only when ctx.allow_tf32(). beta == 0: C is not
// read. K == 0 writes beta * C. No-op when ctx.dry.
neat_status gemm(Ctx &ctx, Mat C, Mat A, Mat B, double alpha, double beta);

// *out = in when it already has dtype `want` and is blas_ready; otherwise a contiguous copy in
// `want` carved from the workspace (and the copy is launched unless ctx.dry).
neat_status ready_input(Ctx &ctx, Mat in, neat_dtype want, Mat *out);

// An output that a GEMM with operands of dtype `ab` writes: the user's view itself when cuBLAS
// can write it, otherwise a contiguous scratch matrix copied out by finish().
struct Output {
    Mat user;
    Mat work;
    bool temp = false;
};
neat_status begin_output(Ctx &ctx, Mat user, neat_dtype ab, Output *out);
neat_status finish_output(Ctx &ctx, const Output &out);

} // namespace neat_cuda
