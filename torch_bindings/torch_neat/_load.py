"""Loads the compiled extension(s) so that ``torch.ops.neat.*`` exist."""

from __future__ import annotations

import glob
import os

import torch

_HERE = os.path.dirname(os.path.abspath(__file__))


def _find(stem: str) -> str | None:
    hits = sorted(glob.glob(os.path.join(_HERE, stem + "*.so")) + glob.glob(os.path.join(_HERE, stem + "*.pyd")))
    hits = [h for h in hits if os.path.basename(h).split(".")[0] == stem]
    return hits[0] if hits else None


def load() -> bool:
    """Loads the CPU extension, and the CUDA one when torch is a CUDA build. Returns has_cuda."""
    cpu = _find("_C")
    if cpu is None:
        raise ImportError(
            "torch_neat: the compiled extension _C was not found next to the package; "
            "install with `pip install --no-build-isolation .` from the repository root"
        )
    torch.ops.load_library(cpu)
    if torch.version.cuda:
        cuda = _find("_C_cuda")
        if cuda is not None:
            torch.ops.load_library(cuda)
            return True
    return False
