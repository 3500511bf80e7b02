"""NeatLinear: initialisation, forward/backward against docs/design.md §1, the eval-mode G cache, exact merge."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import torch_neat
import torch_neat.merge as neat_merge
from hf_helpers import TOL, assert_bitwise, assert_rel, reference_linear

D_IN, D_OUT, R = 37, 53, 3
KERNEL_ACTS = ("relu", "sin", "gelu", "gelu_tanh", "silu", "tanh", "identity")


def make_layer(dtype=torch.float64, depth=2, activation="relu", scale=1.7, bias=True, seed=0, randomize=True):
    torch.manual_seed(seed)
    base = nn.Linear(D_IN, D_OUT, bias=bias).to(dtype)
    layer = torch_neat.NeatLinear(base, r=R, depth=depth, activation=activation, scale=scale)
    if randomize:
        with torch.no_grad():
            layer.neat_B.normal_(0, 0.5)
    return layer


def test_init_like_nn_linear_and_b_zero():
    torch.manual_seed(123)
    layer = torch_neat.NeatLinear(nn.Linear(D_IN, D_OUT), r=R, depth=6)
    # the same random stream as the authors' nn.Linear layers: A = Linear(d_out, r), hidden = Linear(r, r)
    torch.manual_seed(123)
    nn.Linear(D_IN, D_OUT)
    expected_A = nn.Linear(D_OUT, R, bias=False).weight
    expected_h = [nn.Linear(R, R, bias=False).weight for _ in range(4)]
    assert torch.equal(layer.neat_A, expected_A)
    for got, want in zip(layer.neat_hidden, expected_h):
        assert torch.equal(got, want)
    assert len(layer.neat_hidden) == 4
    assert torch.count_nonzero(layer.neat_B) == 0
    assert not layer.base_layer.weight.requires_grad and not layer.base_layer.bias.requires_grad
    assert all(p.requires_grad for p in (layer.neat_A, layer.neat_B, *layer.neat_hidden))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_init_output_equals_base(dtype):
    layer = make_layer(dtype=dtype, depth=4, randomize=False)
    x = torch.randn(4, 5, D_IN, dtype=dtype)
    assert_rel(layer(x), layer.base_layer(x), TOL[dtype], "fresh layer vs base")


@pytest.mark.parametrize("depth", [2, 4, 6])
@pytest.mark.parametrize("activation", KERNEL_ACTS)
def test_forward_backward_match_reference(activation, depth):
    layer = make_layer(depth=depth, activation=activation).train()
    x = torch.randn(2, 5, D_IN, dtype=torch.float64, requires_grad=True)
    out = layer(x)
    params = [layer.neat_A, layer.neat_B, *layer.neat_hidden]
    dy = torch.randn_like(out)
    grads = torch.autograd.grad(out, [x, *params], dy)

    xr = x.detach().requires_grad_(True)
    ref_params = [p.detach().clone().requires_grad_(True) for p in params]
    A, B, *hidden = ref_params
    ref = reference_linear(xr, layer.weight, layer.bias, A, B, hidden, activation, layer.scale)
    ref_grads = torch.autograd.grad(ref, [xr, *ref_params], dy)
    assert_rel(out, ref, TOL[torch.float64], f"forward {activation} depth {depth}")
    for name, g, rg in zip(["x", "A", "B"] + [f"H{i}" for i in range(depth - 2)], grads, ref_grads):
        assert_rel(g, rg, TOL[torch.float64], f"grad {name} {activation} depth {depth}")


@pytest.mark.parametrize("n", [0, 1])
def test_float32_no_bias_small_batches(n):
    layer = make_layer(dtype=torch.float32, depth=4, activation="gelu", bias=False)
    x = torch.randn(n, D_IN)
    ref = reference_linear(x.double(), layer.weight.double(), None, layer.neat_A.double(), layer.neat_B.double(),
                           [h.double() for h in layer.neat_hidden], "gelu", layer.scale)
    out = layer(x)
    assert out.shape == (n, D_OUT) and out.dtype == torch.float32
    assert_rel(out, ref, TOL[torch.float32], "float32 forward")


def test_activation_aliases():
    x = torch.randn(3, D_IN, dtype=torch.float64)
    for alias, name in [("swish", "silu"), ("linear", "identity"), ("gelu_pytorch_tanh", "gelu_tanh")]:
        a, b = make_layer(activation=alias), make_layer(activation=name)
        assert_rel(a(x), b(x), TOL[torch.float64], f"{alias} vs {name}")


def test_eval_caches_g_until_weights_change(monkeypatch):
    calls = []
    real = torch_neat.ops.compute_g

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(torch_neat.ops, "compute_g", counting)
    layer = make_layer(depth=4, activation="tanh")
    x = torch.randn(6, D_IN, dtype=torch.float64)
    train_out = layer.train()(x).detach()
    assert not calls, "training mode must run the fused op, not compute_g"

    layer.eval()
    with torch.no_grad():
        first, second = layer(x), layer(x)
    assert len(calls) == 1, f"G computed {len(calls)} times for two eval calls"
    assert_rel(first, train_out, TOL[torch.float64], "eval (cached G) vs train")
    assert torch.equal(first, second)

    with torch.no_grad():  # an optimiser-style in-place update of A invalidates the cache
        layer.neat_A.add_(0.25)
        changed = layer(x)
    assert len(calls) == 2
    ref = reference_linear(x, layer.weight, layer.bias, layer.neat_A, layer.neat_B, list(layer.neat_hidden),
                           "tanh", layer.scale)
    assert_rel(changed, ref, TOL[torch.float64], "eval after A changed")

    layer.load_state_dict({k: v + 0.1 if "hidden" in k else v for k, v in layer.state_dict().items()})
    with torch.no_grad():
        changed_after_load = layer(x)
    assert len(calls) == 3, "loading new hidden weights must invalidate the cached G"

    with torch.no_grad():  # B is not part of G: no recompute, but the output follows B
        layer.neat_B.mul_(2.0)
        out_b = layer(x)
    assert len(calls) == 3
    base_out = layer.base_layer(x)
    assert_rel(out_b - base_out, 2.0 * (changed_after_load - base_out), TOL[torch.float64], "eval after B doubled")


def test_eval_with_grad_still_trains_adapter():
    layer = make_layer().eval()
    x = torch.randn(4, D_IN, dtype=torch.float64)
    layer(x).sum().backward()
    assert layer.neat_A.grad is not None and layer.neat_A.grad.abs().sum() > 0


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_merge_unmerge_is_bit_exact(dtype, monkeypatch):
    monkeypatch.setattr(neat_merge, "_MERGE_BLOCK_ELEMENTS", 2000)  # several row blocks
    torch.manual_seed(5)
    base = nn.Linear(300, 257).to(dtype)
    with torch.no_grad():  # signed zeros and a NaN must come back exactly too
        base.weight[0, :4] = torch.tensor([-0.0, 0.0, float("nan"), -0.0])
    layer = torch_neat.NeatLinear(base, r=4, depth=4, activation="silu", scale=2.0)
    with torch.no_grad():
        layer.neat_B.normal_(0, 0.05)
    original = base.weight.detach().clone()
    x = torch.randn(5, 300, dtype=dtype)
    layer.eval()
    with torch.no_grad():
        before = layer(x)
        layer.merge()
        assert layer.merged
        assert not torch.equal(base.weight[1:], original[1:]), "merge changed nothing"
        merged = layer(x)
    rec = layer.merge_record
    w_bytes = original.numel() * original.element_size()
    assert all(t.numel() < original.numel() for t in (rec.B, rec.G, rec.index, rec.values))
    assert rec.nbytes() < 0.5 * w_bytes, f"merge keeps {rec.nbytes()} bytes for a {w_bytes}-byte weight"
    finite = torch.isfinite(before).all(dim=1)
    assert_rel(merged[finite], before[finite], {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 2e-2}[dtype],
               "merged vs unmerged output")
    layer.unmerge()
    assert not layer.merged
    assert_bitwise(base.weight, original, f"weight after merge+unmerge ({dtype})")


def test_merge_twice_and_unmerge_unmerged_warn():
    layer = make_layer()
    with pytest.warns(UserWarning, match="not merged"):
        layer.unmerge()
    layer.merge()
    with pytest.warns(UserWarning, match="already merged"):
        layer.merge()
    layer.unmerge()


def test_safe_merge_rejects_non_finite_and_leaves_weight():
    layer = make_layer()
    original = layer.weight.detach().clone()
    with torch.no_grad():
        layer.neat_B[3, 0] = float("inf")
    with pytest.raises(ValueError, match="inf or NaN"):
        layer.merge(safe_merge=True)
    assert not layer.merged
    assert_bitwise(layer.weight, original, "weight after refused merge")


def test_disable_enable():
    layer = make_layer()
    x = torch.randn(3, D_IN, dtype=torch.float64)
    adapted = layer(x)
    layer.merge()
    layer.disable_adapter()  # unmerges first
    assert not layer.merged
    assert torch.equal(layer(x), layer.base_layer(x))
    layer.enable_adapter()
    assert_rel(layer(x), adapted, TOL[torch.float64], "re-enabled")


@pytest.mark.parametrize(
    "kwargs, err, match",
    [
        ({"r": 0}, ValueError, "r must be a positive"),
        ({"r": 2.0}, TypeError, "r must be an int"),
        ({"depth": 3}, ValueError, "depth must be even"),
        ({"depth": 0}, ValueError, "depth must be even"),
        ({"activation": "softmax"}, ValueError, "unknown activation 'softmax'"),
        ({"scale": float("nan")}, ValueError, "scale must be a finite"),
    ],
)
def test_bad_arguments(kwargs, err, match):
    with pytest.raises(err, match=match):
        torch_neat.NeatLinear(nn.Linear(4, 5), **{"r": 2, **kwargs})


def test_non_linear_base_rejected():
    with pytest.raises(TypeError, match="base_layer must be an nn.Linear; got Conv1d"):
        torch_neat.NeatLinear(nn.Conv1d(3, 4, 1), r=2)


def test_bfloat16_on_cpu_computes_in_float32_and_trains():
    layer = make_layer(dtype=torch.bfloat16, depth=4, activation="silu").train()
    x = torch.randn(4, D_IN).to(torch.bfloat16)
    out = layer(x)
    assert out.dtype == torch.bfloat16
    ref = reference_linear(x.double(), layer.weight.double(), layer.bias.double(), layer.neat_A.double(),
                           layer.neat_B.double(), [h.double() for h in layer.neat_hidden], "silu", layer.scale)
    assert_rel(out, ref, TOL[torch.bfloat16], "bfloat16 forward")
    out.float().sum().backward()
    assert layer.neat_A.grad.dtype == torch.bfloat16 and layer.neat_A.grad.abs().sum() > 0
