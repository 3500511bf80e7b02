"""Functional API over ``torch.ops.neat``.

The math lives in the C library. The op table (``_optable.py``) describes every op once; the
registrations derived from it (fake kernels, autograd, autocast, input rejection) are made when this
module is imported (``_register.py``); the modules' eager fast path is ``_fastpath.py``
(docs/design.md §3.1).
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from . import _register  # noqa: F401  (registers fake kernels, autograd and autocast once)
from ._activations import canonical_activation
from ._autocast import autocast_enabled, autocast_operands
from ._fastpath import fused_adapter, fused_linear, lowrank_inference

__all__ = ["linear", "adapter", "compute_g", "lowrank_linear"]

Tensor = torch.Tensor


def linear(
    input: Tensor,
    weight: Tensor,
    bias: Optional[Tensor],
    A: Tensor,
    B: Tensor,
    hidden: Sequence[Tensor] = (),
    activation: str = "relu",
    scale: float = 1.0,
) -> Tensor:
    """NEAT-adapted linear layer: ``x W^T + b + scale * (x G^T) B^T`` with ``G = net(act(A W))``.

    Args:
        input: ``(..., d_in)``; any leading dims, kept in the output.
        weight: frozen ``(d_out, d_in)`` weight (``nn.Linear.weight``).
        bias: ``(d_out,)`` or None.
        A: ``(r, d_out)`` first adapter layer.
        B: ``(d_out, r)`` last adapter layer (zero at init).
        hidden: an even number of ``(r, r)`` hidden layers, encoders then decoders, wired with
            U-Net residuals (docs/design.md §1.1). Depth in the paper's sense is ``len(hidden) + 2``.
        activation: relu, sin, gelu, gelu_tanh, silu, tanh, identity (or the transformers
            aliases swish, linear, gelu_new, gelu_pytorch_tanh).
        scale: the scalar ``s`` multiplying the adapter term.

    Returns:
        ``(..., d_out)`` tensor with ``input``'s dtype. Differentiable in every tensor argument.

    Under ``torch.autocast`` it behaves like ``F.linear``: on CUDA x, weight and bias run in the
    autocast dtype while float32 A, B and hidden stay float32 (mixed precision: the kernels round them
    to the autocast dtype before each product and accumulate in float32); on CPU, whose kernels are
    float32/float64, it computes in float32 and returns the autocast dtype, as ``F.linear`` does there.
    The result has the autocast dtype on both; float64 tensors are never cast. Float32 parameters get
    float32 gradients. See :func:`autocast_operands`.
    """
    # eager mode takes the modules' fast path (the same C ops under a fixed-argument autograd.Function);
    # torch.compile, functorch transforms and tensor subclasses get the registered op
    return fused_linear(input, weight, bias, A, B, list(hidden), canonical_activation(activation), float(scale))


def adapter(
    input: Tensor,
    weight: Tensor,
    A: Tensor,
    B: Tensor,
    hidden: Sequence[Tensor] = (),
    activation: str = "relu",
    scale: float = 1.0,
) -> Tensor:
    """Only the adapter term ``scale * (x G^T) B^T``; same arguments as :func:`linear` without bias.

    A drop-in for the NEAT authors' adapter module: their ``adapter(x, weight.t())`` is
    ``adapter(x, weight, A, B)`` here. Under ``torch.autocast`` it behaves as :func:`linear` does.
    """
    return fused_adapter(input, weight, A, B, list(hidden), canonical_activation(activation), float(scale))


def compute_g(weight: Tensor, A: Tensor, hidden: Sequence[Tensor] = (), activation: str = "relu") -> Tensor:
    """The ``(r, d_in)`` factor G, so the adapted weight is ``W + scale * B @ G``. Not differentiable.

    G has A's dtype. Under ``torch.autocast`` the operands are cast as for :func:`linear` (on CUDA the
    weight to the autocast dtype; on CPU everything to float32) and G keeps the adapters' dtype after
    that cast (float32 for float32 adapters): it is a factor of a weight, not an activation.
    """
    return torch.ops.neat.compute_g(weight, A, list(hidden), canonical_activation(activation))


def lowrank_linear(input: Tensor, weight: Tensor, bias: Optional[Tensor], G: Tensor, B: Tensor, scale: float = 1.0) -> Tensor:
    """Inference with G kept: ``input @ weight.T + bias + scale * (input @ G.T) @ B.T``.

    ``G`` is :func:`compute_g`'s ``(r, d_in)`` factor, kept while the adapter is frozen (NeatLinear
    does so in eval mode), so the pass over the weight that forms it is skipped; the rank-r term
    rides on the main product, so input and output are each passed once. Any low-rank pair fits
    (a LoRA's ``lora_A`` as ``G``, ``lora_B`` as ``B``). ``bias`` may be None. dtypes and devices
    as for :func:`linear`, with ``G`` in A's role.

    Not differentiable: asking for a gradient through it raises. Training uses :func:`linear`,
    which forms G itself.
    """
    return torch.ops.neat.lowrank_linear(input, weight, bias, G, B, float(scale))
