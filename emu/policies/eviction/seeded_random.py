"""Random eviction: a uniformly drawn evictable resident expert, from a seeded generator (a baseline).

State: `i[0]` resident keys, `i[1]` positions, `i[2, 0]` the splitmix64 state (seeded from the
scenario seed, so runs repeat exactly).
Cost: O(1) per event, O(resident) per victim (count the evictable keys, draw one).
"""

from __future__ import annotations

from numba import njit

from ...engines.core import is_evictable
from ..api import EV_EVICT, EV_INSERT, KERNEL_SIG, Policy, PolicyContext
from ..kernel_util import rand_below, resident_set_state, seed_state, set_add, set_remove, set_size


def init(ctx: PolicyContext, params: dict[str, float]) -> object:
    ps = resident_set_state(ctx.n_layers * ctx.n_experts, i_rows=3)
    ps.i[2, 0] = seed_state(ctx.seed, 1)
    return ps


@njit(KERNEL_SIG, cache=True, _nrt=False)
def event(ps, cs, tv, ev, key, t):
    if ev == EV_INSERT:
        set_add(ps.i[0], ps.i[1], key)
    elif ev == EV_EVICT:
        set_remove(ps.i[0], ps.i[1], key)
    return 0


@njit(KERNEL_SIG, cache=True, _nrt=False)
def victim(ps, cs, tv, in_layer, _b, t):
    i = ps.i
    n = set_size(i[1])
    count = 0
    for j in range(n):
        if is_evictable(cs, i[0, j], in_layer):
            count += 1
    if count == 0:
        return -1
    r = rand_below(i[2], 0, count)
    for j in range(n):
        key = i[0, j]
        if is_evictable(cs, key, in_layer):
            if r == 0:
                return key
            r -= 1
    return -1


POLICY = Policy(name="random", kind="eviction", kernels=(victim, event), init=init,
                doc="Evict a uniformly drawn evictable expert (seeded).")
