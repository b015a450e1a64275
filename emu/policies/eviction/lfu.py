"""Least frequently used: evict the resident expert with the fewest accesses so far.

State: the resident set (rows `I.MEMBERS`, `I.POS`, see `kernel.helpers`), `i[I.COUNT, key]` the access
count (kept across evictions: the count is the expert's popularity over the whole run, "perfect LFU") and
`i[I.LAST, key]` the logical clock of the key's last access, which breaks ties (least recent goes first).
Demand inserts count as an access; prefetch inserts do not (the expert was not asked for).
Cost: O(1) per event, O(resident) per victim: a scan that ranks each key first and reads the evictability only
of a key that would beat the best so far.
"""

from __future__ import annotations

from enum import auto

from ...kernel.helpers import is_evictable, ix, key_layer, resident_set_state, set_add, set_remove, set_size
from ...kernel.hooks import EV_ACCESS, EV_EVICT, EV_INSERT, EVENT_SIG, VICTIM_SIG, hook
from ...kernel.layout import DEMAND, SC, Fields
from ..api import Capabilities, Policy, PolicyContext, register


class I(Fields):
    """Rows of `ps.i` (lhu keeps the same rows: it shares `victim`)."""

    MEMBERS = auto()  # the resident set's keys (helpers.resident_set_state: rows MEMBERS, POS first)
    POS = auto()  # each key's index in MEMBERS
    COUNT = auto()  # per key: accesses so far
    LAST = auto()  # per key: clock of the last access (ties: least recent)


def init(ctx: PolicyContext, params: dict[str, float]) -> object:
    return resident_set_state(ctx.n_layers * ctx.n_experts, i_rows=len(I))


@hook(EVENT_SIG)
def on_event(ps, cs, tv, ev, key, t):
    i = ps.i
    if ev == EV_ACCESS:
        i[I.COUNT, key] += 1
        i[I.LAST, key] = cs.sc[SC.CLOCK]
    elif ev == EV_INSERT:
        set_add(i[I.MEMBERS], i[I.POS], key)
        if cs.copy_prio[key] == DEMAND:
            i[I.COUNT, key] += 1
        i[I.LAST, key] = cs.sc[SC.CLOCK]
    elif ev == EV_EVICT:
        set_remove(i[I.MEMBERS], i[I.POS], key)
    return 0


@hook(VICTIM_SIG)
def victim(ps, cs, tv, incoming, t):
    in_layer = key_layer(cs, incoming)
    i = ps.i
    best = -1
    best_count = 0
    for j in range(set_size(i[I.POS])):
        key = i[I.MEMBERS, j]
        count = i[I.COUNT, ix(key)]
        # the rank first: most keys lose on their count alone, before their evictability is read
        if best >= 0 and (count > best_count or (count == best_count and (
                i[I.LAST, ix(key)] > i[I.LAST, ix(best)]
                or (i[I.LAST, ix(key)] == i[I.LAST, ix(best)] and key > best)))):
            continue
        if is_evictable(cs, key, in_layer):
            best = key
            best_count = count
    return best


POLICY = register(Policy(
    name="lfu", kind="eviction", hooks={"victim": victim, "on_event": on_event}, init=init,
    capabilities=Capabilities(live=True),
    doc="Least frequently used expert goes first (ties: least recent)."))
