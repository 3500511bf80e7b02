// blas.cu - cuBLAS handle pools, call setup and the strided GEMM wrapper.
#include "blas.cuh"

#include <atomic>
#include <cstdlib>
#include <mutex>
#include <vector>

#include "elementwise.cuh"

namespace neat_cuda {

namespace {

constexpr int kMaxDevices = 64;
constexpr size_t kBlasAlign = 256; // cublasSetWorkspace wants 256-byte alignment

// cuBLAS handles, pooled per device as PyTorch pools its own: a thread takes a handle of a device
// from the pool on its first call there, keeps it while it lives, and gives it back when it exits,
// so the handles ever created number the most threads that used one device at once, not every
// thread ever started. Handles are never destroyed (destroying them at process exit races the
// CUDA runtime's own teardown), and the pool is never freed either: a thread may exit after
// static destructors have run. A handle is bound to the caller's stream and workspace at the
// start of every call, so whichever thread held it before does not matter.
struct HandlePool {
    std::mutex mutex;
    std::vector<cublasHandle_t> idle[kMaxDevices];
};

HandlePool &handle_pool()
{
    static HandlePool *pool = new HandlePool; // leaked on purpose, see above
    return *pool;
}

struct ThreadHandles {
    cublasHandle_t h[kMaxDevices] = {};
    ~ThreadHandles()
    {
        HandlePool &pool = handle_pool();
        std::lock_guard<std::mutex> lock(pool.mutex);
        for (int d = 0; d < kMaxDevices; ++d)
            if (h[d]) pool.idle[d].push_back(h[d]);
    }
};

thread_local ThreadHandles t_handles;

// This thread's handle for `device` (the current device): its own, one from the pool, or new.
neat_status thread_handle(Ctx &ctx, int device, cublasHandle_t *out)
{
    cublasHandle_t &h = t_handles.h[device];
    if (!h) {
        HandlePool &pool = handle_pool();
        std::lock_guard<std::mutex> lock(pool.mutex);
        if (!pool.idle[device].empty()) {
            h = pool.idle[device].back();
            pool.idle[device].pop_back();
        }
    }
    if (!h) {
        cublasHandle_t fresh = nullptr;
        NEAT_CUBLAS_CHECK(ctx, cublasCreate(&fresh));
        // Products accumulate in their compute type even where cuBLAS would be allowed to reduce
        // split-K partial sums in a half output type (docs/design.md §4: float32 accumulation). TF32 is
        // chosen per call by the compute type, so the handle's math mode stays the default.
        // No atomics: results do not depend on the run.
        const cublasMath_t math = static_cast<cublasMath_t>(
            CUBLAS_DEFAULT_MATH | CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION);
        cublasStatus_t st = cublasSetMathMode(fresh, math);
        if (st == CUBLAS_STATUS_SUCCESS) st = cublasSetAtomicsMode(fresh, CUBLAS_ATOMICS_NOT_ALLOWED);
        if (st == CUBLAS_STATUS_SUCCESS) st = cublasSetPointerMode(fresh, CUBLAS_POINTER_MODE_HOST);
        if (st != CUBLAS_STATUS_SUCCESS) {
            (void)cublasDestroy(fresh);
            return neat_set_error(NEAT_ERR_BACKEND, "%s: setting up a cuBLAS handle failed: %s",
                                  ctx.fn, cublasGetStatusString(st));
        }
        h = fresh;
    }
    *out = h;
    return NEAT_OK;
}

// Compute capability major of each device, asked once (0: not asked yet).
std::atomic<int> g_cc_major[kMaxDevices];

cudaDataType_t blas_type(neat_dtype dt)
{
    switch (dt) {
    case NEAT_FLOAT64: return CUDA_R_64F;
    case NEAT_BFLOAT16: return CUDA_R_16BF;
    case NEAT_FLOAT16: return CUDA_R_16F;
    default: return CUDA_R_32F;
    }
}

// Column-major description of a row-major logical view: col_major (stored with unit row
// stride, ld = column stride) or row-major (unit column stride, ld = row stride).
bool blas_form(const Mat &m, bool *col_major, int64_t *ld)
{
    const int64_t rows1 = m.rows > 1 ? m.rows : 1, cols1 = m.cols > 1 ? m.cols : 1;
    const int64_t rs = m.rows <= 1 ? 1 : m.rs; // the stride of a size-1 dim never matters
    const int64_t cs = m.cols <= 1 ? 1 : m.cs;
    if (rs == 1 && (m.cols <= 1 || cs >= rows1)) {
        *col_major = true;
        *ld = m.cols <= 1 ? rows1 : cs;
        return true;
    }
    if (cs == 1 && (m.rows <= 1 || rs >= cols1)) {
        *col_major = false;
        *ld = m.rows <= 1 ? cols1 : rs;
        return true;
    }
    return false;
}

} // namespace

neat_status blas_workspace_bytes(Ctx &ctx, size_t *bytes)
{
    static const long long env_kb = [] {
        const char *env = std::getenv("NEAT_CUBLAS_WORKSPACE_KB");
        if (env && *env) {
            char *end = nullptr;
            unsigned long long kb = std::strtoull(env, &end, 10);
            if (end && *end == '\0') return static_cast<long long>(kb);
        }
        return -1LL;
    }();
    if (env_kb >= 0) {
        *bytes = static_cast<size_t>(env_kb) * 1024;
        return NEAT_OK;
    }
    int major = g_cc_major[ctx.device].load(std::memory_order_relaxed);
    if (major == 0) {
        NEAT_CUDA_CHECK(ctx, cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor,
                                                    ctx.device));
        g_cc_major[ctx.device].store(major, std::memory_order_relaxed);
    }
    *bytes = static_cast<size_t>(major >= 9 ? 32 : 4) << 20;
    return NEAT_OK;
}

neat_status begin_call(Ctx &ctx)
{
    const int device = ctx.device;
    DeviceScope &scope = ctx.scope;
    ctx.stream = ctx.exec ? static_cast<cudaStream_t>(ctx.exec->stream) : nullptr;
    ctx.carver = neat_carver_begin(ctx.dry ? nullptr : ctx.workspace);
    if (device < 0 || device >= kMaxDevices)
        return neat_set_error(NEAT_ERR_INVALID_ARGUMENT, "%s: cuda device index %d out of range",
                              ctx.fn, device);
    size_t wbytes = 0;
    NEAT_CUDA_TRY(blas_workspace_bytes(ctx, &wbytes));
    void *wraw = ctx.carve(wbytes + kBlasAlign);
    if (ctx.dry) return NEAT_OK;
    int cur = -1;
    NEAT_CUDA_CHECK(ctx, cudaGetDevice(&cur));
    if (cur != device) {
        NEAT_CUDA_CHECK(ctx, cudaSetDevice(device));
        scope.prev = cur;
        scope.changed = true;
    }
    cublasHandle_t h = nullptr;
    NEAT_CUDA_TRY(thread_handle(ctx, device, &h));
    // SetStream resets the workspace to cuBLAS's own pool, so the workspace comes second.
    NEAT_CUBLAS_CHECK(ctx, cublasSetStream(h, ctx.stream));
    uintptr_t u = reinterpret_cast<uintptr_t>(wraw);
    void *wal = reinterpret_cast<void *>((u + kBlasAlign - 1) & ~static_cast<uintptr_t>(kBlasAlign - 1));
    NEAT_CUBLAS_CHECK(ctx, cublasSetWorkspace(h, wbytes ? wal : nullptr, wbytes));
    ctx.blas = h;
    return NEAT_OK;
}

bool blas_ready(const Mat &m)
{
    bool cm;
    int64_t ld;
    return blas_form(m, &cm, &ld);
}

neat_status gemm(Ctx &ctx, Mat C, Mat A, Mat B, double alpha, double beta)
{
    if (A.rows != C.rows || B.cols != C.cols || A.cols != B.rows)
        return neat_set_error(NEAT_ERR_INTERNAL,
                              "%s: gemm shapes (%lld x %lld) = (%lld x %lld)(%lld x %lld)", ctx.fn,
                              (long long)C.rows, (long long)C.cols, (long long)A.rows,
                              (long long)A.cols, (long long)B.rows, (long long)B.cols);
    const bool c_ok = C.dt == A.dt || (is_half(A.dt) && C.dt == NEAT_FLOAT32);
    if (A.dt != B.dt || !c_ok)
        return neat_set_error(NEAT_ERR_INTERNAL, "%s: gemm dtypes A=%d B=%d C=%d not supported",
                              ctx.fn, (int)A.dt, (int)B.dt, (int)C.dt);
    if (ctx.dry || C.rows == 0 || C.cols == 0) return NEAT_OK;
    if (A.cols == 0) { // empty sum
        if (beta == 0.0) return launch_fill(ctx, C, 0.0);
        return beta == 1.0 ? NEAT_OK : launch_convert(ctx, C, C, beta);
    }
    // cuBLAS is column-major. Make C column-major: if it is stored row-major, compute
    // C^T = B^T A^T instead (same memory, operands swapped and transposed).
    bool c_cm;
    int64_t ldc;
    if (!blas_form(C, &c_cm, &ldc))
        return neat_set_error(NEAT_ERR_INTERNAL, "%s: gemm output not blas-ready", ctx.fn);
    Mat X = A, Y = B, Cm = C;
    if (!c_cm) {
        X = transposed(B);
        Y = transposed(A);
        Cm = transposed(C);
    }
    bool x_cm, y_cm;
    int64_t ldx, ldy;
    if (!blas_form(X, &x_cm, &ldx) || !blas_form(Y, &y_cm, &ldy))
        return neat_set_error(NEAT_ERR_INTERNAL, "%s: gemm operand not blas-ready", ctx.fn);
    // A row-major X is the transpose of a column-major matrix with ld = its row stride.
    const cublasOperation_t opx = x_cm ? CUBLAS_OP_N : CUBLAS_OP_T;
    const cublasOperation_t opy = y_cm ? CUBLAS_OP_N : CUBLAS_OP_T;
    const int64_t m = Cm.rows, n = Cm.cols, k = X.cols;
    if (A.dt == NEAT_FLOAT64) {
        const double a = alpha, b = beta;
        NEAT_CUBLAS_CHECK(ctx, cublasGemmEx_64(ctx.blas, opx, opy, m, n, k, &a, X.p, CUDA_R_64F, ldx,
                                               Y.p, CUDA_R_64F, ldy, &b, Cm.p, CUDA_R_64F, ldc,
                                               CUBLAS_COMPUTE_64F, CUBLAS_GEMM_DEFAULT));
    } else {
        const float a = static_cast<float>(alpha), b = static_cast<float>(beta);
        // TF32 only ever for float32 inputs (half inputs already have fewer mantissa bits)
        const cublasComputeType_t compute = A.dt == NEAT_FLOAT32 && ctx.allow_tf32()
                                                ? CUBLAS_COMPUTE_32F_FAST_TF32
                                                : CUBLAS_COMPUTE_32F;
        NEAT_CUBLAS_CHECK(ctx, cublasGemmEx_64(ctx.blas, opx, opy, m, n, k, &a, X.p, blas_type(A.dt),
                                               ldx, Y.p, blas_type(A.dt), ldy, &b, Cm.p,
                                               blas_type(C.dt), ldc, compute, CUBLAS_GEMM_DEFAULT));
    }
    return NEAT_OK;
}

neat_status ready_input(Ctx &ctx, Mat in, neat_dtype want, Mat *out)
{
    if (in.dt == want && blas_ready(in)) {
        *out = in;
        return NEAT_OK;
    }
    *out = ctx.scratch(want, in.rows, in.cols);
    return launch_convert(ctx, *out, in);
}

neat_status begin_output(Ctx &ctx, Mat user, neat_dtype ab, Output *out)
{
    const bool type_ok = user.dt == ab || (is_half(ab) && user.dt == NEAT_FLOAT32);
    out->user = user;
    if (type_ok && blas_ready(user)) {
        out->work = user;
        out->temp = false;
        return NEAT_OK;
    }
    out->work = ctx.scratch(type_ok ? user.dt : acc_dtype(ab), user.rows, user.cols);
    out->temp = true;
    return NEAT_OK;
}

neat_status finish_output(Ctx &ctx, const Output &out)
{
    return out.temp ? launch_convert(ctx, out.user, out.work) : NEAT_OK;
}

} // namespace neat_cuda
