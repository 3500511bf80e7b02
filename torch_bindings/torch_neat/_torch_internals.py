"""Every private ``torch._C`` entry point torch-neat uses, in one place.

They are not public API and have moved between torch releases before; keeping them here means one
file to check when torch changes (docs/design.md §6). Each is used because the public API has no
equivalent at the cost the eager fast path allows (a few microseconds per call).
"""

from __future__ import annotations

import torch

# autocast's dispatch keys per device, and the key sets to exclude when a kernel has cast already
AUTOCAST_KEYS = {"cpu": torch._C.DispatchKey.AutocastCPU, "cuda": torch._C.DispatchKey.AutocastCUDA}
NO_AUTOCAST = {dev: torch._C.DispatchKeySet(key) for dev, key in AUTOCAST_KEYS.items()}

# one C call, no Python loop over devices: cheap when no autocast region is open
any_autocast_enabled = torch._C._is_any_autocast_enabled

# torch.func transforms (vmap, grad, jvp) wrap tensors; the fast path must not see them
functorch_active = torch._C._are_functorch_transforms_active


def exclude_keys(keys):
    """Context manager: dispatch skips ``keys`` (a DispatchKeySet) inside it."""
    return torch._C._ExcludeDispatchKeyGuard(keys)


# Context manager: ops dispatch below the Autograd and ADInplaceOrView keys (as a kernel would). The
# class itself, not a wrapper: the fast path enters it twice per step and a Python call costs there.
below_autograd = torch._C._AutoDispatchBelowADInplaceOrView


def registered_ops(namespace: str) -> tuple:
    """Names of every op the dispatcher knows in ``namespace`` (torch.ops lists only those touched)."""
    prefix = namespace + "::"
    return tuple(sorted(n[len(prefix):] for n in torch._C._dispatch_get_all_op_names() if n.startswith(prefix)))
