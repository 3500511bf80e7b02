"""The checks every supported quantized base must pass, shared by test_quantized.py (bitsandbytes) and
test_torchao.py (torchao), so each quantization is held to the same contract (docs/design.md §5.2):

    the q ops and NeatLinear over the layer compute float NEAT (reference.py, float64) on the W that the
    quantization's own dequantizer returns; nothing W-sized is saved for backward; the modules (training,
    eval cache, save/load, export_lora, merge_and_unload) work as over a float layer.

Each check takes the quantized layer and that W (``weight``, float32); none knows which package made it.
The refusals of test_quantized_guard.py are here too, for the forms a package has that NEAT cannot read.
"""

from __future__ import annotations

from typing import Callable

import pytest
import torch
from torch import nn

import torch_neat
from reference import TOL, describe_mismatch, reference_g, reference_linear, rel_err
from torch_neat.quantized import quantized_base

F32 = TOL[torch.float32]
SUPPORTED = "Supported: torch.nn.Linear with a float32"


def q_args(q: nn.Module):
    """(qweight, qmeta, qoffset) of a supported layer; fails the test when it is not recognised."""
    qb = quantized_base(q)
    assert qb is not None, f"{type(q).__name__} with a {type(q.weight).__name__} weight is not a supported base"
    return qb.args()


def kernel_weight(q: nn.Module) -> torch.Tensor:
    """W as the C library dequantizes the layer's storage, exactly (float64): G = A W with A = I and the
    identity activation, in a float64 call, which widens the float32 values without rounding."""
    qw, qm, qo = q_args(q)
    return torch.ops.neat.qcompute_g(qw, qm, qo, torch.eye(qm[1], dtype=torch.float64), [], "identity")


def qlinear_matches_reference(q: nn.Module, weight: torch.Tensor, num_hidden: int, activation: str, label: str):
    """neat::qlinear's output and every gradient (x, A, B, hidden) against float64 NEAT on ``weight``."""
    qw, qm, qo = q_args(q)
    d_out, d_in = weight.shape
    r = 4
    x = torch.randn(7, d_in, requires_grad=True)
    A = (torch.randn(r, d_out) / d_out**0.5).requires_grad_()
    B = (torch.randn(d_out, r) / r**0.5).requires_grad_()
    H = [(torch.randn(r, r) / r**0.5).requires_grad_() for _ in range(num_hidden)]
    bias = None if q.bias is None else q.bias.detach().float()
    y = torch.ops.neat.qlinear(x, qw, qm, qo, bias, A, B, H, activation, 0.7)
    dy = torch.randn_like(y)
    grads = torch.autograd.grad(y, [x, A, B, *H], dy)

    d = lambda t: t.detach().double().requires_grad_()  # noqa: E731
    xr, Ar, Br, Hr = d(x), d(A), d(B), [d(h) for h in H]
    ref = reference_linear(xr, weight.double(), None if bias is None else bias.double(), Ar, Br, Hr, activation, 0.7)
    ref_grads = torch.autograd.grad(ref, [xr, Ar, Br, *Hr], dy.double())
    names = ["dx", "dA", "dB"] + [f"dh{i}" for i in range(num_hidden)]
    for name, got, want in [("y", y, ref), *zip(names, grads, ref_grads)]:
        assert rel_err(got, want) < F32, describe_mismatch(f"{label} {name}", got, want, F32)


def compute_g_and_lowrank_match(q: nn.Module, weight: torch.Tensor, activation: str):
    """neat::qcompute_g and neat::qlowrank_linear against float64 G and the float64 low-rank product."""
    qw, qm, qo = q_args(q)
    W = weight.double()
    r = 3
    A = torch.randn(r, W.shape[0]) / W.shape[0] ** 0.5
    H = [torch.randn(r, r) / r**0.5 for _ in range(2)]
    if activation == "sin2pi":
        A = A / (2 * torch.pi)
    G = torch.ops.neat.qcompute_g(qw, qm, qo, A, H, activation)
    Gr = reference_g(W, A.double(), [h.double() for h in H], activation)
    assert rel_err(G, Gr) < F32, describe_mismatch("G", G, Gr, F32)
    bias = None if q.bias is None else q.bias.detach().float()
    x, B = torch.randn(6, W.shape[1]), torch.randn(W.shape[0], r)
    y = torch.ops.neat.qlowrank_linear(x, qw, qm, qo, bias, G, B, 1.5)
    yr = torch.nn.functional.linear(x.double(), W, None if bias is None else bias.double())
    yr = yr + 1.5 * (x.double() @ G.double().T) @ B.double().T
    assert rel_err(y, yr) < F32, describe_mismatch("lowrank", y, yr, F32)


def gradcheck_float64(q: nn.Module):
    # float64 calls widen the dequantized float32 values exactly, so float64 gradcheck applies
    qw, qm, qo = q_args(q)
    d_out, d_in = qm[1], qm[2]
    x = torch.randn(3, d_in, dtype=torch.float64, requires_grad=True)
    A = (torch.randn(2, d_out, dtype=torch.float64) / d_out**0.5).requires_grad_()
    B = torch.randn(d_out, 2, dtype=torch.float64, requires_grad=True)
    H = [torch.randn(2, 2, dtype=torch.float64, requires_grad=True) for _ in range(2)]
    b = torch.randn(d_out, dtype=torch.float64, requires_grad=True)
    fn = lambda x, b, A, B, h0, h1: torch.ops.neat.qlinear(x, qw, qm, qo, b, A, B, [h0, h1], "tanh", 0.5)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, b, A, B, *H), eps=1e-6, atol=1e-6)


def opcheck_quantized_ops(q: nn.Module):
    qw, qm, qo = q_args(q)
    d_out, d_in = qm[1], qm[2]
    x = torch.randn(4, d_in, requires_grad=True)
    A = torch.randn(3, d_out, requires_grad=True)
    B = torch.randn(d_out, 3, requires_grad=True)
    H = [torch.randn(3, 3, requires_grad=True) for _ in range(2)]
    G = torch.randn(3, d_in)
    bias = None if q.bias is None else q.bias.detach().float()
    torch.library.opcheck(torch.ops.neat.qlinear, (x, qw, qm, qo, bias, A, B, H, "gelu", 0.5))
    torch.library.opcheck(torch.ops.neat.qcompute_g, (qw, qm, qo, A.detach(), [h.detach() for h in H], "relu"))
    torch.library.opcheck(torch.ops.neat.qlowrank_linear, (x.detach(), qw, qm, qo, bias, G, B.detach(), 2.0))


def float_twin(q: nn.Module, weight: torch.Tensor) -> nn.Linear:
    """A float32 nn.Linear holding ``weight`` and the layer's bias."""
    twin = nn.Linear(weight.shape[1], weight.shape[0], bias=q.bias is not None)
    with torch.no_grad():
        twin.weight.copy_(weight)
        if q.bias is not None:
            twin.bias.copy_(q.bias)
    return twin


def trains_like_float_neat(q: nn.Module, weight: torch.Tensor):
    """get_neat_model over the layer trains step for step like float NEAT on ``weight``."""
    cfg = lambda: torch_neat.NeatConfig(r=4, depth=4, target_modules=["0"])  # noqa: E731
    ref = torch_neat.get_neat_model(nn.Sequential(float_twin(q, weight)), cfg())
    m = torch_neat.get_neat_model(nn.Sequential(q), cfg())
    ref.load_state_dict({k: v for k, v in m.state_dict().items() if "neat_" in k}, strict=False)
    assert m[0].quantized and m[0].neat_A.dtype == torch.float32
    x, target = torch.randn(16, weight.shape[1]), torch.randn(16, weight.shape[0])
    opts = [torch.optim.SGD([p for p in mm.parameters() if p.requires_grad], lr=0.1) for mm in (m, ref)]
    losses = []
    for _ in range(15):
        for mm, opt in zip((m, ref), opts):
            loss = ((mm(x) - target) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
    assert losses[-2] < losses[0], "the quantized model did not learn"
    assert abs(losses[-2] - losses[-1]) < 1e-4 * losses[-1], "quantized NEAT and float NEAT on its W diverged"


def eval_caches_g(q: nn.Module):
    """In eval, G is computed once, kept until A changes, and the output is the training forward's."""
    layer = torch_neat.NeatLinear(q, r=3, depth=4, activation="tanh", scale=2.0)
    with torch.no_grad():
        layer.neat_B.normal_(0, 0.1)
    x = torch.randn(5, q.in_features)
    y_train = layer.train()(x).detach()
    layer.eval()
    with torch.no_grad():
        y_eval = layer(x)
        g1 = layer.cached_g()
        assert layer.cached_g() is g1, "G recomputed without a change"
        layer.neat_A.add_(0.1)
        assert layer.cached_g() is not g1, "G kept after A changed"
    assert rel_err(y_eval, y_train) < F32


def nothing_weight_sized_saved(q: nn.Module):
    """A training step saves no float tensor of W's size, and no W-sized buffer but the layer's storage."""
    layer = torch_neat.NeatLinear(q, r=4, depth=4)
    weight_numel = q.in_features * q.out_features
    storage = {t.data_ptr() for t in q_args(q)[0]}
    saved = []

    def pack(t):
        saved.append(t)
        return t

    x = torch.randn(8, q.in_features, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = layer(x)
    y.sum().backward()
    assert saved, "the hook saw nothing: the test would pass vacuously"
    for t in saved:
        assert t.is_floating_point() is False or t.numel() < weight_numel, f"a float tensor of W's size was saved: {tuple(t.shape)}"
        if t.numel() * t.element_size() >= weight_numel // 2:
            assert t.data_ptr() in storage, f"a W-sized buffer other than the layer's own storage was saved: {tuple(t.shape)}"


def save_load_export_merge(tmp_path, make_layer: Callable[[], nn.Module], weight_of: Callable[[nn.Module], torch.Tensor]):
    """save_adapter / load_adapter round trip, merge refused, export_lora equal to PEFT LoRA on a float
    copy of the base, merge_and_unload into a float32 nn.Linear; ``make_layer`` makes the same layer each call."""
    from peft import PeftModel

    def model():
        torch.manual_seed(3)
        q = make_layer()
        return nn.Sequential(q, nn.ReLU(), nn.Linear(q.out_features, 8))

    m = torch_neat.get_neat_model(model(), torch_neat.NeatConfig(r=4, target_modules=["0"], modules_to_save=["2"]))
    with torch.no_grad():
        m[0].neat_B.normal_(0, 0.1)
    x = torch.randn(5, m[0].in_features)
    m.eval()
    with torch.no_grad():
        want = m(x)
    torch_neat.save_adapter(m, tmp_path / "neat")
    fresh = torch_neat.load_adapter(model(), tmp_path / "neat")
    fresh.eval()
    with torch.no_grad():
        assert torch.equal(fresh(x), want)
    with pytest.raises(TypeError, match="merge_and_unload"):
        m[0].merge()
    torch_neat.export_lora(m, tmp_path / "lora")
    # the exported G comes from the quantized storage: PEFT LoRA on a float copy of W computes the same
    base = model()
    float_base = nn.Sequential(float_twin(base[0], weight_of(base[0])), nn.ReLU(), nn.Linear(base[0].out_features, 8))
    float_base[2].load_state_dict(base[2].state_dict())
    lora = PeftModel.from_pretrained(float_base, tmp_path / "lora").eval()
    with torch.no_grad():
        assert rel_err(lora(x), want) < 1e-5
    with pytest.warns(UserWarning, match=r"had a quantized base \(.+\); it is now a float32 nn.Linear holding W"):
        plain = torch_neat.merge_and_unload(m)
    assert type(plain[0]) is nn.Linear and plain[0].weight.dtype == torch.float32
    with torch.no_grad():
        assert rel_err(plain(x), want) < 1e-5


# --- refusals --------------------------------------------------------------------------------------------


def module_state(model: nn.Module) -> list:
    return [(n, type(m), tuple((k, type(p), p.requires_grad) for k, p in m.named_parameters(recurse=False)))
            for n, m in model.named_modules()]


def get_neat_model_refuses_untouched(q: nn.Module, says: str):
    """get_neat_model over [a float layer, q] raises naming q, why and what is supported, changing nothing."""
    model = nn.Sequential(nn.Linear(q.in_features, q.in_features), q)
    assert isinstance(q, nn.Linear), "a quantized nn.Linear: the type check alone would let it through"
    before = module_state(model)
    with pytest.raises(TypeError) as err:
        torch_neat.get_neat_model(model, torch_neat.NeatConfig(r=4, target_modules=["0", "1"]))
    msg = str(err.value)
    assert "'1'" in msg and says in msg and SUPPORTED in msg, msg
    assert "'0'" not in msg.partition("NEAT cannot read")[2], "the float layer is not quantized"
    assert module_state(model) == before, "the model was touched before the error"
    assert not hasattr(model, "neat_config")


def neat_linear_refuses(q: nn.Module, pattern: str):
    """NeatLinear(q) raises TypeError matching ``pattern`` and listing what is supported."""
    with pytest.raises(TypeError, match=pattern) as err:
        torch_neat.NeatLinear(q, r=4)
    assert SUPPORTED in str(err.value)


def causal_lm_learns(model: nn.Module, vocab: int = 128):
    """Four AdamW steps of a small causal LM on one batch: the loss goes down."""
    ids = torch.randint(0, vocab, (2, 16))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(4):
        loss = model(input_ids=ids, labels=ids).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0], f"loss did not go down over four steps: {losses}"
