// neat_torch_common.cpp - shared translation between torch::stable tensors and neat.h views.
#include "neat_torch_common.h"

#include <cstring>
#include <sstream>
#include <stdexcept>

#include <torch/headeronly/core/ScalarType.h>

namespace neat_torch {

using torch::headeronly::ScalarType;

void fail(const char *op, const std::string &what) {
  throw std::runtime_error(std::string(op) + ": " + what);
}

std::string shape_str(const Tensor &t) {
  std::ostringstream s;
  s << "(";
  for (int64_t i = 0; i < t.dim(); ++i) s << (i ? ", " : "") << t.size(i);
  if (t.dim() == 1) s << ",";
  s << ")";
  return s.str();
}

// The C library's message already names the op and its arguments (see Named).
void check(neat_status status) {
  if (status == NEAT_OK) return;
  throw std::runtime_error(std::string(neat_last_error()) + " [" + neat_status_string(status) + "]");
}

Named::Named(const char *op, const neat_exec &base) : exec(base) {
  names.call = op;
  names.arg[NEAT_ARG_X] = "input";
  names.arg[NEAT_ARG_NUM_HIDDEN] = "len(hidden)";
  names.arg[NEAT_ARG_DY] = "grad_out";
  exec.names = &names;
}

neat_tensor view(const Tensor &t, const char *op, const char *name) {
  if (!t.defined()) fail(op, std::string(name) + " is an undefined tensor");
  if (t.layout() != torch::headeronly::Layout::Strided)
    fail(op, std::string(name) + " must be a dense (strided) tensor");
  neat_tensor v;
  std::memset(&v, 0, sizeof v);
  switch (t.scalar_type()) {
    case ScalarType::Float: v.dtype = NEAT_FLOAT32; break;
    case ScalarType::Double: v.dtype = NEAT_FLOAT64; break;
    case ScalarType::BFloat16: v.dtype = NEAT_BFLOAT16; break;
    case ScalarType::Half: v.dtype = NEAT_FLOAT16; break;
    default:
      fail(op, std::string(name) + " must be a floating-point tensor (float32, float64, bfloat16 "
                                   "or float16); got " + torch::headeronly::toString(t.scalar_type()));
  }
  auto dev = t.device();
  if (dev.type() == torch::headeronly::DeviceType::CPU) {
    v.device.type = NEAT_DEVICE_CPU;
    v.device.index = 0;
  } else if (dev.type() == torch::headeronly::DeviceType::CUDA) {
    v.device.type = NEAT_DEVICE_CUDA;
    v.device.index = dev.index();
  } else {
    fail(op, std::string(name) + " must be on a cpu or cuda device");
  }
  if (t.dim() > NEAT_MAX_DIMS) fail(op, std::string(name) + " has too many dimensions");
  v.ndim = static_cast<int32_t>(t.dim());
  for (int64_t i = 0; i < t.dim(); ++i) {
    v.sizes[i] = t.size(i);
    v.strides[i] = t.stride(i);
  }
  v.data = t.numel() > 0 ? t.data_ptr() : nullptr;
  return v;
}

// A view of t into v, or NULL (the C ABI's "absent") when t is None.
const neat_tensor *optional_view(const std::optional<Tensor> &t, neat_tensor &v,
                                        const char *op, const char *name) {
  if (!t.has_value()) return nullptr;
  v = view(*t, op, name);
  return &v;
}

std::vector<neat_tensor> hidden_views(const char *op, const std::vector<Tensor> &hidden) {
  std::vector<neat_tensor> views;
  views.reserve(hidden.size());
  for (size_t i = 0; i < hidden.size(); ++i) {
    std::string name = "hidden[" + std::to_string(i) + "]";
    views.push_back(view(hidden[i], op, name.c_str()));
  }
  return views;
}

neat_activation parse_activation(const char *op, const ActivationArg &activation) {
  const std::string &name = activation.name;
  if (activation.unreadable) fail(op, "activation: torch could not pass the string");
  neat_activation act;
  // A NUL inside the name would end it early for the C parser ("relu\0junk" read as "relu").
  if (name.find('\0') != std::string::npos ||
      neat_activation_from_name(name.c_str(), &act) != NEAT_OK) {
    std::string shown;
    for (char ch : name) {
      if (ch == '\0') shown += "\\x00";
      else shown += ch;
    }
    fail(op, "unknown activation '" + shown +
                 "'; expected one of relu, sin, gelu, gelu_tanh, silu, tanh, identity");
  }
  return act;
}

void check_2d(const char *op, const Tensor &t, const char *name, const char *shape) {
  if (t.dim() != 2)
    fail(op, std::string(name) + " must be 2-D " + shape + "; got shape " + shape_str(t));
}

static const char *device_str(const Tensor &t) {
  return t.device().type() == torch::headeronly::DeviceType::CUDA ? "cuda" : "cpu";
}

// torch's own message for a failed allocation names only the shim call; say what and how big.
Tensor alloc(const char *op, const char *what, const Tensor &like,
             const std::vector<int64_t> &shape, std::optional<ScalarType> dtype) {
  try {
    return dtype ? torch::stable::new_empty(like, shape, *dtype)
                 : torch::stable::new_empty(like, shape);
  } catch (const std::exception &) {
    // torch's message names only the shim call, so it is replaced, not appended.
    double elems = 1;
    for (int64_t s : shape) elems *= static_cast<double>(s);
    double bytes = elems * static_cast<double>(dtype ? 1 : like.element_size());
    std::ostringstream msg;
    msg << "could not allocate " << what << " (" << static_cast<unsigned long long>(bytes)
        << " bytes = " << bytes / (1024.0 * 1024.0 * 1024.0) << " GiB) on " << device_str(like)
        << "; the allocator refused (out of memory?)";
    fail(op, msg.str());
  }
}

// input (..., d_in) as the (N, d_in) matrix the C ABI takes: leading dims fold into N; a 2-D
// input keeps its strides, others are viewed (or copied by reshape only when no view exists).
Tensor flatten_input(const char *op, const Tensor &input, int64_t weight_d_in, const char *weight_name) {
  int64_t d_in = input.size(-1);
  if (d_in != weight_d_in)
    fail(op, "input's last dimension must equal " + std::string(weight_name) + " = " +
                 std::to_string(weight_d_in) + " (d_in); got input shape " + shape_str(input));
  if (d_in < 1) fail(op, "input's last dimension (d_in) must be at least 1");
  return input.dim() == 2 ? input : torch::stable::reshape(input, {-1, d_in});
}

// y (N, d_out) back to input's leading dims.
Tensor unflatten_output(const Tensor &y, const Tensor &input, int64_t d_out) {
  if (input.dim() == 2) return y;
  std::vector<int64_t> out_shape;
  for (int64_t i = 0; i + 1 < input.dim(); ++i) out_shape.push_back(input.size(i));
  out_shape.push_back(d_out);
  return torch::stable::view(y, out_shape);
}

Call::Call(const char *op, const Tensor &input, const Tensor *weight_t, int64_t q_d_out, int64_t q_d_in,
           const std::optional<Tensor> &bias_t, const Tensor &A_t, const Tensor &B_t,
           const std::vector<Tensor> &hidden_t, const ActivationArg &activation, double scale) {
  if (input.dim() < 1) fail(op, "input must have at least one dimension (..., d_in); got a scalar");
  if (weight_t) check_2d(op, *weight_t, "weight", "(d_out, d_in)");
  check_2d(op, A_t, "A", "(r, d_out)");
  check_2d(op, B_t, "B", "(d_out, r)");
  for (size_t i = 0; i < hidden_t.size(); ++i)
    check_2d(op, hidden_t[i], ("hidden[" + std::to_string(i) + "]").c_str(), "(r, r)");
  // a quantized weight has no view: its dims come with its descriptor (neat_torch_quant.cpp)
  x2d = weight_t ? flatten_input(op, input, weight_t->size(1), "weight.shape[1]")
                 : flatten_input(op, input, q_d_in, "the quantized weight's d_in");
  d_in = x2d.size(1);
  d_out = weight_t ? weight_t->size(0) : q_d_out;
  n = x2d.size(0);

  std::memset(&args, 0, sizeof args);
  x = view(x2d, op, "input");
  if (weight_t) {
    weight = view(*weight_t, op, "weight");
    args.weight = &weight;
  }
  A = view(A_t, op, "A");
  B = view(B_t, op, "B");
  hidden = hidden_views(op, hidden_t);
  args.x = &x;
  args.bias = optional_view(bias_t, bias, op, "bias");
  args.A = &A;
  args.B = &B;
  args.hidden = hidden.empty() ? nullptr : hidden.data();
  args.num_hidden = static_cast<int32_t>(hidden.size());
  args.activation = parse_activation(op, activation);
  args.scale = scale;
}

Tensor workspace_like(const char *op, const Tensor &like, size_t bytes) {
  if (bytes == 0) return Tensor();
  if (bytes > static_cast<size_t>(INT64_MAX)) fail(op, "the workspace size overflows int64");
  return alloc(op, "the workspace", like, {static_cast<int64_t>(bytes)}, ScalarType::Byte);
}

void *ws_ptr(const Tensor &ws) { return ws.defined() ? ws.data_ptr() : nullptr; }

Tensor forward(const char *op, const Tensor &input, const Tensor *weight, const neat_qweight *q,
               const std::optional<Tensor> &bias, const Tensor &A, const Tensor &B,
               const std::vector<Tensor> &hidden, const ActivationArg &activation, double scale,
               bool with_base, const neat_exec &exec) {
  Call c(op, input, weight, q ? q->d_out : 0, q ? q->d_in : 0, bias, A, B, hidden, activation, scale);
  Tensor y = alloc(op, "the output", input, {c.n, c.d_out});
  neat_tensor yv = view(y, op, "output");
  const Named n(op, exec);
  size_t bytes = 0;
  if (q)
    check(with_base ? neat_qlinear_forward_workspace_size(&c.args, q, &n.exec, &bytes)
                    : neat_qadapter_forward_workspace_size(&c.args, q, &n.exec, &bytes));
  else
    check(with_base ? neat_linear_forward_workspace_size(&c.args, &n.exec, &bytes)
                    : neat_adapter_forward_workspace_size(&c.args, &n.exec, &bytes));
  Tensor ws = workspace_like(op, input, bytes);
  if (q)
    check(with_base ? neat_qlinear_forward(&yv, &c.args, q, ws_ptr(ws), bytes, &n.exec)
                    : neat_qadapter_forward(&yv, &c.args, q, ws_ptr(ws), bytes, &n.exec));
  else
    check(with_base ? neat_linear_forward(&yv, &c.args, ws_ptr(ws), bytes, &n.exec)
                    : neat_adapter_forward(&yv, &c.args, ws_ptr(ws), bytes, &n.exec));
  return unflatten_output(y, input, c.d_out);
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, std::vector<Tensor>> backward(
    const char *op, const Tensor &grad_out, const Tensor &input, const Tensor *weight,
    const neat_qweight *q, const std::optional<Tensor> &bias, const Tensor &A, const Tensor &B,
    const std::vector<Tensor> &hidden, const ActivationArg &activation, double scale,
    const std::vector<bool> &output_mask, bool with_base, const neat_exec &exec) {
  if (output_mask.size() != 6)
    fail(op, "output_mask must have 6 entries (dx, dweight, dbias, dA, dB, dhidden)");
  if (q && output_mask[1])
    fail(op, "a quantized weight is frozen: output_mask[1] (dweight) must be False");
  Call c(op, input, weight, q ? q->d_out : 0, q ? q->d_in : 0, bias, A, B, hidden, activation, scale);
  // placeholders take the weight's dtype and device, or A's when the weight is quantized
  const Tensor &like_w = weight ? *weight : A;

  bool same_shape = grad_out.dim() == input.dim() && grad_out.size(-1) == c.d_out;
  for (int64_t i = 0; same_shape && i + 1 < input.dim(); ++i)
    same_shape = grad_out.size(i) == input.size(i);
  if (!same_shape)
    fail(op, "grad_out must have the output's shape (input's leading dims, d_out = " +
                 std::to_string(c.d_out) + "); got " + shape_str(grad_out));
  Tensor dy2d = grad_out.dim() == 2 ? grad_out : torch::stable::reshape(grad_out, {-1, c.d_out});
  neat_tensor dyv = view(dy2d, op, "grad_out");

  // Not-requested gradients are 0-element placeholders (a schema cannot return None).
  auto grad_for = [&](bool wanted, const Tensor &like, std::vector<int64_t> shape) {
    return alloc(op, "a gradient", like, wanted ? shape : std::vector<int64_t>{0});
  };
  const bool want_db = output_mask[2] && with_base && bias.has_value();
  Tensor dx = grad_for(output_mask[0], input, {c.n, c.d_in});
  Tensor dw = grad_for(output_mask[1], like_w, {c.d_out, c.d_in});
  Tensor db = want_db ? alloc(op, "a gradient", *bias, {c.d_out}) : alloc(op, "a gradient", like_w, {0});
  Tensor dA = grad_for(output_mask[3], A, {A.size(0), A.size(1)});
  Tensor dB = grad_for(output_mask[4], B, {B.size(0), B.size(1)});
  std::vector<Tensor> dh;
  for (const Tensor &h : hidden) dh.push_back(grad_for(output_mask[5], h, {h.size(0), h.size(1)}));

  neat_tensor dxv, dwv, dbv, dAv, dBv;
  std::vector<neat_tensor> dhv;
  neat_grads g;
  std::memset(&g, 0, sizeof g);
  if (output_mask[0]) { dxv = view(dx, op, "dx"); g.dx = &dxv; }
  if (output_mask[1]) { dwv = view(dw, op, "dweight"); g.dweight = &dwv; }
  if (want_db) { dbv = view(db, op, "dbias"); g.dbias = &dbv; }
  if (output_mask[3]) { dAv = view(dA, op, "dA"); g.dA = &dAv; }
  if (output_mask[4]) { dBv = view(dB, op, "dB"); g.dB = &dBv; }
  if (output_mask[5] && !dh.empty()) {
    for (const Tensor &t : dh) dhv.push_back(view(t, op, "dhidden"));
    g.dhidden = dhv.data();
  }

  const Named n(op, exec);
  size_t bytes = 0;
  if (q)
    check(with_base ? neat_qlinear_backward_workspace_size(&g, &c.args, q, &n.exec, &bytes)
                    : neat_qadapter_backward_workspace_size(&g, &c.args, q, &n.exec, &bytes));
  else
    check(with_base ? neat_linear_backward_workspace_size(&g, &c.args, &n.exec, &bytes)
                    : neat_adapter_backward_workspace_size(&g, &c.args, &n.exec, &bytes));
  Tensor ws = workspace_like(op, input, bytes);
  if (q)
    check(with_base ? neat_qlinear_backward(&g, &dyv, &c.args, q, ws_ptr(ws), bytes, &n.exec)
                    : neat_qadapter_backward(&g, &dyv, &c.args, q, ws_ptr(ws), bytes, &n.exec));
  else
    check(with_base ? neat_linear_backward(&g, &dyv, &c.args, ws_ptr(ws), bytes, &n.exec)
                    : neat_adapter_backward(&g, &dyv, &c.args, ws_ptr(ws), bytes, &n.exec));
  if (output_mask[0] && input.dim() != 2) {
    std::vector<int64_t> shape;
    for (int64_t i = 0; i < input.dim(); ++i) shape.push_back(input.size(i));
    dx = torch::stable::view(dx, shape);
  }
  return {dx, dw, db, dA, dB, dh};
}

Tensor compute_g(const char *op, const Tensor *weight, const neat_qweight *q, const Tensor &A,
                 const std::vector<Tensor> &hidden, const ActivationArg &activation,
                 const neat_exec &exec) {
  if (weight) check_2d(op, *weight, "weight", "(d_out, d_in)");
  check_2d(op, A, "A", "(r, d_out)");
  for (size_t i = 0; i < hidden.size(); ++i)
    check_2d(op, hidden[i], ("hidden[" + std::to_string(i) + "]").c_str(), "(r, r)");
  neat_tensor wv, Av = view(A, op, "A");
  std::vector<neat_tensor> hv = hidden_views(op, hidden);
  neat_args args;
  std::memset(&args, 0, sizeof args);
  if (weight) {
    wv = view(*weight, op, "weight");
    args.weight = &wv;
  }
  args.A = &Av;
  args.hidden = hv.empty() ? nullptr : hv.data();
  args.num_hidden = static_cast<int32_t>(hv.size());
  args.activation = parse_activation(op, activation);
  args.scale = 1.0;
  Tensor G = alloc(op, "the output G", A, {A.size(0), weight ? weight->size(1) : q->d_in});
  neat_tensor gv = view(G, op, "G");
  const Named n(op, exec);
  size_t bytes = 0;
  check(q ? neat_qcompute_g_workspace_size(&args, q, &n.exec, &bytes)
          : neat_compute_g_workspace_size(&args, &n.exec, &bytes));
  Tensor ws = workspace_like(op, A, bytes);
  check(q ? neat_qcompute_g(&gv, &args, q, ws_ptr(ws), bytes, &n.exec)
          : neat_compute_g(&gv, &args, ws_ptr(ws), bytes, &n.exec));
  return G;
}

Tensor lowrank(const char *op, const Tensor &input, const Tensor *weight, const neat_qweight *q,
               const std::optional<Tensor> &bias, const Tensor &G, const Tensor &B, double scale,
               const neat_exec &exec) {
  if (input.dim() < 1) fail(op, "input must have at least one dimension (..., d_in); got a scalar");
  if (weight) check_2d(op, *weight, "weight", "(d_out, d_in)");
  check_2d(op, G, "G", "(r, d_in)");
  check_2d(op, B, "B", "(d_out, r)");
  Tensor x2d = weight ? flatten_input(op, input, weight->size(1), "weight.shape[1]")
                      : flatten_input(op, input, q->d_in, "the quantized weight's d_in");
  neat_tensor xv = view(x2d, op, "input"), wv;
  if (weight) wv = view(*weight, op, "weight");
  neat_tensor gv = view(G, op, "G"), Bv = view(B, op, "B"), bv;
  const neat_lowrank_args la{&xv, weight ? &wv : nullptr, optional_view(bias, bv, op, "bias"), &gv, &Bv, scale};
  const Named n(op, exec);
  size_t bytes = 0;
  check(q ? neat_qlowrank_forward_workspace_size(&la, q, &n.exec, &bytes)
          : neat_lowrank_forward_workspace_size(&la, &n.exec, &bytes));
  const int64_t d_out = weight ? weight->size(0) : q->d_out;
  Tensor y = alloc(op, "the output", input, {x2d.size(0), d_out});
  neat_tensor yv = view(y, op, "output");
  Tensor ws = workspace_like(op, input, bytes);
  check(q ? neat_qlowrank_forward(&yv, &la, q, ws_ptr(ws), bytes, &n.exec)
          : neat_lowrank_forward(&yv, &la, ws_ptr(ws), bytes, &n.exec));
  return unflatten_output(y, input, d_out);
}

}  // namespace neat_torch
