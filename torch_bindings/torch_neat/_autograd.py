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

    __slots__ = ("backward_op", "slots", "hidden_at", "count", "grad_at")

    def __init__(self, op: str, row: Row):
        self.backward_op = getattr(torch.ops.neat, row.backward)
        self.count = len(row.grads)
        names = tuple(a.name for a in schema_args(op))
        # each gradient argument's position among the forward's arguments, and its output_mask slot
        self.grad_at = tuple(names.index(name) for name in row.grads)
        self.slots = tuple(MASK_SLOTS.index(name) for name in row.grads)
        self.hidden_at = row.grads.index("hidden") if "hidden" in row.grads else -1


def _mask(plan: Plan, args: tuple, needs: tuple) -> list:
    mask = [False] * len(MASK_SLOTS)
    for i, slot in enumerate(plan.slots):
        if needs[i]:
            t = args[plan.grad_at[i]]
            # no gradient for an absent bias or an empty hidden list
            mask[slot] = t is not None if slot == 2 else (len(t) > 0 if slot == 5 else True)
    return mask


def backward_core(plan: Plan, grad, args: tuple, needs: tuple, call) -> tuple:
    """Gradients of a forward op, one per ``plan``'s gradient argument (None where not requested).

    ``args`` are the forward's arguments in schema order, every one given (hidden as a sequence);
    ``needs`` one flag per gradient argument. Hidden's entry comes back as a list, or None when not
    requested. ``call(op, args)`` runs the backward op: through the dispatcher, or below the
    autograd key.
    """
    mask = _mask(plan, args, needs)
    outs = call(plan.backward_op, (grad, *args, mask))
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
    plan = Plan(op, row)
    bind = binder(op)
    args = schema_args(op)
    count = len(args)
    hidden_arg = next(i for i, a in enumerate(args) if a.name == "hidden")
    # tensors are saved for backward (lists flattened), everything else is kept on ctx
    tensor_at = tuple(i for i, a in enumerate(args) if a.is_tensor)
    is_list = tuple(args[i].is_list for i in tensor_at)

    def setup_context(ctx, inputs, output):
        full = bind(inputs, {})
        flat, counts = [], []
        for i, listed in zip(tensor_at, is_list):
            value = full[i]
            if listed:
                value = list(value or ())
                flat.extend(value)
                counts.append(len(value))
            else:
                flat.append(value)
                counts.append(-1)
        ctx.save_for_backward(*flat)
        ctx.counts = counts
        ctx.hidden_is_none = full[hidden_arg] is None
        ctx.others = tuple(None if i in tensor_at else full[i] for i in range(count))

    def backward(ctx, grad):
        saved = ctx.saved_tensors
        full = list(ctx.others)
        k = 0
        for i, n in zip(tensor_at, ctx.counts):
            if n < 0:
                full[i] = saved[k]
                k += 1
            else:  # the backward schemas take lists as Tensor[] (an absent hidden is [])
                full[i] = list(saved[k:k + n])
                k += n
        needs = tuple(_needs(ctx, i) for i in plan.grad_at)
        grads = backward_core(plan, grad, tuple(full), needs, call_through_dispatcher)
        out = [None] * count
        for i, g in zip(plan.grad_at, grads):
            out[i] = g
        # a Tensor[] argument's gradient mirrors it: None for None, else one entry per tensor
        for i, n in zip(tensor_at, ctx.counts):
            if n >= 0 and i != hidden_arg:
                out[i] = [None] * n
        n_hidden = len(full[hidden_arg])
        out[hidden_arg] = None if ctx.hidden_is_none else (grads[-1] if grads[-1] is not None else [None] * n_hidden)
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


PLANS = {op: Plan(op, row) for op, row in ROWS.items() if row.backward not in (None, "raises")}

__all__ = ["PLANS", "Plan", "backward_core", "register_all"]
