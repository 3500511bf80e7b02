"""Activation names: the kernels' own, plus the transformers ``ACT2FN`` names that map onto them."""

from __future__ import annotations

# "sin" is sin(z); "sin2pi" is sin(2 pi z), the periodic activation of the NEAT paper's theory (the same
# function class with A scaled by 2 pi, but a different starting point and gradient scale for training).
KERNEL_ACTIVATIONS = ("relu", "sin", "gelu", "gelu_tanh", "silu", "tanh", "identity", "sin2pi")

_ALIASES = {
    "swish": "silu",
    "linear": "identity",
    "none": "identity",
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
}


def canonical_activation(name: str) -> str:
    """Returns the kernel name for ``name`` or raises ValueError listing what is accepted."""
    if not isinstance(name, str):
        raise TypeError(f"activation must be a str; got {type(name).__name__}")
    key = name.lower()
    key = _ALIASES.get(key, key)
    if key not in KERNEL_ACTIVATIONS:
        accepted = ", ".join(sorted(set(KERNEL_ACTIVATIONS) | set(_ALIASES)))
        raise ValueError(f"unknown activation {name!r}; expected one of: {accepted}")
    return key
