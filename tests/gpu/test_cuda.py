"""The Python suite's checks on CUDA tensors (docs/design.md §6, tests/gpu).

Run on a machine with a GPU (tests/gpu/run.sh); the module is skipped where CUDA is absent, so
this folder is never part of CI. Every result is compared against reference.py in float64 with the
per-dtype bounds and rules of gpu_checks.py: relative Frobenius error plus a max-abs check; dA and
dH bounded by the magnitude of the products forming them; the adapters of a mixed-precision call
rounded to the half dtype before the float64 reference (the kernels' rule). Every random value
comes from a seeded generator.
"""

from __future__ import annotations

import math
import os
import sys

import pytest
import torch

if not torch.cuda.is_available():
    pytest.skip("tests/gpu needs a CUDA device", allow_module_level=True)

# One float64 reference serves the CPU and the GPU suites.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(_HERE, "..", "python"))
sys.path.insert(0, _HERE)
import reference as ref  # noqa: E402

import gpu_checks as gc  # noqa: E402
import torch_neat  # noqa: E402
from torch_neat import ops as neat_ops  # noqa: E402

DEV = torch.device("cuda")

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

BIAS = pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
WITH_BASE = pytest.mark.parametrize("with_base", [True, False], ids=["linear", "adapter"])


def skip_adapter_with_bias(with_base: bool, bias: bool) -> None:
    if not with_base and bias:
        pytest.skip("the adapter op has no bias")


@pytest.fixture(autouse=True)
def _seeded():
    # every generator, the CUDA ones included; the tests draw from explicit CPU generators anyway
    torch.manual_seed(0)


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


def make_inputs(n_shape, d_in, d_out, r, depth, dt, pdt, bias=True, seed=0, device=DEV, act=None):
    g = torch.Generator(device="cpu").manual_seed(seed)
    unit = gc.input_unit(act) if act else 1.0  # pre-activations O(1) in the activation's unit

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale)

    x = rnd(*n_shape, d_in)
    W = rnd(d_out, d_in, scale=1.0 / d_in**0.5)
    b = rnd(d_out) if bias else None
    A = rnd(r, d_out, scale=unit / d_out**0.5)
    H = [rnd(r, r, scale=unit / r**0.5) for _ in range(depth - 2)]
    B = rnd(d_out, r, scale=1.0 / r**0.5)  # never zero here: the adapter term must be tested
    cast = lambda t, d: None if t is None else t.to(device=device, dtype=d)  # noqa: E731
    return cast(x, dt), cast(W, dt), cast(b, dt), cast(A, pdt), cast(B, pdt), [cast(h, pdt) for h in H]


NAMES = ["x", "weight", "bias", "A", "B"] + [f"hidden[{i}]" for i in range(8)]


class Run:
    """One call of our op and of the float64 reference, with what the checks need."""

    def __init__(self, y, yr, targets, scales, inputs, dtype):
        self.y, self.yr = y, yr
        self.targets = targets  # [(name, our leaf, reference leaf)] of the inputs that require grad
        self.scales = scales  # name -> formation magnitude, for A and the hidden layers
        self.inputs = inputs  # what our op was called with (views of the leaves, when asked)
        self.dtype = dtype  # the call's compute dtype: x's


def run_both(x, W, b, A, B, H, act, scale, with_base, grad_mask=None, gy=None, view=None, seed=0):
    """Our op and the float64 reference, outputs and gradients of every input that requires grad.

    ``view`` (optional) turns each of our leaves into what the op receives: strided views are built
    here, after the leaves are made, because clone() keeps strides only of dense tensors.
    """
    leaves = [x, W, b, A, B, *H]
    mask = grad_mask or [t is not None for t in leaves]
    dt = x.dtype
    ours = [t.detach().clone().requires_grad_(m) if t is not None else None for t, m in zip(leaves, mask)]
    refs = [gc.reference_copy(t, dt, m) for t, m in zip(leaves, mask)]
    ins = [view(t) if (view is not None and t is not None) else t for t in ours]
    if with_base:
        y = torch_neat.linear(ins[0], ins[1], ins[2], ins[3], ins[4], ins[5:], act, scale)
    else:
        y = torch_neat.adapter(ins[0], ins[1], ins[3], ins[4], ins[5:], act, scale)
    yr = ref.neat(refs[0], refs[1], refs[2] if with_base else None, refs[3], refs[4], refs[5:], act, scale, with_base)
    if gy is None:
        gy = gc.seeded_normal(y.shape, seed + 1000, device=y.device)
    names = NAMES[: len(leaves)]
    targets = [(n, t, tr) for n, t, tr, m in zip(names, ours, refs, mask) if t is not None and m]
    scales = {}
    if targets:
        y.backward(gy.to(y.dtype))
        yr.backward(gy.to(torch.float64))
        mags = gc.formation_scales(refs[0], refs[1], refs[3], refs[4], refs[5:], act, scale, gy)
        scales = dict(zip(["A"] + NAMES[5 : 5 + len(H)], mags))
    return Run(y, yr, targets, scales, ins, dt)


def check(name, out, want, dt):
    gc.check(name, out, want, dt)


def check_same(name, out, want, tol=1e-6):
    # two runs of the same kernels on the same data: equal up to cuBLAS picking another algorithm
    err = ref.rel_err(out, want)
    assert err <= tol, ref.describe_mismatch(name, out, want, tol)


def check_grad(run, name, t, tr):
    assert t.grad is not None, f"no gradient for {name}"
    assert t.grad.dtype == t.dtype, f"{name}: gradient dtype {t.grad.dtype} != {t.dtype}"
    if name in run.scales:
        gc.check_scaled(f"d{name}", t.grad, tr.grad, run.scales[name], run.dtype)
    else:
        gc.check(f"d{name}", t.grad, tr.grad, run.dtype)


def check_all(run):
    check("output", run.y, run.yr, run.dtype)
    for name, t, tr in run.targets:
        check_grad(run, name, t, tr)


@pytest.mark.parametrize("dtypes", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize("depth", [2, 4, 10])
@pytest.mark.parametrize("act", sorted(ref.ACTIVATIONS))
@BIAS
@WITH_BASE
def test_matches_reference(dtypes, depth, act, bias, with_base):
    dt, pdt = dtypes
    skip_adapter_with_bias(with_base, bias)
    x, W, b, A, B, H = make_inputs((7,), 37, 53, 3, depth, dt, pdt, bias=bias, act=act)
    run = run_both(x, W, b, A, B, H, act, 0.7, with_base)
    assert run.y.dtype == dt and run.y.device.type == DEV.type
    check_all(run)


@pytest.mark.parametrize("dtypes", DTYPES[:3], ids=DT_IDS[:3])
@pytest.mark.parametrize("n_shape", [(0,), (1,), (2, 3), (4, 1, 5)], ids=["N0", "N1", "lead2", "lead3"])
def test_odd_shapes_and_leading_dims(dtypes, n_shape):
    dt, pdt = dtypes
    x, W, b, A, B, H = make_inputs(n_shape, 37, 53, 3, 4, dt, pdt)
    run = run_both(x, W, b, A, B, H, "gelu", 1.3, True)
    assert run.y.shape == (*n_shape, 53)
    check("output", run.y, run.yr, dt)
    for name, t, tr in run.targets:
        if tr.grad is None or tr.grad.abs().sum() == 0:
            # N = 0: every gradient is zero (dx is empty) and must be written as zeros.
            assert t.grad is not None and torch.count_nonzero(t.grad) == 0, f"d{name} must be zeros"
        else:
            check_grad(run, name, t, tr)


@pytest.mark.parametrize("r", [1, 16, 70])
def test_ranks(r):
    x, W, b, A, B, H = make_inputs((33,), 64, 48, r, 6, torch.float32, torch.float32)
    check_all(run_both(x, W, b, A, B, H, "silu", 0.5, True))


def _noncontig(t, kind):
    """The same values in another layout, differentiably (gradients reach t)."""
    if t is None:
        return None
    if kind == "T":  # transposed storage (a 1-D tensor has none: it gets the stepped layout)
        if t.dim() < 2:
            return _noncontig(t, "step")
        return t.transpose(-1, -2).contiguous().transpose(-1, -2)
    if kind == "step":  # every other element of a wider buffer
        wide = t.new_zeros(*t.shape[:-1], 2 * t.shape[-1])
        wide[..., ::2] = t
        return wide[..., ::2]
    raise ValueError(kind)


@pytest.mark.parametrize("dtypes", DTYPES[:3] + DTYPES[4:5], ids=DT_IDS[:3] + DT_IDS[4:5])
@pytest.mark.parametrize("kind", ["T", "step"])
def test_non_contiguous_inputs(dtypes, kind):
    dt, pdt = dtypes
    x, W, b, A, B, H = make_inputs((9,), 37, 53, 3, 4, dt, pdt)
    # the views are made of the leaves inside run_both: a clone of a stepped view would be dense
    run = run_both(x, W, b, A, B, H, "tanh", 0.9, True, view=lambda t: _noncontig(t, kind))
    for name, t in zip(NAMES, run.inputs):
        if t is not None and t.numel() > 1:
            assert not t.is_contiguous(), f"{name} reached the op contiguous: the strided path is not tested"
    check_all(run)


def test_expanded_grad_output():
    # loss = y.sum() hands the backward an expanded (stride 0) grad_out.
    x, W, b, A, B, H = make_inputs((6,), 37, 53, 3, 2, torch.float64, torch.float64)
    leaves = [t.clone().requires_grad_() for t in (x, W, b, A, B)]
    refs = [t.clone().requires_grad_() for t in (x, W, b, A, B)]
    torch_neat.linear(*leaves, [], "sin", 0.5).sum().backward()
    ref.neat(*refs, [], "sin", 0.5).sum().backward()
    for t, tr in zip(leaves, refs):
        check("grad", t.grad, tr.grad, torch.float64)


@pytest.mark.parametrize("mask", [[True, False, False, False, False], [False, False, False, True, False], [False, False, False, False, True], [False, True, True, False, False]])
def test_only_requested_gradients(mask):
    x, W, b, A, B, H = make_inputs((5,), 37, 53, 3, 4, torch.float32, torch.float32)
    full = mask + [not any(mask)] * len(H)
    run = run_both(x, W, b, A, B, H, "relu", 1.0, True, grad_mask=full)
    check_all(run)


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
        check("cuda vs cpu", c, a, dt)


def test_compute_g():
    for dt, pdt in DTYPES:
        x, W, b, A, B, H = make_inputs((1,), 37, 53, 3, 6, dt, pdt)
        G = torch_neat.compute_g(W, A, H, "silu")
        assert G.dtype == pdt, f"G has A's dtype: {G.dtype} != {pdt}"
        # mixed precision: A and H rounded to W's dtype first, as the kernels do
        Gr = ref.compute_g(W.double(), gc.reference_copy(A, dt, False), [gc.reference_copy(h, dt, False) for h in H], "silu")
        check(f"G {dt}/{pdt}", G, Gr, dt)


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
    gy = gc.seeded_normal((64, 96), 11, device=DEV, dtype=torch.float32)
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
        new_x = gc.seeded_normal(x.shape, 20 + seed, device=DEV, dtype=x.dtype)
        new_gy = gc.seeded_normal(gy.shape, 30 + seed, device=DEV, dtype=gy.dtype)
        static_x.copy_(new_x)
        static_gy.copy_(new_gy)
        graph.replay()
        eager_y = torch.ops.neat.linear(new_x, W, b, A, B, H, "gelu", 0.5)
        eager_grads = torch.ops.neat.linear_backward(*args(new_x, new_gy))
        torch.cuda.synchronize()
        # Same kernels on the same data: equal up to cuBLAS picking another algorithm at most.
        check_same("replayed y", static_y, eager_y)
        for sg, eg in zip(list(static_grads[:5]) + list(static_grads[5]), list(eager_grads[:5]) + list(eager_grads[5])):
            check_same("replayed grad", sg, eg)


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
            check_same("side-stream result", g, w)


def test_large_bf16_matches_reference():
    x, W, b, A, B, H = make_inputs((512,), 1024, 2048, 16, 2, torch.bfloat16, torch.bfloat16)
    check_all(run_both(x, W, b, A, B, H, "relu", 2.0, True))


@pytest.mark.parametrize("dt", [torch.bfloat16, torch.float16], ids=["bf16", "f16"])
@BIAS
def test_llama_size_mixed_precision_depth10(dt, bias):
    # LLaMA-7B's square projection at training batch size: N = d = 4096, r = 32, depth 10 (8 hidden
    # layers), half x and W with float32 adapters, frozen W (no dW), against float64 on the GPU.
    x, W, b, A, B, H = make_inputs((4096,), 4096, 4096, 32, 10, dt, torch.float32, bias=bias, seed=5)
    mask = [True, False, bias, True, True] + [True] * len(H)
    run = run_both(x, W, b, A, B, H, "relu", 2.0, True, grad_mask=mask, seed=5)
    assert run.y.dtype == dt
    assert all(t.grad.dtype == torch.float32 for name, t, _ in run.targets if name not in ("x", "bias"))
    check_all(run)
    del run
    torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------------------
# torch.autocast as HF Trainer uses it: float32 weights and adapters, half autocast (docs/design.md §4).
# x, W and b run in the autocast dtype; float32 A, B, H stay float32 and the kernels' mixed-precision
# mode rounds them; the output has the autocast dtype, as F.linear's.


def _op_node_saved(y):
    """The tensors saved by the autograd node of our op (registered op or the modules' fast path)."""
    node = y.grad_fn
    while node is not None and not hasattr(node, "saved_tensors"):
        node = node.next_functions[0][0] if node.next_functions else None
    assert node is not None, "no autograd node of torch-neat behind the output"
    return node.saved_tensors


@pytest.mark.parametrize("ac", [torch.bfloat16, torch.float16], ids=["bf16", "f16"])
@WITH_BASE
@pytest.mark.parametrize("route", ["op", "fused"])
@pytest.mark.parametrize("x_dtype", [torch.float32, torch.bfloat16], ids=["x_f32", "x_bf16"])
def test_autocast_runs_in_the_autocast_dtype(ac, with_base, route, x_dtype):
    x, W, b, A, B, H = make_inputs((2, 7), 37, 53, 3, 4, torch.float32, torch.float32, bias=with_base)
    x = x.to(x_dtype)
    ours = [None if t is None else t.clone().requires_grad_(t is not W) for t in (x, W, b, A, B, *H)]
    lx, lW, lb, lA, lB, *lH = ours
    with torch.autocast("cuda", dtype=ac):
        if route == "op":
            y = torch_neat.linear(lx, lW, lb, lA, lB, lH, "gelu", 0.7) if with_base else torch_neat.adapter(lx, lW, lA, lB, lH, "gelu", 0.7)
        else:
            y = neat_ops.fused_linear(lx, lW, lb, lA, lB, lH, "gelu", 0.7) if with_base else neat_ops.fused_adapter(lx, lW, lA, lB, lH, "gelu", 0.7)
    assert y.dtype == ac, "under autocast the output has the autocast dtype, as F.linear's"
    saved = _op_node_saved(y)
    assert saved[0].dtype == ac and saved[1].dtype == ac, (
        f"the kernels saw x {saved[0].dtype}, W {saved[1].dtype}: autocast must run them in {ac}, not float32"
    )
    assert all(t.dtype == torch.float32 for t in saved[-(2 + len(H)):]), "float32 adapters stay float32"
    gy = gc.seeded_normal(y.shape, 3, device=DEV)
    y.backward(gy.to(ac))
    assert lx.grad.dtype == x_dtype and all(t.grad.dtype == torch.float32 for t in (lA, lB, *lH))

    # the explicit mixed-precision call autocast stands for: same kernels, same bits
    m = [None if t is None else t.detach().clone() for t in (x, W, b, A, B, *H)]
    m[0], m[1] = m[0].to(ac), m[1].to(ac)
    if m[2] is not None:
        m[2] = m[2].to(ac)
    run = run_both(m[0], m[1], m[2], m[3], m[4], m[5:], "gelu", 0.7, with_base, grad_mask=[True, False, with_base, True, True, True, True], gy=gy)
    assert torch.equal(y, run.y), "autocast result differs from the explicit mixed-precision call"
    grads = {"x": lx.grad, "bias": lb.grad if lb is not None else None, "A": lA.grad, "B": lB.grad, "hidden[0]": lH[0].grad, "hidden[1]": lH[1].grad}
    for name, t, tr in run.targets:
        want = t.grad.to(grads[name].dtype)
        assert torch.equal(grads[name], want), f"d{name}: autocast differs from the explicit mixed-precision call"
    # and both against float64 on the rounded values
    check_all(run)


def test_neat_linear_and_tiny_llama_under_autocast():
    pytest.importorskip("transformers")
    from hf_helpers import tiny_llama_for_autocast

    model = tiny_llama_for_autocast(64, 96)
    model.to(DEV).train()
    seen = []
    for _, layer in torch_neat.neat_layers(model):
        layer.register_forward_hook(lambda m, a, out: seen.append(_op_node_saved(out)[1].dtype if out.requires_grad else None))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=5e-2)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 61, (4, 12), generator=g).to(DEV)
    losses = []
    for _ in range(8):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        assert all(p.grad.dtype == torch.float32 for p in params)
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0] - 0.05, losses
    assert seen and all(d == torch.bfloat16 for d in seen), f"NEAT layers ran their base GEMM in {set(seen)}"


# ---- the two rank-r paths (NEAT_CUDA_RANK_PATH, cuda/entry.cuh) ---------------------------------
# tests/gpu/run.sh runs this whole file once per path; the tests below set the path themselves.

RANK_PATHS = ["cublas", "fused"]


@pytest.mark.parametrize("dtypes", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize("r", [1, 8, 16, 32, 64, 65])
@BIAS
@WITH_BASE
def test_rank_paths_match_reference_and_each_other(monkeypatch, dtypes, r, bias, with_base):
    # N, d_in and d_out are not multiples of any tile of the fused kernels (16 rows, 32 columns);
    # r = 65 is past the fused kernels' limit, where the fused path is the cuBLAS one.
    dt, pdt = dtypes
    skip_adapter_with_bias(with_base, bias)
    x, W, b, A, B, H = make_inputs((1001,), 200, 301, r, 2, dt, pdt, bias=bias, act="gelu")
    runs = {}
    for path in RANK_PATHS:
        monkeypatch.setenv("NEAT_CUDA_RANK_PATH", path)
        runs[path] = run_both(x, W, b, A, B, H, "gelu", 0.7, with_base, seed=r)
        check_all(runs[path])
    c, f = runs["cublas"], runs["fused"]
    gc.check("fused vs cublas: output", f.y, c.y.to(torch.float64), dt)
    for (name, tf, _), (_, tc, _) in zip(f.targets, c.targets):
        if name not in c.scales:  # dA, dH: the reference check above bounds them
            gc.check(f"fused vs cublas: d{name}", tf.grad, tc.grad.to(torch.float64), dt)


def _kernels_per_step(x, W, b, A, B, H):
    """CUDA kernel launches of one forward + backward (cuBLAS's included), from torch.profiler."""
    from torch.profiler import ProfilerActivity, profile

    leaves = [t.detach().clone().requires_grad_() for t in (x, A, B)]
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        y = torch_neat.linear(leaves[0], W, b, leaves[1], leaves[2], H, "relu", 2.0)
        y.backward(torch.ones_like(y))
        torch.cuda.synchronize()
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    # the ones_like fill and autograd's own work are the same on both paths
    return len(kernels), sorted({e.name for e in kernels})


@BIAS
def test_fused_path_launches_fewer_kernels(monkeypatch, bias):
    x, W, b, A, B, H = make_inputs((2048,), 1024, 1024, 16, 2, torch.bfloat16, torch.bfloat16, bias=bias)
    counts = {}
    for path in RANK_PATHS:
        monkeypatch.setenv("NEAT_CUDA_RANK_PATH", path)
        _kernels_per_step(x, W, b, A, B, H)  # warm-up: handles, allocator
        counts[path] = _kernels_per_step(x, W, b, A, B, H)
    print(f"kernels per step (bias={bias}): cublas {counts['cublas'][0]}, fused {counts['fused'][0]}; "
          f"fused kernels: {[n for n in counts['fused'][1] if 'fused_' in n]}")
    assert any("fused_rows" in n for n in counts["fused"][1]), counts["fused"][1]
    assert not any("fused_" in n for n in counts["cublas"][1]), counts["cublas"][1]
    assert counts["fused"][0] < counts["cublas"][0], counts


def test_rank_path_unknown_value_is_refused(monkeypatch):
    x, W, b, A, B, H = make_inputs((4,), 16, 24, 2, 2, torch.float32, torch.float32)
    monkeypatch.setenv("NEAT_CUDA_RANK_PATH", "fast")
    with pytest.raises((RuntimeError, ValueError), match="NEAT_CUDA_RANK_PATH"):
        torch_neat.linear(x, W, b, A, B, H, "relu", 1.0)
