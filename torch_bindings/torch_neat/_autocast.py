"""Autocast for the ops: the casting rule, and the autocast kernels generated from the op table.

Under ``torch.autocast`` the ops behave like ``F.linear``, never silently in strict float32 on a GPU
(docs/design.md §4). ``torch.library.register_autocast`` does not fit: it casts every floating tensor,
adapters included, to one dtype fixed at registration. Here the dtype is the autocast region's own and
the adapters keep float32 (the CUDA kernels' mixed-precision mode rounds them to the compute dtype
before each product, as autocast rounds F.linear's float32 weight, and accumulates in float32). The casts
run above autograd, so gradients flow back through them: a float32 parameter gets a float32 gradient.
The backward ops have no autocast kernel (autocast falls through): their inputs are what the forward
saved, already consistent. The eager fast path casts through :func:`run` too.
"""

from __future__ import annotations

from typing import Optional

import torch

from . import _torch_internals as _tc
from ._optable import ROLES, ROWS, binder, schema_args

Tensor = torch.Tensor


def _cast(t: Optional[Tensor], dtype: torch.dtype) -> Optional[Tensor]:
    # as autocast: only floating tensors other than float64 are cast
    if t is None or t.dtype == dtype or t.dtype == torch.float64 or not t.is_floating_point():
        return t
    return t.to(dtype)


def autocast_enabled(t: Tensor) -> bool:
    """Whether ``torch.autocast`` is on for ``t``'s device (cheap when no autocast region is open)."""
    if not _tc.any_autocast_enabled():
        return False
    dev = t.device.type
    return dev in _tc.AUTOCAST_KEYS and torch.is_autocast_enabled(dev)


def autocast_operands(device_type: str, input, weight, bias, A, B, hidden, dtype: Optional[torch.dtype] = None):
    """What the ops compute with under ``torch.autocast(device_type)``.

    Returns ``(input, weight, bias, A, B, hidden, out_dtype)``: the operands cast as below, and the
    dtype to cast the op's output to (None: keep it). ``dtype`` is the autocast dtype (default: the
    current one for ``device_type``; given explicitly by tests of the CUDA rule on a CPU machine).

    - CUDA: input, weight and bias in the autocast dtype; A, B and hidden stay as they are when all of
      them already have that dtype, else they become float32 (mixed precision). The output comes out
      in the autocast dtype.
    - CPU: the kernels run float32 and float64 only, so every tensor is cast to float32 and the float32
      output to the autocast dtype, as ``F.linear`` returns under CPU autocast: the next layer of a
      model sees the same dtype it would after ``F.linear`` (attention and residual code of HF models
      relies on it).
    - float64 tensors are never cast, as autocast leaves them; a float64 call runs in float64.
    """
    if dtype is None:
        dtype = torch.get_autocast_dtype(device_type)
    params = [A, B, *(hidden or ())]
    if device_type == "cuda":
        compute, out = dtype, None
        pdt = compute if all(p.dtype in (compute, torch.float64) for p in params) else torch.float32
    else:
        compute = pdt = torch.float32
        out = dtype
    x, w, b = _cast(input, compute), _cast(weight, compute), _cast(bias, compute)
    # a quantized weight (None here) dequantizes to float32 on CPU
    if out is not None and ((w is not None and w.dtype != torch.float32) or out == torch.float32):
        out = None
    A, B = _cast(A, pdt), _cast(B, pdt)
    hidden = None if hidden is None else [_cast(h, pdt) for h in hidden]
    return x, w, b, A, B, hidden, out


def run(device_type: str, operands: tuple, cast_output: bool, call):
    """``call(*cast operands)`` under autocast's rule for ``device_type``, with autocast off inside.

    ``operands`` is ``(input, weight, bias, A, B, hidden)`` (None for what the op lacks). Inside, the
    op's autocast key is excluded, so the kernel neither casts again nor sees an output dtype other
    than the one it saves; the output is cast to the autocast dtype when ``cast_output``.
    """
    *cast, out = autocast_operands(device_type, *operands)
    with _tc.exclude_keys(_tc.NO_AUTOCAST[device_type]):
        y = call(*cast)
    return y if (out is None or not cast_output) else y.to(out)


def _kernel(op: str, device_type: str, cast_output: bool):
    """The autocast kernel of ``op``: its arguments placed in autocast_operands' slots by role."""
    names = tuple(a.name for a in schema_args(op))
    bind = binder(op)
    default_op = getattr(torch.ops.neat, op).default
    places = []  # (argument position, operand slot)
    adapters = 0
    for i, name in enumerate(names):
        role = ROLES[name]
        if role == "activation":
            places.append((i, 0))
        elif role == "frozen":
            places.append((i, 1 if name == "weight" else 2))
        elif role == "adapter":
            places.append((i, 3 + adapters))
            adapters += 1
        elif role == "adapter_list":
            places.append((i, 5))
    # an op with one adapter factor (compute_g's A) lets it stand in B's slot too, so that the
    # mixed-precision test sees every adapter
    twin = adapters == 1

    def kernel(*args, **kwargs):
        full = list(bind(args, kwargs))
        operands = [None] * 6
        for i, slot in places:
            operands[slot] = full[i]
        if twin:
            operands[4] = operands[3]

        def call(*cast):
            for i, slot in places:
                full[i] = cast[slot]
            return default_op(*full)

        return run(device_type, tuple(operands), cast_output, call)

    return kernel


def register_all() -> None:
    """An autocast kernel per device for every row with an autocast role."""
    lib = torch.library.Library("neat", "IMPL")
    for op, row in ROWS.items():
        if row.autocast is None:
            continue
        for dev, key in _tc.AUTOCAST_KEYS.items():
            lib.impl(op, _kernel(op, dev, row.autocast == "activation"), key.name)
    return lib
