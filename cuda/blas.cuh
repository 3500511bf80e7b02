// blas.cuh - cuBLAS behind the backend: per-(thread, device) handle cache, a typed GEMM on
// row-major strided views, and the operand preparation that makes a view acceptable to cuBLAS.
#pragma once

#include "common.cuh"

namespace neat_cuda {

// Bytes of the caller's workspace handed to cuBLAS (cublasSetWorkspace) on `device`.
// NEAT_CUBLAS_WORKSPACE_KB in the environment overrides the default (4 MiB).
size_t blas_workspace_bytes();

// True when cuBLAS can read m in place: one of its strides is 1 and the other a valid
// leading dimension (size-1 dims may have any stride).
bool blas_ready(const Mat &m);

// C = alpha * A B + beta * C for row-major logical views C (M, N), A (M, K), B (K, N).
// A and B share a dtype; C has that dtype, or float32 when A and B are half. Each view must be
// blas_ready. Accumulation in float32 (float64 for float64), no TF32. beta == 0: C is not read.
// K == 0 writes beta * C. No-op when ctx.dry.
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
