"""The host GEMM provider (neat_exec.gemm filled with torch's matmul, docs/design.md §2.6).

NEAT_CPU_GEMM=host hands the large CPU products (x W^T, dy W, dy^T x) to torch's BLAS, "own" keeps
them on the C library's GEMM. Both must agree with the float64 reference at the dtype's tolerance
and with each other, on strided views too; the host path must really reach torch's matmul (seen
by the profiler), the own path never.
"""

import pytest
import torch
from conftest import cpu_gemm
from reference import TOL, reference_linear, rel_err

import torch_neat


def _case(n, d_in, d_out, r, dtype, strided):
    g = torch.Generator().manual_seed(n * 1000 + d_in)
    x = torch.randn(n, d_in + 5 if strided else d_in, generator=g, dtype=dtype)[:, :d_in]
    w = torch.randn(d_in, d_out, generator=g, dtype=dtype).t() if strided else torch.randn(d_out, d_in, generator=g, dtype=dtype)
    w = w / d_in**0.5
    b = torch.randn(d_out, generator=g, dtype=dtype)
    A = torch.randn(r, d_out, generator=g, dtype=dtype) / d_out**0.5
    B = torch.randn(d_out, r, generator=g, dtype=dtype)
    H = [torch.randn(r, r, generator=g, dtype=dtype) / r**0.5 for _ in range(2)]
    return x, w, b, A, B, H


def _run(mode, x, w, b, A, B, H):
    leaves = [t.detach().clone().requires_grad_() for t in (x, w, b, A, B, *H)]
    with cpu_gemm(mode):
        y = torch_neat.linear(leaves[0], leaves[1], leaves[2], leaves[3], leaves[4], leaves[5:], "relu", 0.7)
        dy = torch.linspace(-1, 1, y.numel(), dtype=y.dtype).reshape(y.shape)
        grads = torch.autograd.grad(y, leaves, dy)
        G = torch.ops.neat.compute_g(leaves[1].detach(), leaves[3].detach(), [h.detach() for h in leaves[5:]], "relu")
        yl = torch.ops.neat.lowrank_linear(x, w, b, G, B, 0.7)
    return [y.detach(), *grads, yl], dy


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("strided", [False, True])
@pytest.mark.parametrize("shape", [(64, 48, 40), (300, 200, 170)])
def test_host_and_own_match_reference(dtype, strided, shape):
    n, d_in, d_out = shape
    x, w, b, A, B, H = _case(n, d_in, d_out, 6, dtype, strided)
    own, dy = _run("own", x, w, b, A, B, H)
    host, _ = _run("host", x, w, b, A, B, H)
    leaves = [t.detach().double().requires_grad_() for t in (x, w, b, A, B, *H)]
    ref = reference_linear(*leaves[:5], leaves[5:], "relu", 0.7)
    ref_grads = torch.autograd.grad(ref, leaves, dy.double())
    names = ["y", "dx", "dweight", "dbias", "dA", "dB", "dH0", "dH1"]
    tol = TOL[dtype]
    for name, o, h, r in zip(names, own, host, [ref, *ref_grads]):
        assert rel_err(o, r) <= tol, f"own {name}: {rel_err(o, r):.3g}"
        assert rel_err(h, r) <= tol, f"host {name}: {rel_err(h, r):.3g}"
    assert rel_err(host[-1], own[-1]) <= tol, "lowrank_linear: host and own differ"


def _mm_calls(mode):
    x, w, b, A, B, H = _case(64, 48, 40, 4, torch.float32, False)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        _run(mode, x, w, b, A, B, H)
    return sum(e.count for e in prof.key_averages() if e.key in ("aten::mm", "aten::addmm"))


def test_host_mode_reaches_torch_matmul():
    # forward x W^T, backward dy W and dy^T x, lowrank x W^T
    assert _mm_calls("host") >= 4
    assert _mm_calls("own") == 0


def test_plan_names_the_mode():
    for mode in ("own", "host", "auto"):
        with cpu_gemm(mode):
            plan = torch.ops.neat.cpu_gemm_plan()
        assert plan.startswith(mode + ":"), plan
        assert "threads" in plan
    with cpu_gemm("own"):
        assert "host" not in torch.ops.neat.cpu_gemm_plan()
    with cpu_gemm("host"):
        assert torch.ops.neat.cpu_gemm_plan().startswith("host: small=host medium=host large=host")
