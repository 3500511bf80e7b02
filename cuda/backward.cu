// backward.cu - neat_cuda_backward: every gradient of docs/design.md §1.2 that is asked for, on the
// caller's stream, from the op's inputs alone (nothing saved by the forward but the inputs).
//
// Launch sequence (T = x's dtype, Acc = float32, or float64 for float64), each step only when
// some requested gradient needs it:
//   Z0 = A W, stack forward keeping Z_l, G_l  (cuBLAS + gstack kernels; G also in T)
//   dU = s dy B                  cuBLAS (N, r) in T              dx, dA, dW, dhidden
//   dx = dU G (+ dy W)           cuBLAS, the second with beta = 1
//   U = x G^T; dB = s dy^T U     cuBLAS                          dB
//   dW = dy^T x                  cuBLAS (linear only)
//   db = dy^T 1                  cuBLAS against a ones vector (a deterministic column sum)
//   dG = dU^T x                  cuBLAS (r, d_in) in Acc         dA, dW, dhidden
//   stack backward -> dZ0, dH    gstack kernels + cuBLAS for dH = dZ G^T (reduction over d_in)
//   dA = dZ0 W^T                 cuBLAS
//   dW (+)= A^T dZ0              cuBLAS, beta = 1 after dy^T x
// No atomics anywhere: every reduction is a cuBLAS product, so results are run-to-run identical.
//
// dy is read by cuBLAS in place whenever it can be (always from the torch binding). A dy that
// cuBLAS cannot read (neither stride 1: a broadcast, an every-other-column view) is staged through
// a bounded scratch instead of copied whole: by blocks of rows for the products that keep dy's
// rows apart (dU, dx), by blocks of columns for the reductions over N (dB, dW, db), so that every
// output element is still one product over the full sum, as with a dy read in place. The stage is
// reserved whatever dy's layout, since the size query does not see dy.
//
// The fused path (NEAT_CUDA_RANK_PATH=fused, r <= kFusedMaxRank; fused.cuh) changes the rank-r
// products and nothing else:
//   dU = s dy B and dx = dU G      one kernel, one pass over dy's rows   (then dx += dy W, cuBLAS)
//   U = x G^T                      the same kernel, u only                dB
//   dB = s dy^T U, db = dy^T 1     one kernel, one pass over dy's columns, written into the
//                                  caller's dB and db in place (any layout, no ones vector)
// dy is read by two kernels instead of three products (dU, dB, db). One pass for all three would
// split the sums over N across blocks: atomics (not run-to-run identical) or partial sums of
// d_out x r per block in the workspace.
//
// With a quantized W (neat_cuda_qbackward; dW is never asked for) A W, dy W and dZ0 W^T go through
// wgemm (quant.cuh): panels of W dequantized into the workspace, W never formed.
#include "blas.cuh"
#include "elementwise.cuh"
#include "entry.cuh"
#include "fused.cuh"
#include "gstack.cuh"
#include "quant.cuh"

namespace neat_cuda {
namespace {

bool wants_hidden(const neat_grads *g, int num_hidden)
{
    if (!g->dhidden) return false;
    for (int i = 0; i < num_hidden; ++i)
        if (g->dhidden[i].data) return true;
    return false;
}

// Calls f(i0, block) over dy's rows: once with dy itself when cuBLAS can read it, otherwise for
// blocks of at most stage.rows rows copied into stage (an (rows, d_out) scratch). f must not
// carve: the size query takes the first branch.
template <typename F>
neat_status by_rows(Ctx &ctx, Mat dy, Mat stage, F &&f)
{
    if (blas_ready(dy)) return f(int64_t{0}, dy);
    for (int64_t i0 = 0; i0 < dy.rows; i0 += stage.rows) {
        const int64_t m = dy.rows - i0 < stage.rows ? dy.rows - i0 : stage.rows;
        const Mat blk = row_slice(stage, 0, m);
        NEAT_CUDA_TRY(launch_convert(ctx, blk, row_slice(dy, i0, m)));
        NEAT_CUDA_TRY(f(i0, blk));
    }
    return NEAT_OK;
}

// The same over dy's columns, blocks of at most stage.cols columns ((N, cols) scratch).
template <typename F>
neat_status by_cols(Ctx &ctx, Mat dy, Mat stage, F &&f)
{
    if (blas_ready(dy)) return f(int64_t{0}, dy);
    for (int64_t j0 = 0; j0 < dy.cols; j0 += stage.cols) {
        const int64_t c = dy.cols - j0 < stage.cols ? dy.cols - j0 : stage.cols;
        const Mat blk = col_slice(stage, 0, c);
        NEAT_CUDA_TRY(launch_convert(ctx, blk, col_slice(dy, j0, c)));
        NEAT_CUDA_TRY(f(j0, blk));
    }
    return NEAT_OK;
}

neat_status backward_plan(Ctx &ctx, const neat_grads *grads, const neat_tensor *dy,
                          const neat_args *args, const neat_qweight *q, int with_base)
{
    const Mat x = mat_of(args->x), W = weight_view(args->weight, q), A = mat_of(args->A),
              B = mat_of(args->B), dY = mat_of(dy);
    const int64_t n = x.rows, d_in = W.cols, d_out = W.rows, r = A.rows;
    const neat_dtype T = W.dt, acc = acc_dtype(T);
    const double s = args->scale;

    const bool want_dx = grads->dx && n > 0, want_dw = grads->dweight != nullptr,
               want_db = with_base && grads->dbias != nullptr, want_da = grads->dA != nullptr,
               want_db_ = grads->dB != nullptr, want_dh = wants_hidden(grads, args->num_hidden);
    const bool need_dz0 = want_da || want_dw || want_dh;
    const bool need_g = want_dx || want_db_;
    const bool row_pass = want_dx || need_dz0;                       // dU (and dx)
    const bool col_pass = want_db_ || (want_dw && with_base) || want_db; // reductions over N
    if (!(row_pass || col_pass)) return NEAT_OK;
    NEAT_CUDA_TRY(begin_call(ctx));

    Mat xg, Ag, H[NEAT_MAX_HIDDEN];
    Weight Wg;
    NEAT_CUDA_TRY(ready_input(ctx, x, T, &xg));
    NEAT_CUDA_TRY(weight_prepare(ctx, args->weight, q, T, &Wg));
    NEAT_CUDA_TRY(ready_input(ctx, A, T, &Ag));
    NEAT_CUDA_TRY(prepare_hidden(ctx, args, T, H));

    // The stage for a dy cuBLAS cannot read: one buffer, (stage_r, d_out) blocks of rows for the
    // row pass, then (N, stage_c) blocks of columns for the column pass (stream-ordered).
    const int64_t stage_r = stage_rows(n, d_out, T), stage_c = stage_rows(d_out, n, T);
    const int64_t ld_r = scratch_ld(T, d_out), ld_c = scratch_ld(T, stage_c);
    const size_t es = dtype_size(T);
    const size_t row_bytes = row_pass ? static_cast<size_t>(stage_r * ld_r) * es : 0;
    const size_t col_bytes = col_pass ? static_cast<size_t>(n * ld_c) * es : 0;
    void *stage = ctx.carve(row_bytes > col_bytes ? row_bytes : col_bytes);
    Mat stage_by_rows = mat_contig(stage, T, stage_r, d_out);
    Mat stage_by_cols = mat_contig(stage, T, n, stage_c);
    stage_by_rows.rs = ld_r;
    stage_by_cols.rs = ld_c;

    // Recompute the forward's G (and, for the stack backward, every level's Z and G).
    Mat Z0 = ctx.scratch(acc, r, d_in);
    NEAT_CUDA_TRY(wgemm(ctx, Z0, Ag, Wg, false, 1.0, 0.0));
    Mat G = need_g ? ctx.scratch(T, r, d_in) : mat_contig(nullptr, T, 0, d_in);
    Stack st;
    NEAT_CUDA_TRY(stack_forward(ctx, args, H, Z0, G, /*keep=*/need_dz0, &st));

    const bool fused = ctx.fused && fused_rank_ok(r);
    Mat dU;
    if (row_pass) { // dU = s dy B, and dx = dU G (+ dy W), block by block of dy's rows
        Mat Bg;
        if (!fused) NEAT_CUDA_TRY(ready_input(ctx, B, T, &Bg));
        dU = ctx.scratch(T, n, r);
        Output dxo;
        if (want_dx) NEAT_CUDA_TRY(begin_output(ctx, mat_of(grads->dx), T, &dxo));
        NEAT_CUDA_TRY(by_rows(ctx, dY, stage_by_rows, [&](int64_t i0, const Mat &dyb) {
            const Mat dUb = row_slice(dU, i0, dyb.rows);
            if (fused) {
                RowsArgs a;
                a.in = dyb;
                a.M = transposed(B);
                a.u = dUb;
                a.scale = s;
                if (want_dx) {
                    a.E = transposed(G);
                    a.out = row_slice(dxo.work, i0, dyb.rows);
                }
                NEAT_CUDA_TRY(launch_fused_rows(ctx, a));
                return want_dx && with_base ? wgemm(ctx, a.out, dyb, Wg, false, 1.0, 1.0) : NEAT_OK;
            }
            NEAT_CUDA_TRY(gemm(ctx, dUb, dyb, Bg, s, 0.0));
            if (!want_dx) return NEAT_OK;
            const Mat dxb = row_slice(dxo.work, i0, dyb.rows);
            NEAT_CUDA_TRY(gemm(ctx, dxb, dUb, G, 1.0, 0.0));
            return with_base ? wgemm(ctx, dxb, dyb, Wg, false, 1.0, 1.0) : NEAT_OK;
        }));
        if (want_dx) NEAT_CUDA_TRY(finish_output(ctx, dxo));
    }

    Output dBo, dWo, dbo;
    if (col_pass && fused) { // U = x G^T; dB = s dy^T U and db = dy^T 1 in one kernel; dW = dy^T x
        ColsArgs c;
        c.dy = dY;
        c.scale = s;
        if (want_db_) {
            RowsArgs a;
            a.in = xg;
            a.M = G;
            a.u = ctx.scratch(T, n, r);
            NEAT_CUDA_TRY(launch_fused_rows(ctx, a));
            c.U = a.u;
            c.dB = mat_of(grads->dB);
        } else {
            c.U = mat_contig(nullptr, T, n, r);
        }
        if (want_db) c.db = mat_of(grads->dbias);
        NEAT_CUDA_TRY(launch_fused_cols(ctx, c));
        if (want_dw && with_base) {
            NEAT_CUDA_TRY(begin_output(ctx, mat_of(grads->dweight), T, &dWo));
            NEAT_CUDA_TRY(by_cols(ctx, dY, stage_by_cols, [&](int64_t j0, const Mat &dyb) {
                return gemm(ctx, row_slice(dWo.work, j0, dyb.cols), transposed(dyb), xg, 1.0, 0.0);
            }));
        }
    } else if (col_pass) { // dB = s dy^T U, dW = dy^T x, db = dy^T 1, block by block of dy's columns
        Mat U, ones;
        if (want_db_) {
            U = ctx.scratch(T, n, r);
            NEAT_CUDA_TRY(gemm(ctx, U, xg, transposed(G), 1.0, 0.0));
            NEAT_CUDA_TRY(begin_output(ctx, mat_of(grads->dB), T, &dBo));
        }
        if (want_dw && with_base) NEAT_CUDA_TRY(begin_output(ctx, mat_of(grads->dweight), T, &dWo));
        if (want_db) {
            ones = ctx.scratch(T, n, 1);
            NEAT_CUDA_TRY(launch_fill(ctx, ones, 1.0));
            NEAT_CUDA_TRY(begin_output(ctx, mat_of(grads->dbias), T, &dbo));
        }
        NEAT_CUDA_TRY(by_cols(ctx, dY, stage_by_cols, [&](int64_t j0, const Mat &dyb) {
            const Mat dyT = transposed(dyb);
            const int64_t c = dyb.cols;
            if (want_db_) NEAT_CUDA_TRY(gemm(ctx, row_slice(dBo.work, j0, c), dyT, U, s, 0.0));
            if (want_dw && with_base)
                NEAT_CUDA_TRY(gemm(ctx, row_slice(dWo.work, j0, c), dyT, xg, 1.0, 0.0));
            if (want_db) NEAT_CUDA_TRY(gemm(ctx, row_slice(dbo.work, j0, c), dyT, ones, 1.0, 0.0));
            return NEAT_OK;
        }));
        if (want_db_) NEAT_CUDA_TRY(finish_output(ctx, dBo));
        if (want_db) NEAT_CUDA_TRY(finish_output(ctx, dbo));
    }

    if (!need_dz0) return NEAT_OK;
    Mat dZ0T;
    {
        Mat dG = ctx.scratch(acc, r, d_in);
        NEAT_CUDA_TRY(gemm(ctx, dG, transposed(dU), xg, 1.0, 0.0));
        Mat dZ0 = ctx.scratch(acc, r, d_in);
        NEAT_CUDA_TRY(stack_backward(ctx, args, H, grads, st, dG, dZ0));
        if (T == acc) {
            dZ0T = dZ0;
        } else { // the one place an r x d_in intermediate meets W in a product: rounded to T
            dZ0T = ctx.scratch(T, r, d_in);
            NEAT_CUDA_TRY(launch_convert(ctx, dZ0T, dZ0));
        }
    }

    if (want_da) { // dA = dZ0 W^T
        Output o;
        NEAT_CUDA_TRY(begin_output(ctx, mat_of(grads->dA), T, &o));
        NEAT_CUDA_TRY(wgemm(ctx, o.work, dZ0T, Wg, true, 1.0, 0.0));
        NEAT_CUDA_TRY(finish_output(ctx, o));
    }

    if (want_dw) { // dW (+)= A^T dZ0, after dy^T x of the column pass (linear)
        if (!with_base) NEAT_CUDA_TRY(begin_output(ctx, mat_of(grads->dweight), T, &dWo));
        NEAT_CUDA_TRY(gemm(ctx, dWo.work, transposed(Ag), dZ0T, 1.0, with_base ? 1.0 : 0.0));
        NEAT_CUDA_TRY(finish_output(ctx, dWo));
    }
    return NEAT_OK;
}

} // namespace
} // namespace neat_cuda

using namespace neat_cuda;

extern "C" neat_status neat_cuda_qbackward_workspace_size(const neat_grads *grads,
                                                          const neat_args *args,
                                                          const neat_qweight *qw, int with_base,
                                                          const neat_exec *exec, size_t *bytes)
{
    // The size query sees the same grads as the compute call but no dy: a contiguous one stands in
    // (the plan carves the same whatever dy's strides; see the stage above).
    neat_tensor dy{};
    dy.dtype = qw ? qw->dtype : args->weight->dtype;
    dy.ndim = 2;
    dy.sizes[0] = args->x->sizes[0];
    dy.sizes[1] = qw ? qw->d_out : args->weight->sizes[0];
    dy.strides[0] = dy.sizes[1];
    dy.strides[1] = 1;
    dy.device = args->x->device;
    return plan_size("neat_cuda_backward", args->x->device.index, exec, bytes,
                     [&](Ctx &ctx) { return backward_plan(ctx, grads, &dy, args, qw, with_base); });
}

extern "C" neat_status neat_cuda_qbackward(const neat_grads *grads, const neat_tensor *dy,
                                           const neat_args *args, const neat_qweight *qw,
                                           int with_base, void *workspace, size_t workspace_bytes,
                                           const neat_exec *exec)
{
    return plan_run("neat_cuda_backward", args->x->device.index, exec, workspace, workspace_bytes,
                    [&](Ctx &ctx) { return backward_plan(ctx, grads, dy, args, qw, with_base); });
}

extern "C" neat_status neat_cuda_backward_workspace_size(const neat_grads *grads,
                                                         const neat_args *args, int with_base,
                                                         const neat_exec *exec, size_t *bytes)
{
    return neat_cuda_qbackward_workspace_size(grads, args, nullptr, with_base, exec, bytes);
}

extern "C" neat_status neat_cuda_backward(const neat_grads *grads, const neat_tensor *dy,
                                          const neat_args *args, int with_base, void *workspace,
                                          size_t workspace_bytes, const neat_exec *exec)
{
    return neat_cuda_qbackward(grads, dy, args, nullptr, with_base, workspace, workspace_bytes,
                               exec);
}
