"""The chosen policy stack as the shared core sees it: six kernels and five policy states in one struct.

One borrowed pointer (emu/engines/structs.py) instead of a typed list plus a tuple: the core reads
`pk.event` as a field load and calls it as a first-class function (~2 ns), where a typed-list lookup
cost ~10 ns per call.
"""

from __future__ import annotations

from typing import Any

from numba import njit
from numba.experimental import structref

from ..policies.api import KERNEL_T
from .state import PS_T
from .structs import StructOwnerType, StructProxy, StructView, payload_addr

STACK_FIELDS: tuple[tuple[str, Any], ...] = (
    ("victim", KERNEL_T), ("event", KERNEL_T), ("prefetch", KERNEL_T), ("miss", KERNEL_T),
    ("route", KERNEL_T), ("partition", KERNEL_T),
    ("s_evict", PS_T), ("s_prefetch", PS_T), ("s_miss", PS_T), ("s_route", PS_T), ("s_partition", PS_T),
)
STACK_T = StructView("Stack", STACK_FIELDS)
_STACK_OWN = StructOwnerType(list(STACK_FIELDS))


@njit(_STACK_OWN(*(t for _n, t in STACK_FIELDS)), cache=True)
def _new_stack(victim, event, prefetch, miss, route, partition, s_evict, s_prefetch, s_miss, s_route,
               s_partition):
    s = structref.new(_STACK_OWN)
    s.victim = victim
    s.event = event
    s.prefetch = prefetch
    s.miss = miss
    s.route = route
    s.partition = partition
    s.s_evict = s_evict
    s.s_prefetch = s_prefetch
    s.s_miss = s_miss
    s.s_route = s_route
    s.s_partition = s_partition
    return s


class Stack(StructProxy):
    """Kernels (victim, event, prefetch, miss, route, partition) and states (eviction, prefetch, miss,
    routing, partition), in the core's order. Holds the states, so they live as long as the stack."""

    _VIEW = STACK_T

    def __init__(self, kernels: tuple[Any, ...], states: tuple[Any, ...]) -> None:
        self.kernels = tuple(kernels)
        self.states = tuple(states)
        self._owner = _new_stack(*self.kernels, *self.states)
        self._addr = int(payload_addr(self._owner))
