"""One adapted 4-bit layer (bitsandbytes NF4, CPU): the frozen 4-bit layer, PEFT LoRA on it (QLoRA) and NEAT
on it (NeatLinear over the Linear4bit), one training step each (forward, backward for x and the adapter),
interleaved round by round in one process; median ms and the ratio to QLoRA, with the CPU model.

    python benchmarks/bench_quant.py [--d 1024 4096] [--n 2048] [--r 8] [--repeats 5]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
import warnings

import torch
from torch import nn

import torch_neat
from machine import header


class One(nn.Module):
    def __init__(self, lin):
        super().__init__()
        self.lin = lin

    def forward(self, x):
        return self.lin(x)


def four_bit(d: int) -> nn.Module:
    import bitsandbytes as bnb

    lin = nn.Linear(d, d)
    q = bnb.nn.Linear4bit(d, d, quant_type="nf4", compute_dtype=torch.float32)
    q.weight = bnb.nn.Params4bit(lin.weight.data.clone(), requires_grad=False, quant_type="nf4")
    q.bias = nn.Parameter(lin.bias.data.clone(), requires_grad=False)
    return q.to("cpu")


def build(d: int, r: int) -> dict:
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    base = One(four_bit(d))
    models = {"frozen 4-bit": copy.deepcopy(base).requires_grad_(False)}
    models["QLoRA (PEFT)"] = get_peft_model(copy.deepcopy(base), LoraConfig(r=r, lora_alpha=r, target_modules=["lin"]))
    models["NEAT"] = torch_neat.get_neat_model(copy.deepcopy(base), torch_neat.NeatConfig(r=r, target_modules=["lin"]))
    for m in models.values():
        for name, p in m.named_parameters():
            if p.requires_grad and ("lora_B" in name or name.endswith("neat_B")):
                with torch.no_grad():
                    p.normal_(0, 0.02)
    return models


def step_ms(model, x, reps: int) -> float:
    t = time.perf_counter()
    for _ in range(reps):
        y = model(x)
        y.sum().backward()
    return (time.perf_counter() - t) / reps * 1e3


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--d", type=int, nargs="+", default=[1024, 4096])
    ap.add_argument("--n", type=int, default=2048)
    ap.add_argument("--r", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    print(header())
    print(f"# bitsandbytes NF4 (nested absmax), float32 compute, r = {args.r}, N = {args.n}, median of "
          f"{args.repeats} interleaved rounds, ms per training step")
    print("| d | frozen 4-bit | QLoRA (PEFT) | NEAT | NEAT / QLoRA | NEAT / frozen |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for d in args.d:
        models = build(d, args.r)
        x = torch.randn(args.n, d, requires_grad=True)
        reps = max(1, int(2e9 / (args.n * d * d * 6)))
        times = {k: [] for k in models}
        for name, m in models.items():  # warm-up
            step_ms(m, x, 1)
        for _ in range(args.repeats):
            for name, m in models.items():
                times[name].append(step_ms(m, x, reps))
        med = {k: statistics.median(v) for k, v in times.items()}
        q, f, n = med["QLoRA (PEFT)"], med["frozen 4-bit"], med["NEAT"]
        print(f"| {d} | {f:.2f} | {q:.2f} | {n:.2f} | {n / q:.2f} | {n / f:.2f} |")


if __name__ == "__main__":
    main()
