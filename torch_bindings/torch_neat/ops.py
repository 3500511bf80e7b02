"""Functional API over ``torch.ops.neat``: wrappers, fake kernels (torch.compile) and autograd.

The math lives in the C library; this module only says what shapes come out (for tracing) and
which C backward kernel to call with which gradients requested.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from ._activations import canonical_activation

__all__ = ["linear", "adapter", "compute_g"]

Tensor = torch.Tensor


def linear(
    input: Tensor,
    weight: Tensor,
    bias: Optional[Tensor],
    A: Tensor,
    B: Tensor,
    hidden: Sequence[Tensor] = (),
    activation: str = "relu",
    scale: float = 1.0,
) -> Tensor:
    """NEAT-adapted linear layer: ``x W^T + b + scale * (x G^T) B^T`` with ``G = net(act(A W))``.

    Args:
        input: ``(..., d_in)``; any leading dims, kept in the output.
        weight: frozen ``(d_out, d_in)`` weight (``nn.Linear.weight``).
        bias: ``(d_out,)`` or None.
        A: ``(r, d_out)`` first adapter layer.
        B: ``(d_out, r)`` last adapter layer (zero at init).
        hidden: an even number of ``(r, r)`` hidden layers, encoders then decoders, wired with
            U-Net residuals (DESIGN.md section 1.1). Depth in the paper's sense is ``len(hidden) + 2``.
        activation: relu, sin, gelu, gelu_tanh, silu, tanh, identity (or the transformers
            aliases swish, linear, gelu_new, gelu_pytorch_tanh).
        scale: the scalar ``s`` multiplying the adapter term.

    Returns:
        ``(..., d_out)`` tensor with ``input``'s dtype. Differentiable in every tensor argument.
    """
    return torch.ops.neat.linear(input, weight, bias, A, B, list(hidden), canonical_activation(activation), float(scale))


def adapter(
    input: Tensor,
    weight: Tensor,
    A: Tensor,
    B: Tensor,
    hidden: Sequence[Tensor] = (),
    activation: str = "relu",
    scale: float = 1.0,
) -> Tensor:
    """Only the adapter term ``scale * (x G^T) B^T``; same arguments as :func:`linear` without bias.

    A drop-in for the NEAT authors' adapter module: their ``adapter(x, weight.t())`` is
    ``adapter(x, weight, A, B)`` here.
    """
    return torch.ops.neat.adapter(input, weight, A, B, list(hidden), canonical_activation(activation), float(scale))


def compute_g(weight: Tensor, A: Tensor, hidden: Sequence[Tensor] = (), activation: str = "relu") -> Tensor:
    """The ``(r, d_in)`` factor G, so the adapted weight is ``W + scale * B @ G``. Not differentiable."""
    return torch.ops.neat.compute_g(weight, A, list(hidden), canonical_activation(activation))


# ---------------------------------------------------------------------------------------------
# Fake kernels: output metadata only, so torch.compile / export can trace the ops.


def _check_common(input: Tensor, weight: Tensor, A: Tensor, B: Tensor, hidden: Optional[Sequence[Tensor]]) -> None:
    hidden = hidden or ()
    torch._check(input.dim() >= 1, lambda: "neat: input must have at least one dimension (..., d_in)")
    torch._check(weight.dim() == 2, lambda: f"neat: weight must be 2-D (d_out, d_in); got {tuple(weight.shape)}")
    torch._check(
        input.shape[-1] == weight.shape[1],
        lambda: f"neat: input's last dim must equal weight.shape[1]; got {tuple(input.shape)} and {tuple(weight.shape)}",
    )
    torch._check(A.dim() == 2 and A.shape[1] == weight.shape[0], lambda: f"neat: A must be (r, d_out); got {tuple(A.shape)}")
    torch._check(B.dim() == 2 and B.shape[0] == weight.shape[0], lambda: f"neat: B must be (d_out, r); got {tuple(B.shape)}")
    torch._check(len(hidden) % 2 == 0, lambda: f"neat: hidden must hold an even number of layers; got {len(hidden)}")
    named = [("weight", weight), ("A", A), ("B", B)] + [(f"hidden[{i}]", h) for i, h in enumerate(hidden)]
    for name, t in named:
        torch._check(
            t.device == input.device,
            lambda: f"neat: {name} is on device {t.device} but input is on {input.device}; all tensors must share one device",
        )


@torch.library.register_fake("neat::linear")
def _linear_fake(input, weight, bias, A, B, hidden=None, activation="relu", scale=1.0):
    _check_common(input, weight, A, B, hidden)
    if bias is not None:
        torch._check(bias.device == input.device, lambda: f"neat: bias is on device {bias.device} but input is on {input.device}")
    return input.new_empty((*input.shape[:-1], weight.shape[0]))


@torch.library.register_fake("neat::adapter")
def _adapter_fake(input, weight, A, B, hidden=None, activation="relu", scale=1.0):
    _check_common(input, weight, A, B, hidden)
    return input.new_empty((*input.shape[:-1], weight.shape[0]))


def _grads_fake(input, weight, bias, A, B, hidden, mask):
    def grad(wanted: bool, like: Tensor) -> Tensor:
        return like.new_empty(like.shape if wanted else (0,))

    db = bias.new_empty(bias.shape) if (mask[2] and bias is not None) else weight.new_empty((0,))
    return (
        grad(mask[0], input),
        grad(mask[1], weight),
        db,
        grad(mask[3], A),
        grad(mask[4], B),
        [grad(mask[5], h) for h in hidden],
    )


@torch.library.register_fake("neat::linear_backward")
def _linear_backward_fake(grad_out, input, weight, bias, A, B, hidden, activation, scale, output_mask):
    return _grads_fake(input, weight, bias, A, B, hidden, output_mask)


@torch.library.register_fake("neat::adapter_backward")
def _adapter_backward_fake(grad_out, input, weight, A, B, hidden, activation, scale, output_mask):
    dx, dw, _, dA, dB, dh = _grads_fake(input, weight, None, A, B, hidden, output_mask)
    return dx, dw, dA, dB, dh


@torch.library.register_fake("neat::compute_g")
def _compute_g_fake(weight, A, hidden=None, activation="relu"):
    torch._check(weight.dim() == 2 and A.dim() == 2, lambda: "neat: weight and A must be 2-D")
    return A.new_empty((A.shape[0], weight.shape[1]))


# ---------------------------------------------------------------------------------------------
# Autograd: backward calls the C backward kernel, asking only for the gradients autograd needs.


def _hidden_grads(ctx, dh, wanted: bool, count: int):
    # The gradient of a Tensor[]? argument mirrors its structure: None for None, else one entry per tensor.
    if ctx.hidden_is_none:
        return None
    return list(dh) if wanted else [None] * count


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


def _as_passed(ctx, grads: tuple) -> tuple:
    # One gradient per argument the op was actually called with (see _needs).
    return grads[: len(ctx.needs_input_grad)]


def _linear_setup_context(ctx, inputs, output):
    input, weight, bias, A, B, hidden, activation, scale = inputs
    ctx.save_for_backward(input, weight, bias, A, B, *(hidden or ()))
    ctx.hidden_is_none = hidden is None
    ctx.activation = activation
    ctx.scale = scale


def _linear_backward(ctx, grad):
    input, weight, bias, A, B, *hidden = ctx.saved_tensors
    mask = [_needs(ctx, 0), _needs(ctx, 1), bias is not None and _needs(ctx, 2), _needs(ctx, 3), _needs(ctx, 4), bool(hidden) and _needs(ctx, 5)]
    dx, dw, db, dA, dB, dh = torch.ops.neat.linear_backward(grad, input, weight, bias, A, B, hidden, ctx.activation, ctx.scale, mask)
    return _as_passed(ctx, (
        dx if mask[0] else None,
        dw if mask[1] else None,
        db if mask[2] else None,
        dA if mask[3] else None,
        dB if mask[4] else None,
        _hidden_grads(ctx, dh, mask[5], len(hidden)),
        None,
        None,
    ))


def _adapter_setup_context(ctx, inputs, output):
    input, weight, A, B, hidden, activation, scale = inputs
    ctx.save_for_backward(input, weight, A, B, *(hidden or ()))
    ctx.hidden_is_none = hidden is None
    ctx.activation = activation
    ctx.scale = scale


def _adapter_backward(ctx, grad):
    input, weight, A, B, *hidden = ctx.saved_tensors
    mask = [_needs(ctx, 0), _needs(ctx, 1), False, _needs(ctx, 2), _needs(ctx, 3), bool(hidden) and _needs(ctx, 4)]
    dx, dw, dA, dB, dh = torch.ops.neat.adapter_backward(grad, input, weight, A, B, hidden, ctx.activation, ctx.scale, mask)
    return _as_passed(ctx, (
        dx if mask[0] else None,
        dw if mask[1] else None,
        dA if mask[3] else None,
        dB if mask[4] else None,
        _hidden_grads(ctx, dh, mask[5], len(hidden)),
        None,
        None,
    ))


# Sparse tensors would otherwise fail in the dispatcher without naming the argument.
_sparse_lib = torch.library.Library("neat", "IMPL")


def _reject_sparse(op_name: str, arg_names: tuple):
    def kernel(*args, **kwargs):
        for name, value in zip(arg_names, args):
            values = value if isinstance(value, (list, tuple)) else [value]
            for v in values:
                if isinstance(v, Tensor) and v.layout != torch.strided:
                    raise RuntimeError(f"neat::{op_name}: {name} must be a dense (strided) tensor; got layout {v.layout}")
        raise RuntimeError(f"neat::{op_name}: every tensor must be dense (strided)")

    return kernel


_SPARSE_KEYS = ("SparseCPU", "SparseCUDA", "SparseCsrCPU", "SparseCsrCUDA")
for _op, _names in [
    ("linear", ("input", "weight", "bias", "A", "B", "hidden")),
    ("adapter", ("input", "weight", "A", "B", "hidden")),
    ("compute_g", ("weight", "A", "hidden")),
    ("linear_backward", ("grad_out", "input", "weight", "bias", "A", "B", "hidden")),
    ("adapter_backward", ("grad_out", "input", "weight", "A", "B", "hidden")),
]:
    for _key in _SPARSE_KEYS:
        _sparse_lib.impl(_op, _reject_sparse(_op, _names), _key)


# Double backward. The backward ops have no derivative of their own; without an autograd
# registration, differentiating them (hessian, grad of grad with create_graph=True) would
# silently give zeros. Registering one that raises turns that into a clear error at the moment
# a backward op is differentiated; first-order gradients, with or without create_graph, are
# unaffected.
def _no_double_backward(op_name: str):
    def setup_context(ctx, inputs, output):
        pass

    def backward(ctx, *grads):
        raise RuntimeError(
            f"torch-neat: neat::{op_name} cannot be differentiated: double backward (a gradient "
            "of a gradient, e.g. torch.autograd.functional.hessian or torch.autograd.grad of a "
            "result computed with create_graph=True) is not implemented for neat::linear and "
            "neat::adapter. First-order gradients are exact; for second-order terms compute the "
            "layer with plain PyTorch ops (the formula at the top of the README) instead."
        )

    return backward, setup_context


for _op in ("linear_backward", "adapter_backward"):
    _bw, _setup = _no_double_backward(_op)
    torch.library.register_autograd(f"neat::{_op}", _bw, setup_context=_setup)

torch.library.register_autograd("neat::linear", _linear_backward, setup_context=_linear_setup_context)
torch.library.register_autograd("neat::adapter", _adapter_backward, setup_context=_adapter_setup_context)


# ---------------------------------------------------------------------------------------------
# The modules' fast path. The autograd kernel that torch.library.register_autograd installs is
# generic Python (pytree flattening of the Tensor[]? argument, default filling, mask building):
# about a quarter of a millisecond per layer-step, as much as a small layer's whole math. The
# modules (NeatLinear, the PEFT bridge) know their arguments, so in eager mode they call the
# forward and backward ops directly below the autograd key through this autograd.Function.
# Under torch.compile, torch.func or any tensor subclass they keep the registered op, which is
# what tracing, opcheck and gradcheck see; both routes run the same C kernels.


def _plain(t: Optional[Tensor]) -> bool:
    return t is None or type(t) is torch.Tensor or type(t) is torch.nn.Parameter


def _below_autograd():
    return torch._C._AutoDispatchBelowADInplaceOrView()


def _backward_call(op, args: tuple):
    if torch.is_grad_enabled():
        # create_graph=True: go through the registered op so that differentiating this backward
        # raises torch-neat's clear error instead of giving silent zeros
        return op(*args)
    with _below_autograd():
        return op(*args)


class _FusedFn(torch.autograd.Function):
    """``neat::linear`` (bias given or None) or ``neat::adapter`` (with_base False) for the modules."""

    # forward(ctx, ...) rather than setup_context: apply() then skips binding the arguments to
    # a signature (inspect), which alone cost about 50 us per call
    @staticmethod
    def forward(ctx, with_base, input, weight, bias, A, B, activation, scale, *hidden):
        with _below_autograd():
            if with_base:
                y = torch.ops.neat.linear.default(input, weight, bias, A, B, list(hidden), activation, scale)
            else:
                y = torch.ops.neat.adapter.default(input, weight, A, B, list(hidden), activation, scale)
        ctx.save_for_backward(input, weight, bias, A, B, *hidden)
        ctx.with_base, ctx.activation, ctx.scale = with_base, activation, scale
        return y

    @staticmethod
    def backward(ctx, grad):
        input, weight, bias, A, B, *hidden = ctx.saved_tensors
        need = ctx.needs_input_grad
        mask = [need[1], need[2], ctx.with_base and bias is not None and need[3], need[4], need[5], any(need[8:])]
        if ctx.with_base:
            dx, dw, db, dA, dB, dh = _backward_call(
                torch.ops.neat.linear_backward.default,
                (grad, input, weight, bias, A, B, hidden, ctx.activation, ctx.scale, mask),
            )
        else:
            dx, dw, dA, dB, dh = _backward_call(
                torch.ops.neat.adapter_backward.default,
                (grad, input, weight, A, B, hidden, ctx.activation, ctx.scale, mask),
            )
            db = None
        dh = list(dh) if mask[5] else [None] * len(hidden)
        return (
            None,
            dx if mask[0] else None,
            dw if mask[1] else None,
            db if mask[2] else None,
            dA if mask[3] else None,
            dB if mask[4] else None,
            None,
            None,
            *dh,
        )


def _fast_ok(tensors) -> bool:
    return (
        not torch.compiler.is_compiling()
        and not torch._C._are_functorch_transforms_active()
        and all(_plain(t) for t in tensors)
    )


def fused_linear(input, weight, bias, A, B, hidden: Sequence[Tensor], activation: str, scale: float) -> Tensor:
    """``neat::linear`` for the modules: the fast path in eager mode, the registered op otherwise.

    ``activation`` must already be a kernel name (canonical_activation).
    """
    if _fast_ok((input, weight, bias, A, B, *hidden)):
        return _FusedFn.apply(True, input, weight, bias, A, B, activation, float(scale), *hidden)
    return torch.ops.neat.linear(input, weight, bias, A, B, list(hidden), activation, float(scale))


def fused_adapter(input, weight, A, B, hidden: Sequence[Tensor], activation: str, scale: float) -> Tensor:
    """``neat::adapter`` for the modules (see :func:`fused_linear`)."""
    if _fast_ok((input, weight, A, B, *hidden)):
        return _FusedFn.apply(False, input, weight, None, A, B, activation, float(scale), *hidden)
    return torch.ops.neat.adapter(input, weight, A, B, list(hidden), activation, float(scale))
