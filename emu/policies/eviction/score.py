"""Lowest accumulated gate score: evict the expert that has carried the least routing mass.

Each access adds the routing mass the expert carried in that layer (sum of its tokens' gate scores, or
1/top_k per token without scores); with `decay` < 1 the sum fades by `decay` per pass, so the policy
tracks recent importance rather than all-time importance.
State: `i[I.PASS, key]` the pass of the last update, `i[I.LAST, key]` the clock of the last access (ties: least
recent, then the lower key); `f[F.SCORE, key]` the accumulated score at that pass; `p[P.DECAY]`. Without decay
(1, the default) a score only rises, and the resident keys are a binary min-heap on (score, last, key)
(`helpers.heap_*`), refused keys kept aside as LFU's; with decay the scores fade, and a victim scans the resident
set (`I.MEMBERS`, `I.MPOS`) for the lowest faded score.
Cost: O(entries of the layer) per access (to find its mass), plus O(log resident) without decay; per victim
O((1 + refused keys newly met) log resident) without decay, O(resident) with.
"""

from __future__ import annotations

from enum import auto

from numba import njit

from ...kernel.helpers import (
    HEAP_ROWS,
    heap_evict,
    heap_touch,
    heap_victim,
    init_heap,
    init_set,
    is_evictable,
    kept_cols,
    key_layer,
    set_add,
    set_remove,
    set_size,
)
from ...kernel.hooks import EV_ACCESS, EV_EVICT, EV_INSERT, EVENT_SIG, VICTIM_SIG, hook
from ...kernel.layout import DEMAND, SC, Fields, new_policy_state
from ..api import Param, Policy, PolicyContext, param_values, register


class I(Fields):
    """Rows of `ps.i`."""

    HEAP = auto()  # without decay, the heap (helpers.HEAP_ROWS rows from here: keys, index per key, last access)
    POS = auto()
    LAST = auto()  # per key: clock of the last access (ties: least recent)
    PASS = auto()  # per key: pass of the last score update
    MEMBERS = auto()  # with decay, the resident set's keys (helpers.set_add)
    MPOS = auto()  # each key's index in MEMBERS
    STASH = auto()  # a victim's scratch
    KEPT = auto()  # without decay, the keys kept aside between victims (helpers.keep_aside)


assert I.LAST == I.HEAP + HEAP_ROWS - 1  # the heap's rows, in the order helpers.heap_* read them


class F(Fields):
    """Rows of `ps.f`."""

    SCORE = auto()  # per key: the accumulated score at pass I.PASS


class P(Fields):
    """`ps.p`: the resolved parameters (param_values)."""

    DECAY = auto()


def init(ctx: PolicyContext, params: dict[str, float]) -> object:
    n = ctx.n_layers * ctx.n_experts
    ps = new_policy_state(f_rows=len(F), f_cols=n, i_rows=len(I), i_cols=max(n + 1, kept_cols(n)),
                          params=param_values(P, params))
    init_heap(ps.i, I.HEAP)
    init_set(ps.i[I.MEMBERS], ps.i[I.MPOS])
    return ps


@njit(cache=True, inline="always")
def _fades(ps) -> bool:
    return ps.p[P.DECAY] != 1.0


@njit(cache=True, _nrt=False)
def _current(ps, key: int, p: int) -> float:
    gap = p - ps.i[I.PASS, key]
    if gap <= 0 or ps.p[P.DECAY] == 1.0:
        return ps.f[F.SCORE, key]
    return ps.f[F.SCORE, key] * ps.p[P.DECAY] ** gap


@njit(cache=True, _nrt=False)
def _add_mass(ps, cs, key: int) -> None:
    if key_layer(cs, key) != cs.sc[SC.LAYER]:
        return
    for j in range(cs.sc[SC.NCUR]):
        if cs.cur_key[j] == key or cs.cur_sub[j] == key:
            p = cs.sc[SC.PASS]
            ps.f[F.SCORE, key] = _current(ps, key, p) + cs.cur_mass[j]
            ps.i[I.PASS, key] = p
            return


@hook(EVENT_SIG)
def on_event(ps, cs, tv, ev, key, t):
    i = ps.i
    if ev == EV_ACCESS:
        _add_mass(ps, cs, key)
        i[I.LAST, key] = cs.sc[SC.CLOCK]
    elif ev == EV_INSERT:
        if _fades(ps):
            set_add(i[I.MEMBERS], i[I.MPOS], key)
        if cs.copy_prio[key] == DEMAND:
            _add_mass(ps, cs, key)
        i[I.LAST, key] = cs.sc[SC.CLOCK]
    elif ev == EV_EVICT:
        if _fades(ps):
            set_remove(i[I.MEMBERS], i[I.MPOS], key)
        else:
            heap_evict(i, I.HEAP, ps.f[F.SCORE], i[I.KEPT], key)
        return 0
    else:
        return 0
    if not _fades(ps):  # the key's score or last access rose
        heap_touch(cs, i, I.HEAP, ps.f[F.SCORE], i[I.KEPT], key, ev == EV_INSERT)
    return 0


@hook(VICTIM_SIG)
def victim(ps, cs, tv, incoming, t):
    in_layer = key_layer(cs, incoming)
    i = ps.i
    if not _fades(ps):
        return heap_victim(cs, i, I.HEAP, ps.f[F.SCORE], i[I.KEPT], i[I.STASH], in_layer)
    p = cs.sc[SC.PASS]
    best = -1
    best_s = 0.0
    for j in range(set_size(i[I.MPOS])):
        key = i[I.MEMBERS, j]
        if not is_evictable(cs, key, in_layer):
            continue
        s = _current(ps, key, p)
        if best < 0 or s < best_s or (s == best_s and (i[I.LAST, key] < i[I.LAST, best] or (
                i[I.LAST, key] == i[I.LAST, best] and key < best))):
            best = key
            best_s = s
    return best


POLICY = register(Policy(
    name="score", kind="eviction", hooks={"victim": victim, "on_event": on_event}, init=init,
    params={"decay": Param(1.0, 0.0, 1.0, "per-pass fade of the accumulated score (1: none)")},
    doc="Evict the expert with the lowest accumulated gate score."))
