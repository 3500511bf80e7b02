"""Quantized frozen layers NEAT cannot read exactly are refused with an error naming the module, why, and what
is supported, before anything is changed (docs/design.md §5.2); the supported ones are test_quantized.py's.
bitsandbytes is pinned in tests/run.sh and runs on CPU."""

from __future__ import annotations


import pytest
import torch
from torch import nn

import quant_checks as checks
import torch_neat
from bnb_layers import four_bit, quiet
from bnb_layers import int8 as int8_layer

bnb = pytest.importorskip("bitsandbytes", reason="tests/run.sh installs bitsandbytes==0.50.2")  # always there in CI


def nf4(quant_type="nf4", storage=torch.uint8):
    return four_bit(64, 48, quant_type=quant_type, nested=True, storage=storage)  # bitsandbytes' default nesting


def int8():
    return int8_layer(64, 48)


def nf4_unquantized():
    q = bnb.nn.Linear4bit(64, 48, quant_type="nf4", compute_dtype=torch.float32)
    q.weight = bnb.nn.Params4bit(nn.Linear(64, 48).weight.data.clone(), requires_grad=False, quant_type="nf4")
    return q  # bitsandbytes quantizes on .to(device)


QUANTIZED = {  # the kinds test_quantized.py runs; the bridge to PEFT still refuses them
    "nf4": nf4,
    "fp4": lambda: nf4(quant_type="fp4"),
    "nf4-float32-storage": lambda: nf4(storage=torch.float32),  # packed codes in a float32 tensor
    "int8": int8,
}
REFUSED = {  # (maker, what the message says)
    "nf4-unquantized": (nf4_unquantized, "Linear4bit not quantized yet"),
    "int8-unquantized": (lambda: bnb.nn.Linear8bitLt(64, 48, has_fp16_weights=False), "Linear8bitLt not quantized to int8"),
}


@pytest.mark.parametrize("kind", sorted(REFUSED))
def test_get_neat_model_refuses_a_quantized_target_and_changes_nothing(kind):
    make, says = REFUSED[kind]
    checks.get_neat_model_refuses_untouched(make(), says)


@pytest.mark.parametrize("kind", sorted(REFUSED))
def test_neat_linear_refuses_a_quantized_base(kind):
    make, says = REFUSED[kind]
    checks.neat_linear_refuses(make(), r"NeatLinear: base_layer is a bitsandbytes " + says)


@pytest.mark.parametrize("kind", sorted(QUANTIZED))
def test_supported_quantized_targets_are_accepted(kind):
    model = torch_neat.get_neat_model(nn.Sequential(QUANTIZED[kind]()), torch_neat.NeatConfig(r=4, target_modules=["0"]))
    assert model[0].quantized


def test_an_integer_weight_is_refused_too():
    lin = nn.Linear(8, 8)
    lin.weight = nn.Parameter(torch.zeros(8, 8, dtype=torch.int8), requires_grad=False)
    with pytest.raises(TypeError, match=r"'0' has a torch.int8 weight.*Supported"):
        torch_neat.get_neat_model(nn.Sequential(lin), torch_neat.NeatConfig(r=2, target_modules=["0"]))


def test_a_tensor_subclass_from_a_quantizing_package_is_refused():
    # torchao's quantized weights are tensor subclasses on a plain nn.Linear; recognised by their package
    Fake = type("AffineQuantizedTensor", (torch.Tensor,), {"__module__": "torchao.dtypes.affine_quantized_tensor"})
    lin = nn.Linear(8, 8)
    lin.weight = nn.Parameter(lin.weight.data.as_subclass(Fake), requires_grad=False)
    with pytest.raises(TypeError, match=r"has a quantized weight \(torchao\.dtypes"):
        torch_neat.NeatLinear(lin, r=2)


def test_float_layers_still_pass_the_guard():
    for dtype in (torch.float32, torch.float64, torch.bfloat16, torch.float16):
        torch_neat.NeatLinear(nn.Linear(8, 8).to(dtype), r=2)


# --- PEFT users: PEANuT over a quantized base ------------------------------------------------------------


def _peanut(q):
    from peft import PeanutConfig, get_peft_model

    return quiet(lambda: get_peft_model(nn.Sequential(q), PeanutConfig(r=4, target_modules=["0"])))


@pytest.mark.parametrize("kind", ["nf4", "int8"])
def test_accelerate_refuses_a_quantized_base_and_changes_nothing(kind):
    import torch_neat.peft as neat_peft

    model = _peanut(QUANTIZED[kind]())
    classes = [type(m) for m in model.modules()]
    with pytest.raises(TypeError, match=r"accelerate: PEANuT layers over quantized base layers: .*bitsandbytes.*Supported"):
        neat_peft.accelerate(model)
    assert [type(m) for m in model.modules()] == classes


@pytest.mark.parametrize("kind", ["nf4", "int8"])
def test_installed_bridge_refuses_a_quantized_base_at_forward_and_merge(kind):
    import torch_neat.peft as neat_peft

    model = _peanut(QUANTIZED[kind]())
    layer = next(m for m in model.modules() if type(m).__name__ == "Linear" and hasattr(m, "peanut_A"))
    neat_peft.install()
    try:
        with pytest.raises(TypeError, match=r"torch_neat.peft: the PEANuT layer's base layer is a quantized layer"):
            model(torch.randn(3, 64))
        with pytest.raises(TypeError, match="quantized"):
            layer.merge()
        assert not layer.merged
    finally:
        neat_peft.uninstall()


def test_export_lora_refuses_a_peanut_model_on_a_quantized_base(tmp_path):
    model = _peanut(QUANTIZED["int8"]())
    with pytest.raises(TypeError, match=r"export_lora: PEANuT layer '0'.s base layer is a quantized layer"):
        torch_neat.export_lora(model, tmp_path / "lora")
    assert not (tmp_path / "lora").exists()
