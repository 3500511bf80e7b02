/*
 * gemm.c - instantiates the blocked GEMM (gemm_impl.h) for float and double.
 *
 * Block sizes were tuned on a Sapphire Rapids core (AVX-512, gcc 12, -O3 -march=native
 * -mprefer-vector-width=512) with tests/c/bench_gemm.c: the MR x NR accumulator takes 28 (float)
 * or 24 (double) of the 32 vector registers, a KC x NR strip of B stays in L1 and an MC x KC
 * block of A in L2. MC and NC are multiples of MR and NR. The sizes are fixed per dtype and
 * never depend on the thread count, which is what makes results independent of it.
 * (double NR = 24, not 16: with 16 gcc 12 vectorises the kernel across MR with permutes.)
 */
#include "gemm.h"

#include "workspace.h"

typedef struct neat_gemm_plan {
    int swap;                 /* compute C^T = B^T A^T (skinny N) */
    int64_t mc, nc, kc;       /* block sizes clipped to the problem */
    int64_t mblocks, tiles;   /* tile t covers M block t % mblocks, N block t / mblocks */
    size_t pa_bytes, lane_bytes;
} neat_gemm_plan;

static int64_t neat_round_up(int64_t v, int64_t m)
{
    return (v + m - 1) / m * m;
}

static neat_gemm_plan neat_gemm_make_plan(int64_t M, int64_t N, int64_t K, int64_t mr, int64_t nr,
                                          int64_t MC, int64_t KC, int64_t NC, size_t esize)
{
    neat_gemm_plan p;
    p.swap = N < nr && M > N;
    if (p.swap) {
        int64_t t = M;
        M = N, N = t;
    }
    p.mc = neat_round_up(M, mr) < MC ? neat_round_up(M, mr) : MC;
    p.nc = neat_round_up(N, nr) < NC ? neat_round_up(N, nr) : NC;
    p.kc = K < KC ? K : KC;
    p.mblocks = (M + p.mc - 1) / p.mc;
    p.tiles = p.mblocks * ((N + p.nc - 1) / p.nc);
    /* strips are packed whole, so a block's buffer covers it rounded up to full strips */
    p.pa_bytes = neat_align_up((size_t)(neat_round_up(p.mc, mr) * p.kc) * esize);
    p.lane_bytes = p.pa_bytes + neat_align_up((size_t)(neat_round_up(p.nc, nr) * p.kc) * esize);
    return p;
}

int32_t neat_exec_lanes(const neat_exec *exec)
{
    return exec && exec->num_threads > 1 ? exec->num_threads : 1;
}

#define T float
#define SFX f32
#define MR 14
#define NR 32
#define MC 336
#define KC 384
#define NC 1024
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
#define MC 192
#define KC 256
#define NC 1008 /* a multiple of NR */
#include "gemm_impl.h"
static const int64_t neat_f64_blocks[5] = {MR, NR, MC, KC, NC};
#undef T
#undef SFX
#undef MR
#undef NR
#undef MC
#undef KC
#undef NC

size_t neat_gemm_scratch_bytes_mnk(neat_dtype dtype, int64_t M, int64_t N, int64_t K,
                                   int32_t lanes)
{
    if (M <= 0 || N <= 0 || K <= 0)
        return 0;
    const int64_t *b = dtype == NEAT_FLOAT64 ? neat_f64_blocks : neat_f32_blocks;
    size_t esize = dtype == NEAT_FLOAT64 ? sizeof(double) : sizeof(float);
    neat_gemm_plan p = neat_gemm_make_plan(M, N, K, b[0], b[1], b[2], b[3], b[4], esize);
    int64_t l = lanes > 1 ? lanes : 1;
    if (l > p.tiles)
        l = p.tiles;
    return (size_t)l * p.lane_bytes + NEAT_ALIGN;
}

size_t neat_gemm_scratch_bytes(neat_dtype dtype, int32_t lanes)
{
    const int64_t *b = dtype == NEAT_FLOAT64 ? neat_f64_blocks : neat_f32_blocks;
    /* the largest plan: every block at its full size */
    return neat_gemm_scratch_bytes_mnk(dtype, b[2] * (lanes > 1 ? lanes : 1), b[4], b[3], lanes);
}

void neat_gemm(neat_dtype dtype, int64_t M, int64_t N, int64_t K, double alpha,
               const void *A, int64_t rsa, int64_t csa, const void *B, int64_t rsb, int64_t csb,
               double beta, void *C, int64_t rsc, int64_t csc, void *scratch,
               const neat_exec *exec)
{
    if (dtype == NEAT_FLOAT64)
        neat_gemm_f64(M, N, K, alpha, A, rsa, csa, B, rsb, csb, beta, C, rsc, csc, scratch, exec);
    else
        neat_gemm_f32(M, N, K, (float)alpha, A, rsa, csa, B, rsb, csb, (float)beta, C, rsc, csc,
                      scratch, exec);
}
