"""Farthest layer distance: evict the expert whose layer comes up last in the forward order.

The distance of layer l from the layer now computing c is `(l - c) mod L`: the layers just passed are
the farthest (they come back only in the next pass), the next layer is the nearest. This is Belady's
choice when every pass touches every layer, without knowing the trace.
State: `i[0]` resident keys, `i[1]` positions, `i[2, key]` clock of the last access (ties: least recent).
Cost: O(1) per event, O(resident) per victim.
"""

from __future__ import annotations

from numba import njit

from ...engines.core import is_evictable, key_layer
from ...engines.state import SC_CLOCK, SC_LAYER
from ..api import EV_ACCESS, EV_EVICT, EV_INSERT, KERNEL_SIG, Policy, PolicyContext
from ..kernel_util import resident_set_state, set_add, set_remove, set_size


def init(ctx: PolicyContext, params: dict[str, float]) -> object:
    return resident_set_state(ctx.n_layers * ctx.n_experts, i_rows=3)


@njit(KERNEL_SIG, cache=True, _nrt=False)
def event(ps, cs, tv, ev, key, t):
    i = ps.i
    if ev == EV_ACCESS:
        i[2, key] = cs.sc[SC_CLOCK]
    elif ev == EV_INSERT:
        set_add(i[0], i[1], key)
        i[2, key] = cs.sc[SC_CLOCK]
    elif ev == EV_EVICT:
        set_remove(i[0], i[1], key)
    return 0


@njit(KERNEL_SIG, cache=True, _nrt=False)
def victim(ps, cs, tv, in_layer, _b, t):
    i = ps.i
    n_layers = cs.layer_count.shape[0]
    cur = cs.sc[SC_LAYER]
    best = -1
    best_d = -1
    for j in range(set_size(i[1])):
        key = i[0, j]
        if not is_evictable(cs, key, in_layer):
            continue
        d = (key_layer(cs, key) - cur) % n_layers
        if d > best_d or (d == best_d and (i[2, key] < i[2, best] or (i[2, key] == i[2, best] and key < best))):
            best = key
            best_d = d
    return best


POLICY = Policy(name="fld", kind="eviction", kernels=(victim, event), init=init,
                doc="Evict the expert whose layer is farthest ahead in the forward order (just-passed first).")
