/*
 * example.c - a NEAT layer through the plain C API (shim/neat.h), no PyTorch:
 * forward and backward of y = x W^T + b + s U B^T with two hidden layers, workspaces from
 * malloc, then y[0..3] and the gradient norms.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "neat.h"

enum { N = 4, D_IN = 16, D_OUT = 12, R = 2, NUM_HIDDEN = 2 };

static float *filled(size_t n, unsigned seed, float amp)
{
    float *v = malloc(n * sizeof *v);
    for (size_t i = 0; i < n; i++) {
        seed = seed * 1103515245u + 12345u;
        v[i] = amp * ((float)(seed >> 8) / 16777216.0f - 0.5f);
    }
    return v;
}

static double norm(const float *v, size_t n)
{
    double s = 0;
    for (size_t i = 0; i < n; i++) s += (double)v[i] * v[i];
    return sqrt(s);
}

static int check(neat_status st, const char *what)
{
    if (st != NEAT_OK)
        fprintf(stderr, "%s failed: %s: %s\n", what, neat_status_string(st), neat_last_error());
    return st != NEAT_OK;
}

int main(void)
{
    const neat_device cpu = {NEAT_DEVICE_CPU, 0};
    float *x = filled(N * D_IN, 1, 2), *W = filled(D_OUT * D_IN, 2, 1), *b = filled(D_OUT, 3, 1);
    float *A = filled(R * D_OUT, 4, 1), *B = filled(D_OUT * R, 5, 1), *dy = filled(N * D_OUT, 6, 1);
    float *H[NUM_HIDDEN] = {filled(R * R, 7, 1), filled(R * R, 8, 1)};
    float *y = malloc(N * D_OUT * sizeof *y), *dx = malloc(N * D_IN * sizeof *dx);
    float *dA = malloc(R * D_OUT * sizeof *dA), *dB = malloc(D_OUT * R * sizeof *dB);
    float *dH[NUM_HIDDEN] = {malloc(R * R * sizeof(float)), malloc(R * R * sizeof(float))};

    const int64_t sx[2] = {N, D_IN}, sw[2] = {D_OUT, D_IN}, sb[1] = {D_OUT};
    const int64_t sa[2] = {R, D_OUT}, sB[2] = {D_OUT, R}, sh[2] = {R, R}, sy[2] = {N, D_OUT};
    neat_tensor tx = neat_tensor_contiguous(x, NEAT_FLOAT32, 2, sx, cpu);
    neat_tensor tw = neat_tensor_contiguous(W, NEAT_FLOAT32, 2, sw, cpu);
    neat_tensor tb = neat_tensor_contiguous(b, NEAT_FLOAT32, 1, sb, cpu);
    neat_tensor ta = neat_tensor_contiguous(A, NEAT_FLOAT32, 2, sa, cpu);
    neat_tensor tB = neat_tensor_contiguous(B, NEAT_FLOAT32, 2, sB, cpu);
    neat_tensor th[NUM_HIDDEN], tdh[NUM_HIDDEN];
    for (int i = 0; i < NUM_HIDDEN; i++) {
        th[i] = neat_tensor_contiguous(H[i], NEAT_FLOAT32, 2, sh, cpu);
        tdh[i] = neat_tensor_contiguous(dH[i], NEAT_FLOAT32, 2, sh, cpu);
    }
    neat_tensor ty = neat_tensor_contiguous(y, NEAT_FLOAT32, 2, sy, cpu);
    neat_tensor tdy = neat_tensor_contiguous(dy, NEAT_FLOAT32, 2, sy, cpu);
    neat_tensor tdx = neat_tensor_contiguous(dx, NEAT_FLOAT32, 2, sx, cpu);
    neat_tensor tdA = neat_tensor_contiguous(dA, NEAT_FLOAT32, 2, sa, cpu);
    neat_tensor tdB = neat_tensor_contiguous(dB, NEAT_FLOAT32, 2, sB, cpu);

    neat_args args = {&tx, &tw, &tb, &ta, &tB, th, NUM_HIDDEN, NEAT_ACT_GELU, 0.5};
    /* the frozen weight and bias need no gradient: dweight and dbias stay NULL */
    neat_grads grads = {&tdx, NULL, NULL, &tdA, &tdB, tdh};
    neat_exec exec = {0}; /* sequential */

    size_t fwd_bytes = 0, bwd_bytes = 0;
    if (check(neat_linear_forward_workspace_size(&args, &exec, &fwd_bytes), "forward size") ||
        check(neat_linear_backward_workspace_size(&grads, &args, &exec, &bwd_bytes),
              "backward size"))
        return 1;
    void *fwd_ws = malloc(fwd_bytes), *bwd_ws = malloc(bwd_bytes);
    if (check(neat_linear_forward(&ty, &args, fwd_ws, fwd_bytes, &exec), "forward") ||
        check(neat_linear_backward(&grads, &tdy, &args, bwd_ws, bwd_bytes, &exec), "backward"))
        return 1;

    printf("torch-neat C example (ABI %d, activation %s, CUDA %s)\n", neat_abi_version(),
           neat_activation_name(args.activation), neat_has_cuda() ? "yes" : "no");
    printf("y[0..3] = %.6f %.6f %.6f %.6f\n", y[0], y[1], y[2], y[3]);
    printf("|dx| = %.6f  |dA| = %.6f  |dB| = %.6f  |dH1| = %.6f  |dH2| = %.6f\n",
           norm(dx, N * D_IN), norm(dA, R * D_OUT), norm(dB, D_OUT * R), norm(dH[0], R * R),
           norm(dH[1], R * R));

    free(fwd_ws), free(bwd_ws);
    free(x), free(W), free(b), free(A), free(B), free(dy), free(y), free(dx), free(dA), free(dB);
    for (int i = 0; i < NUM_HIDDEN; i++) free(H[i]), free(dH[i]);
    return 0;
}
