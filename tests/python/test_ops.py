"""neat::linear / neat::adapter against the plain-PyTorch statement of docs/design.md §1."""

import pytest
import torch
from conftest import cpu_gemm, make_case
from reference import ACTIVATIONS, INPUT_UNIT, TOL, reference_linear, rel_err

import torch_neat

ACTS = sorted(ACTIVATIONS)
DEPTHS = [0, 2, 4, 6, 8]  # hidden layers; depth in the paper's sense is this + 2


def _grads(out, inputs, seed_grad):
    live = [t for t in inputs if t is not None and t.requires_grad]
    gs = torch.autograd.grad(out, live, seed_grad)
    it = iter(gs)
    return [next(it) if (t is not None and t.requires_grad) else None for t in inputs]


def _check_against_reference(dtype, act, num_hidden, bias, with_base, n=5, lead=None, scale=0.7):
    x, w, b, A, B, H = make_case(n=n, num_hidden=num_hidden, bias=bias, dtype=dtype, requires_grad=True, lead=lead)
    with torch.no_grad():  # pre-activations O(1) in the activation's unit (reference.INPUT_UNIT)
        for t in (A, *H):
            t.mul_(INPUT_UNIT.get(act, 1.0))
    if with_base:
        out = torch_neat.linear(x, w, b, A, B, H, act, scale)
    else:
        out = torch_neat.adapter(x, w, A, B, H, act, scale)
    # Reference in float64 on the same (possibly float32) values.
    x64, w64, A64, B64 = (t.detach().double().requires_grad_() for t in (x, w, A, B))
    b64 = b.detach().double().requires_grad_() if b is not None else None
    H64 = [h.detach().double().requires_grad_() for h in H]
    ref = reference_linear(x64, w64, b64 if with_base else None, A64, B64, H64, act, scale, with_base=with_base)
    tol = TOL[dtype]
    assert out.dtype == dtype and out.shape == ref.shape
    assert rel_err(out, ref) <= tol, f"forward {act} hidden={num_hidden}: rel err {rel_err(out, ref):.3e} > {tol}"

    dy = torch.randn_like(ref)
    ins = [x, w, b if with_base else None, A, B, *H]
    ins64 = [x64, w64, b64 if with_base else None, A64, B64, *H64]
    got = _grads(out, ins, dy.to(dtype))
    want = _grads(ref, ins64, dy)
    names = ["x", "weight", "bias", "A", "B"] + [f"hidden[{i}]" for i in range(num_hidden)]
    for name, g, r in zip(names, got, want):
        if r is None:
            continue
        assert g is not None and g.shape == r.shape, name
        err = rel_err(g, r)
        assert err <= tol, f"d{name} ({act}, hidden={num_hidden}, bias={bias}): rel err {err:.3e} > {tol}"


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("num_hidden", DEPTHS)
@pytest.mark.parametrize("act", ACTS)
def test_linear_matches_reference(dtype, act, num_hidden):
    _check_against_reference(dtype, act, num_hidden, bias=num_hidden % 4 == 0, with_base=True)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_linear_bias_on_off(dtype, bias):
    _check_against_reference(dtype, "gelu", 2, bias=bias, with_base=True)


@pytest.mark.parametrize("num_hidden", [0, 2, 8])
@pytest.mark.parametrize("act", ACTS)
def test_adapter_matches_reference(act, num_hidden):
    _check_against_reference(torch.float64, act, num_hidden, bias=False, with_base=False)


@pytest.mark.parametrize("n", [1, 0, 64])
def test_batch_sizes(n):
    _check_against_reference(torch.float64, "silu", 2, bias=True, with_base=True, n=n)


@pytest.mark.parametrize("lead", [(7,), (2, 3), (2, 3, 4)], ids=["2d", "3d", "4d"])
def test_leading_dims(lead):
    _check_against_reference(torch.float64, "tanh", 2, bias=True, with_base=True, lead=lead)
    x, w, b, A, B, H = make_case(lead=lead)
    y = torch_neat.linear(x, w, b, A, B, H)
    assert y.shape == (*lead, w.shape[0])


def test_one_dim_input():
    x, w, b, A, B, H = make_case(lead=())
    y = torch_neat.linear(x, w, b, A, B, H, "sin")
    assert y.shape == (w.shape[0],)
    assert rel_err(y, reference_linear(x, w, b, A, B, H, "sin")) <= 1e-12


def test_activation_aliases():
    x, w, b, A, B, H = make_case()
    for alias, name in [("swish", "silu"), ("linear", "identity"), ("gelu_new", "gelu_tanh"), ("gelu_pytorch_tanh", "gelu_tanh")]:
        assert rel_err(torch_neat.linear(x, w, b, A, B, H, alias), reference_linear(x, w, b, A, B, H, name)) <= 1e-12


def test_compute_g_matches_reference_and_merges():
    from reference import reference_g

    x, w, b, A, B, H = make_case(num_hidden=4)
    G = torch_neat.compute_g(w, A, H, "gelu")
    assert rel_err(G, reference_g(w, A, H, "gelu")) <= 1e-12
    merged = torch.nn.functional.linear(x, w + 0.5 * B @ G, b)
    assert rel_err(torch_neat.linear(x, w, b, A, B, H, "gelu", 0.5), merged) <= 1e-12


def test_identity_depth2_is_lora_with_down_projection_AW():
    x, w, b, A, B, _ = make_case()
    lora = x @ w.T + b + 2.0 * (x @ (A @ w).T) @ B.T
    assert rel_err(torch_neat.linear(x, w, b, A, B, [], "identity", 2.0), lora) <= 1e-12


def _strided_variants(t):
    """The same values as t in several layouts: transposed-storage, sliced, and (when 2-D) expanded."""
    yield "transposed", t.detach().t().contiguous().t()
    big = torch.zeros(t.shape[0], 2 * t.shape[1] + 1, dtype=t.dtype)
    big[:, 1::2] = t.detach()
    yield "sliced", big[:, 1::2]


@pytest.mark.parametrize("which", ["x", "weight", "A", "B", "hidden", "all"])
def test_non_contiguous_inputs(which):
    x, w, b, A, B, H = make_case(num_hidden=2)
    ref = reference_linear(x, w, b, A, B, H, "gelu", 0.3)
    for layout in ["transposed", "sliced"]:
        args = {"x": x, "weight": w, "A": A, "B": B}
        for key in args:
            if which in (key, "all"):
                args[key] = dict(_strided_variants(args[key]))[layout]
        hid = [dict(_strided_variants(h))[layout] for h in H] if which in ("hidden", "all") else H
        assert any(not t.is_contiguous() for t in [*args.values(), *hid])
        y = torch_neat.linear(args["x"], args["weight"], b, args["A"], args["B"], hid, "gelu", 0.3)
        assert rel_err(y, ref) <= 1e-12, (which, layout)


def test_non_contiguous_grads_and_expanded_input():
    x, w, b, A, B, H = make_case(num_hidden=2, requires_grad=True)
    xe = torch.randn(1, 37, dtype=torch.float64).expand(5, 37).requires_grad_()  # stride 0 rows
    y = torch_neat.linear(xe, w, b, A, B, H)
    dy = torch.randn(53, 5, dtype=torch.float64).t()  # non-contiguous grad_output
    y.backward(dy)
    xr = xe.detach().clone().requires_grad_()
    ref_in = [t.detach().clone().requires_grad_() for t in (w, b, A, B, *H)]
    ref = reference_linear(xr, *ref_in[:4], ref_in[4:])
    ref.backward(dy)
    assert rel_err(y, ref) <= 1e-12
    for got, want in zip([xe, w, b, A, B, *H], [xr, *ref_in]):
        assert rel_err(got.grad, want.grad) <= 1e-12


# Two routes to the same C kernels: torch_neat.linear/adapter (in eager mode the fixed-argument fast
# path, ops._FusedFn) and the registered ops with their register_autograd formula (what torch.compile
# and raw-op users get). Gradients are checked through both.
ROUTES = {
    "fast": (torch_neat.linear, torch_neat.adapter),
    "registered": (
        lambda x, w, b, A, B, H, act, s=1.0: torch.ops.neat.linear(x, w, b, A, B, list(H), act, s),
        lambda x, w, A, B, H, act, s=1.0: torch.ops.neat.adapter(x, w, A, B, list(H), act, s),
    ),
}


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("act", ACTS)
def test_gradcheck_every_input(act, route):
    lin, ada = ROUTES[route]
    x, w, b, A, B, H = make_case(n=3, d_in=5, d_out=4, r=2, num_hidden=2, requires_grad=True)
    torch.autograd.gradcheck(lambda *t: lin(t[0], t[1], t[2], t[3], t[4], list(t[5:]), act, 0.8), (x, w, b, A, B, *H))
    torch.autograd.gradcheck(lambda *t: ada(t[0], t[1], t[2], t[3], list(t[4:]), act, 1.3), (x, w, A, B, *H))


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("only", ["x", "weight", "bias", "A", "B", "hidden"])
def test_gradcheck_one_input_at_a_time(only, route):
    # Exercises the "compute only what is requested" paths of the backward kernel.
    lin = ROUTES[route][0]
    x, w, b, A, B, H = make_case(n=3, d_in=5, d_out=4, r=2, num_hidden=4)
    named = {"x": [x], "weight": [w], "bias": [b], "A": [A], "B": [B], "hidden": H}
    for t in named[only]:
        t.requires_grad_(True)
    torch.autograd.gradcheck(lambda *_: lin(x, w, b, A, B, H, "silu"), tuple(named[only]))


@pytest.mark.parametrize("route", ROUTES)
def test_gradcheck_depth8(route):
    lin = ROUTES[route][0]
    x, w, b, A, B, H = make_case(n=2, d_in=4, d_out=3, r=2, num_hidden=8, requires_grad=True)
    torch.autograd.gradcheck(lambda *t: lin(t[0], t[1], t[2], t[3], t[4], list(t[5:]), "tanh"), (x, w, b, A, B, *H))


def test_functional_api_takes_the_fast_path_in_eager_mode():
    # the public functions' graph node is the fast path's Function, not the registered op's
    x, w, b, A, B, H = make_case(n=3, d_in=5, d_out=4, r=2, num_hidden=2, requires_grad=True)
    assert type(torch_neat.linear(x, w, b, A, B, H).grad_fn).__name__ == "_FusedFnBackward"
    assert type(torch_neat.adapter(x, w, A, B, H).grad_fn).__name__ == "_FusedFnBackward"
    assert type(torch.ops.neat.linear(x, w, b, A, B, H, "relu", 1.0).grad_fn).__name__ != "_FusedFnBackward"


def _opcheck_cases():
    cases = []
    for rg in (False, True):
        x, w, b, A, B, H = make_case(n=4, d_in=6, d_out=5, r=2, num_hidden=2, requires_grad=rg)
        cases.append(("linear", (x, w, b, A, B, H, "gelu", 0.5)))
        cases.append(("linear", (x, w, None, A, B, [], "relu", 1.0)))
        cases.append(("adapter", (x, w, A, B, H, "sin", 2.0)))
    x3, w, b, A, B, H = make_case(lead=(2, 3), d_in=6, d_out=5, r=2, requires_grad=True)
    cases.append(("linear", (x3, w, b, A, B, H, "silu", 1.0)))
    x, w, b, A, B, H = make_case(n=4, d_in=6, d_out=5, r=2, num_hidden=2)
    dy = torch.randn(4, 5, dtype=torch.float64)
    cases.append(("linear_backward", (dy, x, w, b, A, B, H, "tanh", 0.5, [True, True, True, True, True, True])))
    cases.append(("linear_backward", (dy, x, w, b, A, B, H, "tanh", 0.5, [False, False, True, True, False, False])))
    cases.append(("adapter_backward", (dy, x, w, A, B, H, "tanh", 0.5, [True, False, False, True, True, True])))
    cases.append(("compute_g", (w, A, H, "relu")))
    return cases


@pytest.mark.parametrize("op_name,args", _opcheck_cases())
def test_opcheck(op_name, args):
    torch.library.opcheck(getattr(torch.ops.neat, op_name).default, args)


@pytest.mark.parametrize("dynamic", [False, True])
def test_torch_compile_fullgraph(dynamic):
    torch._dynamo.reset()
    x, w, b, A, B, H = make_case(num_hidden=2, dtype=torch.float32, requires_grad=True)

    def f(x, w, b, A, B, h0, h1):
        return (torch_neat.linear(x, w, b, A, B, [h0, h1], "gelu", 0.5) ** 2).sum()

    compiled = torch.compile(f, fullgraph=True, dynamic=dynamic)
    loss = compiled(x, w, b, A, B, *H)
    grads = torch.autograd.grad(loss, [x, A, B, *H])
    loss_e = f(x, w, b, A, B, *H)
    grads_e = torch.autograd.grad(loss_e, [x, A, B, *H])
    assert rel_err(loss, loss_e) <= 1e-5
    for g, ge in zip(grads, grads_e):
        assert rel_err(g, ge) <= 1e-5


def test_results_independent_of_thread_count():
    x, w, b, A, B, H = make_case(n=256, d_in=300, d_out=200, r=8, num_hidden=2, dtype=torch.float32, requires_grad=True)
    before = torch.get_num_threads()
    results = []
    try:  # the promise of the own GEMM (a host BLAS makes none: docs/design.md §2.6)
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            with cpu_gemm("own"):  # backward too: it reads the mode when it runs
                y = torch_neat.linear(x, w, b, A, B, H, "silu", 0.5)
                grads = torch.autograd.grad(y, [x, w, b, A, B, *H], torch.ones_like(y))
            results.append([y, *grads])
    finally:
        torch.set_num_threads(before)
    for other in results[1:]:
        for a, c in zip(results[0], other):
            assert torch.equal(a, c)


def test_nan_and_inf_propagate():
    x, w, b, A, B, H = make_case(n=4, num_hidden=2, requires_grad=True)
    with torch.no_grad():
        x[1, 3] = float("nan")
        x[2, 5] = float("inf")
    y = torch_neat.linear(x, w, b, A, B, H, "relu")
    assert torch.isnan(y[1]).all()
    assert not torch.isfinite(y[2]).all()
    assert torch.isfinite(y[0]).all() and torch.isfinite(y[3]).all()
    y.sum().backward()  # must not crash
    assert torch.isnan(A.grad).any()


def test_empty_batch():
    x, w, b, A, B, H = make_case(n=0, num_hidden=2, requires_grad=True)
    y = torch_neat.linear(x, w, b, A, B, H)
    assert y.shape == (0, 53)
    y.sum().backward()
    assert x.grad.shape == (0, 37)
    for t in [w, b, A, B, *H]:
        assert t.grad is not None and t.grad.shape == t.shape
        assert torch.count_nonzero(t.grad) == 0
    x3 = torch.randn(2, 0, 37, dtype=torch.float64)
    assert torch_neat.adapter(x3, w, A, B, H).shape == (2, 0, 53)


def test_frozen_weight_gets_no_grad_and_dtype_follows_input():
    x, w, b, A, B, H = make_case(dtype=torch.float32)
    A.requires_grad_()
    y = torch_neat.linear(x, w, b, A, B, H)
    y.sum().backward()
    assert w.grad is None and A.grad is not None and y.dtype == torch.float32
