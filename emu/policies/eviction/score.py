"""Lowest accumulated gate score: evict the expert that has carried the least routing mass.

Each access adds the routing mass the expert carried in that layer (sum of its tokens' gate scores, or
1/top_k per token without scores); with `decay` < 1 the sum fades by `decay` per pass, so the policy
tracks recent importance rather than all-time importance.
State: `i[0]` resident keys, `i[1]` positions, `i[2, key]` pass of the last update, `i[3, key]` clock of
the last access (ties: least recent); `f[0, key]` the accumulated score at that pass.
Cost: O(entries of the layer) per access (to find its mass), O(resident) per victim.
"""

from __future__ import annotations

from numba import njit

from ...engines.core import is_evictable, key_layer
from ...engines.state import DEMAND, SC_CLOCK, SC_LAYER, SC_NCUR, SC_PASS
from ..api import EV_ACCESS, EV_EVICT, EV_INSERT, KERNEL_SIG, Param, Policy, PolicyContext
from ..kernel_util import resident_set_state, set_add, set_remove, set_size


def init(ctx: PolicyContext, params: dict[str, float]) -> object:
    n = ctx.n_layers * ctx.n_experts
    return resident_set_state(n, i_rows=4, f_rows=1, f_cols=n, params=(params["decay"],))


@njit(cache=True, _nrt=False)
def _current(ps, key: int, p: int) -> float:
    gap = p - ps.i[2, key]
    if gap <= 0 or ps.p[0] == 1.0:
        return ps.f[0, key]
    return ps.f[0, key] * ps.p[0] ** gap


@njit(cache=True, _nrt=False)
def _add_mass(ps, cs, key: int) -> None:
    if key_layer(cs, key) != cs.sc[SC_LAYER]:
        return
    for j in range(cs.sc[SC_NCUR]):
        if cs.cur_key[j] == key or cs.cur_sub[j] == key:
            p = cs.sc[SC_PASS]
            ps.f[0, key] = _current(ps, key, p) + cs.cur_mass[j]
            ps.i[2, key] = p
            return


@njit(KERNEL_SIG, cache=True, _nrt=False)
def event(ps, cs, tv, ev, key, t):
    i = ps.i
    if ev == EV_ACCESS:
        _add_mass(ps, cs, key)
        i[3, key] = cs.sc[SC_CLOCK]
    elif ev == EV_INSERT:
        set_add(i[0], i[1], key)
        if cs.copy_prio[key] == DEMAND:
            _add_mass(ps, cs, key)
        i[3, key] = cs.sc[SC_CLOCK]
    elif ev == EV_EVICT:
        set_remove(i[0], i[1], key)
    return 0


@njit(KERNEL_SIG, cache=True, _nrt=False)
def victim(ps, cs, tv, in_layer, _b, t):
    i = ps.i
    p = cs.sc[SC_PASS]
    best = -1
    best_s = 0.0
    for j in range(set_size(i[1])):
        key = i[0, j]
        if not is_evictable(cs, key, in_layer):
            continue
        s = _current(ps, key, p)
        if best < 0 or s < best_s or (s == best_s and (i[3, key] < i[3, best] or (
                i[3, key] == i[3, best] and key < best))):
            best = key
            best_s = s
    return best


POLICY = Policy(name="score", kind="eviction", kernels=(victim, event), init=init,
                params={"decay": Param(1.0, 0.0, 1.0, "per-pass fade of the accumulated score (1: none)")},
                doc="Evict the expert with the lowest accumulated gate score.")
