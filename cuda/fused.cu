// fused.cu - the fused rank-r kernels (versions 1 and 2) and their launchers; see fused.cuh.
//
// NEAT_MUTANT (test builds only, .ci/run): 1 leaves out the barrier after the E tile is staged in
// fused_rows_v2, 2 drops the last K tile of fused_rows_v2's sum, 3 leaves out the barrier that
// keeps fused_cols_v2 from staging the next tiles while others still read the current ones. Each
// must make the sandbox fail.
#include "fused.cuh"

#include <type_traits>

#include "block.cuh"
#include "launch.cuh"

#ifndef NEAT_MUTANT
#define NEAT_MUTANT 0
#endif

namespace neat_cuda {

namespace {

// Accumulators per thread in version 2: outputs of a block / threads, at most.
constexpr int kMaxPerThread = 32;

// The loops over a thread's accumulators are unrolled under nvcc so that acc[] can live in
// registers (a runtime index would put it in local memory); host compilers do not know the pragma.
#ifdef __CUDACC__
#define NEAT_UNROLL _Pragma("unroll")
#else
#define NEAT_UNROLL
#endif

struct In {
    const void *p;
    int64_t rs, cs;
};
struct Out {
    void *p;
    int64_t rs, cs;
};

In in_of(const Mat &m) { return In{m.p, m.rs, m.cs}; }
Out out_of(const Mat &m) { return Out{m.p, m.rs, m.cs}; }

struct RowsParams {
    In in, M, E, bias;
    Out out, u;
    int64_t n, k, d;
    int r;
    int rows, tile; // version 2
    double scale;
};

struct ColsParams {
    In dy, U;
    Out dB, db;
    int64_t n, d;
    int r;
    int cols, tile; // version 2
    double scale;
};

template <typename T>
__device__ __forceinline__ const T *at(In v)
{
    return static_cast<const T *>(v.p);
}
template <typename T>
__device__ __forceinline__ T *at(Out v)
{
    return static_cast<T *>(v.p);
}

// p[i] of an adapter operand as Acc, rounded to T first when it is stored wider (float32 in a
// half call: neat.h's mixed-precision rule).
template <typename Acc, typename T, typename P>
__device__ __forceinline__ Acc load_as(const P *p, int64_t i)
{
    if constexpr (std::is_same_v<T, P>) {
        return load<Acc>(p, i);
    } else {
        return static_cast<Acc>(widen(Narrow<T>::from(static_cast<double>(widen(p[i])))));
    }
}

// ---- version 1: plain --------------------------------------------------------------------------

template <typename Acc, typename T, typename PM, typename PE>
__global__ void fused_rows_v1(RowsParams a)
{
    const Acc scale = static_cast<Acc>(a.scale);
    for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < a.n;
         i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
        Acc u[kFusedMaxRank];
        for (int j = 0; j < a.r; ++j) {
            Acc s = 0;
            for (int64_t k = 0; k < a.k; ++k)
                s += load<Acc>(at<T>(a.in), i * a.in.rs + k * a.in.cs) *
                     load_as<Acc, T>(at<PM>(a.M), j * a.M.rs + k * a.M.cs);
            u[j] = scale * s;
            if (a.u.p) store(at<T>(a.u), i * a.u.rs + j * a.u.cs, u[j]);
        }
        if (!a.out.p) continue;
        for (int64_t c = 0; c < a.d; ++c) {
            Acc o = a.bias.p ? load<Acc>(at<T>(a.bias), c * a.bias.rs) : Acc(0);
            for (int j = 0; j < a.r; ++j) o += u[j] * load_as<Acc, T>(at<PE>(a.E), c * a.E.rs + j * a.E.cs);
            store(at<T>(a.out), i * a.out.rs + c * a.out.cs, o);
        }
    }
}

template <typename Acc, typename T, typename TB>
__global__ void fused_cols_v1(ColsParams a)
{
    for (int64_t c = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; c < a.d;
         c += static_cast<int64_t>(gridDim.x) * blockDim.x) {
        Acc s[kFusedMaxRank + 1];
        for (int j = 0; j <= a.r; ++j) s[j] = 0;
        for (int64_t n = 0; n < a.n; ++n) {
            const Acc g = load<Acc>(at<T>(a.dy), n * a.dy.rs + c * a.dy.cs);
            for (int j = 0; j < a.r; ++j) s[j] += g * load<Acc>(at<T>(a.U), n * a.U.rs + j * a.U.cs);
            s[a.r] += g;
        }
        if (a.dB.p)
            for (int j = 0; j < a.r; ++j)
                store(at<TB>(a.dB), c * a.dB.rs + j * a.dB.cs, static_cast<Acc>(a.scale) * s[j]);
        if (a.db.p) store(at<T>(a.db), c * a.db.rs, s[a.r]);
    }
}

// ---- version 2: tiled --------------------------------------------------------------------------

// Shared memory of fused_rows_v2, in Acc elements: the in tile (rows x tile), the M tile (r x
// tile) which phase 2 reuses for the E tile (tile x r), and u (rows x r); rows padded by one
// element so that threads walking a column hit distinct banks.
int64_t rows_v2_elems(int R, int KT, int r)
{
    const int64_t m = static_cast<int64_t>(r) * (KT + 1), e = static_cast<int64_t>(KT) * (r + 1);
    return static_cast<int64_t>(R) * (KT + 1) + (m > e ? m : e) + static_cast<int64_t>(R) * (r + 1);
}

template <typename Acc, typename T, typename PM, typename PE>
__global__ void fused_rows_v2(RowsParams a)
{
    NEAT_SHARED_DYNAMIC(Acc, smem);
    const int R = a.rows, KT = a.tile, r = a.r, ldx = KT + 1, ldu = r + 1;
    const int64_t me = static_cast<int64_t>(r) * ldx, ee = static_cast<int64_t>(KT) * ldu;
    Acc *xs = smem;                      // in tile, R x ldx
    Acc *ms = xs + R * ldx;              // M tile, r x ldx; then the E tile, KT x ldu
    Acc *us = ms + (me > ee ? me : ee);  // u, R x ldu
    const int tid = threadIdx.x, nt = blockDim.x;
    const int64_t row0 = static_cast<int64_t>(blockIdx.x) * R;
    const int rows = a.n - row0 < R ? static_cast<int>(a.n - row0) : R;
    const int nu = R * r; // u elements of the block; a thread owns tid, tid + nt, ...
    const T *in = at<T>(a.in);
    const PM *M = at<PM>(a.M);

    Acc acc[kMaxPerThread];
    NEAT_UNROLL
    for (int q = 0; q < kMaxPerThread; ++q) acc[q] = 0;
    // NEAT_MUTANT 2 stops one tile early
    for (int64_t k0 = 0; k0 + (NEAT_MUTANT == 2 ? KT : 0) < a.k; k0 += KT) {
        const int kt = a.k - k0 < KT ? static_cast<int>(a.k - k0) : KT;
        for (int e = tid; e < R * KT; e += nt) {
            const int i = e / KT, k = e - i * KT;
            xs[i * ldx + k] = i < rows && k < kt
                                  ? load<Acc>(in, (row0 + i) * a.in.rs + (k0 + k) * a.in.cs)
                                  : Acc(0);
        }
        for (int e = tid; e < r * KT; e += nt) {
            const int j = e / KT, k = e - j * KT;
            ms[j * ldx + k] = k < kt ? load_as<Acc, T>(M, j * a.M.rs + (k0 + k) * a.M.cs) : Acc(0);
        }
        __syncthreads(); // the tiles are staged
        NEAT_UNROLL
        NEAT_UNROLL
    for (int q = 0; q < kMaxPerThread; ++q) {
            const int o = tid + q * nt;
            if (o >= nu) break;
            const int i = o / r, j = o - i * r;
            Acc s = 0;
            for (int k = 0; k < kt; ++k) s += xs[i * ldx + k] * ms[j * ldx + k];
            acc[q] += s;
        }
        __syncthreads(); // every thread is done with the tiles before the next ones overwrite them
    }
    const Acc scale = static_cast<Acc>(a.scale);
    NEAT_UNROLL
    for (int q = 0; q < kMaxPerThread; ++q) {
        const int o = tid + q * nt;
        if (o >= nu) break;
        const int i = o / r, j = o - i * r;
        us[i * ldu + j] = scale * acc[q];
        if (a.u.p && i < rows) store(at<T>(a.u), (row0 + i) * a.u.rs + j * a.u.cs, scale * acc[q]);
    }
    if (!a.out.p) return; // the same for every thread of the grid

    const PE *E = at<PE>(a.E);
    const T *bias = at<T>(a.bias);
    T *out = at<T>(a.out);
    for (int64_t c0 = 0; c0 < a.d; c0 += KT) {
        const int ct = a.d - c0 < KT ? static_cast<int>(a.d - c0) : KT;
        // the first pass's __syncthreads is also what makes u complete before it is read
        __syncthreads(); // nobody still reads the previous E tile (or the M tile, first time)
        for (int e = tid; e < KT * r; e += nt) {
            const int c = e / r, j = e - c * r;
            ms[c * ldu + j] = c < ct ? load_as<Acc, T>(E, (c0 + c) * a.E.rs + j * a.E.cs) : Acc(0);
        }
#if NEAT_MUTANT != 1
        __syncthreads(); // the E tile is staged
#endif
        for (int e = tid; e < R * KT; e += nt) {
            const int i = e / KT, c = e - i * KT;
            if (i >= rows || c >= ct) continue;
            Acc o = bias ? load<Acc>(bias, (c0 + c) * a.bias.rs) : Acc(0);
            for (int j = 0; j < r; ++j) o += us[i * ldu + j] * ms[c * ldu + j];
            store(out, (row0 + i) * a.out.rs + (c0 + c) * a.out.cs, o);
        }
    }
}

// Shared memory of fused_cols_v2 in Acc elements: the dy tile (tile x cols) and the U tile
// (tile x r), rows padded by one.
int64_t cols_v2_elems(int C, int NT, int r)
{
    return static_cast<int64_t>(NT) * (C + 1) + static_cast<int64_t>(NT) * (r + 1);
}

template <typename Acc, typename T, typename TB>
__global__ void fused_cols_v2(ColsParams a)
{
    NEAT_SHARED_DYNAMIC(Acc, smem);
    const int C = a.cols, NT = a.tile, r = a.r, ldd = C + 1, ldu = r + 1, w = r + 1;
    Acc *ds = smem;           // dy tile, NT x ldd
    Acc *us = ds + NT * ldd;  // U tile, NT x ldu
    const int tid = threadIdx.x, nt = blockDim.x;
    const int64_t c0 = static_cast<int64_t>(blockIdx.x) * C;
    const int cols = a.d - c0 < C ? static_cast<int>(a.d - c0) : C;
    const int nout = C * w; // per column: dB's r entries, then db
    const T *dy = at<T>(a.dy), *U = at<T>(a.U);

    Acc acc[kMaxPerThread];
    NEAT_UNROLL
    for (int q = 0; q < kMaxPerThread; ++q) acc[q] = 0;
    for (int64_t n0 = 0; n0 < a.n; n0 += NT) {
        const int nn = a.n - n0 < NT ? static_cast<int>(a.n - n0) : NT;
        for (int e = tid; e < NT * C; e += nt) {
            const int i = e / C, c = e - i * C;
            ds[i * ldd + c] = i < nn && c < cols
                                  ? load<Acc>(dy, (n0 + i) * a.dy.rs + (c0 + c) * a.dy.cs)
                                  : Acc(0);
        }
        for (int e = tid; e < NT * r; e += nt) {
            const int i = e / r, j = e - i * r;
            us[i * ldu + j] = i < nn ? load<Acc>(U, (n0 + i) * a.U.rs + j * a.U.cs) : Acc(0);
        }
        __syncthreads(); // the tiles are staged
        NEAT_UNROLL
        NEAT_UNROLL
    for (int q = 0; q < kMaxPerThread; ++q) {
            const int o = tid + q * nt;
            if (o >= nout) break;
            const int c = o / w, j = o - c * w;
            Acc s = 0;
            if (j < r)
                for (int i = 0; i < nn; ++i) s += ds[i * ldd + c] * us[i * ldu + j];
            else
                for (int i = 0; i < nn; ++i) s += ds[i * ldd + c];
            acc[q] += s;
        }
#if NEAT_MUTANT != 3
        __syncthreads(); // every thread is done with the tiles before the next ones overwrite them
#endif
    }
    NEAT_UNROLL
    for (int q = 0; q < kMaxPerThread; ++q) {
        const int o = tid + q * nt;
        if (o >= nout) break;
        const int c = o / w, j = o - c * w;
        if (c >= cols) continue;
        if (j < r) {
            if (a.dB.p)
                store(at<TB>(a.dB), (c0 + c) * a.dB.rs + j * a.dB.cs, static_cast<Acc>(a.scale) * acc[q]);
        } else if (a.db.p) {
            store(at<T>(a.db), (c0 + c) * a.db.rs, acc[q]);
        }
    }
}

// ---- launchers ---------------------------------------------------------------------------------

// Calls f(Tag<P>{}) for an adapter operand of dtype p in a call computed in t: p is t, or float32
// when t is a half type.
template <typename T, typename F>
neat_status dispatch_adapter(Ctx &ctx, neat_dtype p, neat_dtype t, const char *what, F &&f)
{
    if (p == t) return f(Tag<T>{});
    if (p == NEAT_FLOAT32 && is_half(t)) return f(Tag<float>{});
    return neat_set_error(NEAT_ERR_INTERNAL, "%s: fused kernel: %s has dtype %d in a call of dtype %d",
                          ctx.fn, what, static_cast<int>(p), static_cast<int>(t));
}

neat_status check_cfg(Ctx &ctx, const char *kernel, const FusedCfg &cfg, int64_t outputs,
                      int64_t shared_elems, size_t acc_size)
{
    if (cfg.version != 1 && cfg.version != 2)
        return neat_set_error(NEAT_ERR_INTERNAL, "%s: %s has no version %d", ctx.fn, kernel, cfg.version);
    if (cfg.threads < 32 || cfg.threads > 1024 || cfg.threads % 32 != 0)
        return neat_set_error(NEAT_ERR_INTERNAL, "%s: %s: %d threads per block (want a multiple of 32 "
                              "in [32, 1024])", ctx.fn, kernel, cfg.threads);
    if (cfg.version == 1) return NEAT_OK;
    if (cfg.rows < 1 || cfg.tile < 1)
        return neat_set_error(NEAT_ERR_INTERNAL, "%s: %s: tile %d x %d", ctx.fn, kernel, cfg.rows, cfg.tile);
    if (outputs > static_cast<int64_t>(kMaxPerThread) * cfg.threads)
        return neat_set_error(NEAT_ERR_INTERNAL, "%s: %s: %lld outputs per block for %d threads, more "
                              "than %d each", ctx.fn, kernel, static_cast<long long>(outputs),
                              cfg.threads, kMaxPerThread);
    if (static_cast<size_t>(shared_elems) * acc_size > kMaxSharedBytes)
        return neat_set_error(NEAT_ERR_INTERNAL, "%s: %s: tile %d x %d needs %zu bytes of shared "
                              "memory, more than %zu", ctx.fn, kernel, cfg.rows, cfg.tile,
                              static_cast<size_t>(shared_elems) * acc_size, kMaxSharedBytes);
    return NEAT_OK;
}

unsigned blocks_for(int64_t items, int per_block)
{
    const int64_t b = (items + per_block - 1) / per_block;
    return static_cast<unsigned>(b < 1 ? 1 : b);
}

} // namespace

FusedCfg fused_rows_default() { return FusedCfg{2, 256, 16, 32}; }
FusedCfg fused_cols_default() { return FusedCfg{2, 256, 32, 32}; }

neat_status launch_fused_rows(Ctx &ctx, const RowsArgs &a, const FusedCfg &cfg)
{
    const int64_t r = a.M.rows;
    if (!fused_rank_ok(r))
        return neat_set_error(NEAT_ERR_INTERNAL, "%s: fused kernel: rank %lld outside [1, %lld]",
                              ctx.fn, static_cast<long long>(r), static_cast<long long>(kFusedMaxRank));
    if (ctx.dry || a.in.rows == 0 || (!a.out.p && !a.u.p)) return NEAT_OK;
    const neat_dtype T = a.in.dt;
    RowsParams p{in_of(a.in), in_of(a.M), in_of(a.E), in_of(a.bias), out_of(a.out), out_of(a.u),
                 a.in.rows, a.in.cols, a.out.p ? a.out.cols : 0, static_cast<int>(r),
                 cfg.rows, cfg.tile, a.scale};
    return dispatch_dtype(T, [&](auto tag_T) {
        using TT = typename decltype(tag_T)::type;
        using Acc = std::conditional_t<std::is_same_v<TT, double>, double, float>;
        NEAT_CUDA_TRY(check_cfg(ctx, "fused_rows", cfg, static_cast<int64_t>(cfg.rows) * r,
                                rows_v2_elems(cfg.rows, cfg.tile, static_cast<int>(r)), sizeof(Acc)));
        return dispatch_adapter<TT>(ctx, a.M.dt, T, "M", [&](auto tag_M) {
            using PM = typename decltype(tag_M)::type;
            const neat_dtype edt = a.out.p ? a.E.dt : T; // E is not read without out
            return dispatch_adapter<TT>(ctx, edt, T, "E", [&](auto tag_E) {
                using PE = typename decltype(tag_E)::type;
                if (cfg.version == 1)
                    return launch_blocks(ctx, "fused_rows_v1", fused_rows_v1<Acc, TT, PM, PE>,
                                         dim3(blocks_for(a.in.rows, cfg.threads)), dim3(cfg.threads),
                                         0, p);
                const size_t shared = static_cast<size_t>(
                    rows_v2_elems(cfg.rows, cfg.tile, static_cast<int>(r))) * sizeof(Acc);
                return launch_blocks(ctx, "fused_rows_v2", fused_rows_v2<Acc, TT, PM, PE>,
                                     dim3(blocks_for(a.in.rows, cfg.rows)), dim3(cfg.threads),
                                     shared, p);
            });
        });
    });
}

neat_status launch_fused_cols(Ctx &ctx, const ColsArgs &a, const FusedCfg &cfg)
{
    const int64_t r = a.U.cols;
    if (!fused_rank_ok(r))
        return neat_set_error(NEAT_ERR_INTERNAL, "%s: fused kernel: rank %lld outside [1, %lld]",
                              ctx.fn, static_cast<long long>(r), static_cast<long long>(kFusedMaxRank));
    if (ctx.dry || a.dy.cols == 0 || (!a.dB.p && !a.db.p)) return NEAT_OK;
    const neat_dtype T = a.dy.dt;
    if (a.db.p && a.db.dt != T)
        return neat_set_error(NEAT_ERR_INTERNAL, "%s: fused kernel: db has dtype %d in a call of dtype %d",
                              ctx.fn, static_cast<int>(a.db.dt), static_cast<int>(T));
    // Without dB, U is not read at all (the backward passes none): the kernels see rank 0 and
    // compute db alone.
    ColsParams p{in_of(a.dy), in_of(a.U), out_of(a.dB), out_of(a.db), a.dy.rows, a.dy.cols,
                 a.dB.p ? static_cast<int>(r) : 0, cfg.rows, cfg.tile, a.scale};
    return dispatch_dtype(T, [&](auto tag_T) {
        using TT = typename decltype(tag_T)::type;
        using Acc = std::conditional_t<std::is_same_v<TT, double>, double, float>;
        NEAT_CUDA_TRY(check_cfg(ctx, "fused_cols", cfg, static_cast<int64_t>(cfg.rows) * (r + 1),
                                cols_v2_elems(cfg.rows, cfg.tile, static_cast<int>(r)), sizeof(Acc)));
        return dispatch_adapter<TT>(ctx, a.dB.p ? a.dB.dt : T, T, "dB", [&](auto tag_B) {
            using TB = typename decltype(tag_B)::type;
            if (cfg.version == 1)
                return launch_blocks(ctx, "fused_cols_v1", fused_cols_v1<Acc, TT, TB>,
                                     dim3(blocks_for(a.dy.cols, cfg.threads)), dim3(cfg.threads), 0, p);
            const size_t shared =
                static_cast<size_t>(cols_v2_elems(cfg.rows, cfg.tile, static_cast<int>(r))) * sizeof(Acc);
            return launch_blocks(ctx, "fused_cols_v2", fused_cols_v2<Acc, TT, TB>,
                                 dim3(blocks_for(a.dy.cols, cfg.rows)), dim3(cfg.threads), shared, p);
        });
    });
}

} // namespace neat_cuda
