"""The numba helpers a policy may call, and the core with it: key arithmetic, the eviction rule, a layer's
routing, a resident-key set, a seeded RNG, a top-n pick.

They are part of the kernel interface: policies inline them, so numba's cache for every jitted function of
the engines and policies is keyed on these sources too (kernel/cache.py). The set, RNG and numeric helpers
work on plain arrays (rows of a policy's `ps.i` / `ps.f` tables), so they do not care how the engine passes
the state around.

Resident set: `members[0:n]` lists the keys, `pos[key]` is the key's index in `members` (-1 when absent)
and `pos[n_keys]` holds n, so add and remove are O(1) and a scan costs O(resident keys), not O(all keys).
"""

from __future__ import annotations

import numpy as np
from numba import njit
from numba.cpython.unsafe.numbers import trailing_zeros

from .layout import ABSENT, LANDED_LOG, RESIDENT, SC, new_policy_state

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


@njit(cache=True, inline="always")
def ix(i: int) -> np.uint64:
    """`i` (never negative) as an array index that numba does not wrap. For a signed index numba adds
    the size when it is negative: a shift, a mask, an add and a load of the size on every access, on
    the path of the load's address; an unsigned index goes straight to the address. For keys, expert
    ids and layers in the hot paths."""
    return np.uint64(i)


# ---- keys, the eviction rule, a layer's routing ------------------------------------------------

@njit(cache=True, inline="always")
def read_id(low: np.ndarray, high: np.ndarray, tok: int, layer: int, s: int) -> int:
    """The expert id at [tok, layer, s] of a trace view's byte arrays (`tv.experts`, `tv.experts_hi` or
    `tv.predicted`, `tv.predicted_hi`): the low byte, plus the high byte where there are high bytes (an
    empty `high`: every id < 256). Every read of a trace's ids goes through here."""
    e = np.int64(low[ix(tok), ix(layer), ix(s)])
    if high.shape[0] != 0:
        e |= np.int64(high[ix(tok), ix(layer), ix(s)]) << 8
    return e


@njit(cache=True, inline="always")
def expert_id(tv, tok: int, layer: int, s: int) -> int:
    """The expert the router chose for token `tok` at `layer` in slot s."""
    return read_id(tv.experts, tv.experts_hi, tok, layer, s)


@njit(cache=True, inline="always")
def predicted_id(tv, tok: int, layer: int, s: int) -> int:
    """The speculator's guess for token `tok` at `layer`, slot s (traces with recorded predictions)."""
    return read_id(tv.predicted, tv.predicted_hi, tok, layer, s)


@njit(cache=True, inline="always")
def interp_curve(xs: np.ndarray, ys: np.ndarray, n: int, x: float) -> float:
    """Piecewise linear, clamped below the first point, extended past the last (never decreasing)."""
    if x <= xs[0] or n == 1:
        return ys[0]
    if x >= xs[n - 1]:
        slope = (ys[n - 1] - ys[n - 2]) / (xs[n - 1] - xs[n - 2])
        if slope < 0.0:
            slope = 0.0
        return ys[n - 1] + slope * (x - xs[n - 1])
    lo = 0
    hi = n - 1
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if xs[mid] <= x:
            lo = mid
        else:
            hi = mid
    w = (x - xs[lo]) / (xs[hi] - xs[lo])
    return ys[lo] + w * (ys[hi] - ys[lo])


@njit(cache=True, inline="always")
def key_layer(cs, key: int) -> int:
    n = cs.cur_key.shape[0]
    if n & (n - 1) == 0:  # a power of two: an arithmetic shift floors like //, without a division
        return key >> trailing_zeros(n)
    return key // n


@njit(cache=True, inline="always")
def is_evictable(cs, key: int, in_layer: int) -> bool:
    """May `key` make room for a copy into `in_layer`? Policies choose only among such keys."""
    if not is_unpinned(cs, key):
        return False
    vl = key_layer(cs, key)
    if cs.sc[SC.SAME_LAYER] == 1 and vl != in_layer:
        return False
    return not (vl != in_layer and cs.layer_count[ix(vl)] - 1 < cs.layer_floor[ix(vl)])


@njit(cache=True, inline="always")
def is_unpinned(cs, key: int) -> bool:
    """Is `key` resident and needed by no entry computing? The part of `is_evictable` that holds for any
    incoming key; a key it refuses stays refused while `cs.sc[SC.LANDED]` and `cs.sc[SC.RELEASED]` stay."""
    return cs.status[ix(key)] == RESIDENT and cs.protect[ix(key)] <= 0


@njit(cache=True, inline="always")
def landed_key(cs, n: int) -> int:
    """The key of landing `n` (counted from 0, as `SC.LANDED` counts them), for n in
    [SC.LANDED - LANDED_LOG, SC.LANDED): older landings are overwritten (`landed_logged` says whether they are)."""
    return cs.landed[n & (LANDED_LOG - 1)]


@njit(cache=True, inline="always")
def landed_logged(cs, seen: int) -> bool:
    """Do the landings since `seen` (an earlier `SC.LANDED`) all still stand in `cs.landed`?"""
    return cs.sc[SC.LANDED] - seen <= LANDED_LOG


@njit(cache=True, inline="always")
def _mask_ids(words: np.ndarray, out: np.ndarray, n: int) -> int:
    """Append the ids of the set bits of `words` (bit e & 63 of word e >> 6) to out[n:], ascending, clearing
    the words; returns the new length."""
    for w in range(words.shape[0]):
        bits = words[w]
        if bits == np.uint64(0):
            continue
        words[w] = np.uint64(0)
        base = w << 6
        while bits != np.uint64(0):
            out[ix(n)] = base + np.int64(trailing_zeros(bits))
            bits &= bits - np.uint64(1)
            n += 1
    return n


@njit(cache=True, _nrt=False)
def gather_layer(cs, tv, p: int, layer: int) -> int:
    """The distinct experts the tokens of pass p need at `layer`, in expert-id order, with token counts
    and routing mass (gate scores when the trace has them, else 1/top_k per token)."""
    # Fields are read into locals once: inside loops with stores LLVM would reload them every time.
    experts = tv.experts
    high = tv.experts_hi
    scores = tv.scores
    t0 = tv.pass_offsets[p]
    t1 = tv.pass_offsets[p + 1]
    k = experts.shape[2]
    n_exp = cs.cur_key.shape[0]
    has_scores = tv.dims[0] == 1
    count = cs.gather_count
    mass = cs.gather_mass
    ids = cs.cur_expert
    n = 0
    if n_exp <= 64:
        # a bit per expert: the set bits, lowest first, are the distinct ids in order (no sort)
        bits = np.uint64(0)
        for tok in range(t0, t1):
            for s in range(k):
                e = read_id(experts, high, tok, layer, s)
                bits |= np.uint64(1) << np.uint64(e)
                count[ix(e)] += 1
                mass[ix(e)] += np.float64(scores[ix(tok), ix(layer), s]) if has_scores else 1.0 / k
        while bits != np.uint64(0):
            ids[n] = np.int64(trailing_zeros(bits))
            bits &= bits - np.uint64(1)
            n += 1
    else:
        # the same with the bits in `cs.mask`'s words, read back (and cleared) word by word
        words = cs.mask
        for tok in range(t0, t1):
            for s in range(k):
                e = read_id(experts, high, tok, layer, s)
                words[ix(e >> 6)] |= np.uint64(1) << np.uint64(e & 63)
                count[ix(e)] += 1
                mass[ix(e)] += np.float64(scores[ix(tok), ix(layer), s]) if has_scores else 1.0 / k
        n = _mask_ids(words, ids, 0)
    cur_key = cs.cur_key
    cur_tokens = cs.cur_tokens
    cur_mass = cs.cur_mass
    for i in range(n):
        e = ix(ids[i])
        cur_key[i] = layer * n_exp + ids[i]
        cur_tokens[i] = count[e]
        cur_mass[i] = mass[e]
        count[e] = 0
        mass[e] = 0.0
    return n


# ---- key lists: circular doubly linked lists over keys in one int row ------------------------------
# n_lists lists share one row of 2 * (n_keys + n_lists) entries: key k's previous node at 2k, its next at
# 2k + 1; list j is closed by the sentinel node n_keys + j, whose next is the list's oldest key and whose
# previous its newest. A key is on at most one list; with no branch on the ends, each step is O(1).

def init_lists(links: np.ndarray, n_lists: int) -> None:
    """Every list empty: each sentinel is its own previous and next (keys' nodes are left as they are)."""
    n_keys = links.shape[0] // 2 - n_lists
    for j in range(n_lists):
        links[2 * (n_keys + j)] = n_keys + j
        links[2 * (n_keys + j) + 1] = n_keys + j


@njit(cache=True, inline="always")
def list_sentinel(links: np.ndarray, n_lists: int, j: int) -> int:
    return (links.shape[0] >> 1) - n_lists + j


@njit(cache=True, inline="always")
def list_next(links: np.ndarray, node: int) -> int:
    """The node after `node`: from a sentinel, its list's oldest key."""
    return links[ix(2 * node + 1)]


@njit(cache=True, inline="always")
def list_prev(links: np.ndarray, node: int) -> int:
    """The node before `node`: from a sentinel, its list's newest key."""
    return links[ix(2 * node)]


@njit(cache=True, inline="always")
def list_insert_after(links: np.ndarray, key: int, node: int) -> None:
    """Put `key` (on no list) right after `node` (a key or a sentinel) in its list."""
    nxt = links[ix(2 * node + 1)]
    links[ix(2 * key)] = node
    links[ix(2 * key + 1)] = nxt
    links[ix(2 * node + 1)] = key
    links[ix(2 * nxt)] = key


@njit(cache=True, inline="always")
def list_unlink(links: np.ndarray, key: int) -> None:
    prev = links[ix(2 * key)]
    nxt = links[ix(2 * key + 1)]
    links[ix(2 * prev + 1)] = nxt
    links[ix(2 * nxt)] = prev


@njit(cache=True, inline="always")
def list_append(links: np.ndarray, key: int, sentinel: int) -> None:
    """Put `key` (on no list) at the newest end of the list `sentinel` closes."""
    tail = links[ix(2 * sentinel)]
    links[ix(2 * key)] = tail
    links[ix(2 * key + 1)] = sentinel
    links[ix(2 * tail + 1)] = key
    links[ix(2 * sentinel)] = key


@njit(cache=True, inline="always")
def list_first_evictable(links: np.ndarray, sentinel: int, cs, in_layer: int) -> int:
    """The oldest key of the list `sentinel` closes that `is_evictable` accepts for `in_layer`, or -1."""
    key = list_next(links, sentinel)
    while key != sentinel:
        if is_evictable(cs, key, in_layer):
            return key
        key = list_next(links, key)
    return -1


@njit(cache=True, inline="always")
def list_first_evictable_after_run(links: np.ndarray, sentinel: int, cs, in_layer: int, run: np.ndarray,
                                   j: int) -> int:
    """`list_first_evictable`, with the walk starting after the run of keys in flight at the list's head that an
    earlier walk met: `run[2 * j]` that run's last node (or `sentinel`), `run[2 * j + 1]` `cs.sc[SC.LANDED]` then.
    While no copy has landed since, every key of the run is still in flight (never evictable), and keys only
    leave a run (moved or evicted: the owner calls `list_forget_run` for each key it takes off list j), so the
    same key is found. With several tokens a pass and prefetching, the oldest keys are often copies still queued,
    and every victim of a gate would walk past the same ones again."""
    last = list_run_start(run, j, sentinel, cs)
    in_run = True  # every key walked so far is in flight
    key = list_next(links, last)
    found = -1
    while key != sentinel:
        if cs.status[ix(key)] != RESIDENT:
            if in_run:
                last = key
        elif is_evictable(cs, key, in_layer):
            found = key
            break
        else:
            in_run = False
        key = list_next(links, key)
    list_run_remember(run, j, last, cs)
    return found


def init_runs(run: np.ndarray, links: np.ndarray, n_lists: int) -> None:
    """No run remembered on any of the `n_lists` lists (`list_first_evictable_after_run`): each list's sentinel,
    at no count of landed copies."""
    for j in range(n_lists):
        run[2 * j] = list_sentinel(links, n_lists, j)
        run[2 * j + 1] = -1


@njit(cache=True, inline="always")
def list_run_start(run: np.ndarray, j: int, sentinel: int, cs) -> int:
    """The node a walk of list j starts after: the end of the remembered run of keys in flight while no copy has
    landed since it was seen, else the sentinel."""
    return run[ix(2 * j)] if run[ix(2 * j + 1)] == cs.sc[SC.LANDED] else sentinel


@njit(cache=True, inline="always")
def list_run_remember(run: np.ndarray, j: int, last: int, cs) -> None:
    """Remember `last` (a key, or the sentinel for none) as the end of list j's run of keys in flight, as of now."""
    run[ix(2 * j)] = last
    run[ix(2 * j + 1)] = cs.sc[SC.LANDED]


@njit(cache=True, inline="always")
def list_forget_run(run: np.ndarray, j: int, key: int, sentinel: int) -> None:
    """`key` leaves its place on list j: if it ends the run `list_first_evictable_after_run` remembers, the run
    is forgotten."""
    if run[ix(2 * j)] == key:
        run[ix(2 * j)] = sentinel


@njit(cache=True, inline="always")
def list_put(links: np.ndarray, on: np.ndarray, count: np.ndarray, key: int, j: int, n_lists: int) -> None:
    """Put `key` (on no list) at the newest end of list j, keeping `on[key]` (the list a key is on, -1 for
    none) and `count[j]` (each list's length)."""
    list_append(links, key, list_sentinel(links, n_lists, j))
    on[ix(key)] = j
    count[ix(j)] += 1


@njit(cache=True, inline="always")
def list_take(links: np.ndarray, on: np.ndarray, count: np.ndarray, key: int) -> None:
    """Take `key` off the list `on[key]` names (it is on one), keeping `on` and `count` as `list_put` does."""
    list_unlink(links, key)
    count[ix(on[ix(key)])] -= 1
    on[ix(key)] = -1


# ---- keys kept aside between victims ---------------------------------------------------------------
# A victim search that meets refused keys (a copy in flight, an entry computing) at the top of its order sets them
# aside and keeps them out of its order until a victim could take them: a key in flight until its copy lands (the
# log of landings, `cs.landed`, names it), a protected one until an entry is released (`SC.RELEASED`). So each is
# set aside once, not at every victim: on a wide model hundreds of queued copies sit at the top of Belady's or
# LFU's order. One int row (or a slice of one) of `kept_cols(n_keys)`: a header, the keys kept for their copy in
# flight, those kept for being protected, and per key 1 + its index in the first list, -1 - its index in the
# second, or 0.

_KEPT_FLY_N, _KEPT_PROT_N, _KEPT_SEEN_LANDED, _KEPT_SEEN_RELEASED = 0, 1, 2, 3
KEPT_HDR = 4


def kept_cols(n_keys: int) -> int:
    """Width of a kept-aside row over `n_keys` keys (all zero is empty)."""
    return KEPT_HDR + 3 * n_keys


@njit(cache=True, inline="always")
def _kept_n(row: np.ndarray) -> int:
    return (row.shape[0] - KEPT_HDR) // 3


@njit(cache=True, inline="always")
def is_kept(row: np.ndarray, key: int) -> bool:
    return row[ix(KEPT_HDR + 2 * _kept_n(row) + key)] != 0


@njit(cache=True, inline="always")
def kept_in_flight(row: np.ndarray) -> int:
    """How many keys are kept for their copy being in flight."""
    return row[_KEPT_FLY_N]


@njit(cache=True, inline="always")
def kept_in_flight_key(row: np.ndarray, j: int) -> int:
    return row[ix(KEPT_HDR + j)]


@njit(cache=True, inline="always")
def kept_protected(row: np.ndarray) -> int:
    """How many keys are kept for being protected (`kept_protected_key(row, j)` for j below it)."""
    return row[_KEPT_PROT_N]


@njit(cache=True, inline="always")
def kept_protected_key(row: np.ndarray, j: int) -> int:
    return row[ix(KEPT_HDR + _kept_n(row) + j)]


@njit(cache=True, _nrt=False)
def keep_aside(cs, row: np.ndarray, key: int) -> None:
    """Keep `key` (refused: `is_unpinned` false) aside: with the copies in flight if it is not resident, else
    with the protected keys."""
    n = _kept_n(row)
    if cs.status[ix(key)] != RESIDENT:
        j = row[_KEPT_FLY_N]
        row[ix(KEPT_HDR + j)] = key
        row[ix(KEPT_HDR + 2 * n + key)] = j + 1
        row[_KEPT_FLY_N] = j + 1
    else:
        j = row[_KEPT_PROT_N]
        row[ix(KEPT_HDR + n + j)] = key
        row[ix(KEPT_HDR + 2 * n + key)] = -1 - j
        row[_KEPT_PROT_N] = j + 1


@njit(cache=True, _nrt=False)
def take_back(row: np.ndarray, key: int) -> None:
    """Take a kept `key` out of its list (the list's last key moves into its place)."""
    n = _kept_n(row)
    codes = KEPT_HDR + 2 * n
    code = row[ix(codes + key)]
    flying = code > 0
    base = KEPT_HDR if flying else KEPT_HDR + n
    count = _KEPT_FLY_N if flying else _KEPT_PROT_N
    j = code - 1 if flying else -1 - code
    last = row[count] - 1
    moved = row[ix(base + last)]
    row[ix(base + j)] = moved
    row[ix(codes + moved)] = j + 1 if flying else -1 - j
    row[ix(codes + key)] = 0  # after the moved key's code: it may be this key
    row[count] = last


@njit(cache=True, _nrt=False)
def _landed_kept(cs, row: np.ndarray, key: int, out: np.ndarray, c: int) -> int:
    take_back(row, key)
    if is_unpinned(cs, key):
        out[ix(c)] = key
        return c + 1
    keep_aside(cs, row, key)  # landed, still protected
    return c


@njit(cache=True, _nrt=False)
def kept_to_put_back(cs, row: np.ndarray, out: np.ndarray) -> int:
    """Take out of the kept lists the keys a victim could take now, into out[:returned count]: those whose copy
    landed since the last call (from the log of landings, or a scan of the list where the log has been
    overwritten), and after a release those no longer protected. The rest are still refused."""
    c = 0
    landed = cs.sc[SC.LANDED]
    seen = row[_KEPT_SEEN_LANDED]
    if landed != seen:
        codes = KEPT_HDR + 2 * _kept_n(row)
        if landed_logged(cs, seen):
            for m in range(seen, landed):
                key = landed_key(cs, m)
                if row[ix(codes + key)] > 0:
                    c = _landed_kept(cs, row, key, out, c)
        else:
            j = 0
            while j < row[_KEPT_FLY_N]:
                key = row[ix(KEPT_HDR + j)]
                if cs.status[ix(key)] == RESIDENT:
                    c = _landed_kept(cs, row, key, out, c)
                else:
                    j += 1
        row[_KEPT_SEEN_LANDED] = landed
    released = cs.sc[SC.RELEASED]
    if released != row[_KEPT_SEEN_RELEASED]:
        base = KEPT_HDR + _kept_n(row)
        j = 0
        while j < row[_KEPT_PROT_N]:
            key = row[ix(base + j)]
            if is_unpinned(cs, key):
                take_back(row, key)
                out[ix(c)] = key
                c += 1
            else:
                j += 1
        row[_KEPT_SEEN_RELEASED] = released
    return c


# ---- a binary min-heap of keys on (primary, last, key) --------------------------------------------------
# In a policy's int table `t`: row `h` the heap's keys (t[h, 0] the least), row `h + 1` per key its index in row h
# or -1 and the heap's size in its last column, row `h + 2` per key its last use; `primary` per key (float64: a
# count, a score). The order: the lower primary, then the lower last use (the least recent), then the lower key.
# A policy keeps `primary` and the last uses and tells the heap when a key's rank rises (`heap_touch`); ranks never
# fall while a key is in the heap.

HEAP_ROWS = 3


def init_heap(t: np.ndarray, h: int) -> None:
    t[h + 1, :] = -1
    t[h + 1, -1] = 0


@njit(cache=True, inline="always")
def heap_size(t: np.ndarray, h: int) -> int:
    return t[h + 1, t.shape[1] - 1]


@njit(cache=True, inline="always")
def _heap_before(t: np.ndarray, h: int, primary: np.ndarray, a: int, b: int) -> bool:
    pa = primary[ix(a)]
    pb = primary[ix(b)]
    if pa != pb:
        return pa < pb
    la = t[h + 2, ix(a)]
    lb = t[h + 2, ix(b)]
    if la != lb:
        return la < lb
    return a < b


@njit(cache=True, _nrt=False)
def _heap_up(t: np.ndarray, h: int, primary: np.ndarray, j: int) -> None:
    key = t[h, ix(j)]
    while j > 0:
        parent = (j - 1) >> 1
        above = t[h, ix(parent)]
        if not _heap_before(t, h, primary, key, above):
            break
        t[h, ix(j)] = above
        t[h + 1, ix(above)] = j
        j = parent
    t[h, ix(j)] = key
    t[h + 1, ix(key)] = j


@njit(cache=True, _nrt=False)
def _heap_down(t: np.ndarray, h: int, primary: np.ndarray, j: int) -> None:
    n = heap_size(t, h)
    key = t[h, ix(j)]
    while True:
        child = 2 * j + 1
        if child >= n:
            break
        if child + 1 < n and _heap_before(t, h, primary, t[h, ix(child + 1)], t[h, ix(child)]):
            child += 1
        below = t[h, ix(child)]
        if not _heap_before(t, h, primary, below, key):
            break
        t[h, ix(j)] = below
        t[h + 1, ix(below)] = j
        j = child
    t[h, ix(j)] = key
    t[h + 1, ix(key)] = j


@njit(cache=True, _nrt=False)
def heap_push(t: np.ndarray, h: int, primary: np.ndarray, key: int) -> None:
    n = heap_size(t, h)
    t[h, ix(n)] = key
    t[h + 1, ix(key)] = n
    t[h + 1, t.shape[1] - 1] = n + 1
    _heap_up(t, h, primary, n)


@njit(cache=True, _nrt=False)
def heap_remove(t: np.ndarray, h: int, primary: np.ndarray, key: int) -> None:
    j = t[h + 1, ix(key)]
    n = heap_size(t, h) - 1
    t[h + 1, t.shape[1] - 1] = n
    t[h + 1, ix(key)] = -1
    if j == n:
        return
    moved = t[h, ix(n)]
    t[h, ix(j)] = moved
    t[h + 1, ix(moved)] = j
    if j > 0 and _heap_before(t, h, primary, moved, t[h, ix((j - 1) >> 1)]):
        _heap_up(t, h, primary, j)
    else:
        _heap_down(t, h, primary, j)


@njit(cache=True, inline="always")
def heap_touch(cs, t: np.ndarray, h: int, primary: np.ndarray, kept: np.ndarray, key: int, insert: bool) -> None:
    """After an access or insert raised `key`'s rank: it sinks in the heap; a new key (`insert`, neither in the heap
    nor kept aside) is pushed, or kept aside while its copy is in flight (no victim could take it before it lands);
    a key kept aside waits to go back with its new rank."""
    j = t[h + 1, ix(key)]
    if j >= 0:
        _heap_down(t, h, primary, j)
    elif insert and not is_kept(kept, key):
        if cs.status[ix(key)] != RESIDENT:
            keep_aside(cs, kept, key)
        else:
            heap_push(t, h, primary, key)


@njit(cache=True, _nrt=False)
def heap_evict(t: np.ndarray, h: int, primary: np.ndarray, kept: np.ndarray, key: int) -> None:
    """`key` left the cache: out of the heap, or out of the keys kept aside."""
    if is_kept(kept, key):
        take_back(kept, key)
    elif t[h + 1, ix(key)] >= 0:
        heap_remove(t, h, primary, key)


@njit(cache=True, _nrt=False)
def heap_victim(cs, t: np.ndarray, h: int, primary: np.ndarray, kept: np.ndarray, stash: np.ndarray,
                in_layer: int) -> int:
    """The least evictable key of the heap, or -1. The refused keys met on top are kept aside (`keep_aside`) until
    a victim could take them, when they go back with their ranks as they are by then (`kept_to_put_back`); a key
    refused by a layer's cap or floor (for this incoming key only) goes back at once. `stash`: scratch of n keys."""
    for j in range(kept_to_put_back(cs, kept, stash)):
        heap_push(t, h, primary, stash[j])
    n_stash = 0
    found = -1
    while heap_size(t, h) > 0:
        key = t[h, 0]
        if is_evictable(cs, key, in_layer):
            found = key
            break
        heap_remove(t, h, primary, key)
        stash[ix(n_stash)] = key
        n_stash += 1
    for j in range(n_stash):
        key = stash[j]
        if is_unpinned(cs, key):
            heap_push(t, h, primary, key)
        else:
            keep_aside(cs, kept, key)
    return found


# ---- resident set ----------------------------------------------------------------------------------

def set_rows(n_keys: int) -> int:
    """Width a resident-set row pair needs."""
    return n_keys + 1


def init_set(members: np.ndarray, pos: np.ndarray) -> None:
    members[:] = -1
    pos[:] = -1
    pos[-1] = 0


def resident_set_state(n_keys: int, i_rows: int, f_rows: int = 0, f_cols: int = 0,
                       params: tuple[float, ...] = (), i_cols: int = 0) -> object:
    """A policy state whose int rows 0 and 1 hold an empty resident set; rows 2.. are the policy's own, at least
    `i_cols` wide (a kept-aside row, `kept_cols`, is wider than the set's)."""
    ps = new_policy_state(f_rows=f_rows, f_cols=f_cols, i_rows=i_rows, i_cols=max(set_rows(n_keys), i_cols),
                          params=params)
    init_set(ps.i[0], ps.i[1])
    return ps


@njit(cache=True, _nrt=False)
def set_add(members: np.ndarray, pos: np.ndarray, key: int) -> None:
    if pos[ix(key)] >= 0:
        return
    n_keys = pos.shape[0] - 1
    n = pos[n_keys]
    members[ix(n)] = key
    pos[ix(key)] = n
    pos[n_keys] = n + 1


@njit(cache=True, _nrt=False)
def set_remove(members: np.ndarray, pos: np.ndarray, key: int) -> None:
    j = pos[ix(key)]
    if j < 0:
        return
    n_keys = pos.shape[0] - 1
    last = pos[n_keys] - 1
    moved = members[ix(last)]
    members[ix(j)] = moved
    pos[ix(moved)] = j
    members[ix(last)] = -1
    pos[ix(key)] = -1
    pos[n_keys] = last


@njit(cache=True, _nrt=False)
def set_size(pos: np.ndarray) -> int:
    return pos[pos.shape[0] - 1]


# ---- seeded RNG: splitmix64, state in one int64 slot ------------------------------------------------

def seed_state(seed: int, stream: int) -> int:
    """A well-mixed starting state for (seed, stream) as a signed int64."""
    z = (int(seed) * 0x9E3779B97F4A7C15 + int(stream) * 0xD1B54A32D192ED03 + 1) & ((1 << 64) - 1)
    return z - (1 << 64) if z >= (1 << 63) else z


@njit(cache=True, inline="always")
def _mix(z: np.uint64) -> np.uint64:
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    return z ^ (z >> np.uint64(31))


@njit(cache=True, _nrt=False)
def rand_u64(state: np.ndarray, idx: int) -> np.uint64:
    z = np.uint64(state[idx]) + _GOLDEN
    state[idx] = np.int64(z)
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    return z ^ (z >> np.uint64(31))


@njit(cache=True, _nrt=False)
def rand_uniform(state: np.ndarray, idx: int) -> float:
    """Uniform in [0, 1)."""
    return float(rand_u64(state, idx) >> np.uint64(11)) * (1.0 / 9007199254740992.0)


@njit(cache=True, _nrt=False)
def rand_below(state: np.ndarray, idx: int, n: int) -> int:
    return np.int64(rand_u64(state, idx) % np.uint64(n))


# ---- small numeric helpers -------------------------------------------------------------------------

@njit(cache=True, inline="always", _nrt=False)
def sort_prefix(buf: np.ndarray, n: int) -> None:
    """Sort buf[:n] ascending in place (insertion sort: n is small, usually top_k); no allocation."""
    for a in range(1, n):
        v = buf[a]
        b = a - 1
        while b >= 0 and buf[b] > v:
            buf[b + 1] = buf[b]
            b -= 1
        buf[b + 1] = v


@njit(cache=True, _nrt=False)
def percentile_inplace(buf: np.ndarray, n: int, q: float) -> float:
    """numpy's default (linear) percentile of buf[:n], sorting buf[:n] in place; no allocation."""
    sort_prefix(buf, n)
    if n == 1:
        return buf[0]
    pos = q / 100.0 * (n - 1)
    lo = int(np.floor(pos))
    hi = min(lo + 1, n - 1)
    return buf[lo] + (buf[hi] - buf[lo]) * (pos - lo)


# ---- prefetch helpers ------------------------------------------------------------------------------

@njit(cache=True, inline="always")
def _push_candidates(cs, scores: np.ndarray, cand: np.ndarray, c: int, layer: int, n_pick: int,
                     n_out: int) -> int:
    """`push_top`'s selection and output, for the candidates `cand[:c]` (ids ascending, score >
    min_score)."""
    base = layer * cs.cur_key.shape[0]
    n_take = min(n_pick, c)
    if n_take == c:
        # all candidates are taken: an insertion sort by (score desc, id asc) gives the same order as
        # the selection below (the key is a strict total order), in fewer steps
        for a in range(1, c):
            e = cand[a]
            se = scores[ix(e)]
            j = a - 1
            while j >= 0 and (scores[ix(cand[j])] < se or (scores[ix(cand[j])] == se and cand[j] > e)):
                cand[j + 1] = cand[j]
                j -= 1
            cand[j + 1] = e
    else:
        for pick in range(n_take):
            j_best = pick
            for j in range(pick + 1, c):
                e, b = cand[j], cand[j_best]
                if scores[ix(e)] > scores[ix(b)] or (scores[ix(e)] == scores[ix(b)] and e < b):
                    j_best = j
            best = cand[j_best]
            cand[j_best] = cand[pick]
            cand[pick] = best
    status = cs.status
    buf = cs.pf_buf
    n_in = n_out
    if n_in == 0 and n_take <= buf.shape[0]:
        # nothing in the buffer to repeat: every pick is written and kept when absent, without a
        # branch on its status (which mispredicts)
        for pick in range(n_take):
            key = base + cand[pick]
            buf[n_out] = key
            n_out += status[ix(key)] == ABSENT
        return n_out
    for pick in range(n_take):
        key = base + cand[pick]
        if status[key] != ABSENT:
            continue
        dup = False
        for j in range(n_in):  # picks are distinct: only what was in the buffer before can repeat
            if buf[j] == key:
                dup = True
                break
        if not dup:
            buf[n_out] = key
            n_out += 1
    return n_out


@njit(cache=True, _nrt=False)
def push_top(cs, scores: np.ndarray, layer: int, n_pick: int, n_out: int, min_score: float) -> int:
    """Pick the `n_pick` experts of `layer` with the highest scores (> min_score; ties to the lower id)
    and append the absent ones to `cs.pf_buf[n_out:]`, best first. A pick that is already resident, in
    flight or in the buffer uses up its place: the policy wanted it and has it, so it is not replaced by
    a worse guess. Returns the new buffer length. O(E + candidates^2), no allocation (`cs.pick_buf`)."""
    n_exp = cs.cur_key.shape[0]
    cand = cs.pick_buf
    c = 0
    if n_exp <= 64:
        # a bit per candidate (branch-free), read back lowest first: ids ascending, no stores per expert
        bits = np.uint64(0)
        for e in range(n_exp):
            bits |= np.uint64(scores[e] > min_score) << np.uint64(e)
        while bits != np.uint64(0):
            cand[c] = np.int64(trailing_zeros(bits))
            bits &= bits - np.uint64(1)
            c += 1
    else:
        for e in range(n_exp):  # branch-free: usually only top_k-odd experts pass
            cand[c] = e
            c += scores[e] > min_score
    return _push_candidates(cs, scores, cand, c, layer, n_pick, n_out)


@njit(cache=True, _nrt=False)
def true_layer_mass(tv, p: int, layer: int, out: np.ndarray) -> None:
    """Routing mass per expert of `layer` in pass p as recorded (gate scores, else 1/top_k per token)."""
    out[:] = 0.0
    k = tv.experts.shape[2]
    has_scores = tv.dims[0] == 1
    for tok in range(tv.pass_offsets[p], tv.pass_offsets[p + 1]):
        for s in range(k):
            e = expert_id(tv, tok, layer, s)
            out[e] += np.float64(tv.scores[tok, layer, s]) if has_scores else 1.0 / k


@njit(cache=True, _nrt=False)
def predicted_layer_mass(tv, p: int, layer: int, accuracy: float, rng: np.ndarray, rng_idx: int,
                         out: np.ndarray) -> None:
    """What a next-layer speculator says about `layer` in pass p.

    With recorded predictions (tv.dims[1] == 1) each predicted expert gets 1/top_k per token. Without,
    a seeded stand-in: each routed (token, slot) is predicted right with probability `accuracy`, else
    as a uniformly drawn wrong expert; its weight is the recorded gate score (or 1/top_k).
    """
    out[:] = 0.0
    k = tv.experts.shape[2]
    n_exp = out.shape[0]
    has_scores = tv.dims[0] == 1
    recorded = tv.dims[1] == 1
    for tok in range(tv.pass_offsets[p], tv.pass_offsets[p + 1]):
        for s in range(k):
            if recorded:
                out[predicted_id(tv, tok, layer, s)] += 1.0 / k
                continue
            e = expert_id(tv, tok, layer, s)
            w = np.float64(tv.scores[tok, layer, s]) if has_scores else 1.0 / k
            if n_exp > 1 and rand_uniform(rng, rng_idx) >= accuracy:
                wrong = rand_below(rng, rng_idx, n_exp - 1)
                e = wrong if wrong < e else wrong + 1
            out[e] += w


@njit(cache=True, _nrt=False)
def predict_push(cs, tv, p: int, layer: int, accuracy: float, rng: np.ndarray, rng_idx: int,
                 out: np.ndarray, n_out: int) -> int:
    """`predicted_layer_mass` then `push_top(cs, out, layer, n_experts, n_out, 0.0)`, fused: the same
    draws and the same picks, in work proportional to the experts the prediction touched, not to the
    layer's width. `out` (the policy's scratch) must be all zero on entry and is left all zero: only
    touched entries are written, and they are cleared once picked. The candidates are the touched experts
    with mass > 0.0 (an untouched expert has 0.0, never > 0.0), ids ascending, from a bit mask: a
    64-bit local when n_experts <= 64, else `cs.mask`'s words."""
    n_exp = out.shape[0]
    narrow = n_exp <= 64
    experts = tv.experts
    high = tv.experts_hi
    predicted = tv.predicted
    predicted_hi = tv.predicted_hi
    k = experts.shape[2]
    has_scores = tv.dims[0] == 1
    recorded = tv.dims[1] == 1
    words = cs.mask
    cand = cs.pick_buf
    c = 0
    bits = np.uint64(0)
    # the RNG state stays in a local (stored back once): the stores to `out` would otherwise make
    # every draw reload it; the draws are `rand_uniform` / `rand_below`'s, in the same order
    state = np.uint64(rng[rng_idx])
    for tok in range(tv.pass_offsets[p], tv.pass_offsets[p + 1]):
        for s in range(k):
            if recorded:
                e = read_id(predicted, predicted_hi, tok, layer, s)
                w = 1.0 / k
            else:
                e = read_id(experts, high, tok, layer, s)
                w = np.float64(tv.scores[ix(tok), ix(layer), s]) if has_scores else 1.0 / k
                if n_exp > 1:
                    state += _GOLDEN
                    u = float(_mix(state) >> np.uint64(11)) * (1.0 / 9007199254740992.0)
                    if u >= accuracy:
                        state += _GOLDEN
                        wrong = np.int64(_mix(state) % np.uint64(n_exp - 1))
                        e = wrong if wrong < e else wrong + 1
            out[ix(e)] += w
            if narrow:
                bits |= np.uint64(1) << np.uint64(e)
            else:
                words[ix(e >> 6)] |= np.uint64(1) << np.uint64(e & 63)
    rng[rng_idx] = np.int64(state)
    # keep the touched experts with mass > 0.0; the others are cleared now (with scores >= 0 they hold 0.0)
    if narrow:
        while bits != np.uint64(0):
            e = np.int64(trailing_zeros(bits))
            bits &= bits - np.uint64(1)
            v = out[ix(e)]
            out[ix(e)] = v if v > 0.0 else 0.0
            cand[c] = e
            c += v > 0.0
    else:
        n_touched = _mask_ids(words, cand, 0)
        for j in range(n_touched):
            e = cand[j]
            v = out[ix(e)]
            out[ix(e)] = v if v > 0.0 else 0.0
            cand[c] = e
            c += v > 0.0
    n = _push_candidates(cs, out, cand, c, layer, cs.cur_key.shape[0], n_out)
    for j in range(c):  # `_push_candidates` permutes cand[:c]: the same experts
        out[ix(cand[j])] = 0.0
    return n
