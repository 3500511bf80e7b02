"""bitsandbytes' quantized layers on CPU read as the C formats (docs/design.md §2.8, §5.2): ``Linear4bit``
(NF4, FP4, nested or not, any quant_storage) as NF4 / FP4, ``Linear8bitLt`` (LLM.int8) as INT8_ROW. The
formats are bitsandbytes 0.50.2's own, so every array is the layer's storage as it is."""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .qbase import QFMT_FP4, QFMT_INT8_ROW, QFMT_NF4, QuantizedBase, version_of

__all__ = ["BnbBase", "bnb_kind", "unsupported_bnb"]

Tensor = torch.Tensor


def bnb_kind(module: nn.Module) -> Optional[str]:
    """``"Linear4bit"`` or ``"Linear8bitLt"`` for bitsandbytes' layers (by class name), else None."""
    for cls in type(module).__mro__:
        if cls.__module__.partition(".")[0] == "bitsandbytes" and cls.__name__ in ("Linear4bit", "Linear8bitLt"):
            return cls.__name__
    return None


def unsupported_bnb(module: nn.Module, kind: str) -> Optional[str]:
    """Why a bitsandbytes layer of ``kind`` cannot be read (``"is a bitsandbytes ..."``), or None."""
    w = module.weight
    if w.device.type != "cpu":
        return f"is a bitsandbytes {kind} on {w.device.type} (quantized weights run on CPU only so far)"
    if kind == "Linear4bit" and getattr(w, "quant_state", None) is None:
        return "is a bitsandbytes Linear4bit not quantized yet (bitsandbytes quantizes on .to(device))"
    if kind == "Linear8bitLt" and (w.dtype != torch.int8 or getattr(w, "SCB", None) is None):
        return ("is a bitsandbytes Linear8bitLt not quantized to int8 (quantized on .to(device), with "
                "has_fp16_weights=False)")
    return None


class BnbBase(QuantizedBase):
    """A quantized ``Linear4bit`` or ``Linear8bitLt`` (checked by :func:`unsupported_bnb` first)."""

    def __init__(self, module: nn.Module, kind: str):
        super().__init__(module)
        self.kind = kind

    def args(self) -> tuple[list, list, float]:
        w = self.module.weight
        if self.kind == "Linear8bitLt":
            return [w.data, w.SCB], [QFMT_INT8_ROW, self.d_out, self.d_in, 0, 0], 0.0
        qs = w.quant_state
        fmt = QFMT_NF4 if qs.quant_type == "nf4" else QFMT_FP4
        data = w.data.reshape(-1).view(torch.uint8)  # any quant_storage holds the same packed bytes
        if qs.nested:
            return ([data, qs.code, qs.absmax, qs.state2.code, qs.state2.absmax],
                    [fmt, self.d_out, self.d_in, qs.blocksize, qs.state2.blocksize], float(qs.offset))
        return [data, qs.code, qs.absmax], [fmt, self.d_out, self.d_in, qs.blocksize, 0], 0.0

    def version(self) -> tuple:
        return version_of(self.module.weight)

    @torch.no_grad()
    def dequantize(self) -> Tensor:
        """W in float32 by bitsandbytes' own dequantizer."""
        import bitsandbytes.functional as bnbf

        w = self.module.weight
        if self.kind == "Linear8bitLt":
            return (w.data.float() * w.SCB.float()[:, None]) * 7.874015718698502e-3
        return bnbf.dequantize_4bit(w.data, w.quant_state).float().reshape(self.d_out, self.d_in)
