"""torch-neat: NEAT (nonlinear parameter-efficient adaptation) as fused PyTorch custom ops.

Importing this package loads the compiled C extension and registers ``torch.ops.neat.linear``,
``torch.ops.neat.adapter`` (with autograd and fake kernels) and the internal backward ops.
"""

from __future__ import annotations

from . import _load

HAS_CUDA: bool = _load.load()

from ._activations import KERNEL_ACTIVATIONS, canonical_activation  # noqa: E402
from .ops import adapter, compute_g, linear  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "HAS_CUDA",
    "KERNEL_ACTIVATIONS",
    "adapter",
    "canonical_activation",
    "compute_g",
    "linear",
]
