"""NEAT adapters as PEFT LoRA adapters: the conversion itself, a pure function of the adapted layers.

With G fixed, a NEAT layer is a LoRA layer (``lora_A = G``, ``lora_B = B``, ``lora_alpha = s r``, no
rsLoRA; docs/design.md §3.2). This module turns a list of :class:`LoraEntry` (name, G, B, scale) into a
PEFT LoRA ``adapter_config.json`` and tensors, and writes them; finding the entries in a model is
:mod:`torch_neat.lora`, the command line :mod:`torch_neat.cli`.
"""

from __future__ import annotations

import collections
import json
import math
import os
from dataclasses import dataclass
from typing import Any, Optional, Union

import torch

from .config import WEIGHTS_NAME

__all__ = [
    "LORA_CONFIG_NAME", "LORA_WEIGHTS_NAME", "PREFIX", "LoraEntry", "as_dtype", "full_peft_config", "lora_alpha",
    "lora_from_entries", "write_lora",
]

Tensor = torch.Tensor

LORA_CONFIG_NAME = "adapter_config.json"
LORA_WEIGHTS_NAME = WEIGHTS_NAME
PREFIX = "base_model.model."  # PEFT's prefix of every saved key

_DTYPES = {
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float64": torch.float64, "fp64": torch.float64, "double": torch.float64,
}


@dataclass
class LoraEntry:
    """One adapted layer in LoRA form: ``lora_A = G``, ``lora_B = B``, scaling ``scale``."""


    name: str  # module path in the base model (no "base_model.model." prefix)
    G: Tensor  # (r, d_in), float32 or float64
    B: Tensor  # (d_out, r), unscaled
    scale: float
    adapter_dtype: torch.dtype

    @property
    def r(self) -> int:
        return self.G.shape[0]



def as_dtype(dtype: Union[None, str, torch.dtype], what: str = "export_lora") -> Optional[torch.dtype]:
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


def lora_alpha(scale: float, r: int) -> Union[int, float]:
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


def _config_dict(layers: list[LoraEntry], target_modules, modules_to_save, meta: dict) -> dict[str, Any]:
    per_layer = [(layer.r, lora_alpha(layer.scale, layer.r)) for layer in layers]
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


def full_peft_config(config: dict[str, Any]) -> dict[str, Any]:
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


def lora_from_entries(
    entries: list[LoraEntry],
    *,
    base_names: list[str],
    saved: Optional[list[str]],
    save_entries: list[str],
    extra: dict[str, Tensor],
    meta: dict[str, Any],
    dtype: Optional[torch.dtype] = None,
    base_model_name_or_path: Optional[str] = None,
) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """The LoRA adapter of ``entries``: ``(adapter_config dict, tensors by saved key)``, tensors on the CPU.

    ``base_names``: every module name of the base model (target and modules-to-save names are chosen so
    that PEFT's matching selects exactly these layers in it). ``saved``: the modules trained with the
    adapter (None: ``save_entries`` come from a PEFT config and are kept as they are); ``extra``: their
    tensors by saved key. ``meta``: base_model_name_or_path, revision, task_type, auto_mapping.
    ``dtype``: of lora_A and lora_B (default each entry's adapter dtype).
    """
    meta = dict(meta)
    layers = entries
    if base_model_name_or_path is not None:
        meta["base_model_name_or_path"] = os.fspath(base_model_name_or_path)
    target_modules = _target_modules([layer.name for layer in layers], base_names)
    modules_to_save = _modules_to_save(saved, save_entries, base_names)
    config = _config_dict(layers, target_modules, modules_to_save, meta)
    if meta["auto_mapping"] is not None:
        config["auto_mapping"] = meta["auto_mapping"]

    tensors: dict[str, Tensor] = {}
    for layer in layers:
        out = dtype or layer.adapter_dtype
        tensors[f"{PREFIX}{layer.name}.lora_A.weight"] = layer.G.to("cpu", out, copy=True).contiguous()
        tensors[f"{PREFIX}{layer.name}.lora_B.weight"] = layer.B.to("cpu", out, copy=True).contiguous()
    for key, value in extra.items():
        tensors[key] = value.detach().to("cpu", copy=True).contiguous()
    return config, tensors


def write_lora(path: str, config: dict[str, Any], tensors: dict[str, Tensor]) -> str:
    """Writes ``adapter_config.json`` (every LoraConfig field when PEFT is installed) and the tensors."""
    from safetensors.torch import save_file

    auto_mapping = config.pop("auto_mapping", None)
    full = full_peft_config(config)
    if auto_mapping is not None:
        full["auto_mapping"] = auto_mapping
    os.makedirs(path, exist_ok=True)
    save_file(tensors, os.path.join(path, LORA_WEIGHTS_NAME), metadata={"format": "pt"})
    with open(os.path.join(path, LORA_CONFIG_NAME), "w", encoding="utf-8") as f:
        json.dump(full, f, indent=2, sort_keys=True)
        f.write("\n")
    return path
