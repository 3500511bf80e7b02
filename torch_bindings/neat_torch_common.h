// neat_torch_common.h - torch::stable::Tensor <-> neat.h translation shared by the CPU and CUDA
// registrations. Device-specific files only build a neat_exec (thread pool or stream) and call these.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/stableivalue_conversions.h>
#include <torch/csrc/stable/tensor.h>
#include <torch/headeronly/core/ScalarType.h>

#include "neat.h"

namespace neat_torch {

using Tensor = torch::stable::Tensor;
using TensorList = std::vector<Tensor>;

// The `str activation` argument as the kernels receive it. torch's own std::string conversion
// (stableivalue_conversions.h, ToImpl<std::string>) leaks a heap copy on every call, so the
// kernels take this type instead and its conversion below frees what it reads. The name is
// parsed later, in the kernel body: throwing while the stack is being unboxed would leak the
// arguments not yet unboxed.
struct ActivationArg {
  std::string name;
  bool unreadable = false;  // torch could not hand the string over
};

// Throws std::runtime_error naming the op; becomes a RuntimeError in Python.
[[noreturn]] void fail(const char *op, const std::string &what);

// A neat view of t (no copy). Rejects undefined, sparse, non-float and non-CPU/CUDA tensors,
// naming `name` in the message.
neat_tensor view(const Tensor &t, const char *op, const char *name);

// CPU execution context: PyTorch's intra-op thread pool, honouring torch.set_num_threads.
// The pool is called from inside the C library, where no C++ exception may unwind; a failure
// of the pool is recorded here instead and thrown by rethrow() once the C call has returned.
class CpuExec {
 public:
  CpuExec();
  CpuExec(const CpuExec &) = delete;
  CpuExec &operator=(const CpuExec &) = delete;
  const neat_exec &exec() const { return exec_; }
  void rethrow(const char *op) const;

 private:
  static void hook(int64_t begin, int64_t end, int64_t grain, neat_parallel_body body, void *ctx,
                   void *user);
  neat_exec exec_{};
  std::string error_;
};

// ---- helpers shared by the translation files (neat_torch_common.cpp, neat_torch_quant.cpp) ----

// Throws the C library's message (it already names the op and its arguments) unless status is OK.
void check(neat_status status);
std::string shape_str(const Tensor &t);
void check_2d(const char *op, const Tensor &t, const char *name, const char *shape);
neat_activation parse_activation(const char *op, const ActivationArg &activation);
// A view of t into v, or NULL (the C ABI's "absent") when t is None.
const neat_tensor *optional_view(const std::optional<Tensor> &t, neat_tensor &v, const char *op,
                                 const char *name);
std::vector<neat_tensor> hidden_views(const char *op, const std::vector<Tensor> &hidden);
// torch's allocation with a message that says what and how big when it fails.
Tensor alloc(const char *op, const char *what, const Tensor &like, const std::vector<int64_t> &shape,
             std::optional<torch::headeronly::ScalarType> dtype = std::nullopt);
// input (..., d_in) as the (N, d_in) matrix the C ABI takes; d_in must equal weight_d_in.
Tensor flatten_input(const char *op, const Tensor &input, int64_t weight_d_in, const char *weight_name);
// y (N, d_out) back to input's leading dims.
Tensor unflatten_output(const Tensor &y, const Tensor &input, int64_t d_out);
Tensor workspace_like(const char *op, const Tensor &like, size_t bytes);
void *ws_ptr(const Tensor &ws);

// exec with the op's names for the C library's messages: the op instead of the C function, and
// the op's argument names where the C ABI's differ (x is the notation of docs/design.md §1.1 for
// input; the op takes hidden as a list, not a count; dy is the op's grad_out).
struct Named {
  neat_names names{};
  neat_exec exec;
  Named(const char *op, const neat_exec &base);
  Named(const Named &) = delete;
  Named &operator=(const Named &) = delete;
};

// Everything a forward or backward call needs, kept alive together: views point into this struct.
// weight_t NULL: the weight is quantized and (q_d_out, q_d_in) are its dims; args.weight stays NULL.
struct Call {
  neat_tensor x, weight, bias, A, B;
  std::vector<neat_tensor> hidden;
  neat_args args;
  Tensor x2d;
  int64_t n = 0, d_in = 0, d_out = 0;

  Call(const char *op, const Tensor &input, const Tensor *weight_t, int64_t q_d_out, int64_t q_d_in,
       const std::optional<Tensor> &bias_t, const Tensor &A_t, const Tensor &B_t,
       const std::vector<Tensor> &hidden_t, const ActivationArg &activation, double scale);
  Call(const Call &) = delete;
  Call &operator=(const Call &) = delete;
};

// weight given (float) or q given (quantized, neat_q* entry points); exactly one of the two.
Tensor forward(const char *op, const Tensor &input, const Tensor *weight, const neat_qweight *q,
               const std::optional<Tensor> &bias, const Tensor &A, const Tensor &B,
               const std::vector<Tensor> &hidden, const ActivationArg &activation, double scale,
               bool with_base, const neat_exec &exec);
inline Tensor forward(const char *op, const Tensor &input, const Tensor &weight,
                      const std::optional<Tensor> &bias, const Tensor &A, const Tensor &B,
                      const std::vector<Tensor> &hidden, const ActivationArg &activation,
                      double scale, bool with_base, const neat_exec &exec) {
  return forward(op, input, &weight, nullptr, bias, A, B, hidden, activation, scale, with_base, exec);
}

// Returns (dx, dweight, dbias, dA, dB, dhidden); a gradient not asked for in output_mask is an
// empty tensor (0 elements), which the Python autograd turns into None. With q, dweight must
// not be asked for (a quantized weight is frozen).
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, std::vector<Tensor>> backward(
    const char *op, const Tensor &grad_out, const Tensor &input, const Tensor *weight,
    const neat_qweight *q, const std::optional<Tensor> &bias, const Tensor &A, const Tensor &B,
    const std::vector<Tensor> &hidden, const ActivationArg &activation, double scale,
    const std::vector<bool> &output_mask, bool with_base, const neat_exec &exec);
inline std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, std::vector<Tensor>> backward(
    const char *op, const Tensor &grad_out, const Tensor &input, const Tensor &weight,
    const std::optional<Tensor> &bias, const Tensor &A, const Tensor &B,
    const std::vector<Tensor> &hidden, const ActivationArg &activation, double scale,
    const std::vector<bool> &output_mask, bool with_base, const neat_exec &exec) {
  return backward(op, grad_out, input, &weight, nullptr, bias, A, B, hidden, activation, scale,
                  output_mask, with_base, exec);
}

Tensor compute_g(const char *op, const Tensor *weight, const neat_qweight *q, const Tensor &A,
                 const std::vector<Tensor> &hidden, const ActivationArg &activation,
                 const neat_exec &exec);
inline Tensor compute_g(const char *op, const Tensor &weight, const Tensor &A,
                        const std::vector<Tensor> &hidden, const ActivationArg &activation,
                        const neat_exec &exec) {
  return compute_g(op, &weight, nullptr, A, hidden, activation, exec);
}

// y = input W^T + b + s (input G^T) B^T with G kept (inference; neat_lowrank_forward).
Tensor lowrank(const char *op, const Tensor &input, const Tensor *weight, const neat_qweight *q,
               const std::optional<Tensor> &bias, const Tensor &G, const Tensor &B, double scale,
               const neat_exec &exec);
inline Tensor lowrank(const char *op, const Tensor &input, const Tensor &weight,
                      const std::optional<Tensor> &bias, const Tensor &G, const Tensor &B,
                      double scale, const neat_exec &exec) {
  return lowrank(op, input, &weight, nullptr, bias, G, B, scale, exec);
}

}  // namespace neat_torch

// Unboxing of ActivationArg: copies the string, then frees torch's handle (on every path).
HIDDEN_NAMESPACE_BEGIN(torch, stable, detail)
template <>
struct ToImpl<neat_torch::ActivationArg> {
  static neat_torch::ActivationArg call(StableIValue val,
                                        [[maybe_unused]] uint64_t extension_build_version,
                                        [[maybe_unused]] bool is_internal) {
    StringHandle handle = torch::stable::detail::to<StringHandle>(val);
    neat_torch::ActivationArg arg;
    size_t length = 0;
    const char *data = nullptr;
    bool ok = torch_string_length(handle, &length) == AOTI_TORCH_SUCCESS &&
              torch_string_c_str(handle, &data) == AOTI_TORCH_SUCCESS;
    if (ok)
      arg.name.assign(data, length);
    else
      arg.unreadable = true;
    (void)torch_delete_string(handle);  // nothing to do if even this fails; never throw here
    return arg;
  }
};
HIDDEN_NAMESPACE_END(torch, stable, detail)
