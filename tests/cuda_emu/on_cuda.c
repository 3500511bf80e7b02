/*
 * on_cuda.c - puts the test tensors of an unchanged tests/c test on cuda:0 (test_kernels_cuda,
 * test_errors_cuda, test_fd_cuda, test_fuzz_cuda, test_quant_cuda).
 *
 * Linked with -Wl,--wrap=tb_make,--wrap=tb_make1,--wrap=tb_device: every call to the two
 * constructors of tests/c/util.h lands here, takes the host buffer they build and labels the
 * view CUDA, and tb_device (which tests that build views themselves use) says cuda:0. With the
 * emulated backend device memory is host memory, so the rest of the test (filling, reading
 * back, checking padding) works unchanged, and each case runs through cuda/ instead of ops/.
 *
 * The tests/c tests size some workspaces for the CPU (test_errors hands every call 1 MiB), and
 * the cuBLAS double scribbles over its workspace on every GEMM: so these binaries give cuBLAS
 * 64 KiB (NEAT_CUBLAS_WORKSPACE_KB, unless the environment sets it) instead of the 4 or 32 MiB
 * a GPU gets. test_cuda_emu runs with the real sizes and checks them. A quantized W's panels
 * get 16 KiB (NEAT_CUDA_QPANEL_KB, cuda/quant.cuh) instead of 1 to 8 MiB, so that the tests'
 * shapes take many panels, the sum split too, in every product.
 */
#define _POSIX_C_SOURCE 200809L /* setenv */

#include <stdlib.h>

#include "util.h"

tbuf __real_tb_make(neat_dtype dtype, int64_t rows, int64_t cols, int layout, const double *vals,
                    double fill);
tbuf __real_tb_make1(neat_dtype dtype, int64_t n, int64_t stride, const double *vals, double fill);
tbuf __wrap_tb_make(neat_dtype dtype, int64_t rows, int64_t cols, int layout, const double *vals,
                    double fill);
tbuf __wrap_tb_make1(neat_dtype dtype, int64_t n, int64_t stride, const double *vals, double fill);
neat_device __wrap_tb_device(void);

__attribute__((constructor)) static void small_cublas_workspace(void)
{
    setenv("NEAT_CUBLAS_WORKSPACE_KB", "64", 0);
    setenv("NEAT_CUDA_QPANEL_KB", "16", 0);
}

neat_device __wrap_tb_device(void)
{
    neat_device d = {NEAT_DEVICE_CUDA, 0};
    return d;
}

static tbuf on_cuda(tbuf b)
{
    b.t.device = __wrap_tb_device();
    return b;
}

tbuf __wrap_tb_make(neat_dtype dtype, int64_t rows, int64_t cols, int layout, const double *vals,
                    double fill)
{
    return on_cuda(__real_tb_make(dtype, rows, cols, layout, vals, fill));
}

tbuf __wrap_tb_make1(neat_dtype dtype, int64_t n, int64_t stride, const double *vals, double fill)
{
    return on_cuda(__real_tb_make1(dtype, n, stride, vals, fill));
}
