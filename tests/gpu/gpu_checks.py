"""Tolerances and float64 reference helpers of the GPU suite (test_cuda.py). Device-agnostic and
GPU-free, so they can be exercised on any machine (the GPU suite itself only runs with CUDA).

Rules (docs/design.md §4, §8.2):

- Outputs and gradients: relative Frobenius error ``||out - ref|| / ||ref||`` within ``TOL`` and the
  largest elementwise error within ``MAX_TOL * max|ref|``: a few wildly wrong elements (a bad tile
  edge) hide in a Frobenius norm over thousands of elements, not in a max.
- dA and dH are sums of products that cancel: ``dH = dZ G_prev^T`` over d_in terms, with ``dZ``
  zero wherever a ReLU is dead. Their error is bounded by the *magnitude* of those products, not by
  ``|dH|``, so they are checked against ``tol * L * (|dact| |G_prev|^T)`` (Frobenius and max), where
  ``dact`` is the gradient at the activation's output and ``L`` bounds ``|act'|``: ``|dZ| <= L |dact|``
  also covers the elements where rounding flips the sign of a pre-activation near zero.
- Mixed precision (half x and W, float32 A, B, H): the kernels round A, B and H to the half dtype
  before any product and accumulate in float32 (neat.h), so the float64 reference rounds them to
  the half dtype first, then computes in float64.
"""

from __future__ import annotations

import functools
from typing import Optional, Sequence

import torch

import reference as ref

HALF = (torch.bfloat16, torch.float16)

# Relative Frobenius bounds. float16 has 3 more mantissa bits than bfloat16 (unit roundoff 2^-11 vs
# 2^-8): the design's common 2e-2 was about 40x the float16 error seen on a GPU, so float16 gets ~5 unit
# roundoffs, as bfloat16's 2e-2 is for bfloat16.
TOL = {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 2.5e-3}
# Largest elementwise error, relative to the largest reference magnitude.
MAX_TOL = {torch.float64: 1e-11, torch.float32: 5e-5, torch.bfloat16: 4e-2, torch.float16: 5e-3}

# Inputs of the activations whose unit is not a radian (reference.INPUT_UNIT, e.g. sin2pi), so every
# pre-activation is O(1) in the activation's own unit.
INPUT_UNIT = getattr(ref, "INPUT_UNIT", {})


def reference_copy(t: Optional[torch.Tensor], compute_dtype: torch.dtype, requires_grad: bool) -> Optional[torch.Tensor]:
    """The float64 leaf the reference uses for ``t`` in a call computed in ``compute_dtype``.

    A float32 tensor of a half call (a mixed-precision adapter) is rounded to the half dtype first.
    """
    if t is None:
        return None
    t = t.detach()
    if compute_dtype in HALF and t.dtype == torch.float32:
        t = t.to(compute_dtype)
    return t.to(torch.float64).clone().requires_grad_(requires_grad)


@functools.lru_cache(maxsize=None)
def derivative_bound(act: str) -> float:
    """max |act'(z)| over a wide grid (float64): 1 for relu, ~1.13 for gelu, 2 pi for sin2pi..."""
    z = torch.linspace(-30.0, 30.0, 600001, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(ref.ACTIVATIONS[act](z).sum(), z)
    return max(1.0, float(g.abs().max()))


def formation_scales(x, W, A, B, hidden: Sequence[torch.Tensor], act: str, scale: float, gy) -> list[torch.Tensor]:
    """``L * |dact| |input|^T`` in float64 for A (``(r, d_out)``, input W) and each hidden layer
    (``(r, r)``, input G_prev): the magnitude of the products that sum to dA and dH.

    ``x, W, A, B, hidden`` are the reference's float64 values, ``gy`` the output gradient. The base
    term and the bias do not reach G, so they are left out.
    """
    f = ref.ACTIVATIONS[act]
    L = derivative_bound(act)
    x, W, B = (t.detach().to(torch.float64) for t in (x, W, B))
    A = A.detach().to(torch.float64).requires_grad_()
    hidden = [h.detach().to(torch.float64) for h in hidden]
    outs, inputs = [], []

    def layer(M, G_in):
        out = f(M @ G_in)
        out.retain_grad()
        outs.append(out)
        inputs.append(G_in)
        return out

    G = layer(A, W)
    k = len(hidden) // 2
    pushed = []
    for i in range(k):
        pushed.append(G)
        G = layer(hidden[i], G)
    for j in range(k):
        G = layer(hidden[k + j], G) + pushed.pop()
    x2 = x.reshape(-1, x.shape[-1])
    y = scale * (x2 @ G.T) @ B.T
    y.backward(gy.detach().to(torch.float64).reshape(y.shape))
    return [L * (o.grad.abs() @ i.detach().abs().T) for o, i in zip(outs, inputs)]


def _max_err(out, want):
    o = out.detach().to(torch.float64).cpu()
    w = want.detach().to(torch.float64).cpu()
    return float((o - w).abs().max()) if o.numel() else 0.0


def check(name: str, out, want, dtype: torch.dtype) -> None:
    """Relative Frobenius error within TOL[dtype] and max elementwise error within MAX_TOL * max|ref|."""
    assert out is not None, f"{name}: no value (gradient not computed?)"
    tol, mtol = TOL[dtype], MAX_TOL[dtype]
    err = ref.rel_err(out, want)
    assert err <= tol, ref.describe_mismatch(name, out, want, tol)
    peak = float(want.detach().abs().max()) if want.numel() else 0.0
    worst = _max_err(out, want)
    assert worst <= mtol * peak or (peak == 0.0 and worst == 0.0), (
        f"{name}: max abs error {worst:.3e} > {mtol:.1e} * max|ref| ({peak:.3e})\n"
        + ref.describe_mismatch(name, out, want, tol)
    )


def check_scaled(name: str, out, want, magnitude, dtype: torch.dtype) -> None:
    """dA / dH: error bounded by the magnitude of the products forming them (module docstring)."""
    assert out is not None, f"{name}: no gradient"
    tol, mtol = TOL[dtype], MAX_TOL[dtype]
    o = out.detach().to(torch.float64).cpu()
    w = want.detach().to(torch.float64).cpu()
    m = magnitude.detach().to(torch.float64).cpu()
    assert o.shape == w.shape == m.shape, f"{name}: shapes {tuple(o.shape)}, {tuple(w.shape)}, {tuple(m.shape)}"
    diff = (o - w).abs()
    fro, bound = float(diff.norm()), tol * float(m.norm())
    worst, mbound = (float(diff.max()), mtol * float(m.max())) if diff.numel() else (0.0, 0.0)
    if fro <= bound and worst <= mbound:
        return
    i = int(diff.argmax())
    raise AssertionError(
        f"{name}: ||err|| {fro:.3e} vs {tol:.1e} * ||L |dact| |in|^T|| = {bound:.3e}; max err {worst:.3e} vs "
        f"{mtol:.1e} * max = {mbound:.3e}; worst at flat index {i}: got {o.reshape(-1)[i].item():.6g}, "
        f"want {w.reshape(-1)[i].item():.6g} (relative Frobenius error {ref.rel_err(o, w):.3e})"
    )


def seeded_normal(shape, seed: int, device="cpu", dtype=torch.float64) -> torch.Tensor:
    """Normal values from a seeded CPU generator (the same on every machine), moved to ``device``."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)


def input_unit(act: str) -> float:
    return INPUT_UNIT.get(act, 1.0)

