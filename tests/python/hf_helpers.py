"""Shared by the layer / model / PEFT tests: a plain-PyTorch re-statement of docs/design.md §1, tiny
HuggingFace models built from configs (random weights, no downloads), and error reporting (docs/design.md §8.2).
"""

from __future__ import annotations

import copy

import reference
import torch
from torch import nn

import torch_neat

# ---------------------------------------------------------------------------------------------
# docs/design.md §1 in plain PyTorch: the one reference of the test suite (reference.py), taking the
# transformers activation names too.

def reference_g(W, A, hidden, act):
    return reference.reference_g(W, A, hidden, torch_neat.canonical_activation(act))


def reference_linear(x, W, b, A, B, hidden, act, s):
    return reference.reference_linear(x, W, b, A, B, hidden, torch_neat.canonical_activation(act), s)


class ReferenceNeat(nn.Module):
    """The same tensors as a NeatLinear, computed by reference_linear."""

    def __init__(self, layer: torch_neat.NeatLinear):
        super().__init__()
        self.layer = layer

    def forward(self, x):
        L = self.layer
        return reference_linear(x, L.weight, L.bias, L.neat_A, L.neat_B, list(L.neat_hidden), L.activation, L.scale)


def to_reference(model: nn.Module) -> nn.Module:
    """A deep copy of a patched model whose NEAT layers compute docs/design.md §1 in plain PyTorch."""
    ref = copy.deepcopy(model)
    for name, layer in list(torch_neat.neat_layers(ref)):
        parent, _, child = name.rpartition(".")
        setattr(ref.get_submodule(parent), child, ReferenceNeat(layer))
    return ref


# ---------------------------------------------------------------------------------------------
# Tolerances and reporting

TOL = reference.TOL
MODEL_TOL = {torch.float64: 1e-10, torch.float32: 1e-4}
rel_err = reference.rel_err


def assert_rel(out: torch.Tensor, ref: torch.Tensor, tol: float, what: str = "output") -> None:
    assert out.shape == ref.shape, f"{what}: shape {tuple(out.shape)} != reference {tuple(ref.shape)}"
    err = rel_err(out, ref)
    if err > tol:
        diff = (out.detach().double() - ref.detach().double()).abs().flatten()
        worst = diff.topk(min(5, diff.numel()))
        raise AssertionError(
            f"{what}: relative Frobenius error {err:.3e} > {tol:.0e}; worst abs diffs {worst.values.tolist()} "
            f"at flat indices {worst.indices.tolist()}"
        )


def assert_bitwise(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    ints = {8: torch.int64, 4: torch.int32, 2: torch.int16}[a.element_size()]
    ai, bi = a.detach().contiguous().view(ints), b.detach().contiguous().view(ints)
    bad = (ai != bi).nonzero()
    if bad.numel():
        first = [tuple(i.tolist()) for i in bad[:5]]
        raise AssertionError(f"{what}: {bad.shape[0]} elements differ bitwise, first at {first}")


# ---------------------------------------------------------------------------------------------
# Tiny HuggingFace models (random weights from configs; no downloads)

VOCAB = 61


def tiny_roberta(dtype=torch.float64, seed=0):
    from transformers import RobertaConfig, RobertaForSequenceClassification

    torch.manual_seed(seed)
    cfg = RobertaConfig(
        vocab_size=VOCAB, hidden_size=24, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
        max_position_embeddings=40, num_labels=3, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
        pad_token_id=1,
    )
    return RobertaForSequenceClassification(cfg).to(dtype).eval()


def tiny_vit(dtype=torch.float64, seed=0):
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(seed)
    cfg = ViTConfig(
        image_size=12, patch_size=4, num_channels=3, hidden_size=24, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=37, num_labels=3, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )
    return ViTForImageClassification(cfg).to(dtype).eval()


def tiny_llama(dtype=torch.float64, seed=0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=VOCAB, hidden_size=24, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=40, tie_word_embeddings=False,
    )
    return LlamaForCausalLM(cfg).to(dtype).eval()


BUILDERS = {"roberta": tiny_roberta, "vit": tiny_vit, "llama": tiny_llama}
DEFAULT_TARGETS = {"roberta": {"query", "value"}, "vit": {"query", "value", "q_proj", "v_proj"}, "llama": {"q_proj", "v_proj"}}
HEADS = {"roberta": "classifier", "vit": "classifier", "llama": "lm_head"}
NOT_LINEAR = {"roberta": "attention", "vit": "attention", "llama": "self_attn"}


def inputs_for(family: str, dtype=torch.float64, batch: int = 3, seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    if family == "vit":
        return {
            "pixel_values": torch.randn(batch, 3, 12, 12, generator=g, dtype=dtype),
            "labels": torch.randint(0, 3, (batch,), generator=g),
        }
    ids = torch.randint(3, VOCAB, (batch, 7), generator=g)
    out = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    out["labels"] = ids.clone() if family == "llama" else torch.randint(0, 3, (batch,), generator=g)
    return out


def logits(model, inputs) -> torch.Tensor:
    return model(**{k: v for k, v in inputs.items() if k != "labels"}).logits


@torch.no_grad()
def randomize_adapters(model: nn.Module, seed: int = 2, std: float = 0.3) -> None:
    """Gives B (zero at init) and the rest random values so the adapter term is far from zero."""
    g = torch.Generator().manual_seed(seed)
    for _, layer in torch_neat.neat_layers(model):
        for p in (layer.neat_A, layer.neat_B, *layer.neat_hidden):
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64).to(p.dtype) * std)


def tiny_llama_for_autocast(hidden: int, intermediate: int) -> nn.Module:
    """A tiny LLaMA (random weights) with NEAT on q, v, o and down projections, depth 4, silu: the model the
    autocast tests (CPU and tests/gpu) train as HF Trainer would."""
    import transformers

    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=61, hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32, tie_word_embeddings=False,
    )
    model = transformers.LlamaForCausalLM(cfg)
    config = torch_neat.NeatConfig(r=4, depth=4, activation="silu", scale=4.0,
                                   target_modules=["q_proj", "v_proj", "o_proj", "down_proj"])
    return torch_neat.get_neat_model(model, config)
