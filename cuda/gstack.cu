// gstack.cu - fused hidden-stack kernels (forward and backward) and their launchers.
#include "gstack.cuh"

#include <type_traits>

#include "activation.cuh"
#include "blas.cuh"
#include "elementwise.cuh"
#include "launch.cuh"

namespace neat_cuda {

// ---- kernels ----------------------------------------------------------------------------------
// Element (i, j) of an (r, n) matrix is t = i * n + j: consecutive threads take consecutive
// columns (coalesced), and a warp shares the row i of H it reads (a broadcast). The stack's own
// (r, n) buffers all have row stride ld; H and `out` have strides of their own.

// out[i, j] = act(Z[i, j]); out in any dtype and strides.
template <typename Acc, typename TO>
__global__ void act_forward_kernel(const Acc *Z, int64_t r, int64_t n, int64_t ld, TO *out,
                                   int64_t ors, int64_t ocs, neat_activation act)
{
    const int64_t total = r * n;
    for (int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; t < total;
         t += static_cast<int64_t>(gridDim.x) * blockDim.x) {
        const int64_t i = t / n, j = t - i * n;
        store(out, i * ors + j * ocs, act_forward(act, Z[i * ld + j]));
    }
}

// Z = H Gprev;  G = act(Z) (+ res).  Z is stored only when Zout != nullptr.
template <typename Acc, typename P>
__global__ void layer_forward_kernel(const Acc *Gprev, const P *H, int64_t hrs, int64_t hcs,
                                     const Acc *res, Acc *Zout, Acc *Gout, int64_t r, int64_t n,
                                     int64_t ld, neat_activation act)
{
    const int64_t total = r * n;
    for (int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; t < total;
         t += static_cast<int64_t>(gridDim.x) * blockDim.x) {
        const int64_t i = t / n, j = t - i * n, e = i * ld + j;
        Acc z = 0;
        for (int64_t k = 0; k < r; ++k) z += load<Acc>(H, i * hrs + k * hcs) * Gprev[k * ld + j];
        if (Zout) Zout[e] = z;
        Acc g = act_forward(act, z);
        if (res) g += res[e];
        Gout[e] = g;
    }
}

// dZ = dG * act'(Z)
template <typename Acc>
__global__ void act_backward_kernel(const Acc *dG, const Acc *Z, Acc *dZ, int64_t r, int64_t n,
                                    int64_t ld, neat_activation act)
{
    const int64_t total = r * n;
    for (int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; t < total;
         t += static_cast<int64_t>(gridDim.x) * blockDim.x) {
        const int64_t i = t / n, e = i * ld + (t - i * n);
        dZ[e] = dG[e] * act_derivative(act, Z[e]);
    }
}

// dGprev = H^T dZ (+ res);  dZprev = dGprev * act'(Zprev).  dGprev stored only when non-null.
template <typename Acc, typename P>
__global__ void layer_backward_kernel(const Acc *dZ, const P *H, int64_t hrs, int64_t hcs,
                                      const Acc *res, const Acc *Zprev, Acc *dGprev, Acc *dZprev,
                                      int64_t r, int64_t n, int64_t ld, neat_activation act)
{
    const int64_t total = r * n;
    for (int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; t < total;
         t += static_cast<int64_t>(gridDim.x) * blockDim.x) {
        const int64_t i = t / n, j = t - i * n, e = i * ld + j;
        Acc g = res ? res[e] : Acc(0);
        for (int64_t k = 0; k < r; ++k) g += load<Acc>(H, k * hrs + i * hcs) * dZ[k * ld + j];
        if (dGprev) dGprev[e] = g;
        dZprev[e] = g * act_derivative(act, Zprev[e]);
    }
}

// ---- launchers --------------------------------------------------------------------------------

namespace {

template <typename Acc>
Acc *ptr(const Mat &m)
{
    return static_cast<Acc *>(m.p);
}

template <typename Acc>
neat_status act_forward_launch(Ctx &ctx, Mat Z, Mat out, neat_activation act)
{
    return dispatch_dtype(out.dt, [&](auto tag_TO) {
        using TO = typename decltype(tag_TO)::type;
        return launch(ctx, "act_forward_kernel", act_forward_kernel<Acc, TO>, numel(Z), ptr<Acc>(Z),
                      Z.rows, Z.cols, Z.rs, static_cast<TO *>(out.p), out.rs, out.cs, act);
    });
}

template <typename Acc>
neat_status layer_forward_launch(Ctx &ctx, Mat Gprev, const Mat &H, const Acc *res, Acc *Zout,
                                 Mat Gout, neat_activation act)
{
    return dispatch_dtype(H.dt, [&](auto tag_P) {
        using P = typename decltype(tag_P)::type;
        return launch(ctx, "layer_forward_kernel", layer_forward_kernel<Acc, P>, numel(Gout),
                      ptr<Acc>(Gprev), static_cast<const P *>(H.p), H.rs, H.cs, res, Zout,
                      ptr<Acc>(Gout), Gout.rows, Gout.cols, Gout.rs, act);
    });
}

template <typename Acc>
neat_status act_backward_launch(Ctx &ctx, Mat dG, Mat Z, Mat dZ, neat_activation act)
{
    return launch(ctx, "act_backward_kernel", act_backward_kernel<Acc>, numel(dZ), ptr<Acc>(dG),
                  ptr<Acc>(Z), ptr<Acc>(dZ), dZ.rows, dZ.cols, dZ.rs, act);
}

template <typename Acc>
neat_status layer_backward_launch(Ctx &ctx, Mat dZ, const Mat &H, const Acc *res, Mat Zprev,
                                  Acc *dGprev, Mat dZprev, neat_activation act)
{
    return dispatch_dtype(H.dt, [&](auto tag_P) {
        using P = typename decltype(tag_P)::type;
        return launch(ctx, "layer_backward_kernel", layer_backward_kernel<Acc, P>, numel(dZprev),
                      ptr<Acc>(dZ), static_cast<const P *>(H.p), H.rs, H.cs, res, ptr<Acc>(Zprev),
                      dGprev, ptr<Acc>(dZprev), dZprev.rows, dZprev.cols, dZprev.rs, act);
    });
}

template <typename Acc>
neat_status stack_forward_t(Ctx &ctx, const neat_args *args, const Mat *H, Mat Z0, Mat out,
                            bool keep, Stack *st)
{
    const int nh = args->num_hidden, k = nh / 2;
    const int64_t r = Z0.rows, n = Z0.cols;
    const neat_dtype acc = Z0.dt;
    st->num_hidden = nh;
    st->Z[0] = Z0;
    if (nh == 0) {
        if (ctx.dry || numel(out) == 0) return NEAT_OK;
        return act_forward_launch<Acc>(ctx, Z0, out, args->activation);
    }
    for (int l = 0; l <= nh; ++l) st->G[l] = ctx.scratch(acc, r, n);
    for (int l = 1; l <= nh; ++l) st->Z[l] = keep ? ctx.scratch(acc, r, n) : Mat{};
    if (ctx.dry || r * n == 0) return NEAT_OK;
    NEAT_CUDA_TRY(act_forward_launch<Acc>(ctx, Z0, st->G[0], args->activation));
    for (int l = 1; l <= nh; ++l) {
        // decoder l = k + j adds the G pushed by encoder k + 1 - j, which is level 2k - l
        const Acc *res = l > k ? ptr<Acc>(st->G[nh - l]) : nullptr;
        NEAT_CUDA_TRY(layer_forward_launch<Acc>(ctx, st->G[l - 1], H[l - 1], res,
                                                keep ? ptr<Acc>(st->Z[l]) : nullptr, st->G[l],
                                                args->activation));
    }
    return launch_convert(ctx, out, st->G[nh]);
}

template <typename Acc>
neat_status stack_backward_t(Ctx &ctx, const neat_args *args, const Mat *H, const neat_grads *grads,
                             const Stack &st, Mat dG, Mat dZ0)
{
    const int nh = st.num_hidden, k = nh / 2;
    const int64_t r = dG.rows, n = dG.cols;
    const neat_dtype acc = dG.dt;
    if (nh == 0) {
        if (ctx.dry || r * n == 0) return NEAT_OK;
        return act_backward_launch<Acc>(ctx, dG, st.Z[0], dZ0, args->activation);
    }
    // dGs[l]: gradient of level l's output, kept for the levels a residual reads later
    // (decoder outputs k+1 .. 2k-1; level 2k is dG itself). dZ ping-pongs between two buffers.
    Mat dGs[NEAT_MAX_HIDDEN + 1];
    dGs[nh] = dG;
    for (int l = k + 1; l < nh; ++l) dGs[l] = ctx.scratch(acc, r, n);
    Mat dZbuf[2] = {ctx.scratch(acc, r, n), ctx.scratch(acc, r, n)};
    Mat dZcur = dZbuf[0];
    if (!ctx.dry && r * n > 0)
        NEAT_CUDA_TRY(act_backward_launch<Acc>(ctx, dG, st.Z[nh], dZcur, args->activation));
    for (int L = nh; L >= 1; --L) {
        const neat_tensor *dh = grads && grads->dhidden ? &grads->dhidden[L - 1] : nullptr;
        if (dh && dh->data) { // dH_L = dZ_L G_{L-1}^T, reduced over d_in by cuBLAS (deterministic)
            Output o;
            NEAT_CUDA_TRY(begin_output(ctx, mat_of(dh), acc, &o));
            NEAT_CUDA_TRY(gemm(ctx, o.work, dZcur, transposed(st.G[L - 1]), 1.0, 0.0));
            NEAT_CUDA_TRY(finish_output(ctx, o));
        }
        // level m = L - 1 < k also receives decoder (2k - m)'s output gradient (the residual)
        const int m = L - 1;
        const Acc *res = m < k ? ptr<Acc>(dGs[nh - m]) : nullptr;
        Acc *dGm = m > k ? ptr<Acc>(dGs[m]) : nullptr;
        Mat dZnext = m == 0 ? dZ0 : dZbuf[(nh - m) & 1];
        if (!ctx.dry && r * n > 0)
            NEAT_CUDA_TRY(layer_backward_launch<Acc>(ctx, dZcur, H[L - 1], res, st.Z[m], dGm,
                                                     dZnext, args->activation));
        dZcur = dZnext;
    }
    return NEAT_OK;
}

} // namespace

neat_status prepare_hidden(Ctx &ctx, const neat_args *args, neat_dtype dt, Mat *H)
{
    for (int i = 0; i < args->num_hidden; ++i) {
        const Mat h = mat_of(&args->hidden[i]);
        if (h.dt == dt) {
            H[i] = h;
        } else {
            H[i] = ctx.scratch(dt, h.rows, h.cols);
            NEAT_CUDA_TRY(launch_convert(ctx, H[i], h));
        }
    }
    return NEAT_OK;
}

neat_status stack_forward(Ctx &ctx, const neat_args *args, const Mat *H, Mat Z0, Mat out, bool keep,
                          Stack *st)
{
    return Z0.dt == NEAT_FLOAT64 ? stack_forward_t<double>(ctx, args, H, Z0, out, keep, st)
                                 : stack_forward_t<float>(ctx, args, H, Z0, out, keep, st);
}

neat_status stack_backward(Ctx &ctx, const neat_args *args, const Mat *H, const neat_grads *grads,
                           const Stack &st, Mat dG, Mat dZ0)
{
    return dG.dt == NEAT_FLOAT64 ? stack_backward_t<double>(ctx, args, H, grads, st, dG, dZ0)
                                 : stack_backward_t<float>(ctx, args, H, grads, st, dG, dZ0);
}

} // namespace neat_cuda
