// quant.cu - the dequantize kernel and the panel loop of a quantized W's products (quant.cuh).
//
// The values must be bitsandbytes' own, as ops/quant.c forms them: float32 products and sums,
// each rounded on its own in this order: code * absmax; code2 * absmax2, then + offset;
// (CB * SCB) * 7.874015718698502e-3f. nvcc would contract the nested absmax into one FMA, so the
// device code spells out __fmul_rn / __fadd_rn, which it never contracts (the emulated host build
// compiles this file with -ffp-contract=off instead). The float32 value is then stored in the
// panel's dtype, rounded once (exact for float64), as bitsandbytes' dequantize does for its
// output dtype.
#include "quant.cuh"

#include <cstdlib>

#include "blas.cuh"
#include "elementwise.cuh"
#include "launch.cuh"

namespace neat_cuda {

namespace {

// 1/127 as float32: what bitsandbytes' int8_vectorwise_dequant multiplies CB * SCB by.
constexpr float kInt8Scale = 7.874015718698502e-3f;

__device__ __forceinline__ float mul_rn(float a, float b)
{
#ifdef NEAT_CUDA_EMULATE
    return a * b;
#else
    return __fmul_rn(a, b);
#endif
}

__device__ __forceinline__ float add_rn(float a, float b)
{
#ifdef NEAT_CUDA_EMULATE
    return a + b;
#else
    return __fadd_rn(a, b);
#endif
}

// The descriptor by value, as the kernel reads it.
struct QArgs {
    const uint8_t *data;
    const float *code, *absmax, *code2, *absmax2, *scb;
    const uint8_t *absmax_q;
    int64_t d_in, blocksize, blocksize2, row_stride;
    float offset;
    int four_bit, nested;
};

QArgs qargs_of(const neat_qweight &q)
{
    QArgs a;
    a.data = static_cast<const uint8_t *>(q.data);
    a.code = q.code;
    a.absmax = q.absmax;
    a.code2 = q.code2;
    a.absmax2 = q.absmax2;
    a.scb = q.scb;
    a.absmax_q = q.absmax_q;
    a.d_in = q.d_in;
    a.blocksize = q.blocksize;
    a.blocksize2 = q.blocksize2;
    a.row_stride = q.row_stride;
    a.offset = q.offset;
    a.four_bit = q.format != NEAT_QFMT_INT8_ROW;
    a.nested = q.nested;
    return a;
}

__device__ __forceinline__ float dequant_one(const QArgs &q, int64_t i, int64_t k)
{
    if (!q.four_bit) {
        const int8_t *cb = static_cast<const int8_t *>(static_cast<const void *>(q.data));
        return mul_rn(mul_rn(static_cast<float>(cb[i * q.row_stride + k]), q.scb[i]), kInt8Scale);
    }
    const int64_t e = i * q.d_in + k, blk = e / q.blocksize;
    const unsigned byte = q.data[e >> 1];
    const unsigned c = (e & 1) ? (byte & 15u) : (byte >> 4);
    const float s =
        q.nested ? add_rn(mul_rn(q.code2[q.absmax_q[blk]], q.absmax2[blk / q.blocksize2]), q.offset)
                 : q.absmax[blk];
    return mul_rn(q.code[c], s);
}

// dst[r * ld + c] = W[i0 + r, k0 + c]: consecutive threads take consecutive columns, so the
// codes are read and the panel written coalesced.
template <typename T>
__global__ void dequant_kernel(QArgs q, int64_t i0, int64_t rows, int64_t k0, int64_t cols, T *dst,
                               int64_t ld)
{
    const int64_t n = rows * cols;
    for (int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; t < n;
         t += static_cast<int64_t>(gridDim.x) * blockDim.x) {
        const int64_t r = t / cols, c = t - r * cols;
        store(dst, r * ld + c, dequant_one(q, i0 + r, k0 + c));
    }
}

int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

// The panel budget in bytes (quant.cuh).
size_t panel_budget(const neat_qweight &q, neat_dtype T)
{
    const char *env = std::getenv("NEAT_CUDA_QPANEL_KB");
    if (env && *env) {
        char *end = nullptr;
        const unsigned long long kb = std::strtoull(env, &end, 10);
        if (end && *end == '\0' && kb > 0) return static_cast<size_t>(kb) * 1024;
    }
    const size_t w = static_cast<size_t>(q.d_out) * static_cast<size_t>(q.d_in) * dtype_size(T) / 8;
    const size_t lo = size_t(1) << 20, hi = size_t(8) << 20;
    return w < lo ? lo : w > hi ? hi : w;
}

// The panel grid of one orientation: C has nout columns, the sum runs over K.
struct Plan {
    int64_t nout, K, po, pk, no, nk;
};

// Columns are taken in multiples of 16 (a float16 row of 32 bytes; whole cuBLAS tiles).
constexpr int64_t kColQuantum = 16;

Plan plan_of(const neat_qweight &q, neat_dtype T, bool trans)
{
    Plan p;
    p.nout = trans ? q.d_out : q.d_in;
    p.K = trans ? q.d_in : q.d_out;
    const int64_t elems = static_cast<int64_t>(panel_budget(q, T) / dtype_size(T));
    const int64_t cmin = p.nout < 64 ? p.nout : 64;
    // the whole sum when 64 output columns of it fit, else as much of it as does
    p.pk = p.K;
    if (p.K * cmin > elems) {
        const int64_t k = elems / cmin / kColQuantum * kColQuantum;
        p.pk = k < kColQuantum ? kColQuantum : k;
        if (p.pk > p.K) p.pk = p.K;
    }
    p.nk = cdiv(p.K, p.pk);
    int64_t pmax = elems / p.pk;
    if (pmax < cmin) pmax = cmin;
    p.no = cdiv(p.nout, pmax);
    p.po = cdiv(cdiv(p.nout, p.no), kColQuantum) * kColQuantum;
    if (p.po > p.nout) p.po = p.nout;
    p.no = cdiv(p.nout, p.po);
    return p;
}

// Elements of the panel buffer one orientation needs: its rows are W's rows, row stride padded
// as every scratch matrix's.
int64_t panel_elems(const Plan &p, neat_dtype T, bool trans)
{
    return trans ? p.po * scratch_ld(T, p.pk) : p.pk * scratch_ld(T, p.po);
}

} // namespace

neat_status launch_dequant(Ctx &ctx, const neat_qweight &q, int64_t i0, int64_t rows, int64_t k0,
                           int64_t cols, Mat dst)
{
    if (ctx.dry || rows == 0 || cols == 0) return NEAT_OK;
    const QArgs a = qargs_of(q);
    return dispatch_dtype(dst.dt, [&](auto tag) {
        using T = typename decltype(tag)::type;
        return launch(ctx, "dequant_kernel", dequant_kernel<T>, rows * cols, a, i0, rows, k0, cols,
                      static_cast<T *>(dst.p), dst.rs);
    });
}

neat_status weight_prepare(Ctx &ctx, const neat_tensor *W, const neat_qweight *q, neat_dtype T,
                           Weight *out)
{
    out->q = q;
    if (!q) return ready_input(ctx, mat_of(W), T, &out->w);
    out->w = mat_contig(nullptr, T, q->d_out, q->d_in);
    const int64_t a = panel_elems(plan_of(*q, T, true), T, true);
    const int64_t b = panel_elems(plan_of(*q, T, false), T, false);
    out->panel = mat_contig(ctx.carve(static_cast<size_t>(a > b ? a : b) * dtype_size(T)), T, 0, 0);
    return NEAT_OK;
}

neat_status wgemm(Ctx &ctx, Mat C, Mat A, const Weight &W, bool trans, double alpha, double beta)
{
    if (!W.q) return gemm(ctx, C, A, trans ? transposed(W.w) : W.w, alpha, beta);
    const neat_qweight &q = *W.q;
    const neat_dtype T = W.w.dt;
    const Plan p = plan_of(q, T, trans);
    if (A.rows != C.rows || A.cols != p.K || C.cols != p.nout)
        return neat_set_error(NEAT_ERR_INTERNAL,
                              "%s: quantized gemm shapes (%lld x %lld) = (%lld x %lld) op(W)",
                              ctx.fn, (long long)C.rows, (long long)C.cols, (long long)A.rows,
                              (long long)A.cols);
    if (ctx.dry || C.rows == 0 || C.cols == 0) return NEAT_OK;
    for (int64_t jp = 0; jp < p.no; ++jp) {
        const int64_t j0 = jp * p.po, pw = p.nout - j0 < p.po ? p.nout - j0 : p.po;
        for (int64_t kp = 0; kp < p.nk; ++kp) {
            const int64_t k0 = kp * p.pk, kw = p.K - k0 < p.pk ? p.K - k0 : p.pk;
            // the panel holds W's rows: op(W)[k0.., j0..] is W[j0.., k0..]^T or W[k0.., j0..]
            Mat P = W.panel;
            P.rows = trans ? pw : kw;
            P.cols = trans ? kw : pw;
            P.rs = scratch_ld(T, trans ? p.pk : p.po);
            P.cs = 1;
            NEAT_CUDA_TRY(trans ? launch_dequant(ctx, q, j0, pw, k0, kw, P)
                                : launch_dequant(ctx, q, k0, kw, j0, pw, P));
            NEAT_CUDA_TRY(gemm(ctx, col_slice(C, j0, pw), col_slice(A, k0, kw),
                               trans ? transposed(P) : P, alpha, kp ? 1.0 : beta));
        }
    }
    return NEAT_OK;
}

} // namespace neat_cuda

using namespace neat_cuda;

// The dequantizer alone, for the bit-for-bit test against the reference (tests/c/test_quant.c):
// dst is device memory, the call returns once the panel is written.
extern "C" neat_status neat_cuda_dequant_panel(const neat_qweight *q, neat_dtype dtype, int64_t i0,
                                               int64_t rows, int64_t k0, int64_t cols, void *dst,
                                               int64_t ld, void *stream)
{
    Ctx ctx;
    ctx.fn = "neat_cuda_dequant_panel";
    ctx.dry = false;
    ctx.device = q->device.index;
    ctx.stream = static_cast<cudaStream_t>(stream);
    Mat d = mat_contig(dst, dtype, rows, cols);
    d.rs = ld;
    NEAT_CUDA_TRY(launch_dequant(ctx, *q, i0, rows, k0, cols, d));
    NEAT_CUDA_CHECK(ctx, cudaStreamSynchronize(ctx.stream));
    return NEAT_OK;
}
