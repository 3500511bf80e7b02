"""Property tests (Hypothesis) of the quantized ops neat::qlinear, neat::qcompute_g and neat::qlowrank_linear
(docs/design.md §5.2, docs/testing.md).

Every example draws a bitsandbytes layer (NF4 or FP4, nested or not, block size 64..512, or LLM.int8), its
shape (d_out * d_in often not a multiple of the block size), N (0 and 1 included, 0..2 leading dims), r,
hidden depth, activation, bias, scale, dtype (float32 or float64 compute), the layout of x and dy, which
inputs require grad, and a thread count. The result and every requested gradient are compared with the
float64 reference (reference.py) on the W bitsandbytes' own dequantizer returns (test_quantized.bnb_weight),
by relative Frobenius error: 1e-12 in float64 (the dequantized float32 values widen exactly) and in float32
max(1e-5, 10 x the error of PyTorch evaluating the same reference in float32), the conditioning-aware bound
of test_properties.py. A second property checks the same bits at 1 and at 2-3 threads.
Profiles as in test_properties.py (HYPOTHESIS_PROFILE=ci|dev).
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import pytest
import torch
from hypothesis import given, note
from hypothesis import strategies as st

from bnb_layers import four_bit, int8
from conftest import cpu_gemm
from reference import TOL, reference_g, reference_linear, rel_err
from test_properties import LAYOUTS, _examples, layouts, make_tensor
from test_quantized import bnb_weight
from torch_neat.quantized import quantized_base

pytest.importorskip("bitsandbytes", reason="tests/run.sh installs bitsandbytes==0.50.2")  # always there in CI

ACTS = ["relu", "gelu", "silu", "tanh", "identity", "sin"]
X_LAYOUTS = tuple(k for k in LAYOUTS if k != "overlap")  # the op's x gradient of an overlapping view is a sum


@dataclasses.dataclass
class QCase:
    fmt: str
    nested: bool
    blocksize: int
    d_in: int
    d_out: int
    lead: tuple
    r: int
    num_hidden: int
    activation: str
    bias: bool
    scale: float
    dtype: torch.dtype
    x_layout: object
    dy_layout: object
    wants: dict
    threads: int
    seed: int

    def layer(self):
        torch.manual_seed(self.seed)
        if self.fmt == "int8":
            return int8(self.d_in, self.d_out, bias=self.bias)
        return four_bit(self.d_in, self.d_out, quant_type=self.fmt, nested=self.nested, blocksize=self.blocksize,
                        bias=self.bias)


@st.composite
def qcases(draw, min_threads: int = 1):
    fmt = draw(st.sampled_from(["nf4", "fp4", "int8"]))
    nd = draw(st.integers(1, 3))
    lead = tuple(draw(st.lists(st.integers(0, 9), min_size=nd - 1, max_size=nd - 1))) + (draw(st.sampled_from([0, 1, 2, 7, 33])),)
    if nd > 1 and all(n == 0 for n in lead):
        lead = lead[:-1] + (3,)
    depth_pairs = draw(st.integers(0, 3))
    return QCase(
        fmt=fmt, nested=draw(st.booleans()) and fmt != "int8",
        blocksize=draw(st.sampled_from([64, 128, 256, 512])),
        d_in=draw(st.integers(1, 160)), d_out=draw(st.integers(1, 160)), lead=lead,
        r=draw(st.sampled_from([1, 2, 3, 5, 8, 13])), num_hidden=2 * depth_pairs,
        activation=draw(st.sampled_from(ACTS)), bias=draw(st.booleans()),
        scale=draw(st.sampled_from([1.0, 0.5, 2.0, -0.3])),
        dtype=draw(st.sampled_from([torch.float32, torch.float64])),
        x_layout=draw(layouts(nd, X_LAYOUTS)), dy_layout=draw(layouts(nd, X_LAYOUTS)),
        wants={k: draw(st.booleans()) for k in ["x", "A", "B", "hidden", "bias"]},
        threads=draw(st.integers(min_threads, 3)), seed=draw(st.integers(0, 2**16)),
    )


def build(c: QCase):
    q = c.layer()
    gen = torch.Generator().manual_seed(c.seed)
    rnd = lambda *s, scale=1.0: (torch.randn(*s, generator=gen, dtype=torch.float64) * scale).to(c.dtype)  # noqa: E731
    t = {
        "x": make_tensor((*c.lead, c.d_in), c.x_layout, c.dtype, gen, requires_grad=c.wants["x"]),
        "A": rnd(c.r, c.d_out, scale=c.d_out ** -0.5).requires_grad_(c.wants["A"]),
        "B": rnd(c.d_out, c.r, scale=c.r ** -0.5).requires_grad_(c.wants["B"]),
        "hidden": [rnd(c.r, c.r, scale=c.r ** -0.5).requires_grad_(c.wants["hidden"]) for _ in range(c.num_hidden)],
        "bias": q.bias.detach().to(c.dtype).requires_grad_(c.wants["bias"]) if c.bias else None,
    }
    return q, t


def differentiable(t: dict) -> list:
    out = [(k, t[k]) for k in ["x", "A", "B", "bias"] if t[k] is not None and t[k].requires_grad]
    return out + [(f"h{i}", h) for i, h in enumerate(t["hidden"]) if h.requires_grad]


def run(c: QCase, q, t: dict, dy: Optional[torch.Tensor] = None, threads: Optional[int] = None):
    qw, qm, qo = quantized_base(q).args()
    old = torch.get_num_threads()
    torch.set_num_threads(threads or c.threads)
    try:
        y = torch.ops.neat.qlinear(t["x"], qw, qm, qo, t["bias"], t["A"], t["B"], t["hidden"], c.activation, c.scale)
        inputs = differentiable(t)
        if dy is None or not inputs:
            return y, {}
        grads = torch.autograd.grad(y, [v for _, v in inputs], dy, allow_unused=True)
        return y, {k: g for (k, _), g in zip(inputs, grads)}
    finally:
        torch.set_num_threads(old)


def reference(c: QCase, W: torch.Tensor, t: dict, dy: torch.Tensor, dtype: torch.dtype):
    cast = {k: (v.detach().to(dtype).requires_grad_(v.requires_grad) if isinstance(v, torch.Tensor) else v)
            for k, v in t.items() if k != "hidden"}
    cast["hidden"] = [h.detach().to(dtype).requires_grad_(h.requires_grad) for h in t["hidden"]]
    y = reference_linear(cast["x"], W.to(dtype), cast["bias"], cast["A"], cast["B"], cast["hidden"], c.activation, c.scale)
    inputs = differentiable(cast)
    if not inputs or y.numel() == 0:
        return y, {k: torch.zeros_like(v) for k, v in inputs}
    grads = torch.autograd.grad(y, [v for _, v in inputs], dy.to(dtype), allow_unused=True)
    return y, {k: (torch.zeros_like(v) if g is None else g) for (k, v), g in zip(inputs, grads)}


@_examples(120)
@given(c=qcases())
def test_qlinear_matches_the_float64_reference_on_bnb_weight(c):
    note(repr(c))
    q, t = build(c)
    W = bnb_weight(q)
    gen = torch.Generator().manual_seed(c.seed + 1)
    dy = make_tensor((*c.lead, c.d_out), c.dy_layout, c.dtype, gen)
    y, grads = run(c, q, t, dy)
    ref_y, ref_grads = reference(c, W, t, dy, torch.float64)
    if c.dtype == torch.float32:
        f32_y, f32_grads = reference(c, W, t, dy, torch.float32)
    for name, got, want in [("y", y, ref_y)] + [(f"d{k}", grads[k], ref_grads[k]) for k in ref_grads]:
        assert got is not None and got.shape == want.shape, (name, None if got is None else got.shape, want.shape)
        err = rel_err(got, want)
        bound = TOL[c.dtype]
        if c.dtype == torch.float32 and err >= bound:
            yard = rel_err(f32_y if name == "y" else f32_grads[name[1:]], want)
            bound = max(bound, 10 * yard)
            note(f"{name}: conditioning-aware bound {bound:.2e} (PyTorch float32 misses by {yard:.2e})")
        assert err < bound, f"{name}: relative error {err:.3e} >= {bound:.1e}"


@_examples(40)
@given(c=qcases(min_threads=2), with_g=st.booleans())
def test_quantized_results_are_bit_identical_across_thread_counts(c, with_g):
    note(repr(c))
    q, t = build(c)
    gen = torch.Generator().manual_seed(c.seed + 1)
    dy = make_tensor((*c.lead, c.d_out), c.dy_layout, c.dtype, gen)
    with cpu_gemm("own"):
        one, many = run(c, q, t, dy, threads=1), run(c, q, t, dy, threads=c.threads)
    assert torch.equal(one[0], many[0]), "forward differs"
    for k in one[1]:
        assert torch.equal(one[1][k], many[1][k]), f"d{k} differs between 1 and {c.threads} threads"
    if with_g:
        qw, qm, qo = quantized_base(q).args()
        A, H = t["A"].detach(), [h.detach() for h in t["hidden"]]
        with cpu_gemm("own"):
            gs = []
            for n in (1, c.threads):
                torch.set_num_threads(n)
                gs.append(torch.ops.neat.qcompute_g(qw, qm, qo, A, H, c.activation))
        torch.set_num_threads(2)
        assert torch.equal(gs[0], gs[1]), "qcompute_g differs across thread counts"
        Gr = reference_g(bnb_weight(q).double(), A.double(), [h.double() for h in H], c.activation)
        assert rel_err(gs[0], Gr) < max(TOL[c.dtype], 10 * rel_err(reference_g(bnb_weight(q).to(c.dtype), A, H, c.activation), Gr) if c.dtype == torch.float32 else 0)
