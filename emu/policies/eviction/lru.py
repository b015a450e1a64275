"""Least recently used: evict the expert whose last access is oldest.

State: a circular doubly linked list over keys in access order, closed by a sentinel node S = n_keys, in
one int row `i[0]`: key k's previous node at `2k`, its next at `2k + 1` (both in one cache line); the
sentinel's next is the head (oldest), its previous the tail. A key off the list has previous -1. Access
and insert move a key to the tail in O(1) with no branch on the ends (the sentinel stands in for them);
the victim is the first evictable key from the head, which skips only the few keys that are protected
or in flight.
"""

from __future__ import annotations

from numba import njit

from ...engines.core import is_evictable
from ...engines.state import new_policy_state
from ..api import EV_ACCESS, EV_EVICT, EV_INSERT, KERNEL_SIG, Policy, PolicyContext
from ..kernel_util import ix

_OFF = -1  # a key's previous node while it is off the list


def init(ctx: PolicyContext, params: dict[str, float]) -> object:
    n = ctx.n_layers * ctx.n_experts
    ps = new_policy_state(i_rows=1, i_cols=2 * (n + 1))
    ps.i[0, :] = _OFF
    ps.i[0, 2 * n] = n  # the empty list: the sentinel is its own previous and next
    ps.i[0, 2 * n + 1] = n
    return ps


@njit(cache=True, inline="always")
def _unlink(links, key: int) -> None:
    prev = links[ix(2 * key)]
    nxt = links[ix(2 * key + 1)]
    links[ix(2 * prev + 1)] = nxt
    links[ix(2 * nxt)] = prev


@njit(cache=True, inline="always")
def _append(links, key: int) -> None:
    s = (links.shape[0] >> 1) - 1
    tail = links[ix(2 * s)]
    links[ix(2 * key)] = tail
    links[ix(2 * key + 1)] = s
    links[ix(2 * tail + 1)] = key
    links[ix(2 * s)] = key


@njit(KERNEL_SIG, cache=True, _nrt=False)
def event(ps, cs, tv, ev, key, t):
    links = ps.i[0]
    if ev in (EV_ACCESS, EV_INSERT):
        if links[ix(2 * key)] != _OFF:
            _unlink(links, key)
        _append(links, key)
    elif ev == EV_EVICT and links[ix(2 * key)] != _OFF:
        _unlink(links, key)
        links[ix(2 * key)] = _OFF
    return 0


@njit(KERNEL_SIG, cache=True, _nrt=False)
def victim(ps, cs, tv, in_layer, _b, t):
    links = ps.i[0]
    s = (links.shape[0] >> 1) - 1
    key = links[ix(2 * s + 1)]
    while key != s:
        if is_evictable(cs, key, in_layer):
            return key
        key = links[ix(2 * key + 1)]
    return -1


POLICY = Policy(name="lru", kind="eviction", kernels=(victim, event), init=init,
                doc="Least recently used expert goes first.")
