// neat_torch.cpp - registers torch.ops.neat.* for CPU through LibTorch's stable ABI.
//
// The only job of this file is translation: torch::stable::Tensor -> neat_tensor views, output and
// workspace allocation with torch, PyTorch's thread pool as the parallel-for hook, and neat_status
// -> exception. All math lives behind shim/neat.h. Built against TORCH_TARGET_VERSION 2.10 so one
// binary loads in every torch >= 2.10.
#include "neat_torch_common.h"
#include "neat_torch_gemm.h"
#include "neat_torch_quant.h"

#include <string>

#include <torch/csrc/stable/library.h>

namespace neat_torch {

CpuExec::CpuExec() {
  uint32_t threads = 1;
  TORCH_ERROR_CODE_CHECK(torch_get_num_threads(&threads));
  exec_.parallel_for = &CpuExec::hook;
  exec_.parallel_user = this;
  exec_.num_threads = static_cast<int32_t>(threads);
  exec_.stream = nullptr;
  // the large products on torch's BLAS where the plan says it is faster (neat_torch_gemm.h)
  install_host_gemm(exec_);
}

// PyTorch's intra-op pool as neat's parallel-for: honours torch.set_num_threads. This runs
// inside C frames, so nothing may escape it: a failure is recorded for rethrow(). The C library
// then finishes its call with some chunks possibly not run, and the binding discards its result.
void CpuExec::hook(int64_t begin, int64_t end, int64_t grain, neat_parallel_body body, void *ctx,
                   void *user) {
  CpuExec *self = static_cast<CpuExec *>(user);
  try {
    // torch_parallel_for calls back with (begin, end, ctx), the shape of neat_parallel_body.
    if (torch_parallel_for(begin, end, grain, body, ctx) != AOTI_TORCH_SUCCESS && self->error_.empty())
      self->error_ = "PyTorch's parallel_for failed";
  } catch (const std::exception &e) {
    if (self->error_.empty()) self->error_ = std::string("PyTorch's parallel_for failed: ") + e.what();
  } catch (...) {
    if (self->error_.empty()) self->error_ = "PyTorch's parallel_for failed with an unknown exception";
  }
}

void CpuExec::rethrow(const char *op) const {
  if (!error_.empty()) fail(op, error_);
}

}  // namespace neat_torch

using neat_torch::Tensor;

// Runs f on PyTorch's pool, then reports a failure of the pool (see CpuExec).
template <typename F>
static auto on_cpu(const char *op, F &&f) {
  neat_torch::CpuExec cpu;
  auto result = f(cpu.exec());
  cpu.rethrow(op);
  return result;
}

static Tensor linear_cpu(Tensor input, Tensor weight, std::optional<Tensor> bias, Tensor A, Tensor B,
                         std::optional<std::vector<Tensor>> hidden, neat_torch::ActivationArg activation,
                         double scale) {
  return on_cpu("neat::linear", [&](const neat_exec &exec) {
    return neat_torch::forward("neat::linear", input, weight, bias, A, B,
                               hidden.value_or(neat_torch::TensorList{}), activation, scale,
                               /*with_base=*/true, exec);
  });
}

static Tensor adapter_cpu(Tensor input, Tensor weight, Tensor A, Tensor B,
                          std::optional<std::vector<Tensor>> hidden, neat_torch::ActivationArg activation,
                          double scale) {
  return on_cpu("neat::adapter", [&](const neat_exec &exec) {
    return neat_torch::forward("neat::adapter", input, weight, std::nullopt, A, B,
                               hidden.value_or(neat_torch::TensorList{}), activation, scale,
                               /*with_base=*/false, exec);
  });
}

static std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, std::vector<Tensor>> linear_backward_cpu(
    Tensor grad_out, Tensor input, Tensor weight, std::optional<Tensor> bias, Tensor A, Tensor B,
    std::vector<Tensor> hidden, neat_torch::ActivationArg activation, double scale,
    std::vector<bool> output_mask) {
  return on_cpu("neat::linear_backward", [&](const neat_exec &exec) {
    return neat_torch::backward("neat::linear_backward", grad_out, input, weight, bias, A, B,
                                hidden, activation, scale, output_mask, /*with_base=*/true, exec);
  });
}

static std::tuple<Tensor, Tensor, Tensor, Tensor, std::vector<Tensor>> adapter_backward_cpu(
    Tensor grad_out, Tensor input, Tensor weight, Tensor A, Tensor B, std::vector<Tensor> hidden,
    neat_torch::ActivationArg activation, double scale, std::vector<bool> output_mask) {
  auto r = on_cpu("neat::adapter_backward", [&](const neat_exec &exec) {
    return neat_torch::backward("neat::adapter_backward", grad_out, input, weight, std::nullopt,
                                A, B, hidden, activation, scale, output_mask,
                                /*with_base=*/false, exec);
  });
  return {std::get<0>(r), std::get<1>(r), std::get<3>(r), std::get<4>(r), std::get<5>(r)};
}

static Tensor compute_g_cpu(Tensor weight, Tensor A, std::optional<std::vector<Tensor>> hidden,
                            neat_torch::ActivationArg activation) {
  return on_cpu("neat::compute_g", [&](const neat_exec &exec) {
    return neat_torch::compute_g("neat::compute_g", weight, A,
                                 hidden.value_or(neat_torch::TensorList{}), activation, exec);
  });
}

static Tensor lowrank_linear_cpu(Tensor input, Tensor weight, std::optional<Tensor> bias, Tensor G,
                                 Tensor B, double scale) {
  return on_cpu("neat::lowrank_linear", [&](const neat_exec &exec) {
    return neat_torch::lowrank("neat::lowrank_linear", input, weight, bias, G, B, scale, exec);
  });
}

// ---- quantized frozen weights: qweight / qmeta / qoffset as neat_torch_quant.h describes ----

using QArrays = std::vector<Tensor>;
using QMeta = std::vector<int64_t>;

static Tensor qlinear_cpu(Tensor input, QArrays qweight, QMeta qmeta, double qoffset,
                          std::optional<Tensor> bias, Tensor A, Tensor B,
                          std::optional<std::vector<Tensor>> hidden, neat_torch::ActivationArg activation,
                          double scale) {
  const char *op = "neat::qlinear";
  const neat_qweight q = neat_torch::qweight_of(op, qweight, qmeta, qoffset, input);
  return on_cpu(op, [&](const neat_exec &exec) {
    return neat_torch::forward(op, input, nullptr, &q, bias, A, B,
                               hidden.value_or(neat_torch::TensorList{}), activation, scale,
                               /*with_base=*/true, exec);
  });
}

// (dx, dbias, dA, dB, dhidden): a quantized weight gets no gradient, so output_mask[1] is False.
static std::tuple<Tensor, Tensor, Tensor, Tensor, std::vector<Tensor>> qlinear_backward_cpu(
    Tensor grad_out, Tensor input, QArrays qweight, QMeta qmeta, double qoffset,
    std::optional<Tensor> bias, Tensor A, Tensor B, std::vector<Tensor> hidden,
    neat_torch::ActivationArg activation, double scale, std::vector<bool> output_mask) {
  const char *op = "neat::qlinear_backward";
  const neat_qweight q = neat_torch::qweight_of(op, qweight, qmeta, qoffset, input);
  auto r = on_cpu(op, [&](const neat_exec &exec) {
    return neat_torch::backward(op, grad_out, input, nullptr, &q, bias, A, B, hidden, activation,
                                scale, output_mask, /*with_base=*/true, exec);
  });
  return {std::get<0>(r), std::get<2>(r), std::get<3>(r), std::get<4>(r), std::get<5>(r)};
}

static Tensor qcompute_g_cpu(QArrays qweight, QMeta qmeta, double qoffset, Tensor A,
                             std::optional<std::vector<Tensor>> hidden,
                             neat_torch::ActivationArg activation) {
  const char *op = "neat::qcompute_g";
  const neat_qweight q = neat_torch::qweight_of(op, qweight, qmeta, qoffset, A);
  return on_cpu(op, [&](const neat_exec &exec) {
    return neat_torch::compute_g(op, nullptr, &q, A, hidden.value_or(neat_torch::TensorList{}),
                                 activation, exec);
  });
}

static Tensor qlowrank_linear_cpu(Tensor input, QArrays qweight, QMeta qmeta, double qoffset,
                                  std::optional<Tensor> bias, Tensor G, Tensor B, double scale) {
  const char *op = "neat::qlowrank_linear";
  const neat_qweight q = neat_torch::qweight_of(op, qweight, qmeta, qoffset, input);
  return on_cpu(op, [&](const neat_exec &exec) {
    return neat_torch::lowrank(op, input, nullptr, &q, bias, G, B, scale, exec);
  });
}

// Which GEMM serves the large CPU products at the current thread count, e.g.
// "auto: small=own medium=own large=host (2 threads)" (the plan is made here if it was not yet).
static std::string cpu_gemm_plan() {
  neat_torch::CpuExec cpu;
  const neat_exec &e = cpu.exec();
  return std::string(neat_torch::host_gemm_mode()) + ": " + neat_torch::host_gemm_plan(e) + " (" +
         std::to_string(e.num_threads) + " threads)";
}

// The schemas are the contract of docs/design.md §3.1, except that `hidden` is `Tensor[]? = None`:
// torch's schema parser accepts no list-of-tensor default other than None. The *_backward ops are
// internal. lowrank_linear (inference with G kept, not differentiable) is an addition.
STABLE_TORCH_LIBRARY(neat, m) {
  m.def("linear(Tensor input, Tensor weight, Tensor? bias, Tensor A, Tensor B, "
        "Tensor[]? hidden=None, str activation=\"relu\", float scale=1.0) -> Tensor");
  m.def("adapter(Tensor input, Tensor weight, Tensor A, Tensor B, Tensor[]? hidden=None, "
        "str activation=\"relu\", float scale=1.0) -> Tensor");
  m.def("linear_backward(Tensor grad_out, Tensor input, Tensor weight, Tensor? bias, Tensor A, "
        "Tensor B, Tensor[] hidden, str activation, float scale, bool[] output_mask) -> "
        "(Tensor, Tensor, Tensor, Tensor, Tensor, Tensor[])");
  m.def("adapter_backward(Tensor grad_out, Tensor input, Tensor weight, Tensor A, Tensor B, "
        "Tensor[] hidden, str activation, float scale, bool[] output_mask) -> "
        "(Tensor, Tensor, Tensor, Tensor, Tensor[])");
  m.def("compute_g(Tensor weight, Tensor A, Tensor[]? hidden=None, str activation=\"relu\") -> Tensor");
  m.def("lowrank_linear(Tensor input, Tensor weight, Tensor? bias, Tensor G, Tensor B, "
        "float scale=1.0) -> Tensor");
  m.def("cpu_gemm_plan() -> str");
  // quantized frozen weights (docs/design.md §5.2): the weight as qweight, qmeta, qoffset
  m.def("qlinear(Tensor input, Tensor[] qweight, int[] qmeta, float qoffset, Tensor? bias, Tensor A, "
        "Tensor B, Tensor[]? hidden=None, str activation=\"relu\", float scale=1.0) -> Tensor");
  m.def("qlinear_backward(Tensor grad_out, Tensor input, Tensor[] qweight, int[] qmeta, "
        "float qoffset, Tensor? bias, Tensor A, Tensor B, Tensor[] hidden, str activation, "
        "float scale, bool[] output_mask) -> (Tensor, Tensor, Tensor, Tensor, Tensor[])");
  m.def("qcompute_g(Tensor[] qweight, int[] qmeta, float qoffset, Tensor A, Tensor[]? hidden=None, "
        "str activation=\"relu\") -> Tensor");
  m.def("qlowrank_linear(Tensor input, Tensor[] qweight, int[] qmeta, float qoffset, Tensor? bias, "
        "Tensor G, Tensor B, float scale=1.0) -> Tensor");
}

// No tensor argument to dispatch on: one kernel for every backend.
STABLE_TORCH_LIBRARY_IMPL(neat, CompositeExplicitAutograd, m) {
  m.impl("cpu_gemm_plan", TORCH_BOX(&cpu_gemm_plan));
}

STABLE_TORCH_LIBRARY_IMPL(neat, CPU, m) {
  m.impl("linear", TORCH_BOX(&linear_cpu));
  m.impl("adapter", TORCH_BOX(&adapter_cpu));
  m.impl("linear_backward", TORCH_BOX(&linear_backward_cpu));
  m.impl("adapter_backward", TORCH_BOX(&adapter_backward_cpu));
  m.impl("compute_g", TORCH_BOX(&compute_g_cpu));
  m.impl("lowrank_linear", TORCH_BOX(&lowrank_linear_cpu));
  m.impl("qlinear", TORCH_BOX(&qlinear_cpu));
  m.impl("qlinear_backward", TORCH_BOX(&qlinear_backward_cpu));
  m.impl("qcompute_g", TORCH_BOX(&qcompute_g_cpu));
  m.impl("qlowrank_linear", TORCH_BOX(&qlowrank_linear_cpu));
}
