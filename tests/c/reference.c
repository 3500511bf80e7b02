/*
 * reference.c - docs/design.md §1.1 and §1.2 restated with plain loops in float64 (tests only).
 * Deliberately literal: the hidden stack uses an explicit push/pop list and the residual
 * gradients are routed through that list, not the way ops/gstack.c organises them.
 */
#include "reference.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define REF_PI 3.14159265358979323846

double ref_act(neat_activation act, double z)
{
    switch (act) {
    case NEAT_ACT_RELU: return z > 0 ? z : (z <= 0 ? 0.0 : z); /* NaN stays NaN */
    case NEAT_ACT_SIN: return sin(z);
    case NEAT_ACT_GELU: return z * 0.5 * erfc(-z / sqrt(2.0));
    case NEAT_ACT_GELU_TANH:
        return 0.5 * z * (1.0 + tanh(sqrt(2.0 / REF_PI) * (z + 0.044715 * pow(z, 3))));
    case NEAT_ACT_SILU: return z / (1.0 + exp(-z));
    case NEAT_ACT_TANH: return tanh(z);
    case NEAT_ACT_IDENTITY: return z;
    case NEAT_ACT_SIN2PI: return sin(2 * REF_PI * z);
    }
    return NAN;
}

double ref_act_grad(neat_activation act, double z)
{
    switch (act) {
    case NEAT_ACT_RELU: return z > 0 ? 1.0 : 0.0;
    case NEAT_ACT_SIN: return cos(z);
    case NEAT_ACT_GELU: return 0.5 * erfc(-z / sqrt(2.0)) + z * exp(-z * z / 2) / sqrt(2 * REF_PI);
    case NEAT_ACT_GELU_TANH: {
        double c = sqrt(2.0 / REF_PI), u = c * (z + 0.044715 * z * z * z), t = tanh(u);
        double sech2 = 1.0 - t * t;
        return 0.5 * (1.0 + t) + 0.5 * z * sech2 * c * (1.0 + 3 * 0.044715 * z * z);
    }
    case NEAT_ACT_SILU: {
        double sg = 1.0 / (1.0 + exp(-z));
        return sg + z * sg * (1.0 - sg);
    }
    case NEAT_ACT_TANH: return 1.0 / (cosh(z) * cosh(z));
    case NEAT_ACT_IDENTITY: return 1.0;
    case NEAT_ACT_SIN2PI: return 2 * REF_PI * cos(2 * REF_PI * z);
    }
    return NAN;
}

/* C (M, N) = op(A) op(B) with A (M, K) or, if ta, A stored (K, M); same for B. */
static void mm(double *C, const double *A, int ta, const double *B, int tb, int64_t M, int64_t N,
               int64_t K)
{
    for (int64_t i = 0; i < M; i++)
        for (int64_t j = 0; j < N; j++) {
            double s = 0;
            for (int64_t k = 0; k < K; k++)
                s += (ta ? A[k * M + i] : A[i * K + k]) * (tb ? B[j * K + k] : B[k * N + j]);
            C[i * N + j] = s;
        }
}

static double *dup(const double *v, int64_t n)
{
    double *d = malloc((size_t)(n > 0 ? n : 1) * sizeof *d);
    if (n > 0)
        memcpy(d, v, (size_t)n * sizeof *d);
    return d;
}

static double *zeros(int64_t n)
{
    return calloc((size_t)(n > 0 ? n : 1), sizeof(double));
}

/* What the forward of the stack leaves for its backward. */
typedef struct ref_trace {
    double *Z[NEAT_MAX_HIDDEN + 1]; /* pre-activations, layer 0 = A W */
    double *in[NEAT_MAX_HIDDEN + 1]; /* input of hidden layer l (1..2k) */
    double *G;                       /* the result */
} ref_trace;

static void ref_stack_forward(const ref_problem *p, ref_trace *t)
{
    int64_t r = p->r, n = p->r * p->d_in;
    int k = p->num_hidden / 2;
    double *stack[NEAT_MAX_HIDDEN];
    int top = 0;
    t->Z[0] = zeros(n);
    mm(t->Z[0], p->A, 0, p->W, 0, r, p->d_in, p->d_out);
    double *G = zeros(n);
    for (int64_t i = 0; i < n; i++) G[i] = ref_act(p->act, t->Z[0][i]);
    for (int l = 1; l <= p->num_hidden; l++) {
        t->in[l] = dup(G, n);
        t->Z[l] = zeros(n);
        mm(t->Z[l], p->H[l - 1], 0, G, 0, r, p->d_in, r);
        if (l <= k) { /* encoder: push its input */
            stack[top++] = t->in[l];
            for (int64_t i = 0; i < n; i++) G[i] = ref_act(p->act, t->Z[l][i]);
        } else { /* decoder: add what the matching encoder pushed */
            const double *skip = stack[--top];
            for (int64_t i = 0; i < n; i++) G[i] = ref_act(p->act, t->Z[l][i]) + skip[i];
        }
    }
    t->G = G;
}

static void ref_trace_free(ref_trace *t, int num_hidden)
{
    free(t->Z[0]);
    for (int l = 1; l <= num_hidden; l++) free(t->Z[l]), free(t->in[l]);
    free(t->G);
}

void ref_compute_g(const ref_problem *p, double *G)
{
    ref_trace t;
    ref_stack_forward(p, &t);
    memcpy(G, t.G, (size_t)(p->r * p->d_in) * sizeof *G);
    ref_trace_free(&t, p->num_hidden);
}

void ref_forward(const ref_problem *p, double *y_base, double *y_adapter)
{
    int64_t N = p->N, d_in = p->d_in, d_out = p->d_out, r = p->r;
    if (y_base) {
        mm(y_base, p->x, 0, p->W, 1, N, d_out, d_in);
        if (p->b)
            for (int64_t i = 0; i < N; i++)
                for (int64_t o = 0; o < d_out; o++) y_base[i * d_out + o] += p->b[o];
    }
    if (y_adapter) {
        ref_trace t;
        ref_stack_forward(p, &t);
        double *U = zeros(N * r);
        mm(U, p->x, 0, t.G, 1, N, r, d_in);
        mm(y_adapter, U, 0, p->B, 1, N, d_out, r);
        for (int64_t i = 0; i < N * d_out; i++) y_adapter[i] *= p->scale;
        free(U);
        ref_trace_free(&t, p->num_hidden);
    }
}

void ref_backward(const ref_problem *p, const double *dy, const ref_grads *g)
{
    int64_t N = p->N, d_in = p->d_in, d_out = p->d_out, r = p->r, n = r * d_in;
    int k = p->num_hidden / 2;
    ref_trace t;
    ref_stack_forward(p, &t);
    double *U = zeros(N * r), *dU = zeros(N * r);
    mm(U, p->x, 0, t.G, 1, N, r, d_in);
    mm(dU, dy, 0, p->B, 0, N, r, d_out);
    for (int64_t i = 0; i < N * r; i++) dU[i] *= p->scale;
    if (g->dB) {
        mm(g->dB, dy, 1, U, 0, d_out, r, N);
        for (int64_t i = 0; i < d_out * r; i++) g->dB[i] *= p->scale;
    }
    if (g->dx_base)
        mm(g->dx_base, dy, 0, p->W, 0, N, d_in, d_out);
    if (g->dx_adapter)
        mm(g->dx_adapter, dU, 0, t.G, 0, N, d_in, r);
    if (g->dW_base)
        mm(g->dW_base, dy, 1, p->x, 0, d_out, d_in, N);
    if (g->db)
        for (int64_t o = 0; o < d_out; o++) {
            double s = 0;
            for (int64_t i = 0; i < N; i++) s += dy[i * d_out + o];
            g->db[o] = s;
        }

    /* back through the stack; dskip[i] collects what decoders send to encoder i's input */
    double *dG = zeros(n), *dZ = zeros(n), *dskip[NEAT_MAX_HIDDEN + 1];
    mm(dG, dU, 1, p->x, 0, r, d_in, N);
    for (int l = p->num_hidden; l >= 1; l--) {
        if (l > k) /* decoder j = l - k popped the push of encoder k + 1 - j */
            dskip[k + 1 - (l - k)] = dup(dG, n);
        for (int64_t i = 0; i < n; i++) dZ[i] = dG[i] * ref_act_grad(p->act, t.Z[l][i]);
        if (g->dH[l - 1])
            mm(g->dH[l - 1], dZ, 0, t.in[l], 1, r, r, d_in);
        mm(dG, p->H[l - 1], 1, dZ, 0, r, d_in, r);
        if (l <= k) {
            for (int64_t i = 0; i < n; i++) dG[i] += dskip[l][i];
            free(dskip[l]);
        }
    }
    for (int64_t i = 0; i < n; i++) dZ[i] = dG[i] * ref_act_grad(p->act, t.Z[0][i]);
    if (g->dA)
        mm(g->dA, dZ, 0, p->W, 1, r, d_out, d_in);
    if (g->dW_adapter)
        mm(g->dW_adapter, p->A, 1, dZ, 0, d_out, d_in, r);
    free(dG), free(dZ), free(U), free(dU);
    ref_trace_free(&t, p->num_hidden);
}
