/*
 * test_threads.c - results must not depend on the thread count: forward, backward and
 * compute_g with num_threads 1, 2, 3, 7 (a pthread parallel_for) and with a hook that runs the
 * chunks in reverse order are compared bit for bit (memcmp) with the sequential run.
 */
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "layer.h"

static void reverse_for(int64_t begin, int64_t end, int64_t grain, neat_parallel_body body,
                        void *ctx, void *user)
{
    (void)grain, (void)user;
    for (int64_t i = end - 1; i >= begin; i--) body(i, i + 1, ctx);
}

typedef struct outputs {
    tbuf y, ya, G, dx, dW, db, dA, dB, dH[NEAT_MAX_HIDDEN];
} outputs;

static void run_all(layer *l, const neat_exec *exec, outputs *o)
{
    const layer_spec *s = &l->spec;
    neat_dtype dt = s->dtype;
    o->y = tb_make(dt, s->N, s->d_out, 0, NULL, 0);
    o->ya = tb_make(dt, s->N, s->d_out, 0, NULL, 0);
    o->G = tb_make(dt, s->r, s->d_in, 0, NULL, 0);
    o->dx = tb_make(dt, s->N, s->d_in, 0, NULL, 0);
    o->dW = tb_make(dt, s->d_out, s->d_in, 0, NULL, 0);
    o->db = tb_make1(dt, s->d_out, 1, NULL, 0);
    o->dA = tb_make(dt, s->r, s->d_out, 0, NULL, 0);
    o->dB = tb_make(dt, s->d_out, s->r, 0, NULL, 0);
    neat_tensor dhv[NEAT_MAX_HIDDEN];
    for (int i = 0; i < s->num_hidden; i++) {
        o->dH[i] = tb_make(dt, s->r, s->r, 0, NULL, 0);
        dhv[i] = o->dH[i].t;
    }
    neat_args adapter = l->args;
    adapter.bias = NULL;
    CHECK(call_forward(1, &o->y.t, &l->args, exec) == NEAT_OK, "%s", neat_last_error());
    CHECK(call_forward(0, &o->ya.t, &adapter, exec) == NEAT_OK, "%s", neat_last_error());
    CHECK(call_compute_g(&o->G.t, &l->args, exec) == NEAT_OK, "%s", neat_last_error());
    neat_grads g = {&o->dx.t, &o->dW.t, &o->db.t, &o->dA.t, &o->dB.t, dhv};
    CHECK(call_backward(1, &g, &l->tdy.t, &l->args, exec) == NEAT_OK, "%s", neat_last_error());
}

static int same_bits(const tbuf *a, const tbuf *b)
{
    size_t es = a->t.dtype == NEAT_FLOAT64 ? 8 : 4;
    return a->storage_elems == b->storage_elems &&
           memcmp(a->storage, b->storage, (size_t)a->storage_elems * es) == 0;
}

static void free_all(outputs *o, int nh)
{
    tb_free(&o->y), tb_free(&o->ya), tb_free(&o->G), tb_free(&o->dx), tb_free(&o->dW);
    tb_free(&o->db), tb_free(&o->dA), tb_free(&o->dB);
    for (int i = 0; i < nh; i++) tb_free(&o->dH[i]);
}

int main(void)
{
    for (int d = 0; d < 2; d++) {
        /* big enough for several GEMM tiles (M > MC) and all eight column-block groups */
        layer_spec s = {350, 520, 100, 8, NEAT_ACT_SILU, 4, 1, d ? NEAT_FLOAT64 : NEAT_FLOAT32,
                        LAYOUT_PADDED, LAYOUT_CONTIG, LAYOUT_TRANSPOSED, 0.5, 77};
        layer l;
        layer_init(&l, &s);
        outputs base;
        run_all(&l, NULL, &base);
        static const int counts[] = {1, 2, 3, 7, 5};
        for (int c = 0; c < 5; c++) {
            int threads = counts[c];
            neat_exec ex = {c == 4 ? reverse_for : pthread_parallel_for, &threads, threads, NULL, 0, NULL, NULL, NULL};
            outputs o;
            run_all(&l, &ex, &o);
            const char *how = c == 4 ? "reverse-order hook" : "pthread hook";
#define SAME(f) CHECK(same_bits(&base.f, &o.f), "%s: " #f " differs with %d threads (%s)", \
                      d ? "f64" : "f32", threads, how)
            SAME(y);
            SAME(ya);
            SAME(G);
            SAME(dx);
            SAME(dW);
            SAME(db);
            SAME(dA);
            SAME(dB);
            for (int i = 0; i < s.num_hidden; i++) SAME(dH[i]);
#undef SAME
            free_all(&o, s.num_hidden);
        }
        free_all(&base, s.num_hidden);
        layer_free(&l);
    }
    return check_exit("test_threads");
}
