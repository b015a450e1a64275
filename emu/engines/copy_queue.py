"""The copy queue: one FIFO per priority of (issue seq, key) packed in one int64, in `cs.heap`.

Copies start in (priority, issue seq) order. Seqs are handed out in increasing order, so within one
priority the push order is the seq order: a FIFO per priority (demand before prefetch) pops exactly what
a heap on (priority, seq) would, at O(1). `cs.heap` holds two rings of R slots (R a power of two,
`layout.queue_ring`): demand in [0, R), prefetch in [R, 2R). The decision layer pushes (a copy takes a
slot); an engine pops (a copy engine is free). An entry whose key was promoted or has landed since is
stale: `is_current` says so.
"""

from __future__ import annotations

from numba import njit

from ..kernel.helpers import ix
from ..kernel.layout import COPY_QUEUED, DEMAND, ORDER_SUBMISSION, SC

KEY_BITS = 20
SEQ_BITS = 38


@njit(cache=True, inline="always")
def push(cs, prio: int, seq: int, key: int) -> None:
    h = cs.heap
    r = h.shape[0] >> 1
    item = (seq << KEY_BITS) | key
    if prio == DEMAND:
        n = cs.sc[SC.DQ_N]
        h[ix((cs.sc[SC.DQ_HEAD] + n) & (r - 1))] = item
        cs.sc[SC.DQ_N] = n + 1
    else:
        n = cs.sc[SC.PQ_N]
        h[ix(r + ((cs.sc[SC.PQ_HEAD] + n) & (r - 1)))] = item
        cs.sc[SC.PQ_N] = n + 1


@njit(cache=True, inline="always")
def pop(cs) -> int:
    """The first entry of the demand FIFO, else of the prefetch FIFO (in `ORDER_SUBMISSION`: of the two heads, the
    one issued first); the caller checks one is there."""
    h = cs.heap
    r = h.shape[0] >> 1
    n = cs.sc[SC.DQ_N]
    if (n > 0 and cs.sc[SC.COPY_ORDER] == ORDER_SUBMISSION and cs.sc[SC.PQ_N] > 0
            and entry_seq(h[ix(r + cs.sc[SC.PQ_HEAD])]) < entry_seq(h[ix(cs.sc[SC.DQ_HEAD])])):
        n = 0  # the prefetch was submitted first
    if n > 0:
        head = cs.sc[SC.DQ_HEAD]
        cs.sc[SC.DQ_HEAD] = (head + 1) & (r - 1)
        cs.sc[SC.DQ_N] = n - 1
        return h[ix(head)]
    head = cs.sc[SC.PQ_HEAD]
    cs.sc[SC.PQ_HEAD] = (head + 1) & (r - 1)
    cs.sc[SC.PQ_N] -= 1
    return h[ix(r + head)]


@njit(cache=True, inline="always")
def entry_key(item: int) -> int:
    return item & ((1 << KEY_BITS) - 1)


@njit(cache=True, inline="always")
def entry_seq(item: int) -> int:
    return (item >> KEY_BITS) & ((1 << SEQ_BITS) - 1)


@njit(cache=True, inline="always")
def is_current(cs, key: int, seq: int) -> bool:
    """Is this entry still the key's queued copy (not a prefetch promoted to demand since, not started)?"""
    return cs.copy_state[ix(key)] == COPY_QUEUED and cs.copy_seq[ix(key)] == seq
