// elementwise.cu - strided copy / convert / fill kernels and their launchers.
#include "elementwise.cuh"

#include <type_traits>

#include "launch.cuh"

namespace neat_cuda {

// One thread per element in a grid-stride loop; consecutive threads walk a row (coalesced for
// row-major views on both sides, which is the case the big copies are in).
template <typename Acc, typename D, typename S>
__global__ void convert_kernel(D *dst, int64_t drs, int64_t dcs, const S *src, int64_t srs,
                               int64_t scs, int64_t rows, int64_t cols, Acc scale)
{
    const int64_t n = rows * cols;
    for (int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; t < n;
         t += static_cast<int64_t>(gridDim.x) * blockDim.x) {
        const int64_t i = t / cols, j = t - i * cols;
        store(dst, i * drs + j * dcs, scale * load<Acc>(src, i * srs + j * scs));
    }
}

template <typename Acc, typename D>
__global__ void fill_kernel(D *dst, int64_t drs, int64_t dcs, int64_t rows, int64_t cols, Acc value)
{
    const int64_t n = rows * cols;
    for (int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; t < n;
         t += static_cast<int64_t>(gridDim.x) * blockDim.x) {
        const int64_t i = t / cols, j = t - i * cols;
        store(dst, i * drs + j * dcs, value);
    }
}

neat_status launch_convert(Ctx &ctx, Mat dst, Mat src, double scale)
{
    if (ctx.dry || numel(dst) == 0) return NEAT_OK;
    if (dst.rows != src.rows || dst.cols != src.cols)
        return neat_set_error(NEAT_ERR_INTERNAL, "%s: convert between (%lld, %lld) and (%lld, %lld)",
                              ctx.fn, (long long)dst.rows, (long long)dst.cols, (long long)src.rows,
                              (long long)src.cols);
    return dispatch_dtype(dst.dt, [&](auto tag_D) {
        using D = typename decltype(tag_D)::type;
        return dispatch_dtype(src.dt, [&](auto tag_S) {
            using S = typename decltype(tag_S)::type;
            using Acc = std::conditional_t<std::is_same_v<D, double> || std::is_same_v<S, double>,
                                           double, float>;
            return launch(ctx, "convert_kernel", convert_kernel<Acc, D, S>, numel(dst),
                          static_cast<D *>(dst.p), dst.rs, dst.cs, static_cast<const S *>(src.p),
                          src.rs, src.cs, dst.rows, dst.cols, static_cast<Acc>(scale));
        });
    });
}

neat_status launch_fill(Ctx &ctx, Mat dst, double value)
{
    if (ctx.dry || numel(dst) == 0) return NEAT_OK;
    return dispatch_dtype(dst.dt, [&](auto tag_D) {
        using D = typename decltype(tag_D)::type;
        using Acc = std::conditional_t<std::is_same_v<D, double>, double, float>;
        return launch(ctx, "fill_kernel", fill_kernel<Acc, D>, numel(dst), static_cast<D *>(dst.p),
                      dst.rs, dst.cs, dst.rows, dst.cols, static_cast<Acc>(value));
    });
}

} // namespace neat_cuda
