"""Loading the extensions: the CUDA library is loaded only when its CUDA major version is torch's
(torch_neat/_load.py). The decision is a pure function, tested here with made-up versions; load()
itself is run with the libraries and versions faked, so no GPU is needed."""

from __future__ import annotations

import warnings

import pytest
import torch

import torch_neat
from torch_neat import _load
from torch_neat._load import decide_cuda


def test_cpu_torch_loads_the_cpu_library_silently():
    for has_lib, built in [(False, None), (True, "13.0"), (True, "12.4"), (True, None)]:
        assert decide_cuda(None, has_lib, built, "13.0", None) == (False, None)
        assert decide_cuda("", has_lib, built) == (False, None)


@pytest.mark.parametrize("torch_cuda, built", [("13.0", "13.0"), ("13.2", "13.0"), ("12.8", "12.4"), ("13.0", None)])
def test_same_major_or_unrecorded_loads(torch_cuda, built):
    # a minor difference is fine (CUDA keeps minor compatibility); an unrecorded version is tried,
    # and a failing load then warns (test_load_failure_falls_back)
    assert decide_cuda(torch_cuda, True, built) == (True, None)


@pytest.mark.parametrize("torch_cuda, built", [("12.4", "13.0"), ("13.0", "12.8"), ("11.8", "12.1")])
def test_major_mismatch_keeps_cpu_and_names_both_versions(torch_cuda, built):
    load, warning = decide_cuda(torch_cuda, True, built)
    assert not load
    assert f"CUDA {built}" in warning and f"CUDA {torch_cuda}" in warning
    assert "CPU" in warning and "rebuild" in warning


def test_build_that_skipped_cuda_for_a_mismatch_warns():
    load, warning = decide_cuda("12.4", False, None, build_nvcc="13.0", build_torch_cuda="12.4")
    assert not load and "13.0" in warning and "12.4" in warning and "without its CUDA library" in warning
    # built where nvcc was absent, or with matching versions but no CUDA library: a CPU build by choice
    assert decide_cuda("12.4", False, None, build_nvcc=None, build_torch_cuda="12.4") == (False, None)
    assert decide_cuda("13.0", False, None, build_nvcc="13.0", build_torch_cuda="13.0") == (False, None)


def test_major_parsing():
    assert _load._major("13.0") == 13 and _load._major("12") == 12 and _load._major("12.4.1") == 12
    assert _load._major(None) is None and _load._major("") is None and _load._major("rocm") is None


class _FakeLoader:
    def __init__(self, fail_on_cuda=None):
        self.loaded = []
        self.fail_on_cuda = fail_on_cuda

    def __call__(self, path):
        if path.endswith("_C_cuda.so") and self.fail_on_cuda is not None:
            raise self.fail_on_cuda
        self.loaded.append(path)


def _fake(monkeypatch, torch_cuda, has_cuda_lib, info, fail_on_cuda=None):
    loader = _FakeLoader(fail_on_cuda)
    monkeypatch.setattr(torch.version, "cuda", torch_cuda)
    monkeypatch.setattr(torch.ops, "load_library", loader)
    monkeypatch.setattr(_load, "_find", lambda stem: f"/fake/{stem}.so" if (stem == "_C" or has_cuda_lib) else None)
    monkeypatch.setattr(_load, "_build_info", lambda: info)
    return loader


def test_load_matching_versions(monkeypatch):
    loader = _fake(monkeypatch, "13.0", True, ("13.0", "13.0", "13.0"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _load.load() is True
    assert loader.loaded == ["/fake/_C.so", "/fake/_C_cuda.so"]


def test_load_mismatch_falls_back_with_a_warning(monkeypatch):
    loader = _fake(monkeypatch, "12.4", True, ("13.0", "13.0", "13.0"))
    with pytest.warns(RuntimeWarning, match=r"CUDA 13\.0.*CUDA 12\.4"):
        assert _load.load() is False
    assert loader.loaded == ["/fake/_C.so"], "the mismatched CUDA library must not be loaded"


def test_load_failure_falls_back(monkeypatch):
    err = OSError("libcudart.so.13: cannot open shared object file")
    loader = _fake(monkeypatch, "13.0", True, (None, None, None), fail_on_cuda=err)
    with pytest.warns(RuntimeWarning, match=r"failed to load.*libcudart.*CUDA 13\.0"):
        assert _load.load() is False
    assert loader.loaded == ["/fake/_C.so"]


def test_load_cpu_torch_never_touches_the_cuda_library(monkeypatch):
    loader = _fake(monkeypatch, None, True, ("12.4", "12.4", "12.4"), fail_on_cuda=AssertionError("loaded"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _load.load() is False
    assert loader.loaded == ["/fake/_C.so"]


def test_this_install():
    # the build wrote what it was built with; this torch's build and the installed package agree
    cuda, nvcc, torch_cuda = _load._build_info()
    assert torch_cuda == torch.version.cuda
    assert (cuda is not None) == (_load._find("_C_cuda") is not None)
    if torch.version.cuda is None:
        assert torch_neat.HAS_CUDA is False
