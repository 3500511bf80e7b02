"""``python -m torch_neat.export_lora SRC DST --base-model BASE``: a saved NEAT adapter as a PEFT LoRA adapter.

Loads the base model and the adapter (torch-neat ``save_adapter`` or PEFT PEANuT ``save_pretrained``)
and writes its LoRA form with :func:`torch_neat.lora.export_lora` (also the ``torch-neat-export-lora``
script).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from typing import Optional, Union

import torch
from torch import nn

from .config import CONFIG_NAME as NEAT_CONFIG_NAME
from .export import LORA_CONFIG_NAME, LORA_WEIGHTS_NAME, as_dtype
from .lora import export_lora
from .model import load_adapter, model_type

__all__ = ["export_saved_adapter", "main"]

# PEFT task_type -> the transformers Auto class its PeftModel subclass wraps (for the CLI)
_TASK_AUTO_CLASS = {
    "SEQ_CLS": "AutoModelForSequenceClassification",
    "CAUSAL_LM": "AutoModelForCausalLM",
    "SEQ_2_SEQ_LM": "AutoModelForSeq2SeqLM",
    "TOKEN_CLS": "AutoModelForTokenClassification",
    "QUESTION_ANS": "AutoModelForQuestionAnswering",
    "FEATURE_EXTRACTION": "AutoModel",
}



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
    dtype = as_dtype(dtype)
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
        trained_on, found = saved.get("base_model_type"), model_type(model)
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
