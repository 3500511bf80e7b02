"""NEAT over torchao's quantized weights (docs/design.md §5.2): the int8 weight-only ``Int8Tensor`` read as
the C library's INT8_ROW format, the ``NF4Tensor`` as NF4 with torchao's own table and scalers.

The reference is float64 NEAT (reference.py) on the W that torchao itself dequantizes, and the contract is
quant_checks.py's, the one the bitsandbytes layers meet. How close the library's W is to torchao's is
proved here element by element: NF4 bit for bit (bf16 / fp16: torchao's W is the library's rounded to that
dtype), int8 within 5 float32 roundings. torchao is pinned in tests/run.sh, so it is imported directly.
"""

from __future__ import annotations

import re
import subprocess
import sys
import warnings

import pytest
import torch
from torch import nn
from torchao.quantization import (
    Float8WeightOnlyConfig,
    Int8DynamicActivationInt8WeightConfig,
    Int8Tensor,
    Int8WeightOnlyConfig,
    IntxWeightOnlyConfig,
    quantize_,
    to_nf4,
)
from torchao.quantization.granularity import PerGroup, PerRow, PerTensor
from torchao.quantization.quant_primitives import MappingType

import quant_checks as checks
import torch_neat
from reference import ACTIVATIONS

U = 2.0**-24  # float32's unit roundoff


def quantized(fn):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchao's notes on kernels it cannot load on this CPU
        return fn()


def int8_layer(d_in, d_out, granularity=PerRow(), dtype=torch.float32, bias=True, weight_scale=1.0):
    lin = nn.Linear(d_in, d_out, bias=bias).to(dtype)
    with torch.no_grad():
        lin.weight.mul_(weight_scale)
    quantized(lambda: quantize_(lin, Int8WeightOnlyConfig(granularity=granularity, set_inductor_config=False)))
    return lin


def nf4_layer(d_in, d_out, block_size=64, scaler_block_size=256, dtype=torch.float32, bias=True):
    lin = nn.Linear(d_in, d_out, bias=bias).to(dtype)
    lin.weight = nn.Parameter(quantized(lambda: to_nf4(lin.weight.detach(), block_size, scaler_block_size)),
                              requires_grad=False)
    return lin


def nf4_rule(w) -> torch.Tensor:
    """NF4Tensor.get_original_weight's rule in float64: nf4[code] * scaler, codes high nibble first over the
    flattened weight, one of torchao's dequantized scalers per block; the product is exact here, torchao
    rounds it to the tensor's dtype."""
    data = w.quantized_data
    codes = torch.stack([data >> 4, data & 15], -1).reshape(-1).long()
    scalers = w.dequantize_scalers(w.quantized_scalers, w.quantization_factor, w.scaler_block_size)
    return (w.nf4.double()[codes] * scalers.double().repeat_interleave(w.block_size)).reshape(w.shape)


def torchao_weight(q) -> torch.Tensor:
    """W as torchao dequantizes it (int8: ``dequantize(float32)``; NF4: ``get_original_weight``; a bf16 /
    fp16 NF4Tensor: the same product before torchao rounds it to that dtype, float64)."""
    w = q.weight
    if isinstance(w, Int8Tensor):
        return w.dequantize(torch.float32)
    return w.get_original_weight() if w.dtype == torch.float32 else nf4_rule(w)


# (name, maker): rows straddling blocks, scaler blocks that are and are not powers of two, half dtypes
LAYERS = {
    "int8": lambda: int8_layer(72, 40),
    "int8-odd": lambda: int8_layer(37, 29),
    "int8-per-tensor": lambda: int8_layer(40, 72, granularity=PerTensor()),
    "int8-bf16": lambda: int8_layer(72, 40, dtype=torch.bfloat16),
    "nf4": lambda: nf4_layer(256, 64),  # torchao's defaults: blocks of 64, scalers in blocks of 256
    "nf4-scalers-16": lambda: nf4_layer(128, 64, scaler_block_size=16),
    "nf4-odd": lambda: nf4_layer(37, 64, scaler_block_size=37),
    "nf4-block-32": lambda: nf4_layer(72, 40, block_size=32, scaler_block_size=9, bias=False),
    "nf4-bf16": lambda: nf4_layer(128, 64, scaler_block_size=16, dtype=torch.bfloat16),
    "nf4-fp16": lambda: nf4_layer(128, 64, scaler_block_size=16, dtype=torch.float16),
}


# --- the reading: the library's W against torchao's -------------------------------------------------------


@pytest.mark.parametrize("gran", [PerRow(), PerTensor()], ids=["row", "tensor"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("weight_scale", [1.0, 1e-5, 1e5])
def test_int8_reads_as_torchao_dequantize_within_five_float32_roundings(gran, dtype, weight_scale):
    # INT8_ROW: (q * fl(127 s)) * fl(1/127), 4 roundings from q s; torchao rounds q s once (docs/design.md §5.2)
    q = int8_layer(96, 33, granularity=gran, dtype=dtype, weight_scale=weight_scale)
    ours, theirs = checks.kernel_weight(q), q.weight.dequantize(torch.float32).double()
    bound = 5 * U * (1 + 1e-6) * theirs.abs()
    worst = ((ours - theirs).abs() / theirs.abs().clamp_min(1e-300)).max().item() / U
    assert bool(((ours - theirs).abs() <= bound).all()), f"worst {worst:.2f} u over the 5 u bound"
    # torchao's dequantize in the layer's own dtype is this float32 W rounded once more
    assert torch.equal(q.weight.dequantize(), theirs.float().to(dtype))


@pytest.mark.parametrize("kind", ["nf4", "nf4-scalers-16", "nf4-odd", "nf4-block-32"])
def test_nf4_reads_bit_for_bit_as_torchao_dequantizes(kind):
    q = LAYERS[kind]()
    theirs = q.weight.get_original_weight()
    assert torch.equal(nf4_rule(q.weight).float(), theirs), "the nibble order or block rule is not torchao's"
    assert torch.equal(checks.kernel_weight(q), theirs.double())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_nf4_is_torchao_weight_before_its_rounding(dtype):
    # each W is a product of two half values, exact in float32; torchao rounds it to the half dtype
    q = nf4_layer(128, 64, scaler_block_size=16, dtype=dtype)
    ours = checks.kernel_weight(q)
    assert torch.equal(ours, nf4_rule(q.weight))
    assert torch.equal(ours.to(dtype), q.weight.get_original_weight())
    assert torch.equal(torch_neat.quantized.quantized_base(q).dequantize().double(), ours)


def test_the_nested_format_would_not_be_torchao_scalers():
    # why NF4Tensor's scalers are passed dequantized (docs/design.md §5.2): torchao divides each int8 code by
    # its block's factor, the nested format multiplies by a stored 1 / factor; they round apart often
    torch.manual_seed(0)
    w = quantized(lambda: to_nf4(torch.randn(256, 512) * torch.rand(256, 1) * 3))
    codes = w.quantized_scalers.float().view(-1, w.scaler_block_size)
    nested = (codes * (1.0 / w.quantization_factor)[:, None]).flatten() + w.scaler_mean
    theirs = w.dequantize_scalers(w.quantized_scalers, w.quantization_factor, w.scaler_block_size)
    differ = (nested != theirs).sum().item()
    assert differ > theirs.numel() // 50, f"only {differ} of {theirs.numel()} scalers differ: the nested reading may now be exact"


# --- the ops ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(LAYERS))
@pytest.mark.parametrize("num_hidden,activation", [(0, "relu"), (2, "gelu"), (8, "silu")])
def test_qlinear_forward_and_gradients_match_the_float_path_on_torchao_weight(kind, num_hidden, activation):
    q = LAYERS[kind]()
    checks.qlinear_matches_reference(q, torchao_weight(q), num_hidden, activation, kind)


@pytest.mark.parametrize("kind", ["int8-per-tensor", "nf4-odd"])
@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_every_activation_and_compute_g_and_lowrank(kind, activation):
    q = LAYERS[kind]()
    checks.compute_g_and_lowrank_match(q, torchao_weight(q), activation)


@pytest.mark.parametrize("kind", ["int8-odd", "nf4-odd", "nf4-bf16"])
def test_gradcheck_in_float64(kind):
    checks.gradcheck_float64(LAYERS[kind]())


@pytest.mark.parametrize("kind", ["int8", "nf4"])
def test_opcheck_every_quantized_op(kind):
    checks.opcheck_quantized_ops(LAYERS[kind]())


# --- the modules ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["int8", "int8-bf16", "nf4", "nf4-bf16"])
def test_get_neat_model_trains_and_matches_float_neat_on_torchao_weight(kind):
    q = LAYERS[kind]()
    checks.trains_like_float_neat(q, torchao_weight(q).float())


@pytest.mark.parametrize("kind", ["int8", "nf4-odd"])
def test_eval_caches_g_and_matches_training_forward(kind):
    checks.eval_caches_g(LAYERS[kind]())


@pytest.mark.parametrize("make", [lambda: int8_layer(256, 192), lambda: nf4_layer(256, 192)], ids=["int8", "nf4"])
def test_nothing_weight_sized_is_saved_for_backward(make):
    checks.nothing_weight_sized_saved(make())


@pytest.mark.parametrize("kind", ["int8", "nf4"])
def test_save_load_export_and_merge_and_unload(tmp_path, kind):
    checks.save_load_export_merge(tmp_path, LAYERS[kind], lambda q: torchao_weight(q).float())


def test_a_llama_quantized_by_torchao_patches_as_it_is():
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    model = LlamaForCausalLM(cfg)
    quantized(lambda: quantize_(model, Int8WeightOnlyConfig(set_inductor_config=False)))  # every nn.Linear
    model = torch_neat.get_neat_model(model, torch_neat.NeatConfig(r=4))  # the family's q_proj / v_proj
    layers = dict(torch_neat.neat_layers(model))
    assert len(layers) == 4 and all(layer.quantization == "torchao Int8Tensor" for layer in layers.values())
    checks.causal_lm_learns(model)


# --- what is refused --------------------------------------------------------------------------------------


def _from_hp(granularity, mapping_type):
    lin = nn.Linear(64, 48)
    lin.weight = nn.Parameter(Int8Tensor.from_hp(lin.weight.detach(), granularity, mapping_type=mapping_type),
                              requires_grad=False)
    return lin


def _config(cfg):
    lin = nn.Linear(64, 48)
    quantized(lambda: quantize_(lin, cfg))
    return lin


REFUSED = {  # (maker, what the message says)
    "int8-per-group": (lambda: int8_layer(64, 48, granularity=PerGroup(32)),
                       "has a torchao Int8Tensor quantized per group (block_size [1, 32])"),
    "int8-asymmetric": (lambda: _from_hp(PerRow(), MappingType.ASYMMETRIC), "quantized asymmetrically"),
    "int8-dynamic-activation": (lambda: _config(Int8DynamicActivationInt8WeightConfig(set_inductor_config=False)),
                                "quantizes its input too"),
    "int4": (lambda: _config(IntxWeightOnlyConfig(weight_dtype=torch.int4)),
             "has a quantized weight (torchao.quantization.IntxUnpackedToInt8Tensor)"),
    "float8": (lambda: _config(Float8WeightOnlyConfig()), "has a quantized weight (torchao.quantization.Float8Tensor)"),
    "nf4-block-8": (lambda: nf4_layer(64, 48, block_size=8, scaler_block_size=16),
                    "NF4Tensor with block_size 8; the NF4 format needs a power of two >= 16"),
    "nf4-block-48": (lambda: nf4_layer(64, 48, block_size=48, scaler_block_size=16),
                     "NF4Tensor with block_size 48; the NF4 format needs a power of two >= 16"),
}


@pytest.mark.parametrize("kind", sorted(REFUSED))
def test_get_neat_model_refuses_an_unsupported_torchao_weight_and_changes_nothing(kind):
    make, says = REFUSED[kind]
    checks.get_neat_model_refuses_untouched(make(), says)


@pytest.mark.parametrize("kind", sorted(REFUSED))
def test_neat_linear_refuses_an_unsupported_torchao_weight(kind):
    make, says = REFUSED[kind]
    checks.neat_linear_refuses(make(), r"NeatLinear: base_layer .*" + re.escape(says) + r".*torchao's Int8Tensor")


def test_the_peft_bridge_still_refuses_a_torchao_base():
    import torch_neat.peft as neat_peft
    from peft import PeanutConfig, get_peft_model

    model = quantized(lambda: get_peft_model(nn.Sequential(LAYERS["nf4"]()), PeanutConfig(r=4, target_modules=["0"])))
    with pytest.raises(TypeError, match=r"accelerate: PEANuT layers over quantized base layers: .*NF4Tensor.*Supported"):
        neat_peft.accelerate(model)


def test_recognition_imports_no_torchao():
    code = (
        "import sys, torch, torch_neat\n"
        "m = torch_neat.get_neat_model(torch.nn.Sequential(torch.nn.Linear(8, 8)), "
        "torch_neat.NeatConfig(r=2, target_modules=['0']))\n"
        "assert 'torchao' not in sys.modules, 'torchao imported for a float model'\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr


def test_an_int8_scale_that_overflows_the_format_is_refused():
    q = int8_layer(64, 48)
    with torch.no_grad():
        q.weight.scale[3] = 3e38  # finite, but 127 * scale is not: SCB would be inf
    checks.neat_linear_refuses(q, r"scale is not finite, or overflows float32 as the format's 127 \* scale")
