"""Fetch on miss: a blocking demand copy at the model's precision (the baseline every system has)."""

from __future__ import annotations

from ...kernel.hooks import MISS_FETCH, MISS_SIG, encode_miss, hook
from ...kernel.layout import new_policy_state
from ..api import Capabilities, Policy, PolicyContext, register


def init(ctx: PolicyContext, params: dict[str, float]) -> object:
    return new_policy_state()


@hook(MISS_SIG)
def on_miss(ps, cs, tv, i, t):
    return encode_miss(MISS_FETCH, 0)


POLICY = register(Policy(
    name="fetch", kind="miss", hooks={"on_miss": on_miss}, init=init,
    capabilities=Capabilities(live=True),
    doc="Demand-copy the missing expert and wait for it."))
