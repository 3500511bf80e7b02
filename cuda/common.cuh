// common.cuh - what every CUDA source of the backend shares (internal).
//
//   - Mat: a row-major logical view of a 2-D operand (pointer, dtype, sizes, strides in elements);
//     a transpose is a swap of sizes and strides and costs nothing.
//   - Ctx: one backend call: stream, cuBLAS handle, the caller's workspace being carved, and a
//     dry-run flag. The *_workspace_size functions run the very same code as the compute calls
//     with dry = true (no launch, no pointer dereferenced), so the size reported and the bytes
//     used can never drift apart. Scratch matrices are row-major with rows padded to 16 bytes
//     (cuBLAS's tensor-core paths want 16-byte aligned columns), the padding carved like the rest.
//   - checks that turn CUDA / cuBLAS failures into neat_set_error(NEAT_ERR_BACKEND, ...).
//   - device-side dtype conversion (load any dtype as the accumulation type, store back).
#pragma once

#include <cstddef>
#include <cstdint>

#ifdef NEAT_CUDA_EMULATE
// Test-only host build (tests/cuda_emu): the toolkit's host headers plus stand-ins for what only
// nvcc provides (blockIdx and friends, the launch); cuBLAS and the runtime come from test doubles.
#include "cuda_emu.h"
#else
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#endif

#include "backend.h"
#include "workspace.h"

namespace neat_cuda {

// ---- status helpers ---------------------------------------------------------------------------

#define NEAT_CUDA_TRY(expr)                                                                        \
    do {                                                                                           \
        neat_status neat_try_status_ = (expr);                                                     \
        if (neat_try_status_ != NEAT_OK) return neat_try_status_;                                  \
    } while (0)

// Checks a CUDA runtime call; on failure sets the thread-local message and returns. The runtime
// also keeps the error as the thread's last error: it is taken back here, since it has been
// reported, or the next launch check (ours or the caller's) would blame an innocent kernel.
#define NEAT_CUDA_CHECK(ctx, call)                                                                 \
    do {                                                                                           \
        cudaError_t neat_cuda_err_ = (call);                                                       \
        if (neat_cuda_err_ != cudaSuccess) {                                                       \
            (void)cudaGetLastError();                                                              \
            return neat_set_error(NEAT_ERR_BACKEND, "%s: %s failed: %s (%s:%d)", (ctx).fn, #call,  \
                                  cudaGetErrorString(neat_cuda_err_), __FILE__, __LINE__);         \
        }                                                                                          \
    } while (0)

#define NEAT_CUBLAS_CHECK(ctx, call)                                                               \
    do {                                                                                           \
        cublasStatus_t neat_blas_st_ = (call);                                                     \
        if (neat_blas_st_ != CUBLAS_STATUS_SUCCESS)                                                \
            return neat_set_error(NEAT_ERR_BACKEND, "%s: %s failed: %s (%s:%d)", (ctx).fn, #call,  \
                                  cublasGetStatusString(neat_blas_st_), __FILE__, __LINE__);       \
    } while (0)

// After every kernel launch: a bad configuration or an earlier asynchronous fault shows here.
#define NEAT_CUDA_LAUNCHED(ctx, kernel_name)                                                       \
    do {                                                                                           \
        cudaError_t neat_cuda_err_ = cudaGetLastError();                                           \
        if (neat_cuda_err_ != cudaSuccess)                                                         \
            return neat_set_error(NEAT_ERR_BACKEND, "%s: launch of %s failed: %s", (ctx).fn,       \
                                  kernel_name, cudaGetErrorString(neat_cuda_err_));                \
    } while (0)

// ---- dtypes -----------------------------------------------------------------------------------

inline size_t dtype_size(neat_dtype dt)
{
    switch (dt) {
    case NEAT_FLOAT64: return 8;
    case NEAT_FLOAT32: return 4;
    default: return 2;
    }
}

inline bool is_half(neat_dtype dt) { return dt == NEAT_BFLOAT16 || dt == NEAT_FLOAT16; }

// The accumulation dtype of a compute dtype: float64 for float64, float32 for everything else.
inline neat_dtype acc_dtype(neat_dtype dt) { return dt == NEAT_FLOAT64 ? NEAT_FLOAT64 : NEAT_FLOAT32; }

// ---- matrices ---------------------------------------------------------------------------------

struct Mat {
    void *p = nullptr;
    neat_dtype dt = NEAT_FLOAT32;
    int64_t rows = 0, cols = 0;
    int64_t rs = 0, cs = 0; // strides in elements
};

inline Mat mat_of(const neat_tensor *t)
{
    Mat m;
    m.p = t->data;
    m.dt = t->dtype;
    if (t->ndim == 2) {
        m.rows = t->sizes[0];
        m.cols = t->sizes[1];
        m.rs = t->strides[0];
        m.cs = t->strides[1];
    } else { // a vector (bias): one column
        m.rows = t->ndim >= 1 ? t->sizes[0] : 1;
        m.cols = 1;
        m.rs = t->ndim >= 1 ? t->strides[0] : 1;
        m.cs = 1;
    }
    return m;
}

inline Mat mat_contig(void *p, neat_dtype dt, int64_t rows, int64_t cols)
{
    Mat m;
    m.p = p;
    m.dt = dt;
    m.rows = rows;
    m.cols = cols;
    m.rs = cols;
    m.cs = 1;
    return m;
}

inline Mat transposed(Mat m)
{
    Mat t = m;
    t.rows = m.cols;
    t.cols = m.rows;
    t.rs = m.cs;
    t.cs = m.rs;
    return t;
}

// Columns [c0, c0 + n) of m.
inline Mat col_slice(Mat m, int64_t c0, int64_t n)
{
    Mat s = m;
    if (m.p) s.p = static_cast<char *>(m.p) + c0 * m.cs * static_cast<int64_t>(dtype_size(m.dt));
    s.cols = n;
    return s;
}

// Rows [r0, r0 + n) of m.
inline Mat row_slice(Mat m, int64_t r0, int64_t n)
{
    return transposed(col_slice(transposed(m), r0, n));
}

// Leading dimension (row stride) of a scratch matrix with `cols` columns of dt: rows start on
// 16-byte boundaries (the carver aligns the first). A single column stays dense.
inline int64_t scratch_ld(neat_dtype dt, int64_t cols)
{
    const int64_t per16 = 16 / static_cast<int64_t>(dtype_size(dt));
    if (cols <= 1) return 1;
    return (cols + per16 - 1) / per16 * per16;
}

// Bytes a block of rows of a (rows, cols) operand may take when it has to be staged through
// scratch (an output or a dy that cuBLAS cannot take in place): the stage is at most this, or one
// row (column) when that is more. Reserved by every call that may need it, so that the size
// query, which sees neither y nor dy, reports what the call will use.
constexpr size_t kStageBytes = size_t(1) << 20;

// Rows of a (rows, cols) matrix of dt per stage block: in [1, rows] (1 when rows == 0).
inline int64_t stage_rows(int64_t rows, int64_t cols, neat_dtype dt)
{
    const int64_t row_bytes = scratch_ld(dt, cols) * static_cast<int64_t>(dtype_size(dt));
    int64_t b = row_bytes > 0 ? static_cast<int64_t>(kStageBytes) / row_bytes : rows;
    if (b > rows) b = rows;
    return b < 1 ? 1 : b;
}

inline int64_t numel(const Mat &m) { return m.rows * m.cols; }

// ---- one backend call -------------------------------------------------------------------------

// Sets the device for the duration of a call and restores the previous one.
struct DeviceScope {
    int prev = -1;
    bool changed = false;
    DeviceScope() = default;
    DeviceScope(const DeviceScope &) = delete;
    DeviceScope &operator=(const DeviceScope &) = delete;
    ~DeviceScope()
    {
        if (changed) (void)cudaSetDevice(prev);
    }
};

struct Ctx {
    const char *fn = "neat_cuda";
    bool dry = true;               // sizing only: carve, but launch nothing and touch no pointer
    bool fused = false;            // the rank-r products through fused.cuh (entry.cuh chooses)
    int device = 0;                // CUDA ordinal of the tensors
    const neat_exec *exec = nullptr;
    void *workspace = nullptr;     // the caller's buffer (NULL while sizing)
    cudaStream_t stream = nullptr; // set by begin_call
    cublasHandle_t blas = nullptr; // set by begin_call (not in dry runs)
    neat_carver carver{nullptr, 0}; // used == 0 until begin_call: a call with no work needs none
    DeviceScope scope;

    void *carve(size_t bytes) { return neat_carve(&carver, bytes); }
    // A row-major (rows, cols) scratch matrix, row stride scratch_ld(dt, cols).
    Mat scratch(neat_dtype dt, int64_t rows, int64_t cols)
    {
        const int64_t ld = scratch_ld(dt, cols);
        size_t n = static_cast<size_t>(rows > 0 ? rows : 0) * static_cast<size_t>(cols > 0 ? ld : 0);
        Mat m = mat_contig(carve(n * dtype_size(dt)), dt, rows, cols);
        m.rs = ld;
        return m;
    }
    // float32 products may round their inputs to TF32 (neat_exec.allow_tf32).
    bool allow_tf32() const { return exec && exec->allow_tf32 != 0; }
};

// Opens a call that has work to do: starts carving the workspace, and (unless dry) selects the
// device and binds this thread's cuBLAS handle for it to the stream and to a slice of the
// workspace, so cuBLAS never allocates. Defined in blas.cu.
neat_status begin_call(Ctx &ctx);

// ---- device-side conversion -------------------------------------------------------------------

__device__ __forceinline__ float widen(float v) { return v; }
__device__ __forceinline__ double widen(double v) { return v; }
__device__ __forceinline__ float widen(__half v) { return __half2float(v); }
__device__ __forceinline__ float widen(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename To> struct Narrow;
template <> struct Narrow<float> {
    __device__ static __forceinline__ float from(double v) { return static_cast<float>(v); }
};
template <> struct Narrow<double> {
    __device__ static __forceinline__ double from(double v) { return v; }
};
template <> struct Narrow<__half> {
    __device__ static __forceinline__ __half from(double v) { return __float2half_rn(static_cast<float>(v)); }
};
template <> struct Narrow<__nv_bfloat16> {
    __device__ static __forceinline__ __nv_bfloat16 from(double v)
    {
        return __float2bfloat16_rn(static_cast<float>(v));
    }
};

// Reads p[i] as Acc (float or double).
template <typename Acc, typename T>
__device__ __forceinline__ Acc load(const T *p, int64_t i)
{
    return static_cast<Acc>(widen(p[i]));
}

// Writes v (float or double) to p[i] in p's dtype, rounding to nearest.
template <typename T, typename Acc>
__device__ __forceinline__ void store(T *p, int64_t i, Acc v)
{
    p[i] = Narrow<T>::from(static_cast<double>(v));
}
// float -> float and float -> half without the detour through double.
template <>
__device__ __forceinline__ void store<float, float>(float *p, int64_t i, float v) { p[i] = v; }
template <>
__device__ __forceinline__ void store<__half, float>(__half *p, int64_t i, float v) { p[i] = __float2half_rn(v); }
template <>
__device__ __forceinline__ void store<__nv_bfloat16, float>(__nv_bfloat16 *p, int64_t i, float v)
{
    p[i] = __float2bfloat16_rn(v);
}

// The C++ type of a dtype, passed by value to the functor of dispatch_dtype.
template <typename T> struct Tag {
    using type = T;
};

// Calls f(Tag<T>{}) with T the C++ type of dt (the one table of dtype -> kernel instantiation).
template <typename F>
inline neat_status dispatch_dtype(neat_dtype dt, F &&f)
{
    switch (dt) {
    case NEAT_FLOAT32: return f(Tag<float>{});
    case NEAT_FLOAT64: return f(Tag<double>{});
    case NEAT_BFLOAT16: return f(Tag<__nv_bfloat16>{});
    case NEAT_FLOAT16: return f(Tag<__half>{});
    }
    return neat_set_error(NEAT_ERR_INTERNAL, "neat_cuda: unknown dtype %d", static_cast<int>(dt));
}

// Shared memory a block kernel may use: what every device grants without cudaFuncSetAttribute.
constexpr size_t kMaxSharedBytes = 48 * 1024;

// Grid for a grid-stride loop over n items.
constexpr int kThreads = 256;
inline unsigned grid_for(int64_t n)
{
    int64_t blocks = (n + kThreads - 1) / kThreads;
    if (blocks > 65535LL * 8) blocks = 65535LL * 8;
    return static_cast<unsigned>(blocks < 1 ? 1 : blocks);
}

} // namespace neat_cuda
