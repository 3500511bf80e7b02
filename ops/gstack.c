/*
 * gstack.c - the column-block engine for G = stack(act(A W)) and its backward (see gstack.h).
 */
#include "gstack.h"

#include "activation.h"
#include "gemm.h"
#include "matrix.h"
#include "quant.h"
#include "workspace.h"

/* Most groups: enough to keep a machine's cores busy, few enough to keep partials small. */
#define NEAT_GSTACK_MAX_GROUPS 8
/* Cap on the bytes of dA / dH partial sums over all groups. */
#define NEAT_GSTACK_PARTIAL_BYTES (16u << 20)

typedef struct neat_gs_shape {
    neat_dtype dtype;
    size_t es;
    int64_t r, d_in, d_out, N, bs, nblocks;
    int32_t nh, k, groups;
    const neat_qweight *qw; /* quantized W, or NULL */
    int64_t qrows, qpanels; /* quantized: rows of W per panel, panels per block */
    size_t gemm_bytes;  /* serial GEMM scratch of one group */
    size_t group_bytes; /* everything one group carves */
} neat_gs_shape;

/* One group's pieces of scratch; layer l in 0..nh has Z[l], out[l] (and dout[l]). */
typedef struct neat_gs_bufs {
    char *Z[NEAT_MAX_HIDDEN + 1];
    char *out[NEAT_MAX_HIDDEN + 1];
    char *dout[NEAT_MAX_HIDDEN + 1];
    char *dZ;
    char *dA_part;
    char *dH_part[NEAT_MAX_HIDDEN];
    char *panel; /* quantized: qrows x bs of W */
    void *gemm;
} neat_gs_bufs;

static void neat_gs_carve(const neat_gs_shape *s, int backward, neat_carver *c, neat_gs_bufs *b)
{
    size_t tile = (size_t)(s->r * s->bs) * s->es;
    for (int32_t l = 0; l <= s->nh; l++) {
        b->Z[l] = neat_carve(c, tile);
        b->out[l] = neat_carve(c, tile);
        b->dout[l] = backward ? neat_carve(c, tile) : NULL;
    }
    b->dZ = backward ? neat_carve(c, tile) : NULL;
    b->dA_part = backward ? neat_carve(c, (size_t)(s->r * s->d_out) * s->es) : NULL;
    for (int32_t l = 0; l < s->nh; l++)
        b->dH_part[l] = backward ? neat_carve(c, (size_t)(s->r * s->r) * s->es) : NULL;
    b->panel = s->qw ? neat_carve(c, (size_t)(s->qrows * s->bs) * s->es) : NULL;
    b->gemm = neat_carve(c, s->gemm_bytes);
}

static neat_gs_shape neat_gs_shape_of(const neat_args *args, const neat_qweight *qw,
                                      int backward)
{
    neat_gs_shape s;
    s.dtype = args->weight->dtype;
    s.es = s.dtype == NEAT_FLOAT64 ? sizeof(double) : sizeof(float);
    s.d_out = args->weight->sizes[0];
    s.d_in = args->weight->sizes[1];
    s.r = args->A->sizes[0];
    s.N = backward ? args->x->sizes[0] : 0;
    s.nh = args->num_hidden;
    s.k = s.nh / 2;
    s.bs = s.d_in < NEAT_GSTACK_BS ? s.d_in : NEAT_GSTACK_BS;
    s.nblocks = (s.d_in + s.bs - 1) / s.bs;
    int64_t g = s.nblocks < NEAT_GSTACK_MAX_GROUPS ? s.nblocks : NEAT_GSTACK_MAX_GROUPS;
    size_t partial = (size_t)(s.r * s.d_out + s.nh * s.r * s.r) * s.es;
    while (backward && g > 1 && (size_t)g * partial > NEAT_GSTACK_PARTIAL_BYTES) g--;
    s.groups = (int32_t)g;
    s.qw = qw;
    s.qrows = qw ? (s.d_out < NEAT_GSTACK_QROWS ? s.d_out : NEAT_GSTACK_QROWS) : 0;
    s.qpanels = qw ? (s.d_out + s.qrows - 1) / s.qrows : 0;

    /* every GEMM shape a block runs, at both block widths that occur (full and last) */
    s.gemm_bytes = 0;
    int64_t widths[2] = {s.bs, s.d_in - (s.nblocks - 1) * s.bs};
    for (int i = 0; i < 2; i++) {
        int64_t w = widths[i];
        const int64_t shapes[7][3] = {
            {s.r, w, s.d_out}, {s.r, w, s.r},     {s.r, w, s.N},    {s.r, s.r, w},
            {s.r, s.d_out, w}, {s.d_out, w, s.r}, {s.r, w, s.r},
        };
        for (int j = 0; j < (backward ? 7 : 2); j++)
            s.gemm_bytes = neat_size_max(
                s.gemm_bytes,
                neat_gemm_scratch_bytes_mnk(s.dtype, shapes[j][0], shapes[j][1], shapes[j][2], 1));
        /* quantized: Z_0 and dA by row panels, full and last */
        int64_t heights[2] = {s.qrows, s.d_out - (s.qpanels - 1) * s.qrows};
        for (int h = 0; qw && h < 2; h++) {
            s.gemm_bytes = neat_size_max(
                s.gemm_bytes, neat_gemm_scratch_bytes_mnk(s.dtype, s.r, w, heights[h], 1));
            if (backward)
                s.gemm_bytes = neat_size_max(
                    s.gemm_bytes, neat_gemm_scratch_bytes_mnk(s.dtype, s.r, heights[h], w, 1));
        }
    }
    neat_carver c = neat_carver_begin(NULL);
    neat_gs_bufs b;
    neat_gs_carve(&s, backward, &c, &b);
    s.group_bytes = c.used;
    return s;
}

size_t neat_gstack_scratch_bytes(const neat_args *args, const neat_qweight *qw, int backward)
{
    neat_gs_shape s = neat_gs_shape_of(args, qw, backward);
    return (size_t)s.groups * s.group_bytes + NEAT_ALIGN;
}

typedef struct neat_gs_job {
    const neat_args *args;
    neat_gs_shape s;
    int backward;
    const void *dU;
    const neat_gstack_out *out;
    char *scratch; /* aligned */
    void *G;       /* forward only */
    int64_t g_rs, g_cs;
} neat_gs_job;

static const char *neat_at(const neat_tensor *t, int64_t i, int64_t j, size_t es)
{
    if (!t->data) /* an empty x (N = 0): no offset may be applied to NULL */
        return NULL;
    return (const char *)t->data + (size_t)(i * t->strides[0] + j * t->strides[1]) * es;
}

/* Forward of one column block [c0, c0 + w): fills b->Z and b->out for every layer. */
static void neat_gs_block_forward(const neat_gs_job *job, const neat_gs_bufs *b, int64_t c0,
                                  int64_t w)
{
    const neat_args *a = job->args;
    const neat_gs_shape *s = &job->s;
    const neat_tensor *W = a->weight, *A = a->A;
    if (s->qw) { /* Z_0 = sum over row panels of A[:, rows] W[rows, blk] */
        for (int64_t pi = 0; pi < s->qpanels; pi++) {
            int64_t i0 = pi * s->qrows, h = s->d_out - i0 < s->qrows ? s->d_out - i0 : s->qrows;
            neat_dequant_panel(s->qw, s->dtype, i0, h, c0, w, b->panel, s->bs);
            neat_gemm(s->dtype, s->r, w, h, 1.0, neat_at(A, 0, i0, s->es), A->strides[0],
                      A->strides[1], b->panel, s->bs, 1, pi ? 1.0 : 0.0, b->Z[0], s->bs, 1,
                      b->gemm, NULL);
        }
    } else {
        neat_gemm(s->dtype, s->r, w, s->d_out, 1.0, A->data, A->strides[0], A->strides[1],
                  neat_at(W, 0, c0, s->es), W->strides[0], W->strides[1], 0.0, b->Z[0], s->bs,
                  1, b->gemm, NULL);
    }
    neat_act_forward(s->dtype, a->activation, s->r, w, b->Z[0], s->bs, NULL, 0, b->out[0],
                     s->bs);
    for (int32_t l = 1; l <= s->nh; l++) {
        const neat_tensor *H = &a->hidden[l - 1];
        neat_gemm(s->dtype, s->r, w, s->r, 1.0, H->data, H->strides[0], H->strides[1],
                  b->out[l - 1], s->bs, 1, 0.0, b->Z[l], s->bs, 1, b->gemm, NULL);
        /* decoder l = k + j adds the input of encoder k + 1 - j, i.e. layer 2k - l's output */
        const void *skip = l > s->k ? b->out[2 * s->k - l] : NULL;
        neat_act_forward(s->dtype, a->activation, s->r, w, b->Z[l], s->bs, skip, s->bs,
                         b->out[l], s->bs);
    }
}

/* Backward of one column block, after neat_gs_block_forward filled b. */
static void neat_gs_block_backward(const neat_gs_job *job, const neat_gs_bufs *b, int64_t c0,
                                   int64_t w)
{
    const neat_args *a = job->args;
    const neat_gs_shape *s = &job->s;
    const neat_gstack_out *o = job->out;
    const neat_tensor *W = a->weight, *A = a->A, *x = a->x;
    int32_t top = s->nh;
    /* dG of the block = dU^T x[:, blk] */
    neat_gemm(s->dtype, s->r, w, s->N, 1.0, job->dU, 1, s->r, neat_at(x, 0, c0, s->es),
              x->strides[0], x->strides[1], 0.0, b->dout[top], s->bs, 1, b->gemm, NULL);
    for (int32_t l = 0; l < top; l++) neat_mat_zero(s->dtype, s->r, w, b->dout[l], s->bs, 1);
    for (int32_t l = top; l >= 1; l--) {
        const neat_tensor *H = &a->hidden[l - 1];
        neat_act_backward(s->dtype, a->activation, s->r, w, b->Z[l], s->bs, b->dout[l], s->bs,
                          b->dZ, s->bs);
        if (l > s->k) /* the residual add routes dG to the pushed G unchanged */
            neat_mat_add(s->dtype, s->r, w, b->dout[l], s->bs, 1, b->dout[2 * s->k - l], s->bs,
                         1);
        if (o->dH[l - 1]) /* dH += dZ G_prev^T */
            neat_gemm(s->dtype, s->r, s->r, w, 1.0, b->dZ, s->bs, 1, b->out[l - 1], 1, s->bs,
                      1.0, b->dH_part[l - 1], s->r, 1, b->gemm, NULL);
        /* dG_prev += H^T dZ */
        neat_gemm(s->dtype, s->r, w, s->r, 1.0, H->data, H->strides[1], H->strides[0], b->dZ,
                  s->bs, 1, 1.0, b->dout[l - 1], s->bs, 1, b->gemm, NULL);
    }
    neat_act_backward(s->dtype, a->activation, s->r, w, b->Z[0], s->bs, b->dout[0], s->bs,
                      b->dZ, s->bs);
    if (o->dA && s->qw) {
        /* dA[:, rows] += dZ_0 W[rows, blk]^T; a single row panel still holds the block from
         * the forward above */
        for (int64_t pi = 0; pi < s->qpanels; pi++) {
            int64_t i0 = pi * s->qrows, h = s->d_out - i0 < s->qrows ? s->d_out - i0 : s->qrows;
            if (s->qpanels > 1)
                neat_dequant_panel(s->qw, s->dtype, i0, h, c0, w, b->panel, s->bs);
            neat_gemm(s->dtype, s->r, h, w, 1.0, b->dZ, s->bs, 1, b->panel, 1, s->bs, 1.0,
                      b->dA_part + (size_t)i0 * s->es, s->d_out, 1, b->gemm, NULL);
        }
    } else if (o->dA) { /* dA += dZ_0 W[:, blk]^T while the block of W is still in cache */
        neat_gemm(s->dtype, s->r, s->d_out, w, 1.0, b->dZ, s->bs, 1, neat_at(W, 0, c0, s->es),
                  W->strides[1], W->strides[0], 1.0, b->dA_part, s->d_out, 1, b->gemm, NULL);
    }
    if (o->dweight) { /* dweight[:, blk] (+)= A^T dZ_0; blocks are disjoint columns */
        const neat_tensor *dw = o->dweight;
        neat_gemm(s->dtype, s->d_out, w, s->r, 1.0, A->data, A->strides[1], A->strides[0],
                  b->dZ, s->bs, 1, o->dweight_accumulate ? 1.0 : 0.0,
                  (char *)dw->data + (size_t)(c0 * dw->strides[1]) * s->es, dw->strides[0],
                  dw->strides[1], b->gemm, NULL);
    }
}

static void neat_gs_groups(int64_t begin, int64_t end, void *ctx)
{
    const neat_gs_job *job = ctx;
    const neat_gs_shape *s = &job->s;
    for (int64_t g = begin; g < end; g++) {
        neat_carver c = neat_carver_begin(job->scratch + (size_t)g * s->group_bytes);
        neat_gs_bufs b;
        neat_gs_carve(s, job->backward, &c, &b);
        if (job->backward) {
            if (job->out->dA)
                neat_mat_zero(s->dtype, s->r, s->d_out, b.dA_part, s->d_out, 1);
            for (int32_t l = 0; l < s->nh; l++)
                if (job->out->dH[l])
                    neat_mat_zero(s->dtype, s->r, s->r, b.dH_part[l], s->r, 1);
        }
        int64_t first = g * s->nblocks / s->groups, last = (g + 1) * s->nblocks / s->groups;
        for (int64_t blk = first; blk < last; blk++) {
            int64_t c0 = blk * s->bs;
            int64_t w = s->d_in - c0 < s->bs ? s->d_in - c0 : s->bs;
            neat_gs_block_forward(job, &b, c0, w);
            void *G = job->backward ? job->out->G : job->G;
            int64_t g_rs = job->backward ? job->out->g_rs : job->g_rs;
            int64_t g_cs = job->backward ? job->out->g_cs : job->g_cs;
            if (G)
                neat_mat_copy(s->dtype, s->r, w, b.out[s->nh], s->bs, 1,
                              (char *)G + (size_t)(c0 * g_cs) * s->es, g_rs, g_cs);
            if (job->backward)
                neat_gs_block_backward(job, &b, c0, w);
        }
    }
}

static void neat_gs_run(neat_gs_job *job, const neat_exec *exec)
{
    if (job->s.groups > 1 && neat_exec_lanes(exec) > 1 && exec->parallel_for)
        exec->parallel_for(0, job->s.groups, 1, neat_gs_groups, job, exec->parallel_user);
    else
        neat_gs_groups(0, job->s.groups, job);
}

void neat_gstack_forward(const neat_args *args, const neat_qweight *qw, void *G, int64_t g_rs,
                         int64_t g_cs, void *scratch, const neat_exec *exec)
{
    neat_gs_job job = {0};
    job.args = args;
    job.s = neat_gs_shape_of(args, qw, 0);
    job.scratch = neat_align_ptr(scratch);
    job.G = G, job.g_rs = g_rs, job.g_cs = g_cs;
    neat_gs_run(&job, exec);
}

void neat_gstack_backward(const neat_args *args, const neat_qweight *qw, const void *dU,
                          const neat_gstack_out *out, void *scratch, const neat_exec *exec)
{
    neat_gs_job job = {0};
    job.args = args;
    job.s = neat_gs_shape_of(args, qw, 1);
    job.backward = 1;
    job.dU = dU;
    job.out = out;
    job.scratch = neat_align_ptr(scratch);
    neat_gs_run(&job, exec);

    /* reduce the groups' partial sums in group order: the order fixes the rounding */
    const neat_gs_shape *s = &job.s;
    for (int32_t g = 0; g < s->groups; g++) {
        neat_carver c = neat_carver_begin(job.scratch + (size_t)g * s->group_bytes);
        neat_gs_bufs b;
        neat_gs_carve(s, 1, &c, &b);
        void (*op)(neat_dtype, int64_t, int64_t, const void *, int64_t, int64_t, void *,
                   int64_t, int64_t) = g == 0 ? neat_mat_copy : neat_mat_add;
        if (out->dA)
            op(s->dtype, s->r, s->d_out, b.dA_part, s->d_out, 1, out->dA->data,
               out->dA->strides[0], out->dA->strides[1]);
        for (int32_t l = 0; l < s->nh; l++)
            if (out->dH[l])
                op(s->dtype, s->r, s->r, b.dH_part[l], s->r, 1, out->dH[l]->data,
                   out->dH[l]->strides[0], out->dH[l]->strides[1]);
    }
}
