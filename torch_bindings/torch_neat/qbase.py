"""What the q ops need from a quantized frozen layer: :class:`QuantizedBase` (docs/design.md §5.2).

Each supported quantization (bitsandbytes in ``bnb_base.py``, torchao in ``torchao_base.py``) is read as
one of the C library's formats (``neat_qformat`` in shim/neat.h); no format has its own kernels.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["QFMT_FP4", "QFMT_INT8_ROW", "QFMT_NF4", "QuantizedBase", "version_of"]

Tensor = torch.Tensor

# neat_qformat values (shim/neat.h)
QFMT_NF4, QFMT_FP4, QFMT_INT8_ROW = 1, 2, 3


def version_of(*tensors: Tensor) -> tuple:
    """Changes when any of ``tensors`` is replaced or written in place."""
    return tuple((t.device, t.data_ptr(), t._version) for t in tensors)


class QuantizedBase:
    """A supported quantized layer's weight as the q ops take it: ``args()`` = (qweight, qmeta, qoffset).

    ``kind`` names the quantization for messages. Subclasses read the layer's weight again at every call,
    so a layer moved or re-quantized in place is followed; the arrays are its own storage wherever the C
    format can read that as it is, and never W-sized when they are not.
    """

    kind = "quantized"

    def __init__(self, module: nn.Module):
        self.module = module
        self.d_out, self.d_in = int(module.out_features), int(module.in_features)

    def args(self) -> tuple[list, list, float]:
        raise NotImplementedError

    def version(self) -> tuple:
        """Changes when the stored weight does (for caches of G)."""
        raise NotImplementedError

    def dequantize(self) -> Tensor:
        """W in float32 by the quantization's own rule (for a merge into a float layer only: W-sized)."""
        raise NotImplementedError
