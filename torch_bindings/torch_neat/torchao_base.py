"""torchao's int8 weight-only and NF4 tensors read as the C formats (docs/design.md §5.2), no new format.

``Int8Tensor`` (``quantize_(model, Int8WeightOnlyConfig())``): int8 codes q and a float32 scale per row
(or one for the tensor), W = q * scale. INT8_ROW computes (CB * SCB) * float32(1/127), so CB is q as
stored and SCB = 127 * scale, d_out floats: a few float32 roundings from torchao's q * scale (§5.2 has
the bound).

``NF4Tensor`` (``to_nf4``, torchtune's QLoRA): 4-bit codes two per byte, high nibble first, over the
flattened weight in blocks of ``block_size``, and its own 16-entry table ``nf4``: the NF4 layout, read
as it is with torchao's table. Its block scalers are quantized again (int8 codes, a factor per block of
``scaler_block_size`` scalers, ``scaler_mean``), but torchao divides by the factor where the nested format
multiplies by a stored scale: read as nested, about one scaler in eight is an ulp off torchao's, which
after the mean's cancellation can be 1e-4 of the scaler. So absmax is torchao's own dequantized scalers,
one float per block (1/8 of the 4-bit codes' bytes), and W is torchao's bit for bit in float32; for bf16 /
fp16 it is torchao's product before torchao rounds it to that dtype (a product of two half values is
exact in float32). Nothing here imports torchao: the arrays are read off the tensor.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .qbase import QFMT_INT8_ROW, QFMT_NF4, QuantizedBase, version_of

__all__ = ["TorchaoInt8Base", "TorchaoNF4Base", "torchao_base", "torchao_kind", "unsupported_torchao"]

Tensor = torch.Tensor

_KINDS = ("Int8Tensor", "NF4Tensor")
_HALF = (torch.bfloat16, torch.float16)


def torchao_kind(weight) -> Optional[str]:
    """``"Int8Tensor"`` or ``"NF4Tensor"`` for torchao's tensors of those classes (by name), else None."""
    if not isinstance(weight, torch.Tensor):
        return None
    for kind in {type(weight), type(weight.data)}:
        for cls in kind.__mro__:
            if cls.__module__.partition(".")[0] == "torchao" and cls.__name__ in _KINDS:
                return cls.__name__
    return None


def _power_of_two_from_16(n: int) -> bool:
    return n >= 16 and n & (n - 1) == 0


def _unsupported_int8(w, d_out: int, d_in: int) -> Optional[str]:
    if w.qdata.dim() != 2 or tuple(w.qdata.shape) != (d_out, d_in):
        return f"has a torchao Int8Tensor of shape {tuple(w.qdata.shape)}, not the layer's ({d_out}, {d_in})"
    if any(getattr(w, a, None) is not None for a in ("act_quant_kwargs", "act_quant_scale", "act_pre_scale")):
        return ("has a torchao Int8Tensor that quantizes its input too (an int8 dynamic/static activation "
                "config): its layer does not compute x W^T; only weight-only int8 is read")
    block = list(w.block_size)
    if block not in ([1, d_in], [d_out, d_in]):
        return (f"has a torchao Int8Tensor quantized per group (block_size {block}); NEAT reads int8 "
                "per row or per tensor")
    if w.zero_point is not None and bool(torch.any(w.zero_point != 0)):
        return "has a torchao Int8Tensor quantized asymmetrically (a nonzero zero_point); NEAT reads symmetric int8"
    if not w.scale.is_floating_point() or w.scale.numel() not in (1, d_out):
        return f"has a torchao Int8Tensor with a {w.scale.dtype} scale of {w.scale.numel()} values"
    if not bool(torch.isfinite(w.scale.float() * 127.0).all()):
        return "has a torchao Int8Tensor whose scale is not finite, or overflows float32 as the format's 127 * scale"
    return None


def _unsupported_nf4(w, d_out: int, d_in: int) -> Optional[str]:
    if tuple(w.shape) != (d_out, d_in):
        return f"has a torchao NF4Tensor of shape {tuple(w.shape)}, not the layer's ({d_out}, {d_in})"
    if w.dtype not in (torch.float32, *_HALF):
        return f"has a torchao NF4Tensor of dtype {w.dtype}"
    if not _power_of_two_from_16(int(w.block_size)):
        return (f"has a torchao NF4Tensor with block_size {w.block_size}; the NF4 format needs a power "
                "of two >= 16 (torchao's default is 64)")
    if w.quantized_data.dtype != torch.uint8 or w.quantized_data.numel() * 2 != d_out * d_in:
        return "has a torchao NF4Tensor whose quantized_data is not d_out * d_in / 2 bytes"
    return None


def unsupported_torchao(module: nn.Module, kind: str) -> Optional[str]:
    """Why the layer's torchao weight of ``kind`` cannot be read (``"has a torchao ..."``), or None."""
    w = module.weight
    if w.device.type != "cpu":
        return f"has a torchao {kind} on {w.device.type} (torchao weights run on CPU only so far)"
    d_out, d_in = int(module.out_features), int(module.in_features)
    return _unsupported_int8(w, d_out, d_in) if kind == "Int8Tensor" else _unsupported_nf4(w, d_out, d_in)


class TorchaoInt8Base(QuantizedBase):
    """A torchao int8 weight-only ``Int8Tensor``, symmetric, per row or per tensor, as INT8_ROW."""

    kind = "torchao Int8Tensor"

    def args(self) -> tuple[list, list, float]:
        w = self.module.weight
        scb = w.scale.reshape(-1).float() * 127.0  # float32, d_out values (or one, for the tensor)
        if scb.numel() == 1:
            scb = scb.expand(self.d_out).contiguous()
        return [w.qdata, scb], [QFMT_INT8_ROW, self.d_out, self.d_in, 0, 0], 0.0

    def version(self) -> tuple:
        w = self.module.weight
        return version_of(w.qdata, w.scale)

    @torch.no_grad()
    def dequantize(self) -> Tensor:
        """W in float32 by torchao's own ``dequantize``."""
        return self.module.weight.dequantize(torch.float32)


class TorchaoNF4Base(QuantizedBase):
    """A torchao ``NF4Tensor`` as NF4 with a plain absmax: torchao's own scalers."""

    kind = "torchao NF4Tensor"

    @staticmethod
    def _scalers(w) -> Tensor:
        # torchao's own scalers, in its dtype, widened exactly to float32: one per block
        return w.dequantize_scalers(w.quantized_scalers, w.quantization_factor, w.scaler_block_size).float()

    def args(self) -> tuple[list, list, float]:
        w = self.module.weight
        code = w.nf4 if w.nf4.dtype == torch.float32 else w.nf4.float()
        return ([w.quantized_data, code, self._scalers(w)],
                [QFMT_NF4, self.d_out, self.d_in, int(w.block_size), 0], 0.0)

    def version(self) -> tuple:
        w = self.module.weight
        return version_of(w.quantized_data, w.quantized_scalers, w.quantization_factor, w.scaler_mean, w.nf4)

    @torch.no_grad()
    def dequantize(self) -> Tensor:
        """W in float32 as torchao dequantizes it; for bf16 / fp16, its product before the final rounding.

        The product of two half values is exact in float32, so that is the W the kernels read, and torchao's
        own half W is it rounded to the half dtype.
        """
        w = self.module.weight
        if w.dtype == torch.float32:
            return w.get_original_weight()
        data = w.quantized_data
        codes = torch.stack([data >> 4, data & 15], -1).reshape(-1).long()
        W = w.nf4.float()[codes] * self._scalers(w).repeat_interleave(int(w.block_size))
        return W.reshape(self.d_out, self.d_in)


def torchao_base(module: nn.Module, kind: str) -> QuantizedBase:
    """The base of a torchao weight of ``kind`` (checked by :func:`unsupported_torchao` first)."""
    return TorchaoInt8Base(module) if kind == "Int8Tensor" else TorchaoNF4Base(module)
