"""Quick start: one NEAT layer, checked against plain PyTorch, trained for a few steps, timed.

    python examples/quickstart.py
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

import torch_neat


def plain_neat(x, w, b, A, B, hidden, scale):
    """The same layer written with stock PyTorch ops (docs/design.md §1, relu)."""
    G = torch.relu(A @ w)
    k = len(hidden) // 2
    pushed = []
    for i in range(k):
        pushed.append(G)
        G = torch.relu(hidden[i] @ G)
    for j in range(k):
        G = torch.relu(hidden[k + j] @ G) + pushed.pop()
    return F.linear(x, w, b) + scale * (x @ G.T) @ B.T


def main():
    torch.manual_seed(0)
    d_in, d_out, r, n, depth, scale = 512, 512, 8, 1024, 4, 2.0

    # A frozen "pre-trained" layer and a NEAT adapter of depth 4 (two hidden r x r layers).
    w = torch.randn(d_out, d_in) / d_in**0.5
    b = torch.zeros(d_out)
    A = (torch.randn(r, d_out) / d_out**0.5).requires_grad_()
    B = torch.zeros(d_out, r, requires_grad=True)  # zero: the layer starts as the frozen layer
    H = [(torch.randn(r, r) / r**0.5).requires_grad_() for _ in range(depth - 2)]

    # 1. Same numbers as plain PyTorch (forward and gradients), in float64.
    args64 = [t.detach().double().requires_grad_(t.requires_grad) for t in (w, b, A)]
    B64 = torch.randn(d_out, r, dtype=torch.float64, requires_grad=True)
    H64 = [h.detach().double().requires_grad_() for h in H]
    x64 = torch.randn(16, d_in, dtype=torch.float64)
    y_neat = torch_neat.linear(x64, args64[0], args64[1], args64[2], B64, H64, "relu", scale)
    y_ref = plain_neat(x64, args64[0], args64[1], args64[2], B64, H64, scale)
    g_neat = torch.autograd.grad(y_neat.sum(), [args64[2], B64, *H64])
    g_ref = torch.autograd.grad(y_ref.sum(), [args64[2], B64, *H64])
    err = max([((y_neat - y_ref).norm() / y_ref.norm()).item()] + [((a - c).norm() / c.norm()).item() for a, c in zip(g_neat, g_ref)])
    print(f"1. torch_neat.linear vs plain PyTorch, float64: max relative error {err:.2e} (forward and dA, dB, dH)")

    # 2. Train the adapter to fit a target layer whose weight differs from w by a low-rank nonlinear change.
    target_w = w + 0.3 * torch.randn(d_out, 4) @ torch.tanh(torch.randn(4, d_out) @ w) / 4
    opt = torch.optim.Adam([A, B, *H], lr=1e-2)
    print("2. fitting a shifted layer with the NEAT adapter (only A, B, hidden train):")
    for step in range(61):
        x = torch.randn(n, d_in)
        loss = F.mse_loss(torch_neat.linear(x, w, b, A, B, H, "relu", scale), F.linear(x, target_w, b))
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 10 == 0:
            print(f"   step {step:3d}  loss {loss.item():.5f}")

    # 3. Speed of one training step vs the same math in plain PyTorch.
    x = torch.randn(n, d_in, requires_grad=True)

    def time_step(fn, reps=20):
        for _ in range(3):
            fn().sum().backward()
        t0 = time.perf_counter()
        for _ in range(reps):
            fn().sum().backward()
        return (time.perf_counter() - t0) / reps

    t_neat = time_step(lambda: torch_neat.linear(x, w, b, A, B, H, "relu", scale))
    t_plain = time_step(lambda: plain_neat(x, w, b, A, B, H, scale))
    print(f"3. fwd+bwd at N={n}, d={d_in}, r={r}, depth={depth}, {torch.get_num_threads()} threads: "
          f"torch_neat {t_neat * 1e3:.2f} ms, plain PyTorch {t_plain * 1e3:.2f} ms (ratio {t_neat / t_plain:.2f})")


if __name__ == "__main__":
    main()
