"""Random eviction: a uniformly drawn evictable resident expert, from a seeded generator (a baseline).

The draw: r uniform below the number of evictable keys, then the r-th evictable key in the resident set's order.
State: the resident set (rows `I.MEMBERS`, `I.POS`), `i[I.SCALARS, C.RNG]` the splitmix64 state (seeded from the
scenario seed, so runs repeat exactly), the members whose copy is in flight (`helpers.keep_aside`, told of
landings by the core's log) and a bit per place in the resident set (`I.BITS`).
Cost: O(1) per event. Per victim without a same-layer cap or layer floors (a refused key is then one in flight or
protected, and only the layer computing has protected keys): O(members in flight + the layer's entries +
resident / 64) to mark the refused keys' places and find the r-th unmarked one; else O(resident), a scan.
"""

from __future__ import annotations

from enum import auto

import numpy as np
from numba import njit
from numba.cpython.unsafe.numbers import trailing_zeros

from ...kernel.helpers import (
    is_evictable,
    is_kept,
    is_unpinned,
    ix,
    keep_aside,
    kept_cols,
    kept_in_flight,
    kept_in_flight_key,
    kept_to_put_back,
    key_layer,
    rand_below,
    resident_set_state,
    seed_state,
    set_add,
    set_remove,
    set_size,
    take_back,
)
from ...kernel.hooks import EV_EVICT, EV_INSERT, EVENT_SIG, VICTIM_SIG, hook
from ...kernel.layout import RESIDENT, SC, Fields
from ..api import Capabilities, Policy, PolicyContext, register


class I(Fields):
    """Rows of `ps.i`."""

    MEMBERS = auto()  # the resident set's keys (helpers.resident_set_state: rows MEMBERS, POS first)
    POS = auto()  # each key's index in MEMBERS
    SCALARS = auto()  # the scalars, at the columns C
    KEPT = auto()  # the members whose copy is in flight (helpers.keep_aside)
    STASH = auto()  # a victim's scratch
    BITS = auto()  # a victim's scratch: a bit per place in MEMBERS, set for a refused key (all zero between victims)


class C(Fields):
    """Columns of row I.SCALARS."""

    RNG = auto()  # splitmix64 state


def init(ctx: PolicyContext, params: dict[str, float]) -> object:
    n = ctx.n_layers * ctx.n_experts
    ps = resident_set_state(n, i_rows=len(I), i_cols=kept_cols(n))
    ps.i[I.SCALARS, C.RNG] = seed_state(ctx.seed, 1)
    return ps


@hook(EVENT_SIG)
def on_event(ps, cs, tv, ev, key, t):
    i = ps.i
    if ev == EV_INSERT:
        if i[I.POS, key] < 0 and cs.status[key] != RESIDENT:
            keep_aside(cs, i[I.KEPT], key)
        set_add(i[I.MEMBERS], i[I.POS], key)
    elif ev == EV_EVICT:
        if is_kept(i[I.KEPT], key):
            take_back(i[I.KEPT], key)
        set_remove(i[I.MEMBERS], i[I.POS], key)
    return 0


@njit(cache=True, inline="always")
def _mark(bits: np.ndarray, place: int) -> int:
    """Set the bit of `place`; 1 if it was clear."""
    word = ix(place >> 6)
    bit = np.int64(1) << (place & 63)
    old = bits[word]
    bits[word] = old | bit
    return 1 - ((old >> (place & 63)) & 1)


@njit(cache=True, inline="always")
def _ones(x: np.uint64) -> int:
    """The set bits of x (a population count, SWAR)."""
    x = x - ((x >> np.uint64(1)) & np.uint64(0x5555555555555555))
    x = (x & np.uint64(0x3333333333333333)) + ((x >> np.uint64(2)) & np.uint64(0x3333333333333333))
    x = (x + (x >> np.uint64(4))) & np.uint64(0x0F0F0F0F0F0F0F0F)
    return np.int64((x * np.uint64(0x0101010101010101)) >> np.uint64(56))


@njit(cache=True, _nrt=False)
def _fast(cs) -> bool:
    """Is a refused key one in flight or protected (no same-layer cap, no layer floor)?"""
    if cs.sc[SC.SAME_LAYER] == 1:
        return False
    for layer in range(cs.layer_floor.shape[0]):  # noqa: SIM110 (numba: no generator expressions)
        if cs.layer_floor[layer] > 0:
            return False
    return True


@njit(cache=True, _nrt=False)
def _victim_marked(ps, cs) -> int:
    """The draw with the refused members marked by place: those in flight (kept aside, brought up to date with the
    landings) and the protected ones, all among the layer computing's entries (the core protects nothing else:
    tests/test_run_invariants.py checks it at every victim of runs on both engines)."""
    i = ps.i
    n = set_size(i[I.POS])
    kept = i[I.KEPT]
    bits = i[I.BITS]
    kept_to_put_back(cs, kept, i[I.STASH])  # the landed ones leave the kept lists: resident members now
    refused = 0
    for j in range(kept_in_flight(kept)):
        refused += _mark(bits, i[I.POS, ix(kept_in_flight_key(kept, j))])
    for e in range(cs.sc[SC.NCUR]):
        for key in (cs.cur_key[ix(e)], cs.cur_sub[ix(e)]):
            if key >= 0 and i[I.POS, ix(key)] >= 0 and not is_unpinned(cs, key):
                refused += _mark(bits, i[I.POS, ix(key)])
    found = -1
    count = n - refused
    if count > 0:
        r = rand_below(i[I.SCALARS], C.RNG, count)
        for w in range((n + 63) >> 6):
            valid = min(64, n - 64 * w)
            free = ~np.uint64(bits[w])
            if valid < 64:
                free &= (np.uint64(1) << np.uint64(valid)) - np.uint64(1)
            zeros = _ones(free)
            if r < zeros:
                for _ in range(r):
                    free &= free - np.uint64(1)
                found = i[I.MEMBERS, ix(64 * w + trailing_zeros(free))]
                break
            r -= zeros
    for w in range((n + 63) >> 6):
        bits[w] = 0
    return found


@hook(VICTIM_SIG)
def victim(ps, cs, tv, incoming, t):
    if _fast(cs):
        return _victim_marked(ps, cs)
    in_layer = key_layer(cs, incoming)
    i = ps.i
    n = set_size(i[I.POS])
    count = 0
    for j in range(n):
        if is_evictable(cs, i[I.MEMBERS, j], in_layer):
            count += 1
    if count == 0:
        return -1
    r = rand_below(i[I.SCALARS], C.RNG, count)
    for j in range(n):
        key = i[I.MEMBERS, j]
        if is_evictable(cs, key, in_layer):
            if r == 0:
                return key
            r -= 1
    return -1


POLICY = register(Policy(
    name="random", kind="eviction", hooks={"victim": victim, "on_event": on_event}, init=init,
    capabilities=Capabilities(live=True),
    doc="Evict a uniformly drawn evictable expert (seeded)."))
