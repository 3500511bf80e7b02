/*
 * gemm_impl.h - the blocked GEMM written once, included by gemm.c for each element type with
 * T (element type), SFX (name suffix), MR, NR (register tile), MC, KC, NC (cache blocks) defined.
 *
 * Loop structure (BLIS): an output tile of MC x NC is owned by one lane; for each KC slice of K
 * the lane packs the MC x KC block of A into MR-row strips and the KC x NC block of B into
 * NR-column strips (both zero-padded at the edges), then walks NR strips of B (kept in L1)
 * against MR strips of A (streamed from L2) with the register micro-kernel.
 */
#define NEAT_CAT_(a, b) a##b
#define NEAT_CAT(a, b) NEAT_CAT_(a, b)
#define NEAT_FN(name) NEAT_CAT(name, SFX)

/* Packs rows [0, mc) x cols [0, kc) of A into strips of MR rows: strip s holds (k, i) at
 * s*kc*MR + k*MR + i; rows past mc are zero so the kernel can always run full tiles. */
static void NEAT_FN(neat_pack_a_)(int64_t mc, int64_t kc, const T *A, int64_t rsa, int64_t csa,
                                  T *restrict pa)
{
    for (int64_t i0 = 0; i0 < mc; i0 += MR) {
        int64_t m = mc - i0 < MR ? mc - i0 : MR;
        const T *a = A + i0 * rsa;
        if (m == MR && rsa == 1) {
            /* column-major source (a transposed view): each k is MR contiguous values */
            for (int64_t k = 0; k < kc; k++)
                for (int i = 0; i < MR; i++) pa[k * MR + i] = a[k * csa + i];
        } else if (m == MR) {
            for (int i = 0; i < MR; i++)
                for (int64_t k = 0; k < kc; k++) pa[k * MR + i] = a[i * rsa + k * csa];
        } else {
            for (int64_t k = 0; k < kc; k++) {
                for (int64_t i = 0; i < m; i++) pa[k * MR + i] = a[i * rsa + k * csa];
                for (int64_t i = m; i < MR; i++) pa[k * MR + i] = 0;
            }
        }
        pa += kc * MR;
    }
}

/* Packs rows [0, kc) x cols [0, nc) of B into strips of NR columns: strip s holds (k, j) at
 * s*kc*NR + k*NR + j; columns past nc are zero. */
static void NEAT_FN(neat_pack_b_)(int64_t kc, int64_t nc, const T *B, int64_t rsb, int64_t csb,
                                  T *restrict pb)
{
    for (int64_t j0 = 0; j0 < nc; j0 += NR) {
        int64_t n = nc - j0 < NR ? nc - j0 : NR;
        const T *b = B + j0 * csb;
        if (n == NR && csb == 1) {
            for (int64_t k = 0; k < kc; k++)
                for (int j = 0; j < NR; j++) pb[k * NR + j] = b[k * rsb + j];
        } else if (n == NR && rsb == 1) {
            /* column-major source (a transposed view): transpose in short k runs so that both
             * the column reads and the strip writes stay within a few cache lines */
            int64_t k0 = 0;
            for (; k0 + 16 <= kc; k0 += 16)
                for (int j = 0; j < NR; j++)
                    for (int kk = 0; kk < 16; kk++)
                        pb[(k0 + kk) * NR + j] = b[k0 + kk + j * csb];
            for (int j = 0; j < NR; j++)
                for (int64_t k = k0; k < kc; k++) pb[k * NR + j] = b[k + j * csb];
        } else if (n == NR) {
            for (int j = 0; j < NR; j++)
                for (int64_t k = 0; k < kc; k++) pb[k * NR + j] = b[k * rsb + j * csb];
        } else {
            for (int64_t k = 0; k < kc; k++) {
                for (int64_t j = 0; j < n; j++) pb[k * NR + j] = b[k * rsb + j * csb];
                for (int64_t j = n; j < NR; j++) pb[k * NR + j] = 0;
            }
        }
        pb += kc * NR;
    }
}

/*
 * The register micro-kernel: an MR x NR accumulator over kc steps of packed strips, then
 * C[0:m, 0:n] = alpha * acc + beta * C. The inner loops have compile-time trip counts so gcc
 * keeps acc in vector registers and emits broadcast + FMA (needs -ffp-contract=fast).
 */
static void NEAT_FN(neat_kernel_)(int64_t kc, const T *restrict a, const T *restrict b,
                                  T *restrict C, int64_t rsc, int64_t csc, int64_t m, int64_t n,
                                  T alpha, T beta)
{
    T acc[MR][NR];
    for (int i = 0; i < MR; i++)
        for (int j = 0; j < NR; j++) acc[i][j] = 0;
    for (int64_t k = 0; k < kc; k++) {
        for (int i = 0; i < MR; i++) {
            T ai = a[k * MR + i];
            for (int j = 0; j < NR; j++) acc[i][j] += ai * b[k * NR + j];
        }
    }
    if (m == MR && n == NR && csc == 1) {
        if (beta == 0) {
            for (int i = 0; i < MR; i++)
                for (int j = 0; j < NR; j++) C[i * rsc + j] = alpha * acc[i][j];
        } else {
            for (int i = 0; i < MR; i++)
                for (int j = 0; j < NR; j++)
                    C[i * rsc + j] = alpha * acc[i][j] + beta * C[i * rsc + j];
        }
        return;
    }
    for (int64_t i = 0; i < m; i++) {
        for (int64_t j = 0; j < n; j++) {
            T *c = &C[i * rsc + j * csc];
            *c = beta == 0 ? alpha * acc[i][j] : alpha * acc[i][j] + beta * *c;
        }
    }
}

typedef struct NEAT_FN(neat_gemm_job_) {
    int64_t M, N, K;
    T alpha, beta;
    const T *A;
    int64_t rsa, csa;
    const T *B;
    int64_t rsb, csb;
    T *C;
    int64_t rsc, csc;
    neat_gemm_plan plan;
    char *scratch;
    int32_t lanes;
} NEAT_FN(neat_gemm_job_);

static void NEAT_FN(neat_gemm_tile_)(const NEAT_FN(neat_gemm_job_) *job, int64_t tile, T *pa,
                                     T *pb)
{
    const neat_gemm_plan *p = &job->plan;
    int64_t ic = (tile % p->mblocks) * p->mc;
    int64_t jc = (tile / p->mblocks) * p->nc;
    int64_t mc = job->M - ic < p->mc ? job->M - ic : p->mc;
    int64_t nc = job->N - jc < p->nc ? job->N - jc : p->nc;
    for (int64_t pc = 0; pc < job->K; pc += p->kc) {
        int64_t kc = job->K - pc < p->kc ? job->K - pc : p->kc;
        /* later K slices accumulate onto what the first one wrote */
        T beta = pc == 0 ? job->beta : (T)1;
        NEAT_FN(neat_pack_a_)(mc, kc, job->A + ic * job->rsa + pc * job->csa, job->rsa,
                              job->csa, pa);
        NEAT_FN(neat_pack_b_)(kc, nc, job->B + pc * job->rsb + jc * job->csb, job->rsb,
                              job->csb, pb);
        for (int64_t jr = 0; jr < nc; jr += NR) {
            int64_t n = nc - jr < NR ? nc - jr : NR;
            for (int64_t ir = 0; ir < mc; ir += MR) {
                int64_t m = mc - ir < MR ? mc - ir : MR;
                T *c = job->C + (ic + ir) * job->rsc + (jc + jr) * job->csc;
                NEAT_FN(neat_kernel_)(kc, pa + ir * kc, pb + jr * kc, c, job->rsc, job->csc, m,
                                      n, job->alpha, beta);
            }
        }
    }
}

static void NEAT_FN(neat_gemm_lanes_)(int64_t begin, int64_t end, void *ctx)
{
    const NEAT_FN(neat_gemm_job_) *job = ctx;
    for (int64_t lane = begin; lane < end; lane++) {
        char *base = job->scratch + (size_t)lane * job->plan.lane_bytes;
        T *pa = (T *)base;
        T *pb = (T *)(base + job->plan.pa_bytes);
        for (int64_t t = lane; t < job->plan.tiles; t += job->lanes)
            NEAT_FN(neat_gemm_tile_)(job, t, pa, pb);
    }
}

void NEAT_FN(neat_gemm_)(int64_t M, int64_t N, int64_t K, T alpha, const T *A, int64_t rsa,
                         int64_t csa, const T *B, int64_t rsb, int64_t csb, T beta, T *C,
                         int64_t rsc, int64_t csc, void *scratch, const neat_exec *exec)
{
    if (M <= 0 || N <= 0)
        return;
    if (K <= 0) {
        for (int64_t i = 0; i < M; i++)
            for (int64_t j = 0; j < N; j++) {
                T *c = &C[i * rsc + j * csc];
                *c = beta == 0 ? (T)0 : beta * *c;
            }
        return;
    }
    NEAT_FN(neat_gemm_job_) job;
    job.plan = neat_gemm_make_plan(M, N, K, MR, NR, MC, KC, NC, sizeof(T));
    if (job.plan.swap) {
        /* a skinny N would waste most of each NR-wide tile: compute C^T = B^T A^T instead */
        int64_t t;
        t = M, M = N, N = t;
        const T *tp = A;
        A = B, B = tp;
        t = rsa, rsa = csb, csb = t;
        t = csa, csa = rsb, rsb = t;
        t = rsc, rsc = csc, csc = t;
    }
    job.M = M, job.N = N, job.K = K;
    job.alpha = alpha, job.beta = beta;
    job.A = A, job.rsa = rsa, job.csa = csa;
    job.B = B, job.rsb = rsb, job.csb = csb;
    job.C = C, job.rsc = rsc, job.csc = csc;
    job.scratch = neat_align_ptr(scratch);
    int32_t lanes = neat_exec_lanes(exec);
    if (lanes > job.plan.tiles)
        lanes = (int32_t)job.plan.tiles;
    job.lanes = lanes;
    if (lanes > 1 && exec->parallel_for)
        exec->parallel_for(0, lanes, 1, NEAT_FN(neat_gemm_lanes_), &job, exec->parallel_user);
    else
        NEAT_FN(neat_gemm_lanes_)(0, lanes, &job);
}

#undef NEAT_FN
#undef NEAT_CAT
#undef NEAT_CAT_
