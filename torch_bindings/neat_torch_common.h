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

Tensor forward(const char *op, const Tensor &input, const Tensor &weight,
               const std::optional<Tensor> &bias, const Tensor &A, const Tensor &B,
               const std::vector<Tensor> &hidden, const ActivationArg &activation, double scale,
               bool with_base, const neat_exec &exec);

// Returns (dx, dweight, dbias, dA, dB, dhidden); a gradient not asked for in output_mask is an
// empty tensor (0 elements), which the Python autograd turns into None.
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, std::vector<Tensor>> backward(
    const char *op, const Tensor &grad_out, const Tensor &input, const Tensor &weight,
    const std::optional<Tensor> &bias, const Tensor &A, const Tensor &B,
    const std::vector<Tensor> &hidden, const ActivationArg &activation, double scale,
    const std::vector<bool> &output_mask, bool with_base, const neat_exec &exec);

Tensor compute_g(const char *op, const Tensor &weight, const Tensor &A,
                 const std::vector<Tensor> &hidden, const ActivationArg &activation,
                 const neat_exec &exec);

// y = input W^T + b + s (input G^T) B^T with G kept (inference; neat_lowrank_forward).
Tensor lowrank(const char *op, const Tensor &input, const Tensor &weight,
               const std::optional<Tensor> &bias, const Tensor &G, const Tensor &B, double scale,
               const neat_exec &exec);

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
