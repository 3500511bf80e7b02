"""The Python suite's checks on CUDA tensors (DESIGN.md section 6, tests/gpu).

Run on a machine with a GPU (tests/gpu/run.sh); the module is skipped where CUDA is absent, so
this folder is never part of CI. Every result is compared against reference.py in float64 by
relative Frobenius error with the bounds of DESIGN.md section 4.
"""

from __future__ import annotations

import os
import sys

import pytest
import torch

if not torch.cuda.is_available():
    pytest.skip("tests/gpu needs a CUDA device", allow_module_level=True)

# One float64 reference serves the CPU and the GPU suites.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))
import reference as ref  # noqa: E402

import torch_neat  # noqa: E402

DEV = torch.device("cuda")
TOL = {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 2e-2}

# (x/W dtype, A/H/B dtype): the four plain dtypes and the two mixed-precision combinations.
DTYPES = [
    (torch.float64, torch.float64),
    (torch.float32, torch.float32),
    (torch.bfloat16, torch.bfloat16),
    (torch.float16, torch.float16),
    (torch.bfloat16, torch.float32),
    (torch.float16, torch.float32),
]
DT_IDS = ["f64", "f32", "bf16", "f16", "bf16+f32", "f16+f32"]


@pytest.fixture(autouse=True, scope="module")
def _exact_float32():
    # float32 means float32: neither torch's reference products nor ours may use TF32.
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def test_cuda_extension_loaded():
    assert torch_neat.HAS_CUDA, "torch_neat._C_cuda was not built or not loaded (see _load.py)"


def make_inputs(n_shape, d_in, d_out, r, depth, dt, pdt, bias=True, seed=0, device=DEV):
    g = torch.Generator(device="cpu").manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale)

    x = rnd(*n_shape, d_in)
    W = rnd(d_out, d_in, scale=1.0 / d_in**0.5)
    b = rnd(d_out) if bias else None
    A = rnd(r, d_out, scale=1.0 / d_out**0.5)
    H = [rnd(r, r, scale=1.0 / r**0.5) for _ in range(depth - 2)]
    B = rnd(d_out, r, scale=1.0 / r**0.5)  # never zero here: the adapter term must be tested
    cast = lambda t, d: None if t is None else t.to(device=device, dtype=d)  # noqa: E731
    return cast(x, dt), cast(W, dt), cast(b, dt), cast(A, pdt), cast(B, pdt), [cast(h, pdt) for h in H]


def run_both(x, W, b, A, B, H, act, scale, with_base, grad_mask=None, gy=None):
    """Our op and the float64 reference, outputs and gradients of every input that requires grad."""
    leaves = [x, W, b, A, B, *H]
    mask = grad_mask or [t is not None for t in leaves]
    ours = [t.detach().clone().requires_grad_(m) if t is not None else None for t, m in zip(leaves, mask)]
    refs = [t.detach().to(torch.float64).clone().requires_grad_(m) if t is not None else None for t, m in zip(leaves, mask)]
    if with_base:
        y = torch_neat.linear(ours[0], ours[1], ours[2], ours[3], ours[4], ours[5:], act, scale)
    else:
        y = torch_neat.adapter(ours[0], ours[1], ours[3], ours[4], ours[5:], act, scale)
    yr = ref.neat(refs[0], refs[1], refs[2] if with_base else None, refs[3], refs[4], refs[5:], act, scale, with_base)
    if gy is None:
        gy = torch.randn(y.shape, dtype=torch.float64, device=y.device)
    targets = [(t, tr) for t, tr, m in zip(ours, refs, mask) if t is not None and m]
    if targets and y.numel() >= 0:
        y.backward(gy.to(y.dtype))
        yr.backward(gy.to(torch.float64))
    return y, yr, targets


def check(name, out, want, tol):
    assert out is not None, f"{name}: no gradient"
    err = ref.rel_err(out, want)
    assert err <= tol, ref.describe_mismatch(name, out, want, tol)


NAMES = ["x", "weight", "bias", "A", "B"] + [f"hidden[{i}]" for i in range(8)]


def check_all(y, yr, targets, tol, leaves_names=NAMES):
    check("output", y, yr, tol)
    for i, (t, tr) in enumerate(targets):
        check(f"grad {i}", t.grad, tr.grad, tol)


@pytest.mark.parametrize("dtypes", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize("depth", [2, 4, 10])
@pytest.mark.parametrize("act", sorted(ref.ACTIVATIONS))
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("with_base", [True, False], ids=["linear", "adapter"])
def test_matches_reference(dtypes, depth, act, bias, with_base):
    dt, pdt = dtypes
    if not with_base and bias:
        pytest.skip("the adapter op has no bias")
    x, W, b, A, B, H = make_inputs((7,), 37, 53, 3, depth, dt, pdt, bias=bias)
    y, yr, targets = run_both(x, W, b, A, B, H, act, 0.7, with_base)
    assert y.dtype == dt and y.device.type == "cuda"
    tol = TOL[dt]
    check("output", y, yr, tol)
    for (t, tr), name in zip(targets, [n for n, leaf in zip(NAMES, [x, W, b, A, B, *H]) if leaf is not None]):
        assert t.grad is not None, f"no gradient for {name}"
        assert t.grad.dtype == t.dtype, f"{name}: gradient dtype {t.grad.dtype} != {t.dtype}"
        check(f"d{name}", t.grad, tr.grad, tol)


@pytest.mark.parametrize("dtypes", DTYPES[:3], ids=DT_IDS[:3])
@pytest.mark.parametrize("n_shape", [(0,), (1,), (2, 3), (4, 1, 5)], ids=["N0", "N1", "lead2", "lead3"])
def test_odd_shapes_and_leading_dims(dtypes, n_shape):
    dt, pdt = dtypes
    x, W, b, A, B, H = make_inputs(n_shape, 37, 53, 3, 4, dt, pdt)
    y, yr, targets = run_both(x, W, b, A, B, H, "gelu", 1.3, True)
    assert y.shape == (*n_shape, 53)
    tol = TOL[dt]
    check("output", y, yr, tol)
    for t, tr in targets:
        if tr.grad is None or tr.grad.abs().sum() == 0:
            # N = 0: every gradient is zero (dx is empty) and must be written as zeros.
            assert t.grad is not None and torch.count_nonzero(t.grad) == 0
        else:
            check("grad", t.grad, tr.grad, tol)


@pytest.mark.parametrize("r", [1, 16, 70])
def test_ranks(r):
    x, W, b, A, B, H = make_inputs((33,), 64, 48, r, 6, torch.float32, torch.float32)
    y, yr, targets = run_both(x, W, b, A, B, H, "silu", 0.5, True)
    check_all(y, yr, targets, TOL[torch.float32])


def _noncontig(t, kind):
    if t is None:
        return None
    if kind == "T":  # same values, transposed storage
        return t.detach().t().contiguous().t()
    if kind == "step":  # every other element of a wider buffer
        wide = torch.zeros(*t.shape[:-1], 2 * t.shape[-1], dtype=t.dtype, device=t.device)
        wide[..., ::2] = t
        return wide[..., ::2]
    raise ValueError(kind)


@pytest.mark.parametrize("dtypes", DTYPES[:3] + DTYPES[4:5], ids=DT_IDS[:3] + DT_IDS[4:5])
@pytest.mark.parametrize("kind", ["T", "step"])
def test_non_contiguous_inputs(dtypes, kind):
    dt, pdt = dtypes
    x, W, b, A, B, H = make_inputs((9,), 37, 53, 3, 4, dt, pdt)
    x, W, A, B = (_noncontig(t, kind) for t in (x, W, A, B))
    b = _noncontig(b.unsqueeze(0), "step").squeeze(0) if kind == "step" else b
    H = [_noncontig(h, kind) for h in H]
    assert not x.is_contiguous() and not W.is_contiguous()
    y, yr, targets = run_both(x, W, b, A, B, H, "tanh", 0.9, True)
    check_all(y, yr, targets, TOL[dt])


def test_expanded_grad_output():
    # loss = y.sum() hands the backward an expanded (stride 0) grad_out.
    x, W, b, A, B, H = make_inputs((6,), 37, 53, 3, 2, torch.float64, torch.float64)
    leaves = [t.clone().requires_grad_() for t in (x, W, b, A, B)]
    refs = [t.clone().requires_grad_() for t in (x, W, b, A, B)]
    torch_neat.linear(*leaves, [], "sin", 0.5).sum().backward()
    ref.neat(*refs, [], "sin", 0.5).sum().backward()
    for t, tr in zip(leaves, refs):
        check("grad", t.grad, tr.grad, TOL[torch.float64])


@pytest.mark.parametrize("mask", [[True, False, False, False, False], [False, False, False, True, False], [False, False, False, False, True], [False, True, True, False, False]])
def test_only_requested_gradients(mask):
    x, W, b, A, B, H = make_inputs((5,), 37, 53, 3, 4, torch.float32, torch.float32)
    full = mask + [not any(mask)] * len(H)
    y, yr, targets = run_both(x, W, b, A, B, H, "relu", 1.0, True, grad_mask=full)
    check_all(y, yr, targets, TOL[torch.float32])


@pytest.mark.parametrize("dt", [torch.float32, torch.float64])
@pytest.mark.parametrize("depth", [2, 6])
def test_cuda_matches_cpu(dt, depth):
    x, W, b, A, B, H = make_inputs((11,), 37, 53, 5, depth, dt, dt, device="cpu")
    outs = {}
    for dev in ("cpu", "cuda"):
        leaves = [t.to(dev).clone().requires_grad_() for t in (x, W, b, A, B, *H)]
        y = torch_neat.linear(*leaves[:5], leaves[5:], "gelu_tanh", 0.8)
        gy = torch.linspace(-1, 1, y.numel(), dtype=dt).reshape(y.shape).to(dev)
        y.backward(gy)
        outs[dev] = [y] + [t.grad for t in leaves]
    for a, c in zip(outs["cpu"], outs["cuda"]):
        check("cuda vs cpu", c, a, TOL[dt])


def test_compute_g():
    for dt, pdt in DTYPES:
        x, W, b, A, B, H = make_inputs((1,), 37, 53, 3, 6, dt, pdt)
        G = torch_neat.compute_g(W, A, H, "silu")
        Gr = ref.compute_g(W.double(), A.double(), [h.double() for h in H], "silu")
        check(f"G {dt}/{pdt}", G, Gr, TOL[dt])


def test_deterministic():
    x, W, b, A, B, H = make_inputs((300,), 256, 192, 16, 6, torch.float32, torch.float32)
    runs = []
    for _ in range(2):
        leaves = [t.clone().requires_grad_() for t in (x, W, b, A, B, *H)]
        y = torch_neat.linear(*leaves[:5], leaves[5:], "gelu", 0.5)
        y.backward(torch.ones_like(y))
        runs.append([y.detach()] + [t.grad for t in leaves])
    for a, c in zip(*runs):
        assert torch.equal(a, c), "two identical calls gave different bits"


@pytest.mark.parametrize("depth", [2, 4])
@pytest.mark.parametrize("act", ["sin", "gelu", "silu", "tanh"])
def test_gradcheck_float64(depth, act):
    x, W, b, A, B, H = make_inputs((3,), 5, 4, 3, depth, torch.float64, torch.float64)
    leaves = [t.clone().requires_grad_() for t in (x, W, b, A, B, *H)]
    nh = len(H)

    def f(x, W, b, A, B, *H):
        return torch_neat.linear(x, W, b, A, B, list(H), act, 0.7)

    def g(x, W, A, B, *H):
        return torch_neat.adapter(x, W, A, B, list(H), act, 0.7)

    assert torch.autograd.gradcheck(f, tuple(leaves), eps=1e-6, atol=1e-8)
    assert torch.autograd.gradcheck(g, tuple(leaves[:2] + leaves[3:]), eps=1e-6, atol=1e-8)
    assert nh == depth - 2


@pytest.mark.parametrize("dt", [torch.float32, torch.float64])
def test_opcheck(dt):
    x, W, b, A, B, H = make_inputs((2, 3), 6, 5, 2, 4, dt, dt)
    req = lambda t: t.clone().requires_grad_()  # noqa: E731
    torch.library.opcheck(torch.ops.neat.linear.default, (req(x), req(W), req(b), req(A), req(B), [req(h) for h in H], "silu", 0.5))
    torch.library.opcheck(torch.ops.neat.linear.default, (req(x), W, None, req(A), req(B), [], "relu", 1.0))
    torch.library.opcheck(torch.ops.neat.adapter.default, (req(x), W, req(A), req(B), [req(h) for h in H], "tanh", 2.0))
    torch.library.opcheck(torch.ops.neat.compute_g.default, (W, A, H, "gelu"))


def test_cuda_graph_capture_and_replay():
    x, W, b, A, B, H = make_inputs((64,), 128, 96, 8, 4, torch.float32, torch.float32)
    gy = torch.randn(64, 96, device=DEV)
    mask = [True, True, True, True, True, True]
    args = lambda xx, gg: (gg, xx, W, b, A, B, H, "gelu", 0.5, mask)  # noqa: E731

    # Warm up on a side stream (cuBLAS handle creation and the allocator's pools happen here).
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            torch.ops.neat.linear(x, W, b, A, B, H, "gelu", 0.5)
            torch.ops.neat.linear_backward(*args(x, gy))
    torch.cuda.current_stream().wait_stream(s)

    static_x, static_gy = x.clone(), gy.clone()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_y = torch.ops.neat.linear(static_x, W, b, A, B, H, "gelu", 0.5)
        static_grads = torch.ops.neat.linear_backward(*args(static_x, static_gy))

    for seed in range(3):
        torch.manual_seed(seed)
        new_x, new_gy = torch.randn_like(x), torch.randn_like(gy)
        static_x.copy_(new_x)
        static_gy.copy_(new_gy)
        graph.replay()
        eager_y = torch.ops.neat.linear(new_x, W, b, A, B, H, "gelu", 0.5)
        eager_grads = torch.ops.neat.linear_backward(*args(new_x, new_gy))
        torch.cuda.synchronize()
        # Same kernels on the same data: equal up to cuBLAS picking another algorithm at most.
        check("replayed y", static_y, eager_y, 1e-6)
        for sg, eg in zip(list(static_grads[:5]) + list(static_grads[5]), list(eager_grads[:5]) + list(eager_grads[5])):
            check("replayed grad", sg, eg, 1e-6)


def test_two_streams():
    # Two streams each run their own problem concurrently; each result must equal the one computed
    # alone on the default stream (a launch on the wrong stream would race with the producer).
    probs = [make_inputs((1024,), 512, 768, 16, 4, torch.float32, torch.float32, seed=s) for s in (1, 2)]
    want = [torch_neat.linear(p[0], p[1], p[2], p[3], p[4], p[5], "relu", 1.0) for p in probs]
    torch.cuda.synchronize()
    streams = [torch.cuda.Stream(), torch.cuda.Stream()]
    got = [None, None]
    for _ in range(5):
        for i, (st, p) in enumerate(zip(streams, probs)):
            with torch.cuda.stream(st):
                xi = p[0] * 1.0  # produced on this stream, consumed by the op on this stream
                got[i] = torch_neat.linear(xi, p[1], p[2], p[3], p[4], p[5], "relu", 1.0)
        torch.cuda.synchronize()
        for g, w in zip(got, want):
            check("side-stream result", g, w, 1e-6)


def test_large_bf16_matches_reference():
    x, W, b, A, B, H = make_inputs((512,), 1024, 2048, 16, 2, torch.bfloat16, torch.bfloat16)
    y, yr, targets = run_both(x, W, b, A, B, H, "relu", 2.0, True)
    check_all(y, yr, targets, TOL[torch.bfloat16])
