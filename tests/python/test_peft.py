"""torch_neat.peft: PEFT PEANuT models give PEFT's numbers on torch-neat's ops, and PEFT's API keeps working."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch

import peft  # tests/run.sh installs peft>=0.19, which ships PEANuT: nothing here is optional

assert hasattr(peft, "PeanutConfig"), f"peft {peft.__version__} has no PeanutConfig; torch-neat needs peft >= 0.19"

from peft import LoraConfig, PeanutConfig, PeftModel, get_peft_model  # noqa: E402
from peft.tuners.peanut.layer import Linear as PeanutLinear  # noqa: E402

import torch_neat  # noqa: E402
import torch_neat.peft as neat_peft  # noqa: E402
from hf_helpers import BUILDERS, MODEL_TOL, assert_bitwise, assert_rel, inputs_for, logits  # noqa: E402

SHARED = sorted(neat_peft.SUPPORTED_ACTIVATIONS)  # ACT2FN names with a torch-neat kernel


def peanut_model(depth=0, act="relu", dtype=torch.float64, family="llama", r=4, seed=3):
    base = BUILDERS[family](dtype)
    torch.manual_seed(seed)
    # init_weights=False: B random too, so outputs and every gradient are non-trivial
    config = PeanutConfig(r=r, depth=depth, act_fn=act, scaling=1.3, init_weights=False,
                          target_modules=["q_proj", "v_proj"] if family == "llama" else ["query", "value"])
    return get_peft_model(base, config)


@pytest.fixture
def count_ops(monkeypatch):
    calls = {"linear": 0, "adapter": 0}
    for name in calls:
        # the modules call the ops through the fused_* entry points (ops.py)
        real = getattr(neat_peft._ops, "fused_" + name)

        def counting(*args, _real=real, _name=name, **kwargs):
            calls[_name] += 1
            return _real(*args, **kwargs)

        monkeypatch.setattr(neat_peft._ops, "fused_" + name, counting)
    return calls


def outputs_and_grads(model, inputs):
    model.zero_grad()
    out = model(**inputs)
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return out.logits.detach(), grads


@pytest.mark.parametrize("peft_depth", [0, 1])  # paper depth 2 and 4
@pytest.mark.parametrize("act", SHARED)
def test_same_outputs_and_gradients(peft_depth, act, count_ops):
    model = peanut_model(depth=peft_depth, act=act).train()
    inputs = inputs_for("llama")
    ref_out, ref_grads = outputs_and_grads(model, inputs)
    assert count_ops["linear"] + count_ops["adapter"] == 0
    names = list(model.state_dict())
    neat_peft.accelerate(model)
    assert list(model.state_dict()) == names, "accelerate must keep the state-dict names"
    out, grads = outputs_and_grads(model, inputs)
    assert count_ops["linear"] == 2 * model.config.num_hidden_layers, "not every PEANuT layer ran the fused op"
    assert_rel(out, ref_out, MODEL_TOL[torch.float64], f"logits {act} depth {peft_depth}")
    assert set(grads) == set(ref_grads)
    for n in ref_grads:
        assert_rel(grads[n], ref_grads[n], MODEL_TOL[torch.float64], f"grad {n}")


@pytest.mark.parametrize("family", ["roberta", "vit"])
def test_other_families_float32_depth2(family):
    base = BUILDERS[family](torch.float32)
    torch.manual_seed(0)
    target = ["query", "value"] if family == "roberta" else ["q_proj", "v_proj"]
    if family == "vit" and not any(n.endswith("q_proj") for n, _ in base.named_modules()):
        target = ["query", "value"]
    model = get_peft_model(base, PeanutConfig(r=3, depth=2, act_fn="gelu", init_weights=False, target_modules=target))
    inputs = inputs_for(family, dtype=torch.float32)
    ref_out, ref_grads = outputs_and_grads(model.train(), inputs)
    neat_peft.accelerate(model)
    out, grads = outputs_and_grads(model, inputs)
    assert_rel(out, ref_out, MODEL_TOL[torch.float32], f"{family} float32 logits")
    for n in ref_grads:
        assert_rel(grads[n], ref_grads[n], MODEL_TOL[torch.float32], f"{family} float32 grad {n}")


def test_save_pretrained_from_pretrained_roundtrip(tmp_path):
    model = neat_peft.accelerate(peanut_model(depth=1, act="silu"))
    inputs = inputs_for("llama")
    with torch.no_grad():
        expected = logits(model, inputs)
    model.save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(BUILDERS["llama"](), tmp_path)
    for name, p in model.named_parameters():
        if "peanut_" in name:
            assert torch.equal(p, loaded.get_parameter(name)), name
    with torch.no_grad():
        plain_peft = logits(loaded, inputs)
        neat_peft.accelerate(loaded)
        accelerated = logits(loaded, inputs)
    assert_rel(plain_peft, expected, MODEL_TOL[torch.float64], "PEFT's own layer on the loaded adapter")
    assert_rel(accelerated, expected, MODEL_TOL[torch.float64], "accelerated loaded adapter")


def test_merge_and_unload_matches_peft():
    ours = peanut_model(depth=1, act="tanh")
    theirs = copy.deepcopy(ours)
    neat_peft.accelerate(ours)
    inputs = inputs_for("llama")
    with torch.no_grad():
        before = logits(ours, inputs)
    plain_ours = ours.merge_and_unload()
    plain_theirs = theirs.merge_and_unload()
    assert not any(isinstance(m, PeanutLinear) for m in plain_ours.modules())
    theirs_state = plain_theirs.state_dict()
    assert set(plain_ours.state_dict()) == set(theirs_state)
    for k, v in plain_ours.state_dict().items():
        assert_rel(v, theirs_state[k], 1e-13, f"merged {k}")
    with torch.no_grad():
        assert_rel(logits(plain_ours, inputs), before, MODEL_TOL[torch.float64], "merged model vs adapter")


def test_merge_unmerge_exact_without_weight_copy():
    model = neat_peft.accelerate(peanut_model(depth=1, act="gelu", dtype=torch.float32))
    inputs = inputs_for("llama", dtype=torch.float32)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        before = logits(model, inputs)
        model.merge_adapter()
        layers = [m for m in model.modules() if isinstance(m, PeanutLinear)]
        assert all(m.merged for m in layers)
        assert all(m._base_weight_before_merge is None for m in layers), "PEFT's copy of W was made"
        merged = logits(model, inputs)
        model.unmerge_adapter()
    assert_rel(merged, before, MODEL_TOL[torch.float32], "merged vs unmerged")
    for k, v in model.state_dict().items():
        assert_bitwise(v, weights[k], f"{k} after merge+unmerge")


def test_multiple_adapters_match_peft():
    ours = peanut_model(depth=0, act="relu")
    ours.add_adapter("second", PeanutConfig(r=2, depth=1, act_fn="tanh", scaling=0.7, init_weights=False,
                                            target_modules=["q_proj", "k_proj"]))
    theirs = copy.deepcopy(ours)
    neat_peft.accelerate(ours)
    inputs = inputs_for("llama")
    with torch.no_grad():
        for model in (ours, theirs):
            model.set_adapter("second")
        assert_rel(logits(ours, inputs), logits(theirs, inputs), MODEL_TOL[torch.float64], "adapter 'second'")
        for model in (ours, theirs):
            model.base_model.set_adapter(["default", "second"])
        both = logits(theirs, inputs)
        assert_rel(logits(ours, inputs), both, MODEL_TOL[torch.float64], "both adapters active")

        weights = {k: v.clone() for k, v in ours.state_dict().items()}
        ours.merge_adapter(["default"])
        ours.merge_adapter(["second"])  # merged one at a time, like PEFT allows
        theirs.merge_adapter(["default", "second"])
        theirs_state = theirs.state_dict()
        for k, v in ours.state_dict().items():
            assert_rel(v, theirs_state[k], 1e-13, f"merged {k}")
        assert_rel(logits(ours, inputs), both, MODEL_TOL[torch.float64], "merged both")
        ours.unmerge_adapter()
    for k, v in ours.state_dict().items():
        assert_bitwise(v, weights[k], f"{k} after unmerging two adapters")


def test_unsupported_activation_falls_back_with_one_warning(monkeypatch, count_ops):
    monkeypatch.setattr(neat_peft, "_WARNED", set())
    ours = peanut_model(depth=1, act="sigmoid")
    theirs = copy.deepcopy(ours)
    inputs = inputs_for("llama")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        neat_peft.accelerate(ours)
        out_ours, grads_ours = outputs_and_grads(ours, inputs)
        outputs_and_grads(ours, inputs)
    mine = [w for w in caught if "torch_neat.peft" in str(w.message)]
    assert len(mine) == 1 and "'sigmoid'" in str(mine[0].message), [str(w.message) for w in caught]
    assert count_ops["linear"] + count_ops["adapter"] == 0
    out_theirs, grads_theirs = outputs_and_grads(theirs, inputs)
    assert_rel(out_ours, out_theirs, 1e-14, "fallback logits")
    for n in grads_theirs:
        assert_rel(grads_ours[n], grads_theirs[n], 1e-14, f"fallback grad {n}")
    with torch.no_grad():  # merge/unmerge also fall back to PEFT's code, which restores W exactly
        w = {k: v.clone() for k, v in ours.state_dict().items()}
        ours.merge_adapter()
        ours.unmerge_adapter()
    for k, v in ours.state_dict().items():
        assert_bitwise(v, w[k], k)


def test_install_accelerates_layers_created_afterwards(count_ops):
    assert not neat_peft.is_installed()
    neat_peft.install()
    try:
        model = peanut_model(depth=1, act="gelu_pytorch_tanh")
        assert type(next(m for m in model.modules() if isinstance(m, PeanutLinear))) is PeanutLinear
        with torch.no_grad():
            out = logits(model, inputs_for("llama"))
        assert count_ops["linear"] == 2 * model.config.num_hidden_layers
    finally:
        neat_peft.uninstall()
    assert not neat_peft.is_installed()
    with torch.no_grad():
        assert_rel(logits(model, inputs_for("llama")), out, MODEL_TOL[torch.float64], "PEFT's own path after uninstall")
    assert count_ops["linear"] == 2 * model.config.num_hidden_layers, "uninstall left the fused path on"


def test_accelerate_rejects_models_without_peanut():
    lora = get_peft_model(BUILDERS["llama"](), LoraConfig(r=2, target_modules=["q_proj"]))
    with pytest.raises(ValueError, match="no PEFT PEANuT layer"):
        neat_peft.accelerate(lora)


def test_torch_compile_accelerated_peft_model():
    model = neat_peft.accelerate(peanut_model(depth=1, act="silu", dtype=torch.float32)).train()
    inputs = inputs_for("llama", dtype=torch.float32)
    eager = model(**inputs).loss
    compiled = torch.compile(model, backend="aot_eager")
    loss = compiled(**inputs).loss
    loss.backward()
    assert_rel(loss, eager, MODEL_TOL[torch.float32], "compiled PEFT loss")


def test_autocast_takes_the_fused_op(count_ops):
    # HF Trainer's bf16=True: float32 weights, bf16 autocast. o_proj's input is the attention
    # output, bf16 under autocast, while its weight is float32: the accelerated layer must still
    # take the fused op (it casts as F.linear would), not an unfused base matmul plus the adapter op
    base = BUILDERS["llama"](torch.float32)
    torch.manual_seed(3)
    config = PeanutConfig(r=4, depth=0, act_fn="relu", scaling=1.3, init_weights=False, target_modules=["o_proj"])
    model = get_peft_model(base, config).train()
    reference = copy.deepcopy(model)  # PEFT's own layers: not accelerated
    neat_peft.accelerate(model)
    inputs = inputs_for("llama")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours, ref = model(**inputs).logits, reference(**inputs).logits
    assert count_ops["linear"] > 0 and count_ops["adapter"] == 0
    assert torch.isfinite(ours).all()
    # bf16 autocast rounds at different points in the two implementations: close, not equal
    assert (ours.float() - ref.float()).norm() <= 5e-2 * ref.float().norm()
