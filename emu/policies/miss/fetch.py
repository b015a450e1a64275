"""Fetch on miss: a blocking demand copy at the model's precision (the baseline every system has)."""

from __future__ import annotations

from numba import njit

from ...engines.core import encode_miss
from ...engines.state import new_policy_state
from ..api import KERNEL_SIG, MISS_FETCH, Policy, PolicyContext


def init(ctx: PolicyContext, params: dict[str, float]) -> object:
    return new_policy_state()


@njit(KERNEL_SIG, cache=True, _nrt=False)
def miss(ps, cs, tv, i, _b, t):
    return encode_miss(MISS_FETCH, 0)


POLICY = Policy(name="fetch", kind="miss", kernels=(miss,), init=init,
                doc="Demand-copy the missing expert and wait for it.")
