"""Init-time arithmetic the partition policies share: slots, safe floors, and the small-layer warning."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

from ...errors import EmuError, EmuWarning
from ..api import PolicyContext


def slots(ctx: PolicyContext) -> int:
    """Experts at the model precision that fit in the cache."""
    return ctx.capacity_bytes // max(ctx.expert_bytes, 1)


def safe_floor(ctx: PolicyContext, wanted: int) -> int:
    """The largest per-layer floor <= wanted that can never deadlock: whatever layer needs room, the
    other layers' floors leave it at least top_k slots, (L - 1) * floor <= slots - top_k."""
    if ctx.n_layers <= 1:
        return wanted
    return max(0, min(wanted, (slots(ctx) - ctx.top_k) // (ctx.n_layers - 1)))


def layer_list(layers: Sequence[int]) -> str:
    """`0-3, 7` style, so a warning about 32 layers stays one line."""
    out = []
    start = prev = None
    for layer in layers:
        if start is None:
            start = prev = layer
        elif layer == prev + 1:
            prev = layer
        else:
            out.append(f"{start}" if start == prev else f"{start}-{prev}")
            start = prev = layer
    if start is not None:
        out.append(f"{start}" if start == prev else f"{start}-{prev}")
    return ", ".join(out)


def warn_below_top_k(ctx: PolicyContext, per_layer: Sequence[int], policy: str, what: str) -> None:
    small = [layer for layer, n in enumerate(per_layer) if n < ctx.top_k]
    if small:
        warnings.warn(f"partition {policy!r}: {what} of layers {layer_list(small)} is below top_k = "
                      f"{ctx.top_k} experts ({min(per_layer)} slots), so a single token's experts do not fit "
                      "and misses there are certain", EmuWarning, stacklevel=3)


def require_one_slot(ctx: PolicyContext, per_layer_bytes: int, policy: str) -> None:
    if per_layer_bytes < ctx.expert_bytes:
        raise EmuError(f"partition {policy!r} gives each layer {per_layer_bytes} bytes, less than one expert "
                       f"({ctx.expert_bytes} bytes): the run would deadlock; use a larger capacity or "
                       "partition = \"global\"", key="policy.partition")
