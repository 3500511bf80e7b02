// neat_torch_cuda.cpp - registers torch.ops.neat.* for CUDA through LibTorch's stable ABI.
//
// Mirrors neat_torch.cpp: the schemas are defined there (loaded first by torch_neat._load); this
// file only adds the CUDA kernels. Each call runs under a device guard on the input's device and
// on PyTorch's current stream of that device, so the C library launches exactly where PyTorch
// would (CUDA graphs, side streams, torch.compile's reduce-overhead mode). Outputs and workspace
// come from torch, hence from PyTorch's caching allocator; nothing here synchronises.
#include "neat_torch_common.h"
#include "neat_torch_quant.h"

#include <torch/csrc/inductor/aoti_torch/c/shim.h>
#include <torch/csrc/stable/accelerator.h>
#include <torch/csrc/stable/library.h>

namespace {

using neat_torch::Tensor;

// The CUDA execution context: the current stream of the tensors' device.
neat_exec cuda_exec(const Tensor &t) {
  void *stream = nullptr;
  TORCH_ERROR_CODE_CHECK(
      aoti_torch_get_current_cuda_stream(static_cast<int32_t>(t.get_device_index()), &stream));
  neat_exec exec{};
  exec.stream = stream;
  return exec;
}

using Guard = torch::stable::accelerator::DeviceGuard;

Tensor linear_cuda(Tensor input, Tensor weight, std::optional<Tensor> bias, Tensor A, Tensor B,
                   std::optional<std::vector<Tensor>> hidden, neat_torch::ActivationArg activation,
                   double scale) {
  Guard guard(input.get_device_index());
  neat_exec exec = cuda_exec(input);
  return neat_torch::forward("neat::linear", input, weight, bias, A, B,
                             hidden.value_or(neat_torch::TensorList{}), activation, scale,
                             /*with_base=*/true, exec);
}

Tensor adapter_cuda(Tensor input, Tensor weight, Tensor A, Tensor B,
                    std::optional<std::vector<Tensor>> hidden, neat_torch::ActivationArg activation,
                    double scale) {
  Guard guard(input.get_device_index());
  neat_exec exec = cuda_exec(input);
  return neat_torch::forward("neat::adapter", input, weight, std::nullopt, A, B,
                             hidden.value_or(neat_torch::TensorList{}), activation,
                             scale, /*with_base=*/false, exec);
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, std::vector<Tensor>> linear_backward_cuda(
    Tensor grad_out, Tensor input, Tensor weight, std::optional<Tensor> bias, Tensor A, Tensor B,
    std::vector<Tensor> hidden, neat_torch::ActivationArg activation, double scale,
    std::vector<bool> output_mask) {
  Guard guard(input.get_device_index());
  neat_exec exec = cuda_exec(input);
  return neat_torch::backward("neat::linear_backward", grad_out, input, weight, bias, A,
                              B, hidden, activation, scale, output_mask, /*with_base=*/true, exec);
}

std::tuple<Tensor, Tensor, Tensor, Tensor, std::vector<Tensor>> adapter_backward_cuda(
    Tensor grad_out, Tensor input, Tensor weight, Tensor A, Tensor B, std::vector<Tensor> hidden,
    neat_torch::ActivationArg activation, double scale, std::vector<bool> output_mask) {
  Guard guard(input.get_device_index());
  neat_exec exec = cuda_exec(input);
  auto r = neat_torch::backward("neat::adapter_backward", grad_out, input, weight,
                                std::nullopt, A, B, hidden, activation, scale, output_mask,
                                /*with_base=*/false, exec);
  return {std::get<0>(r), std::get<1>(r), std::get<3>(r), std::get<4>(r), std::get<5>(r)};
}

Tensor compute_g_cuda(Tensor weight, Tensor A, std::optional<std::vector<Tensor>> hidden,
                      neat_torch::ActivationArg activation) {
  Guard guard(weight.get_device_index());
  neat_exec exec = cuda_exec(weight);
  return neat_torch::compute_g("neat::compute_g", weight, A,
                               hidden.value_or(neat_torch::TensorList{}), activation, exec);
}

Tensor lowrank_linear_cuda(Tensor input, Tensor weight, std::optional<Tensor> bias, Tensor G,
                           Tensor B, double scale) {
  Guard guard(input.get_device_index());
  neat_exec exec = cuda_exec(input);
  return neat_torch::lowrank("neat::lowrank_linear", input, weight, bias, G, B, scale, exec);
}

// ---- quantized frozen weights (neat_torch_quant.h): the same packed arrays as on CPU ----
// qweight_of refuses an array that is not on the input's device, so every array, the qweight's
// device and the call's tensors agree before the C library sees them.

using QArrays = std::vector<Tensor>;
using QMeta = std::vector<int64_t>;

Tensor qlinear_cuda(Tensor input, QArrays qweight, QMeta qmeta, double qoffset,
                    std::optional<Tensor> bias, Tensor A, Tensor B,
                    std::optional<std::vector<Tensor>> hidden, neat_torch::ActivationArg activation,
                    double scale) {
  const char *op = "neat::qlinear";
  Guard guard(input.get_device_index());
  const neat_qweight q = neat_torch::qweight_of(op, qweight, qmeta, qoffset, input);
  neat_exec exec = cuda_exec(input);
  return neat_torch::forward(op, input, nullptr, &q, bias, A, B,
                             hidden.value_or(neat_torch::TensorList{}), activation, scale,
                             /*with_base=*/true, exec);
}

std::tuple<Tensor, Tensor, Tensor, Tensor, std::vector<Tensor>> qlinear_backward_cuda(
    Tensor grad_out, Tensor input, QArrays qweight, QMeta qmeta, double qoffset,
    std::optional<Tensor> bias, Tensor A, Tensor B, std::vector<Tensor> hidden,
    neat_torch::ActivationArg activation, double scale, std::vector<bool> output_mask) {
  const char *op = "neat::qlinear_backward";
  Guard guard(input.get_device_index());
  const neat_qweight q = neat_torch::qweight_of(op, qweight, qmeta, qoffset, input);
  neat_exec exec = cuda_exec(input);
  auto r = neat_torch::backward(op, grad_out, input, nullptr, &q, bias, A, B, hidden, activation,
                                scale, output_mask, /*with_base=*/true, exec);
  return {std::get<0>(r), std::get<2>(r), std::get<3>(r), std::get<4>(r), std::get<5>(r)};
}

Tensor qcompute_g_cuda(QArrays qweight, QMeta qmeta, double qoffset, Tensor A,
                       std::optional<std::vector<Tensor>> hidden,
                       neat_torch::ActivationArg activation) {
  const char *op = "neat::qcompute_g";
  Guard guard(A.get_device_index());
  const neat_qweight q = neat_torch::qweight_of(op, qweight, qmeta, qoffset, A);
  neat_exec exec = cuda_exec(A);
  return neat_torch::compute_g(op, nullptr, &q, A, hidden.value_or(neat_torch::TensorList{}),
                               activation, exec);
}

Tensor qlowrank_linear_cuda(Tensor input, QArrays qweight, QMeta qmeta, double qoffset,
                            std::optional<Tensor> bias, Tensor G, Tensor B, double scale) {
  const char *op = "neat::qlowrank_linear";
  Guard guard(input.get_device_index());
  const neat_qweight q = neat_torch::qweight_of(op, qweight, qmeta, qoffset, input);
  neat_exec exec = cuda_exec(input);
  return neat_torch::lowrank(op, input, nullptr, &q, bias, G, B, scale, exec);
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(neat, CUDA, m) {
  m.impl("linear", TORCH_BOX(&linear_cuda));
  m.impl("adapter", TORCH_BOX(&adapter_cuda));
  m.impl("linear_backward", TORCH_BOX(&linear_backward_cuda));
  m.impl("adapter_backward", TORCH_BOX(&adapter_backward_cuda));
  m.impl("compute_g", TORCH_BOX(&compute_g_cuda));
  m.impl("lowrank_linear", TORCH_BOX(&lowrank_linear_cuda));
  m.impl("qlinear", TORCH_BOX(&qlinear_cuda));
  m.impl("qlinear_backward", TORCH_BOX(&qlinear_backward_cuda));
  m.impl("qcompute_g", TORCH_BOX(&qcompute_g_cuda));
  m.impl("qlowrank_linear", TORCH_BOX(&qlowrank_linear_cuda));
}
