"""sin2pi, sin(2 pi z): accuracy of its argument reduction, exact points, NaN, and its relation to sin.

The op tests (test_ops.py, test_properties.py) check it against the float64 reference like every other
activation; these check what is particular to it. With A = [[1]] and W = z as one row, Z = A W = z
exactly, so G = sin2pi(z) elementwise; with x and B all ones, the adapter's output is sum(G) and its
gradient for W is sin2pi'(z) elementwise.
"""

import math

import pytest
import torch
from conftest import make_case
from reference import TOL, reference_linear, rel_err

import torch_neat

TWO_PI = 2 * math.pi


def sin2pi_exact(z: torch.Tensor) -> torch.Tensor:
    """sin(2 pi z) in float64 to about 1e-16 for any z: z - round(z) is exact, so only |2 pi f| <= pi rounds."""
    z = z.double()
    return torch.sin(TWO_PI * (z - torch.round(z)))


def cos2pi_exact(z: torch.Tensor) -> torch.Tensor:
    z = z.double()
    return torch.cos(TWO_PI * (z - torch.round(z)))


def g_of(z: torch.Tensor) -> torch.Tensor:
    """G = sin2pi(z) through the op."""
    one = torch.ones(1, 1, dtype=z.dtype)
    return torch_neat.compute_g(z.reshape(1, -1), one, [], "sin2pi").reshape(-1)


def grad_of(z: torch.Tensor) -> torch.Tensor:
    """sin2pi'(z) through the op's backward."""
    W = z.clone().reshape(1, -1).requires_grad_()
    one = torch.ones(1, 1, dtype=z.dtype)
    torch_neat.adapter(torch.ones_like(W), W, one, one, [], "sin2pi").sum().backward()
    return W.grad.reshape(-1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("span", [1.0, 40.0, 3000.0])
def test_accurate_for_large_arguments(dtype, span):
    # One rounding (of 2 pi t, |t| <= 1/8) whatever |z| is: about one ulp of 1.
    g = torch.Generator().manual_seed(int(span))
    z = ((torch.rand(4096, generator=g, dtype=torch.float64) * 2 - 1) * span).to(dtype)
    G = g_of(z)
    eps = torch.finfo(dtype).eps
    err = (G.double() - sin2pi_exact(z)).abs().max().item()
    assert err <= 2 * eps, f"forward max abs error {err:.3e} > {2 * eps:.1e} at |z| <= {span}"
    derr = (grad_of(z).double() - TWO_PI * cos2pi_exact(z)).abs().max().item()
    assert derr <= 4 * TWO_PI * eps, f"derivative max abs error {derr:.3e} at |z| <= {span}"
    if dtype == torch.float32 and span >= 40:
        # the plain float32 product 2 pi z loses ~|z| ulps; the reduction is why the kernel does not
        plain = torch.sin(torch.tensor(TWO_PI, dtype=dtype) * z)
        assert (plain.double() - sin2pi_exact(z)).abs().max().item() > 20 * err


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_exact_at_quarter_turns(dtype):
    k = torch.arange(-6, 7, dtype=dtype)
    zero = g_of(torch.cat([k, k + 0.5]))
    assert torch.equal(zero.abs(), torch.zeros_like(zero))
    up, down = g_of(k + 0.25), g_of(k - 0.25)
    assert torch.equal(up, torch.ones_like(up)) and torch.equal(down, -torch.ones_like(down))
    big = torch.tensor([2.0**30, -(2.0**40), 1e30, torch.finfo(dtype).max], dtype=dtype)
    huge = g_of(big)  # integers: sin(2 pi z) = 0, not NaN from an overflowing 2 pi z
    assert torch.equal(huge.abs(), torch.zeros_like(huge))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_nan_and_inf_give_nan(dtype):
    z = torch.tensor([float("nan"), float("inf"), -float("inf"), 0.3], dtype=dtype)
    G, dG = g_of(z), grad_of(z)
    assert torch.isnan(G[:3]).all() and torch.isfinite(G[3])
    assert torch.isnan(dG[:3]).all() and torch.isfinite(dG[3])


@pytest.mark.parametrize("num_hidden", [0, 2, 4])
def test_is_sin_with_layers_scaled_by_2pi(num_hidden):
    # sin2pi(A W / 2 pi) = sin(A W): the same function class as sin, with every layer that feeds an
    # activation scaled by 1 / 2 pi, and so the gradients of those layers 2 pi times larger.
    x, w, b, A, B, H = make_case(num_hidden=num_hidden, requires_grad=True)
    A2, H2 = (A.detach() / TWO_PI).requires_grad_(), [(h.detach() / TWO_PI).requires_grad_() for h in H]
    B2 = B.detach().clone().requires_grad_()
    y_sin = torch_neat.linear(x, w, b, A, B, H, "sin", 0.7)
    y_2pi = torch_neat.linear(x, w, b, A2, B2, H2, "sin2pi", 0.7)
    assert rel_err(y_2pi, y_sin) <= 1e-12
    dy = torch.randn_like(y_sin)
    g_sin = torch.autograd.grad(y_sin, [A, B, *H], dy)
    g_2pi = torch.autograd.grad(y_2pi, [A2, B2, *H2], dy)
    assert rel_err(g_2pi[0], TWO_PI * g_sin[0]) <= 1e-12  # dL/d(A / 2 pi) = 2 pi dL/dA
    assert rel_err(g_2pi[1], g_sin[1]) <= 1e-12
    for gh2, gh in zip(g_2pi[2:], g_sin[2:]):
        assert rel_err(gh2, TWO_PI * gh) <= 1e-12


def test_float32_matches_reference_at_training_scale():
    # A layer the way NeatLinear starts it (A kaiming-uniform, W of a pretrained-like scale), float32.
    torch.manual_seed(0)
    lin = torch.nn.Linear(96, 64)
    layer = torch_neat.NeatLinear.from_linear(lin, r=4, depth=2, activation="sin2pi", scale=2.0)
    with torch.no_grad():
        layer.neat_B.normal_()
    x = torch.randn(7, 96)
    y = layer(x)
    ref = reference_linear(x.double(), lin.weight.double(), lin.bias.double(), layer.neat_A.double(),
                           layer.neat_B.double(), [], "sin2pi", 2.0)
    assert rel_err(y, ref) <= TOL[torch.float32]


def test_names():
    assert "sin2pi" in torch_neat.KERNEL_ACTIVATIONS
    assert torch_neat.canonical_activation("SIN2PI") == "sin2pi"
    config = torch_neat.NeatConfig(r=2, activation="sin2pi", target_modules=["fc"])
    assert config.kernel_activation == "sin2pi"
    with pytest.raises(ValueError, match="sin2pi"):  # listed among the accepted names
        torch_neat.canonical_activation("sin_2pi")
