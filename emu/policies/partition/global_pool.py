"""Global pool: one shared cache, any layer may take any slot (no floors, no caps)."""

from __future__ import annotations

from ...kernel.hooks import PARTITION_SIG, hook
from ...kernel.layout import new_policy_state
from ..api import Capabilities, Policy, PolicyContext, register


def init(ctx: PolicyContext, params: dict[str, float]) -> object:
    return new_policy_state()


@hook(PARTITION_SIG)
def partition(ps, cs, tv, p, layer, t):
    return 0


POLICY = register(Policy(
    name="global", kind="partition", hooks={"partition": partition}, init=init,
    capabilities=Capabilities(live=True, partition_aware=True),
    doc="One pool shared by all layers."))
