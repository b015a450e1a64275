"""Fetch at the lowest precision: every miss copies the smallest stored form of the expert.

Smaller copies finish sooner and take less VRAM, at a quality cost the core books as degraded mass
(`quality.degraded_mass`) for the miss. The expert then stays resident at that precision.
State: none. Cost: O(1).
"""

from __future__ import annotations

from ...kernel.hooks import MISS_FETCH, MISS_SIG, encode_miss, hook
from ...kernel.layout import new_policy_state
from ..api import Policy, PolicyContext, register


def init(ctx: PolicyContext, params: dict[str, float]) -> object:
    return new_policy_state()


@hook(MISS_SIG)
def on_miss(ps, cs, tv, i, t):
    return encode_miss(MISS_FETCH, cs.prec_bytes.shape[0] - 1)


POLICY = register(Policy(
    name="fetch-lowest-bit", kind="miss", hooks={"on_miss": on_miss}, init=init,
    doc="Demand-copy the missing expert at the smallest precision available."))
