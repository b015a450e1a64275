"""Belady's MIN: evict the expert whose next use lies farthest in the future (the offline optimum).

It reads the whole trace at init, so it is the bound every online policy is measured against, not a
policy a real system could run. Time is the position `pass * L + layer` of the forward pass; a key
(l, e) is used at position `p * L + l` for every pass p whose tokens route to e at layer l. The core
always knows where the forward pass is (`sc[SC_PASS]`, `sc[SC_LAYER]`), which is the cursor.

With uniform expert sizes, demand fetches and a cache that holds the distinct experts of any one
(pass, layer), this is optimal under the engine's rules: the keys of the layer now computing are
protected (never candidates), every other resident key's next use is strictly after the current
position, and evicting the farthest one is the classic exchange argument applied to a request sequence
of sets. When one layer needs more experts than the cache holds, its own experts evict each other while
it computes, in the engine's compute order (resident first, lowest id first), which pass-level next use
cannot see; there an online policy can beat it by luck (tests/test_policies_belady_property.py has a
case). Under a routing policy that changes the trace's choices (cache-aware), with prefetch or with
mixed precisions it is the trace-informed heuristic, no longer a proven bound.

State (all in `i`, one row used as a flat arena with a header of offsets): `uses` = every key's use
positions in increasing order (CSR), `offsets[key]`, `cursor[key]` (index of the first use not yet
passed; it only moves forward), the resident set, and a max-heap of (next use, lower key first) packed
in one int64 per entry. An access or insert pushes the key's new entry and leaves the old one stale
(`prio[key]` says which entry is live); stale entries are dropped when they surface, and the heap is
rebuilt from the resident keys when it fills (4N entries). Protected or in-flight keys met on top are
set aside and pushed back. Ties go to the lower key, as a linear scan would.
Cost: init O(trace); O(log N) per access; per victim O((stale + protected met) log N).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ...engines.core import is_evictable
from ...engines.state import SC_LAYER, SC_PASS, new_policy_state
from ..api import EV_ACCESS, EV_EVICT, EV_INSERT, KERNEL_SIG, Policy, PolicyContext
from ..kernel_util import ix, set_add, set_remove, set_size

# arena layout (one int64 row): header, then the regions named by the header's offsets
H_N, H_OFF, H_CUR, H_MEM, H_POS, H_USE, H_PRIO, H_HEAP, H_STASH, H_NEVER, H_HEAPCAP, H_HEAPN = range(12)
_HDR = 12


@njit(cache=True)
def _count_uses(experts: np.ndarray, offsets_pass: np.ndarray, n_exp: int) -> np.ndarray:
    n_layers = experts.shape[1]
    k = experts.shape[2]
    counts = np.zeros(n_layers * n_exp, np.int64)
    seen = np.full(n_layers * n_exp, -1, np.int64)
    for p in range(offsets_pass.shape[0] - 1):
        for tok in range(offsets_pass[p], offsets_pass[p + 1]):
            for layer in range(n_layers):
                for s in range(k):
                    key = layer * n_exp + np.int64(experts[tok, layer, s])
                    if seen[key] != p:
                        seen[key] = p
                        counts[key] += 1
    return counts


@njit(cache=True)
def _fill_uses(experts: np.ndarray, offsets_pass: np.ndarray, n_exp: int, offsets: np.ndarray,
               uses: np.ndarray) -> None:
    n_layers = experts.shape[1]
    k = experts.shape[2]
    fill = offsets[:-1].copy()
    seen = np.full(n_layers * n_exp, -1, np.int64)
    for p in range(offsets_pass.shape[0] - 1):
        for tok in range(offsets_pass[p], offsets_pass[p + 1]):
            for layer in range(n_layers):
                for s in range(k):
                    key = layer * n_exp + np.int64(experts[tok, layer, s])
                    if seen[key] != p:
                        seen[key] = p
                        uses[fill[key]] = p * n_layers + layer
                        fill[key] += 1


def init(ctx: PolicyContext, params: dict[str, float]) -> object:
    tv = ctx.trace
    n = ctx.n_layers * ctx.n_experts
    counts = _count_uses(tv.experts, tv.pass_offsets, ctx.n_experts)
    offsets = np.zeros(n + 1, np.int64)
    np.cumsum(counts, out=offsets[1:])
    m = int(offsets[-1])
    heap_cap = 4 * n + 16
    sizes = [(H_OFF, n + 1), (H_CUR, n), (H_MEM, n + 1), (H_POS, n + 1), (H_USE, m), (H_PRIO, n),
             (H_HEAP, heap_cap), (H_STASH, 2 * n + 2)]
    header = np.zeros(_HDR, np.int64)
    at = _HDR
    for slot, size in sizes:
        header[slot] = at
        at += size
    header[H_N] = n
    header[H_NEVER] = (len(tv.pass_offsets) - 1) * ctx.n_layers  # later than every use position
    header[H_HEAPCAP] = heap_cap
    ps = new_policy_state(i_rows=1, i_cols=at)
    a = ps.i[0]
    a[:_HDR] = header
    a[header[H_OFF]:header[H_OFF] + n + 1] = offsets
    a[header[H_CUR]:header[H_CUR] + n] = offsets[:-1]
    a[header[H_MEM]:header[H_MEM] + n + 1] = -1
    a[header[H_POS]:header[H_POS] + n + 1] = -1
    a[header[H_POS] + n] = 0  # resident count lives in pos[n]
    a[header[H_PRIO]:header[H_PRIO] + n] = -1
    _fill_uses(tv.experts, tv.pass_offsets, ctx.n_experts, offsets, a[header[H_USE]:header[H_USE] + m])
    return ps


@njit(cache=True, inline="always")
def _region(ps, slot: int, size: int):
    a = ps.i[0]
    return a[a[slot]:a[slot] + size]


@njit(cache=True, _nrt=False)
def next_use(ps, key: int, now: int) -> int:
    """First use position of `key` strictly after `now` (advancing the key's cursor), or never."""
    a = ps.i[0]
    n = a[H_N]
    off = _region(ps, H_OFF, n + 1)
    cur = _region(ps, H_CUR, n)
    uses = a[a[H_USE]:]
    c = cur[ix(key)]
    end = off[ix(key + 1)]
    while c < end and uses[ix(c)] <= now:
        c += 1
    cur[ix(key)] = c
    return uses[ix(c)] if c < end else a[H_NEVER]


# ---- a max-heap of (next use, -key) packed as next_use * n + (n - 1 - key), lazily invalidated ---------

@njit(cache=True, _nrt=False)
def _heap_push(ps, item: int) -> None:
    a = ps.i[0]
    h = _region(ps, H_HEAP, a[H_HEAPCAP])
    i = a[H_HEAPN]
    h[ix(i)] = item
    a[H_HEAPN] = i + 1
    while i > 0:
        parent = (i - 1) // 2
        if h[ix(parent)] >= h[ix(i)]:
            break
        h[ix(parent)], h[ix(i)] = h[ix(i)], h[ix(parent)]
        i = parent


@njit(cache=True, _nrt=False)
def _heap_pop(ps) -> None:
    a = ps.i[0]
    h = _region(ps, H_HEAP, a[H_HEAPCAP])
    n = a[H_HEAPN] - 1
    a[H_HEAPN] = n
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
    a = ps.i[0]
    n = a[H_N]
    prio = _region(ps, H_PRIO, n)
    item = nu * n + (n - 1 - key)
    prio[ix(key)] = item
    if a[H_HEAPN] >= a[H_HEAPCAP]:  # full of stale entries: rebuild from the resident keys
        a[H_HEAPN] = 0
        members = _region(ps, H_MEM, n + 1)
        pos = _region(ps, H_POS, n + 1)
        for j in range(set_size(pos)):
            k = members[j]
            if k != key and prio[k] >= 0:
                _heap_push(ps, prio[k])
    _heap_push(ps, item)


@njit(cache=True, _nrt=False)
def _now(cs) -> int:
    return cs.sc[SC_PASS] * cs.layer_count.shape[0] + cs.sc[SC_LAYER]


@njit(KERNEL_SIG, cache=True, _nrt=False)
def event(ps, cs, tv, ev, key, t):
    a = ps.i[0]
    n = a[H_N]
    members = _region(ps, H_MEM, n + 1)
    pos = _region(ps, H_POS, n + 1)
    if ev == EV_INSERT:
        set_add(members, pos, key)
        _set_prio(ps, key, next_use(ps, key, _now(cs)))
    elif ev == EV_ACCESS:
        if pos[ix(key)] >= 0:
            _set_prio(ps, key, next_use(ps, key, _now(cs)))
    elif ev == EV_EVICT:
        set_remove(members, pos, key)
        _region(ps, H_PRIO, n)[key] = -1
    return 0


@njit(KERNEL_SIG, cache=True, _nrt=False)
def victim(ps, cs, tv, in_layer, _b, t):
    a = ps.i[0]
    n = a[H_N]
    prio = _region(ps, H_PRIO, n)
    h = _region(ps, H_HEAP, a[H_HEAPCAP])
    stash = _region(ps, H_STASH, 2 * n + 2)
    now = _now(cs)
    n_stash = 0
    found = -1
    while a[H_HEAPN] > 0:
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


POLICY = Policy(name="belady", kind="eviction", kernels=(victim, event), init=init,
                doc="Offline optimum: evict the expert whose next use is farthest (reads the whole trace).")
