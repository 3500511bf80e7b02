// test_cuda_emu.cpp - the CUDA backend (cuda/, run on the host by the emulation build) on what
// test_kernels_cuda cannot reach: bfloat16, float16 and mixed precision (float32 A, B, hidden
// with half x and weight) against the float64 reference, NaN propagation against the CPU
// backend, the stream and device every piece of work is issued on, the cuBLAS double's own
// strictness, and error cases on CUDA views. Tolerances (DESIGN 4): half 2e-2, float32 1e-5.
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

extern "C" {
#include "check.h"
#include "layer.h"
#include "reference.h"
#include "util.h"
}
#include "emu_log.h"

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

// v rounded to what dtype holds, the way the device rounds (the toolkit's own conversions).
double round_dt(neat_dtype d, double v)
{
    switch (d) {
    case NEAT_FLOAT64: return v;
    case NEAT_FLOAT32: return static_cast<float>(v);
    case NEAT_FLOAT16: return __half2float(__float2half_rn(static_cast<float>(v)));
    case NEAT_BFLOAT16: return __bfloat162float(__float2bfloat16_rn(static_cast<float>(v)));
    }
    return v;
}

// A 2-D (or 1-D) strided device view in any dtype; device memory is host memory here.
struct Buf {
    neat_tensor t{};
    std::vector<unsigned char> mem;
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
        mem.assign(static_cast<size_t>(elems > 0 ? elems : 1) * esize(dt), 0);
        t.data = mem.data();
        t.dtype = dt;
        t.device.type = NEAT_DEVICE_CUDA;
        t.device.index = device;
        for (int64_t i = 0; i < elems; ++i) set_raw(i, fill);
    }
    void set_raw(int64_t i, double v)
    {
        void *p = mem.data();
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
        const void *p = mem.data();
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
    for (auto &x : v) x = round_dt(dt, x);
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
    std::vector<double> A_ref, B_ref; // A and B as the kernels use them (see below)
    Buf tx, tW, tb, tA, tB, tH[NEAT_MAX_HIDDEN], tdy;
    neat_tensor hidden[NEAT_MAX_HIDDEN];
    neat_args args{};
    ref_problem ref{};

    explicit Problem(const Spec &sp) : s(sp)
    {
        uint64_t rng = s.seed;
        // the amplitudes of tests/c/layer.c: every pre-activation O(1)
        x = rand_vals(&rng, s.N * s.d_in, 1.0, s.T);
        W = rand_vals(&rng, s.d_out * s.d_in, 1.0, s.T);
        b = rand_vals(&rng, s.d_out, 1.0, s.T);
        A = rand_vals(&rng, s.r * s.d_out, 2.0 / std::sqrt(double(s.d_out)), s.P);
        B = rand_vals(&rng, s.d_out * s.r, 1.0, s.P);
        for (int i = 0; i < s.num_hidden; ++i)
            H[i] = rand_vals(&rng, s.r * s.r, 1.5 / std::sqrt(double(s.r)), s.P);
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
        // Mixed precision as cuda/ implements it: float32 A and B are rounded to x's half dtype
        // on entry (their products run on half tensor-core paths); hidden weights are read as
        // float32. The reference takes the same rounded A and B, so the comparison measures the
        // kernels, not that choice.
        A_ref = A, B_ref = B;
        for (auto &v : A_ref) v = round_dt(s.T, v);
        for (auto &v : B_ref) v = round_dt(s.T, v);
        ref.A = A_ref.data(), ref.B = B_ref.data();
        for (int i = 0; i < s.num_hidden; ++i) ref.H[i] = H[i].data();
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
            for (int act = 0; act <= NEAT_ACT_IDENTITY; ++act)
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
    for (int act = 0; act <= NEAT_ACT_IDENTITY; ++act) {
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

    // An output cuBLAS cannot write (no unit stride) needs scratch the size query, which sees no
    // output, cannot foresee: a clean NEAT_ERR_WORKSPACE, never a wrong or partial result.
    Buf ywide;
    ywide.make(s.T, s.N, 2 * s.d_out, 0, 0);
    ywide.t.sizes[1] = s.d_out, ywide.t.strides[1] = 2;
    expect_err(call_forward(1, &ywide.t, &p.args, nullptr), NEAT_ERR_WORKSPACE, "unit stride",
               "y with no unit stride");
    // The same for dy in the backward: its size query has no dy and assumes a contiguous one.
    Buf dywide, dx;
    dywide.make(s.T, s.N, 2 * s.d_out, 0, 0);
    dywide.t.sizes[1] = s.d_out, dywide.t.strides[1] = 2;
    dx.make(s.T, s.N, s.d_in, 0, 0);
    neat_grads g{};
    g.dx = &dx.t;
    expect_err(call_backward(1, &g, &dywide.t, &p.args, nullptr), NEAT_ERR_WORKSPACE, "unit stride",
               "dy with no unit stride");
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
    CHECK(neat_emu_violations() == 0, "%d violations of the CUDA runtime / cuBLAS rules; last: %s",
          neat_emu_violations(), neat_emu_last_violation());
    return check_exit("test_cuda_emu");
}
