// test_cuda_emu.cpp - the CUDA backend (cuda/, run on the host by the emulation build) on what
// test_kernels_cuda cannot reach: bfloat16, float16 and mixed precision (float32 A, B, hidden
// with half x and weight) against the float64 reference, NaN propagation against the CPU
// backend, the stream and device every piece of work is issued on, the cuBLAS double's own
// strictness, and error cases on CUDA views. Then what the tests/c tests cannot see from outside:
// the mixed-precision rule of neat.h (bit for bit against the half call), y and dy that cuBLAS
// cannot take in place with a workspace of exactly the queried size, TF32 on request only, the
// cuBLAS math mode, 16-byte aligned scratch, the cuBLAS workspace per compute capability, and a
// bounded number of cuBLAS handles however many threads come and go.
// Tolerances (docs/design.md §4): half 2e-2, float32 1e-5.
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

extern "C" {
#include "check.h"
#include "guard.h"
#include "layer.h"
#include "reference.h"
#include "util.h"
}
#include "emu_log.h"
#include "emu_test.h"

namespace {

constexpr double kHalfTol = 2e-2;

const char *dtype_name(neat_dtype d)
{
    switch (d) {
    case NEAT_FLOAT32: return "f32";
    case NEAT_FLOAT64: return "f64";
    case NEAT_BFLOAT16: return "bf16";
    case NEAT_FLOAT16: return "f16";
    }
    return "?";
}

size_t esize(neat_dtype d) { return d == NEAT_FLOAT64 ? 8 : d == NEAT_FLOAT32 ? 4 : 2; }

// A 2-D (or 1-D) strided device view in any dtype; device memory is host memory here.
struct Buf {
    neat_tensor t{};
    std::vector<unsigned char> mem;
    unsigned char *base = nullptr; // mem's first 64-byte boundary: rows of 16-byte multiples stay
                                   // 16-byte aligned whatever the allocator gives
    int64_t elems = 0;

    Buf() = default;
    Buf(const Buf &) = delete;
    Buf &operator=(const Buf &) = delete;

    // layout as tests/c/util.h: LAYOUT_CONTIG, LAYOUT_TRANSPOSED, LAYOUT_PADDED
    void make(neat_dtype dt, int64_t rows, int64_t cols, int layout, double fill, int device = 0)
    {
        int64_t rs = cols, cs = 1;
        elems = rows * cols;
        if (layout == LAYOUT_TRANSPOSED) rs = 1, cs = rows;
        if (layout == LAYOUT_PADDED) rs = cols + 3, elems = rows * (cols + 3);
        init(dt, fill, device);
        t.ndim = 2;
        t.sizes[0] = rows, t.sizes[1] = cols;
        t.strides[0] = rs, t.strides[1] = cs;
    }
    // rows (rows, cols) with row stride ld
    void make_ld(neat_dtype dt, int64_t rows, int64_t cols, int64_t ld, double fill, int device = 0)
    {
        elems = rows * ld;
        init(dt, fill, device);
        t.ndim = 2;
        t.sizes[0] = rows, t.sizes[1] = cols;
        t.strides[0] = ld, t.strides[1] = 1;
    }
    void make1(neat_dtype dt, int64_t n, int64_t stride, double fill, int device = 0)
    {
        elems = n > 0 ? (n - 1) * stride + 1 : 0;
        init(dt, fill, device);
        t.ndim = 1;
        t.sizes[0] = n;
        t.strides[0] = stride;
    }
    void init(neat_dtype dt, double fill, int device)
    {
        mem.assign(static_cast<size_t>(elems > 0 ? elems : 1) * esize(dt) + 64, 0);
        base = mem.data() + (64 - reinterpret_cast<uintptr_t>(mem.data()) % 64) % 64;
        t.data = base;
        t.dtype = dt;
        t.device.type = NEAT_DEVICE_CUDA;
        t.device.index = device;
        for (int64_t i = 0; i < elems; ++i) set_raw(i, fill);
    }
    void set_raw(int64_t i, double v)
    {
        void *p = base;
        switch (t.dtype) {
        case NEAT_FLOAT64: static_cast<double *>(p)[i] = v; break;
        case NEAT_FLOAT32: static_cast<float *>(p)[i] = static_cast<float>(v); break;
        case NEAT_FLOAT16: static_cast<__half *>(p)[i] = __float2half_rn(static_cast<float>(v)); break;
        case NEAT_BFLOAT16:
            static_cast<__nv_bfloat16 *>(p)[i] = __float2bfloat16_rn(static_cast<float>(v));
            break;
        }
    }
    double raw(int64_t i) const
    {
        const void *p = base;
        switch (t.dtype) {
        case NEAT_FLOAT64: return static_cast<const double *>(p)[i];
        case NEAT_FLOAT32: return static_cast<const float *>(p)[i];
        case NEAT_FLOAT16: return __half2float(static_cast<const __half *>(p)[i]);
        case NEAT_BFLOAT16: return __bfloat162float(static_cast<const __nv_bfloat16 *>(p)[i]);
        }
        return 0;
    }
    int64_t rows() const { return t.sizes[0]; }
    int64_t cols() const { return t.ndim == 2 ? t.sizes[1] : 1; }
    int64_t off(int64_t i, int64_t j) const
    {
        return i * t.strides[0] + (t.ndim == 2 ? j * t.strides[1] : 0);
    }
    void write(const std::vector<double> &v) // row-major values
    {
        for (int64_t i = 0; i < rows(); ++i)
            for (int64_t j = 0; j < cols(); ++j) set_raw(off(i, j), v[i * cols() + j]);
    }
    std::vector<double> read() const
    {
        std::vector<double> v(static_cast<size_t>(rows() * cols()));
        for (int64_t i = 0; i < rows(); ++i)
            for (int64_t j = 0; j < cols(); ++j) v[i * cols() + j] = raw(off(i, j));
        return v;
    }
    // Every storage element outside the view is still NaN (the fill of outputs).
    bool padding_untouched() const
    {
        std::vector<char> in(static_cast<size_t>(elems > 0 ? elems : 1), 0);
        for (int64_t i = 0; i < rows(); ++i)
            for (int64_t j = 0; j < cols(); ++j) in[off(i, j)] = 1;
        for (int64_t i = 0; i < elems; ++i)
            if (!in[i] && !std::isnan(raw(i))) return false;
        return true;
    }
};

std::vector<double> rand_vals(uint64_t *rng, int64_t n, double amp, neat_dtype dt)
{
    std::vector<double> v(static_cast<size_t>(n > 0 ? n : 1));
    fill_random(rng, v.data(), n, -amp, amp);
    for (auto &x : v) x = emu_round_to(dt, x);
    return v;
}

// One problem: T is x's, weight's, bias's and dy's dtype; P is A's, B's and hidden's.
struct Spec {
    int64_t N, d_in, d_out, r;
    neat_activation act;
    int num_hidden;
    int bias;
    neat_dtype T, P;
    int layout_in, layout_out;
    double scale;
    uint64_t seed;
    int device = 0;
};

std::string describe(const Spec &s)
{
    char buf[256];
    std::snprintf(buf, sizeof buf,
                  "x/W %s A/B/H %s N=%lld d_in=%lld d_out=%lld r=%lld act=%s hidden=%d bias=%d "
                  "layouts in %d out %d scale=%g",
                  dtype_name(s.T), dtype_name(s.P), (long long)s.N, (long long)s.d_in,
                  (long long)s.d_out, (long long)s.r, neat_activation_name(s.act), s.num_hidden,
                  s.bias, s.layout_in, s.layout_out, s.scale);
    return buf;
}

struct Problem {
    Spec s;
    std::vector<double> x, W, b, A, B, H[NEAT_MAX_HIDDEN], dy;
    std::vector<double> A_ref, B_ref, H_ref[NEAT_MAX_HIDDEN]; // as the kernels use them (below)
    Buf tx, tW, tb, tA, tB, tH[NEAT_MAX_HIDDEN], tdy;
    neat_tensor hidden[NEAT_MAX_HIDDEN];
    neat_args args{};
    ref_problem ref{};

    explicit Problem(const Spec &sp) : s(sp)
    {
        uint64_t rng = s.seed;
        // the amplitudes of tests/c/layer.c: every pre-activation O(1), in sin2pi's unit of
        // 1 / (2 pi) for sin2pi (it turns once per unit of z)
        const double unit = s.act == NEAT_ACT_SIN2PI ? 0.15915494309189533577 : 1.0;
        x = rand_vals(&rng, s.N * s.d_in, 1.0, s.T);
        W = rand_vals(&rng, s.d_out * s.d_in, 1.0, s.T);
        b = rand_vals(&rng, s.d_out, 1.0, s.T);
        A = rand_vals(&rng, s.r * s.d_out, unit * 2.0 / std::sqrt(double(s.d_out)), s.P);
        B = rand_vals(&rng, s.d_out * s.r, 1.0, s.P);
        for (int i = 0; i < s.num_hidden; ++i)
            H[i] = rand_vals(&rng, s.r * s.r, unit * 1.5 / std::sqrt(double(s.r)), s.P);
        dy = rand_vals(&rng, s.N * s.d_out, 1.0, s.T);
        const int L = s.layout_in;
        tx.make(s.T, s.N, s.d_in, L, 0, s.device), tx.write(x);
        tW.make(s.T, s.d_out, s.d_in, (L + 1) % LAYOUT_COUNT, 0, s.device), tW.write(W);
        tb.make1(s.T, s.d_out, L == LAYOUT_PADDED ? 2 : 1, 0, s.device), tb.write(b);
        tA.make(s.P, s.r, s.d_out, (L + 2) % LAYOUT_COUNT, 0, s.device), tA.write(A);
        tB.make(s.P, s.d_out, s.r, L, 0, s.device), tB.write(B);
        tdy.make(s.T, s.N, s.d_out, (L + 1) % LAYOUT_COUNT, 0, s.device), tdy.write(dy);
        for (int i = 0; i < s.num_hidden; ++i) {
            tH[i].make(s.P, s.r, s.r, (L + i) % LAYOUT_COUNT, 0, s.device);
            tH[i].write(H[i]);
            hidden[i] = tH[i].t;
        }
        args.x = &tx.t;
        args.weight = &tW.t;
        args.bias = s.bias ? &tb.t : nullptr;
        args.A = &tA.t;
        args.B = &tB.t;
        args.hidden = s.num_hidden ? hidden : nullptr;
        args.num_hidden = s.num_hidden;
        args.activation = s.act;
        args.scale = s.scale;
        ref.N = s.N, ref.d_in = s.d_in, ref.d_out = s.d_out, ref.r = s.r;
        ref.num_hidden = s.num_hidden;
        ref.act = s.act;
        ref.scale = s.scale;
        ref.x = x.data(), ref.W = W.data(), ref.b = s.bias ? b.data() : nullptr;
        // Mixed precision as neat.h states it (torch.autocast's way): float32 A, B and hidden
        // weights are rounded to x's half dtype before any product. The reference takes the same
        // rounded values, so the comparison measures the kernels, not that choice (and
        // mixed_equals_half_tests checks the rule itself, bit for bit).
        A_ref = A, B_ref = B;
        for (auto &v : A_ref) v = emu_round_to(s.T, v);
        for (auto &v : B_ref) v = emu_round_to(s.T, v);
        ref.A = A_ref.data(), ref.B = B_ref.data();
        for (int i = 0; i < s.num_hidden; ++i) {
            H_ref[i] = H[i];
            for (auto &v : H_ref[i]) v = emu_round_to(s.T, v);
            ref.H[i] = H_ref[i].data();
        }
    }
};

// tol < 0: check only that every element is finite (see half_case).
void expect_close(const std::string &desc, const char *what, const Buf &out,
                  const std::vector<double> &ref, double tol)
{
    std::vector<double> got = out.read();
    const int64_t n = out.rows() * out.cols();
    if (tol < 0) {
        int64_t bad = 0;
        for (double v : got) bad += !std::isfinite(v);
        CHECK(bad == 0, "%s: %s has %lld non-finite elements", desc.c_str(), what, (long long)bad);
        CHECK(out.padding_untouched(), "%s: %s wrote outside its view", desc.c_str(), what);
        return;
    }
    double err = rel_err(got.data(), ref.data(), n);
    CHECK(err <= tol, "%s: %s rel err %.3g > %g", desc.c_str(), what, err, tol);
    if (!(err <= tol)) print_mismatches(what, got.data(), ref.data(), out.rows(), out.cols(), tol);
    CHECK(out.padding_untouched(), "%s: %s wrote outside its view", desc.c_str(), what);
}

// Forward (linear and adapter), backward with every gradient, compute_g: all on CUDA views.
void half_case(const Spec &s)
{
    Problem p(s);
    const std::string base = describe(s);
    // With d_in = d_out = r = 1 a gradient is one number, a sum of N terms of size O(1) that
    // often cancels to O(1e-2): the half-precision rounding of the terms (about 4e-3 each for
    // bfloat16) is then tens of percent of the result, whatever the kernels do. A relative bound
    // means nothing there; those outputs are checked for being computed (finite, in their view),
    // and test_kernels_cuda checks the same shape in float32 and float64 to 1e-5 and 1e-12.
    const bool conditioned = s.d_in > 1 && s.d_out > 1 && s.r > 1;
    const double tol = conditioned ? kHalfTol : -1;
    const int64_t ny = s.N * s.d_out, nx = s.N * s.d_in, nw = s.d_out * s.d_in;
    std::vector<double> yb(ny + 1), ya(ny + 1), G(s.r * s.d_in + 1);
    std::vector<double> dxb(nx + 1), dxa(nx + 1), dWb(nw), dWa(nw), db(s.d_out), dA(s.r * s.d_out),
        dB(s.r * s.d_out), dH[NEAT_MAX_HIDDEN];
    ref_grads rg{dxb.data(), dxa.data(), dWb.data(), dWa.data(), db.data(), dA.data(), dB.data(), {}};
    for (int i = 0; i < s.num_hidden; ++i) dH[i].resize(s.r * s.r), rg.dH[i] = dH[i].data();
    ref_forward(&p.ref, yb.data(), ya.data());
    ref_compute_g(&p.ref, G.data());
    ref_backward(&p.ref, p.dy.data(), &rg);
    const int lo = s.layout_out;

    for (int with_base = 1; with_base >= 0; --with_base) {
        const std::string desc = std::string(with_base ? "linear " : "adapter ") + base;
        neat_args args = p.args;
        if (!with_base) args.bias = nullptr;
        std::vector<double> yref(ny), dxref(nx), dWref(nw);
        for (int64_t i = 0; i < ny; ++i) yref[i] = ya[i] + (with_base ? yb[i] : 0);
        for (int64_t i = 0; i < nx; ++i) dxref[i] = dxa[i] + (with_base ? dxb[i] : 0);
        for (int64_t i = 0; i < nw; ++i) dWref[i] = dWa[i] + (with_base ? dWb[i] : 0);

        Buf y;
        y.make(s.T, s.N, s.d_out, lo, NAN, s.device);
        neat_status st = call_forward(with_base, &y.t, &args, nullptr);
        CHECK(st == NEAT_OK, "%s: forward returned %d: %s", desc.c_str(), (int)st, neat_last_error());
        expect_close(desc, "y", y, yref, tol);

        Buf dx, dW, dbias, dAb, dBb, dHb[NEAT_MAX_HIDDEN];
        dx.make(s.T, s.N, s.d_in, lo, NAN, s.device);
        dW.make(s.T, s.d_out, s.d_in, (lo + 1) % LAYOUT_COUNT, NAN, s.device);
        dbias.make1(s.T, s.d_out, 1 + lo, NAN, s.device);
        dAb.make(s.P, s.r, s.d_out, (lo + 2) % LAYOUT_COUNT, NAN, s.device);
        dBb.make(s.P, s.d_out, s.r, lo, NAN, s.device);
        neat_tensor dhv[NEAT_MAX_HIDDEN];
        for (int i = 0; i < s.num_hidden; ++i) {
            dHb[i].make(s.P, s.r, s.r, (i + lo) % LAYOUT_COUNT, NAN, s.device);
            dhv[i] = dHb[i].t;
        }
        neat_grads g{};
        g.dx = &dx.t, g.dweight = &dW.t, g.dbias = with_base ? &dbias.t : nullptr;
        g.dA = &dAb.t, g.dB = &dBb.t, g.dhidden = s.num_hidden ? dhv : nullptr;
        st = call_backward(with_base, &g, &p.tdy.t, &args, nullptr);
        CHECK(st == NEAT_OK, "%s: backward returned %d: %s", desc.c_str(), (int)st, neat_last_error());
        expect_close(desc, "dx", dx, dxref, tol);
        expect_close(desc, "dweight", dW, dWref, tol);
        if (with_base) expect_close(desc, "dbias", dbias, db, tol);
        expect_close(desc, "dA", dAb, dA, tol);
        expect_close(desc, "dB", dBb, dB, tol);
        for (int i = 0; i < s.num_hidden; ++i) {
            char name[32];
            std::snprintf(name, sizeof name, "dhidden[%d]", i);
            expect_close(desc, name, dHb[i], dH[i], tol);
        }
    }
    // G in either of its allowed dtypes on CUDA (x's or A's)
    for (neat_dtype gdt : {s.T, s.P}) {
        Buf Gb;
        Gb.make(gdt, s.r, s.d_in, lo, NAN, s.device);
        neat_status st = call_compute_g(&Gb.t, &p.args, nullptr);
        const std::string desc = "compute_g (G " + std::string(dtype_name(gdt)) + ") " + base;
        CHECK(st == NEAT_OK, "%s: returned %d: %s", desc.c_str(), (int)st, neat_last_error());
        expect_close(desc, "G", Gb, G, tol);
        if (s.P == s.T) break;
    }
}

void half_precision_tests()
{
    static const int64_t shapes[][4] = {
        {5, 37, 53, 3}, {1, 37, 53, 3}, {0, 37, 53, 3}, {64, 130, 70, 8}, {3, 1, 1, 1},
    };
    static const int depths[] = {0, 2, 4, 6, 8};
    static const double scales[] = {1.0, 0.37, -1.5};
    static const neat_dtype configs[][2] = {
        {NEAT_BFLOAT16, NEAT_BFLOAT16},
        {NEAT_FLOAT16, NEAT_FLOAT16},
        {NEAT_BFLOAT16, NEAT_FLOAT32}, // mixed precision: half x and weight, float32 A, B, H
        {NEAT_FLOAT16, NEAT_FLOAT32},
    };
    int idx = 0;
    for (const auto &cfg : configs) {
        const int before = check_failures, checks_before = check_count;
        for (const auto &sh : shapes)
            for (int act = 0; act <= NEAT_ACT_LAST; ++act)
                for (int depth : depths) {
                    Spec s{sh[0], sh[1], sh[2], sh[3], static_cast<neat_activation>(act), depth,
                           idx % 2, cfg[0], cfg[1], idx % LAYOUT_COUNT, (idx / 3) % LAYOUT_COUNT,
                           scales[idx % 3], 5000 + static_cast<uint64_t>(idx)};
                    half_case(s);
                    ++idx;
                }
        std::printf("  x/W %s, A/B/H %s: %d checks, %d failures\n", dtype_name(cfg[0]),
                    dtype_name(cfg[1]), check_count - checks_before, check_failures - before);
    }
}

// ---- streams and devices ----------------------------------------------------------------------

// Runs forward, backward and compute_g of p on exec; returns the first failing status.
neat_status run_all(Problem &p, const neat_exec *exec)
{
    const Spec &s = p.s;
    Buf y, dx, dA, G;
    y.make(s.T, s.N, s.d_out, 0, 0, s.device);
    dx.make(s.T, s.N, s.d_in, 0, 0, s.device);
    dA.make(s.P, s.r, s.d_out, 0, 0, s.device);
    G.make(s.T, s.r, s.d_in, 0, 0, s.device);
    neat_grads g{};
    g.dx = &dx.t, g.dA = &dA.t;
    neat_status st = call_forward(1, &y.t, &p.args, exec);
    if (st == NEAT_OK) st = call_backward(1, &g, &p.tdy.t, &p.args, exec);
    if (st == NEAT_OK) st = call_compute_g(&G.t, &p.args, exec);
    return st;
}

// Every event of this thread's log ran on `stream` and device `device`, none blocked the host,
// and kernels and cuBLAS both appear.
void expect_log_on(const char *what, cudaStream_t stream, int device)
{
    size_t n = neat_emu_log_size(), kernels = 0, blas = 0;
    for (size_t i = 0; i < n; ++i) {
        neat_emu_event e = neat_emu_log_at(i);
        CHECK(e.stream == stream, "%s: %s ran on stream %p, not the given %p", what, e.name,
              static_cast<void *>(e.stream), static_cast<void *>(stream));
        CHECK(e.kind != NEAT_EMU_SYNC, "%s: %s synchronises the host", what, e.name);
        CHECK(e.device == device, "%s: %s ran on device %d, not %d", what, e.name, e.device, device);
        kernels += e.kind == NEAT_EMU_KERNEL;
        blas += e.kind == NEAT_EMU_BLAS;
    }
    CHECK(kernels > 0 && blas > 0, "%s: expected kernels and GEMMs in the log, got %zu and %zu",
          what, kernels, blas);
}

void stream_tests()
{
    for (neat_dtype dt : {NEAT_FLOAT32, NEAT_BFLOAT16}) {
        Spec s{7, 37, 53, 3, NEAT_ACT_GELU, 4, 1, dt, dt, 1, 0, 0.5, 77};
        Problem p(s);
        cudaStream_t stream = nullptr;
        CHECK(cudaStreamCreate(&stream) == cudaSuccess, "cudaStreamCreate");
        neat_exec ex{};
        ex.stream = stream;
        neat_emu_log_clear();
        CHECK(run_all(p, &ex) == NEAT_OK, "%s on a stream: %s", dtype_name(dt), neat_last_error());
        expect_log_on(dt == NEAT_FLOAT32 ? "f32 on a stream" : "bf16 on a stream", stream, 0);

        neat_emu_log_clear();
        CHECK(run_all(p, nullptr) == NEAT_OK, "%s, default stream: %s", dtype_name(dt),
              neat_last_error());
        expect_log_on("no exec: the default stream", nullptr, 0);
        cudaStreamDestroy(stream);
    }

    // Tensors on cuda:1: the call switches devices, uses a handle made for device 1 and a
    // stream of device 1, and puts the caller's device back.
    {
        CHECK(cudaSetDevice(1) == cudaSuccess, "cudaSetDevice(1)");
        cudaStream_t s1 = nullptr;
        CHECK(cudaStreamCreate(&s1) == cudaSuccess, "stream on device 1");
        CHECK(cudaSetDevice(0) == cudaSuccess, "cudaSetDevice(0)");
        Spec s{4, 37, 53, 3, NEAT_ACT_RELU, 2, 1, NEAT_FLOAT32, NEAT_FLOAT32, 0, 0, 1.0, 78, 1};
        Problem p(s);
        neat_exec ex{};
        ex.stream = s1;
        neat_emu_log_clear();
        CHECK(run_all(p, &ex) == NEAT_OK, "cuda:1: %s", neat_last_error());
        expect_log_on("cuda:1", s1, 1);
        int cur = -1;
        cudaGetDevice(&cur);
        CHECK(cur == 0, "the caller's device is %d after a call on cuda:1; expected 0 back", cur);

        // a stream of device 1 with tensors on device 0 is the caller's bug; it must not pass
        Spec s0 = s;
        s0.device = 0;
        Problem p0(s0);
        neat_emu_set_quiet(1);
        const int v0 = neat_emu_violations();
        neat_status st = run_all(p0, &ex);
        CHECK(st == NEAT_ERR_BACKEND, "stream of device 1 for cuda:0 tensors gave %d: %s", (int)st,
              neat_last_error());
        CHECK(neat_emu_violations() > v0, "the emulation recorded no violation");
        neat_emu_set_quiet(0);
        neat_emu_reset_violations();
        cudaStreamDestroy(s1);
    }

    // An ordinal past the devices there are: the runtime's error, reported as a backend error.
    {
        Spec s{4, 37, 53, 3, NEAT_ACT_RELU, 0, 0, NEAT_FLOAT32, NEAT_FLOAT32, 0, 0, 1.0, 79,
               neat_emu_device_count()};
        Problem p(s);
        Buf y;
        y.make(s.T, s.N, s.d_out, 0, 0, s.device);
        neat_status st = call_forward(1, &y.t, &p.args, nullptr);
        CHECK(st == NEAT_ERR_BACKEND && std::strstr(neat_last_error(), "invalid device ordinal"),
              "a missing device gave %d: %s", (int)st, neat_last_error());
        // the backend's own messages start with the caller's name for the call, if it gave one
        CHECK(std::strncmp(neat_last_error(), "neat_cuda_forward: ", 19) == 0,
              "backend message without names: %s", neat_last_error());
        neat_names names{};
        names.call = "neat::linear";
        neat_exec named{};
        named.names = &names;
        st = call_forward(1, &y.t, &p.args, &named);
        CHECK(st == NEAT_ERR_BACKEND && std::strncmp(neat_last_error(), "neat::linear: ", 14) == 0 &&
                  std::strstr(neat_last_error(), "invalid device ordinal"),
              "a missing device with names gave %d: %s", (int)st, neat_last_error());
        // the runtime keeps a failed call's error for cudaGetLastError; the backend must have
        // taken it, or this healthy call's first launch check reports it
        Spec ok = s;
        ok.device = 0;
        Problem p0(ok);
        Buf y0;
        y0.make(ok.T, ok.N, ok.d_out, 0, 0);
        st = call_forward(1, &y0.t, &p0.args, nullptr);
        CHECK(st == NEAT_OK, "the call after a failed one gave %d: %s", (int)st, neat_last_error());
    }
}

// ---- NaN propagation: CUDA as the CPU backend and PyTorch --------------------------------------

void nan_tests()
{
    for (int act = 0; act <= NEAT_ACT_LAST; ++act) {
        Spec s{5, 37, 53, 3, static_cast<neat_activation>(act), 2, 1, NEAT_FLOAT32, NEAT_FLOAT32,
               0, 0, 1.0, 90};
        Problem p(s);
        // a NaN in A reaches Z0's row 0 and, through the activation, G: PyTorch's relu and the
        // CPU kernels keep it; an activation that turns it into a number hides a broken input
        static_cast<float *>(p.tA.t.data)[0] = NAN;
        Buf yc, Gc;
        yc.make(s.T, s.N, s.d_out, 0, 0);
        Gc.make(s.T, s.r, s.d_in, 0, 0);
        CHECK(call_forward(1, &yc.t, &p.args, nullptr) == NEAT_OK, "NaN forward: %s", neat_last_error());
        CHECK(call_compute_g(&Gc.t, &p.args, nullptr) == NEAT_OK, "NaN G: %s", neat_last_error());
        // the same problem on the CPU backend (same buffers, relabelled)
        neat_tensor *views[] = {&p.tx.t, &p.tW.t, &p.tb.t, &p.tA.t, &p.tB.t};
        for (neat_tensor *v : views) v->device.type = NEAT_DEVICE_CPU;
        for (int i = 0; i < s.num_hidden; ++i) p.hidden[i].device.type = NEAT_DEVICE_CPU;
        Buf yh, Gh;
        yh.make(s.T, s.N, s.d_out, 0, 0), yh.t.device.type = NEAT_DEVICE_CPU;
        Gh.make(s.T, s.r, s.d_in, 0, 0), Gh.t.device.type = NEAT_DEVICE_CPU;
        CHECK(call_forward(1, &yh.t, &p.args, nullptr) == NEAT_OK, "CPU forward: %s", neat_last_error());
        CHECK(call_compute_g(&Gh.t, &p.args, nullptr) == NEAT_OK, "CPU G: %s", neat_last_error());
        int g_diff = 0, y_diff = 0, g_nan = 0;
        for (int64_t i = 0; i < s.r * s.d_in; ++i) {
            g_diff += std::isnan(Gc.raw(i)) != std::isnan(Gh.raw(i));
            g_nan += std::isnan(Gh.raw(i));
        }
        for (int64_t i = 0; i < s.N * s.d_out; ++i) y_diff += std::isnan(yc.raw(i)) != std::isnan(yh.raw(i));
        CHECK(g_nan > 0, "act %s: the CPU backend lost the NaN in A", neat_activation_name(s.act));
        CHECK(g_diff == 0 && y_diff == 0,
              "act %s: NaN in A: CUDA and CPU disagree on which outputs are NaN (G %d, y %d "
              "elements differ)",
              neat_activation_name(s.act), g_diff, y_diff);
    }
}

// ---- the cuBLAS double refuses what cuBLAS documents as invalid -------------------------------

void cublas_double_tests()
{
    neat_emu_set_quiet(1);
    cublasHandle_t h = nullptr;
    CHECK(cublasCreate(&h) == CUBLAS_STATUS_SUCCESS, "cublasCreate");
    alignas(256) static unsigned char ws[4096];
    float A[6] = {1, 2, 3, 4, 5, 6}, B[6] = {1, 0, 0, 1, 1, 1}, C[4];
    const float one = 1, zero = 0;
    auto gemm = [&](cublasOperation_t ta, int64_t lda, cudaDataType bt, int64_t ldc,
                    cublasComputeType_t ct) {
        // C (2x2) = A (2x3, column-major, lda) B (3x2, ldb 3)
        return cublasGemmEx_64(h, ta, CUBLAS_OP_N, 2, 2, 3, &one, A, CUDA_R_32F, lda, B, bt, 3,
                               &zero, C, CUDA_R_32F, ldc, ct, CUBLAS_GEMM_DEFAULT);
    };
    CHECK(cublasSetStream(h, nullptr) == CUBLAS_STATUS_SUCCESS, "set stream");
    int v = neat_emu_violations();
    CHECK(gemm(CUBLAS_OP_N, 2, CUDA_R_32F, 2, CUBLAS_COMPUTE_32F) == CUBLAS_STATUS_INVALID_VALUE,
          "a GEMM with no workspace since the last cublasSetStream must be refused");
    CHECK(neat_emu_violations() == v + 1, "... and recorded");
    CHECK(cublasSetWorkspace(h, ws + 8, 1024) == CUBLAS_STATUS_INVALID_VALUE,
          "a workspace not aligned to 256 bytes must be refused");
    CHECK(cublasSetWorkspace(h, ws, sizeof ws) == CUBLAS_STATUS_SUCCESS, "set workspace");
    for (float &c : C) c = NAN;
    CHECK(gemm(CUBLAS_OP_N, 2, CUDA_R_32F, 2, CUBLAS_COMPUTE_32F) == CUBLAS_STATUS_SUCCESS,
          "a legal GEMM");
    // column-major A = [1 3 5; 2 4 6], B = [1 0 1; 0 1 1]^T... B columns (1,0,0), (1,1,1)
    CHECK(C[0] == 1 && C[1] == 2 && C[2] == 9 && C[3] == 12,
          "GEMM result %g %g %g %g (beta = 0 must ignore the NaN in C)", C[0], C[1], C[2], C[3]);
    CHECK(gemm(CUBLAS_OP_N, 1, CUDA_R_32F, 2, CUBLAS_COMPUTE_32F) == CUBLAS_STATUS_INVALID_VALUE,
          "lda < m must be refused");
    CHECK(gemm(CUBLAS_OP_T, 2, CUDA_R_32F, 2, CUBLAS_COMPUTE_32F) == CUBLAS_STATUS_INVALID_VALUE,
          "lda < k with op T must be refused");
    CHECK(gemm(CUBLAS_OP_N, 2, CUDA_R_32F, 1, CUBLAS_COMPUTE_32F) == CUBLAS_STATUS_INVALID_VALUE,
          "ldc < m must be refused");
    CHECK(gemm(CUBLAS_OP_N, 2, CUDA_R_16F, 2, CUBLAS_COMPUTE_32F) == CUBLAS_STATUS_NOT_SUPPORTED,
          "A float32 with B float16 must be refused");
    CHECK(gemm(CUBLAS_OP_N, 2, CUDA_R_32F, 2, CUBLAS_COMPUTE_64F) == CUBLAS_STATUS_NOT_SUPPORTED,
          "float32 operands with COMPUTE_64F must be refused");
    CHECK(cublasSetPointerMode(h, static_cast<cublasPointerMode_t>(5)) == CUBLAS_STATUS_INVALID_VALUE,
          "a bad pointer mode must be refused");
    // a handle belongs to the device it was created on
    CHECK(cudaSetDevice(1) == cudaSuccess, "cudaSetDevice(1)");
    CHECK(gemm(CUBLAS_OP_N, 2, CUDA_R_32F, 2, CUBLAS_COMPUTE_32F) == CUBLAS_STATUS_INVALID_VALUE,
          "a handle of device 0 used on device 1 must be refused");
    CHECK(cudaSetDevice(0) == cudaSuccess, "cudaSetDevice(0)");
    // the workspace must not hold an operand (cuBLAS may scribble over all of it)
    float *inws = reinterpret_cast<float *>(ws + 1024);
    CHECK(cublasGemmEx_64(h, CUBLAS_OP_N, CUBLAS_OP_N, 2, 2, 3, &one, A, CUDA_R_32F, 2, B,
                          CUDA_R_32F, 3, &zero, inws, CUDA_R_32F, 2, CUBLAS_COMPUTE_32F,
                          CUBLAS_GEMM_DEFAULT) == CUBLAS_STATUS_INVALID_VALUE,
          "C inside the cuBLAS workspace must be refused");
    CHECK(neat_emu_violations() == v + 10, "every refusal is recorded (%d, expected %d)",
          neat_emu_violations(), v + 10);

    // TF32: with CUBLAS_COMPUTE_32F_FAST_TF32 the inputs keep 10 mantissa bits (1 + 2^-12 -> 1)
    v = neat_emu_violations();
    const float a1[1] = {1.0f + 0x1p-12f}, b1[1] = {1.0f};
    float c1 = 0;
    CHECK(cublasGemmEx_64(h, CUBLAS_OP_N, CUBLAS_OP_N, 1, 1, 1, &one, a1, CUDA_R_32F, 1, b1,
                          CUDA_R_32F, 1, &zero, &c1, CUDA_R_32F, 1, CUBLAS_COMPUTE_32F,
                          CUBLAS_GEMM_DEFAULT) == CUBLAS_STATUS_SUCCESS &&
              c1 == a1[0],
          "COMPUTE_32F must keep float32 inputs (got %.9g)", c1);
    CHECK(cublasGemmEx_64(h, CUBLAS_OP_N, CUBLAS_OP_N, 1, 1, 1, &one, a1, CUDA_R_32F, 1, b1,
                          CUDA_R_32F, 1, &zero, &c1, CUDA_R_32F, 1, CUBLAS_COMPUTE_32F_FAST_TF32,
                          CUBLAS_GEMM_DEFAULT) == CUBLAS_STATUS_SUCCESS &&
              c1 == 1.0f,
          "COMPUTE_32F_FAST_TF32 must round inputs to TF32 (got %.9g)", c1);
    // a half output needs a math mode that keeps split-K reductions in float32 (docs/design.md §4)
    __nv_bfloat16 hA[6], hB[6], hC[4];
    for (int i = 0; i < 6; ++i) hA[i] = __float2bfloat16_rn(A[i]), hB[i] = __float2bfloat16_rn(B[i]);
    auto half_gemm = [&] {
        return cublasGemmEx_64(h, CUBLAS_OP_N, CUBLAS_OP_N, 2, 2, 3, &one, hA, CUDA_R_16BF, 2, hB,
                               CUDA_R_16BF, 3, &zero, hC, CUDA_R_16BF, 2, CUBLAS_COMPUTE_32F,
                               CUBLAS_GEMM_DEFAULT);
    };
    CHECK(cublasSetMathMode(h, CUBLAS_DEFAULT_MATH) == CUBLAS_STATUS_SUCCESS, "math mode");
    CHECK(half_gemm() == CUBLAS_STATUS_INVALID_VALUE,
          "a bfloat16 output without CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION must be refused");
    CHECK(cublasSetMathMode(h, static_cast<cublasMath_t>(
                                   CUBLAS_DEFAULT_MATH | CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION)) ==
              CUBLAS_STATUS_SUCCESS,
          "math mode");
    CHECK(half_gemm() == CUBLAS_STATUS_SUCCESS && __bfloat162float(hC[3]) == 12.0f,
          "the same bfloat16 GEMM with reductions kept in float32");
    // an operand not aligned to its element
    CHECK(cublasGemmEx_64(h, CUBLAS_OP_N, CUBLAS_OP_N, 2, 2, 3, &one,
                          reinterpret_cast<const char *>(A) + 2, CUDA_R_32F, 2, B, CUDA_R_32F, 3,
                          &zero, C, CUDA_R_32F, 2, CUBLAS_COMPUTE_32F,
                          CUBLAS_GEMM_DEFAULT) == CUBLAS_STATUS_INVALID_VALUE,
          "A misaligned for its element type must be refused");
    CHECK(neat_emu_violations() == v + 2, "refusals recorded (%d, expected %d)",
          neat_emu_violations(), v + 2);
    cublasDestroy(h);
    neat_emu_reset_violations();
    neat_emu_set_quiet(0);
}

// ---- error cases on CUDA views (as tests/c/test_errors.c on the CPU) --------------------------

void expect_err(neat_status got, neat_status want, const char *needle, const char *what)
{
    CHECK(got == want, "%s: status %d, expected %d (%s)", what, (int)got, (int)want, neat_last_error());
    if (needle)
        CHECK(std::strstr(neat_last_error(), needle) != nullptr, "%s: message \"%s\" lacks \"%s\"",
              what, neat_last_error(), needle);
}

void error_tests()
{
    Spec s{5, 37, 53, 3, NEAT_ACT_SILU, 2, 1, NEAT_BFLOAT16, NEAT_FLOAT32, 0, 0, 1.0, 123};
    Problem p(s);
    Buf y;
    y.make(s.T, s.N, s.d_out, 0, 0);
    size_t need = 0;
    CHECK(neat_linear_forward_workspace_size(&p.args, nullptr, &need) == NEAT_OK && need > 0,
          "size query: %s", neat_last_error());
    std::vector<unsigned char> ws(need);
    expect_err(neat_linear_forward(&y.t, &p.args, ws.data(), need - 1, nullptr), NEAT_ERR_WORKSPACE,
               "workspace must have at least", "short workspace");
    expect_err(neat_linear_forward(&y.t, &p.args, nullptr, need, nullptr), NEAT_ERR_WORKSPACE,
               "NULL", "NULL workspace");
    CHECK(neat_linear_forward(&y.t, &p.args, ws.data(), need, nullptr) == NEAT_OK,
          "exact workspace: %s", neat_last_error());

    // dtype rules on CUDA: x must match weight; A may be float32 or weight's dtype, not float64
    Buf x16;
    x16.make(NEAT_FLOAT16, s.N, s.d_in, 0, 0);
    neat_args a = p.args;
    a.x = &x16.t;
    expect_err(call_forward(1, &y.t, &a, nullptr), NEAT_ERR_INVALID_ARGUMENT, "share one dtype",
               "x float16 with a bfloat16 weight");
    Buf A64;
    A64.make(NEAT_FLOAT64, s.r, s.d_out, 0, 0);
    a = p.args;
    a.A = &A64.t;
    expect_err(call_forward(1, &y.t, &a, nullptr), NEAT_ERR_INVALID_ARGUMENT, "float32",
               "A float64 with a bfloat16 weight");
    // one device per call
    Buf x1;
    x1.make(s.T, s.N, s.d_in, 0, 0, 1);
    a = p.args;
    a.x = &x1.t;
    expect_err(call_forward(1, &y.t, &a, nullptr), NEAT_ERR_INVALID_ARGUMENT, "one device",
               "x on cuda:1, weight on cuda:0");
}


// ---- calls with a workspace of exactly the queried size, against a guard ----------------------

// The query's size, then the call with a workspace of exactly that many bytes in a mapping whose
// next byte faults (and is poisoned under ASan).
neat_status exact_forward(int with_base, neat_tensor *y, const neat_args *a, const neat_exec *ex,
                          size_t *bytes)
{
    neat_status st = with_base ? neat_linear_forward_workspace_size(a, ex, bytes)
                               : neat_adapter_forward_workspace_size(a, ex, bytes);
    if (st != NEAT_OK) return st;
    gbuf ws = guard_alloc(*bytes, GUARD_BACK, GUARD_FLUSH);
    st = with_base ? neat_linear_forward(y, a, ws.p, *bytes, ex)
                   : neat_adapter_forward(y, a, ws.p, *bytes, ex);
    guard_free(&ws);
    return st;
}

neat_status exact_backward(int with_base, const neat_grads *g, const neat_tensor *dy,
                           const neat_args *a, const neat_exec *ex, size_t *bytes)
{
    neat_status st = with_base ? neat_linear_backward_workspace_size(g, a, ex, bytes)
                               : neat_adapter_backward_workspace_size(g, a, ex, bytes);
    if (st != NEAT_OK) return st;
    gbuf ws = guard_alloc(*bytes, GUARD_BACK, GUARD_FLUSH);
    st = with_base ? neat_linear_backward(g, dy, a, ws.p, *bytes, ex)
                   : neat_adapter_backward(g, dy, a, ws.p, *bytes, ex);
    guard_free(&ws);
    return st;
}

bool same_values(const Buf &a, const Buf &b)
{
    const std::vector<double> va = a.read(), vb = b.read();
    return va.size() == vb.size() && std::memcmp(va.data(), vb.data(), va.size() * sizeof(double)) == 0;
}

// Every gradient of a problem, contiguous, NaN-filled; T for x/W ones, P for A/B/H ones (or any
// dtype given).
struct GradBufs {
    Buf dx, dW, db, dA, dB, dH[NEAT_MAX_HIDDEN];
    neat_tensor dhv[NEAT_MAX_HIDDEN];
    neat_grads g{};
    GradBufs(const Spec &s, neat_dtype T, neat_dtype P, int with_base)
    {
        dx.make(T, s.N, s.d_in, LAYOUT_CONTIG, NAN, s.device);
        dW.make(T, s.d_out, s.d_in, LAYOUT_CONTIG, NAN, s.device);
        db.make1(T, s.d_out, 1, NAN, s.device);
        dA.make(P, s.r, s.d_out, LAYOUT_CONTIG, NAN, s.device);
        dB.make(P, s.d_out, s.r, LAYOUT_CONTIG, NAN, s.device);
        for (int i = 0; i < s.num_hidden; ++i) {
            dH[i].make(P, s.r, s.r, LAYOUT_CONTIG, NAN, s.device);
            dhv[i] = dH[i].t;
        }
        g.dx = &dx.t, g.dweight = &dW.t, g.dbias = with_base ? &db.t : nullptr;
        g.dA = &dA.t, g.dB = &dB.t, g.dhidden = s.num_hidden ? dhv : nullptr;
    }
};

// ---- mixed precision is the half call on rounded adapters (neat.h) ----------------------------

// b holds round_T(a) element by element (a float32 output of a mixed call, b the half call's).
bool rounds_to(const Buf &a, const Buf &b, neat_dtype T)
{
    const std::vector<double> va = a.read(), vb = b.read();
    if (va.size() != vb.size()) return false;
    for (size_t i = 0; i < va.size(); ++i)
        if (emu_round_to(T, va[i]) != vb[i]) return false;
    return true;
}

void mixed_equals_half_tests()
{
    int idx = 0, cases = 0;
    for (neat_dtype T : {NEAT_BFLOAT16, NEAT_FLOAT16})
        for (neat_activation act : {NEAT_ACT_RELU, NEAT_ACT_GELU, NEAT_ACT_SIN})
            for (int depth : {0, 4})
                for (int bias : {0, 1}) {
                    // same seed: the half problem's A, B, H are the mixed one's rounded to T
                    Spec sm{7, 37, 53, 3, act, depth, bias, T, NEAT_FLOAT32, idx % LAYOUT_COUNT,
                            0, idx % 2 ? 0.7 : 1.0, 7000 + static_cast<uint64_t>(idx)};
                    Spec sh = sm;
                    sh.P = T;
                    Problem pm(sm), ph(sh);
                    const std::string desc = "mixed vs half " + describe(sm);
                    for (int with_base = 1; with_base >= 0; --with_base) {
                        neat_args am = pm.args, ah = ph.args;
                        if (!with_base) am.bias = ah.bias = nullptr;
                        Buf ym, yh;
                        ym.make(T, sm.N, sm.d_out, 0, NAN), yh.make(T, sm.N, sm.d_out, 0, NAN);
                        CHECK(call_forward(with_base, &ym.t, &am, nullptr) == NEAT_OK &&
                                  call_forward(with_base, &yh.t, &ah, nullptr) == NEAT_OK,
                              "%s: forward: %s", desc.c_str(), neat_last_error());
                        CHECK(same_values(ym, yh), "%s: y differs from the half call's", desc.c_str());
                        GradBufs gm(sm, T, NEAT_FLOAT32, with_base), gh(sh, T, T, with_base);
                        CHECK(call_backward(with_base, &gm.g, &pm.tdy.t, &am, nullptr) == NEAT_OK &&
                                  call_backward(with_base, &gh.g, &ph.tdy.t, &ah, nullptr) == NEAT_OK,
                              "%s: backward: %s", desc.c_str(), neat_last_error());
                        CHECK(same_values(gm.dx, gh.dx) && same_values(gm.dW, gh.dW) &&
                                  (!with_base || same_values(gm.db, gh.db)),
                              "%s: dx, dweight or dbias differs from the half call's", desc.c_str());
                        CHECK(rounds_to(gm.dA, gh.dA, T) && rounds_to(gm.dB, gh.dB, T),
                              "%s: dA or dB, rounded to x's dtype, differs from the half call's",
                              desc.c_str());
                        for (int i = 0; i < depth; ++i)
                            CHECK(rounds_to(gm.dH[i], gh.dH[i], T),
                                  "%s: dhidden[%d], rounded, differs from the half call's",
                                  desc.c_str(), i);
                    }
                    Buf Gm, Gh, Gm32;
                    Gm.make(T, sm.r, sm.d_in, 0, NAN), Gh.make(T, sm.r, sm.d_in, 0, NAN);
                    Gm32.make(NEAT_FLOAT32, sm.r, sm.d_in, 0, NAN);
                    CHECK(call_compute_g(&Gm.t, &pm.args, nullptr) == NEAT_OK &&
                              call_compute_g(&Gh.t, &ph.args, nullptr) == NEAT_OK &&
                              call_compute_g(&Gm32.t, &pm.args, nullptr) == NEAT_OK,
                          "%s: compute_g: %s", desc.c_str(), neat_last_error());
                    CHECK(same_values(Gm, Gh) && rounds_to(Gm32, Gh, T),
                          "%s: G differs from the half call's", desc.c_str());
                    ++idx, ++cases;
                }
    std::printf("  mixed precision = half precision on rounded A, B, hidden: %d cases\n", cases);
}

// ---- y and dy that cuBLAS cannot take in place ------------------------------------------------

// A view of values v (rows, cols) with strides (2 cols + 1, 2): neither is 1. The storage around
// the elements is NaN.
void make_spread(Buf &b, neat_dtype dt, int64_t rows, int64_t cols, double fill)
{
    b.make(dt, rows, 2 * cols + 1, LAYOUT_CONTIG, fill);
    b.t.sizes[1] = cols, b.t.strides[1] = 2;
}

void strided_y_dy_tests()
{
    // The second shape needs two stage blocks (1 MiB) both ways: rows of y, dU and dx, columns
    // of dy for dB, dweight and dbias.
    static const int64_t shapes[][4] = {{5, 37, 53, 3}, {5000, 37, 53, 3}};
    static const neat_dtype configs[][2] = {{NEAT_FLOAT32, NEAT_FLOAT32},
                                            {NEAT_BFLOAT16, NEAT_BFLOAT16},
                                            {NEAT_FLOAT16, NEAT_FLOAT32}};
    int idx = 0;
    for (const auto &cfg : configs)
        for (const auto &sh : shapes) {
            Spec s{sh[0], sh[1], sh[2], sh[3], NEAT_ACT_GELU, 2, 1, cfg[0], cfg[1], 0, 0, 0.7,
                   8000 + static_cast<uint64_t>(idx++)};
            Problem p(s);
            const std::string desc = "strided y/dy " + describe(s);
            for (int with_base = 1; with_base >= 0; --with_base) {
                neat_args a = p.args;
                if (!with_base) a.bias = nullptr;
                size_t q_contig = 0, q_spread = 0;
                Buf y0, y1;
                y0.make(s.T, s.N, s.d_out, LAYOUT_CONTIG, NAN);
                make_spread(y1, s.T, s.N, s.d_out, NAN);
                neat_status st0 = exact_forward(with_base, &y0.t, &a, nullptr, &q_contig);
                neat_status st1 = exact_forward(with_base, &y1.t, &a, nullptr, &q_spread);
                CHECK(st0 == NEAT_OK && st1 == NEAT_OK,
                      "%s: forward with y contiguous %d, y strides (%lld, 2) %d: %s", desc.c_str(),
                      (int)st0, (long long)y1.t.strides[0], (int)st1, neat_last_error());
                CHECK(same_values(y0, y1), "%s: y through the stage differs from y written in place",
                      desc.c_str());
                CHECK(y1.padding_untouched(), "%s: y wrote between its elements", desc.c_str());

                // dy three ways with the same values: contiguous, every other column, and one row
                // broadcast (stride 0, what .sum() hands autograd); grads compared bit for bit
                std::vector<double> dyb(static_cast<size_t>(s.N * s.d_out));
                for (int64_t i = 0; i < s.N; ++i)
                    for (int64_t j = 0; j < s.d_out; ++j) dyb[i * s.d_out + j] = p.dy[j];
                Buf dc, ds, dbc, dbb;
                dc.make(s.T, s.N, s.d_out, LAYOUT_CONTIG, 0), dc.write(p.dy);
                make_spread(ds, s.T, s.N, s.d_out, NAN), ds.write(p.dy);
                dbc.make(s.T, s.N, s.d_out, LAYOUT_CONTIG, 0), dbc.write(dyb);
                dbb.make(s.T, 1, s.d_out, LAYOUT_CONTIG, 0), dbb.write(p.dy);
                dbb.t.sizes[0] = s.N, dbb.t.strides[0] = 0;
                const struct {
                    const Buf *ref, *odd;
                    const char *what;
                } pairs[] = {{&dc, &ds, "strides (2 d_out + 1, 2)"}, {&dbc, &dbb, "strides (0, 1)"}};
                for (const auto &pr : pairs) {
                    GradBufs g0(s, s.T, s.P, with_base), g1(s, s.T, s.P, with_base);
                    size_t b0 = 0, b1 = 0;
                    st0 = exact_backward(with_base, &g0.g, &pr.ref->t, &a, nullptr, &b0);
                    st1 = exact_backward(with_base, &g1.g, &pr.odd->t, &a, nullptr, &b1);
                    CHECK(st0 == NEAT_OK && st1 == NEAT_OK, "%s: backward, dy %s: %d %d: %s",
                          desc.c_str(), pr.what, (int)st0, (int)st1, neat_last_error());
                    bool same = same_values(g0.dx, g1.dx) && same_values(g0.dW, g1.dW) &&
                                same_values(g0.dA, g1.dA) && same_values(g0.dB, g1.dB) &&
                                (!with_base || same_values(g0.db, g1.db));
                    for (int i = 0; i < s.num_hidden; ++i) same = same && same_values(g0.dH[i], g1.dH[i]);
                    CHECK(same, "%s: %s gradients, dy %s, differ from a contiguous dy's",
                          desc.c_str(), with_base ? "linear" : "adapter", pr.what);
                }
            }
            // and the staged results are right, not only equal to each other (the small shape)
            if (s.N <= 64) {
                std::vector<double> yb(s.N * s.d_out + 1), ya(s.N * s.d_out + 1);
                ref_forward(&p.ref, yb.data(), ya.data());
                for (int64_t i = 0; i < s.N * s.d_out; ++i) ya[i] += yb[i];
                Buf y;
                make_spread(y, s.T, s.N, s.d_out, NAN);
                size_t q = 0;
                CHECK(exact_forward(1, &y.t, &p.args, nullptr, &q) == NEAT_OK, "%s: %s", desc.c_str(),
                      neat_last_error());
                expect_close(desc, "staged y", y, ya, s.T == NEAT_FLOAT32 ? 1e-5 : kHalfTol);
            }
        }
}

// ---- TF32 only on request, float32 accumulation always ----------------------------------------

// Checks every GEMM of this thread's log: the compute type wanted, and the math mode that keeps
// split-K reductions in float32.
void expect_gemms(const char *what, int compute_type)
{
    size_t gemms = 0;
    for (size_t i = 0; i < neat_emu_log_size(); ++i) {
        const neat_emu_event e = neat_emu_log_at(i);
        if (e.kind != NEAT_EMU_BLAS) continue;
        ++gemms;
        CHECK(e.compute_type == compute_type, "%s: a GEMM ran with compute type %d, expected %d",
              what, e.compute_type, compute_type);
        CHECK(e.math_mode & CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION,
              "%s: a GEMM ran with math mode %d (reduced-precision reductions allowed)", what,
              e.math_mode);
    }
    CHECK(gemms > 0, "%s: no GEMM in the log", what);
}

void tf32_tests()
{
    Spec s{33, 64, 48, 8, NEAT_ACT_TANH, 2, 1, NEAT_FLOAT32, NEAT_FLOAT32, 0, 0, 0.7, 9100};
    Problem p(s);
    std::vector<double> yb(s.N * s.d_out), ya(s.N * s.d_out), dA(s.r * s.d_out);
    ref_forward(&p.ref, yb.data(), ya.data());
    for (size_t i = 0; i < ya.size(); ++i) ya[i] += yb[i];
    ref_grads rg{};
    rg.dA = dA.data();
    ref_backward(&p.ref, p.dy.data(), &rg);
    double err[2] = {0, 0}, err_da[2] = {0, 0};
    Buf y[2], gA[2];
    for (int tf = 0; tf <= 1; ++tf) {
        neat_exec ex{};
        ex.allow_tf32 = tf;
        y[tf].make(s.T, s.N, s.d_out, 0, NAN);
        gA[tf].make(s.P, s.r, s.d_out, 0, NAN);
        neat_grads g{};
        g.dA = &gA[tf].t;
        neat_emu_log_clear();
        CHECK(call_forward(1, &y[tf].t, &p.args, &ex) == NEAT_OK &&
                  call_backward(1, &g, &p.tdy.t, &p.args, &ex) == NEAT_OK,
              "allow_tf32 %d: %s", tf, neat_last_error());
        expect_gemms(tf ? "float32, allow_tf32 = 1" : "float32, allow_tf32 = 0",
                     tf ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F);
        std::vector<double> got = y[tf].read(), gotA = gA[tf].read();
        err[tf] = rel_err(got.data(), ya.data(), static_cast<int64_t>(ya.size()));
        err_da[tf] = rel_err(gotA.data(), dA.data(), static_cast<int64_t>(dA.size()));
    }
    CHECK(err[0] <= 1e-5 && err_da[0] <= 1e-5, "strict float32: y rel err %.3g, dA %.3g > 1e-5",
          err[0], err_da[0]);
    // TF32 keeps 10 mantissa bits: relative errors of a few 1e-4, visibly above float32's
    CHECK(err[1] > 1e-5 && err[1] < 5e-3 && err_da[1] > 1e-5 && err_da[1] < 5e-3,
          "TF32: y rel err %.3g, dA %.3g: expected between 1e-5 and 5e-3", err[1], err_da[1]);
    std::printf("  TF32: y rel err %.2g (strict float32 %.2g), dA %.2g (%.2g)\n", err[1], err[0],
                err_da[1], err_da[0]);

    // allow_tf32 changes nothing where there is no float32 product
    for (neat_dtype dt : {NEAT_FLOAT64, NEAT_BFLOAT16}) {
        Spec sd = s;
        sd.T = sd.P = dt;
        Problem pd(sd);
        Buf a, b;
        a.make(dt, sd.N, sd.d_out, 0, NAN), b.make(dt, sd.N, sd.d_out, 0, NAN);
        neat_exec ex{};
        ex.allow_tf32 = 1;
        neat_emu_log_clear();
        CHECK(call_forward(1, &a.t, &pd.args, &ex) == NEAT_OK, "%s: %s", dtype_name(dt),
              neat_last_error());
        expect_gemms(dt == NEAT_FLOAT64 ? "float64, allow_tf32 = 1" : "bfloat16 forward, allow_tf32 = 1",
                     dt == NEAT_FLOAT64 ? CUBLAS_COMPUTE_64F : CUBLAS_COMPUTE_32F);
        CHECK(call_forward(1, &b.t, &pd.args, nullptr) == NEAT_OK, "%s: %s", dtype_name(dt),
              neat_last_error());
        CHECK(same_values(a, b), "%s: allow_tf32 changed the result", dtype_name(dt));
    }
}

// ---- scratch the backend hands cuBLAS is 16-byte aligned; cuBLAS workspace per device ----------

void alignment_tests()
{
    // x, W, y, dy and every gradient have rows of 16-byte multiples; r = 3 with a bias makes the
    // backend's own (N, r + 1), (d_out, r + 1), (N, r) scratch odd-sized: only its padding keeps
    // every GEMM operand aligned
    static const neat_dtype configs[][2] = {{NEAT_FLOAT32, NEAT_FLOAT32},
                                            {NEAT_BFLOAT16, NEAT_BFLOAT16},
                                            {NEAT_BFLOAT16, NEAT_FLOAT32}};
    for (const auto &cfg : configs) {
        Spec s{24, 64, 48, 3, NEAT_ACT_GELU, 2, 1, cfg[0], cfg[1], LAYOUT_CONTIG, 0, 0.5, 9200};
        Problem p(s);
        const std::string desc = "aligned scratch " + describe(s);
        // the caller's own r-wide views get a row stride of 8 elements (16 or 32 bytes)
        p.tA.make(s.P, s.r, s.d_out, LAYOUT_CONTIG, 0), p.tA.write(p.A);
        p.tB.make_ld(s.P, s.d_out, s.r, 8, 0), p.tB.write(p.B);
        Buf y, G;
        y.make(s.T, s.N, s.d_out, 0, NAN);
        G.make(s.T, s.r, s.d_in, 0, NAN);
        GradBufs g(s, s.T, s.P, 1);
        g.dB.make_ld(s.P, s.d_out, s.r, 8, NAN);
        for (int i = 0; i < s.num_hidden; ++i) {
            g.dH[i].make_ld(s.P, s.r, s.r, 8, NAN);
            g.dhv[i] = g.dH[i].t;
        }
        neat_emu_log_clear();
        CHECK(call_forward(1, &y.t, &p.args, nullptr) == NEAT_OK &&
                  call_backward(1, &g.g, &p.tdy.t, &p.args, nullptr) == NEAT_OK &&
                  call_compute_g(&G.t, &p.args, nullptr) == NEAT_OK,
              "%s: %s", desc.c_str(), neat_last_error());
        size_t gemms = 0, odd = 0;
        for (size_t i = 0; i < neat_emu_log_size(); ++i) {
            const neat_emu_event e = neat_emu_log_at(i);
            if (e.kind != NEAT_EMU_BLAS) continue;
            ++gemms;
            odd += !e.aligned16;
        }
        CHECK(gemms > 0 && odd == 0, "%s: %zu of %zu GEMMs had an operand not 16-byte aligned",
              desc.c_str(), odd, gemms);
    }

    // the cuBLAS workspace: 4 MiB before compute capability 9.0, 32 MiB from it (cuda:0 is an
    // sm_80, cuda:1 an sm_90 in the emulation)
    if (!std::getenv("NEAT_CUBLAS_WORKSPACE_KB")) {
        size_t need[2] = {0, 0};
        for (int dev = 0; dev < 2; ++dev) {
            Spec s{4, 37, 53, 3, NEAT_ACT_RELU, 0, 1, NEAT_BFLOAT16, NEAT_BFLOAT16, 0, 0, 1.0, 9300, dev};
            Problem p(s);
            CHECK(neat_linear_forward_workspace_size(&p.args, nullptr, &need[dev]) == NEAT_OK,
                  "size query on cuda:%d: %s", dev, neat_last_error());
        }
        CHECK(need[0] > (size_t(4) << 20) && need[0] < (size_t(5) << 20) &&
                  need[1] - need[0] == (size_t(28) << 20),
              "cuBLAS workspace: cuda:0 (sm_80) query %zu bytes, cuda:1 (sm_90) %zu: expected "
              "4 MiB and 32 MiB plus the same scratch",
              need[0], need[1]);
    }
}

// ---- cuBLAS handles: a pool, not one per thread ever started ----------------------------------

void handle_pool_tests()
{
    Spec s0{3, 16, 24, 2, NEAT_ACT_RELU, 0, 0, NEAT_FLOAT32, NEAT_FLOAT32, 0, 0, 1.0, 9400, 0};
    Spec s1 = s0;
    s1.device = 1;
    Problem p0(s0), p1(s1);
    constexpr int kBatch = 4, kRounds = 12;
    const int before = neat_emu_blas_live_handles();
    neat_status st[kRounds][kBatch];
    for (int round = 0; round < kRounds; ++round) {
        std::vector<std::thread> threads;
        for (int t = 0; t < kBatch; ++t)
            threads.emplace_back([&, round, t] {
                // each thread works on both devices, so it holds a handle of each
                Buf y0, y1;
                y0.make(s0.T, s0.N, s0.d_out, 0, 0, 0);
                y1.make(s1.T, s1.N, s1.d_out, 0, 0, 1);
                neat_status a = call_forward(0, &y0.t, &p0.args, nullptr);
                st[round][t] = a != NEAT_OK ? a : call_forward(0, &y1.t, &p1.args, nullptr);
            });
        for (auto &th : threads) th.join();
    }
    int failed = 0;
    for (auto &row : st)
        for (neat_status v : row) failed += v != NEAT_OK;
    const int after = neat_emu_blas_live_handles();
    CHECK(failed == 0, "%d of %d threaded calls failed", failed, kBatch * kRounds);
    // at most kBatch threads at once, one handle each per device: never more handles than that
    CHECK(after - before <= 2 * kBatch,
          "%d threads (%d at a time, 2 devices each) left %d new cuBLAS handles; at most %d expected",
          kBatch * kRounds, kBatch, after - before, 2 * kBatch);
    std::printf("  cuBLAS handles: %d threads on 2 devices, %d at a time: %d handles created\n",
                kBatch * kRounds, kBatch, after - before);
}

// ---- the two rank-r paths: launches per step, the selector, the rank limit --------------------

struct Launches {
    int kernels = 0, gemms = 0, fused = 0; // fused: launches of the fused.cuh kernels
    int total() const { return kernels + gemms; }
};

Launches count_log()
{
    Launches c;
    for (size_t i = 0; i < neat_emu_log_size(); ++i) {
        const neat_emu_event e = neat_emu_log_at(i);
        c.kernels += e.kind == NEAT_EMU_KERNEL;
        c.gemms += e.kind == NEAT_EMU_BLAS;
        c.fused += e.kind == NEAT_EMU_KERNEL && std::strncmp(e.name, "fused_", 6) == 0;
    }
    return c;
}

// Sets NEAT_CUDA_RANK_PATH for the calls that follow (nullptr: unset).
void set_rank_path(const char *v)
{
    if (v) setenv("NEAT_CUDA_RANK_PATH", v, 1);
    else unsetenv("NEAT_CUDA_RANK_PATH");
}

// One forward and one backward (every gradient) of s, counted; the workspaces the size queries
// report go to *fwd_ws, *bwd_ws.
void count_step(const Spec &s, Launches *fwd, Launches *bwd, size_t *fwd_ws, size_t *bwd_ws)
{
    Problem p(s);
    Buf y;
    y.make(s.T, s.N, s.d_out, LAYOUT_CONTIG, NAN);
    GradBufs g(s, s.T, s.P, 1);
    neat_emu_log_clear();
    CHECK(exact_forward(1, &y.t, &p.args, nullptr, fwd_ws) == NEAT_OK, "%s: forward: %s",
          describe(s).c_str(), neat_last_error());
    *fwd = count_log();
    neat_emu_log_clear();
    CHECK(exact_backward(1, &g.g, &p.tdy.t, &p.args, nullptr, bwd_ws) == NEAT_OK, "%s: backward: %s",
          describe(s).c_str(), neat_last_error());
    *bwd = count_log();
}

// One step on each rank-r path: [0] the cuBLAS path, [1] the fused one.
void count_both_paths(const Spec &s, Launches *f, Launches *b, size_t *fws, size_t *bws)
{
    set_rank_path("cublas");
    count_step(s, &f[0], &b[0], &fws[0], &bws[0]);
    set_rank_path("fused");
    count_step(s, &f[1], &b[1], &fws[1], &bws[1]);
}

void rank_path_tests()
{
    const char *saved = std::getenv("NEAT_CUDA_RANK_PATH");
    const std::string keep = saved ? saved : "";
    // The launch sequences of forward.cu and backward.cu for a linear layer with bias, no hidden
    // layers, bfloat16 throughout, every gradient (G = act(A W) is one kernel at depth 0):
    //   forward, cuBLAS: A W, act, U = s x G^T, convert B, fill 1, convert b, [U | 1][B | b]^T,
    //                    x W^T                                         4 kernels + 4 GEMMs = 8
    //   forward, fused:  A W, act, fused rows (y = s U B^T + b), x W^T  2 kernels + 2 GEMMs = 4
    //   backward, cuBLAS: A W, act, dU, dU G, dy W, U, dy^T U, dy^T x, fill 1, dy^T 1, dU^T x,
    //                    act', round dZ0, dZ0 W^T, A^T dZ0             4 kernels + 11 GEMMs = 15
    //   backward, fused: A W, act, fused rows (dU and dU G), dy W, fused rows (U), fused cols
    //                    (dB and db), dy^T x, dU^T x, act', round dZ0, dZ0 W^T, A^T dZ0
    //                                                                  6 kernels + 6 GEMMs = 12
    // Without bias the forward's cuBLAS path has no conversions or fills: 1 kernel + 4 GEMMs.
    struct Want {
        int bias;
        Launches fwd, bwd;
    };
    const Want cublas[] = {{1, {4, 4, 0}, {4, 11, 0}}, {0, {1, 4, 0}, {4, 11, 0}}};
    const Want fused[] = {{1, {2, 2, 1}, {6, 6, 3}}, {0, {2, 2, 1}, {6, 6, 3}}};
    for (int bias = 1; bias >= 0; --bias) {
        Spec s{40, 64, 48, 8, NEAT_ACT_GELU, 0, bias, NEAT_BFLOAT16, NEAT_BFLOAT16, LAYOUT_CONTIG,
               0, 0.5, 9500};
        Launches f[2], b[2];
        size_t fws[2], bws[2];
        count_both_paths(s, f, b, fws, bws);
        const Want &wc = cublas[1 - bias], &wf = fused[1 - bias];
        const struct {
            const char *what;
            const Launches &got, &want;
        } rows[] = {{"forward, cuBLAS path", f[0], wc.fwd}, {"backward, cuBLAS path", b[0], wc.bwd},
                    {"forward, fused path", f[1], wf.fwd}, {"backward, fused path", b[1], wf.bwd}};
        for (const auto &r : rows)
            CHECK(r.got.kernels == r.want.kernels && r.got.gemms == r.want.gemms &&
                      r.got.fused == r.want.fused,
                  "bias %d, %s: %d kernels (%d fused) + %d GEMMs; the launch sequence says %d (%d) "
                  "+ %d", bias, r.what, r.got.kernels, r.got.fused, r.got.gemms, r.want.kernels,
                  r.want.fused, r.want.gemms);
        CHECK(f[1].total() < f[0].total() && b[1].total() < b[0].total(),
              "bias %d: the fused path does not launch less: forward %d vs %d, backward %d vs %d",
              bias, f[1].total(), f[0].total(), b[1].total(), b[0].total());
        CHECK(fws[1] <= fws[0] && bws[1] <= bws[0],
              "bias %d: the fused path needs more workspace: forward %zu vs %zu, backward %zu vs %zu",
              bias, fws[1], fws[0], bws[1], bws[0]);
        std::printf("  launches per step, bias %d (kernels + cuBLAS): forward %d + %d cuBLAS path, "
                    "%d + %d fused; backward %d + %d cuBLAS path, %d + %d fused\n",
                    bias, f[0].kernels, f[0].gemms, f[1].kernels, f[1].gemms, b[0].kernels,
                    b[0].gemms, b[1].kernels, b[1].gemms);
    }

    // Above kFusedMaxRank (64) the fused path is the cuBLAS one.
    {
        Spec s{6, 70, 66, 65, NEAT_ACT_TANH, 0, 1, NEAT_FLOAT32, NEAT_FLOAT32, LAYOUT_CONTIG, 0,
               0.5, 9501};
        Launches f[2], b[2];
        size_t fws[2], bws[2];
        count_both_paths(s, f, b, fws, bws);
        CHECK(f[1].fused == 0 && b[1].fused == 0 && f[1].total() == f[0].total() &&
                  b[1].total() == b[0].total() && fws[1] == fws[0] && bws[1] == bws[0],
              "r = 65 with NEAT_CUDA_RANK_PATH=fused: %d + %d fused launches, %d and %d in all "
              "(cuBLAS path: %d and %d)",
              f[1].fused, b[1].fused, f[1].total(), b[1].total(), f[0].total(), b[0].total());
    }

    // Anything else is refused by name, by the size query and the call alike.
    {
        Spec s{4, 16, 24, 2, NEAT_ACT_RELU, 0, 1, NEAT_FLOAT32, NEAT_FLOAT32, 0, 0, 1.0, 9502};
        Problem p(s);
        Buf y;
        y.make(s.T, s.N, s.d_out, LAYOUT_CONTIG, NAN);
        set_rank_path("Fused");
        size_t bytes = 0;
        neat_status st = neat_linear_forward_workspace_size(&p.args, nullptr, &bytes);
        CHECK(st == NEAT_ERR_INVALID_ARGUMENT &&
                  std::strstr(neat_last_error(), "NEAT_CUDA_RANK_PATH is 'Fused'") &&
                  std::strstr(neat_last_error(), "'cublas' (the default) or 'fused'"),
              "NEAT_CUDA_RANK_PATH=Fused, size query: status %d: %s", (int)st, neat_last_error());
        set_rank_path("cublas");
        CHECK(neat_linear_forward_workspace_size(&p.args, nullptr, &bytes) == NEAT_OK, "%s",
              neat_last_error());
        std::vector<unsigned char> ws(bytes + 1);
        set_rank_path("bogus");
        st = neat_linear_forward(&y.t, &p.args, ws.data(), bytes, nullptr);
        CHECK(st == NEAT_ERR_INVALID_ARGUMENT && std::strstr(neat_last_error(), "'bogus'"),
              "NEAT_CUDA_RANK_PATH=bogus, compute call: status %d: %s", (int)st, neat_last_error());
        set_rank_path("");
        CHECK(neat_linear_forward(&y.t, &p.args, ws.data(), bytes, nullptr) == NEAT_OK,
              "NEAT_CUDA_RANK_PATH empty (the default): %s", neat_last_error());
    }
    set_rank_path(saved ? keep.c_str() : nullptr);
}

} // namespace

int main()
{
    std::printf("half precision on CUDA views (tolerance %g):\n", kHalfTol);
    half_precision_tests();
    stream_tests();
    nan_tests();
    cublas_double_tests();
    error_tests();
    mixed_equals_half_tests();
    strided_y_dy_tests();
    tf32_tests();
    alignment_tests();
    handle_pool_tests();
    rank_path_tests();
    CHECK(neat_emu_violations() == 0, "%d violations of the CUDA runtime / cuBLAS rules; last: %s",
          neat_emu_violations(), neat_emu_last_violation());
    return check_exit("test_cuda_emu");
}
