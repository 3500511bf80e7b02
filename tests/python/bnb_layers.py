"""bitsandbytes layers for the quantized tests (test_quantized.py, test_quantized_guard.py on CPU;
tests/gpu/test_cuda_quant.py on CUDA): quantized from a fresh nn.Linear's weight, as bitsandbytes does when
a layer is moved to a device."""

from __future__ import annotations

import warnings

import torch
from torch import nn


def quiet(fn):
    """fn() with bitsandbytes' warnings (kernel hub lookups, compute dtype hints) silenced."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn()


def four_bit(d_in, d_out, quant_type="nf4", nested=False, blocksize=64, storage=torch.uint8, bias=True, device="cpu"):
    import bitsandbytes as bnb

    lin = nn.Linear(d_in, d_out, bias=bias)
    q = bnb.nn.Linear4bit(d_in, d_out, bias=bias, quant_type=quant_type, compute_dtype=torch.float32,
                          compress_statistics=nested, quant_storage=storage)
    q.weight = bnb.nn.Params4bit(lin.weight.data.clone(), requires_grad=False, quant_type=quant_type,
                                 compress_statistics=nested, blocksize=blocksize, quant_storage=storage)
    if bias:
        q.bias = nn.Parameter(lin.bias.data.clone(), requires_grad=False)
    return quiet(lambda: q.to(device))


def int8(d_in, d_out, bias=True, device="cpu"):
    import bitsandbytes as bnb

    lin = nn.Linear(d_in, d_out, bias=bias)
    q = bnb.nn.Linear8bitLt(d_in, d_out, bias=bias, has_fp16_weights=False)
    q.weight = bnb.nn.Int8Params(lin.weight.data.clone(), requires_grad=False, has_fp16_weights=False)
    if bias:
        q.bias = nn.Parameter(lin.bias.data.clone(), requires_grad=False)
    return quiet(lambda: q.to(device))


def flat_rule(q) -> torch.Tensor:
    """W read from a 4-bit layer's storage by the layout bitsandbytes' quantize_4bit writes: the flattened
    weight in blocks of ``blocksize``, two codes per byte, high nibble first (plain torch, float32, on the
    layer's device)."""
    w, qs = q.weight, q.weight.quant_state
    d_out, d_in = qs.shape
    n = d_out * d_in
    data = w.data.reshape(-1).view(torch.uint8)
    nib = torch.stack([data >> 4, data & 15], 1).reshape(-1)[:n].long()
    absmax = qs.absmax
    if qs.nested:
        idx = torch.arange(absmax.numel(), device=absmax.device) // qs.state2.blocksize
        absmax = qs.state2.code[absmax.long()] * qs.state2.absmax[idx] + qs.offset
    return (qs.code[nib] * absmax[torch.arange(n, device=data.device) // qs.blocksize]).reshape(d_out, d_in)
