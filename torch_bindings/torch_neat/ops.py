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

    Under ``torch.autocast`` it behaves like ``F.linear``: on CUDA x, weight and bias run in the
    autocast dtype while float32 A, B and hidden stay float32 (mixed precision: the kernels round them
    to the autocast dtype before each product and accumulate in float32); on CPU, whose kernels are
    float32/float64, it computes in float32 and returns the autocast dtype, as ``F.linear`` does there.
    The result has the autocast dtype on both; float64 tensors are never cast. Float32 parameters get
    float32 gradients. See :func:`autocast_operands`.
    """
    # eager mode takes the modules' fast path (the same C ops under a fixed-argument autograd.Function);
    # torch.compile, functorch transforms and tensor subclasses get the registered op
    return fused_linear(input, weight, bias, A, B, list(hidden), canonical_activation(activation), float(scale))


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
    ``adapter(x, weight, A, B)`` here. Under ``torch.autocast`` it behaves as :func:`linear` does.
    """
    return fused_adapter(input, weight, A, B, list(hidden), canonical_activation(activation), float(scale))


def compute_g(weight: Tensor, A: Tensor, hidden: Sequence[Tensor] = (), activation: str = "relu") -> Tensor:
    """The ``(r, d_in)`` factor G, so the adapted weight is ``W + scale * B @ G``. Not differentiable.

    G has A's dtype. Under ``torch.autocast`` the operands are cast as for :func:`linear` (on CUDA the
    weight to the autocast dtype; on CPU everything to float32) and G keeps the adapters' dtype after
    that cast (float32 for float32 adapters): it is a factor of a weight, not an activation.
    """
    return torch.ops.neat.compute_g(weight, A, list(hidden), canonical_activation(activation))


def lowrank_linear(input: Tensor, weight: Tensor, bias: Optional[Tensor], G: Tensor, B: Tensor, scale: float = 1.0) -> Tensor:
    """Inference with G kept: ``input @ weight.T + bias + scale * (input @ G.T) @ B.T``.

    ``G`` is :func:`compute_g`'s ``(r, d_in)`` factor, kept while the adapter is frozen (NeatLinear
    does so in eval mode), so the pass over the weight that forms it is skipped; the rank-r term
    rides on the main product, so input and output are each passed once. Any low-rank pair fits
    (a LoRA's ``lora_A`` as ``G``, ``lora_B`` as ``B``). ``bias`` may be None. dtypes and devices
    as for :func:`linear`, with ``G`` in A's role.

    Not differentiable: asking for a gradient through it raises. Training uses :func:`linear`,
    which forms G itself.
    """
    return torch.ops.neat.lowrank_linear(input, weight, bias, G, B, float(scale))


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


@torch.library.register_fake("neat::lowrank_linear")
def _lowrank_linear_fake(input, weight, bias, G, B, scale=1.0):
    torch._check(input.dim() >= 1, lambda: "neat: input must have at least one dimension (..., d_in)")
    torch._check(weight.dim() == 2, lambda: f"neat: weight must be 2-D (d_out, d_in); got {tuple(weight.shape)}")
    torch._check(
        input.shape[-1] == weight.shape[1],
        lambda: f"neat: input's last dim must equal weight.shape[1]; got {tuple(input.shape)} and {tuple(weight.shape)}",
    )
    torch._check(G.dim() == 2 and G.shape[1] == weight.shape[1], lambda: f"neat: G must be (r, d_in); got {tuple(G.shape)}")
    torch._check(
        B.dim() == 2 and B.shape[0] == weight.shape[0] and B.shape[1] == G.shape[0],
        lambda: f"neat: B must be (d_out, r); got {tuple(B.shape)}",
    )
    named = [("weight", weight), ("G", G), ("B", B)] + ([("bias", bias)] if bias is not None else [])
    for name, t in named:
        torch._check(t.device == input.device, lambda: f"neat: {name} is on {t.device} but input is on {input.device}")
    return input.new_empty((*input.shape[:-1], weight.shape[0]))


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
    ("lowrank_linear", ("input", "weight", "bias", "G", "B")),
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


# lowrank_linear is for inference. Without an autograd registration a gradient through it would
# silently skip it (its output would not require grad); this one raises when one is asked for.
def _lowrank_setup_context(ctx, inputs, output):
    pass


def _lowrank_backward(ctx, grad):
    raise RuntimeError(
        "torch-neat: neat::lowrank_linear is inference-only (G is a kept factor, not a function of "
        "A): it has no gradient. Train with neat::linear (torch_neat.linear or NeatLinear in train "
        "mode), which forms G from A and differentiates through it."
    )


torch.library.register_autograd("neat::lowrank_linear", _lowrank_backward, setup_context=_lowrank_setup_context)

torch.library.register_autograd("neat::linear", _linear_backward, setup_context=_linear_setup_context)
torch.library.register_autograd("neat::adapter", _adapter_backward, setup_context=_adapter_setup_context)


# ---------------------------------------------------------------------------------------------
# Autocast (DESIGN 4): under torch.autocast the ops behave like F.linear, never silently in strict
# float32 on a GPU. torch.library.register_autocast does not fit: it casts every floating tensor,
# adapters included, to one dtype fixed at registration. Here the dtype is the autocast region's own
# and the adapters keep float32 (the CUDA kernels' mixed-precision mode rounds them to the compute
# dtype before each product, as autocast rounds F.linear's float32 weight, and accumulates in
# float32). The casts run above autograd, so gradients flow back through them: a float32 parameter
# gets a float32 gradient. The backward ops have no autocast kernel (autocast falls through): their
# inputs are what the forward saved, already consistent.

_AUTOCAST_KEYS = {"cpu": torch._C.DispatchKey.AutocastCPU, "cuda": torch._C.DispatchKey.AutocastCUDA}
_NO_AUTOCAST = {dev: torch._C.DispatchKeySet(key) for dev, key in _AUTOCAST_KEYS.items()}


def _cast(t: Optional[Tensor], dtype: torch.dtype) -> Optional[Tensor]:
    # as autocast: only floating tensors other than float64 are cast
    if t is None or t.dtype == dtype or t.dtype == torch.float64 or not t.is_floating_point():
        return t
    return t.to(dtype)


def autocast_enabled(t: Tensor) -> bool:
    """Whether ``torch.autocast`` is on for ``t``'s device (cheap when no autocast region is open)."""
    if not torch._C._is_any_autocast_enabled():
        return False
    dev = t.device.type
    return dev in _AUTOCAST_KEYS and torch.is_autocast_enabled(dev)


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
    if out is not None and (w.dtype != torch.float32 or out == torch.float32):
        out = None
    A, B = _cast(A, pdt), _cast(B, pdt)
    hidden = None if hidden is None else [_cast(h, pdt) for h in hidden]
    return x, w, b, A, B, hidden, out


def _autocast_kernels(device_type: str):
    exclude = _NO_AUTOCAST[device_type]

    def linear_kernel(input, weight, bias, A, B, hidden=None, activation="relu", scale=1.0):
        x, w, b, A, B, hidden, out = autocast_operands(device_type, input, weight, bias, A, B, hidden)
        with torch._C._ExcludeDispatchKeyGuard(exclude):
            y = torch.ops.neat.linear.default(x, w, b, A, B, hidden, activation, scale)
        return y if out is None else y.to(out)

    def adapter_kernel(input, weight, A, B, hidden=None, activation="relu", scale=1.0):
        x, w, _, A, B, hidden, out = autocast_operands(device_type, input, weight, None, A, B, hidden)
        with torch._C._ExcludeDispatchKeyGuard(exclude):
            y = torch.ops.neat.adapter.default(x, w, A, B, hidden, activation, scale)
        return y if out is None else y.to(out)

    def compute_g_kernel(weight, A, hidden=None, activation="relu"):
        _, w, _, A, _, hidden, _ = autocast_operands(device_type, None, weight, None, A, A, hidden)
        with torch._C._ExcludeDispatchKeyGuard(exclude):
            return torch.ops.neat.compute_g.default(w, A, hidden, activation)

    def lowrank_linear_kernel(input, weight, bias, G, B, scale=1.0):
        # inference from a kept G: G and B follow A's dtype rule, so they are cast as adapters
        x, w, b, G, B, _, out = autocast_operands(device_type, input, weight, bias, G, B, None)
        with torch._C._ExcludeDispatchKeyGuard(exclude):
            y = torch.ops.neat.lowrank_linear.default(x, w, b, G, B, scale)
        return y if out is None else y.to(out)

    return {
        "linear": linear_kernel,
        "adapter": adapter_kernel,
        "compute_g": compute_g_kernel,
        "lowrank_linear": lowrank_linear_kernel,
    }


_autocast_lib = torch.library.Library("neat", "IMPL")
for _dev, _key in _AUTOCAST_KEYS.items():
    for _op, _kernel in _autocast_kernels(_dev).items():
        _autocast_lib.impl(_op, _kernel, _key.name)


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


def _fused_autocast(with_base, input, weight, bias, A, B, hidden, activation, scale) -> Tensor:
    # The fast path under torch.autocast: the casts of the ops' autocast kernels, recorded by autograd
    # above the Function, then the Function with autocast off for this device, so that its forward
    # (which calls the ops) neither casts again nor sees an output dtype other than the one it saves.
    dev = input.device.type
    if dev not in _AUTOCAST_KEYS or not torch.is_autocast_enabled(dev):
        return _FusedFn.apply(with_base, input, weight, bias, A, B, activation, scale, *hidden)
    x, w, b, A, B, hidden, out = autocast_operands(dev, input, weight, bias, A, B, hidden)
    with torch._C._ExcludeDispatchKeyGuard(_NO_AUTOCAST[dev]):
        y = _FusedFn.apply(with_base, x, w, b, A, B, activation, scale, *hidden)
    return y if out is None else y.to(out)


def fused_linear(input, weight, bias, A, B, hidden: Sequence[Tensor], activation: str, scale: float) -> Tensor:
    """``neat::linear`` for the modules: the fast path in eager mode, the registered op otherwise.

    ``activation`` must already be a kernel name (canonical_activation). Under ``torch.autocast``
    both routes cast as :func:`autocast_operands` says; with no autocast region open the fast path
    pays one C call for knowing it.
    """
    if _fast_ok((input, weight, bias, A, B, *hidden)):
        if torch._C._is_any_autocast_enabled():
            return _fused_autocast(True, input, weight, bias, A, B, hidden, activation, float(scale))
        return _FusedFn.apply(True, input, weight, bias, A, B, activation, float(scale), *hidden)
    return torch.ops.neat.linear(input, weight, bias, A, B, list(hidden), activation, float(scale))


def fused_adapter(input, weight, A, B, hidden: Sequence[Tensor], activation: str, scale: float) -> Tensor:
    """``neat::adapter`` for the modules (see :func:`fused_linear`)."""
    if _fast_ok((input, weight, A, B, *hidden)):
        if torch._C._is_any_autocast_enabled():
            return _fused_autocast(False, input, weight, None, A, B, hidden, activation, float(scale))
        return _FusedFn.apply(False, input, weight, None, A, B, activation, float(scale), *hidden)
    return torch.ops.neat.adapter(input, weight, A, B, list(hidden), activation, float(scale))


def lowrank_inference(input, weight, bias, G, B, scale: float) -> Tensor:
    """``neat::lowrank_linear`` for the modules' eval path, where no tensor of the call needs a
    gradient: below the autograd key in eager mode (the registered autograd kernel is Python and
    would cost more than a small layer's math), the registered op otherwise."""
    if _fast_ok((input, weight, bias, G, B)):
        with _below_autograd():
            return torch.ops.neat.lowrank_linear.default(input, weight, bias, G, B, float(scale))
    return torch.ops.neat.lowrank_linear(input, weight, bias, G, B, float(scale))
