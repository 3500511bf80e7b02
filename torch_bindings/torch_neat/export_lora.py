"""Export a trained NEAT adapter as an exact PEFT LoRA adapter, to serve it wherever LoRA is served.

Once training ends, G (r, d_in) is fixed, so a NEAT layer computes

    y = x W^T + b + s (x G^T) B^T      ==  a LoRA layer with lora_A = G, lora_B = B, scaling = lora_alpha / r = s

This module writes that LoRA layer as a standard PEFT LoRA adapter directory (``adapter_config.json`` +
``adapter_model.safetensors``, PEFT's key names for the base model, ``use_rslora=False``,
``lora_alpha = s * r``, ``rank_pattern`` / ``alpha_pattern`` only where layers differ, modules to save
carried over), which ``peft.PeftModel.from_pretrained(base, path)`` and LoRA-serving engines load.

From Python (``torch_neat.export_lora`` is this module, and calling it calls :func:`export_lora`)::

    torch_neat.export_lora(model, "my-lora")          # a model patched by get_neat_model / load_adapter
    torch_neat.export_lora(peft_model, "my-lora")     # a PEFT PEANuT PeftModel (accelerated or not)

From the command line, for adapters saved with ``torch_neat.save_adapter`` or PEFT's ``save_pretrained``::

    python -m torch_neat.export_lora SRC DST --base-model BASE [--model-class CLS] [--dtype bfloat16]

G is computed by ``neat::compute_g`` in float32 (float64 for float64 adapters) from the *original* base
weight (a merged layer's weight is restored first) and stored, with B, in the requested dtype (default:
the adapter's). The export does not depend on whether adapters are enabled: it is the trained adapter.
"""

from __future__ import annotations

import argparse
import collections
import importlib
import json
import math
import os
import sys
import types
from dataclasses import dataclass
from typing import Any, Optional, Union

import torch
from torch import nn

from . import ops as _ops
from .config import CONFIG_NAME as NEAT_CONFIG_NAME
from .layer import NeatLinear, unmerged_copy

__all__ = ["export_lora", "lora_adapter", "export_saved_adapter", "main", "LORA_CONFIG_NAME", "LORA_WEIGHTS_NAME"]

Tensor = torch.Tensor

LORA_CONFIG_NAME = "adapter_config.json"
LORA_WEIGHTS_NAME = "adapter_model.safetensors"
_PREFIX = "base_model.model."  # PEFT's prefix of every saved key

_DTYPES = {
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float64": torch.float64, "fp64": torch.float64, "double": torch.float64,
}

# PEFT task_type -> the transformers Auto class its PeftModel subclass wraps (for the CLI)
_TASK_AUTO_CLASS = {
    "SEQ_CLS": "AutoModelForSequenceClassification",
    "CAUSAL_LM": "AutoModelForCausalLM",
    "SEQ_2_SEQ_LM": "AutoModelForSeq2SeqLM",
    "TOKEN_CLS": "AutoModelForTokenClassification",
    "QUESTION_ANS": "AutoModelForQuestionAnswering",
    "FEATURE_EXTRACTION": "AutoModel",
}


@dataclass
class _Layer:
    name: str  # module path in the base model (no "base_model.model." prefix)
    G: Tensor  # (r, d_in), float32 or float64
    B: Tensor  # (d_out, r), unscaled
    scale: float
    adapter_dtype: torch.dtype

    @property
    def r(self) -> int:
        return self.G.shape[0]


# ---------------------------------------------------------------------------------------------
# G from the original weight


def _as_dtype(dtype: Union[None, str, torch.dtype], what: str = "export_lora") -> Optional[torch.dtype]:
    if dtype is None:
        return None
    if isinstance(dtype, str):
        key = dtype.lower().removeprefix("torch.")
        if key not in _DTYPES:
            raise ValueError(f"{what}: dtype {dtype!r} is not one of {', '.join(sorted(_DTYPES))}")
        return _DTYPES[key]
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"{what}: dtype must be a floating torch.dtype or its name; got {dtype!r}")
    return dtype


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


# ---------------------------------------------------------------------------------------------
# Collecting layers: torch-neat models and PEFT PEANuT models


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
        W = _original_weight(layer.base_layer.weight, layer._merge_record, None, layer.merged, f"NEAT layer {name!r}")
        G = _g(W, layer.neat_A, list(layer.neat_hidden), layer._act)
        layers.append(_Layer(name, G, layer.neat_B.detach(), layer.scale, layer.neat_A.dtype))
    saved = list(getattr(model, "neat_modules_to_save", None) or [])
    inside = [n for n in saved for ln, _ in layers_found if ln.startswith(n + ".")]
    if inside:
        raise ValueError(f"export_lora: modules to save {sorted(set(inside))} contain NEAT layers; LoRA cannot express that")
    entries = list(config.modules_to_save or []) if config is not None else []
    extra = {_PREFIX + k: v for k, v in _state_under(model, saved).items()}
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

    from .peft import SUPPORTED_ACTIVATIONS

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
        act = SUPPORTED_ACTIVATIONS.get(m.act_fn[adapter])
        if act is None:
            raise ValueError(
                f"export_lora: PEANuT layer {name!r} uses act_fn {m.act_fn[adapter]!r}, which has no torch-neat kernel "
                f"(exportable: {', '.join(sorted(SUPPORTED_ACTIVATIONS))})"
            )
        W = _original_weight(base.weight, m.__dict__.get("_neat_merge_record"), m._base_weight_before_merge,
                             m.merged, f"PEANuT layer {name!r}")
        A = m.peanut_A[adapter].weight
        hidden = [e.weight for e in m.peanut_encoders[adapter]] + [d.weight for d in m.peanut_decoders[adapter]]
        G = _g(W, A, hidden, act)
        layers.append(_Layer(name, G, m.peanut_B[adapter].weight.detach(), float(m.scaling[adapter]), A.dtype))
    if not layers:
        raise ValueError(f"export_lora: the PEFT model has no PEANuT layer for adapter {adapter!r}")
    peanut_keys = tuple(_PREFIX + n + "." for n in internal)
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


# ---------------------------------------------------------------------------------------------
# LoRA config


def _lora_alpha(scale: float, r: int) -> Union[int, float]:
    """``alpha`` with ``alpha / r == scale`` exactly when a nearby float allows it (PEFT: scaling = alpha / r)."""
    alpha = scale * r
    candidate = alpha
    for _ in range(8):
        if candidate / r == scale:
            alpha = candidate
            break
        candidate = math.nextafter(candidate, math.inf if candidate / r < scale else -math.inf)
    return int(alpha) if float(alpha).is_integer() and abs(alpha) < 2**53 else alpha


def _peft_target_match(name: str, targets: list[str]) -> bool:
    # PEFT's rule for a list of target modules
    return any(name == t or name.endswith("." + t) for t in targets)


def _target_modules(names: list[str], base_names: list[str]) -> list[str]:
    """The layers' short names when they select exactly these layers in the base model, else their full paths."""
    short = sorted({n.rpartition(".")[2] for n in names})
    hits = {n for n in base_names if _peft_target_match(n, short)}
    return short if hits == set(names) else sorted(names)


def _modules_to_save(saved: list[str], entries: list[str], base_names: list[str]) -> Optional[list[str]]:
    """Entries PEFT matches (``key.endswith(entry)``) to exactly the saved modules: the given ones, else full paths.

    ``saved`` None: the entries come from a PEFT config and mean what they meant there.
    """
    if not saved:
        return list(entries) or None

    def match(cands):
        return {n for n in base_names if any(n.endswith(c) for c in cands)}

    for cands in (entries, sorted(saved)):
        if cands and match(cands) == set(saved):
            return list(cands)
    raise ValueError(
        f"export_lora: cannot name the modules to save {saved} so that PEFT's suffix matching selects exactly them "
        f"(it would select {sorted(match(sorted(saved)))})"
    )


def _config_dict(layers: list[_Layer], target_modules, modules_to_save, meta: dict) -> dict[str, Any]:
    per_layer = [(layer.r, _lora_alpha(layer.scale, layer.r)) for layer in layers]
    counts = collections.Counter(per_layer)
    r0, alpha0 = max(counts, key=lambda k: (counts[k], -per_layer.index(k)))
    rank_pattern = {layer.name: r for layer, (r, _) in zip(layers, per_layer) if r != r0}
    alpha_pattern = {layer.name: a for layer, (_, a) in zip(layers, per_layer) if a != alpha0}
    return {
        "peft_type": "LORA",
        "task_type": meta["task_type"],
        "base_model_name_or_path": meta["base_model_name_or_path"],
        "revision": meta["revision"],
        "inference_mode": True,
        "r": r0,
        "lora_alpha": alpha0,
        "rank_pattern": rank_pattern,
        "alpha_pattern": alpha_pattern,
        "target_modules": target_modules,
        "modules_to_save": modules_to_save,
        "lora_dropout": 0.0,
        "bias": "none",
        "use_rslora": False,  # scaling = lora_alpha / r
        "use_dora": False,
        "fan_in_fan_out": False,
        "init_lora_weights": True,
    }


def _full_peft_config(config: dict[str, Any]) -> dict[str, Any]:
    """Every field of PEFT's LoraConfig (as its save_pretrained writes), when PEFT is installed."""
    try:
        from peft import LoraConfig
    except ImportError:  # pragma: no cover - the minimal dict still loads in PEFT and serving engines
        return config
    kwargs = {k: v for k, v in config.items() if k != "peft_type"}
    full = LoraConfig(**kwargs).to_dict()
    full = {k: (sorted(v) if isinstance(v, set) else v) for k, v in full.items()}
    full["peft_type"] = "LORA"
    if full.get("task_type") is not None:
        full["task_type"] = getattr(full["task_type"], "value", full["task_type"])
    full["target_modules"] = config["target_modules"]  # keep our order (LoraConfig makes a set)
    return full


# ---------------------------------------------------------------------------------------------
# Public API


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
    dtype = _as_dtype(dtype)
    if _is_peft_model(model):
        layers, saved, entries, extra, base_names, meta = _from_peft(model, adapter_name)
    else:
        if adapter_name is not None:
            raise ValueError("export_lora: adapter_name applies to PEFT models only (a torch-neat model has one adapter)")
        layers, saved, entries, extra, base_names, meta = _from_neat(model)
    if base_model_name_or_path is not None:
        meta["base_model_name_or_path"] = os.fspath(base_model_name_or_path)
    target_modules = _target_modules([layer.name for layer in layers], base_names)
    modules_to_save = _modules_to_save(saved, entries, base_names)
    config = _config_dict(layers, target_modules, modules_to_save, meta)
    if meta["auto_mapping"] is not None:
        config["auto_mapping"] = meta["auto_mapping"]

    tensors: dict[str, Tensor] = {}
    for layer in layers:
        out = dtype or layer.adapter_dtype
        tensors[f"{_PREFIX}{layer.name}.lora_A.weight"] = layer.G.to("cpu", out, copy=True).contiguous()
        tensors[f"{_PREFIX}{layer.name}.lora_B.weight"] = layer.B.to("cpu", out, copy=True).contiguous()
    for key, value in extra.items():
        tensors[key] = value.detach().to("cpu", copy=True).contiguous()
    return config, tensors


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
    from safetensors.torch import save_file

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
    auto_mapping = config.pop("auto_mapping", None)
    full = _full_peft_config(config)
    if auto_mapping is not None:
        full["auto_mapping"] = auto_mapping
    os.makedirs(path, exist_ok=True)
    save_file(tensors, os.path.join(path, LORA_WEIGHTS_NAME), metadata={"format": "pt"})
    with open(os.path.join(path, LORA_CONFIG_NAME), "w", encoding="utf-8") as f:
        json.dump(full, f, indent=2, sort_keys=True)
        f.write("\n")
    return path


# ---------------------------------------------------------------------------------------------
# Saved adapters (the command line)


def _file_dtype(weights: str, keep) -> Optional[torch.dtype]:
    from safetensors import safe_open

    with safe_open(weights, framework="pt") as f:
        for key in f.keys():
            if keep(key):
                return f.get_tensor(key).dtype
    return None


def _resolve_class(spec: Optional[str], default_names: list[str]):
    """A model class (or factory) from ``module:attr``, a transformers name, or the first default that exists."""
    import transformers

    if spec:
        if ":" in spec:
            module, _, attr = spec.partition(":")
            try:
                obj = importlib.import_module(module)
                for part in attr.split("."):
                    obj = getattr(obj, part)
            except (ImportError, AttributeError) as e:
                raise ValueError(f"export_lora: --model-class {spec!r} not found: {e}") from None
            return obj
        if not hasattr(transformers, spec):
            raise ValueError(f"export_lora: --model-class {spec!r} is not a transformers class (or use module:attr)")
        return getattr(transformers, spec)
    for name in default_names:
        if name and hasattr(transformers, name):
            return getattr(transformers, name)
    return transformers.AutoModel


def _load_base(base: str, cls) -> nn.Module:
    try:
        if hasattr(cls, "from_pretrained"):
            return cls.from_pretrained(base)
        return cls(base)
    except (OSError, ValueError) as e:
        if not os.path.exists(base):
            raise FileNotFoundError(f"export_lora: the base model {base!r} does not exist ({type(e).__name__}: {e})") from None
        raise ValueError(f"export_lora: could not load the base model {base!r} with {getattr(cls, '__name__', cls)}: {e}") from None


def _architectures(base: str) -> list[str]:
    try:
        with open(os.path.join(base, "config.json"), encoding="utf-8") as f:
            return list(json.load(f).get("architectures") or [])
    except (OSError, ValueError):
        return []


def export_saved_adapter(
    src: Union[str, os.PathLike],
    dst: Union[str, os.PathLike],
    *,
    base_model: Optional[str] = None,
    model_class: Optional[str] = None,
    dtype: Union[None, str, torch.dtype] = None,
    adapter_name: Optional[str] = None,
    device: str = "cpu",
) -> str:
    """Loads the base model and the adapter saved at ``src`` (torch-neat ``save_adapter`` or PEFT PEANuT
    ``save_pretrained``), and writes its LoRA form to ``dst`` with :func:`export_lora`. Returns ``dst``.

    ``base_model``: a local directory or hub id (default: the PEFT adapter's ``base_model_name_or_path``;
    required for torch-neat adapters). ``model_class``: a transformers class name or ``module:attr`` (a
    class with ``from_pretrained`` or a callable taking the path); default from the PEFT adapter's
    task type, else the base checkpoint's ``architectures``. ``dtype``: default the saved adapter's.
    """
    src, dst = os.fspath(src), os.fspath(dst)
    if not os.path.isdir(src):
        raise FileNotFoundError(f"export_lora: adapter directory {src!r} does not exist")
    if os.path.abspath(src) == os.path.abspath(dst):
        raise ValueError("export_lora: DST must differ from SRC (the LoRA weights would overwrite the adapter's)")
    dtype = _as_dtype(dtype)
    weights = os.path.join(src, LORA_WEIGHTS_NAME)
    neat_cfg = os.path.join(src, NEAT_CONFIG_NAME)
    peft_cfg = os.path.join(src, LORA_CONFIG_NAME)
    if os.path.isfile(neat_cfg):
        kind = "neat"
        with open(neat_cfg, encoding="utf-8") as f:
            saved = json.load(f)
    elif os.path.isfile(peft_cfg):
        kind = "peft"
        with open(peft_cfg, encoding="utf-8") as f:
            saved = json.load(f)
        peft_type = saved.get("peft_type")
        if peft_type != "PEANUT":
            hint = " (it already is a LoRA adapter)" if peft_type == "LORA" else ""
            raise ValueError(f"export_lora: {src!r} holds a PEFT {peft_type} adapter, not PEANUT{hint}")
    else:
        raise FileNotFoundError(f"export_lora: {src!r} has neither {NEAT_CONFIG_NAME} (torch-neat) nor {LORA_CONFIG_NAME} (PEFT)")
    if not os.path.isfile(weights):
        raise FileNotFoundError(f"export_lora: no {LORA_WEIGHTS_NAME} in {src!r}")

    base_model = base_model or (saved.get("base_model_name_or_path") if kind == "peft" else None)
    if not base_model:
        raise ValueError(f"export_lora: {src!r} does not record its base model; pass --base-model")
    base_model = os.fspath(base_model)
    defaults = _architectures(base_model)
    if kind == "peft":
        mapping = saved.get("auto_mapping") or {}
        defaults = [_TASK_AUTO_CLASS.get(saved.get("task_type") or "", ""), mapping.get("base_model_class", ""), *defaults]
    cls = _resolve_class(model_class, defaults)
    model = _load_base(base_model, cls).to(device)
    cls_name = getattr(cls, "__name__", str(cls))
    hint = f"loaded as {cls_name}; pass --model-class if the adapter was trained on another class of this checkpoint"

    if kind == "neat":
        from .model import _model_type, load_adapter

        trained_on, found = saved.get("base_model_type"), _model_type(model)
        if trained_on and found and trained_on != found:
            raise ValueError(
                f"export_lora: the adapter {src!r} was trained on a {trained_on!r} model; the base model "
                f"{base_model!r} is {found!r}"
            )
        adapter_dtype = _file_dtype(weights, lambda k: ".neat_A" in k)
        try:
            load_adapter(model, src, adapter_dtype=adapter_dtype)
        except (ValueError, TypeError) as e:
            raise ValueError(f"export_lora: the adapter {src!r} does not fit the base model {base_model!r} ({hint}): {e}") from None
        name = None
    else:
        from peft import PeftModel
        from peft.utils import get_peft_model_state_dict, load_peft_weights

        name = adapter_name or "default"
        adapter_dtype = _file_dtype(weights, lambda k: ".peanut_A" in k)
        try:
            model = PeftModel.from_pretrained(model, src, adapter_name=name)
        except (ValueError, RuntimeError, KeyError, TypeError) as e:
            raise ValueError(f"export_lora: the adapter {src!r} does not fit the base model {base_model!r} ({hint}): {e}") from None
        expected = set(get_peft_model_state_dict(model, adapter_name=name))
        in_file = set(load_peft_weights(src, device="cpu"))
        if expected != in_file:
            missing, unexpected = sorted(expected - in_file), sorted(in_file - expected)
            raise ValueError(
                f"export_lora: the adapter {src!r} does not fit the base model {base_model!r} ({hint}): missing "
                f"{missing[:5]} ({len(missing)}), unexpected {unexpected[:5]} ({len(unexpected)})"
            )
    return export_lora(model, dst, dtype=dtype or adapter_dtype, adapter_name=name, base_model_name_or_path=base_model)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m torch_neat.export_lora",
        description="Export a NEAT adapter (torch-neat save_adapter or PEFT PEANuT save_pretrained) as an exact PEFT "
                    "LoRA adapter: lora_A = G, lora_B = B, lora_alpha = scale * r.",
    )
    parser.add_argument("src", help="adapter directory")
    parser.add_argument("dst", help="output directory for the LoRA adapter")
    parser.add_argument("--base-model", help="base model directory or hub id (default: the PEFT adapter's base_model_name_or_path)")
    parser.add_argument("--model-class", help="transformers class name or module:attr (default: from the task type / "
                                               "the checkpoint's architectures)")
    parser.add_argument("--dtype", choices=["float32", "float16", "bfloat16", "float64"], help="dtype of lora_A / lora_B (default: the adapter's)")
    parser.add_argument("--adapter-name", help="PEFT adapter name to load the PEANuT adapter as (default: default)")
    parser.add_argument("--device", default="cpu", help="where G is computed")
    args = parser.parse_args(argv)
    try:
        out = export_saved_adapter(args.src, args.dst, base_model=args.base_model, model_class=args.model_class,
                                   dtype=args.dtype, adapter_name=args.adapter_name, device=args.device)
    except (FileNotFoundError, ValueError, TypeError) as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 2
    with open(os.path.join(out, LORA_CONFIG_NAME), encoding="utf-8") as f:
        cfg = json.load(f)
    patterns = f", rank_pattern {len(cfg['rank_pattern'])} / alpha_pattern {len(cfg['alpha_pattern'])} entries" \
        if cfg["rank_pattern"] or cfg["alpha_pattern"] else ""
    print(f"LoRA adapter written to {out}: r={cfg['r']}, lora_alpha={cfg['lora_alpha']}, target_modules="
          f"{cfg['target_modules']}, modules_to_save={cfg['modules_to_save']}{patterns}; load it with "
          f"peft.PeftModel.from_pretrained(base, {out!r})")
    return 0


# ``torch_neat.export_lora`` is this module; calling it calls export_lora() (module and function share a name).
class _CallableModule(types.ModuleType):
    def __call__(self, *args, **kwargs):
        return export_lora(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule

if __name__ == "__main__":
    sys.exit(main())
