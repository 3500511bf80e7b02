"""Patching models with NEAT without PEFT: find targets, swap in ``NeatLinear``, freeze the rest, save and
load adapters (safetensors + JSON), merge, unload, enable and disable (docs/design.md §3.2).

The one piece of state kept on the user's model is ``model.neat_config`` (as PEFT keeps ``peft_config``);
everything else (the layers, the modules to save) is found from the model and that config.
"""

from __future__ import annotations

import contextlib
import os
import re
import warnings
from typing import Iterator, Optional, Union

import torch
from torch import nn

from .config import WEIGHTS_NAME, NeatConfig
from .layer import NeatLinear
from .quantized import quantized_error, unsupported_reason

__all__ = [
    "DEFAULT_TARGET_MODULES",
    "WEIGHTS_NAME",
    "get_neat_model",
    "model_type",
    "neat_layers",
    "saved_modules",
    "count_trainable_parameters",
    "print_trainable_parameters",
    "adapter_state_dict",
    "save_adapter",
    "load_adapter",
    "merge_adapters",
    "unmerge_adapters",
    "merge_and_unload",
    "unload",
    "enable_adapters",
    "disable_adapters",
    "adapters_disabled",
]

# Per-family default targets, keyed by transformers' ``config.model_type`` (the attention query and value
# projections, as PEFT's LoRA / PEANuT defaults). Only families whose projections are ``nn.Linear``.
DEFAULT_TARGET_MODULES: dict[str, list[str]] = {
    **{t: ["query", "value"] for t in (
        "bert", "roberta", "xlm-roberta", "camembert", "electra", "ernie", "mpnet", "layoutlm", "beit", "swin",
    )},
    # transformers 5 renamed the ViT family's query/value to q_proj/v_proj; either spelling is matched
    **{t: ["query", "value", "q_proj", "v_proj"] for t in ("vit", "deit", "vit_mae", "vit_msn", "dinov2", "yolos")},
    **{t: ["q_proj", "v_proj"] for t in (
        "llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe", "gemma", "gemma2",
        "gemma3_text", "phi", "stablelm", "starcoder2", "olmo", "olmo2", "granite", "opt", "bart",
        "mbart", "marian", "pegasus", "whisper", "m2m_100", "blenderbot", "siglip", "clip",
    )},
    **{t: ["q", "v"] for t in ("t5", "mt5", "umt5", "longt5")},
    **{t: ["query_key_value"] for t in ("gpt_neox", "falcon", "bloom")},
    "deberta-v2": ["query_proj", "value_proj"],
    "deberta": ["in_proj"],
    "distilbert": ["q_lin", "v_lin"],
    "gptj": ["q_proj", "v_proj"],
}


def model_type(model: nn.Module) -> Optional[str]:
    """transformers' ``config.model_type`` of ``model`` or of its first submodule that has one, else None."""
    for module in (model, *model.modules()):
        found = getattr(getattr(module, "config", None), "model_type", None)
        if isinstance(found, str):
            return found
    return None


def _name_matches(name: str, spec: Union[str, list[str], None]) -> bool:
    if spec is None:
        return False
    if isinstance(spec, str):
        return re.fullmatch(spec, name) is not None
    return any(name == s or name.endswith("." + s) for s in spec)


def neat_layers(model: nn.Module) -> Iterator[tuple[str, NeatLinear]]:
    """``(qualified name, layer)`` for every ``NeatLinear`` in ``model``."""
    for name, module in model.named_modules():
        if isinstance(module, NeatLinear):
            yield name, module


def _resolve_targets(model: nn.Module, config: NeatConfig) -> tuple[list[str], list[str]]:
    """Checks the config against the model; returns (target names, modules-to-save names). Touches nothing."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"get_neat_model: model must be an nn.Module; got {type(model).__name__}")
    if not isinstance(config, NeatConfig):
        raise TypeError(f"get_neat_model: config must be a NeatConfig; got {type(config).__name__}")
    if any(True for _ in neat_layers(model)):
        raise ValueError("get_neat_model: the model already holds NEAT layers; unload() it before patching again")
    targets = config.target_modules
    if targets is None:
        family = model_type(model)
        if family not in DEFAULT_TARGET_MODULES:
            raise ValueError(
                f"NeatConfig.target_modules is None and there is no default for model type {family!r}; "
                f"pass target_modules (families with defaults: {', '.join(sorted(DEFAULT_TARGET_MODULES))})"
            )
        targets = DEFAULT_TARGET_MODULES[family]

    modules = dict(model.named_modules())
    parents = {name: module for name, module in modules.items()}
    chosen, wrong_type, quantized = [], [], []
    for name, module in modules.items():
        if not name or not _name_matches(name, targets) or _name_matches(name, config.exclude_modules):
            continue
        parent = parents[name.rpartition(".")[0]]
        if not isinstance(module, nn.Linear) or isinstance(parent, nn.MultiheadAttention):
            # MultiheadAttention reads out_proj.weight directly, so wrapping out_proj would change nothing
            wrong_type.append(f"{name} ({type(module).__name__})")
        elif (reason := unsupported_reason(module)) is not None:
            quantized.append(f"{name!r} {reason}")
        else:
            chosen.append(name)
    if quantized:
        shown = "; ".join(quantized[:3]) + (f"; and {len(quantized) - 3} more" if len(quantized) > 3 else "")
        raise quantized_error(f"NeatConfig.target_modules {targets!r} matches quantized modules NEAT cannot read: {shown}")
    if wrong_type:
        shown = ", ".join(wrong_type[:5]) + (f" and {len(wrong_type) - 5} more" if len(wrong_type) > 5 else "")
        raise TypeError(
            f"NeatConfig.target_modules {targets!r} matches modules NEAT cannot adapt (only nn.Linear): {shown}"
        )
    if not chosen:
        linear_names = sorted({n.rpartition(".")[2] for n, m in modules.items() if isinstance(m, nn.Linear)})
        raise ValueError(
            f"NeatConfig.target_modules {targets!r} (exclude_modules {config.exclude_modules!r}) matched no "
            f"module; this model's nn.Linear names include: {', '.join(linear_names[:20]) or 'none'}"
        )

    return chosen, _modules_to_save(list(modules), config, chosen)


def _modules_to_save(names: list[str], config: NeatConfig, targets: list[str]) -> list[str]:
    saved = []
    for entry in config.modules_to_save or []:
        hits = [n for n in names if n and _name_matches(n, [entry])]
        if not hits:
            raise ValueError(f"NeatConfig.modules_to_save entry {entry!r} matched no module")
        clash = [n for n in hits if n in targets]
        if clash:
            raise ValueError(f"NeatConfig.modules_to_save entry {entry!r} is also a NEAT target: {clash}")
        saved.extend(h for h in hits if h not in saved)
    return saved


def saved_modules(model: nn.Module) -> list[str]:
    """Names of the modules trained and saved with the adapter (``modules_to_save`` resolved); [] if none.

    Resolved against the model as it was before patching: modules inside NEAT layers never count.
    """
    config = getattr(model, "neat_config", None)
    if config is None or not config.modules_to_save:
        return []
    layers = [name for name, _ in neat_layers(model)]
    inner = tuple(name + "." for name in layers)
    names = [n for n, _ in model.named_modules() if not n.startswith(inner)]
    return _modules_to_save(names, config, layers)


def get_neat_model(
    model: nn.Module,
    config: NeatConfig,
    *,
    adapter_dtype: Optional[torch.dtype] = None,
    verbose: bool = False,
) -> nn.Module:
    """Patches ``model`` in place: every target ``nn.Linear`` becomes a :class:`NeatLinear`; everything else
    is frozen except ``config.modules_to_save``. Returns the same model.

    The config is checked against the model (targets exist and are ``nn.Linear``, modules to save
    exist) before anything is modified. ``verbose`` prints the trainable-parameter count.
    """
    targets, saved = _resolve_targets(model, config)
    for p in model.parameters():
        p.requires_grad_(False)
    for name in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        base = getattr(parent, child)
        layer = NeatLinear(
            base, r=config.r, depth=config.depth, activation=config.activation, scale=config.scale,
            adapter_dtype=adapter_dtype,
        )
        setattr(parent, child, layer)
    for name in saved:
        model.get_submodule(name).requires_grad_(True)
    model.neat_config = config
    if verbose:
        print_trainable_parameters(model)
    return model


def count_trainable_parameters(model: nn.Module) -> tuple[int, int]:
    """``(trainable, total)`` parameter counts (shared parameters counted once)."""
    trainable = total = 0
    for p in model.parameters():
        total += p.numel()
        if p.requires_grad:
            trainable += p.numel()
    return trainable, total


def print_trainable_parameters(model: nn.Module) -> tuple[int, int]:
    trainable, total = count_trainable_parameters(model)
    pct = 100.0 * trainable / total if total else 0.0
    print(f"trainable params: {trainable:,d} || all params: {total:,d} || trainable%: {pct:.4f}")
    return trainable, total


def _require_patched(model: nn.Module, what: str) -> NeatConfig:
    config = getattr(model, "neat_config", None)
    if config is None:
        raise ValueError(f"{what}: the model has no NEAT adapter; call get_neat_model or load_adapter first")
    return config


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter's tensors (NEAT parameters and modules to save) by their names in ``model``."""
    _require_patched(model, "adapter_state_dict")
    saved = tuple(saved_modules(model))
    out = {}
    for layer_name, layer in neat_layers(model):
        for name, p in layer.named_parameters():
            if not name.startswith("base_layer."):
                out[f"{layer_name}.{name}"] = p
    for name, p in model.named_parameters(remove_duplicate=False):
        owner = name.rpartition(".")[0]
        if any(owner == s or owner.startswith(s + ".") for s in saved):
            out[name] = p
    for name, b in model.named_buffers(remove_duplicate=False):
        owner = name.rpartition(".")[0]
        if any(owner == s or owner.startswith(s + ".") for s in saved):
            out[name] = b
    return out


def save_adapter(model: nn.Module, path: Union[str, os.PathLike]) -> str:
    """Writes ``adapter_model.safetensors`` and ``neat_config.json`` into directory ``path``. Returns it."""
    from safetensors.torch import save_file

    config = _require_patched(model, "save_adapter")
    if any(layer.merged for _, layer in neat_layers(model)):
        raise ValueError("save_adapter: some NEAT layers are merged; unmerge_adapters(model) first")
    path = os.fspath(path)
    os.makedirs(path, exist_ok=True)
    tensors = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in adapter_state_dict(model).items()}
    save_file(tensors, os.path.join(path, WEIGHTS_NAME), metadata={"format": "pt"})
    config.save(path, base_model_type=model_type(model), modules_to_save_resolved=saved_modules(model))
    return path


def load_adapter(model: nn.Module, path: Union[str, os.PathLike], *, adapter_dtype: Optional[torch.dtype] = None) -> nn.Module:
    """Loads an adapter saved by :func:`save_adapter` into ``model`` (patching it first if needed).

    Every tensor in the file must exist in the model with the same shape, and every adapter tensor of
    the model must be in the file.
    """
    from safetensors.torch import load_file

    path = os.fspath(path)
    weights = os.path.join(path, WEIGHTS_NAME)
    if not os.path.isfile(weights):
        raise FileNotFoundError(f"load_adapter: no {WEIGHTS_NAME} in {path!r}")
    config = NeatConfig.load(path)
    current = getattr(model, "neat_config", None)
    if current is None:
        get_neat_model(model, config, adapter_dtype=adapter_dtype)
    else:
        core = ("r", "depth", "activation", "scale")
        diff = [k for k in core if getattr(current, k) != getattr(config, k)]
        if diff:
            raise ValueError(f"load_adapter: the model's NEAT adapter differs from {path!r} in {diff}")
    if any(layer.merged for _, layer in neat_layers(model)):
        raise ValueError("load_adapter: some NEAT layers are merged; unmerge_adapters(model) first")
    state = load_file(weights)
    mine = adapter_state_dict(model)
    missing = sorted(set(mine) - set(state))
    unexpected = sorted(set(state) - set(mine))
    if missing or unexpected:
        raise ValueError(
            f"load_adapter: {path!r} does not fit this model: missing {missing[:5]} ({len(missing)}), "
            f"unexpected {unexpected[:5]} ({len(unexpected)})"
        )
    with torch.no_grad():
        for name, tensor in state.items():
            target = mine[name]
            if target.shape != tensor.shape:
                raise ValueError(f"load_adapter: {name} has shape {tuple(tensor.shape)} in the file, {tuple(target.shape)} in the model")
            target.copy_(tensor)
    return model


def merge_adapters(model: nn.Module, safe_merge: bool = False) -> nn.Module:
    """Merges every NEAT layer (exactly reversible with :func:`unmerge_adapters`)."""
    for _, layer in neat_layers(model):
        if not layer.merged:
            layer.merge(safe_merge=safe_merge)
    return model


def unmerge_adapters(model: nn.Module) -> nn.Module:
    for _, layer in neat_layers(model):
        if layer.merged:
            layer.unmerge()
    return model


def _replace_layers(model: nn.Module, merge: bool, safe_merge: bool) -> nn.Module:
    for name, layer in list(neat_layers(model)):
        parent_name, _, child = name.rpartition(".")
        if merge and layer.quantized:
            # the update cannot live in quantized storage: a float layer takes the layer's place, said aloud
            warnings.warn(
                f"merge_and_unload: {name!r} had a quantized base ({layer.quantization}); it is now a "
                "float32 nn.Linear holding W + s B G (W from the quantization's own dequantizer)",
                UserWarning, stacklevel=3,
            )
            setattr(model.get_submodule(parent_name), child, layer.merged_float_linear())
            continue
        if merge and not layer.merged:
            layer.merge(safe_merge=safe_merge, exact=False)
        elif not merge and layer.merged:
            layer.unmerge()
        layer.drop_merge_record()
        setattr(model.get_submodule(parent_name), child, layer.base_layer)
    if hasattr(model, "neat_config"):
        del model.neat_config
    return model


def merge_and_unload(model: nn.Module, safe_merge: bool = False) -> nn.Module:
    """Merges every adapter into its base weight and returns the plain model (no NEAT layers left).

    Adapters are merged whether enabled or not. Modules to save keep their trained values.
    """
    return _replace_layers(model, merge=True, safe_merge=safe_merge)


def unload(model: nn.Module) -> nn.Module:
    """Removes the NEAT layers without merging: returns the base model with its original weights."""
    return _replace_layers(model, merge=False, safe_merge=False)


def enable_adapters(model: nn.Module) -> nn.Module:
    for _, layer in neat_layers(model):
        layer.enable_adapter()
    return model


def disable_adapters(model: nn.Module) -> nn.Module:
    """The NEAT layers compute their base layer alone (modules to save keep their trained values)."""
    for _, layer in neat_layers(model):
        layer.disable_adapter()
    return model


@contextlib.contextmanager
def adapters_disabled(model: nn.Module):
    """``with adapters_disabled(model): ...`` runs the base model, then re-enables the adapters."""
    disable_adapters(model)
    try:
        yield model
    finally:
        enable_adapters(model)
