// neat_torch_quant.h - a quantized frozen weight as the ops take it, turned into a neat_qweight.
//
// The ops (neat::qlinear and friends, docs/design.md §3.1 and §5.2) take the weight as three
// arguments: `Tensor[] qweight` (the arrays), `int[] qmeta` = [format, d_out, d_in, blocksize,
// blocksize2] and `float qoffset`. qweight holds, by format:
//   NF4 / FP4:        [data (uint8), code (16 float32), absmax (float32)]
//   NF4 / FP4 nested: [data, code, absmax_q (uint8), code2 (256 float32), absmax2 (float32)]
//   INT8_ROW:         [CB (int8, (d_out, d_in), unit column stride), SCB (d_out float32)]
// Every array must be contiguous (CB: its rows may be strided) and on input's device. The C
// library checks the values; the binding checks what only it can see: each array's dtype and
// that it holds at least the elements the descriptor makes the library read.
#pragma once

#include <cstdint>
#include <vector>

#include "neat_torch_common.h"

namespace neat_torch {

// The descriptor for a call computing in `dtype` on `device` (the input's). Points into the
// tensors of qweight, which the caller keeps alive for the call.
neat_qweight qweight_of(const char *op, const std::vector<Tensor> &qweight,
                        const std::vector<int64_t> &qmeta, double qoffset, const Tensor &like);

}  // namespace neat_torch
