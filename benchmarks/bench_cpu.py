"""CPU benchmark: neat::linear fwd+bwd vs the same math in plain PyTorch ops vs a frozen F.linear.

All variants are timed in one run, interleaved round by round, and reported as ratios (these
machines are noisy; ratios taken side by side are what we compare). The frozen layer is the floor:
a training step of a NEAT layer cannot beat its two matmuls (forward and dx).

    python benchmarks/bench_cpu.py                 # docs/design.md §5 shapes: d in {1024, 4096}, N=2048, r=8
    python benchmarks/bench_cpu.py --d 1024 --repeats 3 --markdown
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time

import torch
import torch.nn.functional as F

import torch_neat  # noqa: E402
from machine import header  # noqa: E402  (benchmarks/machine.py)

# The baseline is the test suite's plain-PyTorch statement of docs/design.md §1 (G is never expanded there either).
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "python"))
from reference import ACTIVATIONS, reference_linear  # noqa: E402


def plain_pytorch(x, w, b, A, B, hidden, act, scale):
    return reference_linear(x, w, b, A, B, hidden, act, scale)


def make(d, n, r, num_hidden, dtype):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=g, dtype=dtype, requires_grad=True)
    w = torch.randn(d, d, generator=g, dtype=dtype) / d**0.5  # frozen
    b = torch.randn(d, generator=g, dtype=dtype)  # frozen
    A = (torch.randn(r, d, generator=g, dtype=dtype) / d**0.5).requires_grad_()
    B = (torch.randn(d, r, generator=g, dtype=dtype) / r**0.5).requires_grad_()
    H = [(torch.randn(r, r, generator=g, dtype=dtype) / r**0.5).requires_grad_() for _ in range(num_hidden)]
    dy = torch.randn(n, d, generator=g, dtype=dtype)
    return x, w, b, A, B, H, dy


def step(fn, x, params, dy):
    y = fn()
    torch.autograd.grad(y, [x, *params], dy)


def bench_case(d, n, r, depth, act, repeats, warmup, dtype):
    x, w, b, A, B, H, dy = make(d, n, r, depth - 2, dtype)
    params = [A, B, *H]
    variants = {
        "neat": lambda: step(lambda: torch_neat.linear(x, w, b, A, B, H, act, 2.0), x, params, dy),
        "plain": lambda: step(lambda: plain_pytorch(x, w, b, A, B, H, act, 2.0), x, params, dy),
        "frozen": lambda: step(lambda: F.linear(x, w, b), x, [], dy),
    }
    for fn in variants.values():
        for _ in range(warmup):
            fn()
    times = {k: [] for k in variants}
    for _ in range(repeats):  # interleaved: every round times each variant once
        for k, fn in variants.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--d", type=int, nargs="+", default=[1024, 4096])
    p.add_argument("--n", type=int, default=2048)
    p.add_argument("--r", type=int, default=8)
    p.add_argument("--depth", type=int, nargs="+", default=[2, 6])
    p.add_argument("--act", default="relu", choices=sorted(ACTIVATIONS))
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--markdown", action="store_true", help="print a README-ready table")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    rows = []
    for d in args.d:
        for depth in args.depth:
            t = bench_case(d, args.n, args.r, depth, args.act, args.repeats, args.warmup, torch.float32)
            rows.append((d, depth, t))
            print(
                f"d={d:5d} depth={depth}  neat {t['neat'] * 1e3:8.1f} ms  plain {t['plain'] * 1e3:8.1f} ms  "
                f"frozen {t['frozen'] * 1e3:8.1f} ms  neat/plain {t['neat'] / t['plain']:.2f}  "
                f"neat/frozen {t['neat'] / t['frozen']:.2f}",
                flush=True,
            )

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    print()
    print(header())
    print(f"machine: {cpu}, {args.threads} threads; torch {torch.__version__}; float32, N={args.n}, r={args.r}, "
          f"act={args.act}; {datetime.date.today().isoformat()}; median of {args.repeats}")
    if args.markdown:
        print()
        print("| d_in = d_out | depth | neat fwd+bwd (ms) | plain PyTorch (ms) | frozen F.linear (ms) | neat / plain | neat / frozen |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
        for d, depth, t in rows:
            print(
                f"| {d} | {depth} | {t['neat'] * 1e3:.1f} | {t['plain'] * 1e3:.1f} | {t['frozen'] * 1e3:.1f} | "
                f"{t['neat'] / t['plain']:.2f} | {t['neat'] / t['frozen']:.2f} |"
            )


if __name__ == "__main__":
    main()
