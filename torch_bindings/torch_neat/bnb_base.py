"""bitsandbytes' quantized layers on CPU and CUDA read as the C formats (docs/design.md §2.8, §5.2): ``Linear4bit``
(NF4, FP4, nested or not, any quant_storage) as NF4 / FP4, ``Linear8bitLt`` (LLM.int8) as INT8_ROW. The
formats are bitsandbytes 0.50.2's own, so every array is the layer's storage as it is."""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .qbase import QFMT_FP4, QFMT_INT8_ROW, QFMT_NF4, QuantizedBase, version_of

__all__ = ["BnbBase", "bnb_kind", "int8_scb", "unsupported_bnb"]

Tensor = torch.Tensor


def bnb_kind(module: nn.Module) -> Optional[str]:
    """``"Linear4bit"`` or ``"Linear8bitLt"`` for bitsandbytes' layers (by class name), else None."""
    for cls in type(module).__mro__:
        if cls.__module__.partition(".")[0] == "bitsandbytes" and cls.__name__ in ("Linear4bit", "Linear8bitLt"):
            return cls.__name__
    return None


# where the q ops have kernels; bitsandbytes 0.50 keeps the same packed bytes, absmax and SCB on both
# (4-bit: the flattened weight's codes, two per byte, high nibble first, one absmax per block, nested
# or not; int8: CB (d_out, d_in) row-major int8 and SCB the d_out float32 row scales, from the same
# int8_vectorwise_quant op), so one reading serves both. What differs on CUDA: bitsandbytes' own
# dequantize_4bit reads absmax by flat block there, as the q ops do, for any d_in.
_QDEVICES = ("cpu", "cuda")


def int8_scb(module: nn.Module) -> Optional[Tensor]:
    """The row scales of a ``Linear8bitLt``: on the weight, or in ``module.state`` once it has run."""
    # bitsandbytes' own forward moves SCB from the weight to module.state (init_8bit_state) on any
    # device; the values are the same either way
    scb = getattr(module.weight, "SCB", None)
    if scb is None:
        scb = getattr(getattr(module, "state", None), "SCB", None)
    return scb


def unsupported_bnb(module: nn.Module, kind: str) -> Optional[str]:
    """Why a bitsandbytes layer of ``kind`` cannot be read (``"is a bitsandbytes ..."``), or None."""
    w = module.weight
    if w.device.type not in _QDEVICES:
        return f"is a bitsandbytes {kind} on {w.device.type} (quantized weights run on CPU and CUDA only)"
    if kind == "Linear4bit" and getattr(w, "quant_state", None) is None:
        return "is a bitsandbytes Linear4bit not quantized yet (bitsandbytes quantizes on .to(device))"
    if kind == "Linear8bitLt" and (w.dtype != torch.int8 or int8_scb(module) is None):
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
            return [w.data, int8_scb(self.module)], [QFMT_INT8_ROW, self.d_out, self.d_in, 0, 0], 0.0
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
            return (w.data.float() * int8_scb(self.module).float()[:, None]) * 7.874015718698502e-3
        return bnbf.dequantize_4bit(w.data, w.quant_state).float().reshape(self.d_out, self.d_in)
