/*
 * test_errors.c - every validation rule returns its status and a message naming the argument;
 * a short workspace gives NEAT_ERR_WORKSPACE; CUDA tensors in a CPU-only build give
 * NEAT_ERR_UNSUPPORTED; hostile-but-well-formed views (overflowing sizes and strides, aliasing
 * outputs, a workspace over a tensor, out-of-range enums) are refused without UB (the
 * sanitizer build runs this); plus the small information functions.
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

/* 1 when the test tensors are on cuda:0 (tests/cuda_emu's build of this test): the few rules
 * that differ between devices are then checked as they stand on CUDA. */
static int on_cuda;

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

/* ---- hostile-but-well-formed views (external review of the C ABI) ---- */

#define ENTRY_COUNT 10
static const char *const entry_names[ENTRY_COUNT] = {
    "linear forward size", "linear forward", "adapter forward size", "adapter forward",
    "linear backward size", "linear backward", "adapter backward size", "adapter backward",
    "compute_g size", "compute_g"};

/* Runs public entry point `which` (entry_names) with a big enough workspace; the adapter ones
 * get args without bias, since that is what they accept. */
static neat_status call_entry(int which, const neat_args *args, neat_tensor *y, neat_tensor *G,
                              const neat_grads *g, const neat_tensor *dy)
{
    static char ws[1 << 20];
    neat_args a = *args;
    size_t bytes = 0;
    if (which >= 2 && which <= 3)
        a.bias = NULL;
    if (which >= 6 && which <= 7)
        a.bias = NULL;
    switch (which) {
    case 0: return neat_linear_forward_workspace_size(&a, NULL, &bytes);
    case 1: return neat_linear_forward(y, &a, ws, sizeof ws, NULL);
    case 2: return neat_adapter_forward_workspace_size(&a, NULL, &bytes);
    case 3: return neat_adapter_forward(y, &a, ws, sizeof ws, NULL);
    case 4: return neat_linear_backward_workspace_size(g, &a, NULL, &bytes);
    case 5: return neat_linear_backward(g, dy, &a, ws, sizeof ws, NULL);
    case 6: return neat_adapter_backward_workspace_size(g, &a, NULL, &bytes);
    case 7: return neat_adapter_backward(g, dy, &a, ws, sizeof ws, NULL);
    case 8: return neat_compute_g_workspace_size(&a, NULL, &bytes);
    default: return neat_compute_g(G, &a, ws, sizeof ws, NULL);
    }
}

/* Every entry point, size queries included, rejects the args with the same message. */
static void expect_all_entries(layer *l, const neat_args *a, const char *needle, const char *what)
{
    neat_dtype dt = l->spec.dtype;
    tbuf y = tb_make(dt, l->spec.N, l->spec.d_out, 0, NULL, 0);
    tbuf G = tb_make(dt, l->spec.r, l->spec.d_in, 0, NULL, 0);
    tbuf dA = tb_make(dt, l->spec.r, l->spec.d_out, 0, NULL, 0);
    neat_grads g = {0};
    g.dA = &dA.t;
    for (int e = 0; e < ENTRY_COUNT; e++) {
        char label[160];
        snprintf(label, sizeof label, "%s (%s)", what, entry_names[e]);
        expect(call_entry(e, a, &y.t, &G.t, &g, &l->tdy.t), INVALID, needle, label);
    }
    /* and the same args minus the defect pass everywhere (the defect is what is rejected) */
    for (int e = 0; e < ENTRY_COUNT; e++)
        CHECK(call_entry(e, &l->args, &y.t, &G.t, &g, &l->tdy.t) == NEAT_OK, "%s: valid %s: %s",
              what, entry_names[e], neat_last_error());
    tb_free(&y), tb_free(&G), tb_free(&dA);
}

/* 1. weight gets the per-view checks every other tensor gets, at every entry point. */
static void test_weight_view(layer *l)
{
    neat_args a = l->args;
    neat_tensor w = l->tW.t;
    a.weight = &w;
    w.data = NULL;
    expect_all_entries(l, &a, "weight has 1961 elements but its data pointer is NULL",
                       "weight data NULL");
    w = l->tW.t, w.strides[1] = -1;
    expect_all_entries(l, &a, "weight has stride -1 in dim 1", "weight negative stride");
    w = l->tW.t, w.strides[0] = -37;
    expect_all_entries(l, &a, "weight has stride -37 in dim 0", "weight negative row stride");
    w = l->tW.t, w.strides[0] = (int64_t)1 << 62;
    expect_all_entries(l, &a, "weight with shape (53, 37) and strides (4611686018427387904, 1) "
                              "spans more bytes than a pointer difference can hold",
                       "weight huge stride");
    /* the offset fits in int64 but its byte count does not */
    w = l->tW.t, w.strides[0] = ((int64_t)1 << 62) / 52;
    expect_all_entries(l, &a, "weight with shape", "weight byte extent overflow");
    w = l->tW.t, w.sizes[0] = (int64_t)1 << 62, w.strides[0] = 37;
    expect_all_entries(l, &a, "weight has shape (4611686018427387904, 37), more elements than "
                              "int64 can count",
                       "weight sizes near 2^62");
    /* a broadcast weight's bytes are tiny, but d_out * d_in would overflow the kernels */
    w = l->tW.t, w.sizes[0] = w.sizes[1] = (int64_t)1 << 31, w.strides[0] = w.strides[1] = 0;
    expect_all_entries(l, &a, "weight: (d_out, d_in) = (2147483648, 2147483648) has more than "
                              "2^40",
                       "weight d_out * d_in over the limit");
    w = l->tW.t, w.data = (void *)(UINTPTR_MAX - 15);
    expect_all_entries(l, &a, "weight spans 7844 bytes from its data pointer", "weight wraps");
    w = l->tW.t, w.ndim = -1;
    expect_all_entries(l, &a, "weight must be 2-D", "weight ndim -1");
    w = l->tW.t, w.ndim = 1000;
    expect_all_entries(l, &a, "weight must be 2-D", "weight ndim 1000");
    w = l->tW.t, w.dtype = (neat_dtype)77;
    expect_all_entries(l, &a,
                       on_cuda ? "weight has dtype 77; on CUDA the dtypes are"
                               : "weight has dtype 77, not a neat_dtype",
                       "weight dtype 77");
    w = l->tW.t, w.dtype = (neat_dtype)-1;
    expect_all_entries(l, &a,
                       on_cuda ? "weight has dtype -1; on CUDA the dtypes are"
                               : "weight has dtype -1, not a neat_dtype",
                       "weight dtype -1");
    w = l->tW.t, w.device.type = (neat_device_type)5;
    expect_all_entries(l, &a, "weight has device type 5", "weight device 5");
    w = l->tW.t, w.device.type = NEAT_DEVICE_CUDA, w.device.index = -1;
    expect_all_entries(l, &a, "weight is on cuda:-1", "weight cuda:-1");
    w = l->tW.t, w.device.type = NEAT_DEVICE_CUDA, w.dtype = (neat_dtype)77;
    expect_all_entries(l, &a, "weight has dtype 77", "weight cuda dtype 77");
    /* weight is an input: an output on top of it is refused */
    tbuf y = tb_make(l->spec.dtype, 5, 53, 0, NULL, 0);
    neat_tensor yw = y.t;
    yw.data = l->tW.t.data;
    expect(fwd(&yw, &l->args), INVALID, "output y shares memory with input weight",
           "y overlaps weight");
    tb_free(&y);
}

/* 2. sizes and strides whose arithmetic would overflow int64: rejected without UB (UBSan). */
static void test_overflow(layer *l)
{
    neat_dtype dt = l->spec.dtype;
    size_t bytes;
    neat_args a = l->args;
    neat_tensor x = l->tx.t;
    a.x = &x;
    x.strides[0] = (int64_t)1 << 62;
    expect(neat_linear_forward_workspace_size(&a, NULL, &bytes), INVALID,
           "x with shape (5, 37) and strides (4611686018427387904, 1)", "x huge stride (size)");
    x = l->tx.t, x.strides[0] = INT64_MAX;
    expect(bwd(1, &(neat_grads){0}, &l->tdy.t, &a), INVALID, "x with shape",
           "x INT64_MAX stride (backward)");
    x = l->tx.t, x.sizes[0] = (int64_t)1 << 62, x.strides[0] = 0;
    expect(neat_linear_forward_workspace_size(&a, NULL, &bytes), INVALID,
           "x has shape (4611686018427387904, 37), more elements than int64", "x N = 2^62");
    /* the element count fits int64, the matrix limit does not */
    x.sizes[0] = (int64_t)1 << 40;
    expect(neat_linear_forward_workspace_size(&a, NULL, &bytes), INVALID,
           "x: (N, d_in) = (1099511627776, 37) has more than 2^40 = 1099511627776 elements",
           "N * d_in over the limit");
    /* N * d_in fits, but y = (N, d_out) would not */
    x.sizes[0] = ((int64_t)1 << 40) / 40;
    expect(neat_linear_forward_workspace_size(&a, NULL, &bytes), INVALID,
           "x and weight: y's shape (N, d_out)", "N * d_out over the limit");
    expect(neat_adapter_backward_workspace_size(&(neat_grads){0}, &(neat_args){
                                                    .x = &x, .weight = a.weight, .A = a.A,
                                                    .B = a.B, .hidden = a.hidden,
                                                    .num_hidden = a.num_hidden,
                                                    .activation = a.activation,
                                                    .scale = a.scale},
                                                NULL, &bytes),
           INVALID, "x and weight", "N * d_out over the limit (adapter backward size)");
    /* r = 2^21: r * d_out is small, but r * r (and the GEMM pack buffers) would not be */
    neat_tensor A = l->tA.t;
    a = l->args, a.A = &A;
    A.sizes[0] = (int64_t)1 << 21, A.strides[0] = 0;
    expect(neat_compute_g_workspace_size(&a, NULL, &bytes), INVALID,
           "A: a hidden layer's shape (r, r) = (2097152, 2097152)", "r over 2^20");
    A.sizes[0] = (int64_t)1 << 62;
    expect(neat_compute_g_workspace_size(&a, NULL, &bytes), INVALID,
           "A has shape (4611686018427387904, 53), more elements than int64", "r near 2^62");
    /* an output whose extent overflows, and one that runs off the address space */
    tbuf y = tb_make(dt, 5, 53, 0, NULL, 0);
    neat_tensor yv = y.t;
    yv.strides[1] = (int64_t)1 << 61;
    expect(fwd(&yv, &l->args), INVALID, "y with shape (5, 53) and strides (53, 2305843009213693952)",
           "y huge stride");
    yv = y.t, yv.data = (void *)(UINTPTR_MAX - 64);
    expect(fwd(&yv, &l->args), INVALID, "y spans 1060 bytes from its data pointer",
           "y wraps the address space");
    /* empty views are checked too: kernels may still form pointers from their strides */
    x = l->tx.t, x.sizes[0] = 0, x.strides[1] = INT64_MAX;
    a = l->args, a.x = &x;
    expect(neat_linear_forward_workspace_size(&a, NULL, &bytes), INVALID, "x with shape (0, 37)",
           "empty x with overflowing stride");
    /* a huge thread count would scale the workspace past size_t */
    neat_exec ex = {NULL, NULL, INT32_MAX, NULL, 0, NULL, NULL, NULL};
    expect(neat_linear_forward_workspace_size(&l->args, &ex, &bytes), INVALID,
           "exec->num_threads is 2147483647; at most 65536", "num_threads INT32_MAX (size)");
    expect(neat_linear_forward(&y.t, &l->args, NULL, 0, &ex), INVALID, "exec->num_threads",
           "num_threads INT32_MAX (forward)");
    expect(neat_compute_g_workspace_size(&l->args, &ex, &bytes), INVALID, "exec->num_threads",
           "num_threads INT32_MAX (compute_g size)");
    ex.num_threads = 65536;
    CHECK(neat_linear_forward_workspace_size(&l->args, &ex, &bytes) == NEAT_OK,
          "num_threads 65536 is accepted: %s", neat_last_error());
    tb_free(&y);
}

/* 3. outputs whose elements alias each other; inputs may. */
static void test_output_aliasing(layer *l)
{
    neat_dtype dt = l->spec.dtype;
    tbuf y = tb_make(dt, 5, 53, 0, NULL, 0);
    neat_tensor yv = y.t;
    yv.strides[0] = 1, yv.strides[1] = 1;
    expect(fwd(&yv, &l->args), INVALID,
           "output y with shape (5, 53) and strides (1, 1) has overlapping elements", "y (1, 1)");
    yv = y.t, yv.strides[0] = 52; /* row i + 1 starts on row i's last element */
    expect(fwd(&yv, &l->args), INVALID, "output y with shape (5, 53) and strides (52, 1)",
           "y rows overlap by one");
    yv = y.t, yv.strides[0] = 0;
    expect(fwd(&yv, &l->args), INVALID, "output y has stride 0 in dim 0", "y row stride 0");
    /* the smallest non-aliasing layouts are fine, whichever dim is inner */
    yv = y.t, yv.strides[0] = 1, yv.strides[1] = 5;
    CHECK(fwd(&yv, &l->args) == NEAT_OK, "transposed y: %s", neat_last_error());
    /* a dim of size 1 never aliases, whatever its stride */
    {
        neat_args a = l->args;
        neat_tensor x1 = l->tx.t, y1 = y.t;
        x1.sizes[0] = 1, y1.sizes[0] = 1, y1.strides[0] = 0;
        a.x = &x1;
        CHECK(fwd(&y1, &a) == NEAT_OK, "1-row y with row stride 0: %s", neat_last_error());
    }
    /* inputs may overlap themselves (broadcasts, sliding windows) */
    {
        neat_args a = l->args;
        neat_tensor xo = l->tx.t;
        xo.strides[0] = 1, xo.strides[1] = 1;
        a.x = &xo;
        CHECK(fwd(&y.t, &a) == NEAT_OK, "x with strides (1, 1): %s", neat_last_error());
        xo.strides[0] = 0;
        CHECK(fwd(&y.t, &a) == NEAT_OK, "x with strides (0, 1): %s", neat_last_error());
    }
    /* a literal 2 x 2 output with strides (1, 1) */
    {
        layer_spec s2 = {2, 3, 2, 1, NEAT_ACT_RELU, 0, 1, dt, 0, 0, 0, 1.0, 11};
        layer l2;
        layer_init(&l2, &s2);
        tbuf y2 = tb_make(dt, 2, 2, 0, NULL, 0);
        neat_tensor v = y2.t;
        v.strides[0] = 1, v.strides[1] = 1;
        expect(fwd(&v, &l2.args), INVALID, "output y with shape (2, 2) and strides (1, 1)",
               "2x2 y (1, 1)");
        CHECK(fwd(&y2.t, &l2.args) == NEAT_OK, "2x2 y contiguous: %s", neat_last_error());
        tb_free(&y2);
        layer_free(&l2);
    }
    /* every output of backward and compute_g gets the same rule */
    tbuf dx = tb_make(dt, 5, 37, 0, NULL, 0), dW = tb_make(dt, 53, 37, 0, NULL, 0);
    tbuf dA = tb_make(dt, 3, 53, 0, NULL, 0), dH = tb_make(dt, 3, 3, 0, NULL, 0);
    tbuf G = tb_make(dt, 3, 37, 0, NULL, 0);
    neat_tensor v = dx.t;
    v.strides[0] = 1, v.strides[1] = 1;
    neat_grads g = {0};
    g.dx = &v;
    expect(bwd(1, &g, &l->tdy.t, &l->args), INVALID, "output dx with shape (5, 37) and strides (1, 1)",
           "dx (1, 1)");
    size_t bytes;
    expect(neat_linear_backward_workspace_size(&g, &l->args, NULL, &bytes), INVALID,
           "output dx", "dx (1, 1) in the size query");
    v = dW.t, v.strides[0] = 36;
    g = (neat_grads){0}, g.dweight = &v;
    expect(bwd(1, &g, &l->tdy.t, &l->args), INVALID, "output dweight with shape (53, 37)",
           "dweight rows overlap");
    v = dA.t, v.strides[0] = 26, v.strides[1] = 2; /* odd rows land between even columns */
    g = (neat_grads){0}, g.dA = &v;
    expect(bwd(1, &g, &l->tdy.t, &l->args), INVALID, "output dA", "dA interleaved");
    neat_tensor dhv[4] = {dH.t, dH.t, dH.t, dH.t};
    for (int i = 0; i < 4; i++) dhv[i].data = NULL;
    dhv[3] = dH.t, dhv[3].strides[0] = 2;
    g = (neat_grads){0}, g.dhidden = dhv;
    expect(bwd(1, &g, &l->tdy.t, &l->args), INVALID, "output dhidden[3]", "dhidden[3] overlap");
    v = G.t, v.strides[0] = 1, v.strides[1] = 1;
    expect(call_compute_g(&v, &l->args, NULL), INVALID, "output G with shape (3, 37)",
           "G (1, 1)");
    tb_free(&y), tb_free(&dx), tb_free(&dW), tb_free(&dA), tb_free(&dH), tb_free(&G);
}

/*
 * A buffer of need + b's storage bytes holding a copy of b's storage at byte `at` (< need for
 * an overlap): used as a workspace of `need` bytes it overlaps that one view and no other
 * tensor of the call, whatever the heap layout. *moved is b's view at its new place.
 */
static char *arena_holding(const tbuf *b, size_t need, size_t at, neat_tensor *moved)
{
    size_t sz = (size_t)b->storage_elems * sizeof(float); /* the error test runs float32 */
    char *arena = xmalloc(need + sz);
    memcpy(arena + at, b->storage, sz);
    *moved = b->t;
    moved->data = arena + at;
    return arena;
}

/* 4. a workspace that shares bytes with an input or an output. */
static void test_workspace_overlap(layer *l)
{
    neat_dtype dt = l->spec.dtype;
    size_t need = 0;
    neat_tensor mv;
    char *arena;
    neat_args a;
    tbuf y = tb_make(dt, 5, 53, 0, NULL, 0);
    CHECK(neat_linear_forward_workspace_size(&l->args, NULL, &need) == NEAT_OK && need >= 64,
          "forward query");

    arena = arena_holding(&l->tx, need, 0, &mv);
    a = l->args, a.x = &mv;
    expect(neat_linear_forward(&y.t, &a, arena, need, NULL), INVALID,
           "workspace (", "forward workspace on x");
    expect(neat_linear_forward(&y.t, &a, arena, need, NULL), INVALID,
           "shares memory with input x", "forward workspace on x (name)");
    free(arena);
    /* one element of overlap at the workspace's end is enough */
    arena = arena_holding(&l->tx, need, need - 4, &mv);
    expect(neat_linear_forward(&y.t, &a, arena, need, NULL), INVALID,
           "shares memory with input x", "workspace ends 4 bytes into x");
    free(arena);
    /* adjacency is not overlap; a bigger buffer than needed counts whole */
    arena = arena_holding(&l->tx, need, need, &mv);
    CHECK(neat_linear_forward(&y.t, &a, arena, need, NULL) == NEAT_OK,
          "workspace right before x: %s", neat_last_error());
    expect(neat_linear_forward(&y.t, &a, arena, need + 1, NULL), INVALID,
           "shares memory with input x", "oversized workspace reaching x");
    free(arena);

    arena = arena_holding(&y, need, 0, &mv);
    expect(neat_linear_forward(&mv, &l->args, arena, need, NULL), INVALID,
           "shares memory with output y", "forward workspace on y");
    a = l->args, a.bias = NULL;
    expect(neat_adapter_forward(&mv, &a, arena, need, NULL), INVALID,
           "shares memory with output y", "adapter forward workspace on y");
    free(arena);
    arena = arena_holding(&l->tW, need, 64, &mv);
    a = l->args, a.weight = &mv;
    expect(neat_linear_forward(&y.t, &a, arena, need, NULL), INVALID,
           "shares memory with input weight", "forward workspace on weight");
    free(arena);
    {
        neat_tensor hid[4] = {l->hidden[0], l->hidden[1], l->hidden[2], l->hidden[3]};
        arena = arena_holding(&l->tH[2], need, 128, &hid[2]);
        a = l->args, a.hidden = hid;
        expect(neat_linear_forward(&y.t, &a, arena, need, NULL), INVALID,
               "shares memory with input hidden[2]", "forward workspace on hidden[2]");
        free(arena);
    }
    expect(neat_linear_forward(&y.t, &l->args, (void *)(UINTPTR_MAX - 63), need, NULL), INVALID,
           "workspace of", "workspace wraps the address space");
    expect(neat_linear_forward(&y.t, &l->args, (void *)(UINTPTR_MAX - 63), need, NULL), INVALID,
           "runs past the end of the address space", "workspace wraps (message)");

    tbuf dA = tb_make(dt, 3, 53, 0, NULL, 0), dx = tb_make(dt, 5, 37, 0, NULL, 0);
    neat_grads g = {0};
    g.dA = &dA.t, g.dx = &dx.t;
    CHECK(neat_linear_backward_workspace_size(&g, &l->args, NULL, &need) == NEAT_OK,
          "backward query");
    arena = arena_holding(&l->tdy, need, 0, &mv);
    expect(neat_linear_backward(&g, &mv, &l->args, arena, need, NULL), INVALID,
           "shares memory with input dy", "backward workspace on dy");
    free(arena);
    arena = arena_holding(&l->tx, need, 0, &mv);
    a = l->args, a.x = &mv;
    expect(neat_linear_backward(&g, &l->tdy.t, &a, arena, need, NULL), INVALID,
           "shares memory with input x", "backward workspace on x");
    free(arena);
    {
        neat_grads g2 = g;
        arena = arena_holding(&dA, need, 0, &mv);
        g2.dA = &mv;
        expect(neat_linear_backward(&g2, &l->tdy.t, &l->args, arena, need, NULL), INVALID,
               "shares memory with output dA", "backward workspace on dA");
        free(arena);
        g2 = g;
        arena = arena_holding(&dx, need, need - 4, &mv);
        g2.dx = &mv;
        expect(neat_linear_backward(&g2, &l->tdy.t, &l->args, arena, need, NULL), INVALID,
               "shares memory with output dx", "backward workspace on dx");
        free(arena);
    }
    a = l->args, a.bias = NULL;
    CHECK(neat_adapter_backward_workspace_size(&g, &a, NULL, &need) == NEAT_OK,
          "adapter backward query");
    arena = arena_holding(&l->tB, need, 0, &mv);
    a.B = &mv;
    expect(neat_adapter_backward(&g, &l->tdy.t, &a, arena, need, NULL), INVALID,
           "shares memory with input B", "adapter backward workspace on B");
    free(arena);

    tbuf G = tb_make(dt, 3, 37, 0, NULL, 0);
    CHECK(neat_compute_g_workspace_size(&l->args, NULL, &need) == NEAT_OK, "compute_g query");
    arena = arena_holding(&G, need, 0, &mv);
    expect(neat_compute_g(&mv, &l->args, arena, need, NULL), INVALID,
           "shares memory with output G", "compute_g workspace on G");
    free(arena);
    arena = arena_holding(&l->tA, need, 0, &mv);
    a = l->args, a.A = &mv;
    expect(neat_compute_g(&G.t, &a, arena, need, NULL), INVALID,
           "shares memory with input A", "compute_g workspace on A");
    free(arena);
    tb_free(&y), tb_free(&dA), tb_free(&dx), tb_free(&G);
}

/* 5. enum and count fields out of range. */
static void test_hostile_fields(layer *l)
{
    neat_args a;
    neat_tensor x = l->tx.t;
    a = l->args, a.x = &x;
    tbuf y = tb_make(l->spec.dtype, 5, 53, 0, NULL, 0);
    x.ndim = 9;
    expect(fwd(&y.t, &a), INVALID, "x must be 2-D", "x ndim 9");
    x.ndim = INT32_MIN;
    expect(fwd(&y.t, &a), INVALID, "x must be 2-D", "x ndim INT32_MIN");
    x = l->tx.t, x.sizes[0] = -1;
    expect(fwd(&y.t, &a), INVALID, "x must have shape", "x size -1");
    x = l->tx.t, x.dtype = (neat_dtype)77;
    expect(fwd(&y.t, &a), INVALID, "x has dtype unknown dtype", "x dtype 77");
    x = l->tx.t, x.device.type = (neat_device_type)7;
    expect(fwd(&y.t, &a), INVALID, "x is on unknown:0", "x device 7");
    neat_tensor yv = y.t;
    yv.ndim = -3;
    expect(fwd(&yv, &l->args), INVALID, "y must be 2-D", "y ndim -3");
    a = l->args, a.num_hidden = -2, a.hidden = NULL;
    expect(fwd(&y.t, &a), INVALID, "num_hidden must be even and in 0..8; got -2",
           "num_hidden -2, hidden NULL");
    a = l->args, a.num_hidden = INT32_MIN, a.hidden = NULL;
    expect(fwd(&y.t, &a), INVALID, "num_hidden", "num_hidden INT32_MIN");
    a = l->args, a.num_hidden = INT32_MAX;
    expect(fwd(&y.t, &a), INVALID, "num_hidden", "num_hidden INT32_MAX");
    a = l->args, a.num_hidden = 2, a.hidden = NULL;
    expect(fwd(&y.t, &a), INVALID, "hidden must not be NULL when num_hidden = 2",
           "num_hidden 2, hidden NULL");
    neat_tensor hid[4] = {l->hidden[0], l->hidden[1], l->hidden[2], l->hidden[3]};
    hid[2].data = NULL;
    a = l->args, a.hidden = hid;
    expect(fwd(&y.t, &a), INVALID, "hidden[2] has 9 elements but its data pointer is NULL",
           "hidden[2] data NULL");
    hid[2] = l->hidden[2], hid[2].strides[0] = (int64_t)1 << 62;
    expect(fwd(&y.t, &a), INVALID, "hidden[2] with shape (3, 3)", "hidden[2] huge stride");
    neat_tensor b = l->tb.t;
    b.strides[0] = -1;
    a = l->args, a.bias = &b;
    expect(fwd(&y.t, &a), INVALID, "bias has stride -1", "bias negative stride");
    a = l->args, a.activation = (neat_activation)-1;
    expect(fwd(&y.t, &a), INVALID, "activation -1 is not a neat_activation", "activation -1");
    a = l->args, a.activation = (neat_activation)(NEAT_ACT_LAST + 1);
    expect(fwd(&y.t, &a), INVALID, "activation 8 is not a neat_activation", "activation 8");
    a = l->args, a.scale = -INFINITY;
    expect(fwd(&y.t, &a), INVALID, "scale must be finite", "scale -inf");
    a = l->args, a.activation = (neat_activation)99;
    size_t bytes;
    expect(neat_compute_g_workspace_size(&a, NULL, &bytes), INVALID, "activation 99",
           "compute_g size activation");
    tb_free(&y);
}

/* The whole message, not a part of it: names must replace, never add to, the C names. */
static void expect_msg(neat_status got, neat_status want, const char *msg, const char *what)
{
    CHECK(got == want, "%s: status %d (%s), expected %d; message: %s", what, (int)got,
          neat_status_string(got), (int)want, neat_last_error());
    CHECK(strcmp(neat_last_error(), msg) == 0, "%s: message\n  \"%s\"\nexpected\n  \"%s\"", what,
          neat_last_error(), msg);
}

/* 6. names passed in exec->names replace the C names in every kind of message; NULL (no
 * names, a NULL entry, a NULL call) keeps the C names. */
static void test_display_names(layer *l)
{
    neat_dtype dt = l->spec.dtype;
    neat_names names;
    memset(&names, 0, sizeof names);
    names.call = "neat::linear";
    names.arg[NEAT_ARG_X] = "input";
    names.arg[NEAT_ARG_NUM_HIDDEN] = "len(hidden)";
    names.arg[NEAT_ARG_HIDDEN] = "H";
    names.arg[NEAT_ARG_B] = "lora_B";
    names.arg[NEAT_ARG_DY] = "grad_out";
    neat_exec ex = {0}, plain = {0};
    ex.names = &names;
    static char ws[1 << 20];
    size_t bytes;
    tbuf y = tb_make(dt, 5, 53, 0, NULL, 0), y_bad = tb_make(dt, 5, 52, 0, NULL, 0);
    tbuf m34 = tb_make(dt, 3, 4, 0, NULL, 0);
    neat_args a = l->args;
    neat_tensor x = l->tx.t, hid[4] = {l->hidden[0], l->hidden[1], l->hidden[2], l->hidden[3]};

    /* the subject of a message, in a size query and in the compute call */
    a.x = &x, x.sizes[1] = 36;
    expect_msg(neat_linear_forward_workspace_size(&a, &ex, &bytes), INVALID,
               "neat::linear: input must have shape (N, d_in) = (N, 37) to match weight (53, 37); "
               "got (5, 36)",
               "named x (size query)");
    expect_msg(neat_linear_forward(&y.t, &a, ws, sizeof ws, &ex), INVALID,
               "neat::linear: input must have shape (N, d_in) = (N, 37) to match weight (53, 37); "
               "got (5, 36)",
               "named x");
    expect(neat_linear_forward(&y.t, &a, ws, sizeof ws, &plain), INVALID,
           "neat_linear_forward: x must have shape (N, d_in)", "x with names NULL");
    expect(neat_linear_forward(&y.t, &a, ws, sizeof ws, NULL), INVALID,
           "neat_linear_forward: x must have shape (N, d_in)", "x with exec NULL");
    /* a list element, a count, and an argument named after another */
    a = l->args, a.hidden = hid, hid[1] = m34.t;
    expect_msg(neat_linear_forward(&y.t, &a, ws, sizeof ws, &ex), INVALID,
               "neat::linear: H[1] must have shape (3, 3); got (3, 4)", "named hidden[1]");
    a = l->args, a.num_hidden = 3;
    expect_msg(neat_linear_forward(&y.t, &a, ws, sizeof ws, &ex), INVALID,
               "neat::linear: len(hidden) must be even and in 0..8; got 3", "named num_hidden");
    a = l->args, a.num_hidden = 2, a.hidden = NULL;
    expect_msg(neat_linear_forward(&y.t, &a, ws, sizeof ws, &ex), INVALID,
               "neat::linear: H must not be NULL when len(hidden) = 2", "named hidden NULL");
    /* both sides of an overlap */
    neat_tensor yB = y.t;
    yB.data = l->tB.t.data;
    expect_msg(neat_linear_forward(&yB, &l->args, ws, sizeof ws, &ex), INVALID,
               "neat::linear: output y shares memory with input lora_B; outputs must not "
               "overlap inputs or other outputs",
               "named overlap");
    /* a matrix limit names its arguments */
    a = l->args, a.x = &x, x = l->tx.t, x.sizes[0] = ((int64_t)1 << 40) / 40, x.strides[0] = 0;
    expect(neat_linear_forward_workspace_size(&a, &ex, &bytes), INVALID,
           "neat::linear: input and weight: y's shape (N, d_out) = (27487790694, 53)",
           "named limit");
    /* the driver's own messages: the call's name, the C name of the size query to ask */
    expect(neat_linear_forward(&y.t, &l->args, ws, 1, &ex), NEAT_ERR_WORKSPACE,
           "neat::linear: workspace must have at least", "named workspace size");
    expect(neat_linear_forward(&y.t, &l->args, ws, 1, &ex), NEAT_ERR_WORKSPACE,
           "(as neat_linear_forward_workspace_size reports", "named workspace: query's C name");
    /* another entry point, dy's name */
    names.call = "neat::linear_backward";
    neat_grads g = {0};
    expect_msg(neat_linear_backward(&g, &y_bad.t, &l->args, ws, sizeof ws, &ex), INVALID,
               "neat::linear_backward: grad_out must have shape (N, d_out) = (5, 53); got (5, 52)",
               "named dy");
    expect_msg(neat_linear_backward(&g, NULL, &l->args, ws, sizeof ws, &ex), INVALID,
               "neat::linear_backward: grad_out must not be NULL", "named dy NULL");
    /* a NULL entry keeps its C name, a NULL call keeps the function's name */
    names.arg[NEAT_ARG_DY] = NULL;
    expect_msg(neat_linear_backward(&g, &y_bad.t, &l->args, ws, sizeof ws, &ex), INVALID,
               "neat::linear_backward: dy must have shape (N, d_out) = (5, 53); got (5, 52)",
               "dy with a NULL entry");
    names.call = NULL;
    expect_msg(neat_linear_backward(&g, &y_bad.t, &l->args, ws, sizeof ws, &ex), INVALID,
               "neat_linear_backward: dy must have shape (N, d_out) = (5, 53); got (5, 52)",
               "NULL call name");
    a = l->args, a.num_hidden = 3;
    expect_msg(neat_linear_backward_workspace_size(&g, &a, &ex, &bytes), INVALID,
               "neat_linear_backward_workspace_size: len(hidden) must be even and in 0..8; got 3",
               "NULL call name, named num_hidden (size query)");
    /* all-NULL names are the C names */
    memset(&names, 0, sizeof names);
    expect_msg(neat_linear_forward(&y.t, &a, ws, sizeof ws, &ex), INVALID,
               "neat_linear_forward: num_hidden must be even and in 0..8; got 3", "empty names");
    tb_free(&y), tb_free(&y_bad), tb_free(&m34);
}

int main(void)
{
    on_cuda = tb_device().type == NEAT_DEVICE_CUDA;
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
        /* x on the other device than the rest */
        x = l.tx.t, x.device.type = on_cuda ? NEAT_DEVICE_CPU : NEAT_DEVICE_CUDA;
        expect(fwd(&y.t, &a), INVALID, on_cuda ? "x is on cpu:0" : "x is on cuda:0", "x device");
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
        /* CPU has no bfloat16; CUDA has, so there x (float32) no longer matches weight */
        expect(fwd(&y.t, &a), INVALID,
               on_cuda ? "x has dtype float32 but weight has bfloat16" : "weight has dtype bfloat16",
               on_cuda ? "weight bf16 on CUDA" : "weight bf16 on CPU");
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
    neat_exec ex8 = {NULL, NULL, 8, NULL, 0, NULL, NULL, NULL};
    size_t need1 = 0, need8 = 0;
    neat_linear_forward_workspace_size(&l.args, NULL, &need1);
    neat_linear_forward_workspace_size(&l.args, &ex8, &need8);
    CHECK(need8 >= need1, "workspace for 8 threads (%zu) smaller than for 1 (%zu)", need8, need1);
    expect(neat_linear_forward_workspace_size(&l.args, NULL, NULL), INVALID, "bytes",
           "bytes NULL");

    /* hostile-but-well-formed views */
    test_weight_view(&l);
    test_overflow(&l);
    test_output_aliasing(&l);
    test_workspace_overlap(&l);
    test_hostile_fields(&l);
    test_display_names(&l);

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
    for (int act = 0; act <= NEAT_ACT_LAST; act++) {
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
