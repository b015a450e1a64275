"""Least recently used: evict the expert whose last access is oldest.

State: a doubly linked list over keys in access order (i[0] prev, i[1] next; i[2, 0] head = oldest,
i[2, 1] tail). Access and insert move a key to the tail in O(1); the victim is the first evictable key
from the head, which skips only the few keys that are protected or in flight.
"""

from __future__ import annotations

from numba import njit

from ...engines.core import is_evictable
from ...engines.state import new_policy_state
from ..api import EV_ACCESS, EV_EVICT, EV_INSERT, KERNEL_SIG, Policy, PolicyContext

_NONE = -1


def init(ctx: PolicyContext, params: dict[str, float]) -> object:
    n = ctx.n_layers * ctx.n_experts
    ps = new_policy_state(i_rows=4, i_cols=max(n, 2))
    ps.i[0, :] = _NONE
    ps.i[1, :] = _NONE
    ps.i[2, :2] = _NONE
    return ps


@njit(cache=True, _nrt=False)
def _unlink(i, key: int) -> None:
    prev = i[0, key]
    nxt = i[1, key]
    if prev != _NONE:
        i[1, prev] = nxt
    else:
        i[2, 0] = nxt
    if nxt != _NONE:
        i[0, nxt] = prev
    else:
        i[2, 1] = prev
    i[0, key] = _NONE
    i[1, key] = _NONE
    i[3, key] = 0


@njit(cache=True, _nrt=False)
def _append(i, key: int) -> None:
    tail = i[2, 1]
    i[0, key] = tail
    i[1, key] = _NONE
    if tail != _NONE:
        i[1, tail] = key
    else:
        i[2, 0] = key
    i[2, 1] = key
    i[3, key] = 1


@njit(KERNEL_SIG, cache=True, _nrt=False)
def event(ps, cs, tv, ev, key, t):
    i = ps.i
    if ev in (EV_ACCESS, EV_INSERT):
        if i[3, key] == 1:
            _unlink(i, key)
        _append(i, key)
    elif ev == EV_EVICT and i[3, key] == 1:
        _unlink(i, key)
    return 0


@njit(KERNEL_SIG, cache=True, _nrt=False)
def victim(ps, cs, tv, in_layer, _b, t):
    key = ps.i[2, 0]
    while key != _NONE:
        if is_evictable(cs, key, in_layer):
            return key
        key = ps.i[1, key]
    return -1


POLICY = Policy(name="lru", kind="eviction", kernels=(victim, event), init=init,
                doc="Least recently used expert goes first.")
