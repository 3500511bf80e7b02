"""The one backward core, and the autograd formulas registered from the op table.

Both routes to the kernels (docs/design.md §3.1) compute gradients here: the registered
``torch.library.register_autograd`` formula and the modules' eager fast path (``_fastpath.py``) only
collect what autograd asks for, in their own argument layout, and call :func:`backward_core`.
"""

from __future__ import annotations

import torch

from ._optable import MASK_SLOTS, ROWS, Row, binder, schema_args


class Plan:
    """A forward op's backward, resolved once: the backward op and where each gradient goes."""

    __slots__ = ("backward_op", "slots", "hidden_at", "count")

    def __init__(self, row: Row):
        self.backward_op = getattr(torch.ops.neat, row.backward)
        self.count = len(row.grads)
        # for each gradient argument, its position in output_mask; bias and hidden also need presence
        self.slots = tuple(MASK_SLOTS.index(name) for name in row.grads)
        self.hidden_at = row.grads.index("hidden") if "hidden" in row.grads else -1


def _mask(plan: Plan, tensors: tuple, needs: tuple) -> list:
    mask = [False] * len(MASK_SLOTS)
    for i, slot in enumerate(plan.slots):
        if needs[i]:
            t = tensors[i]
            # no gradient for an absent bias or an empty hidden list
            mask[slot] = t is not None if slot == 2 else (len(t) > 0 if slot == 5 else True)
    return mask


def backward_core(plan: Plan, grad, tensors: tuple, needs: tuple, activation: str, scale: float, call) -> tuple:
    """Gradients of a forward op, one per ``plan``'s gradient argument (None where not requested).

    ``tensors`` are the forward's tensor arguments in the row's ``grads`` order (hidden as a sequence),
    ``needs`` one flag per argument. Hidden's entry comes back as a list, or None when not requested.
    ``call(op, args)`` runs the backward op: through the dispatcher, or below the autograd key.
    """
    mask = _mask(plan, tensors, needs)
    outs = call(plan.backward_op, (grad, *tensors, activation, scale, mask))
    hidden_at = plan.hidden_at
    # a list comprehension, not a generator: this runs once per layer per step on the fast path
    return tuple([
        (list(outs[i]) if i == hidden_at else outs[i]) if mask[slot] else None
        for i, slot in enumerate(plan.slots)
    ])


def call_through_dispatcher(op, args):
    return op(*args)


def _needs(ctx, index: int) -> bool:
    # The dispatcher drops trailing arguments equal to their defaults, so needs_input_grad may be
    # shorter than the schema; a Tensor[] argument reports one flag per element.
    need = ctx.needs_input_grad
    if index >= len(need):
        return False
    flag = need[index]
    if isinstance(flag, (list, tuple)):
        return any(flag)
    return bool(flag)


def _differentiable(op: str, row: Row):
    """setup_context and backward for an op whose row names a backward op."""
    plan = Plan(row)
    bind = binder(op)
    names = tuple(a.name for a in schema_args(op))
    at = tuple(names.index(n) for n in row.grads)
    hidden_arg = names.index("hidden")
    attrs = (names.index("activation"), names.index("scale"))

    def setup_context(ctx, inputs, output):
        full = bind(inputs, {})
        hidden = full[hidden_arg]
        tensors = [full[i] for i in at if i != hidden_arg]
        ctx.save_for_backward(*tensors, *(hidden or ()))
        ctx.hidden_is_none = hidden is None
        ctx.attrs = (full[attrs[0]], full[attrs[1]])

    def backward(ctx, grad):
        saved = ctx.saved_tensors
        plain = plan.count - 1  # hidden is last among the gradient arguments
        tensors = (*saved[:plain], list(saved[plain:]))
        needs = tuple(_needs(ctx, i) for i in at)
        grads = backward_core(plan, grad, tensors, needs, ctx.attrs[0], ctx.attrs[1], call_through_dispatcher)
        out = [None] * len(names)
        for i, g in zip(at, grads):
            out[i] = g
        # a Tensor[]? argument's gradient mirrors it: None for None, else one entry per tensor
        count = len(saved) - plain
        out[hidden_arg] = None if ctx.hidden_is_none else (grads[-1] if grads[-1] is not None else [None] * count)
        # one gradient per argument the op was actually called with (see _needs)
        return tuple(out[: len(ctx.needs_input_grad)])

    return backward, setup_context


def _raising(op: str, row: Row):
    def setup_context(ctx, inputs, output):
        pass

    def backward(ctx, *grads):
        raise RuntimeError(f"torch-neat: neat::{op} {row.why_not}")

    return backward, setup_context


def register_all() -> None:
    """register_autograd for every row with a backward (docs/design.md §3.1)."""
    for op, row in ROWS.items():
        if row.backward is None:
            continue
        make = _raising if row.backward == "raises" else _differentiable
        backward, setup_context = make(op, row)
        torch.library.register_autograd(f"neat::{op}", backward, setup_context=setup_context)


PLANS = {op: Plan(row) for op, row in ROWS.items() if row.backward not in (None, "raises")}

__all__ = ["PLANS", "Plan", "backward_core", "register_all"]
