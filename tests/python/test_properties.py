"""Property tests (Hypothesis) of neat::linear, neat::adapter and neat::compute_g (docs/design.md §6.1).

Every example draws shapes (N 0 and 1 included, 0..2 extra leading dims, output dims on both sides of
16, reduction lengths on both sides of 256, odd and prime r), a memory layout for every tensor argument
(contiguous, transposed, sliced with a step, expanded with stride 0, overlapping as_strided), which
inputs require grad, dtype, thread count, activation, hidden depth, bias and scale. The forward result
and every requested gradient are compared with the plain-PyTorch float64 reference (reference.py),
computed from the very same (possibly float32-rounded) input values, by relative Frobenius error
(docs/design.md §4). A separate property checks that results are bit-identical across thread counts.

Profiles (HYPOTHESIS_PROFILE=<name>, default "ci"):
  ci   derandomized, bounded example counts (the file runs in about a minute on 2 cores)
  dev  random, 10x the examples; use it when touching kernels, e.g.
       HYPOTHESIS_PROFILE=dev python3 -m pytest tests/python/test_properties.py
A failing example is shrunk and printed (with a @reproduce_failure blob); the tensors are rebuilt from
the printed `seed`, so the printed Case is a complete reproducer.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Optional

import pytest
import torch
from hypothesis import HealthCheck, Phase, assume, given, note, settings
from hypothesis import strategies as st
from conftest import cpu_gemm
from reference import TOL, reference_g, reference_linear, rel_err

import torch_neat

# ---------------------------------------------------------------------------------------------
# Profiles. Example counts per test are scaled by the profile (see _examples).

_COMMON = dict(deadline=None, print_blob=True, database=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("ci", derandomize=True, **_COMMON)
settings.register_profile("dev", derandomize=False, **_COMMON)
_PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")
settings.load_profile(_PROFILE)
_SCALE = {"ci": 1, "dev": 10}.get(_PROFILE, 1)


def _examples(n: int) -> settings:
    return settings(max_examples=n * _SCALE)


KERNEL_ACTS = ["relu", "sin", "gelu", "gelu_tanh", "silu", "tanh", "identity", "sin2pi"]
ALIASES = {"silu": ["swish", "SiLU"], "identity": ["linear", "none"], "gelu_tanh": ["gelu_new", "gelu_pytorch_tanh"], "relu": ["ReLU"]}
DTYPES = {"f64": torch.float64, "f32": torch.float32}

# Tolerances. docs/design.md §4 bounds the relative Frobenius error at 1e-12 (float64) and 1e-5 (float32,
# against the float64 reference of the same rounded inputs). Some drawn examples are ill-conditioned:
# a deep stack (up to 8 hidden layers) whose gradient is a small difference of large terms, a ReLU
# whose argument is within rounding of 0, an overlapping (as_strided) input whose rows are shifted
# copies of each other, a long dot product that cancels (an r = 1 hidden gradient over K = 2053 with
# condition number 6e3 was found). There a fixed bound fails on rounding, not on a bug: PyTorch's own
# float32 evaluation misses it too. Such an example is held to a conditioning-aware bound instead:
#     max(design bound, 10 * yardstick)
# where the yardstick is the largest relative error, on the same example, of
#   - PyTorch evaluating reference.py in float32, scaled by eps(dtype) / eps(float32), and
#   - the float64 reference with every input (and dy) perturbed by a relative eps(dtype) (3 draws),
#     i.e. condition number x eps, the error any backward-stable kernel may have.
# The factor 10 allows for a different summation order and for rounding inside the stack. A real
# bug (a dropped term, a wrong residual, a stride or an index mixed up) gives errors of 1e-3 and
# above on well-conditioned examples, which is most of them. The yardstick is computed only when
# the fixed bound is missed, and the assertion message shows both numbers.
_EPS_RATIO = {torch.float32: 1.0, torch.float64: torch.finfo(torch.float64).eps / torch.finfo(torch.float32).eps}


def _tol(dtype: torch.dtype) -> float:
    return TOL[dtype]


# ---------------------------------------------------------------------------------------------
# Layouts: a tensor of a given shape whose memory is laid out in one of several ways.

LAYOUTS = ["contiguous", "transposed", "sliced", "expanded", "overlap"]


@dataclasses.dataclass(frozen=True)
class Layout:
    kind: str
    dim: int = 0  # the dim that is sliced / expanded
    step: int = 2  # slicing step; for "overlap": the stride of every dim but the last

    def __repr__(self) -> str:
        if self.kind in ("sliced", "expanded"):
            return f"{self.kind}(dim={self.dim}" + (f", step={self.step})" if self.kind == "sliced" else ")")
        if self.kind == "overlap":
            return f"overlap(stride={self.step})"
        return self.kind


def layouts(ndim: int, allow: tuple = tuple(LAYOUTS)):
    kinds = [k for k in allow if not (k == "transposed" and ndim < 2)]
    return st.builds(
        Layout,
        kind=st.sampled_from(kinds),
        dim=st.integers(0, max(ndim - 1, 0)),
        step=st.integers(1, 3),
    ).map(lambda l: dataclasses.replace(l, step=max(l.step, 2)) if l.kind == "sliced" else l)


def make_tensor(shape, layout: Layout, dtype, gen: torch.Generator, scale: float = 1.0, requires_grad: bool = False):
    """A tensor of `shape` laid out as `layout`, fresh random values; differentiable views of a leaf.

    Returns (tensor, leaf): gradients are taken with respect to `tensor` itself (a view when the
    layout is not contiguous), which is what the op's backward produces for that argument.
    """
    shape = tuple(shape)
    nd = len(shape)

    def rand(*s):
        return (torch.randn(*s, generator=gen, dtype=torch.float64) * scale).to(dtype)

    kind = layout.kind
    if kind == "contiguous" or nd == 0:
        leaf = rand(*shape)
        make = lambda t: t
    elif kind == "transposed":  # storage in reversed dim order: every stride differs from contiguous
        perm = list(range(nd))[::-1]
        leaf = rand(*[shape[p] for p in perm])
        make = lambda t: t.permute(*perm)  # reversing is its own inverse
    elif kind == "sliced":
        d = layout.dim % nd
        big = list(shape)
        big[d] = shape[d] * layout.step + 1
        leaf = rand(*big)
        idx = [slice(None)] * nd
        idx[d] = slice(1, None, layout.step)
        make = lambda t: t[tuple(idx)]
    elif kind == "expanded":  # stride 0 along one dim: repeated values
        d = layout.dim % nd
        small = list(shape)
        small[d] = 1
        leaf = rand(*small)
        make = lambda t: t.expand(*shape)
    elif kind == "overlap":  # rows overlap in memory: stride `step` (<= 3) for every dim but the last
        strides = [layout.step] * (nd - 1) + [1]
        if 0 in shape:
            need = 0
        else:
            need = 1 + sum((s - 1) * st_ for s, st_ in zip(shape, strides))
        leaf = rand(max(need, 1))
        make = lambda t: t.as_strided(shape, strides)
    else:
        raise AssertionError(kind)
    if requires_grad:
        leaf.requires_grad_(True)
    t = make(leaf)
    assert tuple(t.shape) == shape, (t.shape, shape, layout)
    return t


# ---------------------------------------------------------------------------------------------
# Cases


def dims_small_or_large():
    """A matrix dim: mostly small (both sides of 16), occasionally on both sides of 256."""
    return st.one_of(
        st.integers(1, 24),
        st.sampled_from([1, 2, 3, 5, 13, 15, 16, 17, 31, 37, 53, 64, 97]),
        st.sampled_from([255, 256, 257, 263, 300]),
    )


RANKS = st.one_of(st.sampled_from([1, 2, 3, 5, 7, 8, 11, 13, 16, 17]), st.integers(1, 20))
BATCH = st.one_of(st.sampled_from([0, 1]), st.integers(2, 20), st.sampled_from([16, 17, 33, 64]))
SCALES = st.one_of(st.sampled_from([1.0, 0.5, -2.0, 0.0]), st.floats(-4.0, 4.0, allow_nan=False, width=32))


@dataclasses.dataclass
class Case:
    op: str  # linear | adapter | compute_g
    dtype: str
    activation: str  # as passed (may be an alias on the wrapper path)
    num_hidden: int
    bias: bool
    scale: float
    shape_x: tuple  # (*lead, d_in); (d_in,) is a 1-D input
    d_out: int
    r: int
    layout: dict  # name -> Layout, for x, weight, bias, A, B, hidden[i], dy
    requires_grad: dict  # name -> bool
    threads: int
    api: str  # "op": torch.ops.neat.*, "wrapper": torch_neat.*
    hidden_none: bool  # pass hidden=None instead of [] (op path, no hidden layers)
    seed: int

    @property
    def d_in(self) -> int:
        return self.shape_x[-1]

    @property
    def kernel_activation(self) -> str:
        for k, al in ALIASES.items():
            if self.activation in al:
                return k
        return self.activation.lower()


@st.composite
def cases(draw, op: str, max_threads: int = 4, min_threads: int = 1, big_skinny: bool = False):
    dtype = draw(st.sampled_from(list(DTYPES)))
    act = draw(st.sampled_from(KERNEL_ACTS))
    num_hidden = draw(st.sampled_from([0, 2, 4, 6, 8]))
    d_out = draw(dims_small_or_large())
    d_in = draw(dims_small_or_large())
    r = draw(RANKS)
    if big_skinny:  # one output dim <= 16, reduction > 256 (the skinny GEMM paths)
        which = draw(st.sampled_from(["d_in", "d_out", "both"]))
        # Up to 8192 when only one dim is long (at most ~8192 x 300 elements per matrix).
        long_k = st.one_of(st.integers(257, 300), st.sampled_from([511, 513, 1000] + ([] if which == "both" else [2053, 4099, 8192])))
        if which in ("d_in", "both"):
            d_in = draw(long_k)
        if which in ("d_out", "both"):
            d_out = draw(long_k)
        r = draw(st.integers(1, 16))
    lead_extra = draw(st.lists(st.integers(0, 3), min_size=0, max_size=2))
    if op == "compute_g":
        shape_x = (d_in,)
    elif draw(st.integers(0, 19)) == 0:
        shape_x = (d_in,)  # 1-D input
    else:
        n = draw(st.integers(1, 16)) if big_skinny else draw(BATCH)
        shape_x = (*lead_extra, n, d_in)
    names = ["x", "weight", "bias", "A", "B", "dy"] + [f"hidden[{i}]" for i in range(num_hidden)]
    ndims = {"x": len(shape_x), "bias": 1, "dy": len(shape_x)}
    layout = {name: draw(layouts(ndims.get(name, 2)), label=None) for name in names}
    bias = op == "linear" and draw(st.booleans())
    grad_names = ["x", "weight", "A", "B"] + (["bias"] if bias else []) + [f"hidden[{i}]" for i in range(num_hidden)]
    if op == "compute_g":
        requires_grad = {}
    else:
        requires_grad = {name: draw(st.booleans()) for name in grad_names}
    api = draw(st.sampled_from(["op", "wrapper"]))
    if api == "wrapper" and act in ALIASES and draw(st.booleans()):
        act = draw(st.sampled_from(ALIASES[act]))
    return Case(
        op=op,
        dtype=dtype,
        activation=act,
        num_hidden=num_hidden,
        bias=bias,
        scale=0.0 if op == "compute_g" else draw(SCALES),
        shape_x=shape_x,
        d_out=d_out,
        r=r,
        layout=layout,
        requires_grad=requires_grad,
        threads=draw(st.integers(min_threads, max_threads)),
        api=api,
        hidden_none=num_hidden == 0 and api == "op" and draw(st.booleans()),
        seed=draw(st.integers(0, 2**31 - 1)),
    )


@dataclasses.dataclass
class Built:
    x: Optional[torch.Tensor]
    weight: torch.Tensor
    bias: Optional[torch.Tensor]
    A: torch.Tensor
    B: torch.Tensor
    hidden: list
    dy: Optional[torch.Tensor]

    def named(self) -> dict:
        d = {"x": self.x, "weight": self.weight, "bias": self.bias, "A": self.A, "B": self.B}
        d.update({f"hidden[{i}]": h for i, h in enumerate(self.hidden)})
        return d


def build(c: Case) -> Built:
    gen = torch.Generator().manual_seed(c.seed)
    dt = DTYPES[c.dtype]
    rg = c.requires_grad
    mk = lambda name, shape, scale: make_tensor(shape, c.layout[name], dt, gen, scale, rg.get(name, False))
    x = mk("x", c.shape_x, 1.0) if c.op != "compute_g" else None
    w = mk("weight", (c.d_out, c.d_in), 1.0 / math.sqrt(c.d_in))
    b = mk("bias", (c.d_out,), 1.0) if c.bias else None
    A = mk("A", (c.r, c.d_out), 1.0 / math.sqrt(c.d_out))
    B = mk("B", (c.d_out, c.r), 1.0 / math.sqrt(c.r))
    H = [mk(f"hidden[{i}]", (c.r, c.r), 1.0 / math.sqrt(c.r)) for i in range(c.num_hidden)]
    dy = None
    if c.op != "compute_g":
        dy = make_tensor((*c.shape_x[:-1], c.d_out), c.layout["dy"], dt, gen, 1.0)
    return Built(x, w, b, A, B, H, dy)


def call(c: Case, t: Built) -> torch.Tensor:
    hidden = None if c.hidden_none else t.hidden
    if c.api == "wrapper":
        if c.op == "linear":
            return torch_neat.linear(t.x, t.weight, t.bias, t.A, t.B, t.hidden, c.activation, c.scale)
        if c.op == "adapter":
            return torch_neat.adapter(t.x, t.weight, t.A, t.B, t.hidden, c.activation, c.scale)
        return torch_neat.compute_g(t.weight, t.A, t.hidden, c.activation)
    if c.op == "linear":
        return torch.ops.neat.linear(t.x, t.weight, t.bias, t.A, t.B, hidden, c.activation, c.scale)
    if c.op == "adapter":
        return torch.ops.neat.adapter(t.x, t.weight, t.A, t.B, hidden, c.activation, c.scale)
    return torch.ops.neat.compute_g(t.weight, t.A, hidden, c.activation)


def reference(c: Case, t: Built, dtype: torch.dtype = torch.float64, perturb: Optional[torch.Generator] = None):
    """Reference output and {name: grad} from the same (rounded) input values, evaluated in `dtype`.

    float64 is the reference; float32 and `perturb` (every input and dy multiplied by 1 + eps * u,
    u uniform in [-1, 1], eps of the case's dtype) give the conditioning yardsticks of _tol."""
    eps = torch.finfo(DTYPES[c.dtype]).eps

    def prep(v, rg):
        v = v.detach().to(dtype).clone()
        if perturb is not None:
            v = v * (1 + eps * (2 * torch.rand(v.shape, generator=perturb, dtype=dtype) - 1))
        return v.requires_grad_(rg)

    named = {k: (prep(v, c.requires_grad.get(k, False)) if v is not None else None) for k, v in t.named().items()}
    H = [named[f"hidden[{i}]"] for i in range(c.num_hidden)]
    act = c.kernel_activation
    if c.op == "compute_g":
        return reference_g(named["weight"], named["A"], H, act), {}
    with_base = c.op == "linear"
    ref = reference_linear(named["x"], named["weight"], named["bias"] if with_base else None, named["A"], named["B"], H, act, c.scale, with_base=with_base)
    wanted = [k for k, v in named.items() if v is not None and v.requires_grad]
    grads = {}
    if wanted:
        gs = torch.autograd.grad(ref, [named[k] for k in wanted], prep(t.dy, False))
        grads = dict(zip(wanted, gs))
    return ref, grads


def conditioning_yardstick(c: Case, t: Built, want: dict) -> dict:
    """{output name: relative error that rounding alone plausibly causes on this example} (see _tol)."""
    dt = DTYPES[c.dtype]
    evals = [(reference(c, t, torch.float32), _EPS_RATIO[dt])]
    for i in range(3):
        evals.append((reference(c, t, torch.float64, perturb=torch.Generator().manual_seed(c.seed + 101 * (i + 1))), 1.0))
    yard = {k: 0.0 for k in want}
    for (y, g), factor in evals:
        got = {"forward": y, **{f"d{k}": v for k, v in g.items()}}
        for k in want:
            yard[k] = max(yard[k], rel_err(got[k], want[k]) * factor)
    return yard


def run_op(c: Case, t: Built, threads: Optional[int] = None):
    """Output and {name: grad} of the op under `threads` intra-op threads (restored afterwards)."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads or c.threads)
    try:
        out = call(c, t)
        named = t.named()
        wanted = [k for k in named if named[k] is not None and c.requires_grad.get(k, False)]
        grads = {}
        if wanted:
            assert out.requires_grad
            gs = torch.autograd.grad(out, [named[k] for k in wanted], t.dy)
            grads = dict(zip(wanted, gs))
        return out, grads
    finally:
        torch.set_num_threads(before)


def check_against_reference(c: Case):
    note(f"shapes: x {c.shape_x}, weight ({c.d_out}, {c.d_in}), r {c.r}")
    t = build(c)
    out, grads = run_op(c, t)
    ref, ref_grads = reference(c, t)
    dt = DTYPES[c.dtype]
    assert out.dtype == dt, f"output dtype {out.dtype}, want {dt}"
    assert out.shape == ref.shape, f"output shape {tuple(out.shape)}, want {tuple(ref.shape)}"
    assert set(grads) == set(ref_grads), f"gradients {sorted(grads)}, want {sorted(ref_grads)}"
    got = {"forward": out, **{f"d{k}": g for k, g in grads.items()}}
    want = {"forward": ref, **{f"d{k}": g for k, g in ref_grads.items()}}
    for k, g in got.items():
        assert g.shape == want[k].shape, f"{k} shape {tuple(g.shape)}, want {tuple(want[k].shape)}"
        assert g.dtype == dt, f"{k} dtype {g.dtype}, want {dt}"
    errors = {k: rel_err(got[k], want[k]) for k in got}
    note("relative errors: " + ", ".join(f"{k} {v:.2e}" for k, v in errors.items()))
    tol = _tol(dt)
    missed = {k for k, e in errors.items() if not e <= tol}
    if missed:  # ill-conditioned example? measure PyTorch's own float32 error on it (see _tol)
        yard = conditioning_yardstick(c, t, {k: want[k] for k in missed})
        bounds = {k: max(tol, 10 * yard[k]) for k in missed}
        note("conditioning-aware bounds: " + ", ".join(f"{k} {v:.2e}" for k, v in bounds.items()))
        bad = {k: (errors[k], bounds[k]) for k in missed if not errors[k] <= bounds[k]}
        assert not bad, "relative Frobenius error above bound: " + ", ".join(f"{k} {e:.3e} > {b:.1e}" for k, (e, b) in bad.items())
    return errors


# ---------------------------------------------------------------------------------------------
# Properties


@_examples(600)
@given(c=cases("linear"))
def test_linear_matches_reference(c):
    check_against_reference(c)


@_examples(300)
@given(c=cases("adapter"))
def test_adapter_matches_reference(c):
    check_against_reference(c)


@_examples(300)
@given(c=cases("compute_g"))
def test_compute_g_matches_reference(c):
    check_against_reference(c)


@_examples(300)
@given(c=st.one_of(cases("linear", big_skinny=True), cases("adapter", big_skinny=True), cases("compute_g", big_skinny=True)))
def test_skinny_long_reduction_matches_reference(c):
    """One output dim <= 16 and a reduction > 256 (the skinny GEMM paths), any thread count."""
    check_against_reference(c)


def _results_equal(a, b) -> list:
    out_a, g_a = a
    out_b, g_b = b
    diffs = []
    if not torch.equal(out_a, out_b):
        diffs.append("forward")
    for k in g_a:
        if not torch.equal(g_a[k], g_b[k]):
            diffs.append(f"d{k}")
    return diffs


@_examples(300)
@given(c=st.one_of(cases("linear", min_threads=2), cases("adapter", min_threads=2), cases("compute_g", min_threads=2), cases("linear", min_threads=2, big_skinny=True)))
def test_bit_identical_across_thread_counts(c):
    t = build(c)
    with cpu_gemm("own"):  # the own GEMM's promise; a host BLAS makes none (docs/design.md §2.6)
        one = run_op(c, t, threads=1)
        many = run_op(c, t, threads=c.threads)
    diffs = _results_equal(one, many)
    assert not diffs, f"results differ between 1 and {c.threads} threads: {diffs}"
    # And the run is deterministic: the same thread count twice gives the same bits.
    with cpu_gemm("own"):
        again = run_op(c, t, threads=c.threads)
    diffs = _results_equal(many, again)
    assert not diffs, f"results differ between two runs with {c.threads} threads: {diffs}"


# Double backward (create_graph=True, e.g. gradient penalties): the derivative of <v, d<dy, y>/d(which)>
# with respect to every input that requires grad, against the float64 reference. Refusing double
# backward loudly is acceptable; returning a non-differentiable (silently zero) gradient is not.
# Few examples: the first-order properties above carry the layout / shape coverage. The bound is 10x
# the first-order one (twice the rounded operations, plus the second derivative of the activation).
@_examples(80)
@given(c=st.one_of(cases("linear", max_threads=2), cases("adapter", max_threads=2)), pick=st.integers(0, 100))
def test_double_backward_matches_reference_or_raises(c, pick):
    wanted = [k for k, v in c.requires_grad.items() if v]
    assume(wanted)
    which = wanted[pick % len(wanted)]
    note(f"differentiating d{which} again with respect to {wanted}")
    t = build(c)
    named = t.named()
    gen = torch.Generator().manual_seed(c.seed + 1)
    before = torch.get_num_threads()
    torch.set_num_threads(c.threads)
    try:
        out = call(c, t)
        (g,) = torch.autograd.grad(out, [named[which]], t.dy, create_graph=True)
        v = torch.randn(g.shape, generator=gen, dtype=torch.float64).to(g.dtype)
        if g.requires_grad:
            gg = torch.autograd.grad((g * v).sum(), [named[k] for k in wanted], allow_unused=True)
        else:
            gg = [None] * len(wanted)
    except (RuntimeError, NotImplementedError) as e:
        note(f"double backward raised: {e}")
        return
    finally:
        torch.set_num_threads(before)
    x64 = {k: (u.detach().double().clone().requires_grad_(k in wanted) if u is not None else None) for k, u in named.items()}
    H64 = [x64[f"hidden[{i}]"] for i in range(c.num_hidden)]
    with_base = c.op == "linear"
    ref = reference_linear(x64["x"], x64["weight"], x64["bias"] if with_base else None, x64["A"], x64["B"], H64, c.kernel_activation, c.scale, with_base=with_base)
    (rg,) = torch.autograd.grad(ref, [x64[which]], t.dy.detach().double(), create_graph=True)
    if rg.requires_grad:
        rgg = torch.autograd.grad((rg * v.double()).sum(), [x64[k] for k in wanted], allow_unused=True)
    else:
        rgg = [None] * len(wanted)
    tol = _tol(DTYPES[c.dtype]) * 10
    bad = []
    for k, got, want in zip(wanted, gg, rgg):
        want = torch.zeros_like(x64[k]) if want is None else want
        got = torch.zeros_like(named[k]) if got is None else got
        err = rel_err(got, want)
        note(f"d/d{k} <v, d{which}>: relative error {err:.3e}, |ref| {want.norm().item():.3e}")
        if not err <= tol:
            bad.append(f"d/d{k} <v, d{which}>: {err:.3e} (|ref| {want.norm().item():.3e}, |got| {got.norm().item():.3e})")
    assert not bad, "second derivatives above %.1e: %s" % (tol, "; ".join(bad))
