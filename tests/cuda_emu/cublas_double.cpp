// cublas_double.cpp - a strict host stand-in for the cuBLAS routines the backend calls (test only).
//
// It computes what cuBLAS computes (column-major C = alpha op(A) op(B) + beta C, accumulated in
// the compute type in slices of K as a split-K GEMM does, C rounded to its own type, C not read
// when beta == 0; with
// CUBLAS_COMPUTE_32F_FAST_TF32, or a TF32 math mode, float32 inputs rounded to TF32's 10-bit
// mantissa first) and refuses what cuBLAS documents as invalid: a bad op, a negative size, a
// leading dimension below the rows of the stored matrix, a pointer not aligned to its element, a
// type combination cublasGemmEx does not support. It also refuses what is legal for cuBLAS but
// wrong for this library (docs/design.md §2, §4): a GEMM that would make cuBLAS allocate its own workspace
// (cublasSetStream drops the one set before it), a half output on a handle whose math mode allows
// split-K partial sums reduced in that half type (CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION
// missing: the contract is float32 accumulation), a handle used on another device than the one it
// was created on, a stream of another device, C aliasing an input or the workspace. Every refusal
// returns an error status and records a violation (emu_log.h). Each GEMM is logged with its
// compute type, the handle's math mode and whether its operands are 16-byte aligned, and the live
// handles are counted, for the tests to check.
//
// The workspace is overwritten with garbage on every GEMM, as cuBLAS is free to use all of it:
// scratch of the backend that overlapped it would be destroyed and fail the comparison. Its first
// and last kScribbleEdge bytes, that is: scratch carved a few bytes wrong lands at an edge, GEMM
// operands anywhere in it are refused outright, and scribbling (and so faulting in) all of a
// 4 or 32 MiB workspace on every GEMM took most of the emulated tests' time.
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <set>
#include <vector>

#include "cuda_emu.h"

struct cublasContext {
    int device = 0;
    cudaStream_t stream = nullptr;
    bool user_workspace = false; // false: cuBLAS would use (and allocate) its own pool
    void *workspace = nullptr;
    size_t workspace_bytes = 0;
    cublasPointerMode_t pointer_mode = CUBLAS_POINTER_MODE_HOST;
    cublasMath_t math_mode = CUBLAS_DEFAULT_MATH;
    cublasAtomicsMode_t atomics = CUBLAS_ATOMICS_NOT_ALLOWED;
};

namespace {

std::mutex g_mutex;
std::set<cublasHandle_t> g_handles;

int current_device()
{
    int d = -1;
    (void)cudaGetDevice(&d);
    return d;
}

// NOT_INITIALIZED for a handle cublasCreate did not return, as cuBLAS reports it.
bool live(cublasHandle_t h, const char *who)
{
    std::lock_guard<std::mutex> lock(g_mutex);
    if (h && g_handles.count(h)) return true;
    neat_emu_violation("%s: handle %p was not created by cublasCreate", who, static_cast<void *>(h));
    return false;
}

cublasStatus_t refuse(cublasStatus_t st, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
cublasStatus_t refuse(cublasStatus_t st, const char *fmt, ...)
{
    char buf[900];
    va_list ap;
    va_start(ap, fmt);
    std::vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    neat_emu_violation("%s (returning %s)", buf, cublasGetStatusString(st));
    return st;
}

const char *type_name(cudaDataType t)
{
    switch (t) {
    case CUDA_R_16F: return "CUDA_R_16F";
    case CUDA_R_16BF: return "CUDA_R_16BF";
    case CUDA_R_32F: return "CUDA_R_32F";
    case CUDA_R_64F: return "CUDA_R_64F";
    default: return "(a type the double does not emulate)";
    }
}

size_t type_size(cudaDataType t) { return t == CUDA_R_64F ? 8 : t == CUDA_R_32F ? 4 : 2; }

bool is_op(cublasOperation_t op)
{
    return op == CUBLAS_OP_N || op == CUBLAS_OP_T || op == CUBLAS_OP_C;
}

// Element i of a typed array, widened exactly.
double load(const void *p, cudaDataType t, int64_t i)
{
    switch (t) {
    case CUDA_R_64F: return static_cast<const double *>(p)[i];
    case CUDA_R_32F: return static_cast<const float *>(p)[i];
    case CUDA_R_16F: return __half2float(static_cast<const __half *>(p)[i]);
    default: return __bfloat162float(static_cast<const __nv_bfloat16 *>(p)[i]);
    }
}

// Writes the result computed in float (or double for 64F), rounding to nearest as cuBLAS does.
void store_f(void *p, cudaDataType t, int64_t i, float v)
{
    switch (t) {
    case CUDA_R_32F: static_cast<float *>(p)[i] = v; break;
    case CUDA_R_16F: static_cast<__half *>(p)[i] = __float2half_rn(v); break;
    default: static_cast<__nv_bfloat16 *>(p)[i] = __float2bfloat16_rn(v); break;
    }
}

// TF32 keeps 10 mantissa bits; cuBLAS rounds float inputs to it when the math mode allows TF32.
float to_tf32(float v)
{
    if (!std::isfinite(v)) return v;
    uint32_t u;
    std::memcpy(&u, &v, 4);
    u = (u + 0x1000u) & ~0x1FFFu;
    std::memcpy(&v, &u, 4);
    return v;
}

// op(A) as m rows of k values and op(B) as n columns of k values, each contiguous, widened to the
// accumulation type Acc (float inputs rounded to TF32 first when tf32).
template <typename Acc, typename AAt, typename BAt>
void widen_operands(const void *A, cudaDataType At, const void *B, cudaDataType Bt, int64_t m,
                    int64_t n, int64_t k, AAt a_at, BAt b_at, bool tf32, std::vector<Acc> *ar,
                    std::vector<Acc> *bc)
{
    ar->resize(static_cast<size_t>(m * k));
    bc->resize(static_cast<size_t>(n * k));
    for (int64_t i = 0; i < m; ++i)
        for (int64_t p = 0; p < k; ++p) {
            Acc v = static_cast<Acc>(load(A, At, a_at(i, p)));
            (*ar)[i * k + p] = tf32 ? static_cast<Acc>(to_tf32(static_cast<float>(v))) : v;
        }
    for (int64_t j = 0; j < n; ++j)
        for (int64_t p = 0; p < k; ++p) {
            Acc v = static_cast<Acc>(load(B, Bt, b_at(p, j)));
            (*bc)[j * k + p] = tf32 ? static_cast<Acc>(to_tf32(static_cast<float>(v))) : v;
        }
}

// sum x[p] y[p] in Acc, as a GEMM that splits K does it: a running sum over each slice of
// kSlice terms, the slices' sums added up in order. (cuBLAS documents no order; a plain
// running sum over tens of thousands of same-sign terms would lose more than docs/design.md §4's float32
// bound, which cuBLAS's split-K kernels and the CPU backend's K slices both stay within.)
template <typename Acc>
Acc blocked_dot(const Acc *x, const Acc *y, int64_t k)
{
    constexpr int64_t kSlice = 256;
    Acc total = 0;
    for (int64_t p0 = 0; p0 < k; p0 += kSlice) {
        const int64_t p1 = p0 + kSlice < k ? p0 + kSlice : k;
        Acc acc = 0;
        for (int64_t p = p0; p < p1; ++p) acc += x[p] * y[p];
        total += acc;
    }
    return total;
}

// Bytes [lo, hi) a column-major (rows, cols) matrix with leading dimension ld can touch.
struct Span {
    uintptr_t lo = 0, hi = 0;
};
Span span_of(const void *p, cudaDataType t, int64_t rows, int64_t cols, int64_t ld)
{
    Span s;
    if (rows <= 0 || cols <= 0) return s;
    s.lo = reinterpret_cast<uintptr_t>(p);
    s.hi = s.lo + static_cast<uintptr_t>(((cols - 1) * ld + rows) * static_cast<int64_t>(type_size(t)));
    return s;
}
bool overlap(Span a, Span b) { return a.lo < a.hi && b.lo < b.hi && a.lo < b.hi && b.lo < a.hi; }

} // namespace

extern "C" {

const char *cublasGetStatusString(cublasStatus_t status)
{
    switch (status) {
    case CUBLAS_STATUS_SUCCESS: return "the operation completed successfully";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "the library was not initialized";
    case CUBLAS_STATUS_ALLOC_FAILED: return "the resource allocation failed";
    case CUBLAS_STATUS_INVALID_VALUE: return "an invalid numeric value was used as an argument";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "an absent device architectural feature is required";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "the GPU program failed to execute";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "an internal operation failed";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "the functionality requested is not supported";
    default: return "unknown error";
    }
}

cublasStatus_t cublasCreate_v2(cublasHandle_t *handle)
{
    if (!handle) return refuse(CUBLAS_STATUS_INVALID_VALUE, "cublasCreate: handle is NULL");
    cublasHandle_t h = new cublasContext;
    h->device = current_device(); // a handle belongs to the device current at creation
    std::lock_guard<std::mutex> lock(g_mutex);
    g_handles.insert(h);
    *handle = h;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasDestroy_v2(cublasHandle_t handle)
{
    if (!live(handle, "cublasDestroy")) return CUBLAS_STATUS_NOT_INITIALIZED;
    std::lock_guard<std::mutex> lock(g_mutex);
    g_handles.erase(handle);
    delete handle;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetStream_v2(cublasHandle_t handle, cudaStream_t stream)
{
    if (!live(handle, "cublasSetStream")) return CUBLAS_STATUS_NOT_INITIALIZED;
    if (current_device() != handle->device)
        return refuse(CUBLAS_STATUS_INVALID_VALUE,
                      "cublasSetStream: handle of device %d used while device %d is current",
                      handle->device, current_device());
    if (!neat_emu_stream_ok("cublasSetStream", stream)) return CUBLAS_STATUS_INVALID_VALUE;
    handle->stream = stream;
    // Documented: setting the stream puts the handle back on cuBLAS's default workspace pool.
    handle->user_workspace = false;
    handle->workspace = nullptr;
    handle->workspace_bytes = 0;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetWorkspace_v2(cublasHandle_t handle, void *workspace, size_t bytes)
{
    if (!live(handle, "cublasSetWorkspace")) return CUBLAS_STATUS_NOT_INITIALIZED;
    if (reinterpret_cast<uintptr_t>(workspace) % 256 != 0)
        return refuse(CUBLAS_STATUS_INVALID_VALUE,
                      "cublasSetWorkspace: workspace %p is not aligned to 256 bytes", workspace);
    if (bytes > 0 && !workspace)
        return refuse(CUBLAS_STATUS_INVALID_VALUE,
                      "cublasSetWorkspace: %zu bytes at a NULL pointer", bytes);
    handle->user_workspace = true;
    handle->workspace = workspace;
    handle->workspace_bytes = bytes;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetPointerMode_v2(cublasHandle_t handle, cublasPointerMode_t mode)
{
    if (!live(handle, "cublasSetPointerMode")) return CUBLAS_STATUS_NOT_INITIALIZED;
    if (mode != CUBLAS_POINTER_MODE_HOST && mode != CUBLAS_POINTER_MODE_DEVICE)
        return refuse(CUBLAS_STATUS_INVALID_VALUE, "cublasSetPointerMode: mode %d", (int)mode);
    handle->pointer_mode = mode;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetAtomicsMode(cublasHandle_t handle, cublasAtomicsMode_t mode)
{
    if (!live(handle, "cublasSetAtomicsMode")) return CUBLAS_STATUS_NOT_INITIALIZED;
    if (mode != CUBLAS_ATOMICS_NOT_ALLOWED && mode != CUBLAS_ATOMICS_ALLOWED)
        return refuse(CUBLAS_STATUS_INVALID_VALUE, "cublasSetAtomicsMode: mode %d", (int)mode);
    handle->atomics = mode;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetMathMode(cublasHandle_t handle, cublasMath_t mode)
{
    if (!live(handle, "cublasSetMathMode")) return CUBLAS_STATUS_NOT_INITIALIZED;
    const int base = mode & ~CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION;
    if (base != CUBLAS_DEFAULT_MATH && base != CUBLAS_PEDANTIC_MATH &&
        base != CUBLAS_TF32_TENSOR_OP_MATH && base != CUBLAS_TENSOR_OP_MATH)
        return refuse(CUBLAS_STATUS_INVALID_VALUE, "cublasSetMathMode: mode %d not emulated",
                      (int)mode);
    handle->math_mode = mode;
    return CUBLAS_STATUS_SUCCESS;
}

int neat_emu_blas_live_handles(void)
{
    std::lock_guard<std::mutex> lock(g_mutex);
    return static_cast<int>(g_handles.size());
}

cublasStatus_t cublasGemmEx_64(cublasHandle_t handle, cublasOperation_t transa,
                               cublasOperation_t transb, int64_t m, int64_t n, int64_t k,
                               const void *alpha, const void *A, cudaDataType Atype, int64_t lda,
                               const void *B, cudaDataType Btype, int64_t ldb, const void *beta,
                               void *C, cudaDataType Ctype, int64_t ldc,
                               cublasComputeType_t computeType, cublasGemmAlgo_t algo)
{
    const char *fn = "cublasGemmEx_64";
    if (!live(handle, fn)) return CUBLAS_STATUS_NOT_INITIALIZED;
    auto al16 = [](const void *p, cudaDataType t, int64_t ld) {
        return reinterpret_cast<uintptr_t>(p) % 16 == 0 &&
               (ld * static_cast<int64_t>(type_size(t))) % 16 == 0;
    };
    neat_emu_log_push_gemm(fn, handle->stream, (int)computeType, (int)handle->math_mode,
                           al16(A, Atype, lda) && al16(B, Btype, ldb) && al16(C, Ctype, ldc));
    const int dev = current_device();
    if (dev != handle->device)
        return refuse(CUBLAS_STATUS_INVALID_VALUE,
                      "%s: handle created on device %d used while device %d is current", fn,
                      handle->device, dev);
    if (!neat_emu_stream_ok(fn, handle->stream)) return CUBLAS_STATUS_INVALID_VALUE;

    // Argument rules of cublasGemmEx, in the order its documentation lists them.
    if (!is_op(transa) || !is_op(transb))
        return refuse(CUBLAS_STATUS_INVALID_VALUE, "%s: transa %d / transb %d is not N, T or C", fn,
                      (int)transa, (int)transb);
    if (m < 0 || n < 0 || k < 0)
        return refuse(CUBLAS_STATUS_INVALID_VALUE, "%s: m %lld, n %lld, k %lld must be >= 0", fn,
                      (long long)m, (long long)n, (long long)k);
    const bool na = transa == CUBLAS_OP_N, nb = transb == CUBLAS_OP_N;
    const int64_t a_rows = na ? m : k, a_cols = na ? k : m; // A as stored
    const int64_t b_rows = nb ? k : n, b_cols = nb ? n : k; // B as stored
    auto max1 = [](int64_t v) { return v > 1 ? v : int64_t{1}; };
    if (lda < max1(a_rows))
        return refuse(CUBLAS_STATUS_INVALID_VALUE, "%s: lda %lld < max(1, %s) = %lld", fn,
                      (long long)lda, na ? "m" : "k", (long long)max1(a_rows));
    if (ldb < max1(b_rows))
        return refuse(CUBLAS_STATUS_INVALID_VALUE, "%s: ldb %lld < max(1, %s) = %lld", fn,
                      (long long)ldb, nb ? "k" : "n", (long long)max1(b_rows));
    if (ldc < max1(m))
        return refuse(CUBLAS_STATUS_INVALID_VALUE, "%s: ldc %lld < max(1, m) = %lld", fn,
                      (long long)ldc, (long long)max1(m));

    // Type combinations of the cublasGemmEx table that this double emulates: 64F throughout with
    // COMPUTE_64F; with COMPUTE_32F, A and B of one type among 16F, 16BF, 32F and C either of that
    // type or 32F. (Others exist in cuBLAS, e.g. 8I inputs, but the backend has no use for them.)
    const bool c64 = computeType == CUBLAS_COMPUTE_64F || computeType == CUBLAS_COMPUTE_64F_PEDANTIC;
    const bool c32 = computeType == CUBLAS_COMPUTE_32F || computeType == CUBLAS_COMPUTE_32F_PEDANTIC;
    const bool tf32 = computeType == CUBLAS_COMPUTE_32F_FAST_TF32;
    bool types_ok;
    if (c64)
        types_ok = Atype == CUDA_R_64F && Btype == CUDA_R_64F && Ctype == CUDA_R_64F;
    else if (c32)
        types_ok = Atype == Btype &&
                   (Atype == CUDA_R_16F || Atype == CUDA_R_16BF || Atype == CUDA_R_32F) &&
                   (Ctype == Atype || Ctype == CUDA_R_32F);
    else if (tf32)
        types_ok = Atype == CUDA_R_32F && Btype == CUDA_R_32F && Ctype == CUDA_R_32F;
    else
        types_ok = false;
    if (!types_ok)
        return refuse(CUBLAS_STATUS_NOT_SUPPORTED,
                      "%s: A %s, B %s, C %s with compute type %d is not a supported combination",
                      fn, type_name(Atype), type_name(Btype), type_name(Ctype), (int)computeType);
    if (!(algo == CUBLAS_GEMM_DEFAULT || (algo >= CUBLAS_GEMM_ALGO0 && algo <= CUBLAS_GEMM_ALGO23) ||
          (algo >= CUBLAS_GEMM_DEFAULT_TENSOR_OP && algo <= CUBLAS_GEMM_ALGO15_TENSOR_OP)))
        return refuse(CUBLAS_STATUS_INVALID_VALUE, "%s: algo %d", fn, (int)algo);
    if (!alpha || !beta)
        return refuse(CUBLAS_STATUS_INVALID_VALUE, "%s: alpha or beta is NULL", fn);
    // Every element of a device array is aligned to its size; anything else faults on the GPU.
    const struct {
        const void *p;
        cudaDataType t;
        const char *name;
    } arrays[3] = {{A, Atype, "A"}, {B, Btype, "B"}, {C, Ctype, "C"}};
    for (const auto &a : arrays)
        if (reinterpret_cast<uintptr_t>(a.p) % type_size(a.t) != 0)
            return refuse(CUBLAS_STATUS_INVALID_VALUE, "%s: %s at %p is not aligned to its %zu-byte "
                          "elements", fn, a.name, a.p, type_size(a.t));

    // Policy of this library (docs/design.md §4): float32 accumulation, also across split-K partial sums
    // that cuBLAS may otherwise reduce in a half output type.
    if ((Ctype == CUDA_R_16F || Ctype == CUDA_R_16BF) &&
        !(handle->math_mode & CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION))
        return refuse(CUBLAS_STATUS_INVALID_VALUE,
                      "%s: %s output on a handle with math mode %d, which lets cuBLAS reduce "
                      "split-K partial sums in %s (set CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_"
                      "REDUCTION)", fn, type_name(Ctype), (int)handle->math_mode, type_name(Ctype));

    // Policy of this library rather than of cuBLAS: no GEMM may make cuBLAS allocate.
    if (!handle->user_workspace)
        return refuse(CUBLAS_STATUS_INVALID_VALUE,
                      "%s: no workspace was set since the last cublasSetStream, so cuBLAS would "
                      "allocate its own (set the workspace after the stream)",
                      fn);
    if (m == 0 || n == 0) return CUBLAS_STATUS_SUCCESS;

    const Span sa = span_of(A, Atype, k > 0 ? a_rows : 0, a_cols, lda);
    const Span sb = span_of(B, Btype, k > 0 ? b_rows : 0, b_cols, ldb);
    const Span sc = span_of(C, Ctype, m, n, ldc);
    Span sw;
    sw.lo = reinterpret_cast<uintptr_t>(handle->workspace);
    sw.hi = sw.lo + handle->workspace_bytes;
    if (k > 0 && (!A || !B))
        return refuse(CUBLAS_STATUS_INVALID_VALUE, "%s: A or B is NULL with k = %lld", fn, (long long)k);
    if (!C) return refuse(CUBLAS_STATUS_INVALID_VALUE, "%s: C is NULL", fn);
    if (overlap(sc, sa) || overlap(sc, sb))
        return refuse(CUBLAS_STATUS_INVALID_VALUE, "%s: C overlaps %s", fn,
                      overlap(sc, sa) ? "A" : "B");
    if (overlap(sw, sa) || overlap(sw, sb) || overlap(sw, sc))
        return refuse(CUBLAS_STATUS_INVALID_VALUE, "%s: the cuBLAS workspace overlaps %s", fn,
                      overlap(sw, sa) ? "A" : overlap(sw, sb) ? "B" : "C");

    // With the device pointer mode the scalars live in device memory; here that is the same
    // address space, so reading them is right in both modes.
    constexpr size_t kScribbleEdge = 64 << 10;
    unsigned char *ws = static_cast<unsigned char *>(handle->workspace);
    const size_t wn = handle->workspace_bytes;
    if (wn <= 2 * kScribbleEdge) {
        if (wn) std::memset(ws, 0xFF, wn);
    } else {
        std::memset(ws, 0xFF, kScribbleEdge);
        std::memset(ws + wn - kScribbleEdge, 0xFF, kScribbleEdge);
    }
    auto a_at = [&](int64_t i, int64_t p) { return na ? i + p * lda : p + i * lda; };
    auto b_at = [&](int64_t p, int64_t j) { return nb ? p + j * ldb : j + p * ldb; };
    if (c64) {
        const double al = *static_cast<const double *>(alpha), be = *static_cast<const double *>(beta);
        std::vector<double> ar, bc;
        widen_operands(A, Atype, B, Btype, m, n, k, a_at, b_at, false, &ar, &bc);
        double *Cd = static_cast<double *>(C);
        for (int64_t j = 0; j < n; ++j)
            for (int64_t i = 0; i < m; ++i) {
                const double acc = blocked_dot(ar.data() + i * k, bc.data() + j * k, k);
                // beta == 0: C is not read, so NaN or garbage in it does not survive
                Cd[i + j * ldc] = be == 0 ? al * acc : al * acc + be * Cd[i + j * ldc];
            }
        return CUBLAS_STATUS_SUCCESS;
    }
    const int base_math = handle->math_mode & ~CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION;
    const bool round_tf32 = Atype == CUDA_R_32F && computeType != CUBLAS_COMPUTE_32F_PEDANTIC &&
                            (tf32 || base_math == CUBLAS_TF32_TENSOR_OP_MATH);
    const float al = *static_cast<const float *>(alpha), be = *static_cast<const float *>(beta);
    std::vector<float> ar, bc;
    widen_operands(A, Atype, B, Btype, m, n, k, a_at, b_at, round_tf32, &ar, &bc);
    for (int64_t j = 0; j < n; ++j)
        for (int64_t i = 0; i < m; ++i) {
            const float acc = blocked_dot(ar.data() + i * k, bc.data() + j * k, k);
            const int64_t ci = i + j * ldc;
            const float out = be == 0 ? al * acc : al * acc + be * static_cast<float>(load(C, Ctype, ci));
            store_f(C, Ctype, ci, out);
        }
    return CUBLAS_STATUS_SUCCESS;
}

} // extern "C"
