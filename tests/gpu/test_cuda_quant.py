"""The quantized ops on CUDA (docs/design.md §2.8, §5.2): bitsandbytes layers quantized on the GPU, read in
place by neat::qlinear, qcompute_g and qlowrank_linear (cuda/quant.cu).

Every result is held to two things: the float64 reference (reference.py) on the W that bitsandbytes' own
CUDA dequantizer returns, with gpu_checks.py's bounds, and the same op on the CPU with the same arrays
copied there. NF4 and FP4, nested or not, several block sizes, LLM.int8 with odd shapes, float32, float64
and a bfloat16 call with float32 adapters; the panel loops with the default budget and with a tiny one
(NEAT_CUDA_QPANEL_KB), and NeatLinear over a CUDA Linear4bit / Linear8bitLt. Short: a few seconds.

Skipped without CUDA, like test_cuda.py. NEAT_GPU_QUANT_DEVICE=cpu runs the same checks on the CPU ops (a
dry run of this file's own logic on a machine without a GPU; the CPU-vs-CUDA comparison is then moot).
"""

from __future__ import annotations

import os
import sys

import pytest
import torch
from torch import nn

DEV = torch.device(os.environ.get("NEAT_GPU_QUANT_DEVICE", "cuda"))
if DEV.type == "cuda" and not torch.cuda.is_available():
    pytest.skip("tests/gpu needs a CUDA device", allow_module_level=True)
bnb = pytest.importorskip("bitsandbytes")

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(_HERE, "..", "python"))
sys.path.insert(0, _HERE)
import bitsandbytes.functional as bnbf  # noqa: E402

import gpu_checks as gc  # noqa: E402
import reference as ref  # noqa: E402
import torch_neat  # noqa: E402
from bnb_layers import flat_rule, four_bit, int8  # noqa: E402
from torch_neat.quantized import quantized_base  # noqa: E402

# (d_in, d_out, maker): d_in not a multiple of the block size where the format allows it
LAYERS = {
    "nf4": lambda d: four_bit(72, 40, device=d),
    "fp4": lambda d: four_bit(72, 40, quant_type="fp4", device=d),
    "nf4-nested": lambda d: four_bit(72, 40, nested=True, device=d),
    "fp4-nested-128": lambda d: four_bit(96, 35, quant_type="fp4", nested=True, blocksize=128, device=d),
    "nf4-256-odd": lambda d: four_bit(33, 31, blocksize=256, device=d),
    "nf4-bf16-storage": lambda d: four_bit(64, 48, storage=torch.bfloat16, device=d),
    "int8": lambda d: int8(72, 40, device=d),
    "int8-odd": lambda d: int8(37, 29, device=d),
}


def bnb_weight(q) -> torch.Tensor:
    """W as bitsandbytes dequantizes it on CUDA (float32); the flat reading on the CPU dry run, where
    bitsandbytes 0.50's CPU dequantize_4bit misreads rows that straddle blocks (test_quantized.py)."""
    w = q.weight
    if isinstance(q, bnb.nn.Linear8bitLt):
        return bnbf.int8_vectorwise_dequant(w.data, quantized_base(q).args()[0][1]).float()
    flat = flat_rule(q)
    if DEV.type != "cuda":
        return flat
    theirs = bnbf.dequantize_4bit(w.data, w.quant_state).float().reshape(flat.shape)
    # on CUDA bitsandbytes reads absmax by flat block for any d_in: the layout the q ops read
    assert torch.equal(theirs, flat), "bitsandbytes' CUDA dequantizer disagrees with the flat layout"
    return theirs


def cpu_args(qargs):
    qw, qm, qo = qargs
    return [t.cpu() for t in qw], qm, qo


def run_ops(qargs, x, bias, A, B, H, act, scale, G_in):
    """qlinear forward and every gradient, qcompute_g, qlowrank_linear (G_in as G): a dict by name."""
    qw, qm, qo = qargs
    leaves = [t.detach().clone().requires_grad_() for t in (x, bias, A, B, *H)]
    xl, bl, Al, Bl, *Hl = leaves
    y = torch.ops.neat.qlinear(xl, qw, qm, qo, bl, Al, Bl, Hl, act, scale)
    gy = gc.seeded_normal(tuple(y.shape), 99, y.device, y.dtype)
    grads = torch.autograd.grad(y, leaves, gy)
    out = {"y": y, "gy": gy, **dict(zip(["dx", "dbias", "dA", "dB"] + [f"dH{i}" for i in range(len(H))], grads))}
    out["G"] = torch.ops.neat.qcompute_g(qw, qm, qo, A, H, act)
    out["ylr"] = torch.ops.neat.qlowrank_linear(x, qw, qm, qo, bias, G_in, B, scale)
    return out


def check_against_reference(got, W, x, bias, A, B, H, act, scale, G_in, dt, what):
    d = lambda t: gc.reference_copy(t, dt, True)  # noqa: E731
    xr, br, Ar, Br, Hr = d(x), d(bias), d(A), d(B), [d(h) for h in H]
    W64 = W.detach().to(torch.float64)
    y = ref.reference_linear(xr, W64, br, Ar, Br, Hr, act, scale)
    grads = torch.autograd.grad(y, [xr, br, Ar, Br, *Hr], got["gy"].to(torch.float64))
    gc.check(f"{what} y", got["y"], y, dt)
    for name, want in zip(["dx", "dbias", "dB"], [grads[0], grads[1], grads[3]]):
        gc.check(f"{what} {name}", got[name], want, dt)
    scales = gc.formation_scales(xr, W64, Ar, Br, Hr, act, scale, got["gy"])
    gc.check_scaled(f"{what} dA", got["dA"], grads[2], scales[0], dt)
    for i in range(len(H)):
        gc.check_scaled(f"{what} dH{i}", got[f"dH{i}"], grads[4 + i], scales[1 + i], dt)
    Gr = ref.reference_g(W64, Ar.detach(), [h.detach() for h in Hr], act)
    gc.check(f"{what} G", got["G"], Gr, dt)
    Gl = gc.reference_copy(G_in, dt, False)
    ylr = torch.nn.functional.linear(xr.detach(), W64, br.detach()) + scale * (xr.detach() @ Gl.T) @ Br.detach().T
    gc.check(f"{what} lowrank", got["ylr"], ylr, dt)


def inputs(d_out, d_in, dt, pdt, seed, n=9, r=4, nh=2):
    x = gc.seeded_normal((n, d_in), seed, DEV, dt)
    bias = gc.seeded_normal((d_out,), seed + 1, DEV, dt)
    A = gc.seeded_normal((r, d_out), seed + 2, DEV, pdt) / d_out**0.5
    B = gc.seeded_normal((d_out, r), seed + 3, DEV, pdt) / r**0.5
    H = [gc.seeded_normal((r, r), seed + 4 + i, DEV, pdt) / r**0.5 for i in range(nh)]
    G_in = gc.seeded_normal((r, d_in), seed + 9, DEV, pdt)
    return x, bias, A, B, H, G_in


def quantized_args(q, dt):
    # the q ops compute in the input's dtype; the arrays are the layer's own storage on DEV
    qargs = quantized_base(q).args()
    assert all(t.device.type == DEV.type for t in qargs[0]), "the layer's arrays are not on the test device"
    return qargs


CASES = [(k, torch.float32, torch.float32) for k in sorted(LAYERS)] + [
    ("nf4-nested", torch.float64, torch.float64),
    ("int8-odd", torch.float64, torch.float64),
    ("fp4-nested-128", torch.bfloat16, torch.float32),
]


@pytest.mark.parametrize("kind,dt,pdt", CASES, ids=[f"{k}-{str(d)[6:]}-{str(p)[6:]}" for k, d, p in CASES])
def test_every_q_op_matches_the_reference_and_the_cpu_op(kind, dt, pdt):
    if DEV.type != "cuda" and dt == torch.bfloat16:
        pytest.skip("a half call is CUDA only")
    q = LAYERS[kind](DEV)
    W = bnb_weight(q)
    d_out, d_in = W.shape
    x, bias, A, B, H, G_in = inputs(d_out, d_in, dt, pdt, seed=len(kind))
    qargs = quantized_args(q, dt)
    act, scale = "gelu", 0.7
    got = run_ops(qargs, x, bias, A, B, H, act, scale, G_in)
    check_against_reference(got, W, x, bias, A, B, H, act, scale, G_in, dt, kind)
    if dt in (torch.float32, torch.float64):  # the CPU q ops take float32 and float64
        cpu = run_ops(cpu_args(qargs), x.cpu(), bias.cpu(), A.cpu(), B.cpu(), [h.cpu() for h in H], act, scale,
                      G_in.cpu())
        for name in ("y", "dx", "dbias", "dA", "dB", "dH0", "dH1", "G", "ylr"):
            gc.check(f"{kind} {name} cuda vs cpu", got[name], cpu[name], dt)


@pytest.mark.parametrize("panel_kb", ["", "16"], ids=["default-panels", "16KiB-panels"])
@pytest.mark.parametrize("kind", ["nf4-nested", "int8"])
def test_many_panels_split_sums_and_odd_layouts(kind, panel_kb, monkeypatch):
    # 1100 x 700: several panels at the default budget (an eighth of a float W); 16 KiB panels split
    # the sum of every product too. x and dy non-contiguous (a transposed x, a strided dy).
    monkeypatch.setenv("NEAT_CUDA_QPANEL_KB", panel_kb)
    d_in, d_out = 700, 1100
    q = four_bit(d_in, d_out, nested=True, blocksize=64, device=DEV) if kind == "nf4-nested" else int8(d_in, d_out, device=DEV)
    W = bnb_weight(q)
    dt = torch.float32
    x, bias, A, B, H, G_in = inputs(d_out, d_in, dt, dt, seed=7, n=33)
    x = x.T.contiguous().T  # column-major
    got = run_ops(quantized_args(q, dt), x, bias, A, B, H, "tanh", 1.3, G_in)
    check_against_reference(got, W, x, bias, A, B, H, "tanh", 1.3, G_in, dt, f"{kind} {panel_kb or 'default'}")


@pytest.mark.parametrize("kind", ["nf4-nested", "int8"])
def test_neat_linear_over_a_cuda_bitsandbytes_layer_trains_like_float_neat(kind):
    q = LAYERS[kind](DEV)
    W = bnb_weight(q)
    float_twin = nn.Linear(W.shape[1], W.shape[0]).to(DEV)
    with torch.no_grad():
        float_twin.weight.copy_(W)
        float_twin.bias.copy_(q.bias)
    cfg = lambda: torch_neat.NeatConfig(r=4, depth=4, target_modules=["0"])  # noqa: E731
    m = torch_neat.get_neat_model(nn.Sequential(q), cfg())
    twin = torch_neat.get_neat_model(nn.Sequential(float_twin), cfg())
    twin.load_state_dict({k: v for k, v in m.state_dict().items() if "neat_" in k}, strict=False)
    assert m[0].quantized and m[0].neat_A.device.type == DEV.type
    x = gc.seeded_normal((16, W.shape[1]), 1, DEV, torch.float32)
    target = gc.seeded_normal((16, W.shape[0]), 2, DEV, torch.float32)
    opts = [torch.optim.SGD([p for p in mm.parameters() if p.requires_grad], lr=0.1) for mm in (m, twin)]
    losses = {0: [], 1: []}
    for _ in range(10):
        for i, (mm, opt) in enumerate(zip((m, twin), opts)):
            loss = ((mm(x) - target) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses[i].append(loss.item())
    assert losses[0][-1] < losses[0][0], "the quantized model did not learn"
    assert abs(losses[0][-1] - losses[1][-1]) < 1e-4 * losses[1][-1], "quantized and float NEAT on bnb's W diverged"
    # eval: G cached from neat::qcompute_g, the forward through neat::qlowrank_linear
    m.eval()
    with torch.no_grad():
        y_eval = m(x)
    m.train()
    y_train = m(x).detach()
    gc.check(f"{kind} eval vs train", y_eval, y_train, torch.float32)
