"""Where a small layer's training step goes, in CPU time of the calling thread (one thread).

At d = 64, N = 8 the math of a step is a few microseconds; the rest is host time: Python, autograd
and the op calls. Wall-clock time on a shared 2-core machine moves with whatever else runs, so this
script measures ``time.thread_time()`` of the one thread that does the work (torch at one thread runs
its kernels inline), interleaving the methods round by round, and splits each method's step into:

  walk:    collecting the parameters that need a gradient (``model.parameters()``);
  forward: the model's forward with autograd recording;
  engine:  the autograd engine's backward over the recorded graph (retain_graph, so it is repeatable);
  grad():  ``torch.autograd.grad`` on the same graph (the engine plus its Python wrapper);
  op:      for NEAT, ``neat::linear_backward`` alone, called below autograd (the C++ and C part).

    python benchmarks/bench_host_time.py                   # d = 64, N = 8, depth 2 and 6
    python benchmarks/bench_host_time.py --d 384 --n 256 --repeats 9
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import bench_modules as bm
from machine import header
from torch_neat import _torch_internals as tc

METHODS = ["frozen", "lora", "peanut+accelerate", "NeatLinear"]


def cpu_us(fn, reps: int, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t0 = time.thread_time()
        for _ in range(reps):
            fn()
        out.append((time.thread_time() - t0) / reps * 1e6)
    return out


def pieces(model, x, dy) -> dict:
    params = [p for p in model.parameters() if p.requires_grad]
    inputs = tuple([x, *params])
    y = model(x)
    engine = torch.autograd.Variable._execution_engine
    fns = {
        "step": lambda: bm.train_step(model, x, dy),
        "walk": lambda: [p for p in model.parameters() if p.requires_grad],
        "forward": lambda: model(x),
        "engine": lambda: engine.run_backward((y,), (dy,), True, False, inputs, False, False),
        "grad()": lambda: torch.autograd.grad(y, inputs, dy, retain_graph=True),
    }
    layer = next((m for m in model.modules() if type(m).__name__ == "NeatLinear"), None)
    if layer is not None:
        W, b = layer.base_layer.weight, layer.base_layer.bias
        A, B, hidden = layer.neat_A, layer.neat_B, layer.hidden
        xs, mask = x.detach(), [True, False, False, True, True, True]
        op = torch.ops.neat.linear_backward.default

        def backward_op():
            with tc.below_autograd():
                op(dy, xs, W, b, A, B, hidden, layer.kernel_activation, layer.scale, mask)

        fns["op"] = backward_op
    return fns


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--d", type=int, default=64)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--r", type=int, default=8)
    ap.add_argument("--depth", type=int, nargs="+", default=[2, 6])
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(header())
    print(f"# float32, r={args.r}, relu, d={args.d}, N={args.n}; CPU time of the calling thread per call, "
          f"median of {args.repeats} interleaved blocks (us)")
    cols = ["step", "walk", "forward", "engine", "grad()", "op"]
    print("| depth | method | " + " | ".join(cols) + " | step / LoRA |")
    print("| --- | --- |" + " --- |" * (len(cols) + 1))
    for depth in args.depth:
        models = bm.build(args.d, args.r, depth)
        g = torch.Generator().manual_seed(1)
        x = torch.randn(args.n, args.d, generator=g, requires_grad=True)
        dy = torch.randn(args.n, args.d, generator=g)
        fns = {m: pieces(models[m], x, dy) for m in METHODS}
        t = bm.timed(fns["NeatLinear"]["step"], 20)
        reps = max(1, int(0.02 / max(t, 1e-7)))  # blocks of about 20 ms
        for m in METHODS:  # warm-up
            for f in fns[m].values():
                f()
        got = {m: {k: [] for k in fns[m]} for m in METHODS}
        for _ in range(args.repeats):
            for m in METHODS:
                for k, f in fns[m].items():
                    got[m][k] += cpu_us(f, reps, 1)
        med = {m: {k: statistics.median(v) for k, v in got[m].items()} for m in METHODS}
        for m in METHODS:
            cells = " | ".join(f"{med[m][k]:.1f}" if k in med[m] else "" for k in cols)
            print(f"| {depth} | {m} | {cells} | {med[m]['step'] / med['lora']['step']:.2f} |")


if __name__ == "__main__":
    main()
