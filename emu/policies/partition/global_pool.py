"""Global pool: one shared cache, any layer may take any slot (no floors, no caps)."""

from __future__ import annotations

from numba import njit

from ...engines.state import new_policy_state
from ..api import KERNEL_SIG, Policy, PolicyContext


def init(ctx: PolicyContext, params: dict[str, float]) -> object:
    return new_policy_state()


@njit(KERNEL_SIG, cache=True, _nrt=False)
def partition(ps, cs, tv, p, layer, t):
    return 0


POLICY = Policy(name="global", kind="partition", kernels=(partition,), init=init,
                doc="One pool shared by all layers.")
