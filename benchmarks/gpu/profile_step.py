"""Where a small GPU training step's time goes: for one adapted layer (default 4096 x 4096, N = 2048,
bf16, r = 16, no bias) and each contender of bench_gpu.py, prints

  event ms    CUDA-event time of one synchronised step (what bench_gpu.py reports)
  host ms     host time to enqueue one step (forward + backward), measured without a sync
  stream ms   per-step time of 50 steps queued back to back (the host may run ahead)
  kernel ms   sum of the step's kernel durations (torch.profiler), the device's busy time
  launches    kernels per step

and the top kernels of each contender. When host ms > kernel ms, the step is bound by the host
(Python, dispatch, launches), not by the GPU. Run on the lent GPU machine after tests/gpu/run.sh build.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_gpu import make  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--d-in", type=int, default=4096)
    ap.add_argument("--d-out", type=int, default=4096)
    ap.add_argument("-n", type=int, default=2048)
    ap.add_argument("-r", type=int, default=16)
    ap.add_argument("--bias", action="store_true")
    ap.add_argument("--kinds", default="frozen,lora,neat,neatlin,neat_ac")
    ap.add_argument("--top", type=int, default=8)
    args = ap.parse_args()
    dt = torch.bfloat16
    gen = torch.Generator(device="cuda").manual_seed(0)
    xs = [torch.randn(args.n, args.d_in, device="cuda", dtype=dt, generator=gen).requires_grad_() for _ in range(3)]
    gys = [torch.randn(args.n, args.d_out, device="cuda", dtype=dt, generator=gen) for _ in range(3)]
    summary = []
    for kind in args.kinds.split(","):
        torch.manual_seed(0)
        mod = make(kind, args.d_in, args.d_out, args.r, args.bias)
        params = [p for p in mod.parameters() if p.requires_grad]
        ac = kind.endswith("_ac")

        def step(i):
            x = xs[i % 3]
            x.grad = None
            for p in params:
                p.grad = None
            with torch.autocast("cuda", dtype=dt, enabled=ac):
                y = mod(x)
            y.backward(gys[i % 3])

        for i in range(10):
            step(i)
        torch.cuda.synchronize()
        ev, host = [], []
        for i in range(30):
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            s.record()
            step(i)
            e.record()
            host.append((time.perf_counter() - t0) * 1e3)
            e.synchronize()
            ev.append(s.elapsed_time(e))
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        for i in range(50):
            step(i)
        e.record()
        e.synchronize()
        stream = s.elapsed_time(e) / 50
        steps = 10
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for i in range(steps):
                step(i)
            torch.cuda.synchronize()
        try:
            kern = [k for k in prof.events() if k.device_type == torch.autograd.DeviceType.CUDA]
            busy = sum(k.device_time for k in kern) / 1e3 / steps
        except Exception as exc:  # an older profiler API: keep the timings
            print(f"kernel sum unavailable: {exc}")
            kern, busy = [], float("nan")
        row = (kind, statistics.median(ev), statistics.median(host), stream, busy, len(kern) / steps)
        summary.append(row)
        print(f"\n### {kind}: event {row[1]:.3f} ms, host {row[2]:.3f} ms, stream {row[3]:.3f} ms, "
              f"kernels {row[4]:.3f} ms, {row[5]:.0f} launches/step")
        print(prof.key_averages().table(sort_by="self_device_time_total", row_limit=args.top, max_name_column_width=60))
        del mod
        torch.cuda.empty_cache()
    print(f"\n{torch.cuda.get_device_name()}, torch {torch.__version__}: {args.d_in}x{args.d_out}, N={args.n}, r={args.r}, "
          f"bias={args.bias}, bf16, one fwd+bwd step")
    print("| contender | event ms | host ms | stream ms | kernel ms | launches |\n|---|---|---|---|---|---|")
    for k, a, b, c, d, n in summary:
        print(f"| {k} | {a:.3f} | {b:.3f} | {c:.3f} | {d:.3f} | {n:.0f} |")


if __name__ == "__main__":
    main()
