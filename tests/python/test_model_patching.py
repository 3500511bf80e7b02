"""Patching tiny RoBERTa / ViT / LLaMA models (built from configs, no downloads) without PEFT."""

from __future__ import annotations

import json
import os

import pytest
import torch

import torch_neat
from hf_helpers import (
    BUILDERS,
    DEFAULT_TARGETS,
    HEADS,
    MODEL_TOL,
    NOT_LINEAR,
    assert_bitwise,
    assert_rel,
    inputs_for,
    logits,
    randomize_adapters,
    to_reference,
)

FAMILIES = list(BUILDERS)


def patched(family, dtype=torch.float64, **cfg):
    model = BUILDERS[family](dtype)
    config = torch_neat.NeatConfig(**{"r": 4, "depth": 4, "activation": "gelu", "scale": 1.5, **cfg})
    return torch_neat.get_neat_model(model, config)


@pytest.mark.parametrize("family", FAMILIES)
def test_default_targets_and_parameter_count(family):
    model = patched(family)
    names = [n for n, _ in torch_neat.neat_layers(model)]
    n_layers = model.config.num_hidden_layers
    assert len(names) == 2 * n_layers
    suffixes = {n.rpartition(".")[2] for n in names}
    assert len(suffixes) == 2 and suffixes <= DEFAULT_TARGETS[family]
    expected = sum(4 * 2 * layer.out_features + 2 * 4 * 4 for _, layer in torch_neat.neat_layers(model))
    trainable, total = torch_neat.count_trainable_parameters(model)
    assert trainable == expected
    assert total == sum(p.numel() for p in model.parameters())


def _base_and_logits(family):
    """The unpatched model, its inputs and its logits."""
    base = BUILDERS[family]()
    inputs = inputs_for(family)
    with torch.no_grad():
        return base, inputs, logits(base, inputs)


@pytest.mark.parametrize("family", FAMILIES)
def test_init_equals_base_and_adapter_equals_reference(family):
    base, inputs, base_out = _base_and_logits(family)
    model = patched(family)
    model.train()  # the fused op (eval mode would take the cached-G path, tested below)
    with torch.no_grad():
        assert_rel(logits(model, inputs), base_out, MODEL_TOL[torch.float64], f"{family}: fresh adapter vs base")
    randomize_adapters(model)
    ref_model = to_reference(model)
    out = logits(model, inputs)
    ref = logits(ref_model, inputs)
    assert_rel(out, ref, MODEL_TOL[torch.float64], f"{family}: adapted model vs docs/design.md §1 reference")
    model.eval()
    with torch.no_grad():
        assert_rel(logits(model, inputs), ref, MODEL_TOL[torch.float64], f"{family}: eval (cached G) vs reference")


@pytest.mark.parametrize("family", FAMILIES)
def test_training_lowers_loss_and_touches_only_adapter(family):
    torch.manual_seed(0)
    model = patched(family, dtype=torch.float32, modules_to_save=[HEADS[family]]).train()
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    inputs = inputs_for(family, dtype=torch.float32, batch=4)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(6):
        loss = model(**inputs).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0], f"{family}: loss did not go down: {losses}"
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    trainable_names = set(torch_neat.adapter_state_dict(model))
    assert changed <= trainable_names, f"{family}: frozen tensors changed: {sorted(changed - trainable_names)[:5]}"
    assert any(".neat_A" in k for k in changed) and any(".neat_B" in k for k in changed)
    assert any(".neat_hidden." in k for k in changed)
    assert any(k.startswith(HEADS[family] + ".") for k in changed), "modules_to_save were not trained"


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_merge_unmerge(family, dtype):
    model = patched(family, dtype=dtype)
    randomize_adapters(model, std=0.1)
    inputs = inputs_for(family, dtype=dtype)
    weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        unmerged = logits(model, inputs)
        torch_neat.merge_adapters(model)
        assert all(layer.merged for _, layer in torch_neat.neat_layers(model))
        merged = logits(model, inputs)
    assert_rel(merged, unmerged, MODEL_TOL[dtype], f"{family} {dtype}: merged vs unmerged")
    torch_neat.unmerge_adapters(model)
    for k, v in model.state_dict().items():
        assert_bitwise(v, weights[k], f"{family}: {k} after merge+unmerge")


@pytest.mark.parametrize("family", FAMILIES)
def test_save_load_roundtrip(family, tmp_path):
    model = patched(family, modules_to_save=[HEADS[family]])
    randomize_adapters(model)
    with torch.no_grad():
        for p in model.get_submodule(HEADS[family]).parameters():
            p.add_(0.5)  # a trained head must travel with the adapter
    inputs = inputs_for(family)
    with torch.no_grad():
        expected = logits(model, inputs)
    torch_neat.save_adapter(model, tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["adapter_model.safetensors", "neat_config.json"]
    saved = json.loads((tmp_path / "neat_config.json").read_text())
    assert (saved["r"], saved["depth"], saved["activation"], saved["scale"]) == (4, 4, "gelu", 1.5)
    from safetensors.torch import load_file

    keys = set(load_file(tmp_path / "adapter_model.safetensors"))
    assert not any("base_layer" in k for k in keys), "base weights must not be saved"
    assert all(".neat_" in k or k.startswith(HEADS[family] + ".") for k in keys)

    fresh = BUILDERS[family]()  # same seed: same base weights, fresh head
    torch_neat.load_adapter(fresh, tmp_path)
    assert fresh.neat_config == model.neat_config
    with torch.no_grad():
        assert_rel(logits(fresh, inputs), expected, 1e-14, f"{family}: loaded adapter")


def test_load_adapter_rejects_mismatch(tmp_path):
    model = patched("llama")
    torch_neat.save_adapter(model, tmp_path)
    other = patched("llama", r=2)
    with pytest.raises(ValueError, match=r"differs .* \['r'\]"):
        torch_neat.load_adapter(other, tmp_path)
    with pytest.raises(FileNotFoundError, match="adapter_model.safetensors"):
        torch_neat.load_adapter(BUILDERS["llama"](), tmp_path / "missing")


@pytest.mark.parametrize("family", FAMILIES)
def test_disable_enable_and_merge_and_unload(family):
    base, inputs, base_out = _base_and_logits(family)
    base_keys = set(base.state_dict())
    model = patched(family)
    randomize_adapters(model)
    with torch.no_grad():
        adapted = logits(model, inputs)
        torch_neat.disable_adapters(model)
        assert torch.equal(logits(model, inputs), base_out)
        torch_neat.enable_adapters(model)
        assert_rel(logits(model, inputs), adapted, 1e-14, "re-enabled")
        with torch_neat.adapters_disabled(model):
            assert torch.equal(logits(model, inputs), base_out)
        assert_rel(logits(model, inputs), adapted, 1e-14, "after the context manager")

        plain = torch_neat.merge_and_unload(model)
        assert plain is model
        assert not list(torch_neat.neat_layers(plain))
        assert set(plain.state_dict()) == base_keys
        assert not hasattr(plain, "neat_config")
        assert_rel(logits(plain, inputs), adapted, MODEL_TOL[torch.float64], f"{family}: merge_and_unload")


def test_unload_restores_base():
    base = BUILDERS["roberta"]()
    model = patched("roberta")
    randomize_adapters(model)
    plain = torch_neat.unload(model)
    for k, v in plain.state_dict().items():
        assert_bitwise(v, base.state_dict()[k], k)


def test_regex_targets_and_exclude():
    model = BUILDERS["roberta"]()
    config = torch_neat.NeatConfig(
        r=2, target_modules=r".*attention\.self\.(query|key)", exclude_modules=["layer.0.attention.self.key"]
    )
    torch_neat.get_neat_model(model, config)
    names = sorted(n for n, _ in torch_neat.neat_layers(model))
    assert names == [
        "roberta.encoder.layer.0.attention.self.query",
        "roberta.encoder.layer.1.attention.self.key",
        "roberta.encoder.layer.1.attention.self.query",
    ]


@pytest.mark.parametrize(
    "kwargs, err, match",
    [
        ({"r": 0}, ValueError, "NeatConfig: r must be a positive int; got 0"),
        ({"depth": 3}, ValueError, "NeatConfig: depth must be even and >= 2"),
        ({"depth": 1}, ValueError, "NeatConfig: depth must be even"),
        ({"activation": "mish"}, ValueError, "NeatConfig: activation: unknown activation 'mish'"),
        ({"target_modules": []}, ValueError, "target_modules must not be empty"),
        ({"target_modules": "("}, ValueError, "not a valid regular expression"),
        ({"modules_to_save": "classifier"}, TypeError, "modules_to_save must be a list"),
    ],
)
def test_bad_config_values(kwargs, err, match):
    with pytest.raises(err, match=match):
        torch_neat.NeatConfig(**kwargs)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize(
    "kind, err, match",
    [
        ("nothing", ValueError, "matched no module; this model's nn.Linear names include"),
        ("not_linear", TypeError, "NEAT cannot adapt \\(only nn.Linear\\)"),
        ("bad_save", ValueError, "modules_to_save entry 'no_such_head' matched no module"),
    ],
)
def test_bad_config_for_model_leaves_model_untouched(family, kind, err, match):
    model = BUILDERS[family]()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    modules = [type(m) for m in model.modules()]
    cfg = {
        "nothing": {"target_modules": ["no_such_proj"]},
        "not_linear": {"target_modules": [NOT_LINEAR[family]]},
        "bad_save": {"modules_to_save": ["no_such_head"]},
    }[kind]
    with pytest.raises(err, match=match):
        torch_neat.get_neat_model(model, torch_neat.NeatConfig(r=2, **cfg))
    assert [type(m) for m in model.modules()] == modules
    assert all(p.requires_grad for p in model.parameters()), "a failed patch must not freeze anything"
    assert not hasattr(model, "neat_config")
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k])


def test_no_default_for_unknown_family():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4))
    with pytest.raises(ValueError, match="no default for model type None"):
        torch_neat.get_neat_model(model, torch_neat.NeatConfig(r=2))
    torch_neat.get_neat_model(model, torch_neat.NeatConfig(r=2, target_modules=["0"]))
    assert isinstance(model[0], torch_neat.NeatLinear)
    with pytest.raises(ValueError, match="already holds NEAT layers"):
        torch_neat.get_neat_model(model, torch_neat.NeatConfig(r=2, target_modules=["0"]))


def test_transformers_trainer_two_steps(tmp_path):
    from transformers import Trainer, TrainingArguments

    model = patched("roberta", dtype=torch.float32, modules_to_save=["classifier"])
    data = inputs_for("roberta", dtype=torch.float32, batch=8)
    rows = [{k: v[i] for k, v in data.items()} for i in range(8)]
    before = {k: v.detach().clone() for k, v in torch_neat.adapter_state_dict(model).items()}
    args = TrainingArguments(
        output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=4, learning_rate=1e-2,
        report_to="none", use_cpu=True, save_strategy="no", logging_strategy="no", disable_tqdm=True,
    )
    trainer = Trainer(model=model, args=args, train_dataset=rows)
    result = trainer.train()
    assert result.global_step == 2
    after = torch_neat.adapter_state_dict(model)
    assert any(not torch.equal(before[k], after[k]) for k in before if ".neat_B" in k)


def test_torch_compile_patched_model():
    model = patched("llama", dtype=torch.float32).train()
    randomize_adapters(model, std=0.1)
    inputs = inputs_for("llama", dtype=torch.float32)
    eager_loss = model(**inputs).loss
    eager_loss.backward()
    eager_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()
    compiled = torch.compile(model, backend="aot_eager", fullgraph=False)
    loss = compiled(**inputs).loss
    loss.backward()
    assert_rel(loss, eager_loss, MODEL_TOL[torch.float32], "compiled loss")
    for n, p in model.named_parameters():
        if p.requires_grad:
            assert_rel(p.grad, eager_grads[n], MODEL_TOL[torch.float32], f"compiled grad {n}")
