"""The main job (examples/finetune.py): a tiny smoke run of its functions on a small BERT from a config,
the real offline data split, and a few real steps on the shipped all-MiniLM-L6-v2 weights and VADER data.
tests/run.sh installs the model and data packages, so nothing here is optional.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import load_example

import torch_neat


FINETUNE = Path(__file__).resolve().parents[2] / "examples" / "finetune.py"


@pytest.fixture(scope="module")
def ft():
    with load_example(FINETUNE, "neat_finetune_example") as module:
        yield module


def tiny_encoder():
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=24,
                     max_position_embeddings=16, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return BertModel(cfg)


def tiny_data(n, seed):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 50, (n, 6), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": (ids[:, 1] < 27).long()}


def test_smoke_run_all_methods(ft, tmp_path):
    args = ft.parse_args(["--max-steps", "3", "--batch-size", "8", "--rank", "2", "--depth", "4", "--device", "cpu",
                          "--output-dir", str(tmp_path / "adapter")])
    train, test = tiny_data(40, 1), tiny_data(16, 2)
    rows = [ft.train_and_evaluate(m, tiny_encoder, train, test, args, progress=False) for m in ("neat", "lora", "head")]
    by = {r["method"]: r for r in rows}
    hidden, n_layers, r = 16, 2, 2
    head = hidden * 2 + 2
    assert by["head"]["trainable"] == head
    assert by["lora"]["trainable"] == head + n_layers * 2 * r * (hidden + hidden)
    assert by["neat"]["trainable"] == by["lora"]["trainable"] + n_layers * 2 * 2 * r * r  # + hidden layers
    for row in rows:
        assert row["steps"] == 3 and row["train_s"] > 0 and 0.0 <= row["accuracy"] <= 1.0
        assert row["peak_mb"] > 0
    table = ft.format_table(rows, "cpu")
    assert len(table.splitlines()) == 2 + 3
    assert "NEAT (torch-neat)" in table and "LoRA (PEFT)" in table and "head only" in table

    check = by["neat"]["lora_check"]  # the NEAT adapter exported as PEFT LoRA, reloaded by plain PEFT
    assert check["agree"] and check["relative"] <= 1e-5 and check["n"] == 16, check
    assert check["path"] == str(tmp_path / "adapter") + "-lora"
    assert (tmp_path / "adapter-lora" / "adapter_config.json").is_file()

    fresh = ft.MeanPoolClassifier(tiny_encoder())
    torch_neat.load_adapter(fresh, tmp_path / "adapter")
    assert fresh.neat_config.r == 2 and fresh.neat_config.depth == 4
    assert len(list(torch_neat.neat_layers(fresh))) == n_layers * 2
    with torch.no_grad():
        out = fresh(**test)
    assert out.logits.shape == (16, 2) and torch.isfinite(out.loss)


def test_unknown_method_is_rejected(ft):
    with pytest.raises(SystemExit, match="unknown"):
        ft.main(["--methods", "neat,bogus"])


def test_vader_split_is_real_and_stem_disjoint(ft):
    train, test = ft.load_vader_polarity(seed=0)
    n = len(train.texts) + len(test.texts)
    assert n > 7000, n  # the lexicon's entries with a non-zero mean rating
    assert 0.15 < len(test.texts) / n < 0.25
    assert set(train.labels) == set(test.labels) == {0, 1}
    assert not {ft.stem_group(t) for t in train.texts} & {ft.stem_group(t) for t in test.texts}
    lexicon = dict(zip(train.texts + test.texts, train.labels + test.labels))
    assert lexicon["good"] == 1 and lexicon["terrible"] == 0 and lexicon[":)"] == 1


def test_real_model_and_data_few_steps(ft, tmp_path, capsys):
    """The README's main job end to end on the real shipped weights and data, cut to a few steps."""
    out = tmp_path / "adapter"
    rows = ft.main(["--methods", "neat,lora", "--max-steps", "4", "--batch-size", "16", "--max-eval", "256", "--no-isolate",
                    "--device", "cpu", "--output-dir", str(out), "--lora-dir", str(tmp_path / "lora")])
    by = {r["method"]: r for r in rows}
    assert set(by) == {"neat", "lora"}
    # Same rank and targets: NEAT's A is (r, d_out) where LoRA's A is (r, d_in); MiniLM's targets are square.
    assert by["neat"]["trainable"] == by["lora"]["trainable"]
    for row in rows:
        assert row["steps"] == 4 and 0.0 <= row["accuracy"] <= 1.0
    assert (out / "adapter_model.safetensors").is_file() and (out / "neat_config.json").is_file()
    # its LoRA form: exported, reloaded by plain PEFT on a fresh MiniLM, same logits; the check is printed
    check = by["neat"]["lora_check"]
    assert check["agree"] and check["relative"] <= 1e-5 and check["n"] == 256, check
    assert (tmp_path / "lora" / "adapter_config.json").is_file()
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("LoRA export check:")]
    assert len(printed) == 1 and printed[0].endswith(": agree"), printed


def test_seeds_give_spreads_and_a_plot(ft, tmp_path, capsys, monkeypatch):
    """--seeds: every method once per seed (each seed starting with another method, so no method always
    runs first), mean ± std in the table, the paired NEAT - LoRA line, a PNG."""
    import matplotlib  # noqa: F401  (installed by tests/run.sh: a missing one fails here, it does not skip)

    ran, train_and_evaluate = [], ft.train_and_evaluate

    def recording(method, *a, **kw):
        ran.append(method)
        return train_and_evaluate(method, *a, **kw)

    monkeypatch.setattr(ft, "train_and_evaluate", recording)
    plot = tmp_path / "curves.png"
    rows = ft.main(["--methods", "neat,lora", "--seeds", "0,1", "--max-steps", "3", "--batch-size", "8", "--max-eval", "64",
                    "--no-isolate", "--device", "cpu", "--output-dir", str(tmp_path / "adapter"), "--plot", str(plot)])
    assert [(r["seed"], r["method"]) for r in rows] == [(0, "neat"), (0, "lora"), (1, "neat"), (1, "lora")]
    assert ran == ["neat", "lora", "lora", "neat"], ran
    for row in rows:
        assert len(row["losses"]) == 3 and all(v > 0 for v in row["losses"])
    assert "lora_check" in next(r for r in rows if r["method"] == "neat" and r["seed"] == 0)
    assert not any("lora_check" in r for r in rows if r["seed"] == 1)  # saved and exported for the first seed only
    out = capsys.readouterr().out
    table = out[out.rindex("| method |"):]
    neat_line = next(line for line in table.splitlines() if line.startswith("| NEAT"))
    assert neat_line.count("±") == 4, neat_line  # accuracy, time, peak and added memory
    accs = [100 * r["accuracy"] for r in rows if r["method"] == "neat"]
    mean, std, n = ft.seed_report.mean_std(accs)
    assert n == 2 and f"{mean:.2f} ± {std:.2f}%" in neat_line
    assert "over 2 seeds (0, 1)" in out and "NEAT - LoRA test accuracy, paired by seed:" in out
    assert plot.is_file() and plot.stat().st_size > 10_000 and plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_seed_report_helpers(ft):
    sr = ft.seed_report
    assert sr.parse_seeds("0, 1,2") == [0, 1, 2]
    with pytest.raises(SystemExit):
        sr.parse_seeds("0,0")
    mean, std, n = sr.mean_std([1.0, 2.0, 3.0])
    assert (mean, std, n) == (2.0, 1.0, 3)
    assert sr.fmt(*sr.mean_std([5.0])[:2]) == "5.0"
    rows = [{"method": m, "seed": s, "accuracy": a} for m, s, a in
            [("neat", 0, 0.9), ("lora", 0, 0.8), ("neat", 1, 0.7), ("lora", 1, 0.7)]]
    d, sd, n = sr.paired_difference(rows, "neat", "lora", "accuracy")
    assert n == 2 and abs(d - 0.05) < 1e-12 and abs(sd - 0.1 / 2**0.5) < 1e-12
    assert sr.smooth([1.0, 3.0, 5.0], 2) == [1.0, 2.0, 4.0]
    methods = ["neat", "lora", "head"]
    orders = [sr.rotated(methods, k) for k in range(3)]
    assert orders[0] == methods and sr.rotated(methods, 3) == methods and sr.rotated([], 1) == []
    for i in range(3):  # each method once in every position, each order a permutation
        assert sorted(o[i] for o in orders) == sorted(methods) and sorted(orders[i]) == sorted(methods)
    called = []
    assert sr.run_rotated(methods, 1, lambda m: called.append(m) or m.upper()) == ["NEAT", "LORA", "HEAD"]
    assert called == ["lora", "head", "neat"]
