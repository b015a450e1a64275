"""The live runtime's only door into the emulator core: cache bookkeeping driven by the emulator's own
eviction kernels.

The runtime owns the slots and the copies; this module owns the decision. It keeps an emulator
`CacheState` (keys = layer * n_experts + expert, one slot = one byte of capacity) up to date with the
fields `core.is_evictable` reads, calls the policy's `event` kernel exactly where the emulator does
(EV_PASS at a pass start, EV_ACCESS on a hit, EV_INSERT when a copy takes a slot, EV_EVICT) and its
`victim` kernel to make room, so live and emulated runs of one policy on one trace evict the same keys.
Only the global partition is modelled (no per-layer caps or floors).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numba import int64, njit, typed

from emu.engines.state import (
    ABSENT,
    IN_FLIGHT,
    RESIDENT,
    SC_CAP,
    SC_CLOCK,
    SC_LAYER,
    SC_PASS,
    SC_USED,
    WAITING,
    TraceView,
    new_cache_state,
)
from emu.policies.api import EV_ACCESS, EV_EVICT, EV_INSERT, EV_PASS, KERNEL_T, PolicyContext
from emu.policies.registry import get_policy

# what `gate_layer` says about each needed key
HIT = 0
MISS_FREE = 1  # a miss that found a free slot
MISS_EVICT = 2  # a miss that evicted `victims[i]`
MISS_WAIT = 3  # a miss with no victim yet: retried when a key of this layer is released

# miss kinds, as the emulator classifies them
COMPULSORY = 0
CAPACITY = 1
COLLISION = 2


def _empty_trace_view(n_layers: int, top_k: int, n_experts: int) -> Any:
    """Recency policies never read the trace; the kernels still need one of the right type."""
    shape = (0, n_layers, top_k)
    return TraceView(np.zeros(shape, np.int16), np.zeros(shape, np.float32), np.zeros(shape, np.int16),
                     np.zeros(1, np.int64), np.zeros(0, np.int8), np.zeros(0, np.int32), np.zeros(0, np.int32),
                     np.array([0, 0, n_experts], np.int64))


@njit(cache=True)
def _evict(kern, ps, cs, tv, key: int) -> None:
    layer = key // cs.cur_key.shape[0]
    cs.status[key] = ABSENT
    cs.sc[SC_USED] -= 1
    cs.layer_bytes[layer] -= 1
    cs.layer_count[layer] -= 1
    cs.evict_pass[key] = cs.sc[SC_PASS]
    kern[1](ps, cs, tv, EV_EVICT, key, 0.0)


@njit(cache=True)
def _take_slot(kern, ps, cs, tv, key: int, layer: int) -> int:
    """-1: a free slot; a key: the victim evicted; -2: nothing evictable (the copy waits)."""
    evicted = -1
    if cs.sc[SC_USED] + 1 > cs.sc[SC_CAP]:
        evicted = kern[0](ps, cs, tv, layer, 0, 0.0)
        if evicted < 0:
            return -2
        _evict(kern, ps, cs, tv, evicted)
    cs.status[key] = IN_FLIGHT
    cs.sc[SC_USED] += 1
    cs.layer_bytes[layer] += 1
    cs.layer_count[layer] += 1
    cs.loaded_ever[key] = 1
    cs.sc[SC_CLOCK] += 1
    kern[1](ps, cs, tv, EV_INSERT, key, 0.0)
    return evicted


@njit(cache=True)
def _gate_layer(kern, ps, cs, tv, p: int, layer: int, keys, outcome, victims, kinds) -> None:
    """The emulator's gate for one layer (standard routing, fetch on miss, no prefetch)."""
    cs.sc[SC_LAYER] = layer
    n = keys.shape[0]
    for i in range(n):
        cs.protect[keys[i]] += 1
    for i in range(n):
        key = keys[i]
        kinds[i] = -1
        victims[i] = -1
        if cs.status[key] == RESIDENT or cs.status[key] == IN_FLIGHT:
            outcome[i] = HIT
            cs.sc[SC_CLOCK] += 1
            kern[1](ps, cs, tv, EV_ACCESS, key, 0.0)
            continue
        if cs.loaded_ever[key] == 0:
            kinds[i] = COMPULSORY
        elif cs.evict_pass[key] == p:
            kinds[i] = COLLISION
        else:
            kinds[i] = CAPACITY
        cs.sc[SC_CLOCK] += 1
        got = _take_slot(kern, ps, cs, tv, key, layer)
        if got == -2:
            cs.status[key] = WAITING
            outcome[i] = MISS_WAIT
        elif got == -1:
            outcome[i] = MISS_FREE
        else:
            outcome[i] = MISS_EVICT
            victims[i] = got


@njit(cache=True)
def _retry(kern, ps, cs, tv, key: int, layer: int) -> int:
    return _take_slot(kern, ps, cs, tv, key, layer)


class CacheBridge:
    """Eviction decisions for `n_slots` expert slots, made by a registered emulator eviction policy."""

    def __init__(self, n_layers: int, n_experts: int, top_k: int, n_slots: int, eviction: str = "lru",
                 params: dict[str, Any] | None = None, seed: int = 0) -> None:
        policy = get_policy("eviction", eviction)
        resolved = policy.resolve_params(params or {}, "policy.eviction", None)
        self.n_layers, self.n_experts, self.n_slots = n_layers, n_experts, n_slots
        self.cs = new_cache_state(n_layers, n_experts, top_k, 1, n_slots, np.array([1], np.int64), 1)
        self.tv = _empty_trace_view(n_layers, top_k, n_experts)
        ctx = PolicyContext(n_layers=n_layers, n_experts=n_experts, top_k=top_k, capacity_bytes=n_slots,
                            expert_bytes=1, prec_bytes=np.array([1], np.int64), trace=self.tv, seed=seed)
        self.ps = policy.init(ctx, resolved)
        self.kern = typed.List.empty_list(KERNEL_T)
        self.kern.append(policy.kernels[0])
        self.kern.append(policy.kernels[1])
        self._pass = -1

    def begin_pass(self, p: int) -> None:
        self._pass = p
        self.cs.sc[SC_PASS] = p
        self.kern[1](self.ps, self.cs, self.tv, EV_PASS, p, 0.0)

    def gate(self, layer: int, experts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Hit or miss for each needed expert (ascending ids), the victim each miss evicted, miss kinds.

        The needed keys stay protected (never victims) until `release`.
        """
        keys = np.ascontiguousarray(layer * self.n_experts + np.asarray(experts, np.int64))
        n = keys.shape[0]
        outcome = np.empty(n, np.int8)
        victims = np.empty(n, np.int64)
        kinds = np.empty(n, np.int8)
        _gate_layer(self.kern, self.ps, self.cs, self.tv, self._pass, layer, keys, outcome, victims, kinds)
        return outcome, victims, kinds

    def retry(self, layer: int, expert: int) -> int:
        """A waiting miss tries again: -1 free slot, a victim key, or -2 still no victim."""
        return int(_retry(self.kern, self.ps, self.cs, self.tv, int64(layer * self.n_experts + expert), layer))

    def complete(self, layer: int, expert: int) -> None:
        """The copy landed: the expert may now be evicted once released."""
        key = layer * self.n_experts + expert
        if self.cs.status[key] == IN_FLIGHT:
            self.cs.status[key] = RESIDENT

    def release(self, layer: int, expert: int) -> None:
        self.cs.protect[layer * self.n_experts + expert] -= 1

    def resident(self) -> np.ndarray:
        """Keys that hold a slot (resident or in flight)."""
        st = self.cs.status
        return np.flatnonzero((st == RESIDENT) | (st == IN_FLIGHT))
