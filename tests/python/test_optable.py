"""The op table (torch_neat/_optable.py) against what is registered, and the generated registrations.

Every op the extension defines has one row; the row's argument names are the C++ schema's; every
generated registration (fake kernel, autograd formula, autocast kernel, sparse rejection) exists for
the rows that call for it and behaves; the two autograd routes give the same bits for every row.
"""

import itertools
import re

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import torch_neat
from torch_neat import _torch_internals, ops
from torch_neat._autograd import PLANS
from torch_neat._optable import MASK_SLOTS, ROLES, ROWS, binder, schema_args

from conftest import make_case

FORWARD = [op for op, row in ROWS.items() if row.backward not in (None, "raises")]


def test_every_registered_op_has_a_row_and_every_row_is_registered():
    assert set(_torch_internals.registered_ops("neat")) == set(ROWS)


@pytest.mark.parametrize("op", sorted(ROWS))
def test_every_argument_has_a_role(op):
    for a in schema_args(op):
        assert a.name in ROLES, f"neat::{op}: argument {a.name} has no role in _optable.ROLES"
        assert (ROLES[a.name] in ("attr",)) != a.is_tensor, f"neat::{op}: {a.name}'s role does not fit its type"


@pytest.mark.parametrize("op", FORWARD)
def test_backward_schema_follows_the_forward(op):
    row = ROWS[op]
    fwd = [a.name for a in schema_args(op)]
    bwd = [a.name for a in schema_args(row.backward)]
    # grad_out, the forward's arguments (none optional any more), then the gradient mask
    assert bwd == ["grad_out", *fwd, "output_mask"]
    assert all(g in fwd and g in MASK_SLOTS for g in row.grads)
    returns = getattr(torch.ops.neat, row.backward).default._schema.returns
    assert len(returns) == len(row.grads)
    assert ROWS[row.backward].backward == "raises"


def test_binder_fills_defaults_and_keywords():
    bind = binder("linear")
    x, w, b, A, B, _ = make_case()
    assert bind((x, w, b, A, B), {})[5:] == (None, "relu", 1.0)
    assert bind((x, w, b, A, B), {"scale": 2.0})[5:] == (None, "relu", 2.0)
    assert bind((x, w, b, A, B, [], "tanh", 3.0), {})[5:] == ([], "tanh", 3.0)


def _case_args(op, dtype=torch.float64):
    x, w, b, A, B, H = make_case(n=4, d_in=6, d_out=5, r=2, num_hidden=2, dtype=dtype)
    dy = torch.randn(4, 5, dtype=dtype)
    G = torch.randn(2, 6, dtype=dtype)
    mask = [True, False, True, True, False, True]
    qw = [torch.randint(0, 256, (15,), dtype=torch.uint8), torch.linspace(-1, 1, 16), torch.rand(1) + 0.5]
    qm = [1, 5, 6, 64, 0]
    return {
        "linear": (x, w, b, A, B, H, "gelu", 0.5),
        "adapter": (x, w, A, B, H, "sin", 2.0),
        "compute_g": (w, A, H, "relu"),
        "lowrank_linear": (x, w, b, G, B, 0.5),
        "linear_backward": (dy, x, w, b, A, B, H, "tanh", 0.5, mask),
        "adapter_backward": (dy, x, w, A, B, H, "tanh", 0.5, mask),
        "cpu_gemm_plan": (),
        # a 4-bit weight (5, 6) made by hand: the arrays are the format, no bitsandbytes needed here
        "qlinear": (x, qw, qm, 0.0, b, A, B, H, "gelu", 0.5),
        "qcompute_g": (qw, qm, 0.0, A, H, "relu"),
        "qlowrank_linear": (x, qw, qm, 0.0, b, G, B, 0.5),
        "qlinear_backward": (dy, x, qw, qm, 0.0, b, A, B, H, "tanh", 0.5, [True, False, True, True, False, True]),
    }[op]


def _shapes(out):
    if isinstance(out, (list, tuple)):
        return [_shapes(o) for o in out]
    return (tuple(out.shape), out.dtype) if isinstance(out, torch.Tensor) else out


@pytest.mark.parametrize("op", [op for op, row in ROWS.items() if row.fake])
def test_generated_fake_kernel_matches_the_real_one(op):
    args = _case_args(op)
    real = getattr(torch.ops.neat, op).default(*args)
    with FakeTensorMode() as mode:
        fake_args = [mode.from_tensor(a) if isinstance(a, torch.Tensor) else
                     ([mode.from_tensor(t) for t in a] if isinstance(a, list) and a and isinstance(a[0], torch.Tensor) else a)
                     for a in args]
        fake = getattr(torch.ops.neat, op).default(*fake_args)
    assert _shapes(fake) == _shapes(real)


@pytest.mark.parametrize("op", [op for op, row in ROWS.items() if row.fake and row.fake != "grads"])
def test_generated_registrations_pass_opcheck(op):
    torch.library.opcheck(getattr(torch.ops.neat, op).default, _case_args(op))


@pytest.mark.parametrize("op", [op for op, row in ROWS.items() if row.fake])
def test_sparse_rejection_generated_for_every_tensor_argument(op):
    args = list(_case_args(op, torch.float32))
    names = [a.name for a in schema_args(op)]
    for i, a in enumerate(args):
        if isinstance(a, list) and a and isinstance(a[0], torch.Tensor):
            bad = list(args)
            bad[i] = [a[0].to_sparse(), *a[1:]]
        elif isinstance(a, torch.Tensor):
            bad = list(args)
            bad[i] = a.to_sparse()
        else:
            continue
        # a sparse list element is named by its index (the kernel's own check may catch it first)
        with pytest.raises(RuntimeError, match=rf"neat::{op}: {names[i]}(\[0\])? must be a dense"):
            getattr(torch.ops.neat, op)(*bad)


@pytest.mark.parametrize("op", sorted(ROWS))
def test_autocast_kernel_exactly_where_the_row_says(op):
    for key in ("AutocastCPU", "AutocastCUDA"):
        has = torch._C._dispatch_has_kernel_for_dispatch_key(f"neat::{op}", key)
        assert has == (ROWS[op].autocast is not None), (op, key)


def test_autocast_output_role():
    x, w, b, A, B, H = make_case(dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.ops.neat.linear(x, w, b, A, B, H).dtype == torch.bfloat16  # an activation
        assert torch.ops.neat.compute_g(w, A, H).dtype == torch.float32  # a factor of a weight


@pytest.mark.parametrize("op", [op for op, row in ROWS.items() if row.backward == "raises"])
def test_raising_rows_raise_their_message(op):
    args = [a.detach().requires_grad_() if isinstance(a, torch.Tensor) and a.is_floating_point() else a
            for a in _case_args(op)]
    out = getattr(torch.ops.neat, op)(*args)
    first = out if isinstance(out, torch.Tensor) else out[0]
    with pytest.raises(RuntimeError, match=re.escape(f"torch-neat: neat::{op} " + ROWS[op].why_not[:30])):
        first.sum().backward()


def _grads_through(route, op, tensors, wanted, hidden_none):
    leaves = []
    for t, w in zip(tensors, wanted):
        if isinstance(t, list):
            leaves.append([h.detach().clone().requires_grad_(w) for h in t])
        else:
            leaves.append(None if t is None else t.detach().clone().requires_grad_(w))
    *plain, hidden = leaves
    h_arg = None if hidden_none else hidden
    if route == "registered":
        y = getattr(torch.ops.neat, op)(*plain, h_arg, "silu", 0.7)
    else:
        fn = ops.fused_linear if op == "linear" else ops.fused_adapter
        y = fn(*plain, hidden, "silu", 0.7)
    dy = torch.linspace(-1, 1, y.numel(), dtype=y.dtype).reshape(y.shape)
    flat = [t for t in plain if t is not None and t.requires_grad] + [h for h in hidden if h.requires_grad]
    if not flat:
        return y, []
    return y, torch.autograd.grad(y, flat, dy)


@pytest.mark.parametrize("op", ["linear", "adapter"])  # the rows the eager fast path serves
@pytest.mark.parametrize("num_hidden", [0, 2])
def test_both_routes_give_identical_bits_for_every_gradient_mask(op, num_hidden):
    x, w, b, A, B, H = make_case(n=4, d_in=6, d_out=5, r=2, num_hidden=num_hidden, dtype=torch.float32)
    tensors = (x, w, b, A, B, H) if op == "linear" else (x, w, A, B, H)
    for wanted in itertools.product((False, True), repeat=len(tensors)):
        for hidden_none in ((False, True) if num_hidden == 0 else (False,)):
            y1, g1 = _grads_through("registered", op, tensors, wanted, hidden_none)
            y2, g2 = _grads_through("fast", op, tensors, wanted, hidden_none)
            assert torch.equal(y1, y2)
            assert len(g1) == len(g2)
            for a, c in zip(g1, g2):
                assert torch.equal(a, c), (op, wanted)


def test_plans_cover_every_differentiable_row():
    assert set(PLANS) == set(FORWARD)
    for op in FORWARD:
        assert PLANS[op].count == len(ROWS[op].grads)


def test_public_all_lists_the_functional_api():
    assert set(ops.__all__) == {"linear", "adapter", "compute_g", "lowrank_linear"}
    for name in ops.__all__:
        assert getattr(torch_neat, name) is getattr(ops, name)
