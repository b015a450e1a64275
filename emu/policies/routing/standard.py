"""Standard routing: the experts the trace recorded, untouched."""

from __future__ import annotations

from numba import njit

from ...engines.core import gather_layer
from ...engines.state import new_policy_state
from ..api import KERNEL_SIG, Policy, PolicyContext


def init(ctx: PolicyContext, params: dict[str, float]) -> object:
    return new_policy_state()


@njit(KERNEL_SIG, cache=True, _nrt=False)
def route(ps, cs, tv, p, layer, t):
    return gather_layer(cs, tv, p, layer)


POLICY = Policy(name="standard", kind="routing", kernels=(route,), init=init,
                doc="Replay the trace's routing as recorded.")
