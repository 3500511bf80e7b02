/*
 * qgemm.c - x W^T and dy W over panels of a quantized W (see qgemm.h).
 */
#include "qgemm.h"

#include "quant.h"
#include "workspace.h"

typedef struct neat_qplan {
    int64_t nout, K; /* C's columns; the sum's length */
    int64_t po, pk;  /* a panel: po output columns by pk of K */
    int64_t no, nk;  /* panels along each */
} neat_qplan;

static int64_t neat_qcdiv(int64_t a, int64_t b)
{
    return (a + b - 1) / b;
}

static neat_qplan neat_qplan_of(neat_dtype dtype, const neat_qweight *q, int trans)
{
    neat_qplan p;
    p.nout = trans ? q->d_out : q->d_in;
    p.K = trans ? q->d_in : q->d_out;
    int64_t kc = neat_gemm_k_slice(dtype);
    p.pk = p.K < kc ? p.K : kc;
    p.nk = neat_qcdiv(p.K, p.pk);
    /* as wide as the budget allows (the GEMM packs A once per panel: its cost against the
     * multiply-adds falls as 1 / po), then evened out so the last panel is not a sliver, on a
     * multiple of 32 columns (the float32 register tile) */
    int64_t es = dtype == NEAT_FLOAT64 ? (int64_t)sizeof(double) : (int64_t)sizeof(float);
    int64_t pmax = NEAT_QPANEL_BYTES / es / p.pk;
    pmax = pmax < 32 ? 32 : pmax;
    p.no = neat_qcdiv(p.nout, pmax);
    p.po = neat_qcdiv(neat_qcdiv(p.nout, p.no), 32) * 32;
    if (p.po > p.nout)
        p.po = p.nout;
    p.no = neat_qcdiv(p.nout, p.po);
    return p;
}

size_t neat_qgemm_scratch_bytes(neat_dtype dtype, const neat_qweight *q, int trans, int64_t M,
                                int64_t K2, int32_t lanes)
{
    neat_qplan p = neat_qplan_of(dtype, q, trans);
    size_t es = dtype == NEAT_FLOAT64 ? sizeof(double) : sizeof(float);
    const int64_t widths[2] = {p.po, p.nout - (p.no - 1) * p.po};
    const int64_t depths[2] = {p.pk, p.K - (p.nk - 1) * p.pk};
    size_t gemm = 0;
    for (int a = 0; a < 2; a++)
        for (int b = 0; b < 2; b++) {
            gemm = neat_size_max(gemm, neat_gemm_scratch_bytes_mnk(dtype, M, widths[a],
                                                                   depths[b], lanes));
            gemm = neat_size_max(gemm, neat_gemm_ex_scratch_bytes(dtype, M, widths[a],
                                                                  depths[b], K2, lanes));
        }
    neat_carver c = neat_carver_begin(NULL);
    neat_carve(&c, (size_t)(p.po * p.pk) * es);
    neat_carve(&c, gemm);
    return c.used;
}

void neat_qgemm(neat_dtype dtype, const neat_qweight *q, int trans, int64_t M, const void *A,
                int64_t rsa, int64_t csa, void *C, int64_t rsc, int64_t csc,
                const neat_gemm_extra *ex, void *scratch, const neat_exec *exec)
{
    if (M <= 0) /* C has no elements: nothing to dequantize for */
        return;
    neat_qplan p = neat_qplan_of(dtype, q, trans);
    size_t es = dtype == NEAT_FLOAT64 ? sizeof(double) : sizeof(float);
    neat_carver c = neat_carver_begin(scratch);
    void *panel = neat_carve(&c, (size_t)(p.po * p.pk) * es);
    void *gemm = neat_carve(&c, 0);
    int64_t K2 = ex ? ex->K2 : 0;
    for (int64_t jp = 0; jp < p.no; jp++) {
        int64_t j0 = jp * p.po, pw = p.nout - j0 < p.po ? p.nout - j0 : p.po;
        for (int64_t kp = 0; kp < p.nk; kp++) {
            int64_t k0 = kp * p.pk, kw = p.K - k0 < p.pk ? p.K - k0 : p.pk;
            /* the panel is op(W)[k0 : k0 + kw, j0 : j0 + pw] as the GEMM's B */
            int64_t rsb, csb;
            if (trans) { /* W[j0.., k0..] stored (pw, kw) row-major: B = its transpose */
                neat_dequant_panel_par(q, dtype, j0, pw, k0, kw, panel, p.pk, exec);
                rsb = 1, csb = p.pk;
            } else { /* W[k0.., j0..] stored (kw, pw) row-major: B itself */
                neat_dequant_panel_par(q, dtype, k0, kw, j0, pw, panel, p.po, exec);
                rsb = p.po, csb = 1;
            }
            neat_gemm_extra e = {0, 0.0, NULL, 0, 0, NULL, 0, 0, NULL, 0, 0};
            if (ex && kp == 0 && ex->D)
                e.D = (const char *)ex->D + (size_t)(j0 * ex->csd) * es, e.rsd = ex->rsd,
                e.csd = ex->csd;
            if (ex && kp == p.nk - 1 && K2 > 0) {
                e.K2 = K2, e.alpha2 = ex->alpha2;
                e.A2 = ex->A2, e.rsa2 = ex->rsa2, e.csa2 = ex->csa2;
                e.B2 = (const char *)ex->B2 + (size_t)(j0 * ex->csb2) * es;
                e.rsb2 = ex->rsb2, e.csb2 = ex->csb2;
            }
            neat_gemm_ex(dtype, M, pw, kw, 1.0, (const char *)A + (size_t)(k0 * csa) * es, rsa,
                         csa, panel, rsb, csb, kp ? 1.0 : 0.0,
                         (char *)C + (size_t)(j0 * csc) * es, rsc, csc,
                         e.K2 > 0 || e.D ? &e : NULL, gemm, exec);
        }
    }
}
