"""Which dtype the kernels compute in, and the casts around an op call (docs/design.md §4).

Shared by :class:`torch_neat.NeatLinear` and :mod:`torch_neat.peft`, so both layers follow one policy:
same dtype everywhere runs as is; float32 adapters on half x and W run mixed on CUDA; anything else
computes in the adapter's dtype, as PEFT does.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from . import ops as _ops

__all__ = ["kernel_dtype", "op_operands", "compute_g"]

Tensor = torch.Tensor

_HALF = (torch.float16, torch.bfloat16)


def kernel_dtype(device: torch.device, dtype: torch.dtype) -> torch.dtype:
    """The dtype the kernels compute in for ``dtype`` on ``device``: half types run on CUDA only."""
    if dtype in (torch.float32, torch.float64):
        return dtype
    if dtype in _HALF and device.type == "cuda":
        return dtype
    return torch.float32


def op_operands(x: Tensor, weight: Tensor, bias: Optional[Tensor], adapter_dtype: torch.dtype):
    """Casts ``x``, ``weight`` and ``bias`` to what the op accepts with adapters of ``adapter_dtype``.

    Returns ``(x, weight, bias, compute_dtype)``; the caller casts the op's output back to ``x.dtype``.
    Same dtype everywhere, or float32 adapters on half x and W on CUDA (docs/design.md §4), pass untouched.
    Anything else computes in the adapter's dtype, as PEFT does.
    """
    ct = kernel_dtype(x.device, adapter_dtype)
    mixed_ok = x.device.type == "cuda" and ct == torch.float32 and x.dtype in _HALF and weight.dtype == x.dtype
    if mixed_ok or (x.dtype == ct and weight.dtype == ct):
        return x, weight, bias, ct
    return x.to(ct), weight.to(ct), (bias.to(ct) if bias is not None else None), ct


def compute_g(weight, A: Tensor, hidden: Sequence[Tensor], activation: str) -> Tensor:
    """G (r, d_in) from the kernels, in the adapter's compute dtype, never part of an autograd graph.

    ``weight`` is a float tensor or a :class:`~torch_neat.quantized.QuantizedBase` (``neat::qcompute_g``).
    Never under autocast: G feeds merges and the eval cache, so it comes from the weight as stored,
    not from a copy rounded to the autocast dtype.
    """
    ct = kernel_dtype(A.device, A.dtype)
    with torch.no_grad():
        if torch.is_inference_mode_enabled():
            # a G made here may later meet tensors that need grad; make it a normal tensor
            with torch.inference_mode(False):
                return compute_g(weight, A, hidden, activation)
        if _ops.autocast_enabled(A):
            with torch.autocast(A.device.type, enabled=False):
                return compute_g(weight, A, hidden, activation)
        hidden = [h.to(ct) for h in hidden]
        if isinstance(weight, torch.Tensor):
            return _ops.compute_g(weight.to(ct), A.to(ct), hidden, activation)
        qweight, qmeta, qoffset = weight.args()
        return torch.ops.neat.qcompute_g(qweight, qmeta, qoffset, A.to(ct), hidden, activation)
