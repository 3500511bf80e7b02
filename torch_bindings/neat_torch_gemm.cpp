// neat_torch_gemm.cpp - torch's matmul as neat_exec.gemm, and the plan that decides when to use it.
#include "neat_torch_gemm.h"

#include <array>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <vector>

#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/stableivalue_conversions.h>
#include <torch/csrc/stable/tensor.h>
#include <torch/headeronly/core/ScalarType.h>

namespace neat_torch {

namespace {

using torch::headeronly::ScalarType;
using torch::stable::Tensor;

// Size classes by multiply-adds: small below 2^24 (d = 256 at N = 256), medium up to 2^27 (d = 384
// at N = 256..1024, the main job's MiniLM layers), large beyond (d >= 1024 at N = 2048). Each class
// has its own entry in a plan, timed on the representative (N, d) of kShapes.
constexpr int kClasses = 3;
constexpr double kClassMacs[kClasses - 1] = {16777216.0, 134217728.0};
constexpr int64_t kShapes[kClasses][2] = {{128, 256}, {512, 384}, {1024, 1024}};

int size_class(double macs) {
  int c = 0;
  while (c < kClasses - 1 && macs >= kClassMacs[c]) ++c;
  return c;
}

struct Plan {
  bool host[kClasses] = {};  // torch's GEMM serves the class
};

// C = A B on torch's mm.out (the dispatcher of the stable ABI); declines (nonzero) what mm does
// not compute (alpha != 1, beta != 0) and any failure, so the C library computes it itself.
// Runs inside C frames: nothing may escape.
int torch_gemm(neat_dtype dtype, int64_t M, int64_t N, int64_t K, double alpha, const void *A,
               int64_t rsa, int64_t csa, const void *B, int64_t rsb, int64_t csb, double beta,
               void *C, int64_t rsc, int64_t csc, void *user) noexcept {
  const Plan *plan = static_cast<const Plan *>(user);
  double macs = static_cast<double>(M) * static_cast<double>(N) * static_cast<double>(K);
  if (!plan->host[size_class(macs)]) return 1;
  if (alpha != 1.0 || beta != 0.0) return 1;
  try {
    ScalarType st = dtype == NEAT_FLOAT64 ? ScalarType::Double : ScalarType::Float;
    torch::stable::Device cpu(torch::headeronly::DeviceType::CPU);
    Tensor a = torch::stable::from_blob(const_cast<void *>(A), {M, K}, {rsa, csa}, cpu, st);
    Tensor b = torch::stable::from_blob(const_cast<void *>(B), {K, N}, {rsb, csb}, cpu, st);
    Tensor c = torch::stable::from_blob(C, {M, N}, {rsc, csc}, cpu, st);
    std::array<StableIValue, 3> stack{torch::stable::detail::from(a), torch::stable::detail::from(b),
                                      torch::stable::detail::from(c)};
    if (torch_call_dispatcher("aten::mm", "out", stack.data(), TORCH_ABI_VERSION) !=
        AOTI_TORCH_SUCCESS)
      return 1;
    (void)torch::stable::detail::to<Tensor>(stack[0]);  // the returned alias of c, released
    return 0;
  } catch (...) {
    return 1;
  }
}

enum class Mode { Own, Host, Auto };

Mode read_mode() {
  const char *v = std::getenv("NEAT_CPU_GEMM");
  if (!v || !*v || std::strcmp(v, "auto") == 0) return Mode::Auto;
  if (std::strcmp(v, "own") == 0) return Mode::Own;
  if (std::strcmp(v, "host") == 0) return Mode::Host;
  return Mode::Auto;  // an unknown value keeps the default rather than failing every op
}

// Best of `reps` wall times of neat_lowrank_forward (r = 1: the x W^T product dominates) on
// (n, d) x (d, d) with exec as given.
double time_lowrank(const neat_exec &exec, int64_t n, int64_t d, int reps) {
  std::vector<float> x(static_cast<size_t>(n * d), 0.5f), w(static_cast<size_t>(d * d), 0.25f);
  std::vector<float> g(static_cast<size_t>(d), 0.1f), bb(static_cast<size_t>(d), 0.1f);
  std::vector<float> y(static_cast<size_t>(n * d));
  neat_device cpu{NEAT_DEVICE_CPU, 0};
  int64_t xs[2] = {n, d}, ws[2] = {d, d}, gs[2] = {1, d}, bs[2] = {d, 1}, ys[2] = {n, d};
  neat_tensor xv = neat_tensor_contiguous(x.data(), NEAT_FLOAT32, 2, xs, cpu);
  neat_tensor wv = neat_tensor_contiguous(w.data(), NEAT_FLOAT32, 2, ws, cpu);
  neat_tensor gv = neat_tensor_contiguous(g.data(), NEAT_FLOAT32, 2, gs, cpu);
  neat_tensor bv = neat_tensor_contiguous(bb.data(), NEAT_FLOAT32, 2, bs, cpu);
  neat_tensor yv = neat_tensor_contiguous(y.data(), NEAT_FLOAT32, 2, ys, cpu);
  neat_lowrank_args la{&xv, &wv, nullptr, &gv, &bv, 1.0};
  size_t bytes = 0;
  if (neat_lowrank_forward_workspace_size(&la, &exec, &bytes) != NEAT_OK) return 1e30;
  std::vector<unsigned char> wsbuf(bytes);
  double best = 1e30;
  for (int i = 0; i < reps; ++i) {
    auto t0 = std::chrono::steady_clock::now();
    if (neat_lowrank_forward(&yv, &la, wsbuf.data(), bytes, &exec) != NEAT_OK) return 1e30;
    double t = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (t < best) best = t;
  }
  return best;
}

// Times both GEMMs, interleaved, on one shape per class (kShapes): the host BLAS must win by 3% to
// be chosen (the own GEMM keeps results bit-identical across thread counts).
Plan calibrate(const neat_exec &base) {
  static const Plan all_host{{true, true, true}};
  neat_exec own = base, host = base;
  own.gemm = nullptr;
  host.gemm = &torch_gemm;
  host.gemm_user = const_cast<Plan *>(&all_host);
  Plan plan;
  for (int cls = 0; cls < kClasses; ++cls) {
    const int64_t n = kShapes[cls][0], d = kShapes[cls][1];
    int reps = cls == kClasses - 1 ? 2 : 8;
    double t_own = 1e30, t_host = 1e30;
    time_lowrank(own, n, d, 1);  // warm-up: pages, pools
    time_lowrank(host, n, d, 1);
    for (int round = 0; round < 2; ++round) {
      double a = time_lowrank(own, n, d, reps);
      double b = time_lowrank(host, n, d, reps);
      if (a < t_own) t_own = a;
      if (b < t_host) t_host = b;
    }
    plan.host[cls] = t_host < 0.97 * t_own;
  }
  return plan;
}

}  // namespace

std::string host_gemm_plan(const neat_exec &exec) {
  const Plan *plan = exec.gemm == &torch_gemm ? static_cast<const Plan *>(exec.gemm_user) : nullptr;
  static const char *const names[kClasses] = {"small", "medium", "large"};
  std::string s;
  for (int c = 0; c < kClasses; ++c)
    s += std::string(c ? " " : "") + names[c] + "=" + (plan && plan->host[c] ? "host" : "own");
  return s;
}

const char *host_gemm_mode() {
  switch (read_mode()) {
    case Mode::Own: return "own";
    case Mode::Host: return "host";
    default: return "auto";
  }
}

void install_host_gemm(neat_exec &exec) {
  static const Plan all_host{{true, true, true}};
  exec.gemm = nullptr;
  exec.gemm_user = nullptr;
  Mode mode = read_mode();
  if (mode == Mode::Own) return;
  if (mode == Mode::Host) {
    exec.gemm = &torch_gemm;
    exec.gemm_user = const_cast<Plan *>(&all_host);
    return;
  }
  // One plan per thread count, kept for the process (map nodes never move).
  static std::mutex mu;
  static std::map<int32_t, Plan> plans;
  std::lock_guard<std::mutex> lock(mu);
  auto it = plans.find(exec.num_threads);
  if (it == plans.end()) it = plans.emplace(exec.num_threads, calibrate(exec)).first;
  bool any = false;
  for (bool h : it->second.host) any = any || h;
  if (!any) return;
  exec.gemm = &torch_gemm;
  exec.gemm_user = &it->second;
}

}  // namespace neat_torch
