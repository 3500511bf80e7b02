"""The modules users call, side by side: one adapted d x d layer in a frozen nn.Linear, a PEFT LoRA
layer, a PEFT PEANuT layer, that PEANuT layer after torch_neat.peft.accelerate, and NeatLinear.

For each d (N tokens a step, rank r, paper depth 2 and 6) it times, interleaved round by round in
one run (these machines are noisy; only ratios taken side by side are compared):
  train: forward, then backward for x and the adapter parameters (W and b frozen);
  eval:  forward in eval mode under no_grad (NeatLinear caches G there);
and counts the bytes autograd saves for backward per layer (tensors that are not parameters).

    python benchmarks/bench_modules.py                       # d in {64, 384, 1024, 4096}
    python benchmarks/bench_modules.py --d 384 1024 --repeats 5 --markdown
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from torch import nn

import torch_neat
import torch_neat.peft as neat_peft
from machine import header

DEFAULT_N = {64: 8, 384: 256, 1024: 2048, 4096: 2048}
METHODS = ["frozen", "lora", "peanut", "peanut+accelerate", "NeatLinear"]


class One(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.lin = nn.Linear(d, d)

    def forward(self, x):
        return self.lin(x)


def build(d: int, r: int, depth: int) -> dict[str, nn.Module]:
    from peft import LoraConfig, PeanutConfig, get_peft_model

    torch.manual_seed(0)
    base = One(d)
    models = {"frozen": copy.deepcopy(base).requires_grad_(False)}
    models["lora"] = get_peft_model(copy.deepcopy(base), LoraConfig(r=r, lora_alpha=r, target_modules=["lin"]))
    peanut = get_peft_model(
        copy.deepcopy(base), PeanutConfig(r=r, depth=(depth - 2) // 2, act_fn="relu", target_modules=["lin"])
    )
    models["peanut"] = peanut
    models["peanut+accelerate"] = neat_peft.accelerate(copy.deepcopy(peanut))
    models["NeatLinear"] = torch_neat.get_neat_model(
        copy.deepcopy(base), torch_neat.NeatConfig(r=r, depth=depth, target_modules=["lin"])
    )
    for m in models.values():  # B nonzero, as after some training
        for name, p in m.named_parameters():
            if p.requires_grad and (name.endswith("lora_B.default.weight") or "peanut_B" in name or name.endswith("neat_B")):
                with torch.no_grad():
                    p.normal_(0, 0.02)
    return models


def train_step(model: nn.Module, x: torch.Tensor, dy: torch.Tensor) -> None:
    params = [p for p in model.parameters() if p.requires_grad]
    y = model(x)
    torch.autograd.grad(y, [x, *params], dy)


def saved_bytes(model: nn.Module, x: torch.Tensor) -> int:
    """Bytes of the tensors autograd keeps for backward, parameters excluded, each storage once."""
    params = {p.data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params:
            seen[ptr] = max(seen.get(ptr, 0), t.untyped_storage().nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = model(x)
    del y
    return sum(seen.values())


def timed(fn, reps: int) -> float:
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t0) / reps


def bench(d: int, n: int, r: int, depth: int, repeats: int) -> dict:
    models = build(d, r, depth)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, d, generator=g, requires_grad=True)
    dy = torch.randn(n, d, generator=g)
    # enough calls per timing that each lasts about 20 ms (tiny layers need thousands)
    train_step(models["NeatLinear"], x, dy)
    t = timed(lambda: train_step(models["NeatLinear"], x, dy), 3)
    reps = max(1, int(0.02 / max(t, 1e-7)))
    out = {"train": {m: [] for m in METHODS}, "eval": {m: [] for m in METHODS}, "saved": {}}
    for m in METHODS:
        out["saved"][m] = saved_bytes(models[m], x)
        train_step(models[m], x, dy)  # warm-up
    for _ in range(repeats):
        for m in METHODS:
            models[m].train()
            out["train"][m].append(timed(lambda: train_step(models[m], x, dy), reps))
        for m in METHODS:
            models[m].eval()
            with torch.no_grad():
                models[m](x)
                out["eval"][m].append(timed(lambda: models[m](x), reps))
    for kind in ("train", "eval"):
        out[kind] = {m: statistics.median(v) * 1e3 for m, v in out[kind].items()}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--d", type=int, nargs="+", default=[64, 384, 1024, 4096])
    ap.add_argument("--n", type=int, default=None, help="tokens per step (default: 8, 256, 2048, 2048 by d)")
    ap.add_argument("--r", type=int, default=8)
    ap.add_argument("--depth", type=int, nargs="+", default=[2, 6])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--markdown", action="store_true")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(header())
    print(f"# float32, r={args.r}, relu, median of {args.repeats} interleaved repeats (ms)")
    head = "| d | N | depth | mode | " + " | ".join(METHODS) + " | NeatLinear / LoRA | accelerated / LoRA | accelerated / PEANuT | NeatLinear / frozen |"
    print(head)
    print("|" + " --- |" * (head.count("|") - 1))
    for d in args.d:
        n = args.n or DEFAULT_N.get(d, 2048)
        for depth in args.depth:
            res = bench(d, n, args.r, depth, args.repeats)
            for mode in ("train", "eval"):
                t = res[mode]
                cells = " | ".join(f"{t[m]:.3f}" if t[m] < 1 else f"{t[m]:.2f}" for m in METHODS)
                ratios = (
                    t["NeatLinear"] / t["lora"],
                    t["peanut+accelerate"] / t["lora"],
                    t["peanut+accelerate"] / t["peanut"],
                    t["NeatLinear"] / t["frozen"],
                )
                print(f"| {d} | {n} | {depth} | {mode} | {cells} | " + " | ".join(f"{q:.2f}" for q in ratios) + " |")
            saved = " | ".join(f"{res['saved'][m] / 2**20:.2f}" for m in METHODS)
            print(f"| {d} | {n} | {depth} | saved MiB | {saved} | | | | |")


if __name__ == "__main__":
    main()
