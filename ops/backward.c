/*
 * backward.c - CPU backward (docs/design.md §1.2), each gradient computed only when requested:
 *   dU = s dy B                                   (N, r)
 *   stack backward per column block (gstack.c):   G, dA, dH, A^T dZ_0
 *   dB = s dy^T U,  U = x G^T
 *   linear:  dx = dy W + dU G,  dweight = dy^T x + A^T dZ_0,  dbias = sum_n dy
 *   adapter: dx = dU G,         dweight = A^T dZ_0
 * With a quantized W (qw != NULL, quant.h) dweight is never requested (validation refuses it),
 * the shared code runs on a data-less view of W's shape, and dy W goes over panels of W
 * (qgemm.h).
 */
#include "backend.h"
#include "gemm.h"
#include "gstack.h"
#include "matrix.h"
#include "qgemm.h"
#include "quant.h"
#include "workspace.h"

typedef struct neat_bwd_plan {
    int want_dx, want_dw, want_db, want_dA, want_dB, want_dH;
    int stack_backward; /* dA, dH or dweight need dZ_0 and the stack's backward */
    int need_dU;
    const neat_tensor *dH[NEAT_MAX_HIDDEN];
    void *G, *dU, *U, *scratch;
    int64_t N, d_in, d_out, r;
} neat_bwd_plan;

/* The one layout both the size query and the compute call use. */
static size_t neat_bwd_layout(const neat_grads *grads, const neat_args *args,
                              const neat_qweight *qw, const neat_exec *exec, void *workspace,
                              neat_bwd_plan *p)
{
    neat_dtype dt = args->weight->dtype;
    size_t es = dt == NEAT_FLOAT64 ? sizeof(double) : sizeof(float);
    int64_t N = args->x->sizes[0], d_in = args->weight->sizes[1];
    int64_t d_out = args->weight->sizes[0], r = args->A->sizes[0];
    int32_t lanes = neat_exec_lanes(exec);

    p->N = N, p->d_in = d_in, p->d_out = d_out, p->r = r;
    p->want_dx = grads->dx != NULL;
    p->want_dw = grads->dweight != NULL;
    p->want_db = grads->dbias != NULL;
    p->want_dA = grads->dA != NULL;
    p->want_dB = grads->dB != NULL;
    p->want_dH = 0;
    for (int32_t i = 0; i < NEAT_MAX_HIDDEN; i++) {
        p->dH[i] = NULL;
        if (i < args->num_hidden && grads->dhidden && grads->dhidden[i].data) {
            p->dH[i] = &grads->dhidden[i];
            p->want_dH = 1;
        }
    }
    p->stack_backward = p->want_dA || p->want_dH || p->want_dw;
    p->need_dU = p->want_dx || p->stack_backward;
    int need_G = p->want_dx || p->want_dB || p->stack_backward;

    /* dx = dy W + dU G is one fused call (gemm.h, neat_gemm_ex), or the panel loop's */
    size_t gemm = qw ? neat_qgemm_scratch_bytes(dt, qw, 0, N, r, lanes)
                     : neat_gemm_ex_scratch_bytes(dt, N, d_in, d_out, r, lanes);
    const int64_t shapes[6][3] = {
        {N, r, d_out},    /* dU = s dy B */
        {d_out, d_in, N}, /* dweight = dy^T x */
        {N, r, d_in},     /* U = x G^T */
        {d_out, r, N},    /* dB = s dy^T U */
        {N, d_in, d_out}, /* dx = dy W (fused above) */
        {N, d_in, r},     /* dx = dU G (adapter) */
    };
    for (int i = 0; i < 6; i++)
        gemm = neat_size_max(gemm, neat_gemm_scratch_bytes_mnk(dt, shapes[i][0], shapes[i][1],
                                                               shapes[i][2], lanes));
    size_t stack = need_G ? neat_gstack_scratch_bytes(args, qw, p->stack_backward) : 0;

    neat_carver c = neat_carver_begin(workspace);
    p->G = need_G ? neat_carve(&c, (size_t)(r * d_in) * es) : NULL;
    p->dU = p->need_dU ? neat_carve(&c, (size_t)(N * r) * es) : NULL;
    p->U = p->want_dB ? neat_carve(&c, (size_t)(N * r) * es) : NULL;
    /* the stack and the GEMMs run one after the other, so they share their scratch */
    p->scratch = neat_carve(&c, neat_size_max(stack, gemm));
    return c.used;
}

neat_status neat_cpu_qbackward_workspace_size(const neat_grads *grads, const neat_args *args,
                                              const neat_qweight *qw, int with_base,
                                              const neat_exec *exec, size_t *bytes)
{
    neat_bwd_plan p;
    (void)with_base; /* one layout serves both: it sizes every product either one runs */
    neat_tensor shape;
    neat_args a;
    args = neat_qargs(args, qw, &a, &shape);
    *bytes = neat_bwd_layout(grads, args, qw, exec, NULL, &p);
    return NEAT_OK;
}

neat_status neat_cpu_backward_workspace_size(const neat_grads *grads, const neat_args *args,
                                             int with_base, const neat_exec *exec, size_t *bytes)
{
    return neat_cpu_qbackward_workspace_size(grads, args, NULL, with_base, exec, bytes);
}

neat_status neat_cpu_qbackward(const neat_grads *grads, const neat_tensor *dy,
                               const neat_args *args, const neat_qweight *qw, int with_base,
                               void *workspace, size_t workspace_bytes, const neat_exec *exec)
{
    (void)workspace_bytes; /* checked by dispatch against the same layout */
    neat_bwd_plan p;
    neat_tensor shape;
    neat_args a;
    args = neat_qargs(args, qw, &a, &shape);
    neat_bwd_layout(grads, args, qw, exec, workspace, &p);
    const neat_tensor *x = args->x, *W = args->weight, *B = args->B;
    neat_dtype dt = W->dtype;
    int64_t N = p.N, d_in = p.d_in, d_out = p.d_out, r = p.r;
    int64_t xrs = x->strides[0], xcs = x->strides[1];
    int64_t dyrs = dy->strides[0], dycs = dy->strides[1];
    double s = args->scale;

    if (p.need_dU) /* dU = s dy B */
        neat_gemm(dt, N, r, d_out, s, dy->data, dyrs, dycs, B->data, B->strides[0],
                  B->strides[1], 0.0, p.dU, r, 1, p.scratch, exec);
    if (p.want_dw && with_base) { /* dweight = dy^T x; the stack adds A^T dZ_0 */
        const neat_tensor *dw = grads->dweight;
        neat_gemm(dt, d_out, d_in, N, 1.0, dy->data, dycs, dyrs, x->data, xrs, xcs, 0.0,
                  dw->data, dw->strides[0], dw->strides[1], p.scratch, exec);
    }
    if (p.stack_backward) {
        neat_gstack_out out = {0};
        out.G = p.G, out.g_rs = d_in, out.g_cs = 1;
        out.dA = grads->dA;
        for (int32_t i = 0; i < NEAT_MAX_HIDDEN; i++) out.dH[i] = p.dH[i];
        out.dweight = grads->dweight;
        out.dweight_accumulate = with_base;
        neat_gstack_backward(args, qw, p.dU, &out, p.scratch, exec);
    } else if (p.G) {
        neat_gstack_forward(args, qw, p.G, d_in, 1, p.scratch, exec);
    }
    if (p.want_dB) { /* U = x G^T, dB = s dy^T U */
        const neat_tensor *dB = grads->dB;
        neat_gemm(dt, N, r, d_in, 1.0, x->data, xrs, xcs, p.G, 1, d_in, 0.0, p.U, r, 1,
                  p.scratch, exec);
        neat_gemm(dt, d_out, r, N, s, dy->data, dycs, dyrs, p.U, r, 1, 0.0, dB->data,
                  dB->strides[0], dB->strides[1], p.scratch, exec);
    }
    if (p.want_dx) { /* dx = dy W + dU G (adapter: dU G) */
        const neat_tensor *dx = grads->dx;
        if (with_base) {
            neat_gemm_extra ex = {r, 1.0, p.dU, r, 1, p.G, d_in, 1, NULL, 0, 0};
            if (qw)
                neat_qgemm(dt, qw, 0, N, dy->data, dyrs, dycs, dx->data, dx->strides[0],
                           dx->strides[1], &ex, p.scratch, exec);
            else
                neat_gemm_ex(dt, N, d_in, d_out, 1.0, dy->data, dyrs, dycs, W->data,
                             W->strides[0], W->strides[1], 0.0, dx->data, dx->strides[0],
                             dx->strides[1], &ex, p.scratch, exec);
        } else {
            neat_gemm(dt, N, d_in, r, 1.0, p.dU, r, 1, p.G, d_in, 1, 0.0, dx->data,
                      dx->strides[0], dx->strides[1], p.scratch, exec);
        }
    }
    if (p.want_db)
        neat_mat_colsum(dt, N, d_out, dy->data, dyrs, dycs, grads->dbias->data,
                        grads->dbias->strides[0]);
    return NEAT_OK;
}

neat_status neat_cpu_backward(const neat_grads *grads, const neat_tensor *dy,
                              const neat_args *args, int with_base, void *workspace,
                              size_t workspace_bytes, const neat_exec *exec)
{
    return neat_cpu_qbackward(grads, dy, args, NULL, with_base, workspace, workspace_bytes, exec);
}
