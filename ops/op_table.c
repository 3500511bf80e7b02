/*
 * op_table.c - the arguments of every public entry point, as rows (op_table.h), and the entry
 * points as lists of rows. The shape texts are those of the messages (tests assert them).
 */
#include "op_table.h"

#include <stddef.h>

/* The symbols, short: these tables are read as shapes. */
enum { N = NEAT_SYM_N, D_IN = NEAT_SYM_D_IN, D_OUT = NEAT_SYM_D_OUT, R = NEAT_SYM_R };
#define BIND(sym) ((sym) | NEAT_BINDS)
#define LIMIT(a, b, what, rows, cols) {{(a), (b)}, (what), (rows), (cols)}
#define VIEW(a, r, f) .kind = NEAT_ROW_VIEW, .arg = (a), .role = (r), .flags = (f)

/* ---- neat_args ---- */

/* weight fixes the device, the base dtype and (d_out, d_in); its layout is checked like any. */
static const neat_row neat_weight = {
    VIEW(NEAT_ARG_WEIGHT, NEAT_ROLE_BASE, NEAT_SETS_BASE | NEAT_NONEMPTY),
    .rank = 2, .dims = {BIND(D_OUT), BIND(D_IN)}, .shape = "(d_out, d_in)",
    .limits = {LIMIT(NEAT_ARG_WEIGHT, NEAT_NO_ARG, "", D_OUT, D_IN)}};

/* A fixes r and the adapter's dtype. r * r bounds r itself (to 2^20), which the GEMM pack
 * buffers scale with, hidden layers or not. */
/* w, wname: the argument that fixed (d_out, d_in), weight or qweight, as the texts name it */
#define A_ROW(w, wname)                                                                         \
    {VIEW(NEAT_ARG_A, NEAT_ROLE_PARAM, NEAT_SETS_PARAM | NEAT_NONEMPTY),                       \
     .rank = 2, .dims = {BIND(R), D_OUT},                                                       \
     .shape = "(r, d_out) = (r, %lld) to match " wname " (%lld, %lld)",                         \
     .shape_of = {D_OUT, D_OUT, D_IN},                                                          \
     .limits = {LIMIT(NEAT_ARG_A, NEAT_NO_ARG, "", R, D_OUT),                                   \
                LIMIT(NEAT_ARG_A, (w), "G's shape ", R, D_IN),                                  \
                LIMIT(NEAT_ARG_A, NEAT_NO_ARG, "a hidden layer's shape ", R, R)}}
static const neat_row neat_A = A_ROW(NEAT_ARG_WEIGHT, "weight");

#define X_ROW(flags, w, wname)                                                                  \
    {VIEW(NEAT_ARG_X, NEAT_ROLE_BASE, (flags)), .rank = 2, .dims = {BIND(N), D_IN},            \
     .shape = "(N, d_in) = (N, %lld) to match " wname " (%lld, %lld)",                          \
     .shape_of = {D_IN, D_OUT, D_IN},                                                           \
     .limits = {LIMIT(NEAT_ARG_X, NEAT_NO_ARG, "", N, D_IN),                                    \
                LIMIT(NEAT_ARG_X, (w), "y's shape ", N, D_OUT),                                 \
                LIMIT(NEAT_ARG_X, NEAT_ARG_ADAPTER, "U's shape ", N, R)}}
static const neat_row neat_x = X_ROW(0, NEAT_ARG_WEIGHT, "weight");
/* neat_compute_g: checked if given */
static const neat_row neat_x_unused = X_ROW(NEAT_OPTIONAL, NEAT_ARG_WEIGHT, "weight");

#define B_ROW(flags, wname, factor)                                                             \
    {VIEW(NEAT_ARG_B, NEAT_ROLE_PARAM, (flags)), .rank = 2, .dims = {D_OUT, R},                \
     .shape = "(d_out, r) = (%lld, %lld) to match " wname " and " factor, .shape_of = {D_OUT, R}}
static const neat_row neat_B = B_ROW(0, "weight", "A");
static const neat_row neat_B_unused = B_ROW(NEAT_OPTIONAL, "weight", "A");

static const neat_row neat_bias = {
    VIEW(NEAT_ARG_BIAS, NEAT_ROLE_BASE, NEAT_OPTIONAL), .rank = 1, .dims = {D_OUT},
    .shape = "(d_out) = (%lld) to match weight", .shape_of = {D_OUT}};
static const neat_row neat_no_bias = {
    .kind = NEAT_ROW_FORBIDDEN, .arg = NEAT_ARG_BIAS,
    .shape = "for the adapter entry points (the adapter term has no bias)"};

static const neat_row neat_num_hidden = {.kind = NEAT_ROW_NUM_HIDDEN, .arg = NEAT_ARG_NUM_HIDDEN};
static const neat_row neat_hidden = {
    .kind = NEAT_ROW_LIST, .arg = NEAT_ARG_HIDDEN, .role = NEAT_ROLE_PARAM, .rank = 2,
    .dims = {R, R}, .shape = "(%lld, %lld)", .shape_of = {R, R}};
static const neat_row neat_activation_row = {.kind = NEAT_ROW_ACTIVATION,
                                             .arg = NEAT_ARG_ACTIVATION};
static const neat_row neat_scale = {.kind = NEAT_ROW_SCALE, .arg = NEAT_ARG_SCALE};

/* ---- outputs and gradients ---- */

/* Optional as rows: size queries go without them, compute calls refuse NULL before any row. */
static const neat_row neat_y = {
    VIEW(NEAT_ARG_Y, NEAT_ROLE_BASE, NEAT_OUT | NEAT_OPTIONAL), .rank = 2, .dims = {N, D_OUT},
    .shape = "(N, d_out) = (%lld, %lld)", .shape_of = {N, D_OUT}};
static const neat_row neat_grads_row = {.kind = NEAT_ROW_GRADS, .arg = NEAT_ARG_GRADS};
static const neat_row neat_dy = {
    VIEW(NEAT_ARG_DY, NEAT_ROLE_BASE, NEAT_OPTIONAL), .rank = 2, .dims = {N, D_OUT},
    .shape = "(N, d_out) = (%lld, %lld)", .shape_of = {N, D_OUT}};

#define GRAD(arg, role, d0, d1, text)                                                           \
    {VIEW((arg), (role), NEAT_OUT | NEAT_OPTIONAL), .rank = 2, .dims = {(d0), (d1)},           \
     .shape = (text), .shape_of = {(d0), (d1)}}
static const neat_row neat_dx = GRAD(NEAT_ARG_DX, NEAT_ROLE_BASE, N, D_IN,
                                     "(N, d_in) = (%lld, %lld) like x");
static const neat_row neat_dweight = GRAD(NEAT_ARG_DWEIGHT, NEAT_ROLE_BASE, D_OUT, D_IN,
                                          "(d_out, d_in) = (%lld, %lld) like weight");
static const neat_row neat_dbias = {
    VIEW(NEAT_ARG_DBIAS, NEAT_ROLE_BASE, NEAT_OUT | NEAT_OPTIONAL), .rank = 1, .dims = {D_OUT},
    .shape = "(d_out) = (%lld)", .shape_of = {D_OUT}};
static const neat_row neat_no_dbias = {.kind = NEAT_ROW_FORBIDDEN, .arg = NEAT_ARG_DBIAS,
                                       .shape = "for the adapter entry points"};
static const neat_row neat_dA = GRAD(NEAT_ARG_DA, NEAT_ROLE_PARAM, R, D_OUT,
                                     "(r, d_out) = (%lld, %lld) like A");
static const neat_row neat_dB = GRAD(NEAT_ARG_DB, NEAT_ROLE_PARAM, D_OUT, R,
                                     "(d_out, r) = (%lld, %lld) like B");
/* an element whose data is NULL is not requested */
static const neat_row neat_dhidden = {
    .kind = NEAT_ROW_LIST, .arg = NEAT_ARG_DHIDDEN, .role = NEAT_ROLE_PARAM,
    .flags = NEAT_OUT | NEAT_OPTIONAL, .rank = 2, .dims = {R, R},
    .shape = "(%lld, %lld) like hidden[%lld]", .shape_of = {R, R, NEAT_SYM_INDEX}};

/* G as neat_compute_g writes it: on CUDA in weight's dtype or the adapter's. */
static const neat_row neat_G_out = GRAD(NEAT_ARG_G, NEAT_ROLE_EITHER, R, D_IN,
                                        "(r, d_in) = (%lld, %lld)");

/* ---- neat_lowrank_args: G in A's place ---- */

#define G_IN_ROW(w, wname)                                                                      \
    {VIEW(NEAT_ARG_G, NEAT_ROLE_PARAM, NEAT_SETS_PARAM | NEAT_NONEMPTY),                       \
     .rank = 2, .dims = {BIND(R), D_IN},                                                        \
     .shape = "(r, d_in) = (r, %lld) to match " wname " (%lld, %lld)",                          \
     .shape_of = {D_IN, D_OUT, D_IN},                                                           \
     .limits = {LIMIT(NEAT_ARG_G, NEAT_NO_ARG, "", R, D_IN),                                    \
                LIMIT(NEAT_ARG_G, (w), "B's shape ", D_OUT, R)}}
static const neat_row neat_G_in = G_IN_ROW(NEAT_ARG_WEIGHT, "weight");
static const neat_row neat_B_of_G = B_ROW(0, "weight", "G");

/* ---- a quantized W (neat_qweight) in weight's place ---- */

/* qweight fixes the device, the base dtype and (d_out, d_in) as weight does, then its format's
 * fields are checked (quant.c). */
static const neat_row neat_qweight_row = {
    .kind = NEAT_ROW_QWEIGHT, .arg = NEAT_ARG_QWEIGHT, .role = NEAT_ROLE_BASE,
    .flags = NEAT_SETS_BASE | NEAT_NONEMPTY, .rank = 2, .dims = {BIND(D_OUT), BIND(D_IN)},
    .shape = "(d_out, d_in)",
    .limits = {LIMIT(NEAT_ARG_QWEIGHT, NEAT_NO_ARG, "", D_OUT, D_IN)}};
static const neat_row neat_no_weight = {
    .kind = NEAT_ROW_FORBIDDEN, .arg = NEAT_ARG_WEIGHT,
    .shape = "for the quantized entry points (W comes as qweight)"};
static const neat_row neat_no_dweight = {
    .kind = NEAT_ROW_FORBIDDEN, .arg = NEAT_ARG_DWEIGHT,
    .shape = "with a quantized weight (it is frozen)"};
static const neat_row neat_qA = A_ROW(NEAT_ARG_QWEIGHT, "qweight");
static const neat_row neat_qx = X_ROW(0, NEAT_ARG_QWEIGHT, "qweight");
static const neat_row neat_qx_unused = X_ROW(NEAT_OPTIONAL, NEAT_ARG_QWEIGHT, "qweight");
static const neat_row neat_qB = B_ROW(0, "qweight", "A");
static const neat_row neat_qB_unused = B_ROW(NEAT_OPTIONAL, "qweight", "A");
static const neat_row neat_qG_in = G_IN_ROW(NEAT_ARG_QWEIGHT, "qweight");
static const neat_row neat_qB_of_G = B_ROW(0, "qweight", "G");

/* ---- the entry points ---- */

#define ROWS(...) ((const neat_row *const[]){__VA_ARGS__, NULL})
#define ARGS_ROWS(x, B)                                                                         \
    &neat_weight, &neat_A, (x), (B), &neat_bias, &neat_num_hidden, &neat_hidden,                \
        &neat_activation_row, &neat_scale
/* The adapter entry points refuse bias before x and B are looked at. */
#define ADAPTER_ARGS_ROWS                                                                       \
    &neat_weight, &neat_A, &neat_no_bias, &neat_x, &neat_B, &neat_num_hidden, &neat_hidden,     \
        &neat_activation_row, &neat_scale
#define GRAD_ROWS(dbias)                                                                        \
    &neat_grads_row, &neat_dy, &neat_dx, &neat_dweight, (dbias), &neat_dA, &neat_dB,            \
        &neat_dhidden

const neat_entry neat_linear_forward_entry = {
    "neat_linear_forward", "neat_linear_forward_workspace_size", NEAT_OP_FORWARD, 1, NEAT_ARG_Y,
    ROWS(ARGS_ROWS(&neat_x, &neat_B), &neat_y), 0};
const neat_entry neat_adapter_forward_entry = {
    "neat_adapter_forward", "neat_adapter_forward_workspace_size", NEAT_OP_FORWARD, 0, NEAT_ARG_Y,
    ROWS(ADAPTER_ARGS_ROWS, &neat_y), 0};
const neat_entry neat_linear_backward_entry = {
    "neat_linear_backward", "neat_linear_backward_workspace_size", NEAT_OP_BACKWARD, 1,
    NEAT_ARG_DY, ROWS(ARGS_ROWS(&neat_x, &neat_B), GRAD_ROWS(&neat_dbias)), 0};
const neat_entry neat_adapter_backward_entry = {
    "neat_adapter_backward", "neat_adapter_backward_workspace_size", NEAT_OP_BACKWARD, 0,
    NEAT_ARG_DY, ROWS(ADAPTER_ARGS_ROWS, GRAD_ROWS(&neat_no_dbias)), 0};
const neat_entry neat_compute_g_entry = {
    "neat_compute_g", "neat_compute_g_workspace_size", NEAT_OP_COMPUTE_G, 1, NEAT_ARG_G,
    ROWS(ARGS_ROWS(&neat_x_unused, &neat_B_unused), &neat_G_out), 0};
const neat_entry neat_lowrank_forward_entry = {
    "neat_lowrank_forward", "neat_lowrank_forward_workspace_size", NEAT_OP_LOWRANK, 1,
    NEAT_ARG_Y,
    ROWS(&neat_weight, &neat_G_in, &neat_x, &neat_B_of_G, &neat_bias, &neat_scale, &neat_y), 0};

/* The quantized twins: qweight first (it fixes what weight fixes), weight refused, dweight
 * refused; otherwise the same rows in the same order. */
#define QARGS_ROWS(x, B)                                                                        \
    &neat_qweight_row, &neat_no_weight, &neat_qA, (x), (B), &neat_bias, &neat_num_hidden,       \
        &neat_hidden, &neat_activation_row, &neat_scale
#define QADAPTER_ARGS_ROWS                                                                      \
    &neat_qweight_row, &neat_no_weight, &neat_qA, &neat_no_bias, &neat_qx, &neat_qB,            \
        &neat_num_hidden, &neat_hidden, &neat_activation_row, &neat_scale
#define QGRAD_ROWS(dbias)                                                                       \
    &neat_grads_row, &neat_dy, &neat_dx, &neat_no_dweight, (dbias), &neat_dA, &neat_dB,         \
        &neat_dhidden

const neat_entry neat_qlinear_forward_entry = {
    "neat_qlinear_forward", "neat_qlinear_forward_workspace_size", NEAT_OP_FORWARD, 1,
    NEAT_ARG_Y, ROWS(QARGS_ROWS(&neat_qx, &neat_qB), &neat_y), 1};
const neat_entry neat_qadapter_forward_entry = {
    "neat_qadapter_forward", "neat_qadapter_forward_workspace_size", NEAT_OP_FORWARD, 0,
    NEAT_ARG_Y, ROWS(QADAPTER_ARGS_ROWS, &neat_y), 1};
const neat_entry neat_qlinear_backward_entry = {
    "neat_qlinear_backward", "neat_qlinear_backward_workspace_size", NEAT_OP_BACKWARD, 1,
    NEAT_ARG_DY, ROWS(QARGS_ROWS(&neat_qx, &neat_qB), QGRAD_ROWS(&neat_dbias)), 1};
const neat_entry neat_qadapter_backward_entry = {
    "neat_qadapter_backward", "neat_qadapter_backward_workspace_size", NEAT_OP_BACKWARD, 0,
    NEAT_ARG_DY, ROWS(QADAPTER_ARGS_ROWS, QGRAD_ROWS(&neat_no_dbias)), 1};
const neat_entry neat_qcompute_g_entry = {
    "neat_qcompute_g", "neat_qcompute_g_workspace_size", NEAT_OP_COMPUTE_G, 1, NEAT_ARG_G,
    ROWS(QARGS_ROWS(&neat_qx_unused, &neat_qB_unused), &neat_G_out), 1};
const neat_entry neat_qlowrank_forward_entry = {
    "neat_qlowrank_forward", "neat_qlowrank_forward_workspace_size", NEAT_OP_LOWRANK, 1,
    NEAT_ARG_Y,
    ROWS(&neat_qweight_row, &neat_no_weight, &neat_qG_in, &neat_qx, &neat_qB_of_G, &neat_bias,
         &neat_scale, &neat_y),
    1};
