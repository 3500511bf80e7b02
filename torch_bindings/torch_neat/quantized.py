"""Quantized frozen layers: the ones the q ops run on, and a clear error for the others (docs/design.md §5.2).

NEAT needs W itself (G = act(A W) and the gradient through it), so a layer whose stored weight is not W
must never be read as if it were: PEFT's PEANuT layer does exactly that and returns a wrong answer over
LLM.int8. bitsandbytes' ``Linear4bit`` (NF4, FP4, nested or not, any quant_storage) and ``Linear8bitLt``
(LLM.int8 without fp16 weights) on CPU or CUDA run on ``neat::qlinear`` and friends, which read the quantized
storage as it is (:class:`QuantizedBase`). Everything else quantized (torchao tensors, GPTQ/AWQ/HQQ/quanto
layers, integer weights, bitsandbytes layers not quantized yet or on another device) is refused. Recognition looks at
class and module names only, so none of those packages is imported until a supported layer is used.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

__all__ = [
    "QUANTIZED_PACKAGES", "SUPPORTED_BASES", "QuantizedBase", "check_base", "check_float_base", "quantized_base",
    "quantized_error", "quantized_reason", "unsupported_reason",
]

Tensor = torch.Tensor

# top-level packages whose layers or weight tensors hold quantized storage
QUANTIZED_PACKAGES = ("bitsandbytes", "torchao", "auto_gptq", "gptqmodel", "awq", "hqq", "optimum", "quanto")
# attributes quantized parameters carry beside their storage (bitsandbytes: quant_state, SCB, CB)
_QUANT_ATTRIBUTES = ("quant_state", "SCB", "CB")
SUPPORTED_BASES = (
    "torch.nn.Linear with a float32, float64, float16 or bfloat16 weight, and on CPU or CUDA bitsandbytes' "
    "Linear4bit (nf4, fp4) and Linear8bitLt (has_fp16_weights=False), quantized"
)
# where the q ops have kernels; bitsandbytes 0.50 keeps the same packed bytes, absmax and SCB on both
# (4-bit: the flattened weight's codes, two per byte, high nibble first, one absmax per block, nested
# or not; int8: CB (d_out, d_in) row-major int8 and SCB the d_out float32 row scales, from the same
# int8_vectorwise_quant op), so one reading serves both. What differs on CUDA: bitsandbytes' own
# dequantize_4bit reads absmax by flat block there, as the q ops do, for any d_in.
_QDEVICES = ("cpu", "cuda")
# neat_qformat values (shim/neat.h)
_NF4, _FP4, _INT8_ROW = 1, 2, 3


def _from_quantized_package(cls: type) -> bool:
    return cls.__module__.partition(".")[0] in QUANTIZED_PACKAGES


def quantized_reason(module: nn.Module) -> Optional[str]:
    """Why ``module``'s weight is not a plain float W (``"is a quantized layer (...)"``, ``"has a ..."``), or None."""
    for cls in type(module).__mro__:
        if _from_quantized_package(cls):
            return f"is a quantized layer ({cls.__module__}.{cls.__name__})"
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor):
        return None
    kinds = {type(weight)}
    if isinstance(weight, nn.Parameter):
        kinds.add(type(weight.data))
    for kind in kinds:
        if _from_quantized_package(kind):
            return f"has a quantized weight ({kind.__module__}.{kind.__name__})"
    for attr in _QUANT_ATTRIBUTES:
        if getattr(weight, attr, None) is not None:
            return f"has a quantized weight (it carries {attr!r})"
    if not weight.is_floating_point():
        return f"has a {weight.dtype} weight"
    return None


def quantized_error(subject: str) -> TypeError:
    """The error for ``subject`` (what is quantized, and where), saying what is supported instead."""
    return TypeError(
        f"{subject}: NEAT reads the frozen weight W itself, so it runs only on weights it can read exactly. "
        f"Supported: {SUPPORTED_BASES} (or load the base model unquantized)"
    )


def check_float_base(module: nn.Module, what: str) -> None:
    """Raises TypeError naming ``what`` (e.g. ``"NeatLinear: base_layer"``) when ``module`` is quantized."""
    reason = quantized_reason(module)
    if reason is not None:
        raise quantized_error(f"{what} {reason}")


def _bnb_kind(module: nn.Module) -> Optional[str]:
    for cls in type(module).__mro__:
        if cls.__module__.partition(".")[0] == "bitsandbytes" and cls.__name__ in ("Linear4bit", "Linear8bitLt"):
            return cls.__name__
    return None


class QuantizedBase:
    """A supported quantized layer's weight as the q ops take it: ``args()`` = (qweight, qmeta, qoffset).

    The arrays are the layer's own storage (no copy), read again at every call, so a layer moved or
    re-quantized in place is followed.
    """

    def __init__(self, module: nn.Module, kind: str):
        self.module, self.kind = module, kind
        self.d_out, self.d_in = int(module.out_features), int(module.in_features)

    def args(self) -> tuple[list, list, float]:
        w = self.module.weight
        if self.kind == "Linear8bitLt":
            return [w.data, _int8_scb(self.module)], [_INT8_ROW, self.d_out, self.d_in, 0, 0], 0.0
        qs = w.quant_state
        fmt = _NF4 if qs.quant_type == "nf4" else _FP4
        data = w.data.reshape(-1).view(torch.uint8)  # any quant_storage holds the same packed bytes
        if qs.nested:
            return ([data, qs.code, qs.absmax, qs.state2.code, qs.state2.absmax],
                    [fmt, self.d_out, self.d_in, qs.blocksize, qs.state2.blocksize], float(qs.offset))
        return [data, qs.code, qs.absmax], [fmt, self.d_out, self.d_in, qs.blocksize, 0], 0.0

    def version(self) -> tuple:
        """Changes when the stored weight does (for caches of G)."""
        w = self.module.weight
        return (w.device, w.data_ptr(), w._version)

    @torch.no_grad()
    def dequantize(self) -> Tensor:
        """W in float32 by bitsandbytes' own dequantizer (for a merge into a float layer only)."""
        import bitsandbytes.functional as bnbf

        w = self.module.weight
        if self.kind == "Linear8bitLt":
            return (w.data.float() * _int8_scb(self.module).float()[:, None]) * 7.874015718698502e-3
        return bnbf.dequantize_4bit(w.data, w.quant_state).float().reshape(self.d_out, self.d_in)


def _int8_scb(module: nn.Module) -> Optional[Tensor]:
    # bitsandbytes' own forward moves SCB from the weight to module.state (init_8bit_state) on any
    # device; the values are the same either way
    scb = getattr(module.weight, "SCB", None)
    if scb is None:
        scb = getattr(getattr(module, "state", None), "SCB", None)
    return scb


def _unsupported_bnb(module: nn.Module, kind: str) -> Optional[str]:
    w = module.weight
    if w.device.type not in _QDEVICES:
        return f"is a bitsandbytes {kind} on {w.device.type} (quantized weights run on CPU and CUDA only)"
    if kind == "Linear4bit" and getattr(w, "quant_state", None) is None:
        return "is a bitsandbytes Linear4bit not quantized yet (bitsandbytes quantizes on .to(device))"
    if kind == "Linear8bitLt" and (w.dtype != torch.int8 or _int8_scb(module) is None):
        return ("is a bitsandbytes Linear8bitLt not quantized to int8 (quantized on .to(device), with "
                "has_fp16_weights=False)")
    return None


def quantized_base(module: nn.Module) -> Optional[QuantizedBase]:
    """The :class:`QuantizedBase` of a supported quantized layer, else None (float or unsupported)."""
    kind = _bnb_kind(module)
    if kind is None or _unsupported_bnb(module, kind) is not None:
        return None
    return QuantizedBase(module, kind)


def unsupported_reason(module: nn.Module) -> Optional[str]:
    """Why NEAT cannot adapt ``module`` (quantized in a way it cannot read), or None."""
    kind = _bnb_kind(module)
    if kind is not None:
        return _unsupported_bnb(module, kind)
    return quantized_reason(module)


def check_base(module: nn.Module, what: str) -> Optional[QuantizedBase]:
    """A supported quantized layer's :class:`QuantizedBase`; None for a float layer; else raises TypeError."""
    reason = unsupported_reason(module)
    if reason is not None:
        raise quantized_error(f"{what} {reason}")
    return quantized_base(module)
