/*
 * test_errors.c - every validation rule returns its status and a message naming the argument;
 * a short workspace gives NEAT_ERR_WORKSPACE; CUDA tensors in a CPU-only build give
 * NEAT_ERR_UNSUPPORTED; plus the small information functions.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "layer.h"

static void expect(neat_status got, neat_status want, const char *needle, const char *what)
{
    const char *msg = neat_last_error();
    CHECK(got == want, "%s: status %d (%s), expected %d; message: %s", what, (int)got,
          neat_status_string(got), (int)want, msg);
    CHECK(strstr(msg, needle) != NULL, "%s: message \"%s\" does not mention \"%s\"", what, msg,
          needle);
}

#define INVALID NEAT_ERR_INVALID_ARGUMENT

/* Forward with a big enough workspace, whatever the args. */
static neat_status fwd(neat_tensor *y, const neat_args *a)
{
    static char ws[1 << 20];
    return neat_linear_forward(y, a, ws, sizeof ws, NULL);
}

static neat_status bwd(int with_base, const neat_grads *g, const neat_tensor *dy,
                       const neat_args *a)
{
    static char ws[1 << 20];
    return with_base ? neat_linear_backward(g, dy, a, ws, sizeof ws, NULL)
                     : neat_adapter_backward(g, dy, a, ws, sizeof ws, NULL);
}

int main(void)
{
    layer_spec s = {5, 37, 53, 3, NEAT_ACT_RELU, 4, 1, NEAT_FLOAT32, 0, 0, 0, 1.0, 7};
    layer l;
    layer_init(&l, &s);
    neat_dtype dt = s.dtype;
    tbuf y = tb_make(dt, 5, 53, 0, NULL, 0);
    tbuf y_bad = tb_make(dt, 5, 52, 0, NULL, 0);
    tbuf m52 = tb_make(dt, 3, 52, 0, NULL, 0);
    tbuf m34 = tb_make(dt, 3, 4, 0, NULL, 0);
    tbuf f64 = tb_make(NEAT_FLOAT64, 3, 53, 0, NULL, 0);
    tbuf z = tb_make(dt, 0, 53, 0, NULL, 0);
    tbuf w0 = tb_make(dt, 0, 37, 0, NULL, 0);
    neat_args a;

    /* sanity: the valid call works */
    CHECK(fwd(&y.t, &l.args) == NEAT_OK, "valid forward: %s", neat_last_error());

    a = l.args, a.x = NULL;
    expect(fwd(&y.t, &a), INVALID, "x must not be NULL", "x NULL");
    a = l.args, a.weight = NULL;
    expect(fwd(&y.t, &a), INVALID, "weight", "weight NULL");
    a = l.args, a.A = &m52.t;
    expect(fwd(&y.t, &a), INVALID, "A must have shape (r, d_out) = (r, 53) to match weight (53, 37); got (3, 52)",
           "A shape");
    a = l.args, a.B = &m52.t;
    expect(fwd(&y.t, &a), INVALID, "B must have shape", "B shape");
    neat_tensor hid[4] = {l.hidden[0], l.hidden[1], l.hidden[2], l.hidden[3]};
    hid[1] = m34.t;
    a = l.args, a.hidden = hid;
    expect(fwd(&y.t, &a), INVALID, "hidden[1] must have shape (3, 3); got (3, 4)", "hidden[1]");
    tbuf b52 = tb_make1(dt, 52, 1, NULL, 0);
    a = l.args, a.bias = &b52.t;
    expect(fwd(&y.t, &a), INVALID, "bias", "bias shape");
    a = l.args;
    {
        static char ws[1 << 20];
        expect(neat_adapter_forward(&y.t, &a, ws, sizeof ws, NULL), INVALID, "bias must be NULL",
               "adapter with bias");
    }
    expect(fwd(&y_bad.t, &l.args), INVALID, "y must have shape", "y shape");
    expect(neat_linear_forward(NULL, &l.args, NULL, 0, NULL), INVALID, "y", "y NULL");
    a = l.args, a.num_hidden = 3;
    expect(fwd(&y.t, &a), INVALID, "num_hidden", "odd num_hidden");
    a = l.args, a.num_hidden = 10;
    expect(fwd(&y.t, &a), INVALID, "num_hidden", "num_hidden > max");
    a = l.args, a.hidden = NULL;
    expect(fwd(&y.t, &a), INVALID, "hidden must not be NULL", "hidden NULL");
    a = l.args, a.activation = (neat_activation)99;
    expect(fwd(&y.t, &a), INVALID, "activation 99 is not a neat_activation", "activation");
    a = l.args, a.scale = NAN;
    expect(fwd(&y.t, &a), INVALID, "scale", "scale NaN");
    a = l.args, a.scale = INFINITY;
    expect(fwd(&y.t, &a), INVALID, "scale", "scale inf");
    a = l.args, a.A = &f64.t;
    expect(fwd(&y.t, &a), INVALID, "A has dtype float64", "A dtype");
    {
        neat_tensor x = l.tx.t;
        x.dtype = NEAT_FLOAT64;
        a = l.args, a.x = &x;
        expect(fwd(&y.t, &a), INVALID, "x has dtype float64", "x dtype");
        x = l.tx.t, x.device.type = NEAT_DEVICE_CUDA;
        expect(fwd(&y.t, &a), INVALID, "x is on cuda:0", "x device");
        x = l.tx.t, x.strides[1] = -1;
        expect(fwd(&y.t, &a), INVALID, "x has stride -1", "x negative stride");
        x = l.tx.t, x.data = NULL;
        expect(fwd(&y.t, &a), INVALID, "x has 185 elements but its data pointer is NULL",
               "x data NULL");
        x = l.tx.t, x.ndim = 3, x.sizes[2] = 1, x.strides[2] = 1;
        expect(fwd(&y.t, &a), INVALID, "x must be 2-D", "x rank");
        neat_tensor w = l.tW.t;
        w.dtype = NEAT_BFLOAT16;
        a = l.args, a.weight = &w;
        expect(fwd(&y.t, &a), INVALID, "weight has dtype bfloat16", "weight bf16 on CPU");
        neat_tensor yz = y.t;
        yz.strides[1] = 0;
        expect(fwd(&yz, &l.args), INVALID, "output y has stride 0", "y zero stride");
    }
    a = l.args, a.A = &z.t;
    expect(fwd(&y.t, &a), INVALID, "A must have shape (r, d_out) with r >= 1", "r = 0");
    a = l.args, a.weight = &w0.t;
    expect(fwd(&y.t, &a), INVALID, "weight must have shape (d_out, d_in) with d_out >= 1",
           "d_out = 0");

    /* backward outputs */
    tbuf dx = tb_make(dt, 5, 36, 0, NULL, 0), dW = tb_make(dt, 53, 36, 0, NULL, 0);
    tbuf db = tb_make1(dt, 52, 1, NULL, 0), dA = tb_make(dt, 3, 52, 0, NULL, 0);
    tbuf dB = tb_make(dt, 52, 3, 0, NULL, 0), dH = tb_make(dt, 3, 4, 0, NULL, 0);
    tbuf db_ok = tb_make1(dt, 53, 1, NULL, 0);
    neat_grads g = {0};
    g.dx = &dx.t;
    expect(bwd(1, &g, &l.tdy.t, &l.args), INVALID, "dx must have shape", "dx shape");
    g = (neat_grads){0}, g.dweight = &dW.t;
    expect(bwd(1, &g, &l.tdy.t, &l.args), INVALID, "dweight must have shape", "dweight shape");
    g = (neat_grads){0}, g.dbias = &db.t;
    expect(bwd(1, &g, &l.tdy.t, &l.args), INVALID, "dbias must have shape", "dbias shape");
    g = (neat_grads){0}, g.dA = &dA.t;
    expect(bwd(1, &g, &l.tdy.t, &l.args), INVALID, "dA must have shape", "dA shape");
    g = (neat_grads){0}, g.dB = &dB.t;
    expect(bwd(1, &g, &l.tdy.t, &l.args), INVALID, "dB must have shape", "dB shape");
    neat_tensor dhv[4] = {dH.t, dH.t, dH.t, dH.t};
    dhv[0].data = NULL; /* not requested: not checked */
    g = (neat_grads){0}, g.dhidden = dhv;
    expect(bwd(1, &g, &l.tdy.t, &l.args), INVALID, "dhidden[1] must have shape", "dhidden[1]");
    g = (neat_grads){0}, g.dbias = &db_ok.t;
    a = l.args, a.bias = NULL;
    expect(bwd(0, &g, &l.tdy.t, &a), INVALID, "dbias must be NULL", "adapter dbias");
    g = (neat_grads){0};
    expect(bwd(1, &g, &y_bad.t, &l.args), INVALID, "dy must have shape", "dy shape");
    expect(bwd(1, NULL, &l.tdy.t, &l.args), INVALID, "grads", "grads NULL");
    expect(bwd(1, &g, NULL, &l.args), INVALID, "dy", "dy NULL");

    /* outputs sharing memory with inputs or each other */
    {
        a = l.args;
        neat_tensor ya = y.t;
        ya.data = l.tB.t.data; /* overlaps B */
        expect(fwd(&ya, &a), INVALID, "output y shares memory with input B", "y overlaps B");
        tbuf dx_ok = tb_make(dt, 5, 37, 0, NULL, 0);
        neat_grads go = {0};
        go.dx = &dx_ok.t;
        neat_tensor dxa = dx_ok.t;
        dxa.data = l.tx.t.data;
        go.dx = &dxa;
        expect(bwd(1, &go, &l.tdy.t, &l.args), INVALID, "output dx shares memory with input x",
               "dx overlaps x");
        tbuf dA2 = tb_make(dt, 3, 53, 0, NULL, 0);
        neat_tensor dB2 = dA2.t;
        dB2.sizes[0] = 53, dB2.sizes[1] = 3, dB2.strides[0] = 3;
        go = (neat_grads){0}, go.dA = &dA2.t, go.dB = &dB2;
        expect(bwd(1, &go, &l.tdy.t, &l.args), INVALID, "output dB shares memory with output dA",
               "dB overlaps dA");
        tb_free(&dx_ok), tb_free(&dA2);
    }

    /* compute_g: x and B are optional, G is checked */
    a = l.args, a.x = NULL, a.B = NULL;
    tbuf G = tb_make(dt, 3, 37, 0, NULL, 0), Gbad = tb_make(dt, 3, 36, 0, NULL, 0);
    CHECK(call_compute_g(&G.t, &a, NULL) == NEAT_OK, "compute_g without x, B: %s",
          neat_last_error());
    expect(call_compute_g(&Gbad.t, &a, NULL), INVALID, "G must have shape (r, d_in) = (3, 37)",
           "G shape");

    /* workspace */
    size_t need = 0;
    CHECK(neat_linear_forward_workspace_size(&l.args, NULL, &need) == NEAT_OK && need > 0,
          "forward workspace query");
    void *ws = malloc(need);
    expect(neat_linear_forward(&y.t, &l.args, ws, need - 1, NULL), NEAT_ERR_WORKSPACE,
           "workspace must have at least", "short forward workspace");
    expect(neat_linear_forward(&y.t, &l.args, NULL, need, NULL), NEAT_ERR_WORKSPACE, "NULL",
           "NULL forward workspace");
    CHECK(neat_linear_forward(&y.t, &l.args, ws, need, NULL) == NEAT_OK, "exact workspace: %s",
          neat_last_error());
    free(ws);
    neat_grads gall = {0};
    tbuf dA_ok = tb_make(dt, 3, 53, 0, NULL, 0);
    gall.dA = &dA_ok.t;
    CHECK(neat_linear_backward_workspace_size(&gall, &l.args, NULL, &need) == NEAT_OK,
          "backward workspace query");
    ws = malloc(need);
    expect(neat_linear_backward(&gall, &l.tdy.t, &l.args, ws, need / 2, NULL), NEAT_ERR_WORKSPACE,
           "neat_linear_backward_workspace_size", "short backward workspace");
    free(ws);
    CHECK(neat_compute_g_workspace_size(&l.args, NULL, &need) == NEAT_OK, "g workspace query");
    ws = malloc(need);
    expect(neat_compute_g(&G.t, &l.args, ws, need - 1, NULL), NEAT_ERR_WORKSPACE,
           "workspace must have at least", "short compute_g workspace");
    free(ws);
    /* more threads than the size was asked for needs more pack buffers */
    neat_exec ex8 = {NULL, NULL, 8, NULL};
    size_t need1 = 0, need8 = 0;
    neat_linear_forward_workspace_size(&l.args, NULL, &need1);
    neat_linear_forward_workspace_size(&l.args, &ex8, &need8);
    CHECK(need8 >= need1, "workspace for 8 threads (%zu) smaller than for 1 (%zu)", need8, need1);
    expect(neat_linear_forward_workspace_size(&l.args, NULL, NULL), INVALID, "bytes",
           "bytes NULL");

    /* CUDA tensors */
    if (!neat_has_cuda()) {
        layer_spec sc = s;
        layer lc;
        layer_init(&lc, &sc);
        neat_tensor *views[] = {&lc.tx.t, &lc.tW.t, &lc.tb.t, &lc.tA.t, &lc.tB.t, &lc.tdy.t};
        for (int i = 0; i < 6; i++) views[i]->device.type = NEAT_DEVICE_CUDA;
        for (int i = 0; i < sc.num_hidden; i++) lc.hidden[i].device.type = NEAT_DEVICE_CUDA;
        tbuf yc = tb_make(dt, 5, 53, 0, NULL, 0);
        yc.t.device.type = NEAT_DEVICE_CUDA;
        expect(fwd(&yc.t, &lc.args), NEAT_ERR_UNSUPPORTED, "built without CUDA", "cuda forward");
        size_t bytes;
        expect(neat_compute_g_workspace_size(&lc.args, NULL, &bytes), NEAT_ERR_UNSUPPORTED,
               "built without CUDA", "cuda compute_g size");
        tb_free(&yc);
        layer_free(&lc);
    }

    /* information functions */
    CHECK(neat_abi_version() == NEAT_ABI_VERSION, "abi version");
    for (int st = 0; st <= NEAT_ERR_INTERNAL; st++)
        CHECK(strlen(neat_status_string((neat_status)st)) > 0, "status string %d", st);
    for (int act = 0; act <= NEAT_ACT_IDENTITY; act++) {
        neat_activation back;
        CHECK(neat_activation_from_name(neat_activation_name((neat_activation)act), &back) ==
                      NEAT_OK && back == (neat_activation)act,
              "activation name round trip %d", act);
    }
    neat_activation tmp;
    expect(neat_activation_from_name("swish2", &tmp), INVALID, "swish2", "unknown activation");
    int64_t sz[3] = {2, 3, 4};
    neat_tensor t = neat_tensor_contiguous(NULL, NEAT_FLOAT32, 3, sz, (neat_device){0, 0});
    CHECK(t.strides[0] == 12 && t.strides[1] == 4 && t.strides[2] == 1, "contiguous strides");

    tb_free(&y), tb_free(&y_bad), tb_free(&m52), tb_free(&m34), tb_free(&f64), tb_free(&z);
    tb_free(&w0), tb_free(&b52), tb_free(&dx), tb_free(&dW), tb_free(&db), tb_free(&dA);
    tb_free(&dB), tb_free(&dH), tb_free(&db_ok), tb_free(&G), tb_free(&Gbad), tb_free(&dA_ok);
    layer_free(&l);
    return check_exit("test_errors");
}
