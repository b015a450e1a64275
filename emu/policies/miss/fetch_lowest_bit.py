"""Fetch at the lowest precision: every miss copies the smallest stored form of the expert.

The stored forms are `PolicyContext.precisions` (the model's own, then smaller ones, largest first; narrowed by
`model.stored_precisions`), so the last index is the smallest stored one: int2 for a bf16 model by default, int4
with `stored_precisions = ["bf16", "int4"]`. Smaller copies finish sooner and take less VRAM, at a quality cost the
core books as degraded mass (`quality.degraded_mass`) for the miss. The expert then stays resident at that
precision. With nothing stored below the model's precision every miss is a full copy, plain `fetch`, and `init`
says so in a warning.
State: none. Cost: O(1).
"""

from __future__ import annotations

import warnings

from ...errors import EmuWarning
from ...kernel.hooks import MISS_FETCH, MISS_SIG, encode_miss, hook
from ...kernel.layout import new_policy_state
from ..api import Policy, PolicyContext, register


def init(ctx: PolicyContext, params: dict[str, float]) -> object:
    if len(ctx.precisions) == 1:  # the same silent plain `fetch` that fetch-priority warns of
        warnings.warn(f"miss policy 'fetch-lowest-bit': the model stores nothing below its precision "
                      f"{ctx.precisions[0]} (model.stored_precisions), so it runs as plain 'fetch'", EmuWarning,
                      stacklevel=2)
    return new_policy_state()


@hook(MISS_SIG)
def on_miss(ps, cs, tv, i, t):
    return encode_miss(MISS_FETCH, cs.prec_bytes.shape[0] - 1)


POLICY = register(Policy(
    name="fetch-lowest-bit", kind="miss", hooks={"on_miss": on_miss}, init=init,
    doc="Demand-copy the missing expert at the smallest precision available."))
