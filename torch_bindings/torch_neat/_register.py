"""Registrations generated from the op table (``_optable.ROWS``): fake kernels, autograd, autocast
kernels and the rejection of sparse tensors. Imported once, by ``ops.py`` (docs/design.md §3.1)."""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from . import _autocast, _autograd
from ._optable import ROWS, binder, schema_args

Tensor = torch.Tensor

# ---------------------------------------------------------------------------------------------
# Fake kernels: output metadata only, so torch.compile / export can trace the ops. One rule per
# kind of output; each takes the op's arguments by name.


def _check_input_weight(input: Tensor, weight: Tensor) -> None:
    torch._check(input.dim() >= 1, lambda: "neat: input must have at least one dimension (..., d_in)")
    torch._check(weight.dim() == 2, lambda: f"neat: weight must be 2-D (d_out, d_in); got {tuple(weight.shape)}")
    torch._check(
        input.shape[-1] == weight.shape[1],
        lambda: f"neat: input's last dim must equal weight.shape[1]; got {tuple(input.shape)} and {tuple(weight.shape)}",
    )


def _check_common(input: Tensor, weight: Tensor, A: Tensor, B: Tensor, hidden: Optional[Sequence[Tensor]]) -> None:
    hidden = hidden or ()
    _check_input_weight(input, weight)
    torch._check(A.dim() == 2 and A.shape[1] == weight.shape[0], lambda: f"neat: A must be (r, d_out); got {tuple(A.shape)}")
    torch._check(B.dim() == 2 and B.shape[0] == weight.shape[0], lambda: f"neat: B must be (d_out, r); got {tuple(B.shape)}")
    torch._check(len(hidden) % 2 == 0, lambda: f"neat: hidden must hold an even number of layers; got {len(hidden)}")
    named = [("weight", weight), ("A", A), ("B", B)] + [(f"hidden[{i}]", h) for i, h in enumerate(hidden)]
    for name, t in named:
        torch._check(
            t.device == input.device,
            lambda: f"neat: {name} is on device {t.device} but input is on {input.device}; all tensors must share one device",
        )


def _output_fake(a: dict) -> Tensor:
    # neat::linear and neat::adapter: (..., d_out)
    input, weight, bias = a["input"], a["weight"], a.get("bias")
    _check_common(input, weight, a["A"], a["B"], a["hidden"])
    if bias is not None:
        torch._check(bias.device == input.device, lambda: f"neat: bias is on device {bias.device} but input is on {input.device}")
    return input.new_empty((*input.shape[:-1], weight.shape[0]))


def _lowrank_fake(a: dict) -> Tensor:
    input, weight, bias, G, B = a["input"], a["weight"], a["bias"], a["G"], a["B"]
    _check_input_weight(input, weight)
    torch._check(G.dim() == 2 and G.shape[1] == weight.shape[1], lambda: f"neat: G must be (r, d_in); got {tuple(G.shape)}")
    torch._check(
        B.dim() == 2 and B.shape[0] == weight.shape[0] and B.shape[1] == G.shape[0],
        lambda: f"neat: B must be (d_out, r); got {tuple(B.shape)}",
    )
    named = [("weight", weight), ("G", G), ("B", B)] + ([("bias", bias)] if bias is not None else [])
    for name, t in named:
        torch._check(t.device == input.device, lambda: f"neat: {name} is on {t.device} but input is on {input.device}")
    return input.new_empty((*input.shape[:-1], weight.shape[0]))


def _g_fake(a: dict) -> Tensor:
    weight, A = a["weight"], a["A"]
    torch._check(weight.dim() == 2 and A.dim() == 2, lambda: "neat: weight and A must be 2-D")
    return A.new_empty((A.shape[0], weight.shape[1]))


def _grads_fake(a: dict, grads: tuple) -> tuple:
    # One gradient per gradient argument of the forward op: its shape when the mask asks for it,
    # else empty (what the C++ kernels return for an unrequested gradient).
    mask = dict(zip(("input", "weight", "bias", "A", "B", "hidden"), a["output_mask"]))
    out = []
    for name in grads:
        t = a[name]
        if name == "hidden":
            out.append([h.new_empty(h.shape if mask[name] else (0,)) for h in t])
        elif name == "bias":
            # an absent bias's placeholder follows the weight (A for a quantized weight), as in C++
            like = a["weight"] if "weight" in a else a["A"]
            out.append(t.new_empty(t.shape) if (mask[name] and t is not None) else like.new_empty((0,)))
        else:
            out.append(t.new_empty(t.shape if mask[name] else (0,)))
    return tuple(out)


def _check_quantized(a: dict) -> None:
    qmeta = a["qmeta"]
    torch._check(len(qmeta) == 5, lambda: "neat: qmeta must be [format, d_out, d_in, blocksize, blocksize2]")


def _qoutput_fake(a: dict) -> Tensor:
    # neat::qlinear: (..., d_out) with d_out from qmeta
    _check_quantized(a)
    input, A, B = a["input"], a["A"], a["B"]
    d_out, d_in = a["qmeta"][1], a["qmeta"][2]
    torch._check(input.dim() >= 1 and input.shape[-1] == d_in, lambda: f"neat: input's last dim must be d_in = {d_in}")
    torch._check(A.dim() == 2 and A.shape[1] == d_out, lambda: f"neat: A must be (r, d_out); got {tuple(A.shape)}")
    torch._check(B.dim() == 2 and B.shape[0] == d_out, lambda: f"neat: B must be (d_out, r); got {tuple(B.shape)}")
    return input.new_empty((*input.shape[:-1], d_out))


def _qlowrank_fake(a: dict) -> Tensor:
    _check_quantized(a)
    input, d_out = a["input"], a["qmeta"][1]
    torch._check(input.dim() >= 1 and input.shape[-1] == a["qmeta"][2], lambda: "neat: input's last dim must be d_in")
    return input.new_empty((*input.shape[:-1], d_out))


def _qg_fake(a: dict) -> Tensor:
    _check_quantized(a)
    A = a["A"]
    torch._check(A.dim() == 2, lambda: "neat: A must be 2-D")
    return A.new_empty((A.shape[0], a["qmeta"][2]))


FAKE_RULES = {
    "output": _output_fake, "lowrank": _lowrank_fake, "g": _g_fake,
    "qoutput": _qoutput_fake, "qlowrank": _qlowrank_fake, "qg": _qg_fake,
}


def _forward_of(backward_op: str) -> str:
    return next(op for op, row in ROWS.items() if row.backward == backward_op)


def _fake(op: str):
    names = tuple(a.name for a in schema_args(op))
    bind = binder(op)
    rule = ROWS[op].fake
    if rule == "grads":
        grads = ROWS[_forward_of(op)].grads
        return lambda *args, **kwargs: _grads_fake(dict(zip(names, bind(args, kwargs))), grads)
    fn = FAKE_RULES[rule]
    return lambda *args, **kwargs: fn(dict(zip(names, bind(args, kwargs))))


# ---------------------------------------------------------------------------------------------
# Sparse tensors would otherwise fail in the dispatcher without naming the argument.

SPARSE_KEYS = ("SparseCPU", "SparseCUDA", "SparseCsrCPU", "SparseCsrCUDA")


def _reject_sparse(op: str):
    # every argument's name by position (tensor or not), so that positions line up with the call's
    names = tuple(a.name if a.is_tensor else None for a in schema_args(op))

    def kernel(*args, **kwargs):
        for name, value in zip(names, args):
            if name is None:
                continue
            values = value if isinstance(value, (list, tuple)) else [value]
            for v in values:
                if isinstance(v, Tensor) and v.layout != torch.strided:
                    raise RuntimeError(f"neat::{op}: {name} must be a dense (strided) tensor; got layout {v.layout}")
        raise RuntimeError(f"neat::{op}: every tensor must be dense (strided)")

    return kernel


def _register() -> list:
    libs = [torch.library.Library("neat", "IMPL")]
    for op, row in ROWS.items():
        if row.fake is None:
            continue
        torch.library.register_fake(f"neat::{op}", _fake(op))
        for key in SPARSE_KEYS:
            libs[0].impl(op, _reject_sparse(op), key)
    _autograd.register_all()
    libs.append(_autocast.register_all())
    return libs


# the Library objects own the kernels: they live as long as the module
LIBRARIES = _register()
