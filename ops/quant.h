/*
 * quant.h - quantized frozen weights (neat_qweight, shim/neat.h): the descriptor's checks and
 * its dequantizer (internal; docs/design.md §5.2).
 *
 * Nothing here forms W: the dequantizer writes any rectangle of W the caller asks for into a
 * float panel the caller carved from the workspace (ops/qgemm.c, ops/gstack.c).
 */
#ifndef NEAT_QUANT_H
#define NEAT_QUANT_H

#include "neat.h"
#include "validate.h"

/* The arrays of a descriptor, as overlap messages name them ("qweight.absmax"); their index
 * is the one of NEAT_KEY(NEAT_ARG_QWEIGHT, index). */
enum {
    NEAT_QF_DATA,
    NEAT_QF_CODE,
    NEAT_QF_ABSMAX,
    NEAT_QF_ABSMAX_Q,
    NEAT_QF_CODE2,
    NEAT_QF_ABSMAX2,
    NEAT_QF_SCB,
    NEAT_QF_COUNT
};
const char *neat_qweight_field(unsigned index);

/* The format, before anything else is read (a bad format makes every other field moot). */
neat_status neat_check_qformat(const neat_check *c, const neat_qweight *q);

/* After the qweight row has set the device, the dtype and (d_out, d_in): every field the
 * format reads (presence, values, alignment, extent) and none it does not; the arrays become
 * input spans of c for the overlap rules. */
neat_status neat_check_qweight_fields(neat_check *c, const neat_qweight *q);

/* A view with q's shape, dtype and device and no data: what the code that reads only weight's
 * shape and dtype sees in a quantized call. */
neat_tensor neat_qweight_shape(const neat_qweight *q);
/* args as the float code reads them: without qw, args itself; with qw, a copy in *copy whose weight is
 * *shape, the data-less view of qw's dims and dtype (the values come through qw). */
const neat_args *neat_qargs(const neat_args *args, const neat_qweight *qw, neat_args *copy,
                            neat_tensor *shape);

/* W[i0 : i0 + rows, k0 : k0 + cols] into dst (row-major, row stride ld elements) in dtype
 * (float32 or float64). */
void neat_dequant_panel(const neat_qweight *q, neat_dtype dtype, int64_t i0, int64_t rows,
                        int64_t k0, int64_t cols, void *dst, int64_t ld);

/* The same with the rows spread over exec's lanes; each element's value does not depend on
 * who computes it, so neither does the panel. */
void neat_dequant_panel_par(const neat_qweight *q, neat_dtype dtype, int64_t i0, int64_t rows,
                            int64_t k0, int64_t cols, void *dst, int64_t ld,
                            const neat_exec *exec);

/* The same panel on CUDA (cuda/quant.cu; CUDA and emulated builds only): dst is device memory
 * on q's device, written on `stream` (NULL: the default stream) before the call returns. For
 * the tests, which hold it to the reference bit for bit. */
neat_status neat_cuda_dequant_panel(const neat_qweight *q, neat_dtype dtype, int64_t i0,
                                    int64_t rows, int64_t k0, int64_t cols, void *dst, int64_t ld,
                                    void *stream);

#endif /* NEAT_QUANT_H */
