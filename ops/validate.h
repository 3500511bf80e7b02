/*
 * validate.h - the one place every public call's arguments are checked (internal).
 *
 * neat_validate runs an entry point's rows (op_table.h) with one loop; after NEAT_OK the backends
 * may rely on everything backend.h promises. Every failure sets a message naming the call, the
 * argument, what was expected and what was got, by the names in exec->names where the caller
 * gave some. Messages are formatted only on failure: a valid call formats nothing.
 */
#ifndef NEAT_VALIDATE_H
#define NEAT_VALIDATE_H

#include <stddef.h>
#include <stdint.h>

#include "neat.h"
#include "op_table.h"

/*
 * Size limits (stated in shim/neat.h). Every matrix a call reads, writes or forms internally
 * (x, weight, y, A, B, G = (r, d_in), U = (N, r), an (r, r) product) has at most
 * 2^NEAT_MAX_MATRIX_LOG2 elements, so r <= 2^20. With at most NEAT_MAX_THREADS lanes, the
 * CPU workspace (its largest terms: l lanes of GEMM pack buffers that grow with r, the G stack's
 * per-group dA/dH partials, the skinny GEMM's copies of a 2^40-element operand) stays below
 * 2^52 bytes, far from size_t overflow, and the int64 products behind it below 2^48.
 */
#define NEAT_MAX_MATRIX_LOG2 40
#define NEAT_MAX_MATRIX_ELEMS ((int64_t)1 << NEAT_MAX_MATRIX_LOG2)
#define NEAT_MAX_THREADS (1 << 16)

/* The shapes, device and dtypes of a validated call. */
typedef struct neat_problem {
    neat_device device;
    neat_dtype dtype;       /* weight's */
    neat_dtype param_dtype; /* the adapter's: A's, or G's for neat_lowrank_forward */
    unsigned param_arg;     /* NEAT_ARG_A or NEAT_ARG_G */
    unsigned base_arg;      /* what set the device and dtype: NEAT_ARG_WEIGHT or QWEIGHT */
    int64_t sym[NEAT_SYM_COUNT];
} neat_problem;

/*
 * An argument as messages name it: its neat_arg and, for an element of a list, its index. Keys
 * order the tensors as overlap messages report them: x, weight, bias, A, G, B, hidden[i], dy
 * among inputs, y, G, dx, dweight, dbias, dA, dB, dhidden[i] among outputs.
 */
#define NEAT_KEY(arg, index) ((unsigned)(arg) << 8 | (unsigned)((index) + 1))

/* The bytes [lo, hi) a non-empty view spans. */
typedef struct neat_span {
    uintptr_t lo, hi;
    unsigned key;
} neat_span;

/* The arrays of a neat_qweight (quant.h's NEAT_QF_COUNT). */
#define NEAT_QWEIGHT_SPANS 7

/* Every tensor of a call at most: x, weight, bias, A or G, B, dy, y or G, five gradients, two
 * lists of NEAT_MAX_HIDDEN and a qweight's arrays. */
#define NEAT_MAX_SPANS (NEAT_ARG_LAST + 1 + 2 * NEAT_MAX_HIDDEN + NEAT_QWEIGHT_SPANS)

/* One call being checked: how messages name it and, once checked, its problem and tensors. */
typedef struct neat_check {
    const char *fn;          /* message prefix: exec->names->call, or the C function's name */
    const neat_names *names; /* exec->names, or NULL */
    neat_problem p;
    int n_in, n_out;
    neat_span in[NEAT_MAX_SPANS], out[NEAT_MAX_SPANS];
} neat_check;

/* The arguments of one public call as it received them (members it does not take are NULL). */
typedef struct neat_call {
    const neat_args *args;
    const neat_lowrank_args *lowrank;
    const neat_grads *grads;
    neat_tensor *out; /* y, or G for neat_compute_g */
    const neat_tensor *dy;
    const neat_qweight *qweight; /* the neat_q* calls */
} neat_call;

/* Starts checking a call of e (its size query when query != 0); exec may be NULL. */
void neat_check_begin(neat_check *c, const neat_entry *e, const neat_exec *exec, int query);
/* Runs e's rows over call; then, for a compute call, the overlap rules; then exec's limits. */
neat_status neat_validate(neat_check *c, const neat_entry *e, const neat_call *call,
                          const neat_exec *exec, int query);
/* After neat_validate of a compute call: [workspace, workspace + bytes) overlaps none of its
 * tensors. */
neat_status neat_validate_workspace(const neat_check *c, const void *workspace, size_t bytes);

/* ---- names (validate.c) ---- */

/* The name of arg (a neat_arg or op_table.h's extra ones) in c's messages. */
const char *neat_arg_name(const neat_check *c, unsigned arg);
/* The name of a key's tensor, "hidden[2]" for a list element, "qweight.absmax" for an array of
 * a qweight. */
void neat_key_name(const neat_check *c, unsigned key, char *buf, size_t n);

/* ---- views (view.c) ---- */

const char *neat_dtype_name(neat_dtype dtype);
const char *neat_device_name(neat_device_type type);
/* "(2, 3)" */
void neat_dims_str(const int64_t *v, int32_t ndim, char *buf, size_t n);
/*
 * What every view must satisfy whatever its role: a rank of 0..NEAT_MAX_DIMS, sizes
 * and strides >= 0, an element count and byte extent that int64 / ptrdiff_t hold, data where
 * there are elements, no wrap past the address space; for an output, no two elements at one
 * address. Sets *span to the bytes it covers (lo == hi when empty).
 */
neat_status neat_check_layout(const neat_check *c, unsigned key, const neat_tensor *t,
                              int is_output, neat_span *span);

#endif /* NEAT_VALIDATE_H */
