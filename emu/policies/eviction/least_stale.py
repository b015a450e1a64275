"""Least-Stale (SpecMD): experts touched in the current pass are "current", older ones "stale"; evict
stale first, and within a queue follow the forward order so already-passed layers go first.

Why: MoE access is layer-sequential, not temporally local. An expert of a layer the pass has already
left cannot be needed again in this pass, so evicting it never causes a collision miss (evicted, then
needed again in the same pass), while LRU's oldest key is often one the pass is about to reach.

Victim order, with c the layer now computing:
1. stale keys of layers <= c (already passed), lowest layer first, FIFO within a layer;
2. stale keys of layers > c, farthest ahead first (needed last in this pass);
3. current keys of layers <= c, lowest layer first, FIFO within a layer;
4. current keys of layers > c (prefetched for later layers of this pass), farthest ahead first.
State: per key a doubly linked list node (`i[0]` prev, `i[1]` next) and `i[2]` the pass it was last
touched in (-1: not resident); per (queue, layer) a FIFO bucket, heads in `i[3]`, tails in `i[4]`
(queue 0 stale, 1 current, index queue * L + layer); `i[5, 0..1]` one bitmap per queue of the
non-empty buckets, `i[5, 2]` the current pass. At a pass boundary the current queue is spliced onto the
stale one bucket by bucket, O(L) per pass and nothing per key.
Cost: insert and access O(1) (bucket append; the spec allows O(log N)); evict O(1): the first non-empty
bucket comes from the bitmap (models with more than 62 MoE layers scan the L buckets instead), then the
bucket's head, skipping only protected or in-flight keys.
"""

from __future__ import annotations

import numpy as np
from numba import njit
from numba.cpython.unsafe.numbers import trailing_zeros

from ...engines.core import is_evictable, key_layer
from ...engines.state import SC_LAYER, new_policy_state
from ..api import EV_ACCESS, EV_EVICT, EV_INSERT, EV_PASS, KERNEL_SIG, Policy, PolicyContext
from ..kernel_util import ix

_NONE = -1
_BITMAP_MAX_LAYERS = 62


def init(ctx: PolicyContext, params: dict[str, float]) -> object:
    n = ctx.n_layers * ctx.n_experts
    ps = new_policy_state(i_rows=6, i_cols=max(n, 2 * ctx.n_layers, 3))
    ps.i[:5, :] = _NONE
    ps.i[5, :] = 0
    return ps


@njit(cache=True, _nrt=False)
def _n_layers(cs) -> int:
    return cs.layer_count.shape[0]


@njit(cache=True, _nrt=False)
def _unlink(ps, cs, key: int) -> None:
    i = ps.i
    n_layers = _n_layers(cs)
    k = ix(key)
    q = 1 if i[2, k] == i[5, 2] else 0
    b = ix(q * n_layers + key_layer(cs, key))
    prev = i[0, k]
    nxt = i[1, k]
    if prev != _NONE:
        i[1, ix(prev)] = nxt
    else:
        i[3, b] = nxt
    if nxt != _NONE:
        i[0, ix(nxt)] = prev
    else:
        i[4, b] = prev
    if i[3, b] == _NONE and n_layers <= _BITMAP_MAX_LAYERS:
        i[5, ix(q)] &= ~(np.int64(1) << (b - q * n_layers))
    i[0, k] = _NONE
    i[1, k] = _NONE
    i[2, k] = _NONE


@njit(cache=True, _nrt=False)
def _append_current(ps, cs, key: int) -> None:
    i = ps.i
    n_layers = _n_layers(cs)
    layer = key_layer(cs, key)
    b = ix(n_layers + layer)
    k = ix(key)
    tail = i[4, b]
    i[0, k] = tail
    i[1, k] = _NONE
    if tail != _NONE:
        i[1, ix(tail)] = key
    else:
        i[3, b] = key
    i[4, b] = key
    i[2, k] = i[5, 2]
    if n_layers <= _BITMAP_MAX_LAYERS:
        i[5, 1] |= np.int64(1) << layer


@njit(cache=True, _nrt=False)
def _new_pass(ps, cs, p: int) -> None:
    """Every current bucket goes to the end of the stale bucket of its layer."""
    i = ps.i
    n_layers = _n_layers(cs)
    for layer in range(n_layers):
        cb = n_layers + layer
        head = i[3, cb]
        if head == _NONE:
            continue
        stail = i[4, layer]
        if stail == _NONE:
            i[3, layer] = head
        else:
            i[1, stail] = head
            i[0, head] = stail
        i[4, layer] = i[4, cb]
        i[3, cb] = _NONE
        i[4, cb] = _NONE
    if n_layers <= _BITMAP_MAX_LAYERS:
        i[5, 0] |= i[5, 1]
        i[5, 1] = 0
    i[5, 2] = p


@njit(KERNEL_SIG, cache=True, _nrt=False)
def event(ps, cs, tv, ev, key, t):
    if ev == EV_PASS:
        _new_pass(ps, cs, key)
    elif ev in (EV_ACCESS, EV_INSERT):
        if ps.i[2, ix(key)] != _NONE:
            _unlink(ps, cs, key)
        _append_current(ps, cs, key)
    elif ev == EV_EVICT and ps.i[2, ix(key)] != _NONE:
        _unlink(ps, cs, key)
    return 0


@njit(cache=True, _nrt=False)
def _low_bit(x: np.int64) -> int:
    return int(trailing_zeros(x))


@njit(cache=True, _nrt=False)
def _high_bit(x: np.int64) -> int:
    h = int(np.log2(float(x)))
    while h > 0 and (np.int64(1) << h) > x:
        h -= 1
    while (np.int64(1) << (h + 1)) <= x and h < 62:
        h += 1
    return h


@njit(cache=True, _nrt=False)
def _first_in_bucket(ps, cs, b: int, in_layer: int) -> int:
    key = ps.i[3, ix(b)]
    while key != _NONE:
        if is_evictable(cs, key, in_layer):
            return key
        key = ps.i[1, ix(key)]
    return -1


@njit(cache=True, _nrt=False)
def _scan(ps, cs, q: int, lo: int, hi: int, ascending: bool, in_layer: int) -> int:
    """First evictable key in queue q over layers [lo, hi), in the given layer order."""
    n_layers = _n_layers(cs)
    if lo >= hi:
        return -1
    if n_layers <= _BITMAP_MAX_LAYERS:
        mask = ps.i[5, q] & (((np.int64(1) << hi) - 1) ^ ((np.int64(1) << lo) - 1))
        while mask != 0:
            layer = _low_bit(mask) if ascending else _high_bit(mask)
            key = _first_in_bucket(ps, cs, q * n_layers + layer, in_layer)
            if key >= 0:
                return key
            mask &= ~(np.int64(1) << layer)
        return -1
    for j in range(hi - lo):
        layer = lo + j if ascending else hi - 1 - j
        key = _first_in_bucket(ps, cs, q * n_layers + layer, in_layer)
        if key >= 0:
            return key
    return -1


@njit(KERNEL_SIG, cache=True, _nrt=False)
def victim(ps, cs, tv, in_layer, _b, t):
    n_layers = _n_layers(cs)
    c = cs.sc[SC_LAYER]
    key = _scan(ps, cs, 0, 0, c + 1, True, in_layer)
    if key < 0:
        key = _scan(ps, cs, 0, c + 1, n_layers, False, in_layer)
    if key < 0:
        key = _scan(ps, cs, 1, 0, c + 1, True, in_layer)
    if key < 0:
        key = _scan(ps, cs, 1, c + 1, n_layers, False, in_layer)
    return key


POLICY = Policy(name="least-stale", kind="eviction", kernels=(victim, event), init=init,
                doc="SpecMD Least-Stale: stale (not touched this pass) before current, passed layers first.")
