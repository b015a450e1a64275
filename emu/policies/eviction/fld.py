"""Farthest layer distance: evict the expert whose layer comes up last in the forward order.

The distance of layer l from the layer now computing c is `(l - c) mod L`: the layers just passed are
the farthest (they come back only in the next pass), the next layer is the nearest. This is Belady's
choice when every pass touches every layer, without knowing the trace.
State: the resident set (rows `I.MEMBERS`, `I.POS`) and `i[I.LAST, key]` the clock of the key's last access
(ties: least recent).
Cost: O(1) per event, O(resident) per victim.
"""

from __future__ import annotations

from enum import auto

from ...kernel.helpers import is_evictable, key_layer, resident_set_state, set_add, set_remove, set_size
from ...kernel.hooks import EV_ACCESS, EV_EVICT, EV_INSERT, EVENT_SIG, VICTIM_SIG, hook
from ...kernel.layout import SC, Fields
from ..api import Capabilities, Policy, PolicyContext, register


class I(Fields):
    """Rows of `ps.i`."""

    MEMBERS = auto()  # the resident set's keys (helpers.resident_set_state: rows MEMBERS, POS first)
    POS = auto()  # each key's index in MEMBERS
    LAST = auto()  # per key: clock of the last access (ties: least recent)


def init(ctx: PolicyContext, params: dict[str, float]) -> object:
    return resident_set_state(ctx.n_layers * ctx.n_experts, i_rows=len(I))


@hook(EVENT_SIG)
def on_event(ps, cs, tv, ev, key, t):
    i = ps.i
    if ev == EV_ACCESS:
        i[I.LAST, key] = cs.sc[SC.CLOCK]
    elif ev == EV_INSERT:
        set_add(i[I.MEMBERS], i[I.POS], key)
        i[I.LAST, key] = cs.sc[SC.CLOCK]
    elif ev == EV_EVICT:
        set_remove(i[I.MEMBERS], i[I.POS], key)
    return 0


@hook(VICTIM_SIG)
def victim(ps, cs, tv, incoming, t):
    in_layer = key_layer(cs, incoming)
    i = ps.i
    n_layers = cs.layer_count.shape[0]
    cur = cs.sc[SC.LAYER]
    best = -1
    best_d = -1
    for j in range(set_size(i[I.POS])):
        key = i[I.MEMBERS, j]
        if not is_evictable(cs, key, in_layer):
            continue
        d = (key_layer(cs, key) - cur) % n_layers
        if d > best_d or (d == best_d and (i[I.LAST, key] < i[I.LAST, best] or (
                i[I.LAST, key] == i[I.LAST, best] and key < best))):
            best = key
            best_d = d
    return best


POLICY = register(Policy(
    name="fld", kind="eviction", hooks={"victim": victim, "on_event": on_event}, init=init,
    capabilities=Capabilities(live=True),
    doc="Evict the expert whose layer is farthest ahead in the forward order (just-passed first)."))
