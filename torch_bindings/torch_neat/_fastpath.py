"""The modules' eager fast path onto the same ops and the same backward core.

The autograd kernel that ``torch.library.register_autograd`` installs is generic Python (pytree
flattening of the Tensor[]? argument, default filling, mask building): about a quarter of a
millisecond per layer-step, as much as a small layer's whole math. The modules (NeatLinear, the PEFT
bridge) know their arguments, so in eager mode they call the forward ops below the autograd key through
a fixed-argument autograd.Function, whose backward is ``_autograd.backward_core``. Under
torch.compile, torch.func or any tensor subclass they keep the registered op, which is what tracing,
opcheck and gradcheck see (docs/design.md §3.1, "Two routes to the same kernels").
"""

from __future__ import annotations

from typing import Sequence

import torch

from . import _autocast
from . import _torch_internals as _tc
from ._autograd import PLANS, backward_core

Tensor = torch.Tensor

_LINEAR, _ADAPTER = PLANS["linear"], PLANS["adapter"]
_linear_op = torch.ops.neat.linear.default
_adapter_op = torch.ops.neat.adapter.default
_lowrank_op = torch.ops.neat.lowrank_linear.default
_below = _tc.below_autograd
_any_autocast = _tc.any_autocast_enabled
_functorch_active = _tc.functorch_active
_compiling = torch.compiler.is_compiling


# the types the fast path takes as they are (no subclass: it may override dispatch)
_PLAIN_TYPES = frozenset((torch.Tensor, torch.nn.Parameter, type(None)))


def _below_autograd_call(op, args: tuple):
    if torch.is_grad_enabled():
        # create_graph=True: go through the registered op so that differentiating this backward
        # raises torch-neat's clear error instead of giving silent zeros
        return op(*args)
    with _below():
        return op(*args)


class _FusedFn(torch.autograd.Function):
    """``neat::linear`` (bias given or None) or ``neat::adapter`` (with_base False) for the modules."""

    # forward(ctx, ...) rather than setup_context: apply() then skips binding the arguments to
    # a signature (inspect), which alone cost about 50 us per call
    @staticmethod
    def forward(ctx, with_base, input, weight, bias, A, B, activation, scale, *hidden):
        with _below():
            if with_base:
                y = _linear_op(input, weight, bias, A, B, list(hidden), activation, scale)
            else:
                y = _adapter_op(input, weight, A, B, list(hidden), activation, scale)
        ctx.save_for_backward(input, weight, bias, A, B, *hidden)
        ctx.with_base, ctx.activation, ctx.scale = with_base, activation, scale
        return y

    @staticmethod
    def backward(ctx, grad):
        input, weight, bias, A, B, *hidden = ctx.saved_tensors
        need = ctx.needs_input_grad
        wants_hidden = any(need[8:])
        if ctx.with_base:
            dx, dw, db, dA, dB, dh = backward_core(
                _LINEAR, grad, (input, weight, bias, A, B, hidden, ctx.activation, ctx.scale),
                (need[1], need[2], need[3], need[4], need[5], wants_hidden), _below_autograd_call,
            )
        else:
            dx, dw, dA, dB, dh = backward_core(
                _ADAPTER, grad, (input, weight, A, B, hidden, ctx.activation, ctx.scale),
                (need[1], need[2], need[4], need[5], wants_hidden), _below_autograd_call,
            )
            db = None
        return (None, dx, dw, db, dA, dB, None, None, *(dh if dh is not None else [None] * len(hidden)))


def fast_ok(tensors) -> bool:
    """Whether the eager fast path may take these tensors (else the registered op does)."""
    # issuperset(map(type, ...)): one C loop, not a Python call per tensor
    return not _compiling() and not _functorch_active() and _PLAIN_TYPES.issuperset(map(type, tensors))


def _fused_autocast(with_base, input, weight, bias, A, B, hidden, activation, scale) -> Tensor:
    # the casts of the ops' autocast kernels, recorded by autograd above the Function
    dev = input.device.type
    if dev in _tc.AUTOCAST_KEYS and torch.is_autocast_enabled(dev):
        return _autocast.run(
            dev, (input, weight, bias, A, B, hidden), True,
            lambda x, w, b, A, B, h: _FusedFn.apply(with_base, x, w, b, A, B, activation, scale, *h),
        )
    return _FusedFn.apply(with_base, input, weight, bias, A, B, activation, scale, *hidden)


def fused_linear(input, weight, bias, A, B, hidden: Sequence[Tensor], activation: str, scale: float) -> Tensor:
    """``neat::linear`` for the modules: the fast path in eager mode, the registered op otherwise.

    ``activation`` must already be a kernel name (canonical_activation). Under ``torch.autocast``
    both routes cast as :func:`torch_neat.ops.autocast_operands` says; with no autocast region open
    the fast path pays one C call for knowing it.
    """
    if fast_ok((input, weight, bias, A, B, *hidden)):
        if _any_autocast():
            return _fused_autocast(True, input, weight, bias, A, B, hidden, activation, float(scale))
        return _FusedFn.apply(True, input, weight, bias, A, B, activation, float(scale), *hidden)
    return torch.ops.neat.linear(input, weight, bias, A, B, list(hidden), activation, float(scale))


def fused_adapter(input, weight, A, B, hidden: Sequence[Tensor], activation: str, scale: float) -> Tensor:
    """``neat::adapter`` for the modules (see :func:`fused_linear`)."""
    if fast_ok((input, weight, A, B, *hidden)):
        if _any_autocast():
            return _fused_autocast(False, input, weight, None, A, B, hidden, activation, float(scale))
        return _FusedFn.apply(False, input, weight, None, A, B, activation, float(scale), *hidden)
    return torch.ops.neat.adapter(input, weight, A, B, list(hidden), activation, float(scale))


def lowrank_inference(input, weight, bias, G, B, scale: float) -> Tensor:
    """``neat::lowrank_linear`` for the modules' eval path, where no tensor of the call needs a
    gradient: below the autograd key in eager mode (the registered autograd kernel is Python and
    would cost more than a small layer's math), the registered op otherwise."""
    if fast_ok((input, weight, bias, G, B)):
        with _below():
            return _lowrank_op(input, weight, bias, G, B, float(scale))
    return torch.ops.neat.lowrank_linear(input, weight, bias, G, B, float(scale))
