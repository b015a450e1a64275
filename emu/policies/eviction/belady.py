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
`offsets[key]`), `cursor[key]` (index of the first use not yet passed; it only moves forward), and a
tournament tree over the keys: leaf `P + key` holds the resident key's rank (next use, lower key first),
packed in one int64, or -1; every inner node holds the larger of its two children, so the root is the
farthest resident key and its packed rank names it. An access or insert raises the key's leaf and climbs
only while the parents are smaller; an eviction lowers it and recomputes the path only while it changes.
Protected or in-flight keys met on top are set aside (their leaves lowered, then restored), so the victim
is the first evictable key in decreasing rank, as a sorted scan would find it: ties go to the lower key.
The tree has no stale entries, so no rebuild, and it needs no resident set: a leaf >= 0 is a resident key.
Keys set aside for being in flight or protected stay aside after the victim (`helpers.keep_aside`, in the
region `KEPT`, their ranks in `ITEM`) until a victim could take them: a copy in flight until it lands (the core's
log of landings names it), a protected key until an entry is released; and, after the forward pass moves, a
protected key whose next use went by goes back so that the walk re-ranks it. So a victim does not set aside again
the keys of the layer computing (tens with several tokens a pass) nor the copies still queued (hundreds on a wide
model, where each copy takes long and prefetches queue up). An event on a kept key puts it back first.
Cost: init O(trace); per access O(levels climbed) <= O(log N); per victim O((1 + refused keys newly met) log N),
plus O(protected kept) after a release or a move and O(landings since the last victim).
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
    kept_protected,
    kept_protected_key,
    kept_to_put_back,
    key_layer,
    read_id,
    take_back,
)
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
    USE = auto()  # region uses: every key's use positions, in increasing order (CSR)
    TREE = auto()  # region: the tournament tree (2P; root at 1, leaf of key at P + key)
    STASH = auto()  # region: ranks set aside while a victim is searched (n)
    KEPT = auto()  # region: the keys kept aside between victims (helpers.kept_cols(n): helpers.keep_aside)
    ITEM = auto()  # region: per key kept aside, its rank (n)
    SEEN_NOW = auto()  # the position `_now` when the kept ranks were last brought up to date
    LEAF = auto()  # P: the leaves' base, the least power of two >= n
    SHIFT = auto()  # log2(P): a rank is next_use << SHIFT | (P - 1 - key)
    NEVER = auto()  # a position later than every use


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
    leaf = 1 << max(0, (n - 1).bit_length())
    sizes = [(C.OFF, n + 1), (C.CUR, n), (C.USE, m), (C.TREE, 2 * leaf), (C.STASH, n), (C.KEPT, kept_cols(n)),
             (C.ITEM, n)]
    header = np.zeros(_HDR, np.int64)
    at = _HDR
    for slot, size in sizes:
        header[slot] = at
        at += size
    header[C.N] = n
    header[C.LEAF] = leaf
    header[C.SHIFT] = leaf.bit_length() - 1
    header[C.NEVER] = (len(tv.pass_offsets) - 1) * ctx.n_layers  # later than every use position
    header[C.SEEN_NOW] = -1  # nothing kept yet
    ps = new_policy_state(i_rows=len(I), i_cols=at)
    a = ps.i[I.ARENA]
    a[:_HDR] = header
    a[header[C.OFF]:header[C.OFF] + n + 1] = offsets
    a[header[C.CUR]:header[C.CUR] + n] = offsets[:-1]
    a[header[C.TREE]:header[C.TREE] + 2 * leaf] = -1  # no key resident
    _fill_uses(tv.experts, tv.experts_hi, tv.pass_offsets, ctx.n_experts, offsets, a[header[C.USE]:header[C.USE] + m])
    return ps


# Every region is read as a[ix(a[C.X] + i)], not through a slice: a slice of the arena costs a bounds
# fix-up per region per call, on every access.

@njit(cache=True, _nrt=False)
def next_use(ps, key: int, now: int) -> int:
    """First use position of `key` strictly after `now` (advancing the key's cursor), or never."""
    a = ps.i[I.ARENA]
    at = a[C.CUR] + key
    c = a[ix(at)]
    end = a[ix(a[C.OFF] + key + 1)]
    uses = a[C.USE]
    while c < end and a[ix(uses + c)] <= now:
        c += 1
    a[ix(at)] = c
    return a[ix(uses + c)] if c < end else a[C.NEVER]


# ---- a tournament tree of ranks next_use << SHIFT | (P - 1 - key) (larger: evicted first), -1 for no key ----

@njit(cache=True, inline="always")
def _rank(ps, key: int, nu: int) -> int:
    a = ps.i[I.ARENA]
    return (nu << a[C.SHIFT]) | (a[C.LEAF] - 1 - key)


@njit(cache=True, _nrt=False)
def _tree_set(ps, key: int, item: int) -> None:
    """Set the key's leaf to `item` (-1: not resident) and bring its ancestors up to date."""
    a = ps.i[I.ARENA]
    t = a[C.TREE]
    i = a[C.LEAF] + key
    old = a[ix(t + i)]
    a[ix(t + i)] = item
    if item >= old:  # a larger leaf: its ancestors only rise to it, and stop at the first that is larger
        while i > 1:
            i >>= 1
            if a[ix(t + i)] >= item:
                break
            a[ix(t + i)] = item
    else:  # a smaller leaf: recompute each ancestor until one keeps its value
        while i > 1:
            i >>= 1
            m = max(a[ix(t + 2 * i)], a[ix(t + 2 * i + 1)])
            if a[ix(t + i)] == m:
                break
            a[ix(t + i)] = m


@njit(cache=True, _nrt=False)
def _tree_drop_top(ps, key: int) -> None:
    """`_tree_set(ps, key, -1)` for the key whose rank is the root's: it was the larger child at every level of
    its path, so each ancestor becomes the larger of the lowered side and the sibling, read once per level."""
    a = ps.i[I.ARENA]
    t = a[C.TREE]
    i = a[C.LEAF] + key
    a[ix(t + i)] = -1
    v = np.int64(-1)
    while i > 1:
        v = max(v, a[ix(t + (i ^ 1))])
        i >>= 1
        a[ix(t + i)] = v


@njit(cache=True, _nrt=False)
def _now(cs) -> int:
    return cs.sc[SC.PASS] * cs.layer_count.shape[0] + cs.sc[SC.LAYER]


@njit(cache=True, inline="always")
def _kept(ps) -> np.ndarray:
    a = ps.i[I.ARENA]
    return a[a[C.KEPT]:a[C.ITEM]]


@njit(cache=True, _nrt=False)
def _put_back(ps, key: int) -> None:
    """A kept key back in the tree with the rank it was kept with."""
    a = ps.i[I.ARENA]
    take_back(_kept(ps), key)
    _tree_set(ps, key, a[ix(a[C.ITEM] + key)])


@njit(cache=True, _nrt=False)
def _update_kept(ps, cs, now: int) -> None:
    """Put back in the tree the kept keys a victim could take now (`helpers.kept_to_put_back`) and, after a move of
    the forward pass, each protected one whose next use went by, so that the walk re-ranks it as it would have found
    it. The rest are still refused and still ranked right."""
    a = ps.i[I.ARENA]
    kept = _kept(ps)
    stash = a[a[C.STASH]:a[C.KEPT]]
    item = a[C.ITEM]
    for j in range(kept_to_put_back(cs, kept, stash)):
        key = stash[j]
        _tree_set(ps, key, a[ix(item + key)])
    if a[C.SEEN_NOW] != now:
        shift = a[C.SHIFT]
        j = 0
        while j < kept_protected(kept):
            key = kept_protected_key(kept, j)
            if next_use(ps, key, now) != a[ix(item + key)] >> shift:
                _put_back(ps, key)
            else:
                j += 1
        a[C.SEEN_NOW] = now


@hook(EVENT_SIG)
def on_event(ps, cs, tv, ev, key, t):
    a = ps.i[I.ARENA]
    if ev in (EV_ACCESS, EV_INSERT, EV_EVICT) and is_kept(_kept(ps), key):  # (EV_PASS's `key` is a pass)
        _put_back(ps, key)  # back in the tree first: the event changes its rank
    if ev == EV_INSERT:
        _tree_set(ps, key, _rank(ps, key, next_use(ps, key, _now(cs))))
    elif ev == EV_ACCESS:
        if a[ix(a[C.TREE] + a[C.LEAF] + key)] >= 0:
            _tree_set(ps, key, _rank(ps, key, next_use(ps, key, _now(cs))))
    elif ev == EV_EVICT:
        _tree_set(ps, key, -1)
    return 0


@hook(VICTIM_SIG)
def victim(ps, cs, tv, incoming, t):
    in_layer = key_layer(cs, incoming)
    a = ps.i[I.ARENA]
    root = a[C.TREE] + 1
    stash = a[C.STASH]
    shift = a[C.SHIFT]
    low = a[C.LEAF] - 1
    now = _now(cs)
    # Keys an earlier victim set aside for being in flight or protected stay aside until their copy lands, they
    # are released or their next use goes by: a victim would otherwise set aside again the tens of keys of the
    # layer computing (several tokens a pass) and the copies still queued (hundreds on a wide model).
    _update_kept(ps, cs, now)
    n_stash = 0
    found = -1
    while a[ix(root)] >= 0:
        item = a[ix(root)]
        key = low - (item & low)
        nu = next_use(ps, key, now)
        if nu != item >> shift:  # its use went by without an access (routing changed it): re-rank
            _tree_set(ps, key, _rank(ps, key, nu))
            continue
        if not is_evictable(cs, key, in_layer):
            _tree_drop_top(ps, key)
            a[ix(stash + n_stash)] = item
            n_stash += 1
            continue
        found = key
        break
    for j in range(n_stash):  # keep what no incoming key could take, put back the rest
        item = a[ix(stash + j)]
        key = low - (item & low)
        if is_unpinned(cs, key):  # refused by a layer's cap or floor: for this incoming key only
            _tree_set(ps, key, item)
        else:
            a[ix(a[C.ITEM] + key)] = item
            keep_aside(cs, _kept(ps), key)
    return found


POLICY = register(Policy(
    name="belady", kind="eviction", hooks={"victim": victim, "on_event": on_event}, init=init,
    capabilities=Capabilities(reads_future=True),
    doc="Offline optimum: evict the expert whose next use is farthest (reads the whole trace)."))
