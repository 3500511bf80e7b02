/*
 * op_table.h - one description per public entry point (internal).
 *
 * An entry point is its C names, the backend call it routes to, and its arguments as rows: what
 * each argument is (a view with a rank, dims and a dtype role, a list of views, a scalar), in the
 * order they are checked. ops/validate.c runs the rows of any entry with one loop and
 * ops/dispatch.c runs every entry with one driver, so a new entry point or a new kind of
 * argument (a quantized weight's codes and scales: a new role and new rows) is a new row or
 * table here, not new checking code.
 */
#ifndef NEAT_OP_TABLE_H
#define NEAT_OP_TABLE_H

#include <stdint.h>

#include "neat.h"

/* The dims a shape can name. The first view with a dim of a symbol binds it (see NEAT_BINDS). */
typedef enum neat_sym {
    NEAT_SYM_N,
    NEAT_SYM_D_IN,
    NEAT_SYM_D_OUT,
    NEAT_SYM_R,
    NEAT_SYM_INDEX, /* the element's index in a list argument (for the shape text only) */
    NEAT_SYM_COUNT
} neat_sym;

/* A dim of a row: its symbol, plus NEAT_BINDS where any size is accepted and becomes the
 * symbol's value for the rows after it. */
#define NEAT_BINDS 0x80
#define NEAT_SYM_OF(dim) ((neat_sym)((dim) & ~NEAT_BINDS))

/* Arguments that messages name but neat_names does not (no binding renames them). */
enum {
    NEAT_ARG_ADAPTER = NEAT_NAMES_CAPACITY, /* "the adapter", in a matrix limit's message */
    NEAT_ARG_GRADS,
    NEAT_NO_ARG
};

/*
 * Which dtype a view must have. The reference dtypes are weight's (the base) and the adapter's
 * (A's, or G's for neat_lowrank_forward), which may differ on CUDA (mixed precision); validate.c
 * holds each role's rule and its message.
 */
typedef enum neat_role {
    NEAT_ROLE_BASE,   /* weight's: x, bias, y, dy, dx, dweight, dbias */
    NEAT_ROLE_PARAM,  /* the adapter's: B, hidden and the adapter's gradients */
    NEAT_ROLE_EITHER, /* either: G written by neat_compute_g */
    NEAT_ROLE_COUNT
} neat_role;

typedef enum neat_row_kind {
    NEAT_ROW_VIEW,       /* one view, args[arg] */
    NEAT_ROW_LIST,       /* num_hidden views (hidden, dhidden) */
    NEAT_ROW_FORBIDDEN,  /* must be NULL; shape holds the reason */
    NEAT_ROW_NUM_HIDDEN, /* num_hidden in range, hidden given when it is not 0 */
    NEAT_ROW_ACTIVATION,
    NEAT_ROW_SCALE,
    NEAT_ROW_GRADS,  /* the neat_grads struct itself */
    NEAT_ROW_QWEIGHT /* a neat_qweight: sets the base like weight (NEAT_SETS_BASE), then its
                        format's fields (quant.c) */
} neat_row_kind;

/* Row flags. */
#define NEAT_OUT 0x01         /* written by the call: no element aliases another, nothing overlaps it */
#define NEAT_OPTIONAL 0x02    /* may be NULL; in a list, an element whose data is NULL is skipped */
#define NEAT_SETS_BASE 0x04   /* weight: sets the device, the base dtype and its dims */
#define NEAT_SETS_PARAM 0x08  /* A or G: sets the adapter's dtype (its own rule) and r */
#define NEAT_NONEMPTY 0x10    /* the dims it binds must be >= 1 */

/* Most matrix limits a row checks, and most dims of a row's views. */
#define NEAT_ROW_LIMITS 3
#define NEAT_ROW_DIMS 2

/* A matrix (rows x cols, in symbols) a call reads, writes or forms, checked against
 * NEAT_MAX_MATRIX_ELEMS once its row passed; named after the arguments who (the second one may
 * be NEAT_NO_ARG) and what (a prefix such as "G's shape " or ""). */
typedef struct neat_limit {
    uint8_t who[2];
    const char *what;
    uint8_t rows, cols;
} neat_limit;

typedef struct neat_row {
    neat_row_kind kind;
    uint8_t arg;   /* neat_arg, or one of the enum above */
    uint8_t role;  /* neat_role */
    uint8_t flags; /* NEAT_OUT, ... */
    uint8_t rank;
    uint8_t dims[NEAT_ROW_DIMS];
    /* How messages explain the expected shape: a printf format whose %lld take the values of
     * the symbols in shape_of. For a NEAT_ROW_FORBIDDEN row, why it must be NULL. */
    const char *shape;
    uint8_t shape_of[3];
    neat_limit limits[NEAT_ROW_LIMITS]; /* what == NULL ends the list */
} neat_row;

typedef enum neat_op {
    NEAT_OP_FORWARD,
    NEAT_OP_BACKWARD,
    NEAT_OP_COMPUTE_G,
    NEAT_OP_LOWRANK
} neat_op;

typedef struct neat_entry {
    const char *fn;    /* the compute call's C name */
    const char *query; /* its workspace size query's C name */
    neat_op op;
    int with_base;     /* backend.h's with_base */
    uint8_t needed;    /* the view a compute call cannot do without: y, dy or G */
    const neat_row *const *rows; /* in the order they are checked; NULL ends */
    int quantized;     /* takes a neat_qweight (the neat_q* calls) */
} neat_entry;

extern const neat_entry neat_linear_forward_entry;
extern const neat_entry neat_adapter_forward_entry;
extern const neat_entry neat_linear_backward_entry;
extern const neat_entry neat_adapter_backward_entry;
extern const neat_entry neat_compute_g_entry;
extern const neat_entry neat_lowrank_forward_entry;
extern const neat_entry neat_qlinear_forward_entry;
extern const neat_entry neat_qadapter_forward_entry;
extern const neat_entry neat_qlinear_backward_entry;
extern const neat_entry neat_qadapter_backward_entry;
extern const neat_entry neat_qcompute_g_entry;
extern const neat_entry neat_qlowrank_forward_entry;

#endif /* NEAT_OP_TABLE_H */
