"""Farthest layer distance: evict the expert whose layer comes up last in the forward order.

The distance of layer l from the layer now computing c is, with `absolute` 0 (the default), the cyclic
forward distance `(l - c) mod L`: the layers just passed are the farthest (they come back only in the next
pass), the next layer is the nearest. This is Belady's choice when every pass touches every layer, without
knowing the trace.
With `absolute` 1 it is `|l - c|`, the definition of HOBBIT (Tang et al., 2024) that SpecMD reproduces
("the distance between each cached expert's layer and the current inference layer, evicting experts from
the farthest layers first"): the layers farthest from c on either side go first, so at the last layer the
first layer goes (the next pass needs it soonest), and at the first layer the last layer goes.
State: one key list per layer (`kernel.helpers`' key lists, in one int row `i[I.LINKS]`; a key off the lists has
previous -1) of its resident and in-flight keys in the order of their last access (least recent first), and
`i[I.LAST, key]` the clock of the key's last access (ties: least recent, then the lower key); `p[P.ABSOLUTE]`.
The victim is the first evictable key of the farthest layer that has one: the walk visits the layers from the
farthest and, within one, skips only keys that are in flight, protected or kept by a floor.
Cost: O(1) per event; per victim O(layers) plus the keys skipped.
"""

from __future__ import annotations

from enum import auto

from numba import njit

from ...kernel.helpers import (
    init_lists,
    ix,
    key_layer,
    list_first_evictable,
    list_insert_after,
    list_prev,
    list_sentinel,
    list_unlink,
)
from ...kernel.hooks import EV_ACCESS, EV_EVICT, EV_INSERT, EVENT_SIG, VICTIM_SIG, hook
from ...kernel.layout import SC, Fields, new_policy_state
from ..api import Capabilities, Param, Policy, PolicyContext, param_values, register


class I(Fields):
    """Rows of `ps.i`."""

    LINKS = auto()  # the key lists: node k (the keys, then one sentinel per layer) at columns 2k, 2k + 1
    LAST = auto()  # per key: clock of the last access (ties: least recent)



_OFF = -1  # a key's previous node while it is off the lists


class P(Fields):
    """`ps.p`: the resolved parameters (param_values)."""

    ABSOLUTE = auto()  # 0: cyclic forward distance (l - c) mod L; 1: absolute distance |l - c|


def init(ctx: PolicyContext, params: dict[str, float]) -> object:
    # a choice without resolved parameters (PolicyChoice("fld")) gets the default
    n = ctx.n_layers * ctx.n_experts
    ps = new_policy_state(i_rows=len(I), i_cols=2 * (n + ctx.n_layers),
                          params=param_values(P, {"absolute": 0, **params}))
    ps.i[I.LINKS, :] = _OFF
    init_lists(ps.i[I.LINKS], ctx.n_layers)
    return ps


@njit(cache=True, inline="always")
def _place(ps, links, cs, key: int) -> None:
    """Link `key` into its layer's list after every key with an earlier (last access, key): at the tail, as
    the clock only grows, unless a key of the list shares its clock."""
    s = list_sentinel(links, cs.layer_count.shape[0], key_layer(cs, key))
    last = ps.i[I.LAST, key]
    after = list_prev(links, s)
    while after != s and (ps.i[I.LAST, after] > last or (ps.i[I.LAST, after] == last and after > key)):
        after = list_prev(links, after)
    list_insert_after(links, key, after)


@njit(cache=True, inline="always")
def _first_evictable(links, cs, layer: int, in_layer: int) -> int:
    return list_first_evictable(links, list_sentinel(links, cs.layer_count.shape[0], layer), cs, in_layer)


@hook(EVENT_SIG)
def on_event(ps, cs, tv, ev, key, t):
    links = ps.i[I.LINKS]
    on_list = list_prev(links, key) != _OFF
    if ev in (EV_ACCESS, EV_INSERT):
        ps.i[I.LAST, key] = cs.sc[SC.CLOCK]
        if on_list:
            list_unlink(links, key)
        if on_list or ev == EV_INSERT:
            _place(ps, links, cs, key)
    elif ev == EV_EVICT and on_list:
        list_unlink(links, key)
        links[ix(2 * key)] = _OFF  # its previous: off the lists
    return 0


@hook(VICTIM_SIG)
def victim(ps, cs, tv, incoming, t):
    in_layer = key_layer(cs, incoming)
    links = ps.i[I.LINKS]
    n_layers = cs.layer_count.shape[0]
    cur = cs.sc[SC.LAYER]
    if ps.p[P.ABSOLUTE] == 0.0:  # the distance (l - cur) mod L: one layer at each distance, the farthest first
        for d in range(n_layers - 1, -1, -1):
            key = _first_evictable(links, cs, (cur + d) % n_layers, in_layer)
            if key >= 0:
                return key
        return -1
    for d in range(max(cur, n_layers - 1 - cur), -1, -1):  # |l - cur|: up to two layers at each distance
        a = _first_evictable(links, cs, cur - d, in_layer) if cur - d >= 0 else -1
        b = _first_evictable(links, cs, cur + d, in_layer) if d > 0 and cur + d < n_layers else -1
        if a < 0 or (b >= 0 and (ps.i[I.LAST, b] < ps.i[I.LAST, a]
                                 or (ps.i[I.LAST, b] == ps.i[I.LAST, a] and b < a))):
            a = b
        if a >= 0:
            return a
    return -1


POLICY = register(Policy(
    name="fld", kind="eviction", hooks={"victim": victim, "on_event": on_event}, init=init,
    capabilities=Capabilities(live=True),
    params={"absolute": Param(0, 0, 1, "layer distance: 0 cyclic forward (l - c) mod L, 1 absolute |l - c| "
                                       "(HOBBIT's, as SpecMD defines FLD)", integer=True)},
    doc="Evict the expert whose layer is farthest from the current one (cyclic forward distance by default, "
        "absolute with absolute=1)."))
