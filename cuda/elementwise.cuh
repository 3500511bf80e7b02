// elementwise.cuh - strided copy / convert / fill of 2-D views (launchers; kernels in elementwise.cu).
#pragma once

#include "common.cuh"

namespace neat_cuda {

// dst = scale * src, element by element, converting dtypes; any strides on either side.
// dst and src may be the same view (in-place scaling). No-op when ctx.dry.
neat_status launch_convert(Ctx &ctx, Mat dst, Mat src, double scale = 1.0);

// dst = value for every element of the view. No-op when ctx.dry.
neat_status launch_fill(Ctx &ctx, Mat dst, double value);

} // namespace neat_cuda
