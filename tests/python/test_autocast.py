"""The ops and modules under ``torch.autocast`` (docs/design.md §4), the way HF Trainer uses it:
float32 weights and adapters, bfloat16 autocast.

Semantics (ops.autocast_operands): on CPU the kernels run float32/float64 only, so under CPU
autocast the op computes in float32 (bfloat16/float16 inputs are cast up exactly) and its output is
cast to the autocast dtype, as ``F.linear``'s is. So the CPU result is *exactly* the float32 op on the
same (bf16-representable) values followed by a cast: the checks below are bitwise against that, plus
against the float64 reference within the bf16 output rounding. On CUDA x, weight and bias run in the
autocast dtype while float32 adapters stay float32 (tests/gpu checks that on a GPU); here the CUDA
rule is checked as a pure function.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import reference
import torch_neat
from hf_helpers import tiny_llama_for_autocast
from torch_neat import ops

BF16 = torch.bfloat16
# Output of the autocast path vs the float64 reference on the same inputs: one bf16 rounding of a
# float32 result, relative 2^-9 per element at most; 2^-8 in relative Frobenius norm leaves room for
# the float32 error under it.
OUT_TOL = 2.0**-8
F32_TOL = reference.TOL[torch.float32]


def _case(x_dtype, depth=2, bias=True, n=(5,), seed=0):
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return torch.randn(*shape, generator=g) * scale

    d_in, d_out, r = 37, 53, 3
    x = rnd(*n, d_in).to(x_dtype)
    W = rnd(d_out, d_in, scale=d_in**-0.5)
    b = rnd(d_out) if bias else None
    A = rnd(r, d_out, scale=d_out**-0.5)
    B = rnd(d_out, r, scale=r**-0.5)
    H = [rnd(r, r, scale=r**-0.5) for _ in range(depth - 2)]
    return x, W, b, A, B, H


def _leaves(ts):
    return [None if t is None else t.detach().clone().requires_grad_() for t in ts]


def _call(route, with_base, x, W, b, A, B, H, act="gelu", scale=0.7):
    if route == "op":
        if with_base:
            return torch_neat.linear(x, W, b, A, B, H, act, scale)
        return torch_neat.adapter(x, W, A, B, H, act, scale)
    # the modules' fast path (_FusedFn below the autograd key)
    if with_base:
        return ops.fused_linear(x, W, b, A, B, H, act, scale)
    return ops.fused_adapter(x, W, A, B, H, act, scale)


def _assert_equal(got, want, what):
    assert got.dtype == want.dtype, f"{what}: dtype {got.dtype} != {want.dtype}"
    if not torch.equal(got, want):
        diff = (got.double() - want.double()).abs()
        raise AssertionError(f"{what}: not bitwise equal; max abs diff {diff.max().item():.3e} at {int(diff.argmax())}")


def _assert_rel(got, want, tol, what):
    err = reference.rel_err(got, want)
    assert err <= tol, reference.describe_mismatch(what, got, want, tol)


@pytest.mark.parametrize("route", ["op", "fused"])
@pytest.mark.parametrize("with_base", [True, False], ids=["linear", "adapter"])
@pytest.mark.parametrize("x_dtype", [torch.float32, BF16], ids=["x_f32", "x_bf16"])
@pytest.mark.parametrize("depth", [2, 6])
def test_op_under_cpu_autocast(route, with_base, x_dtype, depth):
    x, W, b, A, B, H = _case(x_dtype, depth=depth, bias=with_base)
    # autocast: float32 weight and adapters, x as the model hands it over
    lx, lW, lb, lA, lB, *lH = _leaves([x, W, b, A, B, *H])
    lW.requires_grad_(False)
    with torch.autocast("cpu", dtype=BF16):
        y = _call(route, with_base, lx, lW, lb, lA, lB, lH)
    assert y.dtype == BF16, "under CPU bf16 autocast the output has the autocast dtype, as F.linear's"
    dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(7)).to(BF16)
    y.backward(dy)

    # the same in float32 without autocast, on the values the op saw (bf16 x is cast up exactly)
    rx, rW, rb, rA, rB, *rH = _leaves([x.float(), W, b, A, B, *H])
    rW.requires_grad_(False)
    yr = _call(route, with_base, rx, rW, rb, rA, rB, rH)
    yr.backward(dy.float())
    _assert_equal(y, yr.detach().to(BF16), "output vs float32 op + cast")
    assert lx.grad.dtype == x_dtype
    _assert_equal(lx.grad, rx.grad.to(x_dtype), "dx")
    for name, t, tr in [("bias", lb, rb), ("A", lA, rA), ("B", lB, rB)] + [(f"H{i}", h, hr) for i, (h, hr) in enumerate(zip(lH, rH))]:
        if t is None:
            continue
        assert t.grad is not None and t.grad.dtype == torch.float32, f"{name}: float32 parameter needs a float32 grad"
        _assert_equal(t.grad, tr.grad, f"d{name}")

    # and against the float64 reference on the same inputs, within the bf16 rounding of the output
    dx, dW, db, dA, dB, *dH = _leaves([t.double() if t is not None else None for t in (x, W, b, A, B, *H)])
    y64 = reference.reference_linear(dx, dW, db, dA, dB, dH, "gelu", 0.7, with_base)
    y64.backward(dy.double())
    _assert_rel(y, y64, OUT_TOL, "output vs float64")
    for name, t, t64 in [("A", lA, dA), ("B", lB, dB)] + [(f"H{i}", h, h64) for i, (h, h64) in enumerate(zip(lH, dH))]:
        _assert_rel(t.grad, t64.grad, F32_TOL, f"d{name} vs float64")


def test_leading_dims_and_empty_batch():
    for n in [(2, 3), (0,)]:
        x, W, b, A, B, H = _case(BF16, depth=4, n=n)
        with torch.autocast("cpu", dtype=BF16):
            y = torch_neat.linear(x, W, b, A, B, H, "relu", 1.0)
        assert y.shape == (*n, 53) and y.dtype == BF16


def test_float16_autocast_and_float64_untouched():
    x, W, b, A, B, H = _case(torch.float32, depth=4)
    with torch.autocast("cpu", dtype=torch.float16):
        y = torch_neat.linear(x, W, b, A, B, H, "silu", 0.5)
    assert y.dtype == torch.float16
    _assert_equal(y, torch_neat.linear(x, W, b, A, B, H, "silu", 0.5).to(torch.float16), "f16 autocast")
    # as for F.linear, autocast leaves float64 alone: a float64 call runs in float64
    d = [t.double() if t is not None else None for t in (x, W, b, A, B, *H)]
    with torch.autocast("cpu", dtype=BF16):
        y64 = torch_neat.linear(*d[:5], d[5:], "silu", 0.5)
        assert F.linear(d[0], d[1]).dtype == torch.float64
    assert y64.dtype == torch.float64
    _assert_equal(y64, torch_neat.linear(*d[:5], d[5:], "silu", 0.5), "float64 under autocast")


def test_bf16_adapters_on_cpu_compute_in_float32():
    # a bf16 model on CPU (everything bf16): the kernels have no bf16, autocast makes it float32
    x, W, b, A, B, _ = _case(torch.float32, depth=2)
    x, W, b, A, B = (t.to(BF16) for t in (x, W, b, A, B))
    with torch.autocast("cpu", dtype=BF16):
        y = torch_neat.linear(x, W, b, A, B, [], "tanh", 1.0)
    assert y.dtype == BF16
    want = torch_neat.linear(x.float(), W.float(), b.float(), A.float(), B.float(), [], "tanh", 1.0).to(BF16)
    _assert_equal(y, want, "bf16 tensors under CPU autocast")


def test_compute_g_under_autocast():
    _, W, _, A, _, H = _case(torch.float32, depth=4)
    want = torch_neat.compute_g(W, A, H, "gelu")
    with torch.autocast("cpu", dtype=BF16):
        G = torch_neat.compute_g(W, A, H, "gelu")
        Gb = torch_neat.compute_g(W.to(BF16), A, H, "gelu")
    assert G.dtype == torch.float32 and Gb.dtype == torch.float32, "G keeps the adapters' dtype"
    _assert_equal(G, want, "G")
    _assert_equal(Gb, torch_neat.compute_g(W.to(BF16).float(), A, H, "gelu"), "G from a bf16 weight")


def test_lowrank_linear_under_autocast():
    if not hasattr(torch.ops.neat, "lowrank_linear"):
        pytest.skip("this build has no neat::lowrank_linear")
    x, W, b, A, B, H = _case(BF16, depth=4)
    G = torch_neat.compute_g(W, A, H, "gelu")
    with torch.autocast("cpu", dtype=BF16):
        y = torch.ops.neat.lowrank_linear(x, W, b, G, B, 0.7)
    assert y.dtype == BF16
    _assert_equal(y, torch.ops.neat.lowrank_linear(x.float(), W, b, G, B, 0.7).to(BF16), "lowrank_linear")


def test_autocast_off_and_other_device_unchanged():
    x, W, b, A, B, H = _case(torch.float32, depth=2)
    assert not ops.autocast_enabled(x)
    y = ops.fused_linear(x, W, b, A, B, H, "relu", 1.0)
    assert y.dtype == torch.float32
    with torch.autocast("cpu", dtype=BF16, enabled=False):
        assert ops.fused_linear(x, W, b, A, B, H, "relu", 1.0).dtype == torch.float32
    with torch.autocast("cpu", dtype=BF16):
        assert ops.autocast_enabled(x)
        with torch.autocast("cpu", enabled=False):
            assert not ops.autocast_enabled(x)
            assert torch_neat.linear(x, W, b, A, B, H, "relu", 1.0).dtype == torch.float32


def test_cuda_rule_as_a_function():
    # The CUDA rule, checked without a GPU: x, W, b to the autocast dtype; float32 adapters stay
    # float32 (the kernels' mixed-precision mode); adapters already in the autocast dtype stay; other
    # half adapters become float32; float64 is never cast; the output needs no cast.
    x, W, b, A, B, H = _case(torch.float32, depth=4)
    for adt, want_p in [(torch.float32, torch.float32), (BF16, BF16), (torch.float16, torch.float32)]:
        A2, B2, H2 = A.to(adt), B.to(adt), [h.to(adt) for h in H]
        cx, cw, cb, cA, cB, cH, out = ops.autocast_operands("cuda", x, W, b, A2, B2, H2, dtype=BF16)
        assert (cx.dtype, cw.dtype, cb.dtype) == (BF16, BF16, BF16)
        assert {cA.dtype, cB.dtype, *(h.dtype for h in cH)} == {want_p}, f"adapters {adt}"
        assert out is None
    cx, cw, cb, cA, cB, cH, out = ops.autocast_operands("cuda", x.double(), W.double(), None, A.double(), B.double(), None, dtype=BF16)
    assert cx.dtype == cw.dtype == cA.dtype == torch.float64 and cb is None and cH is None and out is None
    # and the CPU rule: everything float32, the output cast to the autocast dtype
    cx, cw, cb, cA, cB, cH, out = ops.autocast_operands("cpu", x.to(BF16), W, b.to(BF16), A, B.to(BF16), H, dtype=BF16)
    assert {t.dtype for t in (cx, cw, cb, cA, cB, *cH)} == {torch.float32} and out == BF16
    assert cA is A, "no copy of a tensor that already has the dtype"


# ---------------------------------------------------------------------------------------------
# NeatLinear


@pytest.mark.parametrize("x_dtype", [torch.float32, BF16], ids=["x_f32", "x_bf16"])
@pytest.mark.parametrize("bias", [True, False])
def test_neat_linear_under_cpu_autocast(x_dtype, bias):
    torch.manual_seed(0)
    base = nn.Linear(37, 53, bias=bias)
    layer = torch_neat.NeatLinear(base, r=4, depth=4, activation="silu", scale=0.5)
    with torch.no_grad():
        layer.neat_B.normal_()
    x = torch.randn(6, 37).to(x_dtype).requires_grad_()
    with torch.autocast("cpu", dtype=BF16):
        y = layer(x)
        assert y.dtype == F.linear(x, base.weight, base.bias).dtype == BF16, "same dtype as F.linear"
    dy = torch.randn(y.shape).to(BF16)
    y.backward(dy)
    grads = [p.grad.clone() for p in (layer.neat_A, layer.neat_B, *layer.neat_hidden)]
    assert all(g.dtype == torch.float32 for g in grads)
    assert base.weight.grad is None

    ref = torch_neat.NeatLinear(nn.Linear(37, 53, bias=bias), r=4, depth=4, activation="silu", scale=0.5)
    ref.load_state_dict(layer.state_dict())
    xr = x.detach().float().requires_grad_()
    yr = ref(xr)
    yr.backward(dy.float())
    _assert_equal(y, yr.detach().to(BF16), "NeatLinear output")
    _assert_equal(x.grad, xr.grad.to(x_dtype), "NeatLinear dx")
    for g, p in zip(grads, (ref.neat_A, ref.neat_B, *ref.neat_hidden)):
        _assert_equal(g, p.grad, "NeatLinear adapter grad")

    # eval with the cached G runs F.linear, so under autocast it computes in bf16 like F.linear
    layer.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=BF16):
        ye = layer(x.detach())
    assert ye.dtype == BF16
    _assert_rel(ye, yr.detach(), reference.TOL[BF16], "NeatLinear eval under autocast")
    assert layer.cached_g().dtype == torch.float32


def test_merge_under_autocast_uses_the_stored_weight():
    # merging is a weight operation: G comes from W as stored, not from a bf16 copy of it
    torch.manual_seed(0)
    layers = []
    for _ in range(2):
        torch.manual_seed(0)
        layer = torch_neat.NeatLinear(nn.Linear(37, 53), r=4, depth=4, scale=0.5)
        with torch.no_grad():
            layer.neat_B.normal_()
        layers.append(layer)
    original = layers[0].weight.detach().clone()
    layers[0].merge()
    with torch.autocast("cpu", dtype=BF16):
        layers[1].merge()
    _assert_equal(layers[1].weight, layers[0].weight, "weight merged under autocast")
    with torch.autocast("cpu", dtype=BF16):
        layers[1].unmerge()
    _assert_equal(layers[1].weight, original, "weight unmerged under autocast")


def test_compile_under_autocast():
    x, W, b, A, B, H = _case(torch.float32, depth=4)
    lA = A.clone().requires_grad_()

    def f(x):
        return torch_neat.linear(x, W, b, lA, B, H, "gelu", 0.7) * 2

    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    with torch.autocast("cpu", dtype=BF16):
        ye = f(x)
        yc = compiled(x)
    assert yc.dtype == ye.dtype == BF16
    _assert_equal(yc, ye, "compiled vs eager under autocast")
    ye.float().sum().backward()
    ge, lA.grad = lA.grad, None
    yc.float().sum().backward()
    assert lA.grad.dtype == torch.float32
    _assert_equal(lA.grad, ge, "compiled dA")


# ---------------------------------------------------------------------------------------------
# A tiny HF model trained as HF Trainer trains it: float32 weights, bf16 autocast on CPU


def _tiny_llama():
    pytest.importorskip("transformers")
    return tiny_llama_for_autocast(32, 48)


def _watch(model):
    """Records, per NeatLinear call, whether CPU autocast was on and the output dtype."""
    seen = []

    def hook(module, args, out):
        seen.append((torch.is_autocast_enabled("cpu"), out.dtype))

    handles = [m.register_forward_hook(hook) for _, m in torch_neat.neat_layers(model)]
    return seen, handles


def _batches(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    # one fixed batch, so the loss must fall when the adapters learn
    ids = torch.randint(3, 61, (4, 12), generator=g)
    return [{"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids} for _ in range(n)]


def test_tiny_llama_manual_autocast_loop():
    model = _tiny_llama()
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    assert params and all(p.dtype == torch.float32 for p in params)
    opt = torch.optim.AdamW(params, lr=5e-2)
    seen, _ = _watch(model)
    losses = []
    for batch in _batches(8):
        with torch.autocast("cpu", dtype=BF16):
            loss = model(**batch).loss
        loss.backward()
        assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in params)
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses), losses
    assert losses[-1] < losses[0] - 0.05, f"loss did not decrease: {losses}"
    assert seen and all(on and dt == BF16 for on, dt in seen), "NEAT layers ran outside autocast or not in bf16"


def test_tiny_llama_hf_trainer_bf16(tmp_path):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    model = _tiny_llama()
    seen, _ = _watch(model)
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), bf16=True, use_cpu=True, per_device_train_batch_size=4, max_steps=8,
        learning_rate=5e-2, lr_scheduler_type="constant", warmup_steps=0, logging_steps=1, save_strategy="no",
        report_to=[], dataloader_num_workers=0, disable_tqdm=True, seed=0,
    )
    # one example per item (the Trainer's collator stacks them): the four sequences of _batches, repeated
    batch = _batches(1)[0]
    examples = [{k: v[i] for k, v in batch.items()} for i in range(4)] * 8
    trainer = transformers.Trainer(model=model, args=args, train_dataset=examples)
    trainer.train()
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert len(losses) == 8 and all(math.isfinite(v) for v in losses), losses
    assert losses[-1] < losses[0] - 0.05, f"loss did not decrease: {losses}"
    assert seen and all(on and dt == BF16 for on, dt in seen), "Trainer(bf16=True) did not run NEAT layers under autocast"
    assert all(p.dtype == torch.float32 for p in model.parameters() if p.requires_grad)
