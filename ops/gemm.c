/*
 * gemm.c - instantiates the blocked GEMM (gemm_impl.h) for float and double.
 *
 * Block sizes were tuned on a Sapphire Rapids core (AVX-512, 48 KB L1d, 2 MB L2, gcc 12, -O3
 * -march=native -mprefer-vector-width=512) against torch.mm (MKL) on random data: the MR x NR
 * accumulator takes 28 (float) or 24 (double) of the 32 vector registers, an MR x KC strip of A
 * stays in L1 (21 / 16 KB), a KC x NC block of B in L2 (983 KB), and a tile's packed A block
 * (at most MC x KC) in L3. MC is a multiple of MR, NC of NR.
 * Results never depend on the thread count: KC (the only block that changes an element's
 * arithmetic) is fixed per dtype, and tile borders fall on the MR x NR grid, so the tile grid,
 * which does depend on the lane count, only decides who computes a micro-tile, not how.
 * (double NR = 24, not 16: with 16 gcc 12 vectorises the kernel across MR with permutes; the
 * same happens for 14 x 16 and 12 x 16, measured 15x slower.)
 */
#include "gemm.h"

#include "workspace.h"

typedef struct neat_gemm_plan {
    int swap;                 /* compute C^T = B^T A^T (skinny N) */
    int64_t kc, nc;           /* K slice, width of a packed B block (clipped to the problem) */
    int64_t tm, tn;           /* output tile: tm rows (one packed A block), tn columns */
    int64_t mtiles, tiles;    /* tile t covers rows block t % mtiles, columns block t / mtiles */
    size_t pa_bytes, lane_bytes; /* packed blocks hold kc + K2 rows (the fused second term) */
} neat_gemm_plan;

static int64_t neat_cdiv(int64_t a, int64_t b)
{
    return (a + b - 1) / b;
}

/*
 * The tiling. Tile borders fall on multiples of MR and NR, so every MR x NR micro-tile (and
 * with it every output element's arithmetic) is the same whatever the grid; the grid may thus
 * depend on the lane count. Each tile packs its A rows and its B columns once (per K slice), so
 * fewer, larger tiles pack less; the grid chosen minimises a lane's modelled time: its share of
 * tiles (ceil(tiles / lanes)) times a tile's pack cost, about half a cycle per element packed,
 * i.e. 16 multiply-adds at 32 per cycle, plus its multiply-adds. One lane gets one tile (up to
 * MCMAX rows), two lanes two halves.
 */
static neat_gemm_plan neat_gemm_make_plan(int64_t M, int64_t N, int64_t K, int64_t K2,
                                          int64_t mr, int64_t nr, int64_t MCMAX, int64_t KC,
                                          int64_t NC, size_t esize, int32_t lanes)
{
    neat_gemm_plan p;
    p.swap = N < nr && M > N;
    if (p.swap) {
        int64_t t = M;
        M = N, N = t;
    }
    p.kc = K < KC ? K : KC;
    int64_t ms = neat_cdiv(M, mr), ns = neat_cdiv(N, nr); /* strips */
    int64_t L = lanes > 1 ? lanes : 1;
    int64_t mt_min = neat_cdiv(M, MCMAX);
    int64_t best_mt = mt_min, best_nt = 1;
    double best = -1;
    /* the search is capped (512 x 512 grids) so that a huge lane count cannot make it slow */
    int64_t mt_max = mt_min * 4 * L < mt_min + 511 ? mt_min * 4 * L : mt_min + 511;
    int64_t nt_max = 4 * L < 512 ? 4 * L : 512;
    for (int64_t mt = mt_min; mt <= ms && mt <= mt_max; mt++) {
        for (int64_t nt = 1; nt <= ns && nt <= nt_max; nt++) {
            int64_t tiles = mt * nt;
            int64_t tm = neat_cdiv(ms, mt) * mr, tn = neat_cdiv(ns, nt) * nr;
            double per = (double)neat_cdiv(tiles, L) *
                         ((double)(tm + tn) * (double)K * 16.0 + (double)tm * (double)tn * (double)K);
            if (best < 0 || per < best)
                best = per, best_mt = mt, best_nt = nt;
        }
    }
    p.tm = neat_cdiv(ms, best_mt) * mr;
    p.tn = neat_cdiv(ns, best_nt) * nr;
    p.mtiles = neat_cdiv(M, p.tm);
    p.tiles = p.mtiles * neat_cdiv(N, p.tn);
    p.nc = p.tn < NC ? p.tn : NC;
    p.pa_bytes = neat_align_up((size_t)(p.tm * (p.kc + K2)) * esize);
    p.lane_bytes = p.pa_bytes + neat_align_up((size_t)(p.nc * (p.kc + K2)) * esize);
    return p;
}

/* Skinny paths (gemm_impl.h): which one a call takes; negative: on the transposed problem. */
#define NEAT_SKINNY 16 /* the small dimension's limit */
enum { NEAT_SKINNY_DOT = 1, NEAT_SKINNY_DIRECT = 2 };

static int neat_gemm_skinny_kind(int64_t M, int64_t N, int64_t K, int64_t rsa, int64_t csa,
                                 int64_t rsb, int64_t csb)
{
    if (M <= NEAT_SKINNY && csb == 1)
        return NEAT_SKINNY_DIRECT;
    if (N <= NEAT_SKINNY && rsa == 1) /* transposed: M' = N, B' = A^T with csb' = rsa */
        return -NEAT_SKINNY_DIRECT;
    /* a short K leaves too little to amortise the dot path's reductions */
    if (K < 256)
        return 0;
    if (N <= NEAT_SKINNY && csa == 1)
        return NEAT_SKINNY_DOT;
    if (M <= NEAT_SKINNY && rsb == 1) /* transposed: N' = M, A' = B^T with csa' = rsb */
        return -NEAT_SKINNY_DOT;
    return 0;
}

int32_t neat_exec_lanes(const neat_exec *exec)
{
    return exec && exec->num_threads > 1 ? exec->num_threads : 1;
}

#define T float
#define SFX f32
#define MR 14
#define NR 32
#define MC 4088 /* a multiple of MR */
#define KC 384
#define NC 640
#include "gemm_impl.h"
static const int64_t neat_f32_blocks[5] = {MR, NR, MC, KC, NC};
#undef T
#undef SFX
#undef MR
#undef NR
#undef MC
#undef KC
#undef NC

#define T double
#define SFX f64
#define MR 8
#define NR 24
#define MC 2048
#define KC 256
#define NC 480 /* a multiple of NR */
#include "gemm_impl.h"
static const int64_t neat_f64_blocks[5] = {MR, NR, MC, KC, NC};
#undef T
#undef SFX
#undef MR
#undef NR
#undef MC
#undef KC
#undef NC

int64_t neat_gemm_k_slice(neat_dtype dtype)
{
    return dtype == NEAT_FLOAT64 ? neat_f64_blocks[3] : neat_f32_blocks[3];
}

/* Scratch of one call with a fused second term of K2 (0: none) on its packed path. */
static size_t neat_gemm_bytes_k2(neat_dtype dtype, int64_t M, int64_t N, int64_t K, int64_t K2,
                                 int32_t lanes)
{
    if (M <= 0 || N <= 0 || K <= 0)
        return 0;
    const int64_t *b = dtype == NEAT_FLOAT64 ? neat_f64_blocks : neat_f32_blocks;
    size_t esize = dtype == NEAT_FLOAT64 ? sizeof(double) : sizeof(float);
    neat_gemm_plan p = neat_gemm_make_plan(M, N, K, K2, b[0], b[1], b[2], b[3], b[4], esize,
                                           lanes);
    int64_t l = lanes > 1 ? lanes : 1;
    if (l > p.tiles)
        l = p.tiles;
    size_t packed = (size_t)l * p.lane_bytes;
    size_t sk = dtype == NEAT_FLOAT64 ? neat_skinny_scratch_bytes_f64(M, N, K, lanes)
                                      : neat_skinny_scratch_bytes_f32(M, N, K, lanes);
    return (packed > sk ? packed : sk) + NEAT_ALIGN;
}

size_t neat_gemm_scratch_bytes_mnk(neat_dtype dtype, int64_t M, int64_t N, int64_t K,
                                   int32_t lanes)
{
    return neat_gemm_bytes_k2(dtype, M, N, K, 0, lanes);
}

size_t neat_gemm_ex_scratch_bytes(neat_dtype dtype, int64_t M, int64_t N, int64_t K, int64_t K2,
                                  int32_t lanes)
{
    if (K2 <= 0)
        return neat_gemm_bytes_k2(dtype, M, N, K, 0, lanes);
    /* fused on the packed path, or (skinny, K <= 0) the K2 product as a call of its own */
    size_t fused = neat_gemm_bytes_k2(dtype, M, N, K, K2, lanes);
    size_t alone = neat_gemm_bytes_k2(dtype, M, N, K2, 0, lanes);
    return fused > alone ? fused : alone;
}

/*
 * The large products go to the host's GEMM when exec gives one (neat.h, neat_gemm_fn): all three
 * dims above the skinny limit, so the rank-r products and the stack's r-row blocks never do.
 * 1 when the provider computed C; 0 when there is none, the shape is small or it declined.
 */
static int neat_gemm_provided(neat_dtype dtype, int64_t M, int64_t N, int64_t K, double alpha,
                              const void *A, int64_t rsa, int64_t csa, const void *B,
                              int64_t rsb, int64_t csb, double beta, void *C, int64_t rsc,
                              int64_t csc, const neat_exec *exec)
{
    if (!exec || !exec->gemm || M <= NEAT_SKINNY || N <= NEAT_SKINNY || K <= NEAT_SKINNY)
        return 0;
    return exec->gemm(dtype, M, N, K, alpha, A, rsa, csa, B, rsb, csb, beta, C, rsc, csc,
                      exec->gemm_user) == 0;
}

static void neat_gemm_own(neat_dtype dtype, int64_t M, int64_t N, int64_t K, double alpha,
                          const void *A, int64_t rsa, int64_t csa, const void *B, int64_t rsb,
                          int64_t csb, double beta, void *C, int64_t rsc, int64_t csc,
                          const neat_gemm_extra *ex, void *scratch, const neat_exec *exec)
{
    if (dtype == NEAT_FLOAT64)
        neat_gemm_ex_f64(M, N, K, alpha, A, rsa, csa, B, rsb, csb, beta, C, rsc, csc, ex, scratch,
                         exec);
    else
        neat_gemm_ex_f32(M, N, K, (float)alpha, A, rsa, csa, B, rsb, csb, (float)beta, C, rsc,
                         csc, ex, scratch, exec);
}

void neat_gemm(neat_dtype dtype, int64_t M, int64_t N, int64_t K, double alpha,
               const void *A, int64_t rsa, int64_t csa, const void *B, int64_t rsb, int64_t csb,
               double beta, void *C, int64_t rsc, int64_t csc, void *scratch,
               const neat_exec *exec)
{
    neat_gemm_ex(dtype, M, N, K, alpha, A, rsa, csa, B, rsb, csb, beta, C, rsc, csc, NULL,
                 scratch, exec);
}

void neat_gemm_ex(neat_dtype dtype, int64_t M, int64_t N, int64_t K, double alpha,
                  const void *A, int64_t rsa, int64_t csa, const void *B, int64_t rsb,
                  int64_t csb, double beta, void *C, int64_t rsc, int64_t csc,
                  const neat_gemm_extra *ex, void *scratch, const neat_exec *exec)
{
    if (!neat_gemm_provided(dtype, M, N, K, alpha, A, rsa, csa, B, rsb, csb, beta, C, rsc, csc,
                            exec)) {
        neat_gemm_own(dtype, M, N, K, alpha, A, rsa, csa, B, rsb, csb, beta, C, rsc, csc, ex,
                      scratch, exec);
        return;
    }
    if (!ex || (ex->K2 <= 0 && !ex->D))
        return;
    /* the other terms in one more pass over C, on the library's own code:
     * C = alpha2 A2 B2 + C + D (with K2 <= 0: C + D); scratch as neat_gemm_ex_scratch_bytes's
     * "alone" case */
    neat_gemm_extra d = {0, 0.0, NULL, 0, 0, NULL, 0, 0, ex->D, ex->rsd, ex->csd};
    int64_t K2 = ex->K2 > 0 ? ex->K2 : 0;
    neat_gemm_own(dtype, M, N, K2, ex->alpha2, ex->A2, ex->rsa2, ex->csa2, ex->B2, ex->rsb2,
                  ex->csb2, 1.0, C, rsc, csc, ex->D ? &d : NULL, scratch, exec);
}
