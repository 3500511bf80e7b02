// neat_torch_common.h - torch::stable::Tensor <-> neat.h translation shared by the CPU and CUDA
// registrations. Device-specific files only build a neat_exec (thread pool or stream) and call these.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>

#include "neat.h"

namespace neat_torch {

using Tensor = torch::stable::Tensor;
using TensorList = std::vector<Tensor>;

// Throws std::runtime_error naming the op; becomes a RuntimeError in Python.
[[noreturn]] void fail(const char *op, const std::string &what);

// A neat view of t (no copy). Rejects undefined, sparse, non-float and non-CPU/CUDA tensors,
// naming `name` in the message.
neat_tensor view(const Tensor &t, const char *op, const char *name);

// CPU execution context: PyTorch's intra-op thread pool, honouring torch.set_num_threads.
neat_exec cpu_exec();

Tensor forward(const char *op, const Tensor &input, const Tensor &weight,
               const std::optional<Tensor> &bias, const Tensor &A, const Tensor &B,
               const std::vector<Tensor> &hidden, const std::string &activation, double scale,
               bool with_base, const neat_exec &exec);

// Returns (dx, dweight, dbias, dA, dB, dhidden); a gradient not asked for in output_mask is an
// empty tensor (0 elements), which the Python autograd turns into None.
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, std::vector<Tensor>> backward(
    const char *op, const Tensor &grad_out, const Tensor &input, const Tensor &weight,
    const std::optional<Tensor> &bias, const Tensor &A, const Tensor &B,
    const std::vector<Tensor> &hidden, const std::string &activation, double scale,
    const std::vector<bool> &output_mask, bool with_base, const neat_exec &exec);

Tensor compute_g(const char *op, const Tensor &weight, const Tensor &A,
                 const std::vector<Tensor> &hidden, const std::string &activation,
                 const neat_exec &exec);

}  // namespace neat_torch
