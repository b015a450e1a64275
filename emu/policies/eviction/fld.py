"""Farthest layer distance: evict the expert whose layer comes up last in the forward order.

The distance of layer l from the layer now computing c is, with `absolute` 0 (the default), the cyclic
forward distance `(l - c) mod L`: the layers just passed are the farthest (they come back only in the next
pass), the next layer is the nearest. This is Belady's choice when every pass touches every layer, without
knowing the trace.
With `absolute` 1 it is `|l - c|`, the definition of HOBBIT (Tang et al., 2024) that SpecMD reproduces
("the distance between each cached expert's layer and the current inference layer, evicting experts from
the farthest layers first"): the layers farthest from c on either side go first, so at the last layer the
first layer goes (the next pass needs it soonest), and at the first layer the last layer goes.
State: the resident set (rows `I.MEMBERS`, `I.POS`), `i[I.LAST, key]` the clock of the key's last access
(ties: least recent); `p[P.ABSOLUTE]`.
Cost: O(1) per event, O(resident) per victim.
"""

from __future__ import annotations

from enum import auto

from ...kernel.helpers import is_evictable, key_layer, resident_set_state, set_add, set_remove, set_size
from ...kernel.hooks import EV_ACCESS, EV_EVICT, EV_INSERT, EVENT_SIG, VICTIM_SIG, hook
from ...kernel.layout import SC, Fields
from ..api import Capabilities, Param, Policy, PolicyContext, param_values, register


class I(Fields):
    """Rows of `ps.i`."""

    MEMBERS = auto()  # the resident set's keys (helpers.resident_set_state: rows MEMBERS, POS first)
    POS = auto()  # each key's index in MEMBERS
    LAST = auto()  # per key: clock of the last access (ties: least recent)


class P(Fields):
    """`ps.p`: the resolved parameters (param_values)."""

    ABSOLUTE = auto()  # 0: cyclic forward distance (l - c) mod L; 1: absolute distance |l - c|


def init(ctx: PolicyContext, params: dict[str, float]) -> object:
    # a choice without resolved parameters (PolicyChoice("fld")) gets the default
    return resident_set_state(ctx.n_layers * ctx.n_experts, i_rows=len(I),
                              params=param_values(P, {"absolute": 0, **params}))


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
    absolute = ps.p[P.ABSOLUTE] != 0.0
    best = -1
    best_d = -1
    for j in range(set_size(i[I.POS])):
        key = i[I.MEMBERS, j]
        if not is_evictable(cs, key, in_layer):
            continue
        d = abs(key_layer(cs, key) - cur) if absolute else (key_layer(cs, key) - cur) % n_layers
        if d > best_d or (d == best_d and (i[I.LAST, key] < i[I.LAST, best] or (
                i[I.LAST, key] == i[I.LAST, best] and key < best))):
            best = key
            best_d = d
    return best


POLICY = register(Policy(
    name="fld", kind="eviction", hooks={"victim": victim, "on_event": on_event}, init=init,
    capabilities=Capabilities(live=True),
    params={"absolute": Param(0, 0, 1, "layer distance: 0 cyclic forward (l - c) mod L, 1 absolute |l - c| "
                                       "(HOBBIT's, as SpecMD defines FLD)", integer=True)},
    doc="Evict the expert whose layer is farthest from the current one (cyclic forward distance by default, "
        "absolute with absolute=1)."))
