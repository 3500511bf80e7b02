"""Plain-PyTorch re-statement of docs/design.md §1, used only by tests.

Written for readability, not speed: it forms G explicitly with torch matmuls and lets autograd
produce the reference gradients.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

ACTIVATIONS = {
    "relu": torch.relu,
    "sin": torch.sin,
    "gelu": lambda z: F.gelu(z),
    "gelu_tanh": lambda z: F.gelu(z, approximate="tanh"),
    "silu": F.silu,
    "tanh": torch.tanh,
    "identity": lambda z: z,
    "sin2pi": lambda z: torch.sin(2 * math.pi * z),
}

# The tests draw A and the hidden layers so that every pre-activation is O(1) in the activation's own unit.
# sin2pi(z) = sin(2 pi z) turns once per unit of z, so its unit is 1 / (2 pi): at the radians-sized inputs
# the other activations get, a stack of it multiplies rounding errors by ~2 pi |H| per layer, and PyTorch's
# own float32 evaluation of this reference misses the docs/design.md §4 bound by 1e-3 at 6 hidden layers (the
# function's conditioning, not the kernels'). Scaled, sin2pi(A W / 2 pi) = sin(A W) exactly.
INPUT_UNIT = {"sin2pi": 1 / (2 * math.pi)}


def reference_g(weight: torch.Tensor, A: torch.Tensor, hidden: Sequence[torch.Tensor], activation: str) -> torch.Tensor:
    """G (r, d_in): act(A W), then encoders (push, act(H G)) and decoders (act(H G) + pop)."""
    act = ACTIVATIONS[activation]
    G = act(A @ weight)
    k = len(hidden) // 2
    pushed = []
    for i in range(k):
        pushed.append(G)
        G = act(hidden[i] @ G)
    for j in range(k):
        G = act(hidden[k + j] @ G) + pushed.pop()
    return G


def reference_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    A: torch.Tensor,
    B: torch.Tensor,
    hidden: Sequence[torch.Tensor] = (),
    activation: str = "relu",
    scale: float = 1.0,
    with_base: bool = True,
) -> torch.Tensor:
    G = reference_g(weight, A, hidden, activation)
    y = scale * (x @ G.T) @ B.T
    if with_base:
        y = y + F.linear(x, weight, bias)  # x W^T + b, fused as stock PyTorch does it
    return y


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """Relative Frobenius error ||out - ref|| / ||ref|| in float64 on the CPU (absolute when ref is 0)."""
    out = out.detach().to(torch.float64).cpu()
    ref = ref.detach().to(torch.float64).cpu()
    assert out.shape == ref.shape, f"shape {tuple(out.shape)} != reference {tuple(ref.shape)}"
    denom = ref.norm().item()
    diff = (out - ref).norm().item()
    if denom == 0.0:
        return diff
    return diff / denom


def describe_mismatch(name: str, out: torch.Tensor, ref: torch.Tensor, tol: float, count: int = 5) -> str:
    """The error, the worst element and the first mismatches, for an assertion message."""
    o = out.detach().to(torch.float64).cpu().reshape(-1)
    r = ref.detach().to(torch.float64).cpu().reshape(-1)
    diff = (o - r).abs()
    lines = [f"{name}: relative Frobenius error {rel_err(out, ref):.3e} > {tol:.1e} (shape {tuple(ref.shape)})"]
    if diff.numel():
        worst = int(diff.argmax())
        lines.append(f"  worst at flat index {worst}: got {o[worst].item():.6g}, want {r[worst].item():.6g}")
        scale = r.abs().max().item() or 1.0
        for i in (diff > tol * scale).nonzero().reshape(-1)[:count].tolist():
            lines.append(f"  [{i}] got {o[i].item():.6g} want {r[i].item():.6g}")
    if not math.isfinite(rel_err(out, ref)):
        lines.append("  (non-finite values present)")
    return "\n".join(lines)


# Short names used by the GPU suite (tests/gpu), which shares this reference.
compute_g = reference_g
neat = reference_linear


TOL = {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 2e-2}  # docs/design.md §4
