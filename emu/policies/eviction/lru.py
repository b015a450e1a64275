"""Least recently used: evict the expert whose last access is oldest.

State: one key list (`kernel.helpers`' key lists) over keys in access order, closed by the sentinel node
S = n_keys, in one int row `i[I.LINKS]` (a node's previous and next side by side, in one cache line); the
sentinel's next is the head (oldest), its previous the tail. A key off the list has previous -1. Access and
insert move a key to the tail in O(1) with no branch on the ends (the sentinel stands in for them); the victim
is the first evictable key from the head.

The walk to it skips the keys in flight (and the few protected or kept by a layer's floor). With several
tokens a pass and prefetching, the oldest keys are often copies still queued (tens of them), and every victim
of a gate would walk past the same ones. So the walk remembers the last node of the run of in-flight keys it
skipped from the head (`I.SKIP`), with `cs.sc[SC.LANDED]` at the time: while no copy has landed since, every
key of that run is still in flight, and keys only leave the run (moved to the tail or evicted), so the next
walk starts after it. Moving or evicting the remembered node itself forgets it.
"""

from __future__ import annotations

from enum import auto

from numba import njit

from ...kernel.helpers import (
    init_lists,
    init_runs,
    ix,
    key_layer,
    list_append,
    list_first_evictable_after_run,
    list_forget_run,
    list_prev,
    list_sentinel,
    list_unlink,
)
from ...kernel.hooks import EV_ACCESS, EV_EVICT, EV_INSERT, EVENT_SIG, VICTIM_SIG, hook
from ...kernel.layout import Fields, new_policy_state
from ..api import Capabilities, Policy, PolicyContext, register

_OFF = -1  # a key's previous node while it is off the list


class I(Fields):
    """Rows of `ps.i`."""

    LINKS = auto()  # the key list: node k (the keys, then the sentinel n_keys) at columns 2k, 2k + 1
    SKIP = auto()  # the walk's remembered run of in-flight keys: its last node (the sentinel: none), SC.LANDED then



def init(ctx: PolicyContext, params: dict[str, float]) -> object:
    n = ctx.n_layers * ctx.n_experts
    ps = new_policy_state(i_rows=len(I), i_cols=2 * (n + 1))
    ps.i[I.LINKS, :] = _OFF
    init_lists(ps.i[I.LINKS], 1)
    init_runs(ps.i[I.SKIP], ps.i[I.LINKS], 1)
    return ps


@hook(EVENT_SIG)
def on_event(ps, cs, tv, ev, key, t):
    links = ps.i[I.LINKS]
    if ev in (EV_ACCESS, EV_INSERT):
        if list_prev(links, key) != _OFF:
            _forget_if_last(ps, links, key)
            list_unlink(links, key)
        list_append(links, key, list_sentinel(links, 1, 0))
    elif ev == EV_EVICT and list_prev(links, key) != _OFF:
        _forget_if_last(ps, links, key)
        list_unlink(links, key)
        links[ix(2 * key)] = _OFF  # its previous: off the list
    return 0


@njit(cache=True, inline="always")
def _forget_if_last(ps, links, key: int) -> None:
    """`key` leaves its place: if it ends the remembered run, the run is forgotten."""
    list_forget_run(ps.i[I.SKIP], 0, key, list_sentinel(links, 1, 0))


@hook(VICTIM_SIG)
def victim(ps, cs, tv, incoming, t):
    links = ps.i[I.LINKS]
    return list_first_evictable_after_run(links, list_sentinel(links, 1, 0), cs, key_layer(cs, incoming),
                                          ps.i[I.SKIP], 0)


POLICY = register(Policy(
    name="lru", kind="eviction", hooks={"victim": victim, "on_event": on_event}, init=init,
    capabilities=Capabilities(live=True),
    doc="Least recently used expert goes first."))
