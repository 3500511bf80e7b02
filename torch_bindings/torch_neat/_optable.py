"""One row per ``torch.ops.neat`` op: what each argument is and what the Python side derives from it.

The C++ schemas (``neat_torch.cpp``) are the one place the argument lists and defaults are written;
this table reads them back from the registered ops and adds only what a schema cannot say. The
registrations (fake kernels, autograd, autocast kernels, rejection of sparse tensors) are generated
from it in ``_register.py`` (docs/design.md §3.1, "One table per op").

Adding an op touches: the C kernel and its ``neat.h`` entry point, the ``m.def`` / ``m.impl`` lines of
the binding (and its CUDA file), one entry in ``ROWS`` (and in ``ROLES`` for an argument name not seen
before), and a public wrapper in ``ops.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

# What an argument is, by name. The role decides how autocast casts it and which gradient slot it has:
#   activation  the layer's input: cast to the compute dtype, gets a gradient
#   frozen      the pre-trained weight or bias: cast to the compute dtype
#   adapter     a trained factor (A, B, or G in A's role): keeps float32 under mixed precision
#   adapter_list  the r x r hidden layers, as adapter
#   grad        the incoming gradient of a backward op
#   quantized   the arrays of a quantized frozen weight: never cast, no gradient
#   attr        a non-tensor attribute (activation name, scale, gradient mask, a quantized weight's
#               format and dims, its offset)
ROLES = {
    "input": "activation",
    "weight": "frozen",
    "bias": "frozen",
    "A": "adapter",
    "B": "adapter",
    "G": "adapter",
    "hidden": "adapter_list",
    "grad_out": "grad",
    "activation": "attr",
    "scale": "attr",
    "output_mask": "attr",
    "qweight": "quantized",
    "qmeta": "attr",
    "qoffset": "attr",
}

# The gradient slots of the backward ops' ``output_mask``, in its order. An op without bias (adapter)
# still passes all six flags, with bias's False.
MASK_SLOTS = ("input", "weight", "bias", "A", "B", "hidden")


@dataclass(frozen=True)
class Row:
    """What the Python side needs to know about one op beyond its schema.

    fake:      the output-shape rule of its fake kernel (a key of ``_register.FAKE_RULES``), or None
               for an op without tensors.
    backward:  the op computing its gradients ("linear_backward"), "raises" for an op that must not
               be differentiated (a clear error instead of silent zeros), or None (no autograd formula).
    grads:     the arguments that get a gradient, in the backward op's output order.
    autocast:  None (autocast falls through), "activation" (the output is cast to the autocast dtype
               as F.linear's is) or "adapter" (the output keeps the adapters' dtype: a factor of a
               weight, not an activation).
    why_not:   for backward == "raises": the message.
    """

    fake: Optional[str]
    backward: Optional[str] = None
    grads: tuple = ()
    autocast: Optional[str] = None
    why_not: str = ""


_DOUBLE_BACKWARD = (
    "double backward (a gradient of a gradient, e.g. torch.autograd.functional.hessian or "
    "torch.autograd.grad of a result computed with create_graph=True) is not implemented for "
    "neat::linear, neat::adapter and neat::qlinear. First-order gradients are exact; for second-order terms compute "
    "the layer with plain PyTorch ops (the formula at the top of the README) instead."
)

ROWS = {
    "linear": Row("output", "linear_backward", ("input", "weight", "bias", "A", "B", "hidden"), "activation"),
    "adapter": Row("output", "adapter_backward", ("input", "weight", "A", "B", "hidden"), "activation"),
    "compute_g": Row("g", None, (), "adapter"),
    "lowrank_linear": Row(
        "lowrank", "raises", (), "activation",
        "is inference-only (G is a kept factor, not a function of A): it has no gradient. Train with "
        "neat::linear (torch_neat.linear or NeatLinear in train mode), which forms G from A and "
        "differentiates through it.",
    ),
    "linear_backward": Row("grads", "raises", why_not="cannot be differentiated: " + _DOUBLE_BACKWARD),
    "adapter_backward": Row("grads", "raises", why_not="cannot be differentiated: " + _DOUBLE_BACKWARD),
    "cpu_gemm_plan": Row(None),
    # a quantized frozen weight (docs/design.md §5.2): the same ops with W as qweight, qmeta, qoffset
    "qlinear": Row("qoutput", "qlinear_backward", ("input", "bias", "A", "B", "hidden"), "activation"),
    "qcompute_g": Row("qg", None, (), "adapter"),
    "qlowrank_linear": Row(
        "qlowrank", "raises", (), "activation",
        "is inference-only (G is a kept factor, not a function of A): it has no gradient. Train with "
        "neat::qlinear (NeatLinear over a quantized layer, in train mode).",
    ),
    "qlinear_backward": Row("grads", "raises", why_not="cannot be differentiated: " + _DOUBLE_BACKWARD),
}


@dataclass(frozen=True)
class Arg:
    name: str
    is_tensor: bool
    has_default: bool
    default: object
    is_list: bool = False  # Tensor[] / Tensor[]? (and int[], bool[] for attributes)


def schema_args(op: str) -> tuple:
    """The op's arguments as registered by the C++ schema (names, tensor or not, defaults)."""
    schema = getattr(torch.ops.neat, op).default._schema
    out = []
    for a in schema.arguments:
        typ = str(a.type)
        out.append(Arg(a.name, "Tensor" in typ, a.has_default_value(),
                       a.default_value if a.has_default_value() else None, "List" in typ or "[]" in typ))
    return tuple(out)


def binder(op: str):
    """A function mapping a call's (args, kwargs) to the full argument tuple, defaults filled in.

    The dispatcher hands Python kernels the arguments as they were passed, dropping trailing ones
    equal to their defaults; the generated kernels want every argument by position.
    """
    args = schema_args(op)
    names = tuple(a.name for a in args)
    defaults = tuple(a.default for a in args)
    count = len(args)

    def bind(call_args: tuple, call_kwargs: dict) -> tuple:
        if len(call_args) == count and not call_kwargs:
            return tuple(call_args)
        full = list(call_args) + list(defaults[len(call_args):])
        for k, v in call_kwargs.items():
            full[names.index(k)] = v
        return tuple(full)

    return bind
