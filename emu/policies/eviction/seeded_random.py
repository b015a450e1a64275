"""Random eviction: a uniformly drawn evictable resident expert, from a seeded generator (a baseline).

State: the resident set (rows `I.MEMBERS`, `I.POS`) and `i[I.SCALARS, C.RNG]` the splitmix64 state (seeded
from the scenario seed, so runs repeat exactly).
Cost: O(1) per event, O(resident) per victim (count the evictable keys, draw one).
"""

from __future__ import annotations

from enum import auto

from ...kernel.helpers import (
    is_evictable,
    key_layer,
    rand_below,
    resident_set_state,
    seed_state,
    set_add,
    set_remove,
    set_size,
)
from ...kernel.hooks import EV_EVICT, EV_INSERT, EVENT_SIG, VICTIM_SIG, hook
from ...kernel.layout import Fields
from ..api import Capabilities, Policy, PolicyContext, register


class I(Fields):
    """Rows of `ps.i`."""

    MEMBERS = auto()  # the resident set's keys (helpers.resident_set_state: rows MEMBERS, POS first)
    POS = auto()  # each key's index in MEMBERS
    SCALARS = auto()  # the scalars, at the columns C


class C(Fields):
    """Columns of row I.SCALARS."""

    RNG = auto()  # splitmix64 state


def init(ctx: PolicyContext, params: dict[str, float]) -> object:
    ps = resident_set_state(ctx.n_layers * ctx.n_experts, i_rows=len(I))
    ps.i[I.SCALARS, C.RNG] = seed_state(ctx.seed, 1)
    return ps


@hook(EVENT_SIG)
def on_event(ps, cs, tv, ev, key, t):
    if ev == EV_INSERT:
        set_add(ps.i[I.MEMBERS], ps.i[I.POS], key)
    elif ev == EV_EVICT:
        set_remove(ps.i[I.MEMBERS], ps.i[I.POS], key)
    return 0


@hook(VICTIM_SIG)
def victim(ps, cs, tv, incoming, t):
    in_layer = key_layer(cs, incoming)
    i = ps.i
    n = set_size(i[I.POS])
    count = 0
    for j in range(n):
        if is_evictable(cs, i[I.MEMBERS, j], in_layer):
            count += 1
    if count == 0:
        return -1
    r = rand_below(i[I.SCALARS], C.RNG, count)
    for j in range(n):
        key = i[I.MEMBERS, j]
        if is_evictable(cs, key, in_layer):
            if r == 0:
                return key
            r -= 1
    return -1


POLICY = register(Policy(
    name="random", kind="eviction", hooks={"victim": victim, "on_event": on_event}, init=init,
    capabilities=Capabilities(live=True),
    doc="Evict a uniformly drawn evictable expert (seeded)."))
