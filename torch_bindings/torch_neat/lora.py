"""``export_lora``: a trained NEAT adapter as an exact PEFT LoRA adapter directory, from a model.

Finds the adapted layers of a torch-neat model (:func:`torch_neat.get_neat_model`) or of a PEFT PEANuT
``PeftModel``, computes each G from the original base weight (a merged layer's is rebuilt first) and
hands them to :func:`torch_neat.export.lora_from_entries`. The documentation is
:mod:`torch_neat.export_lora`'s.
"""

from __future__ import annotations

import os
from typing import Any, Optional, Union

import torch
from torch import nn

from . import ops as _ops
from .config import CONFIG_NAME as NEAT_CONFIG_NAME
from .export import PREFIX, LoraEntry, as_dtype, lora_from_entries, write_lora
from .layer import NeatLinear
from .merge import unmerged_copy
from .model import saved_modules
from .quantized import check_float_base

__all__ = ["export_lora", "lora_adapter"]

Tensor = torch.Tensor


@torch.no_grad()
def _g(weight: Tensor, A: Tensor, hidden: list[Tensor], activation: str) -> Tensor:
    """G (r, d_in) from the kernels in float32, or float64 for float64 adapters."""
    ct = torch.float64 if A.dtype == torch.float64 else torch.float32
    return _ops.compute_g(weight.detach().to(ct), A.detach().to(ct), [h.detach().to(ct) for h in hidden], activation)


@torch.no_grad()
def _original_weight(weight: Tensor, record, peft_copy: Optional[Tensor], merged: bool, where: str) -> Tensor:
    """The base weight as it was before any merge: G is a function of it, not of the merged weight."""
    if not merged:
        return weight
    if record is not None:  # torch-neat's exact merge: subtract the recorded factors from a copy
        return unmerged_copy(weight, record)
    if peft_copy is not None:  # PEFT's own merge keeps a copy of the original weight
        return peft_copy.to(device=weight.device, dtype=weight.dtype)
    raise ValueError(
        f"export_lora: {where} is merged and its original weight cannot be recovered (merged with exact=False); "
        "export before merging, or reload the base model and the adapter"
    )


def _is_peft_model(model: nn.Module) -> bool:
    if not (hasattr(model, "peft_config") and hasattr(model, "base_model")):
        return False
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover - depends on the environment
        return False
    return isinstance(model, PeftModel)


def _state_under(model: nn.Module, names: list[str]) -> dict[str, Tensor]:
    """Parameters and persistent buffers of the modules ``names`` (state-dict names)."""
    out = {}
    for key, value in model.state_dict(keep_vars=True).items():
        if any(key.startswith(n + ".") for n in names):
            out[key] = value
    return out


def _from_neat(model: nn.Module):
    layers_found = [(n, m) for n, m in model.named_modules() if isinstance(m, NeatLinear)]
    config = getattr(model, "neat_config", None)
    if not layers_found:
        raise ValueError(
            "export_lora: the model has no NEAT adapter (no NeatLinear layer, and it is not a PEFT PEANuT "
            "PeftModel); patch it with torch_neat.get_neat_model or torch_neat.load_adapter first"
        )
    layers = []
    for name, layer in layers_found:
        if layer.quantized:  # never merged (merge refuses); G from the quantized storage, as training saw it
            G = layer.current_g()
        else:
            W = _original_weight(layer.base_layer.weight, layer.merge_record, None, layer.merged, f"NEAT layer {name!r}")
            G = _g(W, layer.neat_A, list(layer.neat_hidden), layer.kernel_activation)
        layers.append(LoraEntry(name, G, layer.neat_B.detach(), layer.scale, layer.neat_A.dtype))
    saved = saved_modules(model)
    inside = [n for n in saved for ln, _ in layers_found if ln.startswith(n + ".")]
    if inside:
        raise ValueError(f"export_lora: modules to save {sorted(set(inside))} contain NEAT layers; LoRA cannot express that")
    entries = list(config.modules_to_save or []) if config is not None else []
    extra = {PREFIX + k: v for k, v in _state_under(model, saved).items()}
    internal = {n for n, _ in layers_found}
    base_names = [n for n, _ in model.named_modules() if n and not any(n.startswith(i + ".") for i in internal)]
    name_or_path = getattr(model, "name_or_path", None)
    meta = {
        "base_model_name_or_path": name_or_path if isinstance(name_or_path, str) and name_or_path else None,
        "revision": None,
        "task_type": None,
        "auto_mapping": _auto_mapping(model),
    }
    return layers, saved, entries, extra, base_names, meta


def _auto_mapping(model: nn.Module) -> Optional[dict]:
    # as PeftModel.save_pretrained writes for task_type None, for transformers models only
    try:
        from transformers import PreTrainedModel
    except ImportError:  # pragma: no cover
        return None
    if isinstance(model, PreTrainedModel):
        return {"base_model_class": type(model).__name__, "parent_library": type(model).__module__}
    return None


def _from_peft(model: nn.Module, adapter_name: Optional[str]):
    from peft.tuners.peanut.layer import Linear as PeanutLinear
    from peft.utils import get_peft_model_state_dict

    from .peft import SUPPORTED_ACTIVATIONS, merge_state

    adapter = adapter_name or model.active_adapter
    if adapter not in model.peft_config:
        raise ValueError(f"export_lora: the PEFT model has no adapter {adapter!r}; it has {sorted(model.peft_config)}")
    config = model.peft_config[adapter]
    peft_type = getattr(config.peft_type, "value", config.peft_type)
    if peft_type != "PEANUT":
        hint = " (it already is LoRA: use save_pretrained)" if peft_type == "LORA" else ""
        raise ValueError(f"export_lora: PEFT adapter {adapter!r} is {peft_type}, not PEANUT{hint}")
    inner = model.base_model.model
    layers, internal = [], []
    for name, m in inner.named_modules():
        if not isinstance(m, PeanutLinear) or adapter not in m.peanut_A:
            continue
        internal.append(name)
        base = m.get_base_layer()
        if not isinstance(base, nn.Linear):
            raise ValueError(f"export_lora: PEANuT layer {name!r} wraps a {type(base).__name__}; only nn.Linear is exported")
        check_float_base(base, f"export_lora: PEANuT layer {name!r}'s base layer")
        act = SUPPORTED_ACTIVATIONS.get(m.act_fn[adapter])
        if act is None:
            raise ValueError(
                f"export_lora: PEANuT layer {name!r} uses act_fn {m.act_fn[adapter]!r}, which has no torch-neat kernel "
                f"(exportable: {', '.join(sorted(SUPPORTED_ACTIVATIONS))})"
            )
        record, peft_copy = merge_state(m)
        W = _original_weight(base.weight, record, peft_copy, m.merged, f"PEANuT layer {name!r}")
        A = m.peanut_A[adapter].weight
        hidden = [e.weight for e in m.peanut_encoders[adapter]] + [d.weight for d in m.peanut_decoders[adapter]]
        G = _g(W, A, hidden, act)
        layers.append(LoraEntry(name, G, m.peanut_B[adapter].weight.detach(), float(m.scaling[adapter]), A.dtype))
    if not layers:
        raise ValueError(f"export_lora: the PEFT model has no PEANuT layer for adapter {adapter!r}")
    peanut_keys = tuple(PREFIX + n + "." for n in internal)
    extra = {k: v for k, v in get_peft_model_state_dict(model, adapter_name=adapter).items() if not k.startswith(peanut_keys)}
    entries = list(dict.fromkeys(config.modules_to_save or []))
    base_names = [n for n, _ in inner.named_modules() if n and not any(n.startswith(i + ".") for i in internal)]
    auto_mapping = None
    if config.task_type is None:
        auto_mapping = {"base_model_class": type(inner).__name__, "parent_library": type(inner).__module__}
    name_or_path = config.base_model_name_or_path or inner.__dict__.get("name_or_path") or None
    meta = {
        "base_model_name_or_path": name_or_path,
        "revision": getattr(config, "revision", None),
        "task_type": getattr(config.task_type, "value", config.task_type),
        "auto_mapping": auto_mapping,
    }
    return layers, None, entries, extra, base_names, meta


def lora_adapter(
    model: nn.Module,
    *,
    dtype: Union[None, str, torch.dtype] = None,
    adapter_name: Optional[str] = None,
    base_model_name_or_path: Optional[str] = None,
) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """The LoRA form of ``model``'s NEAT adapter, in memory: ``(adapter_config dict, tensors by saved key)``.

    Same arguments as :func:`export_lora`. Tensors are on the CPU.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"export_lora: model must be an nn.Module; got {type(model).__name__}")
    dtype = as_dtype(dtype)
    if _is_peft_model(model):
        layers, saved, entries, extra, base_names, meta = _from_peft(model, adapter_name)
    else:
        if adapter_name is not None:
            raise ValueError("export_lora: adapter_name applies to PEFT models only (a torch-neat model has one adapter)")
        layers, saved, entries, extra, base_names, meta = _from_neat(model)
    return lora_from_entries(layers, base_names=base_names, saved=saved, save_entries=entries, extra=extra, meta=meta,
                             dtype=dtype, base_model_name_or_path=base_model_name_or_path)


def export_lora(
    model: nn.Module,
    path: Union[str, os.PathLike],
    *,
    dtype: Union[None, str, torch.dtype] = None,
    adapter_name: Optional[str] = None,
    base_model_name_or_path: Optional[str] = None,
) -> str:
    """Writes ``model``'s NEAT adapter as a PEFT LoRA adapter directory at ``path``; returns the path.

    Args:
        model: a model patched by :func:`torch_neat.get_neat_model` / :func:`torch_neat.load_adapter`, or a
            PEFT ``PeftModel`` with a PEANuT adapter (accelerated by :mod:`torch_neat.peft` or not).
        path: output directory (created; ``adapter_config.json`` and ``adapter_model.safetensors`` are
            overwritten). Refused when it holds a torch-neat adapter (that would overwrite its weights).
        dtype: dtype of ``lora_A`` (= G) and ``lora_B`` (= B) in the file; default the adapter's dtype.
            G is always computed in float32 or better. Modules to save keep their own dtype.
        adapter_name: the PEFT adapter to export (default: the active one).
        base_model_name_or_path: recorded in the config; default what the model knows.

    ``PeftModel.from_pretrained(base, path)`` then computes what ``model`` computes with its adapter
    enabled (in eval mode), and ``merge_and_unload`` gives the weights :func:`torch_neat.merge_and_unload`
    gives. Merged layers are exported from their original weight.
    """
    path = os.fspath(path)
    if os.path.isfile(path):
        raise ValueError(f"export_lora: {path!r} is a file; expected a directory")
    if os.path.isfile(os.path.join(path, NEAT_CONFIG_NAME)):
        raise ValueError(
            f"export_lora: {path!r} holds a torch-neat adapter ({NEAT_CONFIG_NAME}); writing the LoRA form there would "
            "overwrite its adapter_model.safetensors: choose another directory"
        )
    config, tensors = lora_adapter(model, dtype=dtype, adapter_name=adapter_name,
                                   base_model_name_or_path=base_model_name_or_path)
    return write_lora(path, config, tensors)
