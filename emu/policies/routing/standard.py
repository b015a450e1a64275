"""Standard routing: the experts the trace recorded, untouched."""

from __future__ import annotations

from ...kernel.helpers import gather_layer
from ...kernel.hooks import ROUTE_SIG, hook
from ...kernel.layout import new_policy_state
from ..api import Capabilities, Policy, PolicyContext, register


def init(ctx: PolicyContext, params: dict[str, float]) -> object:
    return new_policy_state()


@hook(ROUTE_SIG)
def route(ps, cs, tv, p, layer, t):
    return gather_layer(cs, tv, p, layer)


POLICY = register(Policy(
    name="standard", kind="routing", hooks={"route": route}, init=init,
    capabilities=Capabilities(live=True),
    doc="Replay the trace's routing as recorded."))
