"""Peak resident memory of one NEAT training step over a stack of frozen layers, in a fresh process
(run by test_quantized_memory.py): ``python quant_memory_probe.py KIND LAYERS D N``, KIND in float32, nf4, int8.

Prints one JSON line: the weights' bytes as stored and the step's peak RSS above the RSS before the step.
Linux only: the peak is VmHWM from /proc/self/status, reset through /proc/self/clear_refs ("5") just before
the step, so building the model (one float layer at a time) does not count.
"""

from __future__ import annotations

import json
import os
import sys

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(__file__))
import bnb_layers  # noqa: E402
import torch_neat  # noqa: E402


def rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def layer(kind: str, d: int) -> nn.Module:
    if kind == "float32":
        lin = nn.Linear(d, d, bias=False)
        lin.weight.requires_grad_(False)
        return lin
    if kind == "nf4":
        return bnb_layers.four_bit(d, d, nested=True, bias=False)
    return bnb_layers.int8(d, d, bias=False)


def stored_bytes(model: nn.Module) -> int:
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        if t.requires_grad or t.data_ptr() in seen:
            continue
        seen.add(t.data_ptr())
        total += t.numel() * t.element_size()
    return total


def main() -> None:
    kind, layers, d, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    torch.manual_seed(0)
    torch.set_num_threads(1)
    bnb_layers.quiet(lambda: __import__("bitsandbytes"))  # in every kind, so the baselines hold the same libraries
    model = nn.Sequential(*[layer(kind, d) for _ in range(layers)])
    weights = stored_bytes(model)
    model = torch_neat.get_neat_model(model, torch_neat.NeatConfig(r=8, depth=2, target_modules=[str(i) for i in range(layers)]))
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    x = torch.randn(n, d)
    model(x).square().mean().backward()  # warm-up: allocator pools, lazy imports
    opt.step()
    opt.zero_grad(set_to_none=True)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = rss_kib("VmRSS")
    model(x).square().mean().backward()
    opt.step()
    peak = rss_kib("VmHWM")
    print(json.dumps({"kind": kind, "weight_bytes": weights, "rss_before": before * 1024, "peak": peak * 1024}))


if __name__ == "__main__":
    main()
