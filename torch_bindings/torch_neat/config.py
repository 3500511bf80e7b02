"""``NeatConfig``: what to adapt and how (docs/design.md §3.2).

Validation happens in ``__post_init__``, so a bad config fails when it is built, before any model is
touched.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any, Optional, Union

from ._activations import canonical_activation

__all__ = ["NeatConfig", "CONFIG_NAME", "WEIGHTS_NAME"]

CONFIG_NAME = "neat_config.json"
# the adapter's tensors; the same name as PEFT's, for torch-neat adapters and exported LoRA adapters alike
WEIGHTS_NAME = "adapter_model.safetensors"
_FORMAT = "torch-neat-adapter/1"


def _check_names(value, arg: str, allow_regex: bool):
    """None, a non-empty list of non-empty str, or (when allowed) a regex str. Returns a normalised copy."""
    if value is None:
        return None
    if isinstance(value, str):
        if not allow_regex:
            raise TypeError(f"NeatConfig: {arg} must be a list of module names; got the str {value!r}")
        if not value:
            raise ValueError(f"NeatConfig: {arg} must not be an empty str")
        import re

        try:
            re.compile(value)
        except re.error as e:
            raise ValueError(f"NeatConfig: {arg} {value!r} is not a valid regular expression: {e}") from None
        return value
    if isinstance(value, (list, tuple, set, frozenset)):
        names = sorted(value) if isinstance(value, (set, frozenset)) else list(value)
        bad = [n for n in names if not isinstance(n, str) or not n]
        if bad:
            raise TypeError(f"NeatConfig: {arg} must hold non-empty str module names; got {bad!r}")
        if not names:
            raise ValueError(f"NeatConfig: {arg} must not be empty (use None for the default)")
        return names
    kind = "a list of module names or a regex str" if allow_regex else "a list of module names"
    raise TypeError(f"NeatConfig: {arg} must be {kind}; got {type(value).__name__}")


def validate_core(where: str, r, depth, activation, scale) -> None:
    """Checks the arguments shared by NeatConfig and NeatLinear; errors name ``where`` and the argument."""
    if isinstance(r, bool) or not isinstance(r, int):
        raise TypeError(f"{where}: r must be an int; got {type(r).__name__} {r!r}")
    if r <= 0:
        raise ValueError(f"{where}: r must be a positive int; got {r}")
    if isinstance(depth, bool) or not isinstance(depth, int):
        raise TypeError(f"{where}: depth must be an int; got {type(depth).__name__} {depth!r}")
    if depth < 2 or depth % 2:
        raise ValueError(
            f"{where}: depth must be even and >= 2 (A, hidden layers, B; 2 = vanilla NEAT; "
            f"PEFT's PeanutConfig(depth=d) is depth=2*d+2 here); got {depth}"
        )
    try:
        canonical_activation(activation)
    except (TypeError, ValueError) as e:
        raise type(e)(f"{where}: activation: {e}") from None
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise ValueError(f"{where}: scale must be a finite number; got {scale!r}")


@dataclass
class NeatConfig:
    """Configuration of NEAT adapters for :func:`torch_neat.get_neat_model`.

    Module-name matching follows PEFT: a str is a regular expression that must match the whole
    qualified module name (``re.fullmatch``); a list matches a module whose name equals an entry or
    ends with ``"." + entry``.

    ``depth`` counts layers as the paper does: ``depth = 2 + number of hidden (r, r) layers``.
    PEFT's ``PeanutConfig.depth`` (0.21) counts encoder layers instead; ``PeanutConfig(depth=d)`` is
    ``NeatConfig(depth=2 * d + 2)``.
    """

    r: int = field(default=8, metadata={"help": "Rank: rows of A and columns of B, as LoRA's r. Positive int."})
    depth: int = field(
        default=2,
        metadata={
            "help": (
                "Layers in the adapter network, paper's count: A, the hidden (r, r) layers and B. Even, >= 2. "
                "2 is vanilla NEAT (no hidden layers); 4 adds one encoder and one decoder; hidden = depth - 2."
            )
        },
    )
    activation: str = field(
        default="relu",
        metadata={
            "help": (
                "Activation inside the adapter network: relu, sin, gelu, gelu_tanh, silu, tanh, identity, or the "
                "transformers ACT2FN aliases swish, linear, gelu_new, gelu_pytorch_tanh."
            )
        },
    )
    scale: float = field(default=1.0, metadata={"help": "Scalar s multiplying the adapter term s * x G^T B^T."})
    target_modules: Optional[Union[list[str], str]] = field(
        default=None,
        metadata={
            "help": (
                "Modules to adapt (nn.Linear only): a list of names (exact or name suffix) or a regex str matched "
                "against the full qualified name. None: the model family's default (see DEFAULT_TARGET_MODULES)."
            )
        },
    )
    exclude_modules: Optional[Union[list[str], str]] = field(
        default=None,
        metadata={"help": "Modules never to adapt; same matching rules as target_modules."},
    )
    modules_to_save: Optional[list[str]] = field(
        default=None,
        metadata={
            "help": (
                "Other modules (names or name suffixes, e.g. a new classifier head) to train and save with the "
                "adapter. They are trained in place: disabling the adapters does not restore them."
            )
        },
    )

    def __post_init__(self) -> None:
        validate_core("NeatConfig", self.r, self.depth, self.activation, self.scale)
        self.scale = float(self.scale)
        self.target_modules = _check_names(self.target_modules, "target_modules", allow_regex=True)
        self.exclude_modules = _check_names(self.exclude_modules, "exclude_modules", allow_regex=True)
        self.modules_to_save = _check_names(self.modules_to_save, "modules_to_save", allow_regex=False)

    @property
    def num_hidden(self) -> int:
        """Number of hidden (r, r) layers: ``depth - 2`` (half encoders, half decoders)."""
        return self.depth - 2

    @property
    def kernel_activation(self) -> str:
        """The activation's name as the kernels know it (aliases resolved)."""
        return canonical_activation(self.activation)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "NeatConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names - {"format", "torch_neat_version", "base_model_type", "modules_to_save_resolved"})
        if unknown:
            raise ValueError(f"NeatConfig: unknown keys {unknown}; expected a subset of {sorted(names)}")
        return cls(**{k: v for k, v in d.items() if k in names})

    def save(self, directory: Union[str, os.PathLike], **extra: Any) -> str:
        """Writes ``neat_config.json`` into ``directory``; returns the file's path."""
        from . import __version__

        path = os.path.join(os.fspath(directory), CONFIG_NAME)
        data = {"format": _FORMAT, "torch_neat_version": __version__, **extra, **self.to_dict()}
        with open(path, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, sort_keys=True)
            f.write("\n")
        return path

    @classmethod
    def load(cls, directory: Union[str, os.PathLike]) -> "NeatConfig":
        path = os.path.join(os.fspath(directory), CONFIG_NAME)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"NeatConfig.load: no {CONFIG_NAME} in {os.fspath(directory)!r}")
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        if data.get("format") != _FORMAT:
            raise ValueError(f"NeatConfig.load: {path} has format {data.get('format')!r}; expected {_FORMAT!r}")
        return cls.from_dict(data)
