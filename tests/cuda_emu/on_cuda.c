/*
 * on_cuda.c - puts the test tensors of an unchanged tests/c test on cuda:0 (test_kernels_cuda).
 *
 * Linked with -Wl,--wrap=tb_make,--wrap=tb_make1: every call to the two constructors of
 * tests/c/util.h lands here, takes the host buffer they build and labels the view CUDA. With
 * the emulated backend device memory is host memory, so the rest of the test (filling, reading
 * back, checking padding) works unchanged, and each case runs through cuda/ instead of ops/.
 */
#include "util.h"

tbuf __real_tb_make(neat_dtype dtype, int64_t rows, int64_t cols, int layout, const double *vals,
                    double fill);
tbuf __real_tb_make1(neat_dtype dtype, int64_t n, int64_t stride, const double *vals, double fill);
tbuf __wrap_tb_make(neat_dtype dtype, int64_t rows, int64_t cols, int layout, const double *vals,
                    double fill);
tbuf __wrap_tb_make1(neat_dtype dtype, int64_t n, int64_t stride, const double *vals, double fill);

static tbuf on_cuda(tbuf b)
{
    b.t.device.type = NEAT_DEVICE_CUDA;
    b.t.device.index = 0;
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
