"""torch-neat: NEAT (nonlinear parameter-efficient adaptation) as fused PyTorch custom ops.

Importing this package loads the compiled C extension and registers ``torch.ops.neat.linear``,
``torch.ops.neat.adapter``, ``torch.ops.neat.compute_g``, ``torch.ops.neat.lowrank_linear`` (with
autograd, fake and autocast kernels) and the internal backward ops.
"""

from __future__ import annotations

from . import _load

HAS_CUDA: bool = _load.load()

from ._activations import KERNEL_ACTIVATIONS, canonical_activation  # noqa: E402
from .ops import adapter, compute_g, linear, lowrank_linear  # noqa: E402
from .config import NeatConfig  # noqa: E402
from .layer import NeatLinear  # noqa: E402
from .model import (  # noqa: E402
    DEFAULT_TARGET_MODULES,
    adapter_state_dict,
    adapters_disabled,
    count_trainable_parameters,
    disable_adapters,
    enable_adapters,
    get_neat_model,
    load_adapter,
    merge_adapters,
    merge_and_unload,
    model_type,
    neat_layers,
    print_trainable_parameters,
    save_adapter,
    saved_modules,
    unload,
    unmerge_adapters,
)

__version__ = "0.1.0"

__all__ = [
    "HAS_CUDA",
    "KERNEL_ACTIVATIONS",
    "adapter",
    "canonical_activation",
    "compute_g",
    "linear",
    "lowrank_linear",
    # models (config.py, layer.py, merge.py, precision.py, model.py); torch_neat.peft is imported on first use (needs peft)
    "DEFAULT_TARGET_MODULES",
    "NeatConfig",
    "NeatLinear",
    "adapter_state_dict",
    "adapters_disabled",
    "count_trainable_parameters",
    "disable_adapters",
    "enable_adapters",
    "get_neat_model",
    "load_adapter",
    "merge_adapters",
    "merge_and_unload",
    "model_type",
    "neat_layers",
    "print_trainable_parameters",
    "save_adapter",
    "saved_modules",
    "unload",
    "unmerge_adapters",
    # serving: torch_neat.export_lora (export.py, lora.py, cli.py; imported on first use, like torch_neat.peft)
    "export_lora",
]


def __getattr__(name: str):
    # ``torch_neat.peft`` without importing PEFT (and transformers) for users who do not need it
    if name == "peft":
        import importlib

        return importlib.import_module(".peft", __name__)
    # ``torch_neat.export_lora(model, path)``: the module torch_neat.export_lora is callable (it calls its
    # export_lora function). Imported lazily so that ``python -m torch_neat.export_lora`` runs it only once.
    if name == "export_lora":
        import importlib

        return importlib.import_module(".export_lora", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
