"""Belady's MIN: evict the expert whose next use lies farthest in the future (the offline optimum).

It reads the whole trace at init, so it is the bound every online policy is measured against, not a
policy a real system could run. Time is the position `pass * L + layer` of the forward pass; a key
(l, e) is used at position `p * L + l` for every pass p whose tokens route to e at layer l. The core
always knows where the forward pass is (`sc[SC.PASS]`, `sc[SC.LAYER]`), which is the cursor.

With uniform expert sizes, demand fetches and a cache that holds the distinct experts of any one
(pass, layer), this is optimal under the engine's rules: the keys of the layer now computing are
protected (never candidates), every other resident key's next use is strictly after the current
position, and evicting the farthest one is the classic exchange argument applied to a request sequence
of sets. When one layer needs more experts than the cache holds, its own experts evict each other while
it computes, in the engine's compute order (resident first, lowest id first), which pass-level next use
cannot see; there an online policy can beat it by luck (tests/test_policies_belady_property.py has a
case). Under a routing policy that changes the trace's choices (cache-aware), with prefetch or with
mixed precisions it is the trace-informed heuristic, no longer a proven bound.

State: one int row `i[I.ARENA]` used as a flat arena: a header (the columns `C`) holding where each region
starts, then the regions: `uses` = every key's use positions in increasing order (CSR, from
`offsets[key]`), `cursor[key]` (index of the first use not yet passed; it only moves forward), the
resident set, and a max-heap of (next use, lower key first) packed in one int64 per entry. An access or
insert pushes the key's new entry and leaves the old one stale (`prio[key]` says which entry is live);
stale entries are dropped when they surface, and the heap is rebuilt from the resident keys when it fills
(4N entries). Protected or in-flight keys met on top are set aside (the stash) and pushed back. Ties go
to the lower key, as a linear scan would.
Cost: init O(trace); O(log N) per access; per victim O((stale + protected met) log N).
"""

from __future__ import annotations

from enum import auto

import numpy as np
from numba import njit

from ...kernel.helpers import is_evictable, ix, key_layer, read_id, set_add, set_remove, set_size
from ...kernel.hooks import EV_ACCESS, EV_EVICT, EV_INSERT, EVENT_SIG, VICTIM_SIG, hook
from ...kernel.layout import SC, Fields, new_policy_state
from ..api import Capabilities, Policy, PolicyContext, register


class I(Fields):
    """Rows of `ps.i`."""

    ARENA = auto()  # the header (columns C), then the regions it points to


class C(Fields):
    """The header, the first columns of row I.ARENA: a scalar, or the column where a region starts."""

    N = auto()  # keys
    OFF = auto()  # region offsets[key] (n + 1): where the key's uses start in USE
    CUR = auto()  # region cursor[key] (n): index of the key's first use not yet passed
    MEM = auto()  # region: the resident set's members (n + 1)
    POS = auto()  # region: the resident set's positions (n + 1; the resident count at pos[n])
    USE = auto()  # region uses: every key's use positions, in increasing order (CSR)
    PRIO = auto()  # region prio[key] (n): the key's live heap entry (-1: not resident)
    HEAP = auto()  # region: the max-heap (HEAP_CAP entries)
    STASH = auto()  # region: entries set aside while a victim is searched (2n + 2)
    NEVER = auto()  # a position later than every use
    HEAP_CAP = auto()
    HEAP_N = auto()  # entries in the heap


_HDR = len(C)


@njit(cache=True)
def _count_uses(experts: np.ndarray, high: np.ndarray, offsets_pass: np.ndarray, n_exp: int) -> np.ndarray:
    n_layers = experts.shape[1]
    k = experts.shape[2]
    counts = np.zeros(n_layers * n_exp, np.int64)
    seen = np.full(n_layers * n_exp, -1, np.int64)
    for p in range(offsets_pass.shape[0] - 1):
        for tok in range(offsets_pass[p], offsets_pass[p + 1]):
            for layer in range(n_layers):
                for s in range(k):
                    key = layer * n_exp + read_id(experts, high, tok, layer, s)
                    if seen[key] != p:
                        seen[key] = p
                        counts[key] += 1
    return counts


@njit(cache=True)
def _fill_uses(experts: np.ndarray, high: np.ndarray, offsets_pass: np.ndarray, n_exp: int, offsets: np.ndarray,
               uses: np.ndarray) -> None:
    n_layers = experts.shape[1]
    k = experts.shape[2]
    fill = offsets[:-1].copy()
    seen = np.full(n_layers * n_exp, -1, np.int64)
    for p in range(offsets_pass.shape[0] - 1):
        for tok in range(offsets_pass[p], offsets_pass[p + 1]):
            for layer in range(n_layers):
                for s in range(k):
                    key = layer * n_exp + read_id(experts, high, tok, layer, s)
                    if seen[key] != p:
                        seen[key] = p
                        uses[fill[key]] = p * n_layers + layer
                        fill[key] += 1


def init(ctx: PolicyContext, params: dict[str, float]) -> object:
    tv = ctx.trace
    n = ctx.n_layers * ctx.n_experts
    counts = _count_uses(tv.experts, tv.experts_hi, tv.pass_offsets, ctx.n_experts)
    offsets = np.zeros(n + 1, np.int64)
    np.cumsum(counts, out=offsets[1:])
    m = int(offsets[-1])
    heap_cap = 4 * n + 16
    sizes = [(C.OFF, n + 1), (C.CUR, n), (C.MEM, n + 1), (C.POS, n + 1), (C.USE, m), (C.PRIO, n),
             (C.HEAP, heap_cap), (C.STASH, 2 * n + 2)]
    header = np.zeros(_HDR, np.int64)
    at = _HDR
    for slot, size in sizes:
        header[slot] = at
        at += size
    header[C.N] = n
    header[C.NEVER] = (len(tv.pass_offsets) - 1) * ctx.n_layers  # later than every use position
    header[C.HEAP_CAP] = heap_cap
    ps = new_policy_state(i_rows=len(I), i_cols=at)
    a = ps.i[I.ARENA]
    a[:_HDR] = header
    a[header[C.OFF]:header[C.OFF] + n + 1] = offsets
    a[header[C.CUR]:header[C.CUR] + n] = offsets[:-1]
    a[header[C.MEM]:header[C.MEM] + n + 1] = -1
    a[header[C.POS]:header[C.POS] + n + 1] = -1
    a[header[C.POS] + n] = 0  # resident count lives in pos[n]
    a[header[C.PRIO]:header[C.PRIO] + n] = -1
    _fill_uses(tv.experts, tv.experts_hi, tv.pass_offsets, ctx.n_experts, offsets, a[header[C.USE]:header[C.USE] + m])
    return ps


@njit(cache=True, inline="always")
def _region(ps, slot: int, size: int):
    a = ps.i[I.ARENA]
    return a[a[slot]:a[slot] + size]


@njit(cache=True, _nrt=False)
def next_use(ps, key: int, now: int) -> int:
    """First use position of `key` strictly after `now` (advancing the key's cursor), or never."""
    a = ps.i[I.ARENA]
    n = a[C.N]
    off = _region(ps, C.OFF, n + 1)
    cur = _region(ps, C.CUR, n)
    uses = a[a[C.USE]:]
    c = cur[ix(key)]
    end = off[ix(key + 1)]
    while c < end and uses[ix(c)] <= now:
        c += 1
    cur[ix(key)] = c
    return uses[ix(c)] if c < end else a[C.NEVER]


# ---- a max-heap of (next use, -key) packed as next_use * n + (n - 1 - key), lazily invalidated ---------

@njit(cache=True, _nrt=False)
def _heap_push(ps, item: int) -> None:
    a = ps.i[I.ARENA]
    h = _region(ps, C.HEAP, a[C.HEAP_CAP])
    i = a[C.HEAP_N]
    h[ix(i)] = item
    a[C.HEAP_N] = i + 1
    while i > 0:
        parent = (i - 1) // 2
        if h[ix(parent)] >= h[ix(i)]:
            break
        h[ix(parent)], h[ix(i)] = h[ix(i)], h[ix(parent)]
        i = parent


@njit(cache=True, _nrt=False)
def _heap_pop(ps) -> None:
    a = ps.i[I.ARENA]
    h = _region(ps, C.HEAP, a[C.HEAP_CAP])
    n = a[C.HEAP_N] - 1
    a[C.HEAP_N] = n
    h[0] = h[ix(n)]
    i = 0
    while True:
        left = 2 * i + 1
        if left >= n:
            break
        child = left
        if left + 1 < n and h[ix(left + 1)] > h[ix(left)]:
            child = left + 1
        if h[ix(i)] >= h[ix(child)]:
            break
        h[ix(i)], h[ix(child)] = h[ix(child)], h[ix(i)]
        i = child


@njit(cache=True, _nrt=False)
def _set_prio(ps, key: int, nu: int) -> None:
    """Record the key's next use and push its heap entry; older entries of the key become stale."""
    a = ps.i[I.ARENA]
    n = a[C.N]
    prio = _region(ps, C.PRIO, n)
    item = nu * n + (n - 1 - key)
    prio[ix(key)] = item
    if a[C.HEAP_N] >= a[C.HEAP_CAP]:  # full of stale entries: rebuild from the resident keys
        a[C.HEAP_N] = 0
        members = _region(ps, C.MEM, n + 1)
        pos = _region(ps, C.POS, n + 1)
        for j in range(set_size(pos)):
            k = members[j]
            if k != key and prio[k] >= 0:
                _heap_push(ps, prio[k])
    _heap_push(ps, item)


@njit(cache=True, _nrt=False)
def _now(cs) -> int:
    return cs.sc[SC.PASS] * cs.layer_count.shape[0] + cs.sc[SC.LAYER]


@hook(EVENT_SIG)
def on_event(ps, cs, tv, ev, key, t):
    a = ps.i[I.ARENA]
    n = a[C.N]
    members = _region(ps, C.MEM, n + 1)
    pos = _region(ps, C.POS, n + 1)
    if ev == EV_INSERT:
        set_add(members, pos, key)
        _set_prio(ps, key, next_use(ps, key, _now(cs)))
    elif ev == EV_ACCESS:
        if pos[ix(key)] >= 0:
            _set_prio(ps, key, next_use(ps, key, _now(cs)))
    elif ev == EV_EVICT:
        set_remove(members, pos, key)
        _region(ps, C.PRIO, n)[key] = -1
    return 0


@hook(VICTIM_SIG)
def victim(ps, cs, tv, incoming, t):
    in_layer = key_layer(cs, incoming)
    a = ps.i[I.ARENA]
    n = a[C.N]
    prio = _region(ps, C.PRIO, n)
    h = _region(ps, C.HEAP, a[C.HEAP_CAP])
    stash = _region(ps, C.STASH, 2 * n + 2)
    now = _now(cs)
    n_stash = 0
    found = -1
    while a[C.HEAP_N] > 0:
        item = h[0]
        key = n - 1 - item % n
        if prio[ix(key)] != item:  # evicted, or re-pushed since
            _heap_pop(ps)
            continue
        nu = next_use(ps, key, now)
        if nu != item // n:  # its use went by without an access (routing changed it): re-rank
            _heap_pop(ps)
            _set_prio(ps, key, nu)
            continue
        if not is_evictable(cs, key, in_layer):
            _heap_pop(ps)
            stash[n_stash] = item
            n_stash += 1
            continue
        found = key
        break
    for j in range(n_stash):
        _heap_push(ps, stash[j])
    return found


POLICY = register(Policy(
    name="belady", kind="eviction", hooks={"victim": victim, "on_event": on_event}, init=init,
    capabilities=Capabilities(reads_future=True),
    doc="Offline optimum: evict the expert whose next use is farthest (reads the whole trace)."))
