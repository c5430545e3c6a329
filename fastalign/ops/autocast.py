"""The op under ``torch.autocast``: it runs at the autocast dtype as ``F.linear`` would (explicit
casts in, fp32 accumulation inside) and disables autocast around its kernels, so a call behaves
the same with or without an enclosing autocast region."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
from torch import Tensor


def autocast_enabled(device_type: str) -> bool:
    """Whether an autocast region is active for ``device_type``."""
    # Autocast knows a handful of device types; "meta" and others raise instead of saying no.
    try:
        return torch.is_autocast_enabled(device_type)
    except RuntimeError:
        return False


def autocast_disabled(device_type: str) -> contextlib.AbstractContextManager:
    """A context that turns an active autocast region off (a no-op when none is active)."""
    if autocast_enabled(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


def cast_for_autocast(hidden: Tensor, weight: Tensor, bias: Tensor | None) -> tuple[Tensor, Tensor, Tensor | None]:
    """Under autocast, run at the autocast dtype like ``F.linear`` would (explicit casts)."""
    device_type = hidden.device.type
    if not autocast_enabled(device_type):
        return hidden, weight, bias
    dtype = torch.get_autocast_dtype(device_type)

    def cast(t: Tensor | None) -> Tensor | None:
        if t is None or not t.is_floating_point() or t.dtype == dtype:
            return t
        return t.to(dtype)

    return cast(hidden), cast(weight), cast(bias)


def autocast_of_now(device_type: str) -> Callable[[], contextlib.AbstractContextManager]:
    """The autocast state in force now, as a factory of contexts that bring it back: a custom
    autograd function that recomputes its forward in backward (where autocast is off) runs the
    recomputation under it, so it sees the dtypes its forward saw."""
    if not autocast_enabled(device_type):
        return lambda: autocast_disabled(device_type)
    dtype = torch.get_autocast_dtype(device_type)
    return lambda: torch.autocast(device_type, dtype=dtype)
