"""NEAT over a quantized frozen weight (docs/design.md §5.2): bitsandbytes NF4 / FP4 (nested or not) and
LLM.int8 layers on CPU, through neat::qlinear, qcompute_g and qlowrank_linear and through NeatLinear.

The reference is float64 NEAT (reference.py) on the weight that bitsandbytes' own dequantizer returns, so
the contract is "the same numbers as the float path on bnb's W", never a copy of our own dequantizer.
bitsandbytes is pinned in tests/run.sh and runs on CPU.
"""

from __future__ import annotations

import types

import pytest
import torch

import quant_checks as checks
import torch_neat
from bnb_layers import flat_rule, four_bit, int8, quiet
from reference import ACTIVATIONS, rel_err
from torch_neat.quantized import quantized_base

bnb = pytest.importorskip("bitsandbytes", reason="tests/run.sh installs bitsandbytes==0.50.2")  # always there in CI
import bitsandbytes.functional as bnbf  # noqa: E402


def bnb_weight(q) -> torch.Tensor:
    """W as bitsandbytes itself dequantizes it (float32), where its CPU dequantizer reads its own layout.

    bitsandbytes 0.50.2's CPU ``dequantize_4bit`` indexes absmax as ``row * (d_in // blocksize) +
    col // blocksize``, which equals the flat block of its own ``quantize_4bit`` only when d_in is a multiple
    of the block size (every real model's layer); elsewhere the reference is the layout as written
    (``flat_rule``; test_bnb_cpu_dequantizer_misreads_rows_that_straddle_blocks shows which is right).
    """
    w = q.weight
    if isinstance(q, bnb.nn.Linear8bitLt):
        return bnbf.int8_vectorwise_dequant(w.data, w.SCB).float()
    if q.in_features % w.quant_state.blocksize:
        return flat_rule(q)
    return bnbf.dequantize_4bit(w.data, w.quant_state).float()


# (name, maker): odd shapes where the format allows (d_out * d_in not a multiple of the block size)
LAYERS = {
    "nf4": lambda: four_bit(72, 40),
    "fp4": lambda: four_bit(72, 40, quant_type="fp4"),
    "nf4-nested": lambda: four_bit(72, 40, nested=True),
    "fp4-nested-128": lambda: four_bit(96, 35, quant_type="fp4", nested=True, blocksize=128),
    "nf4-256-odd": lambda: four_bit(33, 31, blocksize=256),
    "nf4-float32-storage": lambda: four_bit(64, 48, storage=torch.float32),
    "int8": lambda: int8(72, 40),
    "int8-odd": lambda: int8(37, 29),
}


@pytest.mark.parametrize("nested", [False, True])
def test_the_flat_rule_is_bitsandbytes_dequantizer_where_rows_hold_whole_blocks(nested):
    for d_in, d_out, bs in [(128, 40, 64), (256, 33, 128), (64, 7, 64)]:
        q = four_bit(d_in, d_out, nested=nested, blocksize=bs)
        assert torch.equal(flat_rule(q), bnbf.dequantize_4bit(q.weight.data, q.weight.quant_state).float())


def test_bnb_cpu_dequantizer_misreads_rows_that_straddle_blocks():
    # Which reading is right where they differ: the one whose round trip is closer to the float weight.
    torch.manual_seed(0)
    W = torch.randn(35, 96)
    data, state = bnbf.quantize_4bit(W, blocksize=64, quant_type="nf4", compress_statistics=False)
    q = types.SimpleNamespace(weight=types.SimpleNamespace(data=data, quant_state=state))
    ours, theirs = flat_rule(q), bnbf.dequantize_4bit(data, state).float()
    assert rel_err(ours, W) <= rel_err(theirs, W)


def test_our_weight_reader_matches_bitsandbytes_dequantizer():
    # the int8 rule the C library uses, written as bitsandbytes documents it
    q = int8(37, 29)
    w = q.weight
    assert torch.equal(bnb_weight(q), (w.data.float() * w.SCB[:, None]) * 7.874015718698502e-3)


def test_an_int8_layer_is_read_after_its_own_forward_moved_scb():
    # bitsandbytes' forward (init_8bit_state) moves SCB from the weight to module.state, on any device
    q = int8(37, 29)
    before = quantized_base(q).args()[0][1].clone()
    quiet(lambda: q(torch.randn(3, 37)))
    assert q.weight.SCB is None, "bitsandbytes kept SCB on the weight: this test no longer tests the move"
    qb = quantized_base(q)
    assert qb is not None
    assert torch.equal(qb.args()[0][1], before)


@pytest.mark.parametrize("kind", sorted(LAYERS))
@pytest.mark.parametrize("num_hidden,activation", [(0, "relu"), (2, "gelu"), (8, "silu")])
def test_qlinear_forward_and_gradients_match_the_float_path_on_bnb_weight(kind, num_hidden, activation):
    q = LAYERS[kind]()
    checks.qlinear_matches_reference(q, bnb_weight(q), num_hidden, activation, kind)


def test_the_library_reads_bnb_storage_as_bnb_dequantizes_it():
    # bit for bit where bitsandbytes' rule is the C rule (4-bit: code * absmax; int8: its float32 order)
    for kind in ("nf4", "nf4-nested", "fp4-nested-128", "nf4-256-odd", "int8-odd"):
        q = LAYERS[kind]()
        assert torch.equal(checks.kernel_weight(q), bnb_weight(q).double()), kind


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_every_activation_and_compute_g_and_lowrank(activation):
    q = LAYERS["nf4-nested"]()
    checks.compute_g_and_lowrank_match(q, bnb_weight(q), activation)


@pytest.mark.parametrize("kind", ["nf4-nested", "int8-odd"])
def test_gradcheck_in_float64(kind):
    checks.gradcheck_float64(LAYERS[kind]())


def test_opcheck_every_quantized_op():
    checks.opcheck_quantized_ops(LAYERS["nf4-nested"]())


def test_bad_quantized_arguments_name_what_is_wrong():
    q = LAYERS["nf4"]()
    qw, qm, qo = quantized_base(q).args()
    x, A, B = torch.randn(2, qm[2]), torch.randn(2, qm[1]), torch.randn(qm[1], 2)
    cases = [
        (qw[:2], qm, r"4-bit qweight is \[data, code, absmax\]"),
        ([qw[0][:10], qw[1], qw[2]], qm, r"qweight\[0\] \(data\) must hold at least"),
        ([qw[0], qw[1].double(), qw[2]], qm, r"qweight\[1\] \(code\) must be float32"),
        ([qw[0], qw[1], qw[2][:1]], qm, r"qweight\[2\] \(absmax\) must hold at least"),
        (qw, [9, *qm[1:]], r"format must be 1 \(NF4\), 2 \(FP4\) or 3"),
        (qw, qm[:4], r"qmeta must be \[format, d_out, d_in, blocksize, blocksize2\]"),
        (qw, [qm[0], qm[1], qm[2], 100, 0], r"blocksize must be a power of two"),
    ]
    for qweight, qmeta, message in cases:
        with pytest.raises(RuntimeError, match=message):
            torch.ops.neat.qlinear(x, qweight, qmeta, qo, None, A, B, [], "relu", 1.0)
    with pytest.raises(RuntimeError, match=r"input's last dimension must equal the quantized weight's d_in"):
        torch.ops.neat.qlinear(torch.randn(2, qm[2] + 1), qw, qm, qo, None, A, B, [], "relu", 1.0)
    with pytest.raises(RuntimeError, match=r"dweight\) must be False"):
        torch.ops.neat.qlinear_backward(torch.randn(2, qm[1]), x, qw, qm, qo, None, A, B, [], "relu", 1.0,
                                        [True, True, False, True, True, False])


# --- the modules -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["nf4", "nf4-nested", "int8"])
def test_the_issue_snippet_trains_and_matches_float_neat_on_bnb_weight(kind):
    q = LAYERS[kind]()
    checks.trains_like_float_neat(q, bnb_weight(q))


def test_eval_caches_g_and_matches_training_forward():
    checks.eval_caches_g(LAYERS["fp4-nested-128"]())


def test_nothing_weight_sized_is_saved_for_backward():
    checks.nothing_weight_sized_saved(four_bit(256, 192))


def test_save_load_export_and_merge_and_unload(tmp_path):
    checks.save_load_export_merge(tmp_path, LAYERS["nf4"], bnb_weight)


@pytest.mark.parametrize("load", ["load_in_4bit", "load_in_8bit"])
def test_a_transformers_bitsandbytes_model_patches_as_it_is(tmp_path, load):
    from transformers import BitsAndBytesConfig, LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    LlamaForCausalLM(cfg).save_pretrained(tmp_path)
    quant = BitsAndBytesConfig(**{load: True}, bnb_4bit_compute_dtype=torch.float32)
    model = quiet(lambda: LlamaForCausalLM.from_pretrained(tmp_path, quantization_config=quant, device_map="cpu",
                                                            dtype=torch.float32))
    model = torch_neat.get_neat_model(model, torch_neat.NeatConfig(r=4))  # the family's q_proj / v_proj
    layers = dict(torch_neat.neat_layers(model))
    assert len(layers) == 4 and all(layer.quantized for layer in layers.values())
    checks.causal_lm_learns(model)
