// neat_torch_quant.cpp - Tensor[] qweight, int[] qmeta, float qoffset -> neat_qweight (see the header).
#include "neat_torch_quant.h"

#include <cstring>
#include <string>

namespace neat_torch {

using torch::headeronly::ScalarType;

namespace {

struct Arrays {
  const char *op;
  const std::vector<Tensor> &list;
  const Tensor &like;

  // qweight[i], checked: its dtype, contiguity, device, and at least `need` elements.
  const void *get(size_t i, const char *name, ScalarType dtype, const char *dtype_name, int64_t need,
                  bool contiguous = true) const {
    const Tensor &t = list[i];
    std::string what = "qweight[" + std::to_string(i) + "] (" + name + ")";
    if (!t.defined()) fail(op, what + " is an undefined tensor");
    if (t.layout() != torch::headeronly::Layout::Strided) fail(op, what + " must be a dense (strided) tensor");
    if (t.scalar_type() != dtype)
      fail(op, what + " must be " + dtype_name + "; got " + torch::headeronly::toString(t.scalar_type()));
    if (t.device() != like.device()) fail(op, what + " must be on the input's device");
    if (contiguous && !t.is_contiguous()) fail(op, what + " must be contiguous");
    if (t.numel() < need)
      fail(op, what + " must hold at least " + std::to_string(need) + " elements; got " +
                   std::to_string(t.numel()) + " (shape " + shape_str(t) + ")");
    return t.numel() > 0 ? t.data_ptr() : nullptr;
  }
};

int64_t cdiv(int64_t a, int64_t b) { return b > 0 ? (a + b - 1) / b : 0; }

}  // namespace

neat_qweight qweight_of(const char *op, const std::vector<Tensor> &qweight,
                        const std::vector<int64_t> &qmeta, double qoffset, const Tensor &like) {
  if (qmeta.size() != 5)
    fail(op, "qmeta must be [format, d_out, d_in, blocksize, blocksize2]; got " +
                 std::to_string(qmeta.size()) + " entries");
  neat_qweight q;
  std::memset(&q, 0, sizeof q);
  q.format = static_cast<neat_qformat>(qmeta[0]);
  q.d_out = qmeta[1];
  q.d_in = qmeta[2];
  if (q.d_out < 1 || q.d_in < 1)
    fail(op, "qmeta's d_out and d_in must be at least 1; got " + std::to_string(q.d_out) + " and " +
                 std::to_string(q.d_in));
  if (q.d_out > (INT64_C(1) << 40) / q.d_in) fail(op, "qmeta's d_out * d_in is too large");
  const neat_tensor lv = view(like, op, "input");
  q.dtype = lv.dtype;
  q.device = lv.device;
  const Arrays a{op, qweight, like};
  const int64_t elems = q.d_out * q.d_in;

  if (q.format == NEAT_QFMT_NF4 || q.format == NEAT_QFMT_FP4) {
    if (qweight.size() != 3 && qweight.size() != 5)
      fail(op, "a 4-bit qweight is [data, code, absmax] or, nested, [data, code, absmax_q, code2, "
               "absmax2]; got " + std::to_string(qweight.size()) + " tensors");
    q.blocksize = qmeta[3];
    if (q.blocksize < 1) fail(op, "qmeta's blocksize must be positive for a 4-bit weight");
    const int64_t nblocks = cdiv(elems, q.blocksize);
    q.data = a.get(0, "data", ScalarType::Byte, "uint8", cdiv(elems, 2));
    q.code = static_cast<const float *>(a.get(1, "code", ScalarType::Float, "float32", 16));
    if (qweight.size() == 3) {
      if (qmeta[4] != 0) fail(op, "qmeta's blocksize2 must be 0 for a weight that is not nested");
      q.absmax = static_cast<const float *>(a.get(2, "absmax", ScalarType::Float, "float32", nblocks));
    } else {
      q.nested = 1;
      q.blocksize2 = qmeta[4];
      if (q.blocksize2 < 1) fail(op, "qmeta's blocksize2 must be positive for a nested weight");
      q.absmax_q = static_cast<const uint8_t *>(a.get(2, "absmax_q", ScalarType::Byte, "uint8", nblocks));
      q.code2 = static_cast<const float *>(a.get(3, "code2", ScalarType::Float, "float32", 256));
      q.absmax2 = static_cast<const float *>(
          a.get(4, "absmax2", ScalarType::Float, "float32", cdiv(nblocks, q.blocksize2)));
      q.offset = static_cast<float>(qoffset);
    }
  } else if (q.format == NEAT_QFMT_INT8_ROW) {
    if (qweight.size() != 2)
      fail(op, "an int8 qweight is [CB, SCB]; got " + std::to_string(qweight.size()) + " tensors");
    if (qmeta[3] != 0 || qmeta[4] != 0) fail(op, "qmeta's blocksize and blocksize2 must be 0 for int8");
    const Tensor &cb = qweight[0];
    if (cb.dim() != 2 || cb.size(0) != q.d_out || cb.size(1) != q.d_in)
      fail(op, "qweight[0] (CB) must be (d_out, d_in) = (" + std::to_string(q.d_out) + ", " +
                   std::to_string(q.d_in) + "); got " + shape_str(cb));
    if (cb.stride(1) != 1 || cb.stride(0) < q.d_in)
      fail(op, "qweight[0] (CB) must have unit column stride and a row stride >= d_in");
    q.row_stride = cb.stride(0);
    q.data = a.get(0, "CB", ScalarType::Char, "int8", 0, /*contiguous=*/false);
    q.scb = static_cast<const float *>(a.get(1, "SCB", ScalarType::Float, "float32", q.d_out));
  } else {
    fail(op, "qmeta's format must be 1 (NF4), 2 (FP4) or 3 (INT8_ROW); got " + std::to_string(qmeta[0]));
  }
  if (qoffset != 0 && !q.nested) fail(op, "qoffset must be 0 for a weight that is not nested");
  return q;
}

}  // namespace neat_torch
