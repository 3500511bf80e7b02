"""Quantized frozen layers: the ones the q ops run on, and a clear error for the others (docs/design.md §5.2).

NEAT needs W itself (G = act(A W) and the gradient through it), so a layer whose stored weight is not W
must never be read as if it were: PEFT's PEANuT layer does exactly that and returns a wrong answer over
LLM.int8. bitsandbytes' ``Linear4bit`` and ``Linear8bitLt`` (``bnb_base.py``, CPU and CUDA) and, on CPU,
torchao's ``Int8Tensor`` (weight-only, per row or per tensor) and ``NF4Tensor`` weights (``torchao_base.py``)
run on ``neat::qlinear`` and friends, which read their storage as one of the C library's formats
(:class:`QuantizedBase`). Everything else quantized (other torchao tensors or torchao on CUDA,
GPTQ/AWQ/HQQ/quanto layers, integer weights, bitsandbytes layers not quantized yet) is refused. Recognition looks at
class and module names only, so none of those packages is imported until a supported layer is used.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .bnb_base import BnbBase, bnb_kind, unsupported_bnb
from .qbase import QuantizedBase
from .torchao_base import torchao_base, torchao_kind, unsupported_torchao

__all__ = [
    "QUANTIZED_PACKAGES", "SUPPORTED_BASES", "QuantizedBase", "check_base", "check_float_base", "quantized_base",
    "quantized_error", "quantized_reason", "unsupported_reason",
]


# top-level packages whose layers or weight tensors hold quantized storage
QUANTIZED_PACKAGES = ("bitsandbytes", "torchao", "auto_gptq", "gptqmodel", "awq", "hqq", "optimum", "quanto")
# attributes quantized parameters carry beside their storage (bitsandbytes: quant_state, SCB, CB)
_QUANT_ATTRIBUTES = ("quant_state", "SCB", "CB")
SUPPORTED_BASES = (
    "torch.nn.Linear with a float32, float64, float16 or bfloat16 weight, on CPU or CUDA bitsandbytes' "
    "Linear4bit (nf4, fp4) and Linear8bitLt (has_fp16_weights=False), quantized, and on CPU torchao's "
    "Int8Tensor (int8 weight-only, symmetric, per row or per tensor: Int8WeightOnlyConfig) and NF4Tensor (to_nf4)"
)


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


def _supported_kind(module: nn.Module) -> tuple[Optional[str], Optional[str]]:
    """(``"bnb"`` or ``"torchao"``, the class name) for a layer of a supported kind, whatever its state."""
    kind = bnb_kind(module)
    if kind is not None:
        return "bnb", kind
    kind = torchao_kind(getattr(module, "weight", None))
    return ("torchao", kind) if kind is not None else (None, None)


def _unsupported(module: nn.Module, package: str, kind: str) -> Optional[str]:
    return unsupported_bnb(module, kind) if package == "bnb" else unsupported_torchao(module, kind)


def quantized_base(module: nn.Module) -> Optional[QuantizedBase]:
    """The :class:`QuantizedBase` of a supported quantized layer, else None (float or unsupported)."""
    package, kind = _supported_kind(module)
    if package is None or _unsupported(module, package, kind) is not None:
        return None
    return BnbBase(module, kind) if package == "bnb" else torchao_base(module, kind)


def unsupported_reason(module: nn.Module) -> Optional[str]:
    """Why NEAT cannot adapt ``module`` (quantized in a way it cannot read), or None."""
    package, kind = _supported_kind(module)
    if package is not None:
        return _unsupported(module, package, kind)
    return quantized_reason(module)


def check_base(module: nn.Module, what: str) -> Optional[QuantizedBase]:
    """A supported quantized layer's :class:`QuantizedBase`; None for a float layer; else raises TypeError."""
    reason = unsupported_reason(module)
    if reason is not None:
        raise quantized_error(f"{what} {reason}")
    return quantized_base(module)
