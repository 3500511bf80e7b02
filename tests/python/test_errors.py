"""Bad input raises an exception whose message names the argument and what was expected."""

import pytest
import torch
from conftest import make_case

import torch_neat


def _call(x, w, b, A, B, H, act="relu"):
    return torch.ops.neat.linear(x, w, b, A, B, H, act, 1.0)


def _base():
    return list(make_case(n=5, d_in=37, d_out=53, r=3, num_hidden=2))


@pytest.mark.parametrize(
    "index,bad,pattern",
    [
        (1, torch.randn(53, 36, dtype=torch.float64), r"input's last dimension must equal weight.shape\[1\]"),
        (1, torch.randn(53, 37, 1, dtype=torch.float64), r"weight must be 2-D"),
        (2, torch.randn(52, dtype=torch.float64), r"bias.*53"),
        (2, torch.randn(53, 1, dtype=torch.float64), r"bias"),
        (3, torch.randn(3, 52, dtype=torch.float64), r"A must have shape.*53"),
        (3, torch.randn(53, dtype=torch.float64), r"\bA\b"),
        (4, torch.randn(52, 3, dtype=torch.float64), r"B must have shape.*53"),
        (4, torch.randn(53, 4, dtype=torch.float64), r"B must have shape.*3"),
    ],
    ids=["weight-d_in", "weight-3d", "bias-len", "bias-2d", "A-cols", "A-1d", "B-rows", "B-rank"],
)
def test_wrong_shape_names_argument(index, bad, pattern):
    args = _base()
    args[index] = bad
    with pytest.raises(RuntimeError, match=pattern):
        _call(*args)


def test_wrong_hidden_shape():
    x, w, b, A, B, H = _base()
    H[1] = torch.randn(3, 4, dtype=torch.float64)
    with pytest.raises(RuntimeError, match=r"hidden\[1\] must have shape \(3, 3\)"):
        _call(x, w, b, A, B, H)


def test_odd_number_of_hidden_layers():
    x, w, b, A, B, H = _base()
    with pytest.raises(RuntimeError, match=r"hidden.*even"):
        _call(x, w, b, A, B, H[:1])


def test_too_many_hidden_layers():
    x, w, b, A, B, _ = _base()
    H = [torch.randn(3, 3, dtype=torch.float64) for _ in range(10)]
    with pytest.raises(RuntimeError, match=r"hidden.*8"):
        _call(x, w, b, A, B, H)


def test_grad_out_wrong_shape():
    x, w, b, A, B, H = _base()
    with pytest.raises(RuntimeError, match=r"grad_out must have the output's shape"):
        torch.ops.neat.linear_backward(torch.randn(5, 52, dtype=torch.float64), x, w, b, A, B, H, "relu", 1.0, [True] * 6)


def test_unknown_activation():
    x, w, b, A, B, H = _base()
    with pytest.raises(RuntimeError, match=r"unknown activation 'softplus'.*relu"):
        _call(x, w, b, A, B, H, act="softplus")
    with pytest.raises(ValueError, match=r"unknown activation 'softplus'"):
        torch_neat.linear(x, w, b, A, B, H, activation="softplus")


@pytest.mark.parametrize("index,name", [(0, "input"), (1, "weight"), (2, "bias"), (3, "A"), (4, "B")])
def test_mismatched_dtypes(index, name):
    args = _base()
    args[index] = args[index].float()
    with pytest.raises(RuntimeError, match=rf"\b{name}\b.*(float64|dtype)|dtype.*\b{name}\b"):
        _call(*args)


def test_mismatched_hidden_dtype():
    x, w, b, A, B, H = _base()
    H[0] = H[0].float()
    with pytest.raises(RuntimeError, match=r"hidden\[0\]"):
        _call(x, w, b, A, B, H)


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool])
@pytest.mark.parametrize("index,name", [(0, "input"), (1, "weight"), (3, "A")])
def test_unsupported_dtype(index, name, dtype):
    args = _base()
    args[index] = args[index].to(dtype)
    with pytest.raises(RuntimeError, match=rf"{name} must be a floating-point tensor"):
        _call(*args)


def test_half_precision_not_on_cpu():
    args = [t.to(torch.bfloat16) if t is not None else None for t in _base()[:5]] + [[]]
    with pytest.raises(RuntimeError, match=r"(input|weight) has dtype bfloat16; on CPU the dtypes are float32 and float64"):
        _call(*args)


@pytest.mark.parametrize("index,name", [(1, "weight"), (3, "A"), (4, "B")])
def test_tensors_on_different_devices(index, name):
    args = _base()
    args[index] = args[index].to("meta")
    with pytest.raises(RuntimeError, match=rf"\b{name}\b.*device|device.*\b{name}\b"):
        _call(*args)


def test_sparse_input_rejected():
    x, w, b, A, B, H = _base()
    with pytest.raises(RuntimeError, match=r"input"):
        _call(x.to_sparse(), w, b, A, B, H)


def test_scalar_input_rejected():
    _, w, b, A, B, H = _base()
    with pytest.raises(RuntimeError, match=r"input must have at least one dimension"):
        _call(torch.tensor(1.0, dtype=torch.float64), w, b, A, B, H)
