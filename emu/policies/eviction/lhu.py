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

from ...engines.core import is_evictable
from ...engines.state import DEMAND, SC_CLOCK, new_policy_state
from ..api import EV_ACCESS, EV_EVICT, EV_INSERT, KERNEL_SIG, Policy, PolicyContext
from ..kernel_util import init_set, set_add, set_remove, set_rows, set_size


def init(ctx: PolicyContext, params: dict[str, float]) -> object:
    n = ctx.n_layers * ctx.n_experts
    ps = new_policy_state(i_rows=4, i_cols=set_rows(n))
    init_set(ps.i[0], ps.i[1])
    return ps


@njit(KERNEL_SIG, cache=True)
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


@njit(KERNEL_SIG, cache=True)
def victim(ps, cs, tv, in_layer, _b, t):
    i = ps.i
    best = -1
    for j in range(set_size(i[1])):
        key = i[0, j]
        if not is_evictable(cs, key, in_layer):
            continue
        if best < 0 or i[2, key] < i[2, best] or (i[2, key] == i[2, best] and (
                i[3, key] < i[3, best] or (i[3, key] == i[3, best] and key < best))):
            best = key
    return best


POLICY = Policy(name="lhu", kind="eviction", kernels=(victim, event), init=init,
                doc="Evict the expert with the fewest full-precision uses (degraded copies first).")
