"""No prefetch: every copy is a demand copy."""

from __future__ import annotations

from ...kernel.hooks import PREFETCH_SIG, hook
from ...kernel.layout import new_policy_state
from ..api import Capabilities, Policy, PolicyContext, register


def init(ctx: PolicyContext, params: dict[str, float]) -> object:
    return new_policy_state()


@hook(PREFETCH_SIG)
def prefetch(ps, cs, tv, p, layer, t):
    return 0


POLICY = register(Policy(
    name="none", kind="prefetch", hooks={"prefetch": prefetch}, init=init,
    capabilities=Capabilities(live=True),
    doc="Never prefetch."))
