import contextlib
import importlib.util
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


@contextlib.contextmanager
def load_example(script, name):
    """An examples/ script imported as module `name` while the block runs (registered in sys.modules
    because dataclasses look their module up there)."""
    spec = importlib.util.spec_from_file_location(name, script)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(name, None)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(1234)
    yield


@contextlib.contextmanager
def cpu_gemm(mode):
    """NEAT_CPU_GEMM=mode for the calls inside (read per call): "own" is the C library's GEMM only,
    whose results are bit-identical across thread counts; "host" hands the large products to
    torch's BLAS, which promises no such thing."""
    old = os.environ.get("NEAT_CPU_GEMM")
    os.environ["NEAT_CPU_GEMM"] = mode
    try:
        yield
    finally:
        if old is None:
            del os.environ["NEAT_CPU_GEMM"]
        else:
            os.environ["NEAT_CPU_GEMM"] = old


def make_case(n=5, d_in=37, d_out=53, r=3, num_hidden=0, bias=True, dtype=torch.float64, requires_grad=False, lead=None):
    """Fresh random inputs for one op call (never zeros: B is random too)."""
    shape = (n, d_in) if lead is None else (*lead, d_in)
    x = torch.randn(*shape, dtype=dtype)
    w = torch.randn(d_out, d_in, dtype=dtype) / d_in**0.5
    b = torch.randn(d_out, dtype=dtype) if bias else None
    A = torch.randn(r, d_out, dtype=dtype) / d_out**0.5
    B = torch.randn(d_out, r, dtype=dtype) / r**0.5
    H = [torch.randn(r, r, dtype=dtype) / r**0.5 for _ in range(num_hidden)]
    if requires_grad:
        for t in [x, w, b, A, B, *H]:
            if t is not None:
                t.requires_grad_(True)
    return x, w, b, A, B, H
