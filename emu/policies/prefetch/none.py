"""No prefetch: every copy is a demand copy."""

from __future__ import annotations

from numba import njit

from ...engines.state import new_policy_state
from ..api import KERNEL_SIG, Policy, PolicyContext


def init(ctx: PolicyContext, params: dict[str, float]) -> object:
    return new_policy_state()


@njit(KERNEL_SIG, cache=True, _nrt=False)
def prefetch(ps, cs, tv, p, layer, t):
    return 0


POLICY = Policy(name="none", kind="prefetch", kernels=(prefetch,), init=init, doc="Never prefetch.")
