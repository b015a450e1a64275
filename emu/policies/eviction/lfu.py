"""Least frequently used: evict the resident expert with the fewest accesses so far.

State: `i[0]` resident keys, `i[1]` their positions (see `kernel_util`), `i[2, key]` access count (kept
across evictions: the count is the expert's popularity over the whole run, "perfect LFU"), `i[3, key]`
the logical clock of the key's last access, which breaks ties (least recent goes first).
Demand inserts count as an access; prefetch inserts do not (the expert was not asked for).
Cost: O(1) per event, O(resident) per victim.
"""

from __future__ import annotations

from numba import njit

from ...engines.core import is_evictable
from ...engines.state import DEMAND, SC_CLOCK
from ..api import EV_ACCESS, EV_EVICT, EV_INSERT, KERNEL_SIG, Policy, PolicyContext
from ..kernel_util import resident_set_state, set_add, set_remove, set_size


def init(ctx: PolicyContext, params: dict[str, float]) -> object:
    return resident_set_state(ctx.n_layers * ctx.n_experts, i_rows=4)


@njit(KERNEL_SIG, cache=True, _nrt=False)
def event(ps, cs, tv, ev, key, t):
    i = ps.i
    if ev == EV_ACCESS:
        i[2, key] += 1
        i[3, key] = cs.sc[SC_CLOCK]
    elif ev == EV_INSERT:
        set_add(i[0], i[1], key)
        if cs.copy_prio[key] == DEMAND:
            i[2, key] += 1
        i[3, key] = cs.sc[SC_CLOCK]
    elif ev == EV_EVICT:
        set_remove(i[0], i[1], key)
    return 0


@njit(KERNEL_SIG, cache=True, _nrt=False)
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


POLICY = Policy(name="lfu", kind="eviction", kernels=(victim, event), init=init,
                doc="Least frequently used expert goes first (ties: least recent).")
