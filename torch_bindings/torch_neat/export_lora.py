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

import sys
import types

from .cli import export_saved_adapter, main
from .export import LORA_CONFIG_NAME, LORA_WEIGHTS_NAME
from .lora import export_lora, lora_adapter

__all__ = ["export_lora", "lora_adapter", "export_saved_adapter", "main", "LORA_CONFIG_NAME", "LORA_WEIGHTS_NAME"]


# ``torch_neat.export_lora`` is this module; calling it calls export_lora() (module and function share a name).
class _CallableModule(types.ModuleType):
    def __call__(self, *args, **kwargs):
        return export_lora(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule

if __name__ == "__main__":
    sys.exit(main())
