"""Least frequently used: evict the resident expert with the fewest accesses so far.

State: `i[I.COUNT, key]` the access count (kept across evictions: the count is the expert's popularity over the
whole run, "perfect LFU") and `i[I.LAST, key]` the logical clock of the key's last access, which breaks ties (least
recent goes first, then the lower key). Demand inserts count as an access; prefetch inserts do not (the expert was
not asked for). The resident keys are a binary min-heap on (count, last, key) (`I.HEAP`, `I.POS`), less those kept
aside: a victim pops the refused keys it meets on top (a copy in flight, an entry computing) and keeps them aside
until a victim could take them (`helpers.keep_aside`: until the copy lands or the entry is released), then pushes
them back with their counts as they are by then.
Cost: O(log resident) per access or insert; per victim O((1 + keys set aside) log resident), each refused key
set aside once while it stays refused.
"""

from __future__ import annotations

from enum import auto

import numpy as np
from numba import njit

from ...kernel.helpers import (
    is_evictable,
    is_kept,
    is_unpinned,
    ix,
    keep_aside,
    kept_cols,
    kept_to_put_back,
    key_layer,
    take_back,
)
from ...kernel.hooks import EV_ACCESS, EV_EVICT, EV_INSERT, EVENT_SIG, VICTIM_SIG, hook
from ...kernel.layout import DEMAND, SC, Fields, new_policy_state
from ..api import Capabilities, Policy, PolicyContext, register


class I(Fields):
    """Rows of `ps.i` (lhu keeps the same rows: it shares `victim` and `touch`)."""

    HEAP = auto()  # the heap's keys, HEAP[0] the least (count, last, key); its size in POS's last column
    POS = auto()  # per key its index in HEAP, or -1 (not resident, or kept aside)
    COUNT = auto()  # per key: accesses so far
    LAST = auto()  # per key: clock of the last access (ties: least recent)
    STASH = auto()  # a victim's scratch: the keys it set aside, or put back
    KEPT = auto()  # the keys kept aside between victims (helpers.keep_aside)


def init(ctx: PolicyContext, params: dict[str, float]) -> object:
    n = ctx.n_layers * ctx.n_experts
    ps = new_policy_state(i_rows=len(I), i_cols=max(n + 1, kept_cols(n)))
    ps.i[I.POS, :] = -1
    ps.i[I.POS, -1] = 0
    return ps


@njit(cache=True, inline="always")
def _before(i: np.ndarray, a: int, b: int) -> bool:
    """Does key `a` go before key `b`: fewer accesses, then least recent, then the lower key?"""
    ca = i[I.COUNT, ix(a)]
    cb = i[I.COUNT, ix(b)]
    if ca != cb:
        return ca < cb
    la = i[I.LAST, ix(a)]
    lb = i[I.LAST, ix(b)]
    if la != lb:
        return la < lb
    return a < b


@njit(cache=True, _nrt=False)
def _sift_up(i: np.ndarray, j: int) -> None:
    heap = i[I.HEAP]
    pos = i[I.POS]
    key = heap[ix(j)]
    while j > 0:
        parent = (j - 1) >> 1
        above = heap[ix(parent)]
        if not _before(i, key, above):
            break
        heap[ix(j)] = above
        pos[ix(above)] = j
        j = parent
    heap[ix(j)] = key
    pos[ix(key)] = j


@njit(cache=True, _nrt=False)
def _sift_down(i: np.ndarray, j: int) -> None:
    heap = i[I.HEAP]
    pos = i[I.POS]
    n = pos[pos.shape[0] - 1]
    key = heap[ix(j)]
    while True:
        child = 2 * j + 1
        if child >= n:
            break
        if child + 1 < n and _before(i, heap[ix(child + 1)], heap[ix(child)]):
            child += 1
        below = heap[ix(child)]
        if not _before(i, below, key):
            break
        heap[ix(j)] = below
        pos[ix(below)] = j
        j = child
    heap[ix(j)] = key
    pos[ix(key)] = j


@njit(cache=True, _nrt=False)
def _push(i: np.ndarray, key: int) -> None:
    pos = i[I.POS]
    n = pos[pos.shape[0] - 1]
    i[I.HEAP, ix(n)] = key
    pos[ix(key)] = n
    pos[pos.shape[0] - 1] = n + 1
    _sift_up(i, n)


@njit(cache=True, _nrt=False)
def _remove(i: np.ndarray, key: int) -> None:
    heap = i[I.HEAP]
    pos = i[I.POS]
    j = pos[ix(key)]
    n = pos[pos.shape[0] - 1] - 1
    pos[pos.shape[0] - 1] = n
    pos[ix(key)] = -1
    if j == n:
        return
    last = heap[ix(n)]
    heap[ix(j)] = last
    pos[ix(last)] = j
    if j > 0 and _before(i, last, heap[ix((j - 1) >> 1)]):
        _sift_up(i, j)
    else:
        _sift_down(i, j)


@njit(cache=True, _nrt=False)
def touch(ps, cs, ev: int, key: int, counted: bool) -> None:
    """An access or an insert (`counted`: it adds to the key's count; the clock is its last access); an eviction.
    A key's rank only rises, so a key in the heap sinks; one kept aside waits to be pushed with its new rank."""
    i = ps.i
    if ev == EV_EVICT:
        if is_kept(i[I.KEPT], key):
            take_back(i[I.KEPT], key)
        elif i[I.POS, ix(key)] >= 0:
            _remove(i, key)
        return
    if counted:
        i[I.COUNT, ix(key)] += 1
    i[I.LAST, ix(key)] = cs.sc[SC.CLOCK]
    j = i[I.POS, ix(key)]
    if j >= 0:
        _sift_down(i, j)
    elif ev == EV_INSERT and not is_kept(i[I.KEPT], key):
        _push(i, key)


@hook(EVENT_SIG)
def on_event(ps, cs, tv, ev, key, t):
    if ev == EV_ACCESS:
        touch(ps, cs, ev, key, True)
    elif ev == EV_INSERT:
        touch(ps, cs, ev, key, cs.copy_prio[ix(key)] == DEMAND)
    elif ev == EV_EVICT:
        touch(ps, cs, ev, key, False)
    return 0


@hook(VICTIM_SIG)
def victim(ps, cs, tv, incoming, t):
    in_layer = key_layer(cs, incoming)
    i = ps.i
    kept = i[I.KEPT]
    stash = i[I.STASH]
    for j in range(kept_to_put_back(cs, kept, stash)):
        _push(i, stash[j])
    heap = i[I.HEAP]
    size = i.shape[1] - 1  # POS's column holding the heap's size
    n_stash = 0
    found = -1
    while i[I.POS, size] > 0:
        key = heap[0]
        if is_evictable(cs, key, in_layer):
            found = key
            break
        _remove(i, key)
        stash[ix(n_stash)] = key
        n_stash += 1
    for j in range(n_stash):  # keep what no incoming key could take, put back the rest
        key = stash[j]
        if is_unpinned(cs, key):  # refused by a layer's cap or floor: for this incoming key only
            _push(i, key)
        else:
            keep_aside(cs, kept, key)
    return found


POLICY = register(Policy(
    name="lfu", kind="eviction", hooks={"victim": victim, "on_event": on_event}, init=init,
    capabilities=Capabilities(live=True),
    doc="Least frequently used expert goes first (ties: least recent)."))
