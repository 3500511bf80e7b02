// test_quant_half.cpp - a quantized W in the half compute dtypes on (emulated) CUDA, which the C tests
// (float32 and float64 only, as on the CPU) cannot reach.
//
// The rule: every neat_q* call equals its float twin run on the dequantized W rounded once to the
// compute dtype (bitsandbytes' own dequantize to a half dtype). Where one panel holds all of W (the
// default budget on these shapes) the quantized call makes the very same products as the float one,
// so the two agree bit for bit: the dequantizer's half rounding, the mixed-precision adapters
// (float32 A, B, H) and the panel's layout are all checked exactly. With 1 KiB panels
// (NEAT_CUDA_QPANEL_KB) the sums are split, so the outputs agree within the half bound only.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "emu_test.h"

extern "C" {
#include "qref.h"
#include "util.h"
}

namespace {

constexpr double kHalfTol = 2e-2; // docs/design.md §4

// A contiguous 2-D (or 1-D) tensor on cuda:0 (host memory under the emulation).
struct Buf {
    std::vector<double> mem; // 8-byte aligned storage for any dtype
    neat_tensor t{};

    void make(neat_dtype dt, int64_t rows, int64_t cols, double fill, int ndim = 2)
    {
        mem.assign(static_cast<size_t>(rows * cols) + 1, 0.0);
        t.data = mem.data();
        t.dtype = dt;
        t.ndim = ndim;
        t.sizes[0] = rows, t.sizes[1] = ndim == 2 ? cols : 0;
        t.strides[0] = ndim == 2 ? cols : 1, t.strides[1] = 1;
        t.device.type = NEAT_DEVICE_CUDA;
        for (int64_t i = 0; i < rows * cols; ++i) set(i, fill);
    }
    void set(int64_t i, double v)
    {
        switch (t.dtype) {
        case NEAT_FLOAT64: static_cast<double *>(t.data)[i] = v; break;
        case NEAT_FLOAT32: static_cast<float *>(t.data)[i] = static_cast<float>(v); break;
        case NEAT_FLOAT16: static_cast<__half *>(t.data)[i] = __float2half_rn(static_cast<float>(v)); break;
        case NEAT_BFLOAT16:
            static_cast<__nv_bfloat16 *>(t.data)[i] = __float2bfloat16_rn(static_cast<float>(v));
            break;
        }
    }
    double get(int64_t i) const
    {
        switch (t.dtype) {
        case NEAT_FLOAT64: return static_cast<const double *>(t.data)[i];
        case NEAT_FLOAT32: return static_cast<const float *>(t.data)[i];
        case NEAT_FLOAT16: return __half2float(static_cast<const __half *>(t.data)[i]);
        case NEAT_BFLOAT16: return __bfloat162float(static_cast<const __nv_bfloat16 *>(t.data)[i]);
        }
        return 0;
    }
    int64_t numel() const { return t.sizes[0] * (t.ndim == 2 ? t.sizes[1] : 1); }
    void fill_random(uint64_t *rng, double amp)
    {
        for (int64_t i = 0; i < numel(); ++i) set(i, amp * (2.0 * (rng_next(rng) >> 11) * 0x1p-53 - 1.0));
    }
};

// The outputs of one run of the four calls (forward, backward with every gradient, compute_g, lowrank).
struct Outs {
    Buf y, G, yl, dx, db, dA, dB, dH[2];
};

void run(const neat_qweight *q, const neat_args &a0, const neat_tensor *dy, const Buf &Gin,
         neat_dtype T, neat_dtype P, Outs *o, const std::string &what)
{
    const int64_t N = a0.x->sizes[0], d_in = a0.x->sizes[1], d_out = a0.B->sizes[0], r = a0.A->sizes[0];
    neat_args a = a0;
    if (q) a.weight = nullptr;
    o->y.make(T, N, d_out, NAN), o->G.make(T, r, d_in, NAN), o->yl.make(T, N, d_out, NAN);
    o->dx.make(T, N, d_in, NAN), o->db.make(T, d_out, 1, NAN, 1);
    o->dA.make(P, r, d_out, NAN), o->dB.make(P, d_out, r, NAN);
    neat_tensor dh[2];
    for (int i = 0; i < 2; ++i) o->dH[i].make(P, r, r, NAN), dh[i] = o->dH[i].t;
    neat_grads g{&o->dx.t, nullptr, &o->db.t, &o->dA.t, &o->dB.t, dh};
    neat_lowrank_args la{a.x, a.weight, a.bias, &Gin.t, a.B, a.scale};
    std::vector<char> ws;
    size_t bytes = 0;
    auto sized = [&](neat_status st) {
        CHECK(st == NEAT_OK, "%s%s: size: %s", q ? "q " : "", what.c_str(), neat_last_error());
        ws.assign(bytes + 1, 0);
    };
    const char *who = q ? "quantized" : "float";
    sized(q ? neat_qlinear_forward_workspace_size(&a, q, nullptr, &bytes)
            : neat_linear_forward_workspace_size(&a, nullptr, &bytes));
    CHECK((q ? neat_qlinear_forward(&o->y.t, &a, q, ws.data(), bytes, nullptr)
             : neat_linear_forward(&o->y.t, &a, ws.data(), bytes, nullptr)) == NEAT_OK,
          "%s %s forward: %s", who, what.c_str(), neat_last_error());
    sized(q ? neat_qlinear_backward_workspace_size(&g, &a, q, nullptr, &bytes)
            : neat_linear_backward_workspace_size(&g, &a, nullptr, &bytes));
    CHECK((q ? neat_qlinear_backward(&g, dy, &a, q, ws.data(), bytes, nullptr)
             : neat_linear_backward(&g, dy, &a, ws.data(), bytes, nullptr)) == NEAT_OK,
          "%s %s backward: %s", who, what.c_str(), neat_last_error());
    sized(q ? neat_qcompute_g_workspace_size(&a, q, nullptr, &bytes)
            : neat_compute_g_workspace_size(&a, nullptr, &bytes));
    CHECK((q ? neat_qcompute_g(&o->G.t, &a, q, ws.data(), bytes, nullptr)
             : neat_compute_g(&o->G.t, &a, ws.data(), bytes, nullptr)) == NEAT_OK,
          "%s %s compute_g: %s", who, what.c_str(), neat_last_error());
    sized(q ? neat_qlowrank_forward_workspace_size(&la, q, nullptr, &bytes)
            : neat_lowrank_forward_workspace_size(&la, nullptr, &bytes));
    CHECK((q ? neat_qlowrank_forward(&o->yl.t, &la, q, ws.data(), bytes, nullptr)
             : neat_lowrank_forward(&o->yl.t, &la, ws.data(), bytes, nullptr)) == NEAT_OK,
          "%s %s lowrank: %s", who, what.c_str(), neat_last_error());
}

// exact: the same bits; else within the half bound (and not all zeros).
void compare(const Buf &got, const Buf &want, const char *name, bool exact, const std::string &what)
{
    const int64_t n = got.numel();
    std::vector<double> g(n + 1), w(n + 1);
    double norm = 0;
    for (int64_t i = 0; i < n; ++i) g[i] = got.get(i), w[i] = want.get(i), norm += w[i] * w[i];
    CHECK(norm > 0, "%s: %s is all zeros in the float path", what.c_str(), name);
    if (exact) {
        int64_t diff = 0;
        for (int64_t i = 0; i < n; ++i) diff += std::memcmp(&g[i], &w[i], sizeof(double)) != 0;
        CHECK(diff == 0, "%s: %s: %lld of %lld elements differ from the float path on the dequantized W",
              what.c_str(), name, (long long)diff, (long long)n);
    } else {
        const double err = rel_err(g.data(), w.data(), n);
        CHECK(err <= kHalfTol, "%s: %s rel err %.3g > %g", what.c_str(), name, err, kHalfTol);
    }
}

void check_case(const qref_spec &qs, neat_dtype T, neat_dtype P, const char *panel_kb, uint64_t seed)
{
    const int64_t N = 7, d_in = 45, d_out = 70, r = 3;
    char qname[64];
    qref_describe(&qs, qname, sizeof qname);
    const bool exact = !*panel_kb;
    const std::string what = std::string(qname) + (T == NEAT_BFLOAT16 ? " bf16" : " f16") +
                             (P == NEAT_FLOAT32 ? "+f32" : "") + (exact ? "" : " 1 KiB panels");
    setenv("NEAT_CUDA_QPANEL_KB", panel_kb, 1);
    uint64_t rng = seed;
    qref ref;
    qref_make(&ref, &qs, T, d_out, d_in, GUARD_BACK, &rng);
    ref.q.device = {NEAT_DEVICE_CUDA, 0};
    std::vector<double> W(static_cast<size_t>(d_out * d_in));
    qref_dequant(&ref.q, W.data());

    Buf x, Wt, b, A, B, H[2], dy, Gin;
    x.make(T, N, d_in, 0), x.fill_random(&rng, 1.0);
    Wt.make(T, d_out, d_in, 0); // the float twin's W: the float32 values rounded once to T
    for (int64_t i = 0; i < d_out * d_in; ++i) Wt.set(i, W[i]);
    b.make(T, d_out, 1, 0, 1), b.fill_random(&rng, 1.0);
    A.make(P, r, d_out, 0), A.fill_random(&rng, 2.0 / std::sqrt(double(d_out)));
    B.make(P, d_out, r, 0), B.fill_random(&rng, 1.0);
    neat_tensor hv[2];
    for (int i = 0; i < 2; ++i) H[i].make(P, r, r, 0), H[i].fill_random(&rng, 1.0), hv[i] = H[i].t;
    dy.make(T, N, d_out, 0), dy.fill_random(&rng, 1.0);
    Gin.make(P, r, d_in, 0), Gin.fill_random(&rng, 1.0); // G shares B's dtype
    neat_args a{&x.t, &Wt.t, &b.t, &A.t, &B.t, hv, 2, NEAT_ACT_GELU, 0.75};

    Outs f, o;
    run(nullptr, a, &dy.t, Gin, T, P, &f, what);
    run(&ref.q, a, &dy.t, Gin, T, P, &o, what);
    compare(o.y, f.y, "y", exact, what), compare(o.yl, f.yl, "lowrank y", exact, what);
    compare(o.G, f.G, "G", exact, what), compare(o.dx, f.dx, "dx", exact, what);
    compare(o.db, f.db, "dbias", exact, what), compare(o.dA, f.dA, "dA", exact, what);
    compare(o.dB, f.dB, "dB", exact, what);
    compare(o.dH[0], f.dH[0], "dH0", exact, what), compare(o.dH[1], f.dH[1], "dH1", exact, what);
    qref_free(&ref);
}

} // namespace

int main()
{
    const qref_spec specs[] = {{NEAT_QFMT_NF4, 0, 64, 0, 0},
                               {NEAT_QFMT_FP4, 1, 32, 16, 0},
                               {NEAT_QFMT_INT8_ROW, 0, 0, 0, 3}};
    const neat_dtype configs[][2] = {{NEAT_BFLOAT16, NEAT_BFLOAT16},
                                     {NEAT_FLOAT16, NEAT_FLOAT16},
                                     {NEAT_BFLOAT16, NEAT_FLOAT32},
                                     {NEAT_FLOAT16, NEAT_FLOAT32}};
    uint64_t seed = 77;
    for (const char *kb : {"", "1"})
        for (const auto &s : specs)
            for (const auto &c : configs) check_case(s, c[0], c[1], kb, seed++);
    return emu_test_exit("test_quant_half");
}
