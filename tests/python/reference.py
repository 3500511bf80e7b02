"""Plain-PyTorch re-statement of DESIGN.md section 1, used only by tests.

Written for readability, not speed: it forms G explicitly with torch matmuls and lets autograd
produce the reference gradients.
"""

from __future__ import annotations

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
}


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
        y = y + x @ weight.T
        if bias is not None:
            y = y + bias
    return y


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """Relative Frobenius error ||out - ref|| / ||ref|| in float64 (0 when both are empty/zero)."""
    out = out.detach().double()
    ref = ref.detach().double()
    denom = ref.norm().item()
    diff = (out - ref).norm().item()
    if denom == 0.0:
        return diff
    return diff / denom


TOL = {torch.float64: 1e-12, torch.float32: 1e-5}
