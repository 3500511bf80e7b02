"""``NeatLinear``: a frozen ``nn.Linear`` plus a NEAT adapter, running on ``torch.ops.neat`` (docs/design.md §1, §3.2).

The dtype policy lives in :mod:`torch_neat.precision`, the exact merge in :mod:`torch_neat.merge`.
"""

from __future__ import annotations

import math
import warnings
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from . import ops as _ops
from ._activations import canonical_activation
from .config import validate_core
from .merge import MergeRecord, merge_factors, unmerge_factors
from .precision import compute_g, kernel_dtype, op_operands
from .quantized import check_base

__all__ = ["NeatLinear"]

Tensor = torch.Tensor


class NeatLinear(nn.Module):
    """A frozen ``nn.Linear`` adapted by NEAT: ``y = x W^T + b + scale * (x G^T) B^T`` (docs/design.md §1).

    Args:
        base_layer: the ``nn.Linear`` to adapt; it is kept (not copied) as ``self.base_layer`` and frozen.
        r: rank.
        depth: paper's depth, even and >= 2 (``depth - 2`` hidden ``(r, r)`` layers).
        activation: see :func:`torch_neat.canonical_activation`.
        scale: the scalar ``s``.
        adapter_dtype: dtype of A, hidden and B; defaults to the base weight's (use float32 adapters on a
            half model for mixed precision).

    Parameters are ``neat_A`` (r, d_out), ``neat_hidden.{i}`` (r, r) and ``neat_B`` (d_out, r), initialised
    as the authors do: A and hidden layers Kaiming-uniform like ``nn.Linear``, B zero, so a fresh layer
    computes exactly what the base layer does.

    Under ``torch.autocast`` (HF Trainer's ``bf16=True``/``fp16=True``) the layer behaves like ``F.linear``:
    the op runs x, W and b in the autocast dtype with float32 adapters (on CPU, in float32) and returns
    the autocast dtype whatever x's dtype; adapter gradients stay float32 (see ``torch_neat.linear``).

    Training runs the fused ``torch.ops.neat.linear``. In eval mode, when no adapter gradient is needed,
    G is computed once and reused until W, A or a hidden layer changes (tracked through the tensors'
    version counters), and ``torch.ops.neat.lowrank_linear`` adds the rank-r term inside the base
    layer's own product, so inference costs about what the frozen base layer does.
    """

    def __init__(
        self,
        base_layer: nn.Linear,
        r: int = 8,
        depth: int = 2,
        activation: str = "relu",
        scale: float = 1.0,
        *,
        adapter_dtype: Optional[torch.dtype] = None,
    ) -> None:
        super().__init__()
        if not isinstance(base_layer, nn.Linear):
            raise TypeError(f"NeatLinear: base_layer must be an nn.Linear; got {type(base_layer).__name__}")
        # a supported quantized base (docs/design.md §5.2) runs on neat::qlinear; others are refused
        qbase = check_base(base_layer, "NeatLinear: base_layer")
        validate_core("NeatLinear", r, depth, activation, scale)
        self.base_layer = base_layer
        base_layer.requires_grad_(False)
        weight = base_layer.weight
        self._qbase = qbase
        d_out, d_in = (qbase.d_out, qbase.d_in) if qbase else weight.shape
        # adapters on a quantized base are float32 unless asked otherwise (its storage dtype is no guide)
        factory = {"device": weight.device, "dtype": adapter_dtype or (torch.float32 if qbase else weight.dtype)}
        self.in_features, self.out_features = d_in, d_out
        self.r, self.depth, self.scale = r, depth, float(scale)
        self.activation = activation
        self._act = canonical_activation(activation)
        self.neat_A = nn.Parameter(torch.empty(r, d_out, **factory))
        self.neat_hidden = nn.ParameterList([nn.Parameter(torch.empty(r, r, **factory)) for _ in range(depth - 2)])
        self.neat_B = nn.Parameter(torch.empty(d_out, r, **factory))
        self.merged = False
        self.disabled = False
        self._merge_record: Optional[MergeRecord] = None
        self._g_cache: Optional[Tensor] = None
        self._g_key: Optional[tuple] = None
        self.reset_parameters()

    @classmethod
    def from_linear(cls, linear: nn.Linear, r: int = 8, depth: int = 2, activation: str = "relu",
                    scale: float = 1.0, **kwargs) -> "NeatLinear":
        """Same as the constructor; reads better at call sites that patch existing layers."""
        return cls(linear, r=r, depth=depth, activation=activation, scale=scale, **kwargs)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """A and hidden layers as ``nn.Linear`` initialises its weight; B zero."""
        nn.init.kaiming_uniform_(self.neat_A, a=math.sqrt(5))
        for h in self.neat_hidden:
            nn.init.kaiming_uniform_(h, a=math.sqrt(5))
        nn.init.zeros_(self.neat_B)

    @property
    def weight(self) -> Tensor:
        return self.base_layer.weight

    @property
    def bias(self) -> Optional[Tensor]:
        return self.base_layer.bias

    @property
    def hidden(self) -> list[Tensor]:
        # the list's own dict, in order: iterating the ParameterList costs ~1 us per layer (index checks)
        return list(self.neat_hidden._parameters.values())

    @property
    def quantized(self) -> bool:
        """Whether the base layer holds a quantized weight (bitsandbytes 4-bit or 8-bit, torchao int8 or NF4)."""
        return self._qbase is not None

    @property
    def quantization(self) -> Optional[str]:
        """The base weight's quantization (``"Linear4bit"``, ``"torchao NF4Tensor"``, ...), or None."""
        return self._qbase.kind if self._qbase else None

    @property
    def kernel_activation(self) -> str:
        """The activation's name as the kernels know it (aliases resolved)."""
        return self._act

    @property
    def merge_record(self) -> Optional[MergeRecord]:
        """What :meth:`unmerge` needs while merged exactly (None when unmerged or merged with exact=False)."""
        return self._merge_record

    def drop_merge_record(self) -> None:
        """Forgets how to unmerge (the layer stays as it is); merge-and-unload's last step."""
        self._merge_record = None

    def extra_repr(self) -> str:
        state = "merged" if self.merged else ("disabled" if self.disabled else "active")
        return f"r={self.r}, depth={self.depth}, activation={self.activation!r}, scale={self.scale}, {state}"

    # -- forward ----------------------------------------------------------------------------

    def _adapter_params(self) -> list[Tensor]:
        return [self.neat_A, *self.neat_hidden]

    def _use_cached_g(self) -> bool:
        if self.training or torch.compiler.is_compiling():
            return False
        if not torch.is_grad_enabled():
            return True
        return not (self.base_layer.weight.requires_grad or any(p.requires_grad for p in self._adapter_params()))

    def _g_version(self) -> tuple:
        w = self.base_layer.weight
        base = self._qbase.version() if self._qbase else (w.device, w.dtype, w.data_ptr(), w._version)
        return (base, self.neat_A.dtype, self._act) + tuple(
            (t.data_ptr(), t._version) for t in self._adapter_params()
        )

    def _w(self):
        # what compute_g reads: the float weight, or the quantized base
        return self._qbase or self.base_layer.weight

    @staticmethod
    def _lowrank_ok(x: Tensor, weight: Tensor, bias: Optional[Tensor], G: Tensor) -> bool:
        # neat::lowrank_linear has no gradient, and takes x, W, b in one dtype the kernels run
        # (float32/float64 on CPU; on CUDA also half, with G in that dtype or float32)
        if torch.is_grad_enabled() and (x.requires_grad or (bias is not None and bias.requires_grad)):
            return False
        if x.dtype != weight.dtype or x.device != weight.device or G.device != weight.device:
            return False
        if G.dtype == weight.dtype:
            return weight.device.type == "cuda" or weight.dtype in (torch.float32, torch.float64)
        return weight.device.type == "cuda" and G.dtype == torch.float32 and weight.dtype in (torch.bfloat16, torch.float16)

    def cached_g(self) -> Tensor:
        """G for the current W, A and hidden layers, recomputed only when one of them changed."""
        key = self._g_version()
        if self._g_cache is None or self._g_key != key:
            self._g_cache = compute_g(self._w(), self.neat_A, self.hidden, self._act)
            self._g_key = key
        return self._g_cache

    def forward(self, x: Tensor) -> Tensor:
        if self.disabled or self.merged:
            return self.base_layer(x)
        base = self.base_layer
        weight, bias = base.weight, base.bias
        if self._qbase is not None:
            return self._quantized_forward(x, bias)
        if self._use_cached_g():
            G = self.cached_g()
            if self._lowrank_ok(x, weight, bias, G):
                # one fused call: y = x W^T + b + s (x G^T) B^T, x and y each passed once
                return _ops.lowrank_inference(x, weight, bias, G, self.neat_B.to(G.dtype), self.scale)
            y = F.linear(x, weight, bias)
            u = F.linear(x.to(G.dtype), G)
            B = self.neat_B.to(G.dtype)
            if y.dtype == G.dtype and not torch.is_grad_enabled():
                # y += s u B^T in place: no (N, d_out) temporary and no extra pass over y
                y2 = y.view(-1, y.shape[-1])
                y2.addmm_(u.reshape(-1, u.shape[-1]), B.t(), alpha=self.scale)
                return y
            return y + F.linear(u, B).mul_(self.scale).to(y.dtype)
        if _ops.autocast_enabled(x):
            # torch.autocast: the op casts as F.linear would (ops.autocast_operands) and its output
            # keeps the autocast dtype, whatever x's dtype was; no casts of ours before or after
            return _ops.fused_linear(x, weight, bias, self.neat_A, self.neat_B, self.hidden, self._act, self.scale)
        # the parameters from the module's own dict: on a small layer this Python costs as much as
        # the kernels, and each nn.Module attribute lookup about half a microsecond (docs/design.md §5.1)
        params = self._parameters
        A, B, hidden = params["neat_A"], params["neat_B"], self.hidden
        xc, wc, bc, ct = op_operands(x, weight, bias, A.dtype)
        if A.dtype != ct:
            A, B, hidden = A.to(ct), B.to(ct), [h.to(ct) for h in hidden]
        out = _ops.fused_linear(xc, wc, bc, A, B, hidden, self._act, self.scale)
        return out if out.dtype == x.dtype else out.to(x.dtype)

    def _quantized_forward(self, x: Tensor, bias: Optional[Tensor]) -> Tensor:
        # neat::qlinear reads the quantized storage itself: W is never formed, nothing W-sized is saved
        qweight, qmeta, qoffset = self._qbase.args()
        if _ops.autocast_enabled(x):  # the op's autocast kernel casts input, bias and output
            return torch.ops.neat.qlinear(x, qweight, qmeta, qoffset, bias, self.neat_A, self.neat_B,
                                          self.hidden, self._act, self.scale)
        ct = kernel_dtype(x.device, self.neat_A.dtype)
        xc, bc = x.to(ct), (bias.to(ct) if bias is not None else None)
        B = self.neat_B.to(ct)
        if self._use_cached_g() and not (torch.is_grad_enabled() and x.requires_grad):
            G = self.cached_g()
            return torch.ops.neat.qlowrank_linear(xc, qweight, qmeta, qoffset, bc, G.to(ct), B, self.scale).to(x.dtype)
        A, hidden = self.neat_A.to(ct), [h.to(ct) for h in self.hidden]
        return torch.ops.neat.qlinear(xc, qweight, qmeta, qoffset, bc, A, B, hidden, self._act, self.scale).to(x.dtype)

    # -- merge ------------------------------------------------------------------------------

    def current_g(self) -> Tensor:
        """G (r, d_in) for the current weight and adapter, computed now in the adapter's compute dtype."""
        return compute_g(self._w(), self.neat_A, self.hidden, self._act)

    def get_delta_weight(self) -> Tensor:
        """The full ``(d_out, d_in)`` update ``scale * B @ G`` (formed only on request)."""
        G = compute_g(self._w(), self.neat_A, self.hidden, self._act)
        with torch.no_grad():
            out = self.scale * (self.neat_B.to(G.dtype) @ G)
            return out if self._qbase else out.to(self.base_layer.weight.dtype)

    @torch.no_grad()
    def merge(self, safe_merge: bool = False, *, exact: bool = True) -> None:
        """Adds ``scale * B @ G`` into the base weight; forward then runs the base layer alone.

        ``unmerge`` restores the original weight bit for bit. Memory kept meanwhile: B and G
        (``r * (d_out + d_in)`` values) plus the few elements whose round trip is inexact. With
        ``exact=False`` nothing is kept and the layer cannot be unmerged (used by merge-and-unload).
        ``safe_merge`` checks the merged weight is finite before writing it.
        """
        if self.merged:
            warnings.warn("NeatLinear.merge: already merged; nothing to do", stacklevel=2)
            return
        if self._qbase is not None:
            raise TypeError(
                f"NeatLinear.merge: the base layer is a quantized {self._qbase.kind}; merging into its storage would "
                "round the update away. torch_neat.merge_and_unload(model) replaces it with a float32 nn.Linear "
                "holding W + s B G instead; or keep the adapter unmerged"
            )
        weight = self.base_layer.weight
        G = compute_g(weight, self.neat_A, self.hidden, self._act)
        B = self.neat_B.detach().to(G.dtype) * self.scale
        self._merge_record = merge_factors(weight, B, G, exact=exact, safe=safe_merge)
        self.merged = True
        self._g_cache = None

    @torch.no_grad()
    def merged_float_linear(self) -> nn.Linear:
        """A float32 ``nn.Linear`` computing this layer (W from the quantized base's own dequantizer, + s B G).

        For a quantized base only (merge_and_unload uses it): the merge cannot live in quantized storage.
        """
        if self._qbase is None:
            raise TypeError("NeatLinear.merged_float_linear: the base layer is not quantized; use merge()")
        W = self._qbase.dequantize()
        G = compute_g(self._qbase, self.neat_A, self.hidden, self._act).to(W.dtype)
        W.add_(self.neat_B.detach().to(W.dtype) @ G, alpha=self.scale)
        bias = self.base_layer.bias
        out = nn.Linear(self.in_features, self.out_features, bias=bias is not None, device=W.device, dtype=W.dtype)
        out.weight.copy_(W)
        if bias is not None:
            out.bias.copy_(bias.detach())
        return out.requires_grad_(False)

    @torch.no_grad()
    def unmerge(self) -> None:
        """Restores the weight ``merge`` changed, bit for bit."""
        if not self.merged:
            warnings.warn("NeatLinear.unmerge: not merged; nothing to do", stacklevel=2)
            return
        if self._merge_record is None:
            raise RuntimeError("NeatLinear.unmerge: this layer was merged with exact=False and cannot be unmerged")
        unmerge_factors(self.base_layer.weight, self._merge_record)
        self._merge_record = None
        self.merged = False

    # -- enable / disable -------------------------------------------------------------------

    def enable_adapter(self) -> None:
        self.disabled = False

    def disable_adapter(self) -> None:
        """Forward runs the base layer alone (unmerging first if merged)."""
        if self.merged:
            self.unmerge()
        self.disabled = True
