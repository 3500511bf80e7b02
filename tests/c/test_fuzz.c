/*
 * test_fuzz.c - seeded random cases over the public ABI only (docs/design.md §6.1, docs/design.md §8.13).
 *
 * Enumerated shapes miss what lives between them, so each case draws its own: shapes (N = 0,
 * ones, primes, output dims either side of the GEMM's skinny limit of 16, K either side of its
 * 256 slice, tall, wide and long extremes), strides per input (contiguous, transposed, padded,
 * spread, stride-0 broadcasts) and per output, dtype, depth, activation, bias, scale, which
 * gradients are requested, and a real pthread parallel-for with 1..4 threads. Every workspace,
 * output and input lives in a mapping of exactly its size with a PROT_NONE page right after it
 * (even cases) or right before it (odd cases), so one byte too far faults; workspaces also come
 * deliberately misaligned (the size query carries the slack the library's own alignment needs).
 * Results are compared with the float64 reference (reference.h) at docs/design.md §4's relative
 * Frobenius tolerances (float64 1e-12, float32 1e-5); an output that misses them passes only
 * within a conditioning allowance measured on the case itself (refs_perturbed) or a depth
 * allowance for hidden stacks, and such passes are counted and reported. Unrequested gradient
 * buffers and output padding must stay untouched, and a quarter of the cases rerun with
 * another thread count and must match bit for bit. Odd cases run with a host GEMM provider in
 * neat_exec.gemm (provider.h: a plain product that checks every call against the contract and
 * sums the same way on any thread count), even ones on the library's own GEMM.
 *
 * A fifth of the cases (drawn from a stream of their own, so that every other draw of a case is
 * what it was before they existed) run with a quantized W (qref.h: NF4 / FP4, plain or nested,
 * block sizes 16 .. 4096, or LLM.int8 rows with a padded stride) through the neat_q* entry
 * points: the reference then runs on the reference-dequantized W, dweight is not requested
 * (the weight is frozen), and every other rule above holds (guards, exact workspaces, untouched
 * buffers, bitwise reruns). On a CUDA device (tests/cuda_emu's build) the same cases run
 * through cuda/quant.cu's panel loops.
 *
 * Every case is a pure function of (seed, index), so one failure replays alone:
 *   NEAT_FUZZ_SEED=<seed> NEAT_FUZZ_CASE=<index> ./test_fuzz
 * Longer runs: NEAT_FUZZ_SEED=<new seed> NEAT_FUZZ_CASES=<count> and/or NEAT_FUZZ_SECONDS=<s>
 * (with only SECONDS set, cases run until the time is up); NEAT_FUZZ_FIRST=<index> starts
 * elsewhere. NEAT_FUZZ_VERBOSE=1 prints every case before it runs.
 */
#define _POSIX_C_SOURCE 200809L /* sigaction, clock_gettime, write under -std=c11 */

#include <math.h>
#include <signal.h>
#include <stdint.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "check.h"
#include "guard.h"
#include "provider.h"
#include "qref.h"
#include "reference.h"
#include "util.h"

#if defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define FZ_SANITIZER 1
#endif
#endif
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define FZ_SANITIZER 1
#endif
#ifdef FZ_SANITIZER
#include <sanitizer/common_interface_defs.h>
#endif

/* Sized so the ASan+UBSan Debug build runs the default budget in about three minutes on two
 * cores; a Release build does the same cases in half a minute. */
#define FZ_DEFAULT_SEED 0x5EEDF00Dull
#define FZ_DEFAULT_CASES 1000 /* about 800 with a float W, 200 quantized */
/* Largest reference cost of a case, in multiply-adds: big enough for one GEMM of 2^23
 * multiply-adds (where the skinny paths start using two lanes), small enough for ASan. */
#define FZ_MAX_COST (40ll << 20)
/* The same for the class built around that GEMM, whose other products come along with it. */
#define FZ_MAX_COST_LANES (72ll << 20)
/* Failing cases reported in full before the run stops early. */
#define FZ_MAX_FAILED_CASES 10

/* ---------------------------------------------------------------- layouts ---- */

/* How a 2-D view's strides derive from its sizes (R, C). The first FZ_OUT_KINDS are the
 * layouts an output may take (no stride 0: an output's elements must not overlap). */
enum {
    L_CONTIG,      /* (C, 1) */
    L_TRANS,       /* (1, R): a transposed view of a (C, R) array */
    L_PADROW,      /* (C + pad, 1) */
    L_PADTRANS,    /* (1, R + pad) */
    L_SPREAD,      /* (2C + pad, 2): neither stride is 1 */
    L_BCAST_ROWS,  /* (0, 1): every row the same */
    L_BCAST_COLS,  /* (1, 0): every column the same */
    L_BCAST_ALL,   /* (0, 0): one value */
    L_KINDS
};
#define FZ_OUT_KINDS 5
static const char *const layout_names[L_KINDS] = {"contig", "trans",  "padrow", "padtrans",
                                                  "spread", "bcast-rows", "bcast-cols", "bcast-all"};

/* 1-D views (bias, dbias): stride 1, 1 + pad, or 0 (inputs only). */
enum { L1_UNIT, L1_STRIDED, L1_BCAST, L1_KINDS };
static const char *const layout1_names[L1_KINDS] = {"unit", "strided", "bcast"};

typedef struct fz_layout {
    int kind, pad;
} fz_layout;

static void strides_of(fz_layout l, int ndim, int64_t R, int64_t C, int64_t *rs, int64_t *cs)
{
    if (ndim == 1) {
        *rs = l.kind == L1_UNIT ? 1 : l.kind == L1_STRIDED ? 1 + l.pad : 0;
        *cs = 0;
        return;
    }
    switch (l.kind) {
    case L_TRANS: *rs = 1, *cs = R; break;
    case L_PADROW: *rs = C + l.pad, *cs = 1; break;
    case L_PADTRANS: *rs = 1, *cs = R + l.pad; break;
    case L_SPREAD: *rs = 2 * C + l.pad, *cs = 2; break;
    case L_BCAST_ROWS: *rs = 0, *cs = 1; break;
    case L_BCAST_COLS: *rs = 1, *cs = 0; break;
    case L_BCAST_ALL: *rs = 0, *cs = 0; break;
    default: *rs = C, *cs = 1; break;
    }
}

/* ------------------------------------------------------------------- cases ---- */

enum { C_SMALL, C_SKINNY, C_LANES, C_TALL, C_WIDE, C_LONG, C_CLASSES };
static const char *const class_names[C_CLASSES] = {"small", "skinny", "lanes",
                                                   "tall",  "wide",   "long"};

/* Gradients a backward call may be asked for (bits of fz_case.want). */
enum { W_DX = 1, W_DW = 2, W_DB = 4, W_DA = 8, W_DB_ = 16 };

/* Input and output slots; hidden layers and their gradients are indexed separately. */
enum { I_X, I_W, I_B, I_A, I_BB, I_DY, I_COUNT };
enum { O_Y, O_G, O_DX, O_DW, O_DB, O_DA, O_DBB, O_COUNT };
static const char *const in_names[I_COUNT] = {"x", "W", "b", "A", "B", "dy"};
static const char *const out_names[O_COUNT] = {"y", "G", "dx", "dW", "db", "dA", "dB"};

typedef struct fz_case {
    uint64_t seed;
    long index;
    int cls;
    int64_t N, d_in, d_out, r;
    int nh;
    neat_activation act;
    int with_base; /* 1: neat_linear_*, 0: neat_adapter_* */
    int bias;
    double scale;
    neat_dtype dtype;
    int threads, threads2; /* threads2 > 0: rerun with it and compare bit for bit */
    int side;              /* GUARD_BACK or GUARD_FRONT */
    int ws_misalign;       /* GUARD_FLUSH (aligned) or the start's residue mod 64 */
    unsigned want;         /* W_* */
    int want_dh[NEAT_MAX_HIDDEN];
    int dhidden_null;      /* pass grads.dhidden = NULL (no dH requested) */
    int short_ws;          /* also check that a workspace one byte short is refused */
    int quant;             /* W quantized as qs (the neat_q* entry points) */
    qref_spec qs;
    fz_layout in[I_COUNT], in_h[NEAT_MAX_HIDDEN];
    fz_layout out[O_COUNT], out_dh[NEAT_MAX_HIDDEN];
} fz_case;

static uint64_t mix(uint64_t a, uint64_t b)
{
    uint64_t s = a ^ (b * 0xD1B54A32D192ED03ull);
    rng_next(&s);
    return rng_next(&s);
}

static int coin(uint64_t *rng, double p)
{
    return rng_uniform(rng, 0, 1) < p;
}

static int64_t irange(uint64_t *rng, int64_t lo, int64_t hi)
{
    return lo + (int64_t)(rng_next(rng) % (uint64_t)(hi - lo + 1));
}

/* Sizes where the kernels change behaviour: register tiles (8, 14, 16, 24, 32), the skinny
 * limit (16), K slices (256, 384), packed blocks (480, 640, 2048, 4088), and primes. */
static const int64_t interesting[] = {
    1,   2,   3,   4,   5,   7,   8,   9,   13,  14,  15,  16,  17,  19,   23,   24,   25,
    29,  31,  32,  33,  37,  47,  48,  49,  53,  63,  64,  65,  96,  97,   127,  128,  129,
    191, 193, 255, 256, 257, 263, 383, 384, 385, 479, 480, 481, 513, 640,  641,  1021, 1024,
    1031, 2047, 2048, 2053, 4088, 4093, 4099, 8191, 8192, 8209, 16411, 32768, 32771};

/* A size in [lo, hi]: a third of the time one of the interesting ones, else log-uniform. */
static int64_t pick(uint64_t *rng, int64_t lo, int64_t hi)
{
    if (hi <= lo)
        return lo;
    if (rng_next(rng) % 3 == 0) {
        int64_t cand[sizeof interesting / sizeof *interesting];
        int n = 0;
        for (size_t i = 0; i < sizeof interesting / sizeof *interesting; i++)
            if (interesting[i] >= lo && interesting[i] <= hi)
                cand[n++] = interesting[i];
        if (n)
            return cand[rng_next(rng) % (uint64_t)n];
    }
    double v = exp(rng_uniform(rng, log((double)lo + 1), log((double)hi + 2))) - 1;
    int64_t iv = (int64_t)v;
    return iv < lo ? lo : iv > hi ? hi : iv;
}

/* Multiply-adds the reference spends on a case (forward, compute_g and a full backward). */
static double case_cost(const fz_case *c)
{
    double N = (double)c->N, di = (double)c->d_in, dout = (double)c->d_out, r = (double)c->r;
    double base = c->with_base ? 3 * N * di * dout : 0;
    return base + r * (3 * N * di + 3 * N * dout + 4 * dout * di) + 4 * c->nh * r * r * di +
           N * dout;
}

static fz_layout pick_layout(uint64_t *rng, int kinds, double p_contig)
{
    fz_layout l;
    l.kind = coin(rng, p_contig) ? L_CONTIG : (int)irange(rng, 1, kinds - 1);
    l.pad = (int)irange(rng, 1, 5);
    return l;
}

static void gen_case(uint64_t seed, long index, fz_case *c)
{
    uint64_t rng = mix(seed, (uint64_t)index);
    memset(c, 0, sizeof *c);
    c->seed = seed, c->index = index;
    double u = rng_uniform(&rng, 0, 1);
    c->cls = u < 0.42  ? C_SMALL
             : u < 0.70 ? C_SKINNY
             : u < 0.78 ? C_LANES
             : u < 0.85 ? C_TALL
             : u < 0.92 ? C_WIDE
                        : C_LONG;
    int lanes_role = -1;
    c->with_base = coin(&rng, 0.5);
    c->nh = coin(&rng, 0.4) ? 0 : 2 * (int)irange(&rng, 1, NEAT_MAX_HIDDEN / 2);
    switch (c->cls) {
    case C_SMALL:
        c->N = coin(&rng, 0.08) ? 0 : pick(&rng, 1, 70);
        c->d_in = pick(&rng, 1, 100);
        c->d_out = pick(&rng, 1, 100);
        c->r = pick(&rng, 1, 20);
        break;
    case C_SKINNY: {
        /* one GEMM dim s small (either side of 16), K either side of 256, the third dim
         * sized for a chosen work target, then the three spread over N, d_in, d_out */
        int64_t s = pick(&rng, 1, 20);
        int64_t K = coin(&rng, 0.5) ? pick(&rng, 240, 400) : pick(&rng, 200, 12000);
        double target = exp2(rng_uniform(&rng, 20, 24.5));
        int64_t other = (int64_t)(target / ((double)s * (double)K));
        other = other < 1 ? 1 : other > 4096 ? 4096 : other;
        int64_t dims[3] = {s, K, other};
        for (int i = 2; i > 0; i--) { /* a random assignment of the three */
            int j = (int)irange(&rng, 0, i);
            int64_t t = dims[i];
            dims[i] = dims[j], dims[j] = t;
        }
        c->N = dims[0], c->d_in = dims[1], c->d_out = dims[2];
        c->r = pick(&rng, 1, 20);
        break;
    }
    case C_LANES: {
        /* One product of the layer just past the 2^23 multiply-adds at which a skinny GEMM
         * (small dim s <= 16, K > 384) starts splitting its strips over two lanes, its wide
         * dim rarely a whole number of strips. Five products qualify; the role says which. */
        int64_t s = irange(&rng, 1, 16), K = pick(&rng, 385, 9000);
        double target = exp2(rng_uniform(&rng, 23.02, 23.4));
        int64_t other = (int64_t)ceil(target / ((double)s * (double)K));
        if (other < 25)
            other = 25 + irange(&rng, 0, 40);
        lanes_role = (int)irange(&rng, 0, 4);
        /* the other dims small, so the reference's other products stay near this one */
        int64_t small = pick(&rng, 1, s / 2 > 1 ? s / 2 : 1);
        switch (lanes_role) {
        case 0: /* dx = dy W (linear only) */
            c->with_base = 1, c->N = s, c->d_out = K, c->d_in = other, c->r = small;
            break;
        case 1: /* dweight = dy^T x (linear only) */
            c->with_base = 1, c->d_out = s, c->N = K, c->d_in = other, c->r = small;
            break;
        case 2: /* U = x G^T */
            c->r = s, c->d_in = K, c->N = other, c->d_out = c->with_base ? small : pick(&rng, 1, 48);
            break;
        case 3: /* dU = s dy B */
            c->r = s, c->d_out = K, c->N = other, c->d_in = c->with_base ? small : pick(&rng, 1, 48);
            break;
        default: /* dB = s dy^T U */
            c->r = s, c->N = K, c->d_out = other, c->d_in = c->with_base ? small : pick(&rng, 1, 48);
            break;
        }
        break;
    }
    case C_TALL:
        c->d_out = pick(&rng, 1000, 40000);
        c->d_in = pick(&rng, 1, 24);
        c->N = pick(&rng, 0, 48);
        c->r = pick(&rng, 1, 16);
        break;
    case C_WIDE:
        c->d_in = pick(&rng, 1000, 40000);
        c->d_out = pick(&rng, 1, 24);
        c->N = pick(&rng, 0, 48);
        c->r = pick(&rng, 1, 16);
        break;
    default:
        c->N = pick(&rng, 1000, 40000);
        c->d_in = pick(&rng, 1, 24);
        c->d_out = pick(&rng, 1, 24);
        c->r = pick(&rng, 1, 16);
        break;
    }
    /* bound the reference's work: shrink the largest dim until the case fits */
    while (case_cost(c) > (double)(c->cls == C_LANES ? FZ_MAX_COST_LANES : FZ_MAX_COST)) {
        int64_t *big = &c->N;
        if (c->d_in > *big)
            big = &c->d_in;
        if (c->d_out > *big)
            big = &c->d_out;
        if (c->r > *big)
            big = &c->r;
        *big = *big * 3 / 4 > 1 ? *big * 3 / 4 : 1;
    }
    c->act = (neat_activation)irange(&rng, 0, NEAT_ACT_LAST);
    c->bias = c->with_base && coin(&rng, 0.6);
    static const double scales[] = {1.0, 0.5, -0.75, 2.5};
    c->scale = coin(&rng, 0.03) ? 0.0 : coin(&rng, 0.5) ? scales[rng_next(&rng) % 4]
                                                       : rng_uniform(&rng, -2, 2);
    c->dtype = coin(&rng, 0.5) ? NEAT_FLOAT32 : NEAT_FLOAT64;
    c->threads = coin(&rng, 0.25) ? 1 : (int)irange(&rng, 2, 4);
    if (coin(&rng, 0.25)) {
        c->threads2 = (int)irange(&rng, 1, 3);
        if (c->threads2 >= c->threads)
            c->threads2++;
    }
    c->side = index % 2 ? GUARD_FRONT : GUARD_BACK;
    static const int mis[] = {GUARD_FLUSH, GUARD_FLUSH, GUARD_FLUSH, 1, 4, 8, 24, 63};
    c->ws_misalign = mis[rng_next(&rng) % 8];
    c->want = 0;
    if (coin(&rng, 0.65))
        c->want |= W_DX;
    if (coin(&rng, 0.65))
        c->want |= W_DW;
    if (c->with_base && coin(&rng, 0.65))
        c->want |= W_DB;
    if (coin(&rng, 0.65))
        c->want |= W_DA;
    if (coin(&rng, 0.65))
        c->want |= W_DB_;
    int any_dh = 0;
    for (int i = 0; i < c->nh; i++) any_dh |= c->want_dh[i] = coin(&rng, 0.65);
    c->dhidden_null = !any_dh && coin(&rng, 0.5);
    c->short_ws = coin(&rng, 0.1);
    for (int i = 0; i < I_COUNT; i++) c->in[i] = pick_layout(&rng, L_KINDS, 0.45);
    c->in[I_B].kind = coin(&rng, 0.6) ? L1_UNIT : (int)irange(&rng, 1, L1_KINDS - 1);
    for (int i = 0; i < c->nh; i++) c->in_h[i] = pick_layout(&rng, L_KINDS, 0.45);
    if (lanes_role >= 0 && coin(&rng, 0.6)) {
        /* the large operand of that product in one of the two layouts the skinny paths read
         * in place (rows or columns contiguous), so the lane split is reached more often */
        static const int operand[5] = {I_W, I_X, I_X, I_DY, I_DY};
        c->in[operand[lanes_role]].kind = coin(&rng, 0.5) ? L_CONTIG : L_TRANS;
    }
    for (int i = 0; i < O_COUNT; i++) c->out[i] = pick_layout(&rng, FZ_OUT_KINDS, 0.5);
    c->out[O_DB].kind = coin(&rng, 0.6) ? L1_UNIT : L1_STRIDED;
    for (int i = 0; i < c->nh; i++) c->out_dh[i] = pick_layout(&rng, FZ_OUT_KINDS, 0.5);

    /* quantized W: its own stream, so the draws above stay those of the float cases */
    uint64_t qr = mix(seed ^ 0x0DDBA11ull, (uint64_t)index);
    c->quant = coin(&qr, 0.2);
    if (c->quant) {
        static const int64_t sizes[] = {16, 32, 64, 64, 128, 256, 512, 1024, 4096};
        int f = (int)irange(&qr, 0, 4);
        c->qs.format = f < 2 ? NEAT_QFMT_NF4 : f < 4 ? NEAT_QFMT_FP4 : NEAT_QFMT_INT8_ROW;
        if (c->qs.format == NEAT_QFMT_INT8_ROW) {
            c->qs.row_pad = coin(&qr, 0.5) ? 0 : irange(&qr, 1, 9);
        } else {
            c->qs.blocksize = sizes[rng_next(&qr) % 9];
            c->qs.nested = coin(&qr, 0.5);
            c->qs.blocksize2 = c->qs.nested ? (coin(&qr, 0.5) ? 256 : sizes[rng_next(&qr) % 4]) : 0;
        }
        c->want &= ~(unsigned)W_DW; /* frozen */
        c->in[I_W].kind = L_CONTIG; /* holds the dequantized values for the reference only */
    }
}

/* Appends to buf (length n, o bytes used so far), never past its end. */
static void put(char *buf, size_t n, size_t *o, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void put(char *buf, size_t n, size_t *o, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int k = vsnprintf(buf + *o, *o < n ? n - *o : 0, fmt, ap);
    va_end(ap);
    if (k > 0)
        *o = *o + (size_t)k < n ? *o + (size_t)k : n - 1;
}

static void put_layout(char *buf, size_t n, size_t *o, const char *name, fz_layout l, int one)
{
    int padded = one ? l.kind == L1_STRIDED
                     : l.kind == L_PADROW || l.kind == L_PADTRANS || l.kind == L_SPREAD;
    put(buf, n, o, " %s=%s", name, one ? layout1_names[l.kind] : layout_names[l.kind]);
    if (padded)
        put(buf, n, o, "+%d", l.pad);
}

static void describe(const fz_case *c, char *buf, size_t n)
{
    size_t o = 0;
    put(buf, n, &o,
        "case %ld (seed 0x%llx, class %s): %s %s N=%lld d_in=%lld d_out=%lld r=%lld hidden=%d "
        "act=%s bias=%d scale=%.17g threads=%d",
        c->index, (unsigned long long)c->seed, class_names[c->cls],
        c->with_base ? "linear" : "adapter", c->dtype == NEAT_FLOAT64 ? "f64" : "f32",
        (long long)c->N, (long long)c->d_in, (long long)c->d_out, (long long)c->r, c->nh,
        neat_activation_name(c->act), c->bias, c->scale, c->threads);
    if (c->threads2)
        put(buf, n, &o, " (bitwise recheck with %d)", c->threads2);
    if (c->quant) {
        char q[64];
        qref_describe(&c->qs, q, sizeof q);
        put(buf, n, &o, " quantized W: %s", q);
    }
    put(buf, n, &o, " guard=%s ws_misalign=%d%s\n  grads:",
        c->side == GUARD_FRONT ? "front" : "back",
        c->ws_misalign == GUARD_FLUSH ? 0 : c->ws_misalign, c->short_ws ? " short_ws" : "");
    static const char *const wn[5] = {"dx", "dweight", "dbias", "dA", "dB"};
    for (int i = 0; i < 5; i++)
        if (c->want & (1u << i))
            put(buf, n, &o, " %s", wn[i]);
    for (int i = 0; i < c->nh; i++)
        if (c->want_dh[i])
            put(buf, n, &o, " dhidden[%d]", i);
    if (c->dhidden_null)
        put(buf, n, &o, " (dhidden=NULL)");
    put(buf, n, &o, "\n  inputs:");
    for (int i = 0; i < I_COUNT; i++)
        if (i != I_B || c->bias)
            put_layout(buf, n, &o, in_names[i], c->in[i], i == I_B);
    for (int i = 0; i < c->nh; i++) {
        char nm[16];
        snprintf(nm, sizeof nm, "H%d", i);
        put_layout(buf, n, &o, nm, c->in_h[i], 0);
    }
    put(buf, n, &o, "\n  outputs:");
    for (int i = 0; i < O_COUNT; i++) put_layout(buf, n, &o, out_names[i], c->out[i], i == O_DB);
    for (int i = 0; i < c->nh; i++) {
        char nm[16];
        snprintf(nm, sizeof nm, "dH%d", i);
        put_layout(buf, n, &o, nm, c->out_dh[i], 0);
    }
    put(buf, n, &o, "\n  replay: NEAT_FUZZ_SEED=0x%llx NEAT_FUZZ_CASE=%ld\n",
        (unsigned long long)c->seed, c->index);
}

/* ------------------------------------------------------ guarded tensors ---- */

typedef struct fz_tensor {
    gbuf g;
    tbuf b; /* b.storage = g.p; never passed to tb_free */
} fz_tensor;

static size_t esize_of(neat_dtype dt)
{
    return dt == NEAT_FLOAT64 ? 8 : 4;
}

/* A view of (R, C) (ndim 2) or (R) (ndim 1) in layout l, its storage exactly as long as the
 * strides need (a padded view's last row ends at its last element), against a guard page.
 * Inputs get random values in [-amp, amp] in every storage element, outputs NaN. */
static void fz_make(fz_tensor *t, neat_dtype dt, int ndim, int64_t R, int64_t C, fz_layout l,
                    int side, int input, double amp, uint64_t *rng)
{
    int64_t rs, cs;
    strides_of(l, ndim, R, C, &rs, &cs);
    if (ndim == 1)
        C = 1;
    int64_t extent = R > 0 && C > 0 ? (R - 1) * rs + (C - 1) * cs + 1 : 0;
    t->g = guard_alloc((size_t)extent * esize_of(dt), side, GUARD_FLUSH);
    memset(&t->b, 0, sizeof t->b);
    t->b.storage = t->g.p;
    t->b.storage_elems = extent;
    neat_tensor *v = &t->b.t;
    v->data = t->g.p;
    v->dtype = dt;
    v->ndim = ndim;
    v->sizes[0] = R, v->strides[0] = rs;
    if (ndim == 2)
        v->sizes[1] = C, v->strides[1] = cs;
    v->device = tb_device(); /* cpu; cuda:0 in tests/cuda_emu's build of this test */
    for (int64_t i = 0; i < extent; i++) {
        double x = input ? rng_uniform(rng, -amp, amp) : NAN;
        if (dt == NEAT_FLOAT64)
            ((double *)t->g.p)[i] = x;
        else
            ((float *)t->g.p)[i] = (float)x;
    }
}

static void fz_free(fz_tensor *t)
{
    guard_free(&t->g);
}

static int64_t numel(const fz_tensor *t)
{
    return t->b.t.sizes[0] * (t->b.t.ndim == 2 ? t->b.t.sizes[1] : 1);
}

/* The view's values as row-major doubles (a broadcast view repeats its values). */
static double *fz_read(const fz_tensor *t)
{
    double *v = xmalloc((size_t)(numel(t) + 1) * sizeof *v);
    tb_read(&t->b, v);
    return v;
}

static int same_bits(const fz_tensor *a, const fz_tensor *b)
{
    return a->b.storage_elems == b->b.storage_elems &&
           (a->b.storage_elems == 0 ||
            memcmp(a->g.p, b->g.p, (size_t)a->b.storage_elems * esize_of(a->b.t.dtype)) == 0);
}

/* ------------------------------------------------------------ one case ---- */

typedef struct fz_inputs {
    fz_tensor t[I_COUNT], h[NEAT_MAX_HIDDEN];
    qref q; /* c->quant: W as the library gets it */
    neat_tensor hidden[NEAT_MAX_HIDDEN];
    neat_args args;
    double *v[I_COUNT], *hv[NEAT_MAX_HIDDEN]; /* the views' values, for the reference */
    ref_problem ref;
} fz_inputs;

typedef struct fz_outputs {
    fz_tensor t[O_COUNT], dh[NEAT_MAX_HIDDEN];
} fz_outputs;

/* What a case's calls returned. */
typedef struct fz_status {
    neat_status fwd, g, bwd;
    neat_status fwd_short, g_short, bwd_short; /* the one-byte-short workspace calls */
} fz_status;

static void make_inputs(const fz_case *c, fz_inputs *in)
{
    uint64_t rng = mix(c->seed ^ 0xA5A5A5A5ull, (uint64_t)c->index);
    neat_dtype dt = c->dtype;
    /* scaled like layer.c so every pre-activation is O(1): a random sum of d_out terms grows
     * like sqrt(d_out). When A and W are both broadcast along d_out its terms all align and the
     * sum grows like d_out; scaled the same, activations would saturate (tanh' and gelu
     * underflow in float32 where float64 still has 1e-100), which tests the dtype's range,
     * not the kernels. */
    int a_along = c->in[I_A].kind == L_BCAST_COLS || c->in[I_A].kind == L_BCAST_ALL;
    int w_along = c->in[I_W].kind == L_BCAST_ROWS || c->in[I_W].kind == L_BCAST_ALL;
    double a_amp = 2.0 / (a_along && w_along ? (double)c->d_out : sqrt((double)c->d_out));
    double h_amp = 1.5 / sqrt((double)c->r);
    fz_make(&in->t[I_X], dt, 2, c->N, c->d_in, c->in[I_X], c->side, 1, 1.0, &rng);
    fz_make(&in->t[I_W], dt, 2, c->d_out, c->d_in, c->in[I_W], c->side, 1, 1.0, &rng);
    fz_make(&in->t[I_B], dt, 1, c->bias ? c->d_out : 0, 1, c->in[I_B], c->side, 1, 1.0, &rng);
    fz_make(&in->t[I_A], dt, 2, c->r, c->d_out, c->in[I_A], c->side, 1, a_amp, &rng);
    fz_make(&in->t[I_BB], dt, 2, c->d_out, c->r, c->in[I_BB], c->side, 1, 1.0, &rng);
    fz_make(&in->t[I_DY], dt, 2, c->N, c->d_out, c->in[I_DY], c->side, 1, 1.0, &rng);
    for (int i = 0; i < c->nh; i++) {
        fz_make(&in->h[i], dt, 2, c->r, c->r, c->in_h[i], c->side, 1, h_amp, &rng);
        in->hidden[i] = in->h[i].b.t;
        in->hv[i] = fz_read(&in->h[i]);
    }
    for (int i = 0; i < I_COUNT; i++) in->v[i] = fz_read(&in->t[i]);
    memset(&in->q, 0, sizeof in->q);
    if (c->quant) { /* the reference's W is the dequantized one; the library never sees a float W */
        qref_make(&in->q, &c->qs, dt, c->d_out, c->d_in, c->side, &rng);
        qref_dequant(&in->q.q, in->v[I_W]);
    }
    neat_args a;
    memset(&a, 0, sizeof a);
    a.x = &in->t[I_X].b.t;
    a.weight = c->quant ? NULL : &in->t[I_W].b.t;
    a.bias = c->bias ? &in->t[I_B].b.t : NULL;
    a.A = &in->t[I_A].b.t;
    a.B = &in->t[I_BB].b.t;
    a.hidden = c->nh ? in->hidden : NULL;
    a.num_hidden = c->nh;
    a.activation = c->act;
    a.scale = c->scale;
    in->args = a;
    ref_problem p;
    memset(&p, 0, sizeof p);
    p.N = c->N, p.d_in = c->d_in, p.d_out = c->d_out, p.r = c->r;
    p.num_hidden = c->nh, p.act = c->act, p.scale = c->scale;
    p.x = in->v[I_X], p.W = in->v[I_W], p.b = c->bias ? in->v[I_B] : NULL;
    p.A = in->v[I_A], p.B = in->v[I_BB];
    for (int i = 0; i < c->nh; i++) p.H[i] = in->hv[i];
    in->ref = p;
}

static void free_inputs(const fz_case *c, fz_inputs *in)
{
    for (int i = 0; i < I_COUNT; i++) fz_free(&in->t[i]), free(in->v[i]);
    for (int i = 0; i < c->nh; i++) fz_free(&in->h[i]), free(in->hv[i]);
    qref_free(&in->q);
}

static void make_outputs(const fz_case *c, fz_outputs *o)
{
    neat_dtype dt = c->dtype;
    const int64_t shape[O_COUNT][2] = {{c->N, c->d_out},     {c->r, c->d_in},
                                       {c->N, c->d_in},      {c->d_out, c->d_in},
                                       {c->d_out, 1},        {c->r, c->d_out},
                                       {c->d_out, c->r}};
    for (int i = 0; i < O_COUNT; i++)
        fz_make(&o->t[i], dt, i == O_DB ? 1 : 2, shape[i][0], shape[i][1], c->out[i], c->side, 0,
                0, NULL);
    for (int i = 0; i < c->nh; i++)
        fz_make(&o->dh[i], dt, 2, c->r, c->r, c->out_dh[i], c->side, 0, 0, NULL);
}

static void free_outputs(const fz_case *c, fz_outputs *o)
{
    for (int i = 0; i < O_COUNT; i++) fz_free(&o->t[i]);
    for (int i = 0; i < c->nh; i++) fz_free(&o->dh[i]);
}

/* Workspace of exactly `bytes` against the case's guard, misaligned as the case says. */
static gbuf ws_alloc(const fz_case *c, size_t bytes)
{
    return guard_alloc(bytes, c->side, c->ws_misalign);
}

/* The calls of a case: the float entry points, or with q their neat_q* twins. */
static neat_status fwd_size(const fz_case *c, const neat_qweight *q, const neat_args *a,
                            const neat_exec *ex, size_t *bytes)
{
    if (q)
        return c->with_base ? neat_qlinear_forward_workspace_size(a, q, ex, bytes)
                            : neat_qadapter_forward_workspace_size(a, q, ex, bytes);
    return c->with_base ? neat_linear_forward_workspace_size(a, ex, bytes)
                        : neat_adapter_forward_workspace_size(a, ex, bytes);
}

static neat_status fwd(const fz_case *c, const neat_qweight *q, neat_tensor *y,
                       const neat_args *a, void *ws, size_t bytes, const neat_exec *ex)
{
    if (q)
        return c->with_base ? neat_qlinear_forward(y, a, q, ws, bytes, ex)
                            : neat_qadapter_forward(y, a, q, ws, bytes, ex);
    return c->with_base ? neat_linear_forward(y, a, ws, bytes, ex)
                        : neat_adapter_forward(y, a, ws, bytes, ex);
}

static neat_status g_size(const neat_qweight *q, const neat_args *a, const neat_exec *ex,
                          size_t *bytes)
{
    return q ? neat_qcompute_g_workspace_size(a, q, ex, bytes)
             : neat_compute_g_workspace_size(a, ex, bytes);
}

static neat_status g_call(const neat_qweight *q, neat_tensor *G, const neat_args *a, void *ws,
                          size_t bytes, const neat_exec *ex)
{
    return q ? neat_qcompute_g(G, a, q, ws, bytes, ex) : neat_compute_g(G, a, ws, bytes, ex);
}

static neat_status bwd_size(const fz_case *c, const neat_qweight *q, const neat_grads *g,
                            const neat_args *a, const neat_exec *ex, size_t *bytes)
{
    if (q)
        return c->with_base ? neat_qlinear_backward_workspace_size(g, a, q, ex, bytes)
                            : neat_qadapter_backward_workspace_size(g, a, q, ex, bytes);
    return c->with_base ? neat_linear_backward_workspace_size(g, a, ex, bytes)
                        : neat_adapter_backward_workspace_size(g, a, ex, bytes);
}

static neat_status bwd(const fz_case *c, const neat_qweight *q, const neat_grads *g,
                       const neat_tensor *dy, const neat_args *a, void *ws, size_t bytes,
                       const neat_exec *ex)
{
    if (q)
        return c->with_base ? neat_qlinear_backward(g, dy, a, q, ws, bytes, ex)
                            : neat_qadapter_backward(g, dy, a, q, ws, bytes, ex);
    return c->with_base ? neat_linear_backward(g, dy, a, ws, bytes, ex)
                        : neat_adapter_backward(g, dy, a, ws, bytes, ex);
}

/* Forward, compute_g and backward with one exec, each with a workspace of exactly the size its
 * query reported. */
static void run_calls(const fz_case *c, fz_inputs *in, fz_outputs *o, const neat_exec *ex,
                      fz_status *st)
{
    const neat_args *a = &in->args;
    const neat_qweight *qw = c->quant ? &in->q.q : NULL;
    const neat_status want = NEAT_OK; /* a quantized W on CUDA included */
    size_t bytes = 0;
    gbuf ws;

    neat_status q = fwd_size(c, qw, a, ex, &bytes);
    CHECK(q == want, "forward workspace query: %s", neat_last_error());
    ws = ws_alloc(c, bytes);
    /* a call that needs no workspace (the CUDA backend with nothing to compute) has nothing to
     * be short of: counted as refused */
    if (c->short_ws)
        st->fwd_short = bytes == 0 ? NEAT_ERR_WORKSPACE
                                   : fwd(c, qw, &o->t[O_Y].b.t, a, ws.p, bytes - 1, ex);
    st->fwd = fwd(c, qw, &o->t[O_Y].b.t, a, ws.p, bytes, ex);
    CHECK(st->fwd == want, "forward: %s", neat_last_error());
    guard_free(&ws);

    q = g_size(qw, a, ex, &bytes);
    CHECK(q == want, "compute_g workspace query: %s", neat_last_error());
    ws = ws_alloc(c, bytes);
    if (c->short_ws)
        st->g_short = bytes == 0 ? NEAT_ERR_WORKSPACE
                                 : g_call(qw, &o->t[O_G].b.t, a, ws.p, bytes - 1, ex);
    st->g = g_call(qw, &o->t[O_G].b.t, a, ws.p, bytes, ex);
    CHECK(st->g == want, "compute_g: %s", neat_last_error());
    guard_free(&ws);

    neat_tensor dh[NEAT_MAX_HIDDEN];
    for (int i = 0; i < c->nh; i++) {
        dh[i] = o->dh[i].b.t;
        if (!c->want_dh[i])
            dh[i].data = NULL; /* "not requested" */
    }
    neat_grads g;
    g.dx = c->want & W_DX ? &o->t[O_DX].b.t : NULL;
    g.dweight = c->want & W_DW ? &o->t[O_DW].b.t : NULL;
    g.dbias = c->want & W_DB ? &o->t[O_DB].b.t : NULL;
    g.dA = c->want & W_DA ? &o->t[O_DA].b.t : NULL;
    g.dB = c->want & W_DB_ ? &o->t[O_DBB].b.t : NULL;
    g.dhidden = c->nh && !c->dhidden_null ? dh : NULL;
    const neat_tensor *dy = &in->t[I_DY].b.t;
    q = bwd_size(c, qw, &g, a, ex, &bytes);
    CHECK(q == want, "backward workspace query: %s", neat_last_error());
    ws = ws_alloc(c, bytes);
    if (c->short_ws)
        st->bwd_short = bytes == 0 ? NEAT_ERR_WORKSPACE
                                   : bwd(c, qw, &g, dy, a, ws.p, bytes - 1, ex);
    st->bwd = bwd(c, qw, &g, dy, a, ws.p, bytes, ex);
    CHECK(st->bwd == want, "backward: %s", neat_last_error());
    guard_free(&ws);
}

/* The smallest |Z| / rms(Z) over every pre-activation of the stack (float64): how close a
 * relu case sits to the kink, where a float32 rounding can flip relu' and move dA, dH and
 * dweight by far more than any tolerance. Mirrors reference.c's stack forward. */
static double relu_margin(const ref_problem *p)
{
    int64_t r = p->r, d = p->d_in, n = r * d;
    int k = p->num_hidden / 2;
    double *Z = xmalloc((size_t)n * sizeof *Z), *G = xmalloc((size_t)n * sizeof *G);
    double *saved[NEAT_MAX_HIDDEN + 1];
    int top = 0;
    double margin = INFINITY;
    for (int l = 0; l <= p->num_hidden; l++) {
        for (int64_t i = 0; i < r; i++)
            for (int64_t j = 0; j < d; j++) {
                double s = 0;
                if (l == 0)
                    for (int64_t o = 0; o < p->d_out; o++) s += p->A[i * p->d_out + o] * p->W[o * d + j];
                else
                    for (int64_t q = 0; q < r; q++) s += p->H[l - 1][i * r + q] * G[q * d + j];
                Z[i * d + j] = s;
            }
        double ss = 0;
        for (int64_t i = 0; i < n; i++) ss += Z[i] * Z[i];
        double rms = sqrt(ss / (double)n);
        for (int64_t i = 0; i < n && rms > 0; i++) margin = fmin(margin, fabs(Z[i]) / rms);
        if (l >= 1 && l <= k) { /* encoder: its input goes on the stack */
            saved[top] = xmalloc((size_t)n * sizeof *G);
            memcpy(saved[top++], G, (size_t)n * sizeof *G);
        }
        for (int64_t i = 0; i < n; i++) G[i] = Z[i] > 0 ? Z[i] : 0;
        if (l > k) {
            double *skip = saved[--top];
            for (int64_t i = 0; i < n; i++) G[i] += skip[i];
            free(skip);
        }
    }
    free(Z), free(G);
    return margin;
}

typedef struct fz_stats {
    long cases, per_class[C_CLASSES], threaded, bitwise, failed_cases;
    long provided, provider_calls; /* cases run with neat_exec.gemm set; its calls */
    long quantized;                /* cases with a quantized W */
    long kink_excused;  /* float32 relu gradients excused at the kink */
    long cond_relaxed;  /* outputs within the conditioning allowance, not docs/design.md §4's bound */
    double worst_ratio; /* largest error / docs/design.md §4 bound among those */
    long worst_case;
    const char *worst_output;
    double seconds;
} fz_stats;

static fz_stats stats;

static double tol_for(neat_dtype dt)
{
    /* docs/design.md §4: relative Frobenius error against the float64 reference */
    return dt == NEAT_FLOAT64 ? 1e-12 : 1e-5;
}

/* Reference values of every output slot (NULL: not computed). */
typedef struct fz_refs {
    double *out[O_COUNT], *dh[NEAT_MAX_HIDDEN];
} fz_refs;

static void refs_compute(const fz_case *c, const ref_problem *p, const double *dy, fz_refs *R)
{
    int64_t ny = c->N * c->d_out, nx = c->N * c->d_in, nw = c->d_out * c->d_in;
    memset(R, 0, sizeof *R);
    double *yb = c->with_base ? xmalloc((size_t)(ny + 1) * 8) : NULL;
    R->out[O_Y] = xmalloc((size_t)(ny + 1) * 8);
    ref_forward(p, yb, R->out[O_Y]);
    for (int64_t i = 0; yb && i < ny; i++) R->out[O_Y][i] += yb[i];
    R->out[O_G] = xmalloc((size_t)(c->r * c->d_in) * 8);
    ref_compute_g(p, R->out[O_G]);

    ref_grads rg;
    memset(&rg, 0, sizeof rg);
    double *dxb = NULL, *dwb = NULL;
    if (c->want & W_DX) {
        rg.dx_adapter = R->out[O_DX] = xmalloc((size_t)(nx + 1) * 8);
        if (c->with_base)
            rg.dx_base = dxb = xmalloc((size_t)(nx + 1) * 8);
    }
    if (c->want & W_DW) {
        rg.dW_adapter = R->out[O_DW] = xmalloc((size_t)nw * 8);
        if (c->with_base)
            rg.dW_base = dwb = xmalloc((size_t)nw * 8);
    }
    if (c->want & W_DB)
        rg.db = R->out[O_DB] = xmalloc((size_t)c->d_out * 8);
    if (c->want & W_DA)
        rg.dA = R->out[O_DA] = xmalloc((size_t)(c->r * c->d_out) * 8);
    if (c->want & W_DB_)
        rg.dB = R->out[O_DBB] = xmalloc((size_t)(c->r * c->d_out) * 8);
    for (int i = 0; i < c->nh; i++)
        if (c->want_dh[i])
            rg.dH[i] = R->dh[i] = xmalloc((size_t)(c->r * c->r) * 8);
    ref_backward(p, dy, &rg);
    for (int64_t i = 0; dxb && i < nx; i++) R->out[O_DX][i] += dxb[i];
    for (int64_t i = 0; dwb && i < nw; i++) R->out[O_DW][i] += dwb[i];
    free(yb), free(dxb), free(dwb);
}

static void refs_free(fz_refs *R)
{
    for (int i = 0; i < O_COUNT; i++) free(R->out[i]);
    for (int i = 0; i < NEAT_MAX_HIDDEN; i++) free(R->dh[i]);
}

static double *perturbed(const double *v, int64_t n, double rel, uint64_t *rng)
{
    double *p = xmalloc((size_t)(n + 1) * sizeof *p);
    for (int64_t i = 0; i < n; i++) p[i] = v[i] * (1 + rel * rng_uniform(rng, -1, 1));
    return p;
}

/*
 * The reference again with every input value moved by a random relative amount of one unit
 * roundoff of the case's dtype: how much the outputs move when the inputs do is what rounding
 * in that dtype can legitimately cost. Enumerated tests pick well-conditioned problems; random
 * ones also draw cancellations (a base and an adapter term that nearly cancel, r = 1 sums over
 * thousands of rows, broadcast inputs whose gradient is exactly zero so that any result is
 * rounding noise), where no kernel meets a relative bound. There an output may differ from
 * the reference by up to FZ_COND_FACTOR times as much as the perturbed reference does. The
 * factor covers what one perturbation of the inputs does not model: rounding injected at every
 * layer of a deep stack (and amplified by the layers after it) and accumulated over sums of up
 * to 4e4 terms. It stays tiny next to what an indexing, stride or overrun bug does (an error
 * the size of the terms summed, not of their rounding), so such bugs still fail.
 */
#define FZ_COND_FACTOR 256.0

static void refs_perturbed(const fz_case *c, const fz_inputs *in, fz_refs *R)
{
    uint64_t rng = mix(c->seed ^ 0x5A5A5A5Aull, (uint64_t)c->index);
    double rel = c->dtype == NEAT_FLOAT64 ? 0x1p-53 : 0x1p-24;
    ref_problem p = in->ref;
    double *x = perturbed(p.x, c->N * c->d_in, rel, &rng);
    double *W = perturbed(p.W, c->d_out * c->d_in, rel, &rng);
    double *b = p.b ? perturbed(p.b, c->d_out, rel, &rng) : NULL;
    double *A = perturbed(p.A, c->r * c->d_out, rel, &rng);
    double *B = perturbed(p.B, c->d_out * c->r, rel, &rng);
    double *dy = perturbed(in->v[I_DY], c->N * c->d_out, rel, &rng);
    double *H[NEAT_MAX_HIDDEN];
    for (int i = 0; i < c->nh; i++) p.H[i] = H[i] = perturbed(p.H[i], c->r * c->r, rel, &rng);
    p.x = x, p.W = W, p.b = b, p.A = A, p.B = B;
    refs_compute(c, &p, dy, R);
    free(x), free(W), free(b), free(A), free(B), free(dy);
    for (int i = 0; i < c->nh; i++) free(H[i]);
}

/* What a case's checks share: its references, computed the second time only when needed. */
typedef struct fz_checker {
    const fz_case *c;
    const fz_inputs *in;
    fz_refs ref, pert;
    int have_pert;
    int kink; /* -1: not yet known */
} fz_checker;

/* Slots O_* of fz_refs.out, then O_COUNT + i for dh[i]. */
static const double *ref_slot(const fz_refs *R, int slot)
{
    return slot < O_COUNT ? R->out[slot] : R->dh[slot - O_COUNT];
}

/* Compares output `slot` with its reference and checks that its padding is still NaN.
 * relu_sensitive: the output flows through relu' (dA, dH, dweight), see relu_margin. */
static void expect_close(fz_checker *k, const char *what, const fz_tensor *t, int slot,
                         int relu_sensitive)
{
    const fz_case *c = k->c;
    const double *ref = ref_slot(&k->ref, slot);
    int64_t n = numel(t), rows = t->b.t.sizes[0], cols = n && rows ? n / rows : 1;
    double *got = fz_read(t), tol = tol_for(c->dtype);
    double err = rel_err(got, ref, n), allowed = tol;
    if (!(err <= tol) && !isnan(err)) {
        if (!k->have_pert) {
            refs_perturbed(c, k->in, &k->pert);
            k->have_pert = 1;
        }
        double sens = rel_err(ref_slot(&k->pert, slot), ref, n);
        /* Deep stacks: each of the nh + 1 layers rounds its own Z and G and the layers after
         * it carry that on, which one perturbation of the inputs can miss (seen: r = 1, a
         * 1x1 dhidden after 8 float32 layers, 1.5e-5). So the bound also grows with depth. */
        allowed = fmax(tol * (1 + c->nh / 2.0), FZ_COND_FACTOR * sens);
        if (err <= allowed) {
            stats.cond_relaxed++;
            if (err / tol > stats.worst_ratio)
                stats.worst_ratio = err / tol, stats.worst_case = c->index,
                stats.worst_output = slot < O_COUNT ? out_names[slot] : "dhidden";
        }
    }
    if (!(err <= allowed) && relu_sensitive && c->act == NEAT_ACT_RELU &&
        c->dtype == NEAT_FLOAT32) {
        /* relu' is a step: in float32 a pre-activation within rounding of 0 may take the other
         * side, which moves the gradients that flow through relu' by O(1) in one entry; that
         * is excused only when the float64 stack has a pre-activation that close to 0 */
        if (k->kink < 0)
            k->kink = relu_margin(&k->in->ref) < 1e-5;
        if (k->kink) {
            stats.kink_excused++;
            allowed = INFINITY;
        }
    }
    CHECK(err <= allowed, "case %ld: %s rel err %.3g > %.3g (docs/design.md §4 bound %g)", c->index, what,
          err, allowed, tol);
    if (!(err <= allowed))
        print_mismatches(what, got, ref, rows, cols, tol);
    CHECK(tb_padding_is(&t->b, NAN), "case %ld: %s wrote outside its view", c->index, what);
    free(got);
}

static void expect_untouched(const fz_case *c, const char *what, const fz_tensor *t)
{
    CHECK(tb_all_are(&t->b, NAN), "case %ld: %s was not requested but was written", c->index,
          what);
}

static char current[4096]; /* the running case, for the crash handlers */

static void print_current(void)
{
    static const char head[] = "\ntest_fuzz: died while running\n";
    ssize_t w = write(2, head, sizeof head - 1);
    w = write(2, current, strlen(current));
    (void)w;
}

#ifndef FZ_SANITIZER
static void on_fatal_signal(int sig)
{
    print_current();
    signal(sig, SIG_DFL);
    raise(sig);
}
#endif

/* Runs case c; returns the number of failed checks. */
static int run_case(const fz_case *c, int verbose)
{
    int failures0 = check_failures;
    describe(c, current, sizeof current);
    if (verbose)
        fprintf(stderr, "%s", current);

    fz_inputs in;
    make_inputs(c, &in);
    fz_outputs o;
    make_outputs(c, &o);
    int th = c->threads;
    neat_exec ex = {pthread_parallel_for, &th, th, NULL, 0, NULL, NULL, NULL};
    test_provider prov = test_provider_make(0);
    if (c->index & 1) {
        ex.gemm = test_provider_gemm, ex.gemm_user = &prov;
        stats.provided++;
    }
    fz_status st;
    memset(&st, 0, sizeof st);
    run_calls(c, &in, &o, &ex, &st);
    stats.threaded += c->threads > 1;
    stats.quantized += c->quant;

    if (c->short_ws) {
        CHECK(st.fwd_short == NEAT_ERR_WORKSPACE && st.g_short == NEAT_ERR_WORKSPACE &&
                  st.bwd_short == NEAT_ERR_WORKSPACE,
              "case %ld: a workspace one byte short was not refused (%d %d %d)", c->index,
              (int)st.fwd_short, (int)st.g_short, (int)st.bwd_short);
    }

    fz_checker k;
    memset(&k, 0, sizeof k);
    k.c = c, k.in = &in, k.kink = -1;
    refs_compute(c, &in.ref, in.v[I_DY], &k.ref);
    if (st.fwd == NEAT_OK)
        expect_close(&k, "y", &o.t[O_Y], O_Y, 0);
    if (st.g == NEAT_OK)
        expect_close(&k, "G", &o.t[O_G], O_G, 0);
    if (st.bwd == NEAT_OK) {
        const struct {
            unsigned bit;
            int slot, relu_sensitive;
        } gs[] = {{W_DX, O_DX, 0}, {W_DW, O_DW, 1}, {W_DB, O_DB, 0}, {W_DA, O_DA, 1},
                  {W_DB_, O_DBB, 0}};
        for (int i = 0; i < 5; i++) {
            const fz_tensor *t = &o.t[gs[i].slot];
            if (c->want & gs[i].bit)
                expect_close(&k, out_names[gs[i].slot], t, gs[i].slot, gs[i].relu_sensitive);
            else
                expect_untouched(c, out_names[gs[i].slot], t);
        }
        for (int i = 0; i < c->nh; i++) {
            char nm[32];
            snprintf(nm, sizeof nm, "dhidden[%d]", i);
            if (c->want_dh[i])
                expect_close(&k, nm, &o.dh[i], O_COUNT + i, 1);
            else
                expect_untouched(c, nm, &o.dh[i]);
        }
    }

    /* the same calls with another thread count must give the same bits */
    if (c->threads2) {
        fz_outputs o2;
        make_outputs(c, &o2);
        int th2 = c->threads2;
        neat_exec ex2 = {pthread_parallel_for, &th2, th2, NULL, 0, NULL, ex.gemm, &prov};
        fz_status st2;
        memset(&st2, 0, sizeof st2);
        run_calls(c, &in, &o2, &ex2, &st2);
        for (int i = 0; i < O_COUNT; i++)
            CHECK(same_bits(&o.t[i], &o2.t[i]), "case %ld: %s differs between %d and %d threads",
                  c->index, out_names[i], c->threads, c->threads2);
        for (int i = 0; i < c->nh; i++)
            CHECK(same_bits(&o.dh[i], &o2.dh[i]),
                  "case %ld: dhidden[%d] differs between %d and %d threads", c->index, i,
                  c->threads, c->threads2);
        free_outputs(c, &o2);
        stats.bitwise++;
    }

    CHECK(prov.bad == 0, "case %ld: %ld provider calls broke its contract: %s", c->index,
          prov.bad, prov.first_bad);
    stats.provider_calls += prov.calls;
    refs_free(&k.ref);
    if (k.have_pert)
        refs_free(&k.pert);
    free_outputs(c, &o);
    free_inputs(c, &in);

    int failed = check_failures - failures0;
    if (failed)
        fprintf(stderr, "FAILED %s", current);
    return failed;
}

/* The guard allocator's promises, checked once so that a passing run means what it says. */
static void check_guards(void)
{
    long ps = sysconf(_SC_PAGESIZE);
    for (size_t bytes = 0; bytes < 3 * (size_t)ps; bytes += 1000) {
        gbuf b = guard_alloc(bytes, GUARD_BACK, GUARD_FLUSH);
        gbuf f = guard_alloc(bytes, GUARD_FRONT, GUARD_FLUSH);
        gbuf m = guard_alloc(bytes, GUARD_BACK, 24);
        CHECK(((uintptr_t)b.p + bytes) % (uintptr_t)ps == 0, "back guard not flush (%zu)", bytes);
        CHECK((uintptr_t)f.p % (uintptr_t)ps == 0, "front guard not flush (%zu)", bytes);
        uintptr_t end = (uintptr_t)m.p + bytes, page_end = (end + (uintptr_t)ps - 1) /
                                                             (uintptr_t)ps * (uintptr_t)ps;
        CHECK((uintptr_t)m.p % 64 == 24 && page_end - end < 64,
              "misaligned buffer placed wrong (%zu)", bytes);
        guard_free(&b), guard_free(&f), guard_free(&m);
    }
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static const char *env(const char *name)
{
    const char *v = getenv(name);
    return v && *v ? v : NULL;
}

int main(void)
{
#ifdef FZ_SANITIZER
    /* the sanitizer reports a fault (or a race) itself; this names the case that caused it */
    __sanitizer_set_death_callback(print_current);
#else
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_fatal_signal;
    sigaction(SIGSEGV, &sa, NULL);
    sigaction(SIGBUS, &sa, NULL);
    sigaction(SIGABRT, &sa, NULL);
#endif
    uint64_t seed = env("NEAT_FUZZ_SEED") ? strtoull(env("NEAT_FUZZ_SEED"), NULL, 0)
                                          : FZ_DEFAULT_SEED;
    long cases = env("NEAT_FUZZ_CASES") ? strtol(env("NEAT_FUZZ_CASES"), NULL, 0) : -1;
    double seconds = env("NEAT_FUZZ_SECONDS") ? strtod(env("NEAT_FUZZ_SECONDS"), NULL) : -1;
    int verbose = env("NEAT_FUZZ_VERBOSE") != NULL;
    if (cases < 0)
        cases = seconds > 0 ? -1 : FZ_DEFAULT_CASES;
    /* NEAT_FUZZ_FIRST: start at another index (to split a long run, or to go on past a crash) */
    long first = env("NEAT_FUZZ_FIRST") ? strtol(env("NEAT_FUZZ_FIRST"), NULL, 0) : 0;
    if (env("NEAT_FUZZ_CASE")) {
        first = strtol(env("NEAT_FUZZ_CASE"), NULL, 0);
        cases = 1;
        verbose = 1;
    }

    check_guards();
    double t0 = now();
    for (long i = first; cases < 0 || i < first + cases; i++) {
        if (seconds > 0 && now() - t0 > seconds)
            break;
        fz_case c;
        gen_case(seed, i, &c);
        stats.cases++;
        stats.per_class[c.cls]++;
        if (run_case(&c, verbose) && ++stats.failed_cases >= FZ_MAX_FAILED_CASES) {
            fprintf(stderr, "test_fuzz: stopping after %d failing cases\n", FZ_MAX_FAILED_CASES);
            break;
        }
    }
    stats.seconds = now() - t0;
    printf("test_fuzz: seed 0x%llx, %ld cases (", (unsigned long long)seed, stats.cases);
    for (int k = 0; k < C_CLASSES; k++)
        printf("%s%s %ld", k ? ", " : "", class_names[k], stats.per_class[k]);
    printf("), %ld threaded, %ld rechecked bitwise across thread counts, %ld failing cases, "
           "%.1f s\n",
           stats.threaded, stats.bitwise, stats.failed_cases, stats.seconds);
    printf("test_fuzz: %ld outputs within the conditioning allowance but not docs/design.md §4's bound "
           "(worst %.3gx the bound: case %ld, %s), %ld float32 relu gradients excused at the "
           "kink\n",
           stats.cond_relaxed, stats.worst_ratio, stats.worst_case,
           stats.worst_output ? stats.worst_output : "-", stats.kink_excused);
    printf("test_fuzz: %ld cases with a host GEMM provider (%ld provider calls), %ld with a "
           "quantized W%s\n",
           stats.provided, stats.provider_calls, stats.quantized,
           tb_device().type == NEAT_DEVICE_CUDA ? " (on CUDA views)" : "");
    printf("test_fuzz: replay one case with NEAT_FUZZ_SEED=0x%llx NEAT_FUZZ_CASE=<index>\n",
           (unsigned long long)seed);
    return check_exit("test_fuzz");
}
