/*
 * layer.c - random test layers (see layer.h).
 */
#include "layer.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

static double *rand_vec(uint64_t *rng, int64_t n, double amp, neat_dtype dt)
{
    double *v = xmalloc((size_t)(n > 0 ? n : 1) * sizeof *v);
    fill_random(rng, v, n, -amp, amp);
    round_to(dt, v, n);
    return v;
}

void layer_init(layer *l, const layer_spec *s)
{
    uint64_t rng = s->seed;
    neat_dtype dt = s->dtype;
    l->spec = *s;
    /* scaled so every pre-activation is O(1): activations stay in their interesting range. sin2pi
     * turns once per unit of z, so its unit is 1 / (2 pi): at the other activations' scale a deep
     * stack of it is too ill-conditioned for float32 (tests/python/reference.py, INPUT_UNIT). */
    double unit = s->act == NEAT_ACT_SIN2PI ? 0.15915494309189533577 : 1.0;
    l->x = rand_vec(&rng, s->N * s->d_in, 1.0, dt);
    l->W = rand_vec(&rng, s->d_out * s->d_in, 1.0, dt);
    l->b = s->bias ? rand_vec(&rng, s->d_out, 1.0, dt) : NULL;
    l->A = rand_vec(&rng, s->r * s->d_out, unit * 2.0 / sqrt((double)s->d_out), dt);
    l->B = rand_vec(&rng, s->d_out * s->r, 1.0, dt);
    for (int i = 0; i < s->num_hidden; i++)
        l->H[i] = rand_vec(&rng, s->r * s->r, unit * 1.5 / sqrt((double)s->r), dt);
    l->dy = rand_vec(&rng, s->N * s->d_out, 1.0, dt);

    l->tx = tb_make(dt, s->N, s->d_in, s->layout_x, l->x, 0);
    l->tW = tb_make(dt, s->d_out, s->d_in, s->layout_w, l->W, 0);
    l->tA = tb_make(dt, s->r, s->d_out, s->layout_a, l->A, 0);
    l->tB = tb_make(dt, s->d_out, s->r, (s->layout_a + 1) % LAYOUT_COUNT, l->B, 0);
    l->tdy = tb_make(dt, s->N, s->d_out, (s->layout_x + 2) % LAYOUT_COUNT, l->dy, 0);
    if (s->bias)
        l->tb = tb_make1(dt, s->d_out, s->layout_x == LAYOUT_PADDED ? 2 : 1, l->b, 0);
    for (int i = 0; i < s->num_hidden; i++) {
        l->tH[i] = tb_make(dt, s->r, s->r, (i + s->layout_a) % LAYOUT_COUNT, l->H[i], 0);
        l->hidden[i] = l->tH[i].t;
    }
    neat_args a = {0};
    a.x = &l->tx.t;
    a.weight = &l->tW.t;
    a.bias = s->bias ? &l->tb.t : NULL;
    a.A = &l->tA.t;
    a.B = &l->tB.t;
    a.hidden = s->num_hidden ? l->hidden : NULL;
    a.num_hidden = s->num_hidden;
    a.activation = s->act;
    a.scale = s->scale;
    l->args = a;

    ref_problem r = {0};
    r.N = s->N, r.d_in = s->d_in, r.d_out = s->d_out, r.r = s->r;
    r.num_hidden = s->num_hidden;
    r.act = s->act;
    r.scale = s->scale;
    r.x = l->x, r.W = l->W, r.b = l->b, r.A = l->A, r.B = l->B;
    for (int i = 0; i < s->num_hidden; i++) r.H[i] = l->H[i];
    l->ref = r;
}

void layer_free(layer *l)
{
    free(l->x), free(l->W), free(l->b), free(l->A), free(l->B), free(l->dy);
    tb_free(&l->tx), tb_free(&l->tW), tb_free(&l->tA), tb_free(&l->tB), tb_free(&l->tdy);
    if (l->spec.bias)
        tb_free(&l->tb);
    for (int i = 0; i < l->spec.num_hidden; i++) free(l->H[i]), tb_free(&l->tH[i]);
}

void layer_describe(const layer_spec *s, char *buf, size_t n)
{
    snprintf(buf, n,
             "%s N=%lld d_in=%lld d_out=%lld r=%lld act=%s hidden=%d bias=%d layouts x%d w%d a%d "
             "scale=%g",
             s->dtype == NEAT_FLOAT64 ? "f64" : "f32", (long long)s->N, (long long)s->d_in,
             (long long)s->d_out, (long long)s->r, neat_activation_name(s->act), s->num_hidden,
             s->bias, s->layout_x, s->layout_w, s->layout_a, s->scale);
}

neat_status call_forward(int with_base, neat_tensor *y, const neat_args *args,
                         const neat_exec *exec)
{
    size_t bytes = 0;
    neat_status st = with_base ? neat_linear_forward_workspace_size(args, exec, &bytes)
                               : neat_adapter_forward_workspace_size(args, exec, &bytes);
    if (st != NEAT_OK)
        return st;
    void *ws = xmalloc(bytes);
    st = with_base ? neat_linear_forward(y, args, ws, bytes, exec)
                   : neat_adapter_forward(y, args, ws, bytes, exec);
    free(ws);
    return st;
}

neat_status call_backward(int with_base, const neat_grads *g, const neat_tensor *dy,
                          const neat_args *args, const neat_exec *exec)
{
    size_t bytes = 0;
    neat_status st = with_base ? neat_linear_backward_workspace_size(g, args, exec, &bytes)
                               : neat_adapter_backward_workspace_size(g, args, exec, &bytes);
    if (st != NEAT_OK)
        return st;
    void *ws = xmalloc(bytes);
    st = with_base ? neat_linear_backward(g, dy, args, ws, bytes, exec)
                   : neat_adapter_backward(g, dy, args, ws, bytes, exec);
    free(ws);
    return st;
}

neat_status call_compute_g(neat_tensor *G, const neat_args *args, const neat_exec *exec)
{
    size_t bytes = 0;
    neat_status st = neat_compute_g_workspace_size(args, exec, &bytes);
    if (st != NEAT_OK)
        return st;
    void *ws = xmalloc(bytes);
    st = neat_compute_g(G, args, ws, bytes, exec);
    free(ws);
    return st;
}
