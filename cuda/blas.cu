// blas.cu - cuBLAS handle cache, call setup and the strided GEMM wrapper.
#include "blas.cuh"

#include <cstdlib>

#include "elementwise.cuh"

namespace neat_cuda {

namespace {

constexpr int kMaxDevices = 64;
constexpr size_t kBlasAlign = 256; // cublasSetWorkspace wants 256-byte alignment

// One handle per (thread, device), created on first use and kept for the thread's life (never
// destroyed: destroying handles at process exit races the CUDA runtime's own teardown). A
// handle is bound to the caller's stream and workspace at the start of every call.
thread_local cublasHandle_t t_handles[kMaxDevices] = {};

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

size_t blas_workspace_bytes()
{
    static const size_t bytes = [] {
        const char *env = std::getenv("NEAT_CUBLAS_WORKSPACE_KB");
        if (env && *env) {
            char *end = nullptr;
            unsigned long long kb = std::strtoull(env, &end, 10);
            if (end && *end == '\0') return static_cast<size_t>(kb) * 1024;
        }
        return static_cast<size_t>(4) << 20;
    }();
    return bytes;
}

neat_status begin_call(Ctx &ctx)
{
    const int device = ctx.device;
    DeviceScope &scope = ctx.scope;
    ctx.stream = ctx.exec ? static_cast<cudaStream_t>(ctx.exec->stream) : nullptr;
    ctx.carver = neat_carver_begin(ctx.dry ? nullptr : ctx.workspace);
    const size_t wbytes = blas_workspace_bytes();
    void *wraw = ctx.carve(wbytes + kBlasAlign);
    if (ctx.dry) return NEAT_OK;
    if (device < 0 || device >= kMaxDevices)
        return neat_set_error(NEAT_ERR_INVALID_ARGUMENT, "%s: cuda device index %d out of range",
                              ctx.fn, device);
    int cur = -1;
    NEAT_CUDA_CHECK(ctx, cudaGetDevice(&cur));
    if (cur != device) {
        NEAT_CUDA_CHECK(ctx, cudaSetDevice(device));
        scope.prev = cur;
        scope.changed = true;
    }
    cublasHandle_t &h = t_handles[device];
    if (!h) {
        NEAT_CUBLAS_CHECK(ctx, cublasCreate(&h));
        // Plain float32 arithmetic (no TF32), no atomics: results do not depend on the run.
        NEAT_CUBLAS_CHECK(ctx, cublasSetMathMode(h, CUBLAS_DEFAULT_MATH));
        NEAT_CUBLAS_CHECK(ctx, cublasSetAtomicsMode(h, CUBLAS_ATOMICS_NOT_ALLOWED));
        NEAT_CUBLAS_CHECK(ctx, cublasSetPointerMode(h, CUBLAS_POINTER_MODE_HOST));
    }
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
        NEAT_CUBLAS_CHECK(ctx, cublasGemmEx_64(ctx.blas, opx, opy, m, n, k, &a, X.p, blas_type(A.dt),
                                               ldx, Y.p, blas_type(A.dt), ldy, &b, Cm.p,
                                               blas_type(C.dt), ldc, CUBLAS_COMPUTE_32F,
                                               CUBLAS_GEMM_DEFAULT));
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
