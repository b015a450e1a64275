"""Least frequently used: evict the resident expert with the fewest accesses so far.

State: `f[F.COUNT, key]` the access count (kept across evictions: the count is the expert's popularity over the
whole run, "perfect LFU") and `i[I.LAST, key]` the logical clock of the key's last
access, which breaks ties (least recent goes first, then the lower key). Demand inserts count as an access;
prefetch inserts do not (the expert was not asked for). The resident keys are a binary min-heap on (count, last,
key) (`helpers.heap_*`), less the keys no victim could take yet, kept aside until one could (`helpers.keep_aside`):
a key inserted while its copy is in flight, and the refused keys a victim met on top (a copy in flight, an entry
computing). They go back with their counts by then.
Cost: O(log resident) per access or insert; per victim O((1 + refused keys newly met) log resident).
"""

from __future__ import annotations

from enum import auto

from numba import njit

from ...kernel.helpers import HEAP_ROWS, heap_evict, heap_touch, heap_victim, init_heap, ix, kept_cols, key_layer
from ...kernel.hooks import EV_ACCESS, EV_EVICT, EV_INSERT, EVENT_SIG, VICTIM_SIG, hook
from ...kernel.layout import DEMAND, SC, Fields, new_policy_state
from ..api import Capabilities, Policy, PolicyContext, register


class I(Fields):
    """Rows of `ps.i` (lhu keeps the same rows: it shares `init`, `victim` and `touch`)."""

    HEAP = auto()  # the heap (helpers.HEAP_ROWS rows from here: keys, index per key, last access per key)
    POS = auto()
    LAST = auto()  # per key: clock of the last access (ties: least recent)
    STASH = auto()  # a victim's scratch
    KEPT = auto()  # the keys kept aside between victims (helpers.keep_aside)


class F(Fields):
    """Rows of `ps.f`."""

    COUNT = auto()  # per key: accesses so far (whole numbers, exact in a float)


assert I.LAST == I.HEAP + HEAP_ROWS - 1  # the heap's rows, in the order helpers.heap_* read them


def init(ctx: PolicyContext, params: dict[str, float]) -> object:
    n = ctx.n_layers * ctx.n_experts
    ps = new_policy_state(f_rows=len(F), f_cols=n, i_rows=len(I), i_cols=max(n + 1, kept_cols(n)))
    init_heap(ps.i, I.HEAP)
    return ps


@njit(cache=True, _nrt=False)
def touch(ps, cs, ev: int, key: int, counted: bool) -> None:
    """An access or insert (`counted`: it adds to the key's count; the clock becomes its last access), or an
    eviction."""
    i = ps.i
    if ev == EV_EVICT:
        heap_evict(i, I.HEAP, ps.f[F.COUNT], i[I.KEPT], key)
        return
    if counted:
        ps.f[F.COUNT, ix(key)] += 1.0
    i[I.LAST, ix(key)] = cs.sc[SC.CLOCK]
    heap_touch(cs, i, I.HEAP, ps.f[F.COUNT], i[I.KEPT], key, ev == EV_INSERT)


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
    i = ps.i
    return heap_victim(cs, i, I.HEAP, ps.f[F.COUNT], i[I.KEPT], i[I.STASH], key_layer(cs, incoming))


POLICY = register(Policy(
    name="lfu", kind="eviction", hooks={"victim": victim, "on_event": on_event}, init=init,
    capabilities=Capabilities(live=True),
    doc="Least frequently used expert goes first (ties: least recent)."))
