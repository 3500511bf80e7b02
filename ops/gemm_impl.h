/*
 * gemm_impl.h - the blocked GEMM written once, included by gemm.c for each element type with
 * T (element type), SFX (name suffix), MR, NR (register tile), MC (largest tile height), KC, NC
 * (blocks) defined.
 *
 * Loop structure: the output is cut into tiles (gemm.c's plan), each owned by one lane. For each
 * KC slice of K a tile packs its tm x kc block of A once (MR-row strips); then, for each NC-wide
 * block of its columns, the kc x nc block of B (NR-column strips, kept in L2); then walks the MR
 * strips of A (each held in L1 across the inner loop) against the NR strips of B with the
 * register micro-kernel. Packing each operand once per tile (rather than once per MC x NC
 * block) is what keeps the pack cost, mostly memory latency, off the critical path.
 * A fused second term (gemm.h, neat_gemm_extra) rides along: alpha2 * A2 and B2 are packed as
 * K2 extra rows of the last slice's strips (strip length kt = kc + K2), and D is added in the
 * first slice's store.
 */
#define NEAT_CAT_(a, b) a##b
#define NEAT_CAT(a, b) NEAT_CAT_(a, b)
#define NEAT_FN(name) NEAT_CAT(name, SFX)
#define PK (64 / (int)sizeof(T)) /* elements per cache line */

/* A's mc x kc block into MR-row strips of kt >= kc rows each (rows kc.. are left to the caller) */
static void NEAT_FN(neat_pack_a_)(int64_t mc, int64_t kc, const T *A, int64_t rsa, int64_t csa,
                                  T *restrict pa, int64_t kt)
{
    for (int64_t i0 = 0; i0 < mc; i0 += MR) {
        int64_t m = mc - i0 < MR ? mc - i0 : MR;
        const T *a = A + i0 * rsa;
        if (m == MR && rsa == 1) {
            for (int64_t k = 0; k < kc; k++)
                for (int i = 0; i < MR; i++) pa[k * MR + i] = a[k * csa + i];
        } else if (m == MR && csa == 1) {
            /* row-major source: a cache line of every row per step, so the MR row streams
             * load in parallel */
            int64_t k0 = 0;
            for (; k0 + PK <= kc; k0 += PK)
                for (int i = 0; i < MR; i++)
                    for (int kk = 0; kk < PK; kk++) pa[(k0 + kk) * MR + i] = a[i * rsa + k0 + kk];
            for (int64_t k = k0; k < kc; k++)
                for (int i = 0; i < MR; i++) pa[k * MR + i] = a[i * rsa + k];
        } else if (m == MR) {
            for (int i = 0; i < MR; i++)
                for (int64_t k = 0; k < kc; k++) pa[k * MR + i] = a[i * rsa + k * csa];
        } else {
            for (int64_t k = 0; k < kc; k++) {
                for (int64_t i = 0; i < m; i++) pa[k * MR + i] = a[i * rsa + k * csa];
                for (int64_t i = m; i < MR; i++) pa[k * MR + i] = 0;
            }
        }
        pa += kt * MR;
    }
}

/* B's kc x nc block into NR-column strips of kt >= kc rows each */
static void NEAT_FN(neat_pack_b_)(int64_t kc, int64_t nc, const T *B, int64_t rsb, int64_t csb,
                                  T *restrict pb, int64_t kt)
{
    int64_t full = nc / NR * NR;
    if (csb == 1 && full > 0) {
        /* row-major source: sweep whole rows so that reads stream */
        for (int64_t k = 0; k < kc; k++) {
            const T *b = B + k * rsb;
            T *d = pb + k * NR;
            for (int64_t j0 = 0; j0 < full; j0 += NR, d += kt * NR)
                for (int j = 0; j < NR; j++) d[j] = b[j0 + j];
        }
    } else if (rsb == 1 && full > 0) {
        /* column-major source (a transposed view): PK x NR transposes, a cache line of
         * each of NR columns per step */
        for (int64_t j0 = 0; j0 < full; j0 += NR) {
            const T *b = B + j0 * csb;
            T *d = pb + j0 * kt;
            int64_t k0 = 0;
            for (; k0 + PK <= kc; k0 += PK)
                for (int j = 0; j < NR; j++)
                    for (int kk = 0; kk < PK; kk++) d[(k0 + kk) * NR + j] = b[k0 + kk + j * csb];
            for (int j = 0; j < NR; j++)
                for (int64_t k = k0; k < kc; k++) d[k * NR + j] = b[k + j * csb];
        }
    } else {
        full = 0;
    }
    for (int64_t j0 = full; j0 < nc; j0 += NR) {
        int64_t n = nc - j0 < NR ? nc - j0 : NR;
        const T *b = B + j0 * csb;
        T *d = pb + j0 * kt;
        if (n == NR) {
            for (int j = 0; j < NR; j++)
                for (int64_t k = 0; k < kc; k++) d[k * NR + j] = b[k * rsb + j * csb];
        } else {
            for (int64_t k = 0; k < kc; k++) {
                for (int64_t j = 0; j < n; j++) d[k * NR + j] = b[k * rsb + j * csb];
                for (int64_t j = n; j < NR; j++) d[k * NR + j] = 0;
            }
        }
    }
}

/* alpha2 * A2 (mc x k2) into rows [kc, kc + k2) of the MR-row strips (kt rows each) */
static void NEAT_FN(neat_pack_a2_)(int64_t mc, int64_t k2, T alpha2, const T *A, int64_t rsa,
                                   int64_t csa, T *restrict pa, int64_t kc, int64_t kt)
{
    for (int64_t i0 = 0; i0 < mc; i0 += MR) {
        int64_t m = mc - i0 < MR ? mc - i0 : MR;
        T *d = pa + i0 * kt + kc * MR;
        for (int64_t k = 0; k < k2; k++)
            for (int64_t i = 0; i < MR; i++)
                d[k * MR + i] = i < m ? alpha2 * A[(i0 + i) * rsa + k * csa] : (T)0;
    }
}

/* B2 (k2 x nc) into rows [kc, kc + k2) of the NR-column strips (kt rows each) */
static void NEAT_FN(neat_pack_b2_)(int64_t k2, int64_t nc, const T *B, int64_t rsb, int64_t csb,
                                   T *restrict pb, int64_t kc, int64_t kt)
{
    for (int64_t j0 = 0; j0 < nc; j0 += NR) {
        int64_t n = nc - j0 < NR ? nc - j0 : NR;
        T *d = pb + j0 * kt + kc * NR;
        for (int64_t k = 0; k < k2; k++)
            for (int64_t j = 0; j < NR; j++)
                d[k * NR + j] = j < n ? B[k * rsb + (j0 + j) * csb] : (T)0;
    }
}

/*
 * One MR x NR micro-tile: acc = a b over kc rows; with k2 > 0 acc = alpha * acc, then k2 more
 * rows (alpha2 * A2 and B2, packed after the kc) are added to it. Stores
 * C = alpha' * acc + beta * C + D (alpha' = alpha, or 1 after the scaling; beta == 0 never reads
 * C; D == NULL: none).
 */
static void NEAT_FN(neat_kernel_)(int64_t kc, int64_t k2, const T *restrict a,
                                  const T *restrict b, T *restrict C, int64_t rsc, int64_t csc,
                                  int64_t m, int64_t n, T alpha, T beta, const T *restrict D,
                                  int64_t rsd, int64_t csd)
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
    if (k2 > 0) {
        for (int i = 0; i < MR; i++)
            for (int j = 0; j < NR; j++) acc[i][j] *= alpha;
        for (int64_t k = kc; k < kc + k2; k++) {
            for (int i = 0; i < MR; i++) {
                T ai = a[k * MR + i];
                for (int j = 0; j < NR; j++) acc[i][j] += ai * b[k * NR + j];
            }
        }
        alpha = 1;
    }
    if (m == MR && n == NR && csc == 1 && (!D || csd == 1)) {
        if (D) {
            if (beta == 0) {
                for (int i = 0; i < MR; i++)
                    for (int j = 0; j < NR; j++)
                        C[i * rsc + j] = alpha * acc[i][j] + D[i * rsd + j];
            } else {
                for (int i = 0; i < MR; i++)
                    for (int j = 0; j < NR; j++)
                        C[i * rsc + j] = alpha * acc[i][j] + beta * C[i * rsc + j] +
                                         D[i * rsd + j];
            }
        } else if (beta == 0) {
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
            if (D)
                *c = beta == 0 ? alpha * acc[i][j] + D[i * rsd + j * csd]
                               : alpha * acc[i][j] + beta * *c + D[i * rsd + j * csd];
            else
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
    int64_t K2; /* the fused second term, alpha2 * A2 B2, and D (gemm.h) */
    T alpha2;
    const T *A2;
    int64_t rsa2, csa2;
    const T *B2;
    int64_t rsb2, csb2;
    const T *D;
    int64_t rsd, csd;
    neat_gemm_plan plan;
    char *scratch;
    int32_t lanes;
} NEAT_FN(neat_gemm_job_);

static void NEAT_FN(neat_gemm_tile_)(const NEAT_FN(neat_gemm_job_) *job, int64_t tile, T *pa,
                                     T *pb)
{
    const neat_gemm_plan *p = &job->plan;
    int64_t ic = (tile % p->mtiles) * p->tm;
    int64_t jt = (tile / p->mtiles) * p->tn;
    int64_t mc = job->M - ic < p->tm ? job->M - ic : p->tm;
    int64_t tn = job->N - jt < p->tn ? job->N - jt : p->tn;
    for (int64_t pc = 0; pc < job->K; pc += p->kc) {
        int64_t kc = job->K - pc < p->kc ? job->K - pc : p->kc;
        int64_t k2 = pc + kc == job->K ? job->K2 : 0; /* the second term rides on the last slice */
        int64_t kt = kc + k2;
        T beta = pc == 0 ? job->beta : (T)1;
        const T *D = pc == 0 ? job->D : NULL; /* D on the first */
        NEAT_FN(neat_pack_a_)(mc, kc, job->A + ic * job->rsa + pc * job->csa, job->rsa,
                              job->csa, pa, kt);
        if (k2)
            NEAT_FN(neat_pack_a2_)(mc, k2, job->alpha2, job->A2 + ic * job->rsa2, job->rsa2,
                                   job->csa2, pa, kc, kt);
        for (int64_t jc = jt; jc < jt + tn; jc += p->nc) {
            int64_t nc = jt + tn - jc < p->nc ? jt + tn - jc : p->nc;
            NEAT_FN(neat_pack_b_)(kc, nc, job->B + pc * job->rsb + jc * job->csb, job->rsb,
                                  job->csb, pb, kt);
            if (k2)
                NEAT_FN(neat_pack_b2_)(k2, nc, job->B2 + jc * job->csb2, job->rsb2, job->csb2,
                                       pb, kc, kt);
            /* an MR x kt strip of A stays in L1 while NR-wide strips of B stream from L2 */
            for (int64_t ir = 0; ir < mc; ir += MR) {
                int64_t m = mc - ir < MR ? mc - ir : MR;
                for (int64_t jr = 0; jr < nc; jr += NR) {
                    int64_t n = nc - jr < NR ? nc - jr : NR;
                    T *c = job->C + (ic + ir) * job->rsc + (jc + jr) * job->csc;
                    const T *d = D ? D + (ic + ir) * job->rsd + (jc + jr) * job->csd : NULL;
                    NEAT_FN(neat_kernel_)(kc, k2, pa + ir * kt, pb + jr * kt, c, job->rsc,
                                          job->csc, m, n, job->alpha, beta, d, job->rsd,
                                          job->csd);
                }
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


/*
 * Skinny paths. A GEMM with one output dimension <= 16 moves far more data than it computes;
 * the packed path would pack a large operand to use it a few times. Two kernels read the large
 * operand in place instead:
 *   dot:    N <= 16, rows of A contiguous (csa == 1): each C element is a dot product of an A
 *           row and a column of B over a K slice of DK; each lane copies the slice of B's
 *           columns, transposed, into its scratch; PK-wide partial sums then a fixed pairwise
 *           reduction, and slices after the first are added to C.
 *   direct: M <= 16, rows of B contiguous (csb == 1): per K slice of XK, each lane packs A's
 *           slice (XR rows per k) into its scratch and broadcasts it against XN-wide strips of
 *           B rows read in place; an incomplete last strip is copied to zero-padded lane
 *           scratch first.
 * Scratch is per lane and bounded by the slice, never by K: a huge K (an expanded operand of
 * billions of rows) must not ask for a workspace of its size. Both run K in one fixed order
 * and split rows (dot) or strips (direct) over lanes in units whose borders do not depend on
 * the lane count, so results stay bit-identical.
 */
#define DG 3        /* dot: rows per group */
#define DJ 8        /* dot: columns per chunk (B^T is zero-padded to whole chunks) */
#define DK 4096     /* dot: K slice (a lane's B^T slice, DJ * 2 chunks of it, stays in L2) */
#define XR 8        /* direct: rows per group (A is zero-padded to whole groups) */
#define XK 256      /* direct: K slice */
#define XPF 16      /* direct: prefetch distance in rows of B */
#define XN (sizeof(T) == 8 ? 3 * PK : 2 * PK) /* direct: strip width (f64: 16 makes gcc permute) */

/*
 * One lane's skinny scratch for an M x N x K problem on path kind; *tail_off is where the
 * direct path's strip buffer starts inside it. The size query and the kernels both call this,
 * so the bytes reserved and the bytes carved cannot disagree.
 */
static size_t NEAT_FN(neat_skinny_lane_bytes_)(int kind, int64_t M, int64_t N, int64_t K,
                                               size_t *tail_off)
{
    if (kind == NEAT_SKINNY_DOT) {
        int64_t kc = K < DK ? K : DK;
        *tail_off = 0;
        return neat_align_up((size_t)(neat_cdiv(N, DJ) * DJ * kc) * sizeof(T));
    }
    int64_t kc = K < XK ? K : XK;
    size_t pa = neat_align_up((size_t)(neat_cdiv(M, XR) * XR * kc) * sizeof(T));
    *tail_off = pa;
    return pa + neat_align_up((size_t)(kc * (int64_t)XN) * sizeof(T));
}

/* Scratch any skinny path may take for M x N x K (strides unknown: every path that the
 * dimensions allow, in both orientations), with up to `lanes` lanes. */
static size_t NEAT_FN(neat_skinny_scratch_bytes_)(int64_t M, int64_t N, int64_t K, int32_t lanes)
{
    size_t off, lane = 0, b;
    if (M <= NEAT_SKINNY && (b = NEAT_FN(neat_skinny_lane_bytes_)(NEAT_SKINNY_DIRECT, M, N, K,
                                                                  &off)) > lane)
        lane = b;
    if (N <= NEAT_SKINNY && (b = NEAT_FN(neat_skinny_lane_bytes_)(NEAT_SKINNY_DIRECT, N, M, K,
                                                                  &off)) > lane)
        lane = b;
    if (N <= NEAT_SKINNY && (b = NEAT_FN(neat_skinny_lane_bytes_)(NEAT_SKINNY_DOT, M, N, K,
                                                                  &off)) > lane)
        lane = b;
    if (M <= NEAT_SKINNY && (b = NEAT_FN(neat_skinny_lane_bytes_)(NEAT_SKINNY_DOT, N, M, K,
                                                                  &off)) > lane)
        lane = b;
    return (size_t)(lanes > 1 ? lanes : 1) * lane;
}

typedef struct NEAT_FN(neat_skinny_job_) {
    int64_t M, N, K;
    T alpha, beta;
    const T *A;
    int64_t rsa, csa;
    const T *B;
    int64_t rsb, csb;
    T *C;
    int64_t rsc, csc;
    char *lane_base;  /* lane l's scratch starts at lane_base + l * lane_bytes */
    size_t lane_bytes, tail_off;
    int64_t units;    /* dot: row groups; direct: strips */
    int32_t lanes;
} NEAT_FN(neat_skinny_job_);

static void NEAT_FN(neat_store_)(T *C, int64_t rsc, int64_t csc, int64_t i, int64_t j, T v,
                                 T alpha, T beta)
{
    T *c = &C[i * rsc + j * csc];
    *c = beta == 0 ? alpha * v : alpha * v + beta * *c;
}

/* Dot products over the slice [k0, k0 + kc) of RG A rows with the DJ columns of one chunk of
 * the slice's B^T (bt, kc elements per column); stores n <= DJ columns. */
#define NEAT_DOT_GROUP(RG)                                                                     \
    static void NEAT_FN(NEAT_CAT(neat_dot_, RG))(const NEAT_FN(neat_skinny_job_) * job,       \
                                                 const T *restrict bt, int64_t k0, int64_t kc, \
                                                 int64_t i0, int64_t j0, T beta)               \
    {                                                                                          \
        int64_t kv = kc / PK * PK, rsa = job->rsa;                                             \
        const T *restrict a = job->A + i0 * rsa + k0;                                          \
        bt += j0 * kc;                                                                         \
        T acc[RG][DJ][PK];                                                                     \
        for (int i = 0; i < RG; i++)                                                           \
            for (int j = 0; j < DJ; j++)                                                       \
                for (int l = 0; l < PK; l++) acc[i][j][l] = 0;                                 \
        for (int64_t k = 0; k < kv; k += PK)                                                   \
            for (int i = 0; i < RG; i++)                                                       \
                for (int j = 0; j < DJ; j++)                                                   \
                    for (int l = 0; l < PK; l++)                                               \
                        acc[i][j][l] += a[i * rsa + k + l] * bt[j * kc + k + l];               \
        int64_t n = job->N - j0 < DJ ? job->N - j0 : DJ;                                       \
        for (int i = 0; i < RG; i++)                                                           \
            for (int64_t j = 0; j < n; j++) {                                                  \
                T *v = acc[i][j];                                                              \
                for (int w = PK / 2; w >= 1; w /= 2)                                           \
                    for (int l = 0; l < w; l++) v[l] += v[l + w];                              \
                T sum = v[0];                                                                  \
                for (int64_t k = kv; k < kc; k++) sum += a[i * rsa + k] * bt[j * kc + k];      \
                NEAT_FN(neat_store_)(job->C, job->rsc, job->csc, i0 + i, j0 + j, sum,          \
                                     job->alpha, beta);                                        \
            }                                                                                  \
    }
NEAT_DOT_GROUP(DG)
NEAT_DOT_GROUP(1)
#undef NEAT_DOT_GROUP

static void NEAT_FN(neat_dot_lanes_)(int64_t begin, int64_t end, void *ctx)
{
    const NEAT_FN(neat_skinny_job_) *job = ctx;
    int64_t cols = neat_cdiv(job->N, DJ) * DJ;
    for (int64_t lane = begin; lane < end; lane++) {
        T *bt = (T *)(job->lane_base + (size_t)lane * job->lane_bytes);
        int64_t g0 = lane * job->units / job->lanes, g1 = (lane + 1) * job->units / job->lanes;
        if (g0 >= g1)
            continue;
        for (int64_t k0 = 0; k0 < job->K; k0 += DK) {
            int64_t kc = job->K - k0 < DK ? job->K - k0 : DK;
            T beta = k0 == 0 ? job->beta : (T)1;
            for (int64_t c = 0; c < cols; c++)
                for (int64_t k = 0; k < kc; k++)
                    bt[c * kc + k] = c < job->N ? job->B[(k0 + k) * job->rsb + c * job->csb]
                                                : (T)0;
            for (int64_t g = g0; g < g1; g++) {
                int64_t i0 = g * DG, rows = job->M - i0 < DG ? job->M - i0 : DG;
                for (int64_t j0 = 0; j0 < job->N; j0 += DJ) {
                    if (rows == DG)
                        NEAT_FN(NEAT_CAT(neat_dot_, DG))(job, bt, k0, kc, i0, j0, beta);
                    else
                        for (int64_t i = i0; i < i0 + rows; i++)
                            NEAT_FN(neat_dot_1)(job, bt, k0, kc, i, j0, beta);
                }
            }
        }
    }
}

/* One XN-wide strip of C rows [i0, i0 + XR), over a K slice of kc rows, from the slice's
 * packed A group pa and B rows b (row stride rsb); C = alpha * acc + beta * C. */
static void NEAT_FN(neat_direct_strip_)(const NEAT_FN(neat_skinny_job_) *job,
                                        const T *restrict pa, int64_t i0, int64_t j0,
                                        int64_t kc, const T *restrict b, int64_t rsb, int64_t n,
                                        T beta)
{
    T acc[XR][sizeof(T) == 8 ? 3 * PK : 2 * PK];
    for (int i = 0; i < XR; i++)
        for (int j = 0; j < XN; j++) acc[i][j] = 0;
    for (int64_t k = 0; k < kc; k++) {
        /* B's rows are far apart (often a page each): fetch ahead of the hardware */
        for (int j = 0; j < XN; j += PK) __builtin_prefetch(b + (k + XPF) * rsb + j, 0, 3);
        for (int i = 0; i < XR; i++) {
            T ai = pa[k * XR + i];
            for (int j = 0; j < XN; j++) acc[i][j] += ai * b[k * rsb + j];
        }
    }
    int64_t m = job->M - i0 < XR ? job->M - i0 : XR;
    for (int64_t i = 0; i < m; i++)
        for (int64_t j = 0; j < n; j++)
            NEAT_FN(neat_store_)(job->C, job->rsc, job->csc, i0 + i, j0 + j, acc[i][j],
                                 job->alpha, beta);
}

static void NEAT_FN(neat_direct_lanes_)(int64_t begin, int64_t end, void *ctx)
{
    const NEAT_FN(neat_skinny_job_) *job = ctx;
    int64_t ng = neat_cdiv(job->M, XR);
    for (int64_t lane = begin; lane < end; lane++) {
        char *base = job->lane_base + (size_t)lane * job->lane_bytes;
        T *pa = (T *)base, *tail = (T *)(base + job->tail_off);
        int64_t s0 = lane * job->units / job->lanes, s1 = (lane + 1) * job->units / job->lanes;
        if (s0 >= s1)
            continue;
        /* K in slices of XK rows, so that a slice of B's rows stays within the TLB's reach */
        for (int64_t k0 = 0; k0 < job->K; k0 += XK) {
            int64_t kc = job->K - k0 < XK ? job->K - k0 : XK;
            T beta = k0 == 0 ? job->beta : (T)1;
            for (int64_t g = 0; g < ng; g++)
                for (int64_t k = 0; k < kc; k++)
                    for (int i = 0; i < XR; i++) {
                        int64_t r = g * XR + i;
                        pa[(g * kc + k) * XR + i] =
                            r < job->M ? job->A[r * job->rsa + (k0 + k) * job->csa] : (T)0;
                    }
            for (int64_t s = s0; s < s1; s++) {
                int64_t j0 = s * XN, n = job->N - j0 < XN ? job->N - j0 : XN;
                const T *b = job->B + k0 * job->rsb + j0;
                int64_t rsb = job->rsb;
                if (n < XN) {
                    for (int64_t k = 0; k < kc; k++)
                        for (int64_t j = 0; j < XN; j++)
                            tail[k * XN + j] = j < n ? b[k * rsb + j] : (T)0;
                    b = tail, rsb = XN;
                }
                for (int64_t g = 0; g < ng; g++)
                    NEAT_FN(neat_direct_strip_)(job, pa + g * kc * XR, g * XR, j0, kc, b, rsb, n,
                                                beta);
            }
        }
    }
}

/* Runs a skinny path if one applies (kind from neat_gemm_skinny_kind); 0 if none does. */
static int NEAT_FN(neat_gemm_skinny_)(int64_t M, int64_t N, int64_t K, T alpha, const T *A,
                                      int64_t rsa, int64_t csa, const T *B, int64_t rsb,
                                      int64_t csb, T beta, T *C, int64_t rsc, int64_t csc,
                                      void *scratch, const neat_exec *exec)
{
    int kind = neat_gemm_skinny_kind(M, N, K, rsa, csa, rsb, csb);
    if (!kind)
        return 0;
    if (kind < 0) { /* the transposed problem C^T = B^T A^T */
        int64_t t;
        t = M, M = N, N = t;
        const T *tp = A;
        A = B, B = tp;
        t = rsa, rsa = csb, csb = t;
        t = csa, csa = rsb, rsb = t;
        t = rsc, rsc = csc, csc = t;
        kind = -kind;
    }
    NEAT_FN(neat_skinny_job_) job;
    job.M = M, job.N = N, job.K = K, job.alpha = alpha, job.beta = beta;
    job.A = A, job.rsa = rsa, job.csa = csa, job.B = B, job.rsb = rsb, job.csb = csb;
    job.C = C, job.rsc = rsc, job.csc = csc;
    job.lane_base = neat_align_ptr(scratch);
    job.lane_bytes = NEAT_FN(neat_skinny_lane_bytes_)(kind, M, N, K, &job.tail_off);
    neat_parallel_body body;
    if (kind == NEAT_SKINNY_DOT) {
        job.units = neat_cdiv(M, DG);
        body = NEAT_FN(neat_dot_lanes_);
    } else {
        job.units = neat_cdiv(N, XN);
        body = NEAT_FN(neat_direct_lanes_);
    }
    int32_t lanes = neat_exec_lanes(exec);
    /* lanes only pay off with enough work: about 4M multiply-adds (some 50 us) each */
    double work = (double)M * (double)N * (double)K / 4194304.0;
    int64_t want = work < 1e9 ? (int64_t)work : 1000000000;
    if (lanes > want)
        lanes = want > 1 ? (int32_t)want : 1;
    if (lanes > job.units)
        lanes = (int32_t)job.units;
    job.lanes = lanes;
    if (lanes > 1 && exec->parallel_for)
        exec->parallel_for(0, lanes, 1, body, &job, exec->parallel_user);
    else
        body(0, lanes, &job);
    return 1;
}

static void NEAT_FN(neat_gemm_ex_)(int64_t M, int64_t N, int64_t K, T alpha, const T *A,
                                   int64_t rsa, int64_t csa, const T *B, int64_t rsb,
                                   int64_t csb, T beta, T *C, int64_t rsc, int64_t csc,
                                   const neat_gemm_extra *ex, void *scratch,
                                   const neat_exec *exec)
{
    if (M <= 0 || N <= 0)
        return;
    int64_t K2 = ex && ex->K2 > 0 ? ex->K2 : 0;
    const T *D = ex ? (const T *)ex->D : NULL;
    int done = 0;
    if (K <= 0) {
        for (int64_t i = 0; i < M; i++)
            for (int64_t j = 0; j < N; j++) {
                T *c = &C[i * rsc + j * csc];
                *c = beta == 0 ? (T)0 : beta * *c;
            }
        done = 1;
    } else {
        done = NEAT_FN(neat_gemm_skinny_)(M, N, K, alpha, A, rsa, csa, B, rsb, csb, beta, C, rsc,
                                          csc, scratch, exec);
    }
    if (done) { /* no packed path to fuse into: the other terms one after the other */
        if (K2 > 0)
            NEAT_FN(neat_gemm_ex_)(M, N, K2, (T)ex->alpha2, (const T *)ex->A2, ex->rsa2,
                                   ex->csa2, (const T *)ex->B2, ex->rsb2, ex->csb2, 1, C, rsc,
                                   csc, NULL, scratch, exec);
        if (D)
            for (int64_t i = 0; i < M; i++)
                for (int64_t j = 0; j < N; j++)
                    C[i * rsc + j * csc] += D[i * ex->rsd + j * ex->csd];
        return;
    }
    NEAT_FN(neat_gemm_job_) job;
    int32_t lanes = neat_exec_lanes(exec);
    job.plan = neat_gemm_make_plan(M, N, K, K2, MR, NR, MC, KC, NC, sizeof(T), lanes);
    job.K2 = K2;
    job.alpha2 = K2 ? (T)ex->alpha2 : (T)0;
    job.A2 = K2 ? (const T *)ex->A2 : NULL, job.rsa2 = K2 ? ex->rsa2 : 0;
    job.csa2 = K2 ? ex->csa2 : 0;
    job.B2 = K2 ? (const T *)ex->B2 : NULL, job.rsb2 = K2 ? ex->rsb2 : 0;
    job.csb2 = K2 ? ex->csb2 : 0;
    job.D = D, job.rsd = D ? ex->rsd : 0, job.csd = D ? ex->csd : 0;
    if (job.plan.swap) {
        int64_t t;
        t = M, M = N, N = t;
        const T *tp = A;
        A = B, B = tp;
        t = rsa, rsa = csb, csb = t;
        t = csa, csa = rsb, rsb = t;
        t = rsc, rsc = csc, csc = t;
        tp = job.A2, job.A2 = job.B2, job.B2 = tp;
        t = job.rsa2, job.rsa2 = job.csb2, job.csb2 = t;
        t = job.csa2, job.csa2 = job.rsb2, job.rsb2 = t;
        t = job.rsd, job.rsd = job.csd, job.csd = t;
    }
    job.M = M, job.N = N, job.K = K;
    job.alpha = alpha, job.beta = beta;
    job.A = A, job.rsa = rsa, job.csa = csa;
    job.B = B, job.rsb = rsb, job.csb = csb;
    job.C = C, job.rsc = rsc, job.csc = csc;
    job.scratch = neat_align_ptr(scratch);
    if (lanes > job.plan.tiles)
        lanes = (int32_t)job.plan.tiles;
    job.lanes = lanes;
    if (lanes > 1 && exec->parallel_for)
        exec->parallel_for(0, lanes, 1, NEAT_FN(neat_gemm_lanes_), &job, exec->parallel_user);
    else
        NEAT_FN(neat_gemm_lanes_)(0, lanes, &job);
}

void NEAT_FN(neat_gemm_)(int64_t M, int64_t N, int64_t K, T alpha, const T *A, int64_t rsa,
                         int64_t csa, const T *B, int64_t rsb, int64_t csb, T beta, T *C,
                         int64_t rsc, int64_t csc, void *scratch, const neat_exec *exec)
{
    NEAT_FN(neat_gemm_ex_)(M, N, K, alpha, A, rsa, csa, B, rsb, csb, beta, C, rsc, csc, NULL,
                           scratch, exec);
}

#undef NEAT_FN
#undef PK
#undef DG
#undef DJ
#undef DK
#undef XR
#undef XN
#undef XK
#undef XPF
#undef NEAT_CAT
#undef NEAT_CAT_
