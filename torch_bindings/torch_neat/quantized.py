"""Recognising quantized frozen layers, so that NEAT refuses them with a clear error (docs/design.md §5.2).

NEAT needs W itself (G = act(A W) and the gradient through it), so a layer whose stored weight is not W
(bitsandbytes' 4-bit and 8-bit layers, torchao's quantized tensors, GPTQ/AWQ/HQQ/quanto layers, or any
integer weight) must not be read as if it were: PEFT's PEANuT layer does exactly that and returns a wrong
answer over LLM.int8. The check looks at class and module names only, so none of those packages is imported.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

__all__ = ["QUANTIZED_PACKAGES", "SUPPORTED_BASES", "check_float_base", "quantized_error", "quantized_reason"]

# top-level packages whose layers or weight tensors hold quantized storage
QUANTIZED_PACKAGES = ("bitsandbytes", "torchao", "auto_gptq", "gptqmodel", "awq", "hqq", "optimum", "quanto")
# attributes quantized parameters carry beside their storage (bitsandbytes: quant_state, SCB, CB)
_QUANT_ATTRIBUTES = ("quant_state", "SCB", "CB")
SUPPORTED_BASES = "torch.nn.Linear with a float32, float64, float16 or bfloat16 weight"


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
        f"{subject}: NEAT reads the frozen weight W itself and does not run on quantized weights yet. "
        f"Supported: {SUPPORTED_BASES} (load the base model unquantized, e.g. without BitsAndBytesConfig)"
    )


def check_float_base(module: nn.Module, what: str) -> None:
    """Raises TypeError naming ``what`` (e.g. ``"NeatLinear: base_layer"``) when ``module`` is quantized."""
    reason = quantized_reason(module)
    if reason is not None:
        raise quantized_error(f"{what} {reason}")
