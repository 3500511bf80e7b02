"""Regression tests, one per reproducer of the reliability issue (crashes, silent zeros, leaks of
error quality). Each runs the reported call as a user would and checks the result against the
float64 reference, or checks the error a user sees."""

import pytest
import torch
from reference import TOL, describe_mismatch, reference_linear, rel_err

import torch_neat


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def _check(name, out, ref, tol):
    assert rel_err(out, ref) <= tol, describe_mismatch(name, out, ref, tol)


def _grads_vs_reference(call, ref_call, tensors, tol):
    out = call(*tensors)
    dy = torch.randn_like(out)
    got = torch.autograd.grad(out, tensors, dy)
    ref_tensors = [t.detach().double().requires_grad_(True) for t in tensors]
    ref = ref_call(*ref_tensors)
    want = torch.autograd.grad(ref, ref_tensors, dy.double())
    _check("y", out, ref, tol)
    for i, (g, w) in enumerate(zip(got, want)):
        _check(f"grad[{i}]", g, w, tol)


def test_skinny_backward_with_two_threads(two_threads):
    # Segfaulted: dA's skinny GEMM (M = r <= 16, K = d_out > 256) overran its lane scratch when
    # two lanes ran and the last column strip was partial.
    x = torch.randn(16, 100, requires_grad=True)
    W = torch.randn(8192, 100) / 10
    A = (torch.randn(8, 8192) / 90).requires_grad_(True)
    B = torch.randn(8192, 8).requires_grad_(True)
    torch_neat.linear(x, W, None, A, B).sum().backward()  # the reported call, as written
    _grads_vs_reference(
        lambda x, A, B: torch_neat.linear(x, W, None, A, B),
        lambda x, A, B: reference_linear(x, W.double(), None, A, B),
        [x, A, B],
        TOL[torch.float32],
    )


def test_skinny_adapter_transposed_input_repeated(two_threads):
    # Segfaulted after 20-30 calls: x is a transposed view with K = 32768 and d_out = 4.
    x = torch.randn(32768, 40).t()
    W = torch.randn(4, 32768) / 180
    A = torch.randn(8, 4)
    B = torch.randn(4, 8)
    ref = reference_linear(x.double(), W.double(), None, A.double(), B.double(), with_base=False)
    for _ in range(40):
        y = torch_neat.adapter(x, W, A, B)
    _check("y", y, ref, TOL[torch.float32])


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_small_linear_no_grad_repeated(threads):
    # Grew resident memory by about 118 KB per call at 2 threads (heap corruption).
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        x, W = torch.randn(64, 96), torch.randn(80, 96) / 10
        A, B = torch.randn(8, 80) / 9, torch.randn(80, 8)
        ref = reference_linear(x.double(), W.double(), None, A.double(), B.double())
        with torch.no_grad():
            for _ in range(200):
                y = torch.ops.neat.linear(x, W, None, A, B, None, "relu", 1.0)
        _check("y", y, ref, TOL[torch.float32])
    finally:
        torch.set_num_threads(before)


def _double_case():
    torch.manual_seed(0)
    x = torch.randn(5, 7, dtype=torch.float64, requires_grad=True)
    W = torch.randn(6, 7, dtype=torch.float64)
    b = torch.randn(6, dtype=torch.float64)
    A = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    B = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    return x, W, b, A, B


@pytest.mark.parametrize("op", ["linear", "adapter"])
def test_hessian_raises_instead_of_zeros(op):
    # Returned an all-zero Hessian where the true one has entries of about 40.
    x, W, b, A, B = _double_case()

    def f(x):
        if op == "linear":
            return torch_neat.linear(x, W, b, A, B, [], "tanh").square().sum()
        return torch_neat.adapter(x, W, A, B, [], "tanh").square().sum()

    true = torch.autograd.functional.hessian(
        lambda x: reference_linear(x, W, b if op == "linear" else None, A, B, [], "tanh", with_base=op == "linear").square().sum(), x
    )
    assert true.abs().max() > 1.0  # a silent zero would be far from this
    with pytest.raises(RuntimeError, match=rf"torch-neat: neat::{op}_backward cannot be differentiated"):
        torch.autograd.functional.hessian(f, x)


def test_grad_of_grad_raises():
    x, W, b, A, B = _double_case()
    (gx,) = torch.autograd.grad(torch_neat.linear(x, W, b, A, B, [], "tanh").square().sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.grad(gx.sum(), A)


def test_create_graph_first_order_still_exact():
    # Registering the error must not disturb first-order gradients taken with create_graph=True.
    x, W, b, A, B = _double_case()
    out = torch_neat.linear(x, W, b, A, B, [], "tanh").square().sum()
    got = torch.autograd.grad(out, (x, A, B), create_graph=True)
    ref = reference_linear(x, W, b, A, B, [], "tanh").square().sum()
    want = torch.autograd.grad(ref, (x, A, B))
    for g, w in zip(got, want):
        _check("grad", g, w, TOL[torch.float64])


def _op_calls(act):
    x, W, b, A, B = (t.detach() for t in _double_case())
    mask = [True] * 6
    g = torch.randn(5, 6, dtype=torch.float64)
    return {
        "linear": lambda: torch.ops.neat.linear(x, W, b, A, B, None, act, 1.0),
        "adapter": lambda: torch.ops.neat.adapter(x, W, A, B, None, act, 1.0),
        "compute_g": lambda: torch.ops.neat.compute_g(W, A, None, act),
        "linear_backward": lambda: torch.ops.neat.linear_backward(g, x, W, b, A, B, [], act, 1.0, mask),
        "adapter_backward": lambda: torch.ops.neat.adapter_backward(g, x, W, A, B, [], act, 1.0, mask),
    }


@pytest.mark.parametrize("op", ["linear", "adapter", "compute_g", "linear_backward", "adapter_backward"])
@pytest.mark.parametrize("act", ["relu\x00junk", "relu\x00", "\x00relu", ""])
def test_activation_with_nul_rejected(op, act):
    # "relu\x00junk" was accepted as relu: the C parser stopped at the NUL.
    with pytest.raises(RuntimeError, match=rf"neat::{op}: unknown activation"):
        _op_calls(act)[op]()


@pytest.mark.parametrize("op", ["linear_backward", "adapter_backward"])
@pytest.mark.parametrize("which", ["A", "B", "hidden"])
def test_backward_ops_name_non_2d_arguments(op, which):
    # Failed with "aoti_torch_get_size(...) API call failed".
    x, W, b, A, B = (t.detach() for t in _double_case())
    H = [torch.randn(3, 3, dtype=torch.float64) for _ in range(2)]
    if which == "A":
        A = A[0]
    elif which == "B":
        B = B.reshape(-1)
    else:
        H[1] = H[1].reshape(-1)
    g = torch.randn(5, 6, dtype=torch.float64)
    name = "hidden\\[1\\]" if which == "hidden" else which
    with pytest.raises(RuntimeError, match=rf"neat::{op}: {name} must be 2-D"):
        if op == "linear_backward":
            torch.ops.neat.linear_backward(g, x, W, b, A, B, H, "relu", 1.0, [True] * 6)
        else:
            torch.ops.neat.adapter_backward(g, x, W, A, B, H, "relu", 1.0, [True] * 6)


@pytest.mark.parametrize("which", ["weight", "A"])
def test_compute_g_sparse_names_argument(which):
    # Was a generic NotImplementedError from the dispatcher.
    W, A = torch.randn(6, 7), torch.randn(3, 6)
    args = {"weight": W, "A": A}
    args[which] = args[which].to_sparse()
    with pytest.raises(RuntimeError, match=rf"neat::compute_g: {which} must be a dense \(strided\) tensor"):
        torch.ops.neat.compute_g(args["weight"], args["A"])


def test_allocation_failure_says_what_and_how_much():
    # Was "torch_call_dispatcher("aten::new_empty"...) API call failed". 2^45 float32 columns per
    # row exceed any 47-bit address space, so this fails on every machine, overcommit or not.
    d_out = 2**45
    W = torch.randn(1, 4).expand(d_out, 4)
    A = torch.randn(2, 1).expand(2, d_out)
    B = torch.randn(1, 2).expand(d_out, 2)
    with pytest.raises(RuntimeError, match=r"neat::linear: could not allocate the output \(281474976710656 bytes = 262144 GiB\) on cpu"):
        torch.ops.neat.linear(torch.randn(2, 4), W, None, A, B)


def _module_case(depth):
    torch.manual_seed(3)
    layer = torch_neat.NeatLinear(torch.nn.Linear(7, 6).double(), r=3, depth=depth, activation="tanh")
    with torch.no_grad():
        layer.neat_B.normal_()
    x = torch.randn(2, 5, 7, dtype=torch.float64, requires_grad=True)
    return layer, x


@pytest.mark.parametrize("depth", [2, 4])
def test_module_fast_path_matches_registered_op_bitwise(depth):
    # The modules call the ops below the autograd key (ops._FusedFn); gradients must be the very
    # bits the registered autograd gives.
    layer, x = _module_case(depth)
    params = [x, layer.neat_A, *layer.neat_hidden, layer.neat_B]
    dy = torch.randn(2, 5, 6, dtype=torch.float64)
    fast = torch.autograd.grad(layer(x), params, dy)
    w, b = layer.base_layer.weight, layer.base_layer.bias
    slow = torch.autograd.grad(
        torch_neat.linear(x, w, b, layer.neat_A, layer.neat_B, list(layer.neat_hidden), "tanh", layer.scale), params, dy
    )
    for f, s in zip(fast, slow):
        assert torch.equal(f, s)


def test_module_gradcheck_and_double_backward_error():
    layer, x = _module_case(4)
    params = (x, layer.neat_A, layer.neat_B, *layer.neat_hidden)

    def f(x, A, B, *H):
        return torch_neat.ops.fused_linear(x, layer.base_layer.weight, layer.base_layer.bias, A, B, H, "tanh", 1.0)

    assert torch.autograd.gradcheck(f, params)
    with pytest.raises(RuntimeError, match="torch-neat: neat::linear_backward cannot be differentiated"):
        torch.autograd.functional.hessian(lambda x: layer(x).square().sum(), x)
