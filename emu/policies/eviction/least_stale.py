"""Least-Stale (SpecMD): experts touched in the current pass are "current", older ones "stale"; evict
stale first, and within a queue follow the forward order so already-passed layers go first.

Why: MoE access is layer-sequential, not temporally local. An expert of a layer the pass has already
left cannot be needed again in this pass, so evicting it never causes a collision miss (evicted, then
needed again in the same pass), while LRU's oldest key is often one the pass is about to reach.

Victim order, with c the layer now computing, by the parameter `order`:
- 0 "passed first" (the default, this tool's earlier reading):
  1. stale keys of layers <= c (already passed), lowest layer first, FIFO within a layer;
  2. stale keys of layers > c, farthest ahead first (needed last in this pass);
  3. current keys of layers <= c, lowest layer first, FIFO within a layer;
  4. current keys of layers > c (prefetched for later layers of this pass), farthest ahead first.
- 1 "layer position" (SpecMD section 4.2 as written):
  1. stale keys, lowest layer first, FIFO within a layer;
  2. current keys, lowest layer first, FIFO within a layer.
How order 1 reads the paper. It says: "The cache is partitioned into a stale queue containing experts from
previous forward passes and a current queue containing experts from the ongoing pass" (current also "selected
by prefetching"); "Eviction prioritizes stale experts ... Experts in the current queue are evicted only to
prevent out-of-memory errors"; "Within each queue, experts follow FIFO ordering based on layer position",
and both queues are "priority heaps" (O(log N) insertion, O(1) eviction). A heap keyed by arrival time would
be a plain FIFO, so the key is read as the expert's layer position: the first layer of the forward order
comes out first ("first in" = earliest in the pass), over all layers, with no split at the current layer (the
text names none). The text gives no rule within a layer: arrival order there (FIFO) is this tool's choice.
Unlike order 0, order 1 evicts a stale key of the next layer before one of a farther layer, and a current key
of a passed layer before one prefetched for a later layer; the section's "left" experts (earlier than the
execution point) are evicted first only because they have the lowest layers.
State: per key a doubly linked list node (`i[I.PREV, key]`, `i[I.NEXT, key]`) and `i[I.TOUCHED, key]` the
pass it was last touched in (-1: not resident); per (queue, layer) a FIFO bucket, index queue * L + layer
with queue `C.STALE` or `C.CURRENT`, its head in `i[I.HEAD]` and tail in `i[I.TAIL]`; in row `I.SCALARS`,
at column q, the bitmap of queue q's non-empty buckets, and at `C.PASS` the current pass. At a pass
boundary the current queue is spliced onto the stale one bucket by bucket, O(L) per pass and nothing per
key.
Cost: insert and access O(1) (bucket append; the spec allows O(log N)); evict O(1): the first non-empty
bucket comes from the bitmap (models with more than 62 MoE layers scan the L buckets instead), then the
bucket's head, skipping only protected or in-flight keys.
"""

from __future__ import annotations

from enum import auto

import numpy as np
from numba import njit
from numba.cpython.unsafe.numbers import leading_zeros, trailing_zeros

from ...kernel.helpers import is_evictable, ix, key_layer
from ...kernel.hooks import EV_ACCESS, EV_EVICT, EV_INSERT, EV_PASS, EVENT_SIG, VICTIM_SIG, hook
from ...kernel.layout import SC, Fields, new_policy_state
from ..api import Capabilities, Param, Policy, PolicyContext, param_values, register

_NONE = -1
_BITMAP_MAX_LAYERS = 62


class I(Fields):
    """Rows of `ps.i`."""

    PREV = auto()  # per key: previous key in its bucket (-1: none)
    NEXT = auto()  # per key: next key in its bucket (-1: none)
    TOUCHED = auto()  # per key: the pass it was last touched in (-1: not resident)
    HEAD = auto()  # per bucket (queue * L + layer): first key (-1: empty)
    TAIL = auto()  # per bucket: last key
    SCALARS = auto()  # the scalars, at the columns C


class C(Fields):
    """Columns of row I.SCALARS. The queues are numbered by their bitmap's column: STALE 0, CURRENT 1."""

    STALE = auto()  # bitmap of the stale queue's non-empty buckets (bit = layer)
    CURRENT = auto()  # bitmap of the current queue's non-empty buckets
    PASS = auto()  # the current pass


class P(Fields):
    """`ps.p`: the resolved parameters (param_values)."""

    ORDER = auto()  # 0: passed layers first (today's); 1: by layer position in each queue (SpecMD 4.2)


ORDER_PASSED_FIRST = 0
ORDER_LAYER = 1


def init(ctx: PolicyContext, params: dict[str, float]) -> object:
    n = ctx.n_layers * ctx.n_experts
    ps = new_policy_state(i_rows=len(I), i_cols=max(n, 2 * ctx.n_layers, len(C)),  # 2 queues of L buckets
                          params=param_values(P, {"order": ORDER_PASSED_FIRST, **params}))
    ps.i[:I.SCALARS, :] = _NONE  # every row before the scalars
    ps.i[I.SCALARS, :] = 0
    return ps


@njit(cache=True, _nrt=False)
def _n_layers(cs) -> int:
    return cs.layer_count.shape[0]


@njit(cache=True, _nrt=False)
def _unlink(ps, cs, key: int) -> None:
    i = ps.i
    n_layers = _n_layers(cs)
    k = ix(key)
    q = C.CURRENT if i[I.TOUCHED, k] == i[I.SCALARS, C.PASS] else C.STALE
    b = ix(q * n_layers + key_layer(cs, key))
    prev = i[I.PREV, k]
    nxt = i[I.NEXT, k]
    if prev != _NONE:
        i[I.NEXT, ix(prev)] = nxt
    else:
        i[I.HEAD, b] = nxt
    if nxt != _NONE:
        i[I.PREV, ix(nxt)] = prev
    else:
        i[I.TAIL, b] = prev
    if i[I.HEAD, b] == _NONE and n_layers <= _BITMAP_MAX_LAYERS:
        i[I.SCALARS, ix(q)] &= ~(np.int64(1) << (b - q * n_layers))
    i[I.PREV, k] = _NONE
    i[I.NEXT, k] = _NONE
    i[I.TOUCHED, k] = _NONE


@njit(cache=True, _nrt=False)
def _append_current(ps, cs, key: int) -> None:
    i = ps.i
    n_layers = _n_layers(cs)
    layer = key_layer(cs, key)
    b = ix(C.CURRENT * n_layers + layer)
    k = ix(key)
    tail = i[I.TAIL, b]
    i[I.PREV, k] = tail
    i[I.NEXT, k] = _NONE
    if tail != _NONE:
        i[I.NEXT, ix(tail)] = key
    else:
        i[I.HEAD, b] = key
    i[I.TAIL, b] = key
    i[I.TOUCHED, k] = i[I.SCALARS, C.PASS]
    if n_layers <= _BITMAP_MAX_LAYERS:
        i[I.SCALARS, C.CURRENT] |= np.int64(1) << layer


@njit(cache=True, _nrt=False)
def _new_pass(ps, cs, p: int) -> None:
    """Every current bucket goes to the end of the stale bucket of its layer."""
    i = ps.i
    n_layers = _n_layers(cs)
    for layer in range(n_layers):
        sb = C.STALE * n_layers + layer
        cb = C.CURRENT * n_layers + layer
        head = i[I.HEAD, cb]
        if head == _NONE:
            continue
        stail = i[I.TAIL, sb]
        if stail == _NONE:
            i[I.HEAD, sb] = head
        else:
            i[I.NEXT, stail] = head
            i[I.PREV, head] = stail
        i[I.TAIL, sb] = i[I.TAIL, cb]
        i[I.HEAD, cb] = _NONE
        i[I.TAIL, cb] = _NONE
    if n_layers <= _BITMAP_MAX_LAYERS:
        i[I.SCALARS, C.STALE] |= i[I.SCALARS, C.CURRENT]
        i[I.SCALARS, C.CURRENT] = 0
    i[I.SCALARS, C.PASS] = p


@hook(EVENT_SIG)
def on_event(ps, cs, tv, ev, key, t):
    if ev == EV_PASS:
        _new_pass(ps, cs, key)
    elif ev in (EV_ACCESS, EV_INSERT):
        if ps.i[I.TOUCHED, ix(key)] != _NONE:
            _unlink(ps, cs, key)
        _append_current(ps, cs, key)
    elif ev == EV_EVICT and ps.i[I.TOUCHED, ix(key)] != _NONE:
        _unlink(ps, cs, key)
    return 0


@njit(cache=True, _nrt=False)
def _low_bit(x: np.int64) -> int:
    return int(trailing_zeros(x))


@njit(cache=True, _nrt=False)
def _high_bit(x: np.int64) -> int:
    """The index of x's highest set bit (x > 0)."""
    return 63 - int(leading_zeros(x))


@njit(cache=True, _nrt=False)
def _first_in_bucket(ps, cs, b: int, in_layer: int) -> int:
    key = ps.i[I.HEAD, ix(b)]
    while key != _NONE:
        if is_evictable(cs, key, in_layer):
            return key
        key = ps.i[I.NEXT, ix(key)]
    return -1


@njit(cache=True, _nrt=False)
def _scan(ps, cs, q: int, lo: int, hi: int, ascending: bool, in_layer: int) -> int:
    """First evictable key in queue q (C.STALE or C.CURRENT) over layers [lo, hi), in the given layer order."""
    n_layers = _n_layers(cs)
    if lo >= hi:
        return -1
    if n_layers <= _BITMAP_MAX_LAYERS:
        mask = ps.i[I.SCALARS, q] & (((np.int64(1) << hi) - 1) ^ ((np.int64(1) << lo) - 1))
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


@hook(VICTIM_SIG)
def victim(ps, cs, tv, incoming, t):
    in_layer = key_layer(cs, incoming)
    n_layers = _n_layers(cs)
    if ps.p[P.ORDER] == ORDER_LAYER:
        key = _scan(ps, cs, C.STALE, 0, n_layers, True, in_layer)
        if key < 0:
            key = _scan(ps, cs, C.CURRENT, 0, n_layers, True, in_layer)
        return key
    c = cs.sc[SC.LAYER]
    key = _scan(ps, cs, C.STALE, 0, c + 1, True, in_layer)
    if key < 0:
        key = _scan(ps, cs, C.STALE, c + 1, n_layers, False, in_layer)
    if key < 0:
        key = _scan(ps, cs, C.CURRENT, 0, c + 1, True, in_layer)
    if key < 0:
        key = _scan(ps, cs, C.CURRENT, c + 1, n_layers, False, in_layer)
    return key


POLICY = register(Policy(
    name="least-stale", kind="eviction", hooks={"victim": victim, "on_event": on_event}, init=init,
    capabilities=Capabilities(live=True),
    params={"order": Param(ORDER_PASSED_FIRST, 0, 1, "victim order within each queue: 0 passed layers first (lowest "
                           "first), then layers ahead farthest first; 1 layer position, lowest layer first "
                           "(SpecMD 4.2 as written)", integer=True)},
    doc="SpecMD Least-Stale: stale (not touched this pass) before current; order=0 passed layers first, "
        "order=1 by layer position."))
