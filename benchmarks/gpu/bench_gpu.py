"""GPU benchmark of neat::linear (docs/design.md §5): fwd+bwd time and peak memory against

  frozen   F.linear with a frozen weight (dx only): the floor
  lora     PEFT's LoRA layer at the same r
  peanut   PEFT's PEANuT layer (peft.PeanutConfig) at depth 2 and 6, when this PEFT has it
  authors  a plain-PyTorch module written like the NEAT authors' code (depth 2 and 6)

at LLaMA-7B shapes, bf16, with and without bias (LLaMA's projections have none; the kernels take
another path when the bias rides in the rank-r product). Also, under torch.autocast(bf16) with float32
weights as HF Trainer runs a model: NeatLinear (neat_ac) against autocast's own F.linear (frozen_ac).
NEAT runs on both rank-r paths: neat / neatlin on the default (NEAT_CUDA_RANK_PATH=cublas), and
neat_fused / neatlin_fused with NEAT_CUDA_RANK_PATH=fused (the kernels of cuda/fused.cu).
Times are medians of CUDA-event timings after warm-up, over rotating input sets; memory is the peak
allocated during one step above what was allocated before it. Prints one table of ratios; with --out
writes bench_gpu.json and bench_gpu.md there.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics

import torch
import torch.nn as nn
import torch.nn.functional as F

import torch_neat

DT = torch.bfloat16

# contender suffix -> NEAT_CUDA_RANK_PATH while it is measured (read by the library at every call)
RANK_PATHS = {"_fused": "fused"}


class rank_path:
    """Sets NEAT_CUDA_RANK_PATH for a contender whose name ends in a RANK_PATHS suffix."""

    def __init__(self, kind):
        self.value = next((v for k, v in RANK_PATHS.items() if kind.endswith(k)), "cublas")

    def __enter__(self):
        self.old = os.environ.get("NEAT_CUDA_RANK_PATH")
        os.environ["NEAT_CUDA_RANK_PATH"] = self.value

    def __exit__(self, *exc):
        if self.old is None:
            os.environ.pop("NEAT_CUDA_RANK_PATH", None)
        else:
            os.environ["NEAT_CUDA_RANK_PATH"] = self.old


# ---- contenders ------------------------------------------------------------------------------


class Holder(nn.Module):
    def __init__(self, lin: nn.Linear):
        super().__init__()
        self.proj = lin


class AuthorsNeat(nn.Module):
    """NEAT written like the authors' reference code: delta_w = act(W^T A^T) (d_in, r); with
    hidden layers their multi-layer variant forms the full d_in x d_out update."""

    def __init__(self, base: nn.Linear, r: int, depth: int, scale: float):
        super().__init__()
        self.base = base
        d_out, d_in = base.weight.shape
        self.A = nn.Linear(d_out, r, bias=False)
        self.hidden = nn.ModuleList(nn.Linear(r, r, bias=False) for _ in range(depth - 2))
        self.B = nn.Linear(r, d_out, bias=False)
        self.scale = scale

    def forward(self, x):
        W = self.base.weight
        delta_w = torch.relu(self.A(W.t()))  # (d_in, r)
        if not self.hidden:
            return self.base(x) + self.B(x @ delta_w) * self.scale
        k = len(self.hidden) // 2
        pushed = []
        for i in range(k):
            pushed.append(delta_w)
            delta_w = torch.relu(self.hidden[i](delta_w))
        for j in range(k):
            delta_w = torch.relu(self.hidden[k + j](delta_w)) + pushed.pop()
        update = self.B(delta_w)  # (d_in, d_out): the full matrix
        return self.base(x) + x @ update * self.scale


class NeatOp(nn.Module):
    def __init__(self, base: nn.Linear, r: int, depth: int, scale: float):
        super().__init__()
        self.base = base
        d_out, _ = base.weight.shape
        self.A = nn.Parameter(torch.randn(r, d_out) / d_out**0.5)
        self.hidden = nn.ParameterList(nn.Parameter(torch.randn(r, r) / r**0.5) for _ in range(depth - 2))
        self.B = nn.Parameter(torch.randn(d_out, r) * 0.01)
        self.scale = scale

    def forward(self, x):
        return torch_neat.linear(x, self.base.weight, self.base.bias, self.A, self.B, list(self.hidden), "relu", self.scale)


def frozen_base(d_in, d_out, bias, dtype=DT):
    lin = nn.Linear(d_in, d_out, bias=bias, device="cuda", dtype=dtype)
    lin.requires_grad_(False)
    return lin


def make(kind, d_in, d_out, r, bias):
    for suffix in RANK_PATHS:  # the same module; only the rank-r path differs (rank_path above)
        if kind.endswith(suffix):
            kind = kind[: -len(suffix)]
    if kind.endswith("_ac"):  # float32 weights, run under autocast (measure(..., autocast=True))
        base = frozen_base(d_in, d_out, bias, torch.float32)
        if kind == "frozen_ac":
            return base
        return torch_neat.NeatLinear(base, r=r, depth=2, scale=2.0)
    base = frozen_base(d_in, d_out, bias)
    if kind == "frozen":
        return base
    if kind == "neatlin":  # the module users call (its own fast path, not the registered op)
        return torch_neat.NeatLinear(base, r=r, depth=2, scale=2.0)
    if kind.startswith("neat"):
        depth = int(kind[4:] or 2)
        return NeatOp(base, r, depth, 2.0).to(device="cuda", dtype=DT)
    if kind.startswith("authors"):
        depth = int(kind[7:] or 2)
        m = AuthorsNeat(base, r, depth, 2.0).to(device="cuda", dtype=DT)
        m.base.requires_grad_(False)
        return m
    import peft  # noqa: F401  (the error says which contender is missing)

    if kind == "lora":
        cfg = peft.LoraConfig(r=r, lora_alpha=2 * r, lora_dropout=0.0, target_modules=["proj"])
    elif kind.startswith("peanut"):
        if not hasattr(peft, "PeanutConfig"):
            raise RuntimeError(f"peft {peft.__version__} has no PeanutConfig")
        cfg = peft.PeanutConfig(r=r, depth=int(kind[6:]), target_modules=["proj"])
    else:
        raise ValueError(kind)
    model = peft.get_peft_model(Holder(base), cfg, autocast_adapter_dtype=False)
    model.to(device="cuda", dtype=DT)
    return model.base_model.model.proj


# ---- measurement -----------------------------------------------------------------------------


def measure(module, xs, gys, warmup, iters, autocast=False):
    params = [p for p in module.parameters() if p.requires_grad]

    def forward(x):
        with torch.autocast("cuda", dtype=DT, enabled=autocast):
            return module(x)

    def step(i):
        x = xs[i % len(xs)]
        x.grad = None
        for p in params:
            p.grad = None
        y = forward(x)
        y.backward(gys[i % len(gys)])

    for i in range(warmup):
        step(i)
    times = []
    for i in range(iters):
        x = xs[i % len(xs)]
        x.grad = None
        for p in params:
            p.grad = None
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        y = forward(x)
        y.backward(gys[i % len(gys)])
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    # peak memory of one step, above what was live before it
    x = xs[0]
    x.grad = None
    for p in params:
        p.grad = None
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    step(0)
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - before
    return statistics.median(times), peak


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.environ.get("OUT"))
    ap.add_argument("--quick", action="store_true", help="one shape, fewer iterations")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--iters", type=int, default=20)
    args = ap.parse_args()

    shapes = [(4096, 4096), (4096, 11008)]
    ns = [2048, 8192]
    ranks = [8, 16, 32]
    if args.quick:
        shapes, ns, ranks = shapes[:1], ns[:1], [16]
        args.iters = min(args.iters, 10)
    kinds = ["frozen", "neat", "neatlin", "neat_fused", "neatlin_fused", "neat6", "lora", "peanut2", "peanut6", "authors", "authors6", "frozen_ac", "neat_ac"]
    floors = ("frozen", "frozen_ac")  # do not depend on r: measured once per shape, N and bias
    torch.backends.cuda.matmul.allow_tf32 = False

    rows = []
    for d_in, d_out in shapes:
        for n in ns:
            gen = torch.Generator(device="cuda").manual_seed(0)
            xs = [torch.randn(n, d_in, device="cuda", dtype=DT, generator=gen).requires_grad_() for _ in range(3)]
            gys = [torch.randn(n, d_out, device="cuda", dtype=DT, generator=gen) for _ in range(3)]
            for bias in (True, False):
                for r in ranks:
                    res = {"d_in": d_in, "d_out": d_out, "N": n, "bias": bias, "r": r}
                    for kind in kinds:
                        key = (d_in, d_out, n, bias)
                        prev = [q for q in rows if (q["d_in"], q["d_out"], q["N"], q["bias"]) == key]
                        if kind in floors and prev:
                            res[f"{kind}_ms"], res[f"{kind}_mem"] = prev[0][f"{kind}_ms"], prev[0][f"{kind}_mem"]
                            continue
                        try:
                            torch.manual_seed(0)
                            mod = make(kind, d_in, d_out, r, bias)
                            with rank_path(kind):
                                ms, mem = measure(mod, xs, gys, args.warmup, args.iters, autocast=kind.endswith("_ac"))
                            res[f"{kind}_ms"], res[f"{kind}_mem"] = ms, mem
                            del mod
                        except Exception as e:  # a missing contender is reported, not fatal
                            res[f"{kind}_ms"], res[f"{kind}_mem"] = None, None
                            res.setdefault("errors", {})[kind] = f"{type(e).__name__}: {e}"[:200]
                        torch.cuda.empty_cache()
                    rows.append(res)
                    print(json.dumps(res), flush=True)
            del xs, gys
            torch.cuda.empty_cache()

    def ratio(a, b):
        return None if a is None or b is None or b == 0 else a / b

    cols = [
        ("neat/frozen", "neat_ms", "frozen_ms", "<= 1.10"),
        ("neat/lora", "neat_ms", "lora_ms", "< 1.0"),
        ("neatlin/lora", "neatlin_ms", "lora_ms", "< 1.0"),
        ("neat/peanut2", "neat_ms", "peanut2_ms", "<= 0.6"),
        ("neat6/peanut6", "neat6_ms", "peanut6_ms", "<= 0.6"),
        ("neat/authors", "neat_ms", "authors_ms", "<= 0.6"),
        ("neat6/authors6", "neat6_ms", "authors6_ms", "<= 0.6"),
        ("fused/frozen", "neat_fused_ms", "frozen_ms", "<= 1.15"),
        ("fused/lora", "neat_fused_ms", "lora_ms", "<= 0.9"),
        ("fusedlin/lora", "neatlin_fused_ms", "lora_ms", "<= 0.9"),
        ("fused/neat", "neat_fused_ms", "neat_ms", "< 1.0"),
        ("mem neat/lora", "neat_mem", "lora_mem", "<= 1.0"),
        ("mem fused/lora", "neat_fused_mem", "lora_mem", "<= 1.0"),
        ("autocast neat/frozen", "neat_ac_ms", "frozen_ac_ms", "<= 1.10"),
    ]
    head = ["d_in x d_out", "N", "bias", "r", "frozen ms", "neat ms"] + [c[0] for c in cols]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for q in rows:
        cells = [f"{q['d_in']}x{q['d_out']}", str(q["N"]), "yes" if q["bias"] else "no", str(q["r"]), f"{q['frozen_ms']:.3f}" if q.get("frozen_ms") else "n/a", f"{q['neat_ms']:.3f}" if q.get("neat_ms") else "n/a"]
        for _, a, b, _goal in cols:
            v = ratio(q.get(a), q.get(b))
            cells.append("n/a" if v is None else f"{v:.3f}")
        lines.append("| " + " | ".join(cells) + " |")
    goals = "goals: " + ", ".join(f"{c[0]} {c[3]}" for c in cols)
    stamp = datetime.datetime.now().isoformat(timespec="seconds")
    dev = torch.cuda.get_device_name()
    title = f"neat::linear fwd+bwd, bf16, {dev}, torch {torch.__version__}, {stamp}"
    table = "\n".join([title, "", *lines, "", goals])
    errors = {f"{q['d_in']}x{q['d_out']} N={q['N']} bias={q['bias']} r={q['r']}": q["errors"] for q in rows if q.get("errors")}
    if errors:
        table += "\n\nmissing contenders: " + json.dumps(next(iter(errors.values())))
    print(table)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "bench_gpu.json"), "w") as f:
            json.dump({"device": dev, "torch": torch.__version__, "date": stamp, "rows": rows}, f, indent=1)
        with open(os.path.join(args.out, "bench_gpu.md"), "w") as f:
            f.write(table + "\n")


if __name__ == "__main__":
    main()
