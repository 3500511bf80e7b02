"""Loads the compiled extension(s) so that ``torch.ops.neat.*`` exist.

The CPU library ``_C`` always loads. The CUDA library ``_C_cuda`` links the shared cudart of the
toolkit it was built with, so it is loaded only when torch is a CUDA build of the same CUDA major
version (the build writes its versions to ``_build_info.py``). On a mismatch, or when loading it
fails, torch_neat keeps the CPU library and warns, naming both versions: CPU tensors work, CUDA
tensors raise "no kernel for CUDA" until the package is rebuilt against a matching toolkit.
"""

from __future__ import annotations

import glob
import os
import warnings
from typing import NamedTuple, Optional

import torch

_HERE = os.path.dirname(os.path.abspath(__file__))

_REBUILD = (
    "rebuild with `pip install --no-build-isolation .` using an nvcc of torch's CUDA major version "
    "(CMAKE_CUDA_COMPILER or CUDACXX)"
)


def _find(stem: str) -> str | None:
    hits = sorted(glob.glob(os.path.join(_HERE, stem + "*.so")) + glob.glob(os.path.join(_HERE, stem + "*.pyd")))
    hits = [h for h in hits if os.path.basename(h).split(".")[0] == stem]
    return hits[0] if hits else None


def _major(version: Optional[str]) -> Optional[int]:
    """``"13.0"`` -> 13; None or an unparsable string -> None."""
    if not version:
        return None
    head = str(version).strip().split(".")[0]
    return int(head) if head.isdigit() else None


class CudaDecision(NamedTuple):
    load: bool  # try to load _C_cuda
    warning: Optional[str]  # what to warn about (None: nothing)


def decide_cuda(
    torch_cuda: Optional[str],
    has_cuda_library: bool,
    built_cuda: Optional[str],
    build_nvcc: Optional[str] = None,
    build_torch_cuda: Optional[str] = None,
) -> CudaDecision:
    """Whether to load the CUDA library, and what to warn about. Pure: tested with made-up versions.

    Args:
        torch_cuda: ``torch.version.cuda`` now (None for a CPU build of torch).
        has_cuda_library: ``_C_cuda`` is next to the package.
        built_cuda: the CUDA version ``_C_cuda`` was built with (None: not recorded).
        build_nvcc, build_torch_cuda: the nvcc the build found and the torch CUDA version it built
            against; they tell a build that skipped CUDA for a mismatch from one without nvcc.
    """
    if _major(torch_cuda) is None:
        return CudaDecision(False, None)  # CPU torch: the CPU library, nothing to say
    if not has_cuda_library:
        nvcc, at_build = _major(build_nvcc), _major(build_torch_cuda)
        if nvcc is not None and at_build is not None and nvcc != at_build:
            return CudaDecision(False, (
                f"torch_neat was built without its CUDA library because nvcc was CUDA {build_nvcc} and "
                f"torch was built with CUDA {build_torch_cuda}; torch now has CUDA {torch_cuda}. Only "
                f"CPU tensors are supported: {_REBUILD}."
            ))
        return CudaDecision(False, None)  # built where no nvcc was: a CPU-only build by choice
    built = _major(built_cuda)
    if built is None or built == _major(torch_cuda):
        return CudaDecision(True, None)  # unrecorded: try, and warn if the load fails
    return CudaDecision(False, (
        f"torch_neat's CUDA library was built with CUDA {built_cuda} but torch uses CUDA {torch_cuda}; "
        f"the CUDA major versions differ, so it is not loaded and only CPU tensors are supported: {_REBUILD}."
    ))


def load_failed_message(torch_cuda: Optional[str], built_cuda: Optional[str], error: BaseException) -> str:
    built = f"CUDA {built_cuda}" if built_cuda else "an unrecorded CUDA version"
    return (
        f"torch_neat's CUDA library failed to load ({type(error).__name__}: {error}); it was built with "
        f"{built} and torch uses CUDA {torch_cuda}. Only CPU tensors are supported: if the versions "
        f"differ, {_REBUILD}."
    )


def _build_info():
    try:
        from . import _build_info as info
    except ImportError:  # a tree built before the file existed: nothing recorded
        return None, None, None
    return info.CUDA_VERSION, info.NVCC_VERSION, info.TORCH_CUDA_VERSION


def load() -> bool:
    """Loads the CPU extension, and the CUDA one when torch is a CUDA build it matches. Returns has_cuda."""
    cpu = _find("_C")
    if cpu is None:
        raise ImportError(
            "torch_neat: the compiled extension _C was not found next to the package; "
            "install with `pip install --no-build-isolation .` from the repository root"
        )
    torch.ops.load_library(cpu)
    cuda = _find("_C_cuda")
    built_cuda, build_nvcc, build_torch_cuda = _build_info()
    decision = decide_cuda(torch.version.cuda, cuda is not None, built_cuda, build_nvcc, build_torch_cuda)
    if decision.warning:
        warnings.warn(decision.warning, RuntimeWarning, stacklevel=2)
    if not decision.load:
        return False
    try:
        torch.ops.load_library(cuda)
    except (OSError, RuntimeError) as e:
        warnings.warn(load_failed_message(torch.version.cuda, built_cuda, e), RuntimeWarning, stacklevel=2)
        return False
    return True
