"""The copy queue pops in (priority, issue seq) order, as the binary heap it replaced did, also when the
rings wrap around and stale entries of promoted prefetches sit in them."""

from __future__ import annotations

import numpy as np
from numba import njit

from emu.engines import copy_queue
from emu.kernel.layout import DEMAND, PREFETCH, SC, new_cache_state, queue_ring


@njit(cache=False)
def _drive(cs, ops: np.ndarray, out: np.ndarray) -> int:
    """ops rows: (1, prio, key) push with the next seq, (0, 0, 0) pop; pops are written to out."""
    seq = 0
    n = 0
    for r in range(ops.shape[0]):
        if ops[r, 0] == 1:
            copy_queue.push(cs, ops[r, 1], seq, ops[r, 2])
            seq += 1
        elif cs.sc[SC.DQ_N] + cs.sc[SC.PQ_N] > 0:
            out[n] = copy_queue.pop(cs)
            n += 1
    return n


def test_fifo_per_priority_matches_a_heap_order_with_wraparound() -> None:
    cs = new_cache_state(1, 4, 2, 1, 100, np.array([1], np.int64), 1)
    ring = queue_ring(4)
    rng = np.random.default_rng(3)
    ops = []
    queued = {DEMAND: 0, PREFETCH: 0}
    for _ in range(40 * ring):  # many times the ring size: both rings wrap
        prio = DEMAND if rng.random() < 0.3 else PREFETCH
        if rng.random() < 0.55 and queued[prio] < ring:
            ops.append((1, prio, int(rng.integers(4))))
            queued[prio] += 1
        else:
            ops.append((0, 0, 0))
            if queued[DEMAND] + queued[PREFETCH] > 0:
                queued[DEMAND if queued[DEMAND] > 0 else PREFETCH] -= 1
    ops_a = np.array(ops, np.int64)
    out = np.zeros(len(ops), np.int64)
    n = _drive(cs, ops_a, out)
    # reference: a priority queue on (prio, seq), simulated in Python
    live: list[tuple[int, int, int]] = []
    want = []
    seq = 0
    for op, prio, key in ops:
        if op == 1:
            live.append((prio, seq, key))
            seq += 1
        elif live:
            best = min(live)
            live.remove(best)
            want.append((best[1] << 20) | best[2])
    assert n == len(want) > 10 * ring
    assert out[:n].tolist() == want
