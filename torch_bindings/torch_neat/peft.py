"""Run PEFT's PEANuT layers (``peft.PeanutConfig``, PEFT >= 0.19) on torch-neat's fused ops.

PEFT's PEANuT layer forms the full ``d_out x d_in`` update matrix in every forward. This module
replaces the layer's ``forward``, ``merge``, ``unmerge`` and ``get_delta_weight`` with versions on
``torch.ops.neat`` that use the same parameters (``peanut_A``, ``peanut_encoders``,
``peanut_decoders``, ``peanut_B``, ``scaling``, ``act_fn``) and so the same state-dict names:
``save_pretrained``, ``PeftModel.from_pretrained``, ``merge_and_unload`` and multiple adapters keep
working. An adapter whose ``act_fn`` has no torch-neat kernel runs PEFT's own code, with one warning.

Two ways in::

    model = torch_neat.peft.accelerate(get_peft_model(base, PeanutConfig(...)))   # this model only
    torch_neat.peft.install()                                                      # every PEANuT layer

PEFT's ``depth`` counts encoder layers: ``PeanutConfig(depth=d)`` is paper depth ``2 * d + 2``.

Merged layers and the two codes. PEFT's merge keeps a copy of the original weight
(``_base_weight_before_merge``) and its unmerge copies it back. torch-neat's merge keeps no copy:
it records the factors of the delta (``_neat_merge_record``) and its unmerge subtracts them, restoring
W bit for bit. A layer therefore holds exactly one of the two states while merged, and only the code
that made it may unmerge it:

* torch-neat's merge/unmerge of a layer merged by PEFT's code (merged before :func:`install` or
  :func:`accelerate`) run PEFT's own code on PEFT's state, and keep it PEFT's until unmerged.
* when PEFT's code takes over a layer merged by torch-neat (:func:`uninstall`), the layer stays merged
  (same W, same ``merged_adapters``) and is handed over in PEFT's state: the original W, rebuilt
  exactly from the record, becomes ``_base_weight_before_merge`` (a CPU copy, as PEFT keeps) and the
  record is dropped. PEFT then unmerges to the original W bit for bit and merges further adapters
  from the original W, as if it had merged the layer itself.
"""

from __future__ import annotations

import warnings
import weakref
from typing import Any, Optional

import torch
from torch import nn

try:
    from peft.tuners.peanut.layer import Linear as PeanutLinear
    from peft.tuners.tuners_utils import check_adapters_to_merge
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError(
        "torch_neat.peft needs PEFT with PEANuT support (peft >= 0.19): pip install 'peft>=0.19'"
    ) from e

from . import ops as _ops
from .merge import MergeRecord, merge_factors, unmerge_factors, unmerged_copy
from .precision import compute_g, kernel_dtype, op_operands
from .quantized import check_float_base, quantized_error, quantized_reason

__all__ = [
    "accelerate", "install", "uninstall", "is_installed", "merge_state", "NeatPeanutLinear", "SUPPORTED_ACTIVATIONS",
]

Tensor = torch.Tensor

# transformers ACT2FN name (what PEFT stores in act_fn) -> torch-neat kernel activation
SUPPORTED_ACTIVATIONS: dict[str, str] = {
    "relu": "relu",
    "gelu": "gelu",
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "silu": "silu",
    "swish": "silu",
    "tanh": "tanh",
    "linear": "identity",
}

_PATCHED_NAMES = ("forward", "merge", "unmerge", "get_delta_weight")
_ORIGINAL = {name: PeanutLinear.__dict__[name] for name in _PATCHED_NAMES}
_WARNED: set[str] = set()
# layers holding a torch-neat merge record: the ones uninstall() may have to hand over to PEFT's code
_MERGED_BY_NEAT: "weakref.WeakSet[nn.Module]" = weakref.WeakSet()


def _warn_fallback(act_fn: str, stacklevel: int = 3) -> None:
    if act_fn in _WARNED:
        return
    _WARNED.add(act_fn)
    warnings.warn(
        f"torch_neat.peft: PEANuT act_fn {act_fn!r} has no torch-neat kernel; adapters using it run PEFT's own "
        f"code (which forms the full update matrix). Accelerated: {', '.join(sorted(SUPPORTED_ACTIVATIONS))}",
        UserWarning,
        stacklevel=stacklevel,
    )


def _kernel_act(layer: PeanutLinear, adapter: str) -> Optional[str]:
    return SUPPORTED_ACTIVATIONS.get(layer.act_fn[adapter])


def _weight(module: nn.Module) -> Tensor:
    # the parameter dict itself: Module.__getattr__ costs about half a microsecond a lookup, and a
    # small layer's forward makes six of them (benchmarks/bench_modules.py, d = 64)
    return module._parameters["weight"]


def _factors(layer: PeanutLinear, adapter: str) -> tuple[Tensor, Tensor, list[Tensor]]:
    mods = layer._modules
    A = _weight(mods["peanut_A"]._modules[adapter])
    B = _weight(mods["peanut_B"]._modules[adapter])
    hidden = [_weight(m) for m in mods["peanut_encoders"]._modules[adapter]._modules.values()]
    hidden += [_weight(m) for m in mods["peanut_decoders"]._modules[adapter]._modules.values()]
    return A, B, hidden


def _cast_params(A: Tensor, B: Tensor, hidden: list[Tensor], dtype: torch.dtype):
    if A.dtype == dtype:
        return A, B, hidden
    return A.to(dtype), B.to(dtype), [h.to(dtype) for h in hidden]


def _plain_linear(base: nn.Module) -> bool:
    # The fused op replaces base(x) only when base is a hook-free nn.Linear with a plain weight tensor.
    return (
        type(base) is nn.Linear
        and type(base.weight) in (nn.Parameter, torch.Tensor)
        and type(base.weight.data) is torch.Tensor
        and not base._forward_hooks
        and not base._forward_pre_hooks
        # accelerate stores its hook as a plain attribute; a failed hasattr would cost an exception
        and "_hf_hook" not in base.__dict__
    )


# ---------------------------------------------------------------------------------------------
# Replacement methods (self is a PEFT PEANuT Linear)


def _neat_forward(self, x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
    if self.disable_adapters:
        if self.merged:
            self.unmerge()
        return self.base_layer(x, *args, **kwargs)
    if self.merged:
        return self.base_layer(x, *args, **kwargs)

    adapters = [a for a in self.active_adapters if a in self.peanut_A]
    base = self._modules["base_layer"]
    if "base_layer" in base._modules:  # a tuner layer wrapping another: PEFT's get_base_layer
        base = self.get_base_layer()
    weight = base.weight

    if len(adapters) == 1 and not args and not kwargs and self.base_layer is base and _plain_linear(base):
        act = _kernel_act(self, adapters[0])
        if act is not None:
            A, B, hidden = _factors(self, adapters[0])
            ct = kernel_dtype(x.device, A.dtype)
            # under torch.autocast the op casts as F.linear would (ops.autocast_operands)
            if x.dtype == weight.dtype == ct == A.dtype or _ops.autocast_enabled(x):
                return _ops.fused_linear(x, weight, base.bias, A, B, hidden, act, self.scaling[adapters[0]])

    # reading quantized storage as W would be a silent wrong answer (PEFT's own PEANuT layer does that)
    check_float_base(base, "torch_neat.peft: the PEANuT layer's base layer")
    result = self.base_layer(x, *args, **kwargs)
    for adapter in adapters:
        act = _kernel_act(self, adapter)
        if act is None:
            _warn_fallback(self.act_fn[adapter])
            delta_weight = self._compute_delta_weight(adapter, weight)  # PEFT's own path
            x_cast = self._cast_input_dtype(x, delta_weight.dtype)
            result = result + torch.matmul(x_cast, delta_weight.transpose(0, 1)).to(result.dtype)
            continue
        A, B, hidden = _factors(self, adapter)
        xc, wc, _, ct = op_operands(x, weight, None, A.dtype)
        A, B, hidden = _cast_params(A, B, hidden, ct)
        delta = _ops.fused_adapter(xc, wc, A, B, hidden, act, self.scaling[adapter])
        result = result + delta.to(result.dtype)
    return result


def _neat_g_and_b(self, adapter: str, weight: Tensor) -> tuple[Tensor, Tensor]:
    """G (r, d_in) and scaling * B (d_out, r) of one adapter, from ``weight``; no autograd."""
    check_float_base(self.get_base_layer(), "torch_neat.peft: the PEANuT layer's base layer")
    A, B, hidden = _factors(self, adapter)
    G = compute_g(weight, A, hidden, _kernel_act(self, adapter))
    with torch.no_grad():
        return G, B.detach().to(G.dtype) * self.scaling[adapter]


def _neat_get_delta_weight(self, adapter: str) -> Tensor:
    if _kernel_act(self, adapter) is None:
        _warn_fallback(self.act_fn[adapter])
        return _ORIGINAL["get_delta_weight"](self, adapter)
    G, B = _neat_g_and_b(self, adapter, self.get_base_layer().weight)
    return B @ G  # (d_out, d_in), as PEFT's


def _neat_merge(self, safe_merge: bool = False, adapter_names: Optional[list[str]] = None) -> None:
    record = getattr(self, "_neat_merge_record", None)
    wanted = self.active_adapters if adapter_names is None else adapter_names
    unsupported = [a for a in (*self.merged_adapters, *wanted) if a in self.peanut_A and _kernel_act(self, a) is None]
    if unsupported or (self.merged and record is None):
        # PEFT's own merge (it keeps a copy of W to unmerge from); taken when an adapter lacks a kernel or
        # the layer was merged by PEFT's code before accelerate()
        for a in unsupported:
            _warn_fallback(self.act_fn[a])
        if record is not None:
            _neat_unmerge_silently(self)
            names = [*self._neat_previously_merged, *[a for a in wanted if a not in self._neat_previously_merged]]
            return _ORIGINAL["merge"](self, safe_merge=safe_merge, adapter_names=names)
        return _ORIGINAL["merge"](self, safe_merge=safe_merge, adapter_names=adapter_names)

    adapter_names = check_adapters_to_merge(self, adapter_names)
    new = [a for a in adapter_names if a in self.peanut_A]
    if not new:
        return
    previous = list(self.merged_adapters)
    weight = self.get_base_layer().weight
    if not previous:
        # a copy PEFT left behind while unmerged (its merge of no adapter of this layer, or one that failed
        # its safe check) is stale: this merge keeps the record instead, so that exactly one state exists
        self._base_weight_before_merge = None
    if record is not None:
        # G depends on the original W, so take the merged adapters out and merge everything again
        unmerge_factors(weight, record)
        self._neat_merge_record = None
    Gs, Bs = zip(*(_neat_g_and_b(self, a, weight) for a in [*previous, *new]))
    dtype = Gs[0].dtype
    for G in Gs[1:]:
        dtype = torch.promote_types(dtype, G.dtype)
    G_all = torch.cat([G.to(dtype) for G in Gs], dim=0)
    B_all = torch.cat([B.to(dtype) for B in Bs], dim=1)
    try:
        self._neat_merge_record = merge_factors(weight, B_all, G_all, exact=True, safe=safe_merge)
    except ValueError:
        if record is not None:  # put the earlier merge back before reporting
            self._neat_merge_record = merge_factors(weight, record.B, record.G, exact=True)
        raise ValueError(
            f"NaNs detected in the merged weights. The adapter {', '.join(new)} seems to be broken"
        ) from None
    self.merged_adapters[:] = [*previous, *new]
    _MERGED_BY_NEAT.add(self)


def _neat_unmerge_silently(self) -> None:
    self._neat_previously_merged = list(self.merged_adapters)
    unmerge_factors(self.get_base_layer().weight, self._neat_merge_record)
    self._neat_merge_record = None
    self.merged_adapters.clear()
    _MERGED_BY_NEAT.discard(self)


def _neat_unmerge(self) -> None:
    if getattr(self, "_neat_merge_record", None) is None:
        return _ORIGINAL["unmerge"](self)
    if not self.merged:
        warnings.warn("Already unmerged. Nothing to do.")
        return
    _neat_unmerge_silently(self)


@torch.no_grad()
def _hand_over_to_peft(layer: PeanutLinear) -> None:
    """Turns a layer merged by torch-neat into the state PEFT's own merge/unmerge expect; it stays merged.

    The original W is rebuilt bit for bit from the record (on W's device, as the merge computed it) and
    kept where PEFT keeps its copy; the record is dropped. No-op for a layer torch-neat has not merged.
    """
    record = layer.__dict__.get("_neat_merge_record")
    if record is None:
        return
    layer._base_weight_before_merge = unmerged_copy(layer.get_base_layer().weight, record).cpu()
    layer._neat_merge_record = None


def _runs_neat(layer: PeanutLinear) -> bool:
    return type(layer).unmerge is _neat_unmerge and type(layer).merge is _neat_merge


def _neat_setstate(self, state: dict) -> None:
    # copy.copy, copy.deepcopy and unpickling build a layer without merge(): track copies of merged layers too
    nn.Module.__setstate__(self, state)
    if state.get("_neat_merge_record") is not None:
        _MERGED_BY_NEAT.add(self)


def _hand_over_stranded_layers() -> None:
    # Every live layer torch-neat merged (copies included) whose class now runs PEFT's code.
    for layer in list(_MERGED_BY_NEAT):
        if not _runs_neat(layer):
            _hand_over_to_peft(layer)
            _MERGED_BY_NEAT.discard(layer)


_REPLACEMENTS = {
    "forward": _neat_forward,
    "merge": _neat_merge,
    "unmerge": _neat_unmerge,
    "get_delta_weight": _neat_get_delta_weight,
}


class NeatPeanutLinear(PeanutLinear):
    """A PEFT PEANuT ``Linear`` whose forward and merge run on torch-neat (same parameters and names)."""

    forward = _neat_forward
    merge = _neat_merge
    unmerge = _neat_unmerge
    get_delta_weight = _neat_get_delta_weight
    __setstate__ = _neat_setstate

    def __repr__(self) -> str:
        return "neat." + super().__repr__()


def _peanut_layers(model: nn.Module) -> list[PeanutLinear]:
    return [m for m in model.modules() if isinstance(m, PeanutLinear)]


def _warn_unsupported(layers: list[PeanutLinear]) -> None:
    for act in sorted({layer.act_fn[a] for layer in layers for a in layer.act_fn} - set(SUPPORTED_ACTIVATIONS)):
        _warn_fallback(act, stacklevel=4)


def accelerate(peft_model: nn.Module) -> nn.Module:
    """Switches every PEFT PEANuT ``Linear`` in ``peft_model`` to torch-neat's ops, in place; returns the model.

    Parameters, buffers and state-dict names are untouched (only the layers' class changes to
    :class:`NeatPeanutLinear`, a subclass of PEFT's), so outputs and gradients are PEFT's up to
    floating-point rounding. Adapters added later are accelerated too. Adapters whose ``act_fn`` has
    no kernel keep PEFT's path; one warning names them.
    """
    if not isinstance(peft_model, nn.Module):
        raise TypeError(f"accelerate: expected a torch.nn.Module (a PeftModel); got {type(peft_model).__name__}")
    layers = _peanut_layers(peft_model)
    if not layers:
        raise ValueError(
            "accelerate: the model has no PEFT PEANuT layer; build it with peft.get_peft_model(model, PeanutConfig(...))"
        )
    quantized = [f"{name!r} {reason}" for name, m in peft_model.named_modules() if isinstance(m, PeanutLinear)
                 and (reason := quantized_reason(m.get_base_layer())) is not None]
    if quantized:
        shown = "; ".join(quantized[:3]) + (f"; and {len(quantized) - 3} more" if len(quantized) > 3 else "")
        raise quantized_error(f"accelerate: PEANuT layers over quantized base layers: {shown}")
    for layer in layers:
        if type(layer) is PeanutLinear:
            layer.__class__ = NeatPeanutLinear
    _warn_unsupported(layers)
    return peft_model


def install() -> None:
    """Makes every PEFT PEANuT ``Linear`` (existing and future) use torch-neat, by patching PEFT's class.

    Undo with :func:`uninstall`. Prefer :func:`accelerate` to change one model only. Layers already merged
    by PEFT's code stay in PEFT's state: merging more adapters into them and unmerging them run PEFT's code
    until they are unmerged (module docstring).
    """
    for name, fn in _REPLACEMENTS.items():
        setattr(PeanutLinear, name, fn)
    PeanutLinear.__setstate__ = _neat_setstate  # PEFT's class inherits nn.Module's


def uninstall() -> None:
    """Restores PEFT's own PEANuT methods (layers converted by :func:`accelerate` stay accelerated).

    Layers merged while installed stay merged, with the same weights and ``merged_adapters``, and are
    handed to PEFT in the state its own code needs: the original weight, rebuilt bit for bit, is kept as
    PEFT's ``_base_weight_before_merge`` (one CPU copy of W per merged layer, as if PEFT had merged it),
    so PEFT's ``unmerge_adapter`` restores it exactly and a later PEFT merge starts from it. Copies of
    merged layers made while installed (``copy.deepcopy``, pickling) are handed over too; a layer pickled
    merged and loaded in a process where it is neither installed nor accelerated is not (unmerge first).
    """
    for name, fn in _ORIGINAL.items():
        setattr(PeanutLinear, name, fn)
    if PeanutLinear.__dict__.get("__setstate__") is _neat_setstate:
        del PeanutLinear.__setstate__
    _hand_over_stranded_layers()


def merge_state(layer: PeanutLinear) -> tuple[Optional[MergeRecord], Optional[Tensor]]:
    """``(torch-neat's merge record, PEFT's copy of the original weight)`` of a PEANuT layer; each may be None.

    A layer merged by torch-neat's code holds the record, one merged by PEFT's code holds the copy
    (module docstring); :mod:`torch_neat.export_lora` rebuilds the original weight from either.
    """
    return layer.__dict__.get("_neat_merge_record"), getattr(layer, "_base_weight_before_merge", None)


def is_installed() -> bool:
    return PeanutLinear.__dict__["forward"] is _neat_forward
