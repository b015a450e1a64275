"""Fetch at the lowest precision: every miss copies the smallest stored form of the expert.

Smaller copies finish sooner and take less VRAM, at a quality cost the core books as degraded mass
(`quality.degraded_mass`) for the miss. The expert then stays resident at that precision.
State: none. Cost: O(1).
"""

from __future__ import annotations

from numba import njit

from ...engines.core import encode_miss
from ...engines.state import new_policy_state
from ..api import KERNEL_SIG, MISS_FETCH, Policy, PolicyContext


def init(ctx: PolicyContext, params: dict[str, float]) -> object:
    return new_policy_state()


@njit(KERNEL_SIG, cache=True, _nrt=False)
def miss(ps, cs, tv, i, _b, t):
    return encode_miss(MISS_FETCH, cs.prec_bytes.shape[0] - 1)


POLICY = Policy(name="fetch-lowest-bit", kind="miss", kernels=(miss,), init=init,
                doc="Demand-copy the missing expert at the smallest precision available.")
