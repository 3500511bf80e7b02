// test_fused.cpp - the kernel sandbox of the fused rank-r kernels (cuda/fused.cuh, docs/design.md
// §8.17): every version of each kernel, at several launch configurations, against a plain float64
// reference written here, before anything times them. Run by the block emulation, so the
// shared-memory versions execute with real barriers (ctest runs it in both fiber orders).
//
//   rows   out = (s in M^T) E^T + bias, u = s in M^T; r in {1, 8, 16, 32, 64}, N and K and D not
//          multiples of any tile, transposed and padded views, u and bias on and off
//   cols   dB = s dy^T U, db = dy^T 1; the same ranks and shapes
// dtypes: float64, float32, bfloat16, float16, and bfloat16 / float16 with float32 adapter
// operands (rounded to the half dtype as they are read; the reference rounds them the same way).
// Tolerances (docs/design.md §4): float64 1e-12, float32 1e-5, half 2e-2 (relative Frobenius),
// and every element outside an output's view is still the NaN it was filled with.
// Configurations the kernels cannot run are refused with a message, not run.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "fused.cuh"

extern "C" {
#include "check.h"
#include "util.h"
}
#include "emu_log.h"
#include "emu_test.h"

using namespace neat_cuda;

namespace {

const char *dt_name(neat_dtype d)
{
    switch (d) {
    case NEAT_FLOAT32: return "f32";
    case NEAT_FLOAT64: return "f64";
    case NEAT_BFLOAT16: return "bf16";
    case NEAT_FLOAT16: return "f16";
    }
    return "?";
}

double tol_of(neat_dtype t) { return t == NEAT_FLOAT64 ? 1e-12 : t == NEAT_FLOAT32 ? 1e-5 : 2e-2; }

// A (rows, cols) matrix in dtype dt, stored row-major with row stride ld, column-major
// (transposed) or with padding columns; everything outside the view is NaN.
struct Host {
    neat_dtype dt = NEAT_FLOAT32;
    int64_t rows = 0, cols = 0, rs = 0, cs = 0, elems = 0;
    std::vector<unsigned char> mem;
    Mat view;

    void make(neat_dtype d, int64_t r, int64_t c, int layout)
    {
        dt = d, rows = r, cols = c;
        if (layout == 1) rs = 1, cs = r > 0 ? r : 1, elems = r * c; // transposed
        else if (layout == 2) rs = c + 3, cs = 1, elems = r * (c + 3); // padded rows
        else rs = c, cs = 1, elems = r * c;
        const size_t es = d == NEAT_FLOAT64 ? 8 : d == NEAT_FLOAT32 ? 4 : 2;
        mem.assign(static_cast<size_t>(elems > 0 ? elems : 1) * es + 16, 0);
        for (int64_t i = 0; i < elems; ++i) set(i, NAN);
        view.p = mem.data();
        view.dt = d;
        view.rows = r, view.cols = c, view.rs = rs, view.cs = cs;
    }
    void set(int64_t i, double v)
    {
        void *p = mem.data();
        switch (dt) {
        case NEAT_FLOAT64: static_cast<double *>(p)[i] = v; break;
        case NEAT_FLOAT32: static_cast<float *>(p)[i] = static_cast<float>(v); break;
        case NEAT_FLOAT16: static_cast<__half *>(p)[i] = __float2half_rn(static_cast<float>(v)); break;
        case NEAT_BFLOAT16:
            static_cast<__nv_bfloat16 *>(p)[i] = __float2bfloat16_rn(static_cast<float>(v));
            break;
        }
    }
    double get(int64_t i) const
    {
        const void *p = mem.data();
        switch (dt) {
        case NEAT_FLOAT64: return static_cast<const double *>(p)[i];
        case NEAT_FLOAT32: return static_cast<const float *>(p)[i];
        case NEAT_FLOAT16: return __half2float(static_cast<const __half *>(p)[i]);
        case NEAT_BFLOAT16: return __bfloat162float(static_cast<const __nv_bfloat16 *>(p)[i]);
        }
        return 0;
    }
    // Fills the view with values in [-amp, amp]; returns them as stored (row-major).
    std::vector<double> randomize(uint64_t *rng, double amp)
    {
        std::vector<double> v(static_cast<size_t>(rows * cols > 0 ? rows * cols : 1));
        fill_random(rng, v.data(), rows * cols, -amp, amp);
        for (int64_t i = 0; i < rows; ++i)
            for (int64_t j = 0; j < cols; ++j) {
                set(i * rs + j * cs, v[i * cols + j]);
                v[i * cols + j] = get(i * rs + j * cs);
            }
        return v;
    }
    std::vector<double> read() const
    {
        std::vector<double> v(static_cast<size_t>(rows * cols > 0 ? rows * cols : 1));
        for (int64_t i = 0; i < rows; ++i)
            for (int64_t j = 0; j < cols; ++j) v[i * cols + j] = get(i * rs + j * cs);
        return v;
    }
    bool outside_untouched() const
    {
        std::vector<char> in(static_cast<size_t>(elems > 0 ? elems : 1), 0);
        for (int64_t i = 0; i < rows; ++i)
            for (int64_t j = 0; j < cols; ++j) in[i * rs + j * cs] = 1;
        for (int64_t i = 0; i < elems; ++i)
            if (!in[i] && !std::isnan(get(i))) return false;
        return true;
    }
};

struct TestCtx : Ctx {
    TestCtx()
    {
        fn = "test_fused";
        dry = false;
    }
};

// The kernel launched last, from this thread's emulation log.
std::string last_kernel()
{
    for (size_t i = neat_emu_log_size(); i-- > 0;) {
        const neat_emu_event e = neat_emu_log_at(i);
        if (e.kind == NEAT_EMU_KERNEL) return e.name;
    }
    return "";
}

void expect_close(const std::string &desc, const char *what, const Host &h,
                  const std::vector<double> &want, double tol)
{
    std::vector<double> got = h.read();
    const double err = rel_err(got.data(), want.data(), h.rows * h.cols);
    CHECK(err <= tol, "%s: %s rel err %.3g > %g", desc.c_str(), what, err, tol);
    if (!(err <= tol)) print_mismatches(what, got.data(), want.data(), h.rows, h.cols, tol);
    CHECK(h.outside_untouched(), "%s: %s written outside its view", desc.c_str(), what);
}

struct Types {
    neat_dtype T, P; // compute dtype (in, out, u, bias), adapter dtype (B's)
};

const Types kTypes[] = {{NEAT_FLOAT64, NEAT_FLOAT64}, {NEAT_FLOAT32, NEAT_FLOAT32},
                        {NEAT_BFLOAT16, NEAT_BFLOAT16}, {NEAT_FLOAT16, NEAT_FLOAT16},
                        {NEAT_BFLOAT16, NEAT_FLOAT32}, {NEAT_FLOAT16, NEAT_FLOAT32}};
const int kRanks[] = {1, 8, 16, 32, 64};

// Launch configurations each version is checked at: the default, then small, odd and wide tiles.
std::vector<FusedCfg> configs(const FusedCfg &dflt)
{
    return {dflt,
            FusedCfg{1, 32, 0, 0},
            FusedCfg{1, 256, 0, 0},
            FusedCfg{2, 32, 1, 1},
            FusedCfg{2, 64, 8, 16},
            FusedCfg{2, 128, 5, 7},
            FusedCfg{2, 1024, 32, 8}};
}

std::string cfg_name(const FusedCfg &c)
{
    char buf[96];
    std::snprintf(buf, sizeof buf, "v%d threads %d tile %d x %d", c.version, c.threads, c.rows, c.tile);
    return buf;
}

// ---- rows --------------------------------------------------------------------------------------

// One rows problem; `forward` puts the adapter dtype on E (forward: E = B), else on M (backward:
// M = B^T). Checks out (when with_out) and u (when with_u) against the reference.
void rows_case(const Types &ty, int r, int64_t n, int64_t k, int64_t d, bool forward, bool with_out,
               bool with_u, bool with_bias, int layout, const FusedCfg &cfg, uint64_t seed)
{
    char head[256];
    std::snprintf(head, sizeof head,
                  "rows %s: T %s P %s r=%d N=%lld K=%lld D=%lld %s out %d u %d bias %d layout %d",
                  cfg_name(cfg).c_str(), dt_name(ty.T), dt_name(ty.P), r, (long long)n,
                  (long long)k, (long long)d, forward ? "forward" : "backward", with_out, with_u,
                  with_bias, layout);
    const std::string desc = head;
    uint64_t rng = seed;
    Host in, M, E, bias, out, u;
    in.make(ty.T, n, k, layout);
    M.make(forward ? ty.T : ty.P, r, k, (layout + 1) % 3);
    E.make(forward ? ty.P : ty.T, d, r, (layout + 2) % 3);
    bias.make(ty.T, d, 1, layout == 2 ? 2 : 0);
    out.make(ty.T, n, d, (layout + 1) % 3);
    u.make(ty.T, n, r, layout);
    const std::vector<double> vin = in.randomize(&rng, 1.0);
    std::vector<double> vM = M.randomize(&rng, 1.0 / std::sqrt(double(k)));
    std::vector<double> vE = E.randomize(&rng, 1.0);
    const std::vector<double> vb = bias.randomize(&rng, 1.0);
    for (double &v : vM) v = emu_round_to(ty.T, v); // what the kernel reads of an adapter operand
    for (double &v : vE) v = emu_round_to(ty.T, v);
    const double s = 0.75;

    std::vector<double> wu(static_cast<size_t>(n * r + 1)), wout(static_cast<size_t>(n * d + 1));
    for (int64_t i = 0; i < n; ++i) {
        for (int j = 0; j < r; ++j) {
            double acc = 0;
            for (int64_t q = 0; q < k; ++q) acc += vin[i * k + q] * vM[j * k + q];
            wu[i * r + j] = s * acc;
        }
        for (int64_t c = 0; c < d; ++c) {
            double acc = with_bias ? vb[c] : 0;
            for (int j = 0; j < r; ++j) acc += wu[i * r + j] * vE[c * r + j];
            wout[i * d + c] = acc;
        }
    }

    RowsArgs a;
    a.in = in.view, a.M = M.view, a.E = E.view, a.scale = s;
    if (with_bias) a.bias = bias.view;
    if (with_out) a.out = out.view;
    if (with_u) a.u = u.view;
    TestCtx ctx;
    neat_emu_log_clear();
    const neat_status st = launch_fused_rows(ctx, a, cfg);
    CHECK(st == NEAT_OK, "%s: %s", desc.c_str(), neat_last_error());
    if (st != NEAT_OK) return;
    if (n > 0) {
        const std::string want = cfg.version == 1 ? "fused_rows_v1" : "fused_rows_v2";
        CHECK(last_kernel() == want, "%s: launched %s, not %s", desc.c_str(), last_kernel().c_str(),
              want.c_str());
    }
    const double tol = tol_of(ty.T);
    if (with_out) {
        expect_close(desc, "out", out, wout, tol);
    } else {
        int written = 0;
        for (double v : out.read()) written += !std::isnan(v);
        CHECK(written == 0, "%s: out has no view but %d elements were written", desc.c_str(), written);
    }
    if (with_u) expect_close(desc, "u", u, wu, tol);
}

void rows_tests()
{
    int cases = 0, idx = 0;
    const int before = check_failures;
    for (const FusedCfg &cfg : configs(fused_rows_default()))
        for (const Types &ty : kTypes)
            for (int r : kRanks) {
                // N, K, D not multiples of any tile; N = 1 and K = 1 at the default configuration
                const bool dflt = idx < 30;
                const int64_t n = dflt && r == 8 ? 1 : 37 + 2 * (idx % 3), k = dflt && r == 16 ? 1 : 45,
                              d = 70 + idx % 5;
                const bool forward = idx % 2 == 0;
                rows_case(ty, r, n, k, d, forward, true, !forward || idx % 3 == 0, forward && idx % 4 != 1,
                          idx % 3, cfg, 100 + static_cast<uint64_t>(idx));
                // u alone (the backward's U = x G^T): no out, no E read
                if (idx % 5 == 0)
                    rows_case(ty, r, n, k, d, true, false, true, false, (idx + 1) % 3, cfg,
                              7000 + static_cast<uint64_t>(idx));
                ++idx, ++cases;
            }
    std::printf("  rows: %d problems, %d failures\n", cases, check_failures - before);
}

// ---- cols --------------------------------------------------------------------------------------

void cols_case(const Types &ty, int r, int64_t n, int64_t d, bool with_dB, bool with_db, int layout,
               const FusedCfg &cfg, uint64_t seed)
{
    char head[256];
    std::snprintf(head, sizeof head, "cols %s: T %s dB %s r=%d N=%lld D=%lld dB %d db %d layout %d",
                  cfg_name(cfg).c_str(), dt_name(ty.T), dt_name(ty.P), r, (long long)n,
                  (long long)d, with_dB, with_db, layout);
    const std::string desc = head;
    uint64_t rng = seed;
    Host dy, U, dB, db;
    dy.make(ty.T, n, d, layout);
    U.make(ty.T, n, r, (layout + 1) % 3);
    dB.make(ty.P, d, r, (layout + 2) % 3);
    db.make(ty.T, d, 1, layout == 1 ? 2 : 0);
    const std::vector<double> vdy = dy.randomize(&rng, 1.0), vU = U.randomize(&rng, 1.0);
    const double s = -1.25;
    std::vector<double> wB(static_cast<size_t>(d * r + 1)), wb(static_cast<size_t>(d + 1));
    for (int64_t c = 0; c < d; ++c) {
        double sum = 0;
        for (int64_t i = 0; i < n; ++i) sum += vdy[i * d + c];
        wb[c] = sum;
        for (int j = 0; j < r; ++j) {
            double acc = 0;
            for (int64_t i = 0; i < n; ++i) acc += vdy[i * d + c] * vU[i * r + j];
            wB[c * r + j] = s * acc;
        }
    }
    ColsArgs a;
    a.dy = dy.view, a.U = U.view, a.scale = s;
    if (with_dB) a.dB = dB.view;
    else a.U.p = nullptr; // as the backward passes it: no U without dB (a regression: U was read)
    if (with_db) a.db = db.view;
    TestCtx ctx;
    neat_emu_log_clear();
    const neat_status st = launch_fused_cols(ctx, a, cfg);
    CHECK(st == NEAT_OK, "%s: %s", desc.c_str(), neat_last_error());
    if (st != NEAT_OK) return;
    const std::string want = cfg.version == 1 ? "fused_cols_v1" : "fused_cols_v2";
    CHECK(last_kernel() == want, "%s: launched %s, not %s", desc.c_str(), last_kernel().c_str(),
          want.c_str());
    // the reference takes the stored inputs, so in half precision the error is the output's
    // rounding, far inside the bound
    const double tol = tol_of(ty.T);
    if (with_dB) expect_close(desc, "dB", dB, wB, tol);
    if (with_db) expect_close(desc, "db", db, wb, tol);
}

void cols_tests()
{
    int cases = 0, idx = 0;
    const int before = check_failures;
    for (const FusedCfg &cfg : configs(fused_cols_default()))
        for (const Types &ty : kTypes)
            for (int r : kRanks) {
                const bool dflt = idx < 30;
                const int64_t n = dflt && r == 8 ? 1 : 67 + 2 * (idx % 3), d = dflt && r == 16 ? 1 : 45 + idx % 5;
                cols_case(ty, r, n, d, idx % 4 != 3, idx % 4 != 2, idx % 3, cfg,
                          300 + static_cast<uint64_t>(idx));
                ++idx, ++cases;
            }
    std::printf("  cols: %d problems, %d failures\n", cases, check_failures - before);
}

// ---- configurations that cannot run, and the rank limit ----------------------------------------

void refusal_tests()
{
    Host in, M, E, out, U, dy, dB;
    in.make(NEAT_FLOAT64, 4, 8, 0), M.make(NEAT_FLOAT64, 64, 8, 0), E.make(NEAT_FLOAT64, 8, 64, 0);
    out.make(NEAT_FLOAT64, 4, 8, 0);
    RowsArgs a;
    a.in = in.view, a.M = M.view, a.E = E.view, a.out = out.view;
    struct {
        FusedCfg cfg;
        const char *why;
    } bad[] = {{FusedCfg{2, 256, 64, 64}, "shared memory"},   // 3 x 64 x 65 doubles: 97 KiB
               {FusedCfg{2, 32, 64, 8}, "outputs per block"}, // 64 x 64 u elements, 32 threads
               {FusedCfg{2, 48, 8, 8}, "threads per block"},
               {FusedCfg{3, 256, 16, 32}, "no version"}};
    for (const auto &b : bad) {
        TestCtx ctx;
        const neat_status st = launch_fused_rows(ctx, a, b.cfg);
        CHECK(st == NEAT_ERR_INTERNAL && std::strstr(neat_last_error(), b.why),
              "%s: status %d: %s", cfg_name(b.cfg).c_str(), (int)st, neat_last_error());
    }
    // every default configuration fits every rank the fused path takes, in float64 too
    for (int r : {1, static_cast<int>(kFusedMaxRank)}) {
        Host Mr, Er, Ur, dBr;
        Mr.make(NEAT_FLOAT64, r, 8, 0), Er.make(NEAT_FLOAT64, 8, r, 0);
        Ur.make(NEAT_FLOAT64, 4, r, 0), dBr.make(NEAT_FLOAT64, 8, r, 0);
        RowsArgs ra;
        ra.in = in.view, ra.M = Mr.view, ra.E = Er.view, ra.out = out.view;
        TestCtx ctx;
        CHECK(launch_fused_rows(ctx, ra) == NEAT_OK, "rows default, r = %d: %s", r, neat_last_error());
        ColsArgs ca;
        ca.dy = out.view, ca.U = Ur.view, ca.dB = dBr.view;
        CHECK(launch_fused_cols(ctx, ca) == NEAT_OK, "cols default, r = %d: %s", r, neat_last_error());
    }
    Host M65;
    M65.make(NEAT_FLOAT32, kFusedMaxRank + 1, 8, 0);
    a.M = M65.view;
    TestCtx ctx;
    CHECK(launch_fused_rows(ctx, a) == NEAT_ERR_INTERNAL && std::strstr(neat_last_error(), "rank 65"),
          "rank %lld: %s", (long long)kFusedMaxRank + 1, neat_last_error());
    CHECK(!fused_rank_ok(kFusedMaxRank + 1) && fused_rank_ok(kFusedMaxRank) && !fused_rank_ok(0),
          "fused_rank_ok's range is not [1, %lld]", (long long)kFusedMaxRank);
}

} // namespace

int main()
{
    std::printf("fused rank-r kernels against the float64 reference:\n");
    rows_tests();
    cols_tests();
    refusal_tests();
    return emu_test_exit("test_fused");
}
