"""Least high-precision used: for mixed-precision caches, evict what served fewest full-precision uses.

An access counts when the expert is resident (or in flight) at the model's own precision (index 0). A
degraded copy (int8/int4/...) therefore scores low and goes first, which frees room to bring important
experts back at full precision; among full-precision copies it acts as LFU.
State: `i[0]` resident keys, `i[1]` positions, `i[2, key]` full-precision uses, `i[3, key]` clock of the
last access (ties: least recent).
Cost: O(1) per event, O(resident) per victim.
"""

from __future__ import annotations

from numba import njit

from ...engines.state import DEMAND, SC_CLOCK
from ..api import EV_ACCESS, EV_EVICT, EV_INSERT, KERNEL_SIG, Policy, PolicyContext
from ..kernel_util import resident_set_state, set_add, set_remove
from .lfu import victim  # same order: fewest counted uses, then least recent, then lowest key


def init(ctx: PolicyContext, params: dict[str, float]) -> object:
    return resident_set_state(ctx.n_layers * ctx.n_experts, i_rows=4)


@njit(KERNEL_SIG, cache=True, _nrt=False)
def event(ps, cs, tv, ev, key, t):
    i = ps.i
    if ev == EV_ACCESS:
        if cs.prec[key] == 0:
            i[2, key] += 1
        i[3, key] = cs.sc[SC_CLOCK]
    elif ev == EV_INSERT:
        set_add(i[0], i[1], key)
        if cs.copy_prio[key] == DEMAND and cs.prec[key] == 0:
            i[2, key] += 1
        i[3, key] = cs.sc[SC_CLOCK]
    elif ev == EV_EVICT:
        set_remove(i[0], i[1], key)
    return 0


POLICY = Policy(name="lhu", kind="eviction", kernels=(victim, event), init=init,
                doc="Evict the expert with the fewest full-precision uses (degraded copies first).")
