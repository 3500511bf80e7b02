/*
 * forward.c - CPU forward and compute_g (docs/design.md §1.1):
 *   G = stack(act(A W))          (r, d_in), column blocks, gstack.c
 *   U = x G^T                    (N, r)
 *   linear:  y = x W^T + s U B^T + b
 *   adapter: y = s U B^T
 *   lowrank: y = x W^T + s U B^T + b with G given (inference with G kept)
 * The d_out x d_in update s B G is never formed. With a quantized W (qw != NULL, quant.h) the
 * same code runs on a data-less view of W's shape, and x W^T goes over panels of W (qgemm.h).
 */
#include "backend.h"
#include "gemm.h"
#include "gstack.h"
#include "matrix.h"
#include "qgemm.h"
#include "quant.h"
#include "workspace.h"

static size_t neat_max3(size_t a, size_t b, size_t c)
{
    size_t m = a > b ? a : b;
    return m > c ? m : c;
}

typedef struct neat_fwd_bufs {
    void *G, *U, *scratch;
} neat_fwd_bufs;

/* The base product's scratch: the fused GEMM's, or the panel loop's. */
static size_t neat_base_scratch(const neat_qweight *qw, neat_dtype dt, int64_t N, int64_t d_out,
                                int64_t d_in, int64_t r, int32_t lanes)
{
    return qw ? neat_qgemm_scratch_bytes(dt, qw, 1, N, r, lanes)
              : neat_gemm_ex_scratch_bytes(dt, N, d_out, d_in, r, lanes);
}

/* y = x W^T + ex, W a float view or quantized. */
static void neat_base_product(const neat_tensor *x, const neat_tensor *W, const neat_qweight *qw,
                              neat_tensor *y, const neat_gemm_extra *ex, void *scratch,
                              const neat_exec *exec)
{
    neat_dtype dt = W->dtype;
    int64_t N = x->sizes[0], d_in = W->sizes[1], d_out = W->sizes[0];
    if (qw)
        neat_qgemm(dt, qw, 1, N, x->data, x->strides[0], x->strides[1], y->data, y->strides[0],
                   y->strides[1], ex, scratch, exec);
    else
        neat_gemm_ex(dt, N, d_out, d_in, 1.0, x->data, x->strides[0], x->strides[1], W->data,
                     W->strides[1], W->strides[0], 0.0, y->data, y->strides[0], y->strides[1], ex,
                     scratch, exec);
}

/* The one layout both the size query and the compute call use. */
static size_t neat_fwd_layout(const neat_args *args, const neat_qweight *qw, int with_base,
                              const neat_exec *exec, void *workspace, neat_fwd_bufs *b)
{
    neat_dtype dt = args->weight->dtype;
    size_t es = dt == NEAT_FLOAT64 ? sizeof(double) : sizeof(float);
    int64_t N = args->x->sizes[0], d_in = args->weight->sizes[1];
    int64_t d_out = args->weight->sizes[0], r = args->A->sizes[0];
    int32_t lanes = neat_exec_lanes(exec);
    size_t gemm = neat_max3(neat_gemm_scratch_bytes_mnk(dt, N, r, d_in, lanes),
                            with_base ? 0 : neat_gemm_scratch_bytes_mnk(dt, N, d_out, r, lanes),
                            with_base ? neat_base_scratch(qw, dt, N, d_out, d_in, r, lanes) : 0);
    size_t stack = neat_gstack_scratch_bytes(args, qw, 0);
    neat_carver c = neat_carver_begin(workspace);
    b->G = neat_carve(&c, (size_t)(r * d_in) * es);
    b->U = neat_carve(&c, (size_t)(N * r) * es);
    /* the stack and the GEMMs run one after the other, so they share their scratch */
    b->scratch = neat_carve(&c, stack > gemm ? stack : gemm);
    return c.used;
}

neat_status neat_cpu_qforward_workspace_size(const neat_args *args, const neat_qweight *qw,
                                             int with_base, const neat_exec *exec, size_t *bytes)
{
    neat_fwd_bufs b;
    neat_tensor shape;
    neat_args a;
    args = neat_qargs(args, qw, &a, &shape);
    *bytes = neat_fwd_layout(args, qw, with_base, exec, NULL, &b);
    return NEAT_OK;
}

neat_status neat_cpu_forward_workspace_size(const neat_args *args, int with_base,
                                            const neat_exec *exec, size_t *bytes)
{
    return neat_cpu_qforward_workspace_size(args, NULL, with_base, exec, bytes);
}

neat_status neat_cpu_qforward(neat_tensor *y, const neat_args *args, const neat_qweight *qw,
                              int with_base, void *workspace, size_t workspace_bytes,
                              const neat_exec *exec)
{
    (void)workspace_bytes; /* checked by dispatch against the same layout */
    neat_fwd_bufs b;
    neat_tensor shape;
    neat_args a;
    args = neat_qargs(args, qw, &a, &shape);
    neat_fwd_layout(args, qw, with_base, exec, workspace, &b);
    const neat_tensor *x = args->x, *W = args->weight, *B = args->B;
    neat_dtype dt = W->dtype;
    int64_t N = x->sizes[0], d_in = W->sizes[1], d_out = W->sizes[0], r = args->A->sizes[0];
    int64_t yrs = y->strides[0], ycs = y->strides[1];

    neat_gstack_forward(args, qw, b.G, d_in, 1, b.scratch, exec);
    /* U = x G^T */
    neat_gemm(dt, N, r, d_in, 1.0, x->data, x->strides[0], x->strides[1], b.G, 1, d_in, 0.0, b.U,
              r, 1, b.scratch, exec);
    if (with_base) {
        /* y = x W^T + s U B^T + b in one pass over y: the rank-r product rides on the GEMM's
         * last K slice, the bias on its first slice's store */
        neat_gemm_extra ex = {r, args->scale, b.U, r, 1, B->data, B->strides[1], B->strides[0],
                              args->bias ? args->bias->data : NULL, 0,
                              args->bias ? args->bias->strides[0] : 0};
        neat_base_product(x, W, qw, y, &ex, b.scratch, exec);
    } else {
        neat_gemm(dt, N, d_out, r, args->scale, b.U, r, 1, B->data, B->strides[1], B->strides[0],
                  0.0, y->data, yrs, ycs, b.scratch, exec);
    }
    return NEAT_OK;
}

neat_status neat_cpu_forward(neat_tensor *y, const neat_args *args, int with_base,
                             void *workspace, size_t workspace_bytes, const neat_exec *exec)
{
    return neat_cpu_qforward(y, args, NULL, with_base, workspace, workspace_bytes, exec);
}

neat_status neat_cpu_qcompute_g_workspace_size(const neat_args *args, const neat_qweight *qw,
                                               const neat_exec *exec, size_t *bytes)
{
    (void)exec; /* the stack's parallel split never depends on the thread count */
    neat_tensor shape;
    neat_args a;
    args = neat_qargs(args, qw, &a, &shape);
    *bytes = neat_gstack_scratch_bytes(args, qw, 0);
    return NEAT_OK;
}

neat_status neat_cpu_compute_g_workspace_size(const neat_args *args, const neat_exec *exec,
                                              size_t *bytes)
{
    return neat_cpu_qcompute_g_workspace_size(args, NULL, exec, bytes);
}

neat_status neat_cpu_qcompute_g(neat_tensor *G, const neat_args *args, const neat_qweight *qw,
                                void *workspace, size_t workspace_bytes, const neat_exec *exec)
{
    (void)workspace_bytes;
    neat_tensor shape;
    neat_args a;
    args = neat_qargs(args, qw, &a, &shape);
    neat_gstack_forward(args, qw, G->data, G->strides[0], G->strides[1], workspace, exec);
    return NEAT_OK;
}

neat_status neat_cpu_compute_g(neat_tensor *G, const neat_args *args, void *workspace,
                               size_t workspace_bytes, const neat_exec *exec)
{
    return neat_cpu_qcompute_g(G, args, NULL, workspace, workspace_bytes, exec);
}

/* U (N, r) then the GEMM's scratch; the one layout of the size query and the call. */
static size_t neat_lowrank_layout(const neat_lowrank_args *la, const neat_qweight *qw,
                                  const neat_exec *exec, void *workspace, void **U,
                                  void **scratch)
{
    neat_dtype dt = la->weight->dtype;
    size_t es = dt == NEAT_FLOAT64 ? sizeof(double) : sizeof(float);
    int64_t N = la->x->sizes[0], d_in = la->weight->sizes[1];
    int64_t d_out = la->weight->sizes[0], r = la->G->sizes[0];
    int32_t lanes = neat_exec_lanes(exec);
    size_t gu = neat_gemm_scratch_bytes_mnk(dt, N, r, d_in, lanes);
    size_t gy = neat_base_scratch(qw, dt, N, d_out, d_in, r, lanes);
    neat_carver c = neat_carver_begin(workspace);
    *U = neat_carve(&c, (size_t)(N * r) * es);
    *scratch = neat_carve(&c, gu > gy ? gu : gy);
    return c.used;
}

neat_status neat_cpu_qlowrank_forward_workspace_size(const neat_lowrank_args *la,
                                                     const neat_qweight *qw,
                                                     const neat_exec *exec, size_t *bytes)
{
    void *U, *scratch;
    neat_tensor shape;
    neat_lowrank_args a = *la;
    if (qw)
        shape = neat_qweight_shape(qw), a.weight = &shape;
    *bytes = neat_lowrank_layout(&a, qw, exec, NULL, &U, &scratch);
    return NEAT_OK;
}

neat_status neat_cpu_lowrank_forward_workspace_size(const neat_lowrank_args *la,
                                                    const neat_exec *exec, size_t *bytes)
{
    return neat_cpu_qlowrank_forward_workspace_size(la, NULL, exec, bytes);
}

neat_status neat_cpu_qlowrank_forward(neat_tensor *y, const neat_lowrank_args *la,
                                      const neat_qweight *qw, void *workspace,
                                      size_t workspace_bytes, const neat_exec *exec)
{
    (void)workspace_bytes; /* checked by dispatch against the same layout */
    void *U, *scratch;
    neat_tensor shape;
    neat_lowrank_args a = *la;
    if (qw)
        shape = neat_qweight_shape(qw), a.weight = &shape;
    la = &a;
    neat_lowrank_layout(la, qw, exec, workspace, &U, &scratch);
    const neat_tensor *x = la->x, *W = la->weight, *G = la->G, *B = la->B;
    neat_dtype dt = W->dtype;
    int64_t N = x->sizes[0], d_in = W->sizes[1], r = G->sizes[0];
    /* U = x G^T */
    neat_gemm(dt, N, r, d_in, 1.0, x->data, x->strides[0], x->strides[1], G->data, G->strides[1],
              G->strides[0], 0.0, U, r, 1, scratch, exec);
    neat_gemm_extra ex = {r, la->scale, U, r, 1, B->data, B->strides[1], B->strides[0],
                          la->bias ? la->bias->data : NULL, 0,
                          la->bias ? la->bias->strides[0] : 0};
    neat_base_product(x, W, qw, y, &ex, scratch, exec);
    return NEAT_OK;
}

neat_status neat_cpu_lowrank_forward(neat_tensor *y, const neat_lowrank_args *la, void *workspace,
                                     size_t workspace_bytes, const neat_exec *exec)
{
    return neat_cpu_qlowrank_forward(y, la, NULL, workspace, workspace_bytes, exec);
}
