"""neat::lowrank_linear (inference with G kept) and NeatLinear's eval path that uses it."""

import pytest
import torch
import torch.nn.functional as F
from reference import rel_err

import torch_neat
from torch_neat import ops as neat_ops

TOL = {torch.float32: 2e-6, torch.float64: 1e-13}


def _case(n=7, d_in=9, d_out=6, r=3, dtype=torch.float64, bias=True, lead=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    mk = lambda *s: torch.randn(*s, generator=g, dtype=dtype)  # noqa: E731
    x = mk(*(lead or ()), n, d_in)
    return x, mk(d_out, d_in), mk(d_out) if bias else None, mk(r, d_in), mk(d_out, r)


def _reference(x, w, b, G, B, s):
    x, w, G, B = (t.double() for t in (x, w, G, B))
    y = x @ w.T + s * (x @ G.T) @ B.T
    return y + b.double() if b is not None else y


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(7, 9, 6, 3), (1, 1, 1, 1), (0, 5, 4, 2), (130, 300, 70, 8), (33, 17, 520, 16)])
def test_matches_reference(dtype, bias, shape):
    n, d_in, d_out, r = shape
    x, w, b, G, B = _case(n, d_in, d_out, r, dtype, bias)
    y = torch_neat.lowrank_linear(x, w, b, G, B, 0.7)
    ref = _reference(x, w, b, G, B, 0.7)
    assert y.dtype == dtype and y.shape == ref.shape
    assert rel_err(y, ref) <= TOL[dtype]


def test_leading_dims_and_strided_views():
    x, w, b, G, B = _case(n=5, d_in=8, d_out=6, r=4, lead=(2, 3))
    # column-major weight, G and B (the kernels read strides), a bias with element stride 2
    wt, Gt, Bt = (t.T.contiguous().T for t in (w, G, B))
    bs = torch.stack([b, torch.zeros_like(b)], dim=1)[:, 0]
    assert not wt.is_contiguous() and bs.stride() == (2,)
    y = torch_neat.lowrank_linear(x, wt, bs, Gt, Bt, -1.5)
    assert y.shape == (2, 3, 5, 6)
    assert rel_err(y, _reference(x, w, b, G, B, -1.5)) <= TOL[torch.float64]
    stepped = torch.randn(4, 16, dtype=torch.float64)[:, ::2]  # (4, 8), column stride 2
    y2 = torch_neat.lowrank_linear(x, w, None, stepped, B, 1.0)
    assert rel_err(y2, _reference(x, w, None, stepped, B, 1.0)) <= TOL[torch.float64]


@pytest.mark.parametrize("hidden", [0, 2, 6])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_equals_linear_with_g_from_compute_g(hidden, dtype):
    g = torch.Generator().manual_seed(hidden)
    mk = lambda *s: torch.randn(*s, generator=g, dtype=dtype)  # noqa: E731
    x, w, b, A, B = mk(40, 300), mk(29, 300), mk(29), mk(8, 29), mk(29, 8)
    H = [mk(8, 8) * 0.3 for _ in range(hidden)]
    G = torch_neat.compute_g(w, A, H, "gelu")
    y_linear = torch_neat.linear(x, w, b, A, B, H, "gelu", 1.3)
    y_lowrank = torch_neat.lowrank_linear(x, w, b, G, B, 1.3)
    # the same products in the same order: identical, not merely close
    assert torch.equal(y_linear, y_lowrank)


def test_opcheck():
    x, w, b, G, B = _case(n=4, d_in=5, d_out=3, r=2)
    torch.library.opcheck(torch.ops.neat.lowrank_linear.default, (x, w, b, G, B, 0.5))
    torch.library.opcheck(torch.ops.neat.lowrank_linear.default, (x, w, None, G, B, 2.0))


def test_compile_traces_it():
    x, w, b, G, B = _case(n=4, d_in=5, d_out=3, r=2, dtype=torch.float32)
    f = torch.compile(lambda *a: torch.ops.neat.lowrank_linear(*a, 0.5) * 2, backend="aot_eager", fullgraph=True)
    assert torch.allclose(f(x, w, b, G, B), 2 * torch_neat.lowrank_linear(x, w, b, G, B, 0.5))


def test_gradient_request_raises():
    x, w, b, G, B = _case()
    x.requires_grad_(True)
    y = torch_neat.lowrank_linear(x, w, b, G, B, 1.0)
    with pytest.raises(RuntimeError, match="inference-only"):
        y.sum().backward()


@pytest.mark.parametrize(
    "change,match",
    [
        (lambda a: a.__setitem__(3, a[3].T.contiguous()), "G must have shape \\(r, d_in\\)"),
        (lambda a: a.__setitem__(4, a[4][:, :2].contiguous()), "B must have shape \\(d_out, r\\)"),
        (lambda a: a.__setitem__(3, a[3].float()), "G has dtype float32 but weight has float64"),
        (lambda a: a.__setitem__(2, a[2][:4].contiguous()), "bias must have shape"),
        (lambda a: a.__setitem__(0, a[0][:, :4].contiguous()), "input's last dimension must equal"),
        (lambda a: a.__setitem__(3, a[3][0]), "G must be 2-D"),
        (lambda a: a.__setitem__(3, a[3].to_sparse()), "sparse"),
    ],
)
def test_bad_input_names_the_argument(change, match):
    args = list(_case())
    change(args)
    with pytest.raises(RuntimeError, match=match):
        torch_neat.lowrank_linear(*args, 1.0)


# ---- NeatLinear's eval path ----


def _layer(depth=4, bias=True, dtype=torch.float32):
    torch.manual_seed(0)
    layer = torch_neat.NeatLinear(torch.nn.Linear(24, 20, bias=bias, dtype=dtype), r=4, depth=depth, activation="silu", scale=1.5)
    with torch.no_grad():
        layer.neat_B.normal_()  # B is zero at init, which would hide the adapter term
    return layer


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("depth", [2, 4])
def test_eval_uses_lowrank_and_matches_train(monkeypatch, bias, depth):
    layer = _layer(depth, bias)
    x = torch.randn(3, 5, 24)
    y_train = layer(x)
    calls = []
    real = neat_ops.lowrank_inference
    monkeypatch.setattr(neat_ops, "lowrank_inference", lambda *a: calls.append(1) or real(*a))
    layer.eval()
    with torch.no_grad():
        y_eval = layer(x)
    assert calls, "eval under no_grad should take neat::lowrank_linear"
    assert torch.allclose(y_eval, y_train, rtol=1e-5, atol=1e-5)
    # a changed adapter is seen (G recomputed)
    with torch.no_grad():
        layer.neat_A.mul_(0.5)
        y_changed = layer(x)
    layer.train()
    assert torch.allclose(y_changed, layer(x), rtol=1e-5, atol=1e-5)


def test_eval_with_input_grad_keeps_a_differentiable_path():
    layer = _layer().eval()
    for p in layer.parameters():
        p.requires_grad_(False)
    x = torch.randn(4, 24, requires_grad=True)
    y = layer(x)
    (gx,) = torch.autograd.grad(y.sum(), x)
    x2 = x.detach().clone().requires_grad_(True)
    layer.train()
    (gx_train,) = torch.autograd.grad(layer(x2).sum(), x2)
    assert torch.allclose(gx, gx_train, rtol=1e-5, atol=1e-5)


def test_eval_float64_and_plain_linear_agree():
    layer = _layer(dtype=torch.float64).eval()
    x = torch.randn(6, 24, dtype=torch.float64)
    with torch.no_grad():
        y = layer(x)
        G = layer.cached_g()
        ref = F.linear(x, layer.base_layer.weight, layer.base_layer.bias) + 1.5 * (x @ G.T) @ layer.neat_B.T
    assert rel_err(y, ref) <= 1e-13
