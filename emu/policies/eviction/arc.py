"""Adaptive Replacement Cache (ARC): Megiddo & Modha, "ARC: A Self-Tuning, Low Overhead Replacement Cache",
FAST'03, Fig. 4 (cases I-IV and the subroutine REPLACE).

Two LRU lists of resident keys, T1 (seen once recently) and T2 (seen at least twice), and two ghost lists
of evicted keys, B1 (left T1) and B2 (left T2). A hit moves the key to T2's MRU end. A miss on a B1 ghost
means T1 was too small: the target size p of T1 grows by max(|B2| / |B1|, 1) (at most c); a miss on a B2
ghost shrinks it by max(|B1| / |B2|, 1) (at least 0); either ghost enters T2 when its copy takes a slot,
a new key enters T1. The victim is REPLACE's: T1's LRU if |T1| >= 1 and (|T1| > p, or |T1| == p and the
incoming key was a B2 ghost), else T2's LRU; an evicted T1 key becomes B1's MRU ghost, a T2 key B2's.

Sizes are counted in expert slots at the model's precision: c = capacity_bytes // expert_bytes.

State (`ps.i` rows `I`, `ps.f` rows `F`):
- `I.LINKS`: four circular doubly linked lists over keys, one per list of `C` (T1, T2, B1, B2), closed by
  sentinel nodes n_keys + list: node k's previous at `2k`, its next at `2k + 1`; a sentinel's next is the
  list's LRU end, its previous the MRU end. A key is on at most one list.
- `I.LIST[key]`: the list (`C.T1` .. `C.B2`) the key is on, or -1.
- `I.MARK[key]`: set by a ghost hit at the miss (B1 or B2) until the key's copy takes a slot.
- `I.UNUSED[key]`: 1 while a prefetched key waits for its first access.
- `I.COUNT[C.T1 .. C.B2]`: the lists' lengths; `I.COUNT[C.SLOTS]`: c.
- `F.ADAPT[A.P]`: the target p, a real number in [0, c] (the paper's increments are ratios).

Cost: O(1) per event (a ghost trim removes what an eviction added: amortised O(1)); O(1) per victim plus
the protected or in-flight keys skipped at the chosen list's LRU end.

Where this departs from the paper, and why:
- The directory bounds |T1| + |B1| <= c and |T1| + |T2| + |B1| + |B2| <= 2c are restored when a key enters
  the cache (EV_INSERT: drop B1's LRU ghosts, then B2's, else B1's), not at the miss before REPLACE. In the
  paper's setting the result is the same: REPLACE reads neither ghost list, and in case IV(A) with
  |T1| = c (the paper deletes T1's LRU without keeping a ghost) the evicted key becomes B1's only ghost and
  is the one dropped. Here the rule also holds for inserts no miss announced (prefetches, waiting demand
  copies) and for misses the miss policy serves without a copy (drop, CPU, substitute).
- "LRU" means the first key from the LRU end that `is_evictable` accepts: protected (needed by the layer
  computing) and in-flight keys are skipped, and the core's layer caps and floors may refuse others. If the
  chosen list has none, the other list's is taken; -1 if neither has one.
- A copy takes its slot (EV_INSERT) before it lands, so T1 and T2 include in-flight keys. A walk starts after
  the run of in-flight keys at the list's LRU end that an earlier walk met, while no copy has landed since
  (`helpers.list_first_evictable_after_run`; `I.RUN`): the same victim, without walking past the copies still
  queued at every victim of a gate. The core may call
  `victim` more than once for one incoming key (a full-precision copy replacing lower-precision ones);
  each call applies REPLACE to the lists as they are then. A lower-precision copy counts as one key, so
  |T1| + |T2| may exceed c; p stays in [0, c].
- Prefetches are inserts without a request, which the paper does not have: a prefetched key enters T1 (T2
  if a ghost hit marked it), leaves a ghost list without adapting p, and its first access is its first
  reference (it moves to T1's MRU end, not to T2). A miss the miss policy does not fetch still adapts p;
  the key keeps its mark until a copy of it takes a slot.
"""

from __future__ import annotations

from enum import auto

from numba import njit

from ...kernel.helpers import (
    init_lists,
    init_runs,
    ix,
    key_layer,
    list_first_evictable_after_run,
    list_forget_run,
    list_next,
    list_put,
    list_sentinel,
    list_take,
)
from ...kernel.hooks import EV_ACCESS, EV_EVICT, EV_INSERT, EV_MISS, EVENT_SIG, VICTIM_SIG, hook
from ...kernel.layout import PREFETCH, Fields, new_policy_state
from ..api import Capabilities, Policy, PolicyContext, register


class I(Fields):
    """Rows of `ps.i`."""

    LINKS = auto()
    LIST = auto()
    MARK = auto()
    UNUSED = auto()
    COUNT = auto()
    RUN = auto()  # per list, the run of in-flight keys at its LRU end a walk met (list_first_evictable_after_run)


class C(Fields):
    """The lists (values of `I.LIST`, sentinel offsets) and the columns of `I.COUNT`."""

    T1 = auto()
    T2 = auto()
    B1 = auto()
    B2 = auto()
    SLOTS = auto()


class F(Fields):
    """Rows of `ps.f`."""

    ADAPT = auto()


class A(Fields):
    """Columns of `F.ADAPT`."""

    P = auto()


_NONE = -1  # I.LIST of a key on no list
_N_LISTS = 4
_FROM_B1 = 1  # I.MARK values (0: no mark)
_FROM_B2 = 2


def init(ctx: PolicyContext, params: dict[str, float]) -> object:
    n = ctx.n_layers * ctx.n_experts
    ps = new_policy_state(f_rows=len(F), f_cols=len(A), i_rows=len(I), i_cols=2 * (n + _N_LISTS))
    ps.i[I.LIST, :] = _NONE
    init_lists(ps.i[I.LINKS], _N_LISTS)
    ps.i[I.COUNT, C.SLOTS] = ctx.capacity_bytes // ctx.expert_bytes
    init_runs(ps.i[I.RUN], ps.i[I.LINKS], _N_LISTS)
    return ps


@njit(cache=True, inline="always")
def _sentinel(links, lst: int) -> int:
    return list_sentinel(links, _N_LISTS, lst)


@njit(cache=True, inline="always")
def _remove(i, key: int) -> None:
    """Take `key` off its list (it is on one)."""
    lst = i[I.LIST, ix(key)]
    list_forget_run(i[I.RUN], lst, key, _sentinel(i[I.LINKS], lst))
    list_take(i[I.LINKS], i[I.LIST], i[I.COUNT], key)


@njit(cache=True, inline="always")
def _push_mru(i, key: int, lst: int) -> None:
    """Put `key` (on no list) at the MRU end of `lst`."""
    list_put(i[I.LINKS], i[I.LIST], i[I.COUNT], key, lst, _N_LISTS)


@njit(cache=True, inline="always")
def _drop_lru(i, lst: int) -> None:
    links = i[I.LINKS]
    _remove(i, list_next(links, _sentinel(links, lst)))


@njit(cache=True, inline="always")
def _bound_directory(i) -> None:
    count = i[I.COUNT]
    c = count[C.SLOTS]
    while count[C.T1] + count[C.B1] > c and count[C.B1] > 0:
        _drop_lru(i, C.B1)
    while count[C.T1] + count[C.T2] + count[C.B1] + count[C.B2] > 2 * c and count[C.B1] + count[C.B2] > 0:
        if count[C.B2] > 0:
            _drop_lru(i, C.B2)
        else:
            _drop_lru(i, C.B1)


@njit(cache=True, inline="always")
def _lru_evictable(i, cs, lst: int, in_layer: int) -> int:
    links = i[I.LINKS]
    return list_first_evictable_after_run(links, _sentinel(links, lst), cs, in_layer, i[I.RUN], lst)


@hook(EVENT_SIG)
def on_event(ps, cs, tv, ev, key, t):
    i = ps.i
    if ev == EV_ACCESS:
        lst = i[I.LIST, ix(key)]
        if lst == C.T1 and i[I.UNUSED, ix(key)] == 1:  # a prefetched key's first reference
            i[I.UNUSED, ix(key)] = 0
            _remove(i, key)
            _push_mru(i, key, C.T1)
        elif lst == C.T1 or lst == C.T2:  # case I
            _remove(i, key)
            _push_mru(i, key, C.T2)
    elif ev == EV_MISS:
        lst = i[I.LIST, ix(key)]
        count = i[I.COUNT]
        c = float(count[C.SLOTS])
        p = ps.f[F.ADAPT, A.P]
        if lst == C.B1:  # case II
            step = count[C.B2] / count[C.B1]
            p += step if step > 1.0 else 1.0
            ps.f[F.ADAPT, A.P] = p if p < c else c
            _remove(i, key)
            i[I.MARK, ix(key)] = _FROM_B1
        elif lst == C.B2:  # case III
            step = count[C.B1] / count[C.B2]
            p -= step if step > 1.0 else 1.0
            ps.f[F.ADAPT, A.P] = p if p > 0.0 else 0.0
            _remove(i, key)
            i[I.MARK, ix(key)] = _FROM_B2
    elif ev == EV_INSERT:
        lst = i[I.LIST, ix(key)]
        if lst == C.B1 or lst == C.B2:  # a prefetch of a ghost: no miss, no adaptation
            _remove(i, key)
        if i[I.MARK, ix(key)] != 0:
            i[I.MARK, ix(key)] = 0
            _push_mru(i, key, C.T2)
        else:
            _push_mru(i, key, C.T1)
            i[I.UNUSED, ix(key)] = 1 if cs.copy_prio[ix(key)] == PREFETCH else 0
        _bound_directory(i)
    elif ev == EV_EVICT:
        lst = i[I.LIST, ix(key)]
        i[I.UNUSED, ix(key)] = 0
        if lst == C.T1:
            _remove(i, key)
            _push_mru(i, key, C.B1)
        elif lst == C.T2:
            _remove(i, key)
            _push_mru(i, key, C.B2)
    return 0


@hook(VICTIM_SIG)
def victim(ps, cs, tv, incoming, t):
    in_layer = key_layer(cs, incoming)
    i = ps.i
    t1 = i[I.COUNT, C.T1]
    p = ps.f[F.ADAPT, A.P]
    if t1 >= 1 and (t1 > p or (i[I.MARK, ix(incoming)] == _FROM_B2 and t1 == p)):
        key = _lru_evictable(i, cs, C.T1, in_layer)
        return key if key >= 0 else _lru_evictable(i, cs, C.T2, in_layer)
    key = _lru_evictable(i, cs, C.T2, in_layer)
    return key if key >= 0 else _lru_evictable(i, cs, C.T1, in_layer)


POLICY = register(Policy(
    name="arc", kind="eviction", hooks={"victim": victim, "on_event": on_event}, init=init,
    capabilities=Capabilities(live=True, miss_events=True),
    doc="ARC (Megiddo & Modha, FAST'03): recency list T1 and frequency list T2 sized by ghost hits."))
