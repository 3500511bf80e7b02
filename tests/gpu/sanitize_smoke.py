"""A short run of every op for compute-sanitizer (memcheck, racecheck, initcheck): small shapes, every
dtype path, hidden layers, bias and none, N = 0, non-contiguous inputs and outputs, autocast, and a
shape that spans several blocks and tiles of the fused rank-r kernels (run.sh runs it on both rank-r
paths), and the quantized ops over bitsandbytes layers quantized on the GPU (with the default panels
and with 1 KiB ones, which split every product's sum). Prints OK at the end."""

import os
import sys

import torch

import torch_neat

dev = "cuda"
torch.manual_seed(0)


def case(dt, pdt, n, depth, bias, transpose, r=3):
    x = torch.randn(n, 37, device=dev, dtype=dt)
    W = torch.randn(53, 37, device=dev, dtype=dt) / 6
    if transpose:
        x = x.t().contiguous().t()
        W = W.t().contiguous().t()
    b = torch.randn(53, device=dev, dtype=dt) if bias else None
    A = torch.randn(r, 53, device=dev, dtype=pdt) / 7
    B = torch.randn(53, r, device=dev, dtype=pdt) / 2
    H = [torch.randn(r, r, device=dev, dtype=pdt) / 2 for _ in range(depth - 2)]
    leaves = [t.requires_grad_() for t in (x, W, b, A, B, *H) if t is not None]
    y = torch_neat.linear(x, W, b, A, B, H, "gelu", 0.5)
    y.sum().backward()
    a = torch_neat.adapter(x, W, A, B, H, "silu", 0.5)
    a.backward(torch.ones_like(a))
    torch_neat.compute_g(W.detach(), A.detach(), [h.detach() for h in H], "tanh")
    return leaves


for dt, pdt in [(torch.float32, torch.float32), (torch.float64, torch.float64), (torch.bfloat16, torch.bfloat16), (torch.float16, torch.float32)]:
    for n, depth, bias, tr in [(5, 2, True, False), (7, 6, False, True), (0, 4, True, False), (1, 10, True, True)]:
        case(dt, pdt, n, depth, bias, tr)
    case(dt, pdt, 100, 2, True, False, r=16)  # 7 row blocks, 2 K tiles, 2 column tiles
# torch.autocast over float32 weights and adapters (the HF Trainer setup): half x and W with float32
# adapters, through the registered ops and through NeatLinear's fast path
for ac in (torch.bfloat16, torch.float16):
    with torch.autocast("cuda", dtype=ac):
        for n, depth, bias, tr in [(5, 4, True, False), (3, 2, False, True)]:
            case(torch.float32, torch.float32, n, depth, bias, tr)
        layer = torch_neat.NeatLinear(torch.nn.Linear(37, 53, device=dev), r=3, depth=4)
        layer(torch.randn(4, 37, device=dev)).sum().backward()
# quantized bases (cuda/quant.cu): NeatLinear over NF4 nested and LLM.int8, training step and eval cache
try:
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))
    from bnb_layers import four_bit, int8
except ImportError as e:  # bitsandbytes missing: say so, the float checks above still count
    print(f"sanitize_smoke: no quantized checks ({e})")
else:
    for panel_kb in ("", "1"):
        os.environ["NEAT_CUDA_QPANEL_KB"] = panel_kb
        for base in (four_bit(37, 53, nested=True, device=dev), int8(37, 53, device=dev)):
            layer = torch_neat.NeatLinear(base, r=3, depth=4)
            x = torch.randn(5, 37, device=dev).t().contiguous().t().requires_grad_()
            layer(x).sum().backward()
            with torch.no_grad():
                layer.eval()(x)
    os.environ.pop("NEAT_CUDA_QPANEL_KB")
torch.cuda.synchronize()
print("sanitize_smoke: OK")
