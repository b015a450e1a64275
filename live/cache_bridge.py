"""The live runtime's only door into the emulator core: cache bookkeeping driven by the emulator's own
eviction and prefetch kernels.

The runtime owns the slots and the copies; this module owns the decision. It keeps an emulator
`CacheState` (keys = layer * n_experts + expert, one slot = one byte of capacity) up to date with the
fields `helpers.is_evictable` reads, calls the policy's `on_event` hook exactly where the emulator does
(EV_PASS at a pass start, EV_ACCESS on a hit, EV_MISS on a miss, EV_INSERT when a copy takes a slot,
EV_EVICT) and its `victim` hook to make room, so live and emulated runs of one policy on one trace evict
the same keys. The hooks are called through a kernel `Stack`, as the core calls them.

Prefetch follows `core.gate`: after a layer's accesses the prefetch kernel names keys, and each absent
one takes a slot at once (a victim from the eviction kernel, EV_INSERT) or is dropped when there is no
victim. The kernels read the current pass from a `TraceView` that the runtime fills layer by layer
(`observe`: routing of layers <= l and the speculator's prediction for l+1), so only policies that look
at nothing later than that run live (declared `live`: `LIVE_PREFETCH`). A hit on a key still in flight is a late hit;
a prefetched key counts as useful on its first hit and as wasted when evicted unused, as in the core.
Eviction policies that read what the bridge does not keep (gate-score mass, the trace's future) are not
declared `live` and are refused (`LIVE_EVICTION`). Only the global partition is modelled (no per-layer caps or floors).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numba import int64, njit

from emu.errors import EmuError
from emu.kernel.hooks import EV_ACCESS, EV_EVICT, EV_INSERT, EV_MISS, EV_PASS
from emu.kernel.layout import ABSENT, DEMAND, IN_FLIGHT, PREFETCH, RESIDENT, SC, ST, WAITING, TraceView, new_cache_state
from emu.kernel.stack import Stack
from emu.policies.api import PolicyContext
from emu.policies.registry import get_policy, live_policies

# what `gate_layer` says about each needed key
HIT = 0
MISS_FREE = 1  # a miss that found a free slot
MISS_EVICT = 2  # a miss that evicted `victims[i]`
MISS_WAIT = 3  # a miss with no victim yet: retried when a key of this layer is released

# miss kinds, as the emulator classifies them
COMPULSORY = 0
CAPACITY = 1
COLLISION = 2

#: prefetch policies declared `live`: their hooks read only the current pass up to layer l, the speculator's
#: prediction for layer l+1 and their own state, what the runtime knows at layer l's gate
LIVE_PREFETCH = live_policies("prefetch")
#: eviction policies declared `live`: their hooks read only what the bridge keeps
LIVE_EVICTION = live_policies("eviction")


def _empty_trace_view(n_layers: int, top_k: int, n_experts: int) -> Any:
    """Recency policies never read the trace; the kernels still need one of the right type."""
    shape = (0, n_layers, top_k)
    return TraceView(np.zeros(shape, np.int16), np.zeros(shape, np.float32), np.zeros(shape, np.int16),
                     np.zeros(1, np.int64), np.zeros(0, np.int8), np.zeros(0, np.int32), np.zeros(0, np.int32),
                     np.array([0, 0, n_experts], np.int64))


def _pass_view(n_layers: int, top_k: int, n_experts: int, p: int, n_tok: int) -> Any:
    """Pass p's routing and predictions as the trace view the kernels read (layers filled by `observe`)."""
    shape = (n_tok, n_layers, top_k)
    offsets = np.zeros(p + 2, np.int64)
    offsets[p + 1] = n_tok
    return TraceView(np.zeros(shape, np.int16), np.zeros((0, n_layers, top_k), np.float32),
                     np.zeros(shape, np.int16), offsets, np.zeros(p + 1, np.int8), np.zeros(n_tok, np.int32),
                     np.zeros(n_tok, np.int32), np.array([0, 1, n_experts], np.int64))


@njit(cache=True)
def _evict(pk, cs, tv, key: int) -> None:
    layer = key // cs.cur_key.shape[0]
    cs.status[key] = ABSENT
    cs.sc[SC.USED] -= 1
    cs.layer_bytes[layer] -= 1
    cs.layer_count[layer] -= 1
    cs.evict_pass[key] = cs.sc[SC.PASS]
    if cs.pf_unused[key] == 1:
        cs.pf_unused[key] = 0
        cs.stats_i[ST.PF_WASTED, layer] += 1
    pk.on_event(pk.s_eviction, cs, tv, EV_EVICT, key, 0.0)


@njit(cache=True)
def _take_slot(pk, cs, tv, key: int, layer: int, prio: int) -> int:
    """-1: a free slot; a key: the victim evicted; -2: nothing evictable (the copy waits). `prio` (DEMAND or
    PREFETCH) is what the insert event sees in `cs.copy_prio`, as in the core."""
    evicted = -1
    if cs.sc[SC.USED] + 1 > cs.sc[SC.CAP]:
        evicted = pk.victim(pk.s_eviction, cs, tv, key, 0.0)
        if evicted < 0:
            return -2
        _evict(pk, cs, tv, evicted)
    cs.status[key] = IN_FLIGHT
    cs.sc[SC.USED] += 1
    cs.layer_bytes[layer] += 1
    cs.layer_count[layer] += 1
    cs.loaded_ever[key] = 1
    cs.copy_prio[key] = prio
    cs.sc[SC.CLOCK] += 1
    pk.on_event(pk.s_eviction, cs, tv, EV_INSERT, key, 0.0)
    return evicted


@njit(cache=True)
def _gate_layer(pk, cs, tv, p: int, layer: int, keys, tokens, outcome, victims, kinds) -> None:
    """The emulator's gate for one layer (standard routing, fetch on miss), before its prefetch."""
    cs.sc[SC.LAYER] = layer
    n = keys.shape[0]
    n_exp = cs.cur_key.shape[0]
    cs.sc[SC.NCUR] = n
    for i in range(n):
        cs.cur_key[i] = keys[i]
        cs.cur_expert[i] = keys[i] - layer * n_exp
        cs.cur_tokens[i] = tokens[i]
        cs.protect[keys[i]] += 1
    for i in range(n):
        key = keys[i]
        kinds[i] = -1
        victims[i] = -1
        if cs.status[key] == RESIDENT or cs.status[key] == IN_FLIGHT:
            outcome[i] = HIT
            if cs.status[key] == IN_FLIGHT:
                cs.stats_i[ST.LATE_HITS, layer] += 1
            if cs.pf_unused[key] == 1:
                cs.pf_unused[key] = 0
                cs.stats_i[ST.PF_USEFUL, layer] += 1
            cs.sc[SC.CLOCK] += 1
            pk.on_event(pk.s_eviction, cs, tv, EV_ACCESS, key, 0.0)
            continue
        pk.on_event(pk.s_eviction, cs, tv, EV_MISS, key, 0.0)
        if cs.loaded_ever[key] == 0:
            kinds[i] = COMPULSORY
        elif cs.evict_pass[key] == p:
            kinds[i] = COLLISION
        else:
            kinds[i] = CAPACITY
        cs.sc[SC.CLOCK] += 1
        got = _take_slot(pk, cs, tv, key, layer, DEMAND)
        if got == -2:
            cs.status[key] = WAITING
            outcome[i] = MISS_WAIT
        elif got == -1:
            outcome[i] = MISS_FREE
        else:
            outcome[i] = MISS_EVICT
            victims[i] = got


@njit(cache=True)
def _prefetch_layer(pk, cs, tv, p: int, layer: int, out_keys, out_victims) -> int:
    """`core.gate`'s prefetch step: the kernel names keys, each absent one takes a slot now (-1 free, else
    the victim in `out_victims`) or is dropped when no victim is left. Returns how many were issued."""
    n_pf = pk.prefetch(pk.s_prefetch, cs, tv, p, layer, 0.0)
    n_exp = cs.cur_key.shape[0]
    m = 0
    for j in range(n_pf):
        key = cs.pf_buf[j]
        if cs.status[key] != ABSENT:
            continue
        kl = key // n_exp
        got = _take_slot(pk, cs, tv, key, kl, PREFETCH)
        if got == -2:
            cs.stats_i[ST.PF_DROPPED, kl] += 1
            continue
        cs.pf_unused[key] = 1
        cs.stats_i[ST.PF_ISSUED, kl] += 1
        out_keys[m] = key
        out_victims[m] = got
        m += 1
    return m


@njit(cache=True)
def _retry(pk, cs, tv, key: int, layer: int) -> int:
    return _take_slot(pk, cs, tv, key, layer, DEMAND)


class CacheBridge:
    """Eviction and prefetch decisions for `n_slots` expert slots, made by registered emulator policies."""

    def __init__(self, n_layers: int, n_experts: int, top_k: int, n_slots: int, eviction: str = "lru",
                 params: dict[str, Any] | None = None, seed: int = 0, prefetch: str = "none",
                 prefetch_params: dict[str, Any] | None = None) -> None:
        policy = get_policy("eviction", eviction)
        pf_policy = get_policy("prefetch", prefetch)
        if eviction not in LIVE_EVICTION:
            raise EmuError(f"the live runtime cannot run eviction policy {eviction!r} (it reads what the runtime "
                           f"does not keep); expected one of {list(LIVE_EVICTION)}", key="policy.eviction")
        if prefetch not in LIVE_PREFETCH:
            raise EmuError(f"the live runtime cannot run prefetch policy {prefetch!r} (it reads routing the runtime "
                           f"does not know yet); expected one of {list(LIVE_PREFETCH)}", key="policy.prefetch")
        resolved = policy.resolve_params(params or {}, "policy.eviction", None)
        pf_resolved = pf_policy.resolve_params(prefetch_params or {}, "policy.prefetch", None)
        self.n_layers, self.n_experts, self.top_k, self.n_slots = n_layers, n_experts, top_k, n_slots
        self.prefetch_name = prefetch
        self.cs = new_cache_state(n_layers, n_experts, top_k, 1, n_slots, np.array([1], np.int64), 1)
        self.tv = _empty_trace_view(n_layers, top_k, n_experts)
        ctx = PolicyContext(n_layers=n_layers, n_experts=n_experts, top_k=top_k, capacity_bytes=n_slots,
                            expert_bytes=1, prec_bytes=np.array([1], np.int64), trace=self.tv, seed=seed)
        # the runtime fetches every miss, replays the router's choices and shares one pool (this bridge's
        # scope); their hooks complete the stack the kernels are called through
        chosen = {"eviction": (policy, resolved), "prefetch": (pf_policy, pf_resolved),
                  "miss": (get_policy("miss", "fetch"), {}), "routing": (get_policy("routing", "standard"), {}),
                  "partition": (get_policy("partition", "global"), {})}
        states = {kind: pol.init(ctx, prm) for kind, (pol, prm) in chosen.items()}
        self.stack = Stack({name: hook for pol, _p in chosen.values() for name, hook in pol.hooks.items()}, states)
        self.ps = states["eviction"]
        self.pf_ps = states["prefetch"]
        self._pf_keys = np.empty(n_layers * n_experts, np.int64)
        self._pf_victims = np.empty(n_layers * n_experts, np.int64)
        self._pass = -1
        self._view_pass = -1

    @property
    def prefetching(self) -> bool:
        return self.prefetch_name != "none"

    def begin_pass(self, p: int) -> None:
        self._pass = p
        self.cs.sc[SC.PASS] = p
        self.stack.hooks["on_event"](self.ps, self.cs, self.tv, EV_PASS, p, 0.0)

    def observe(self, layer: int, index: np.ndarray, predicted_next: np.ndarray | None) -> None:
        """Layer `layer`'s routing (tokens x top_k) and the speculator's prediction for the next layer, for
        the prefetch kernel; the view is rebuilt at the first layer a pass observes."""
        if self._view_pass != self._pass or self.tv.experts.shape[0] != index.shape[0]:
            self.tv = _pass_view(self.n_layers, self.top_k, self.n_experts, max(self._pass, 0), index.shape[0])
            self._view_pass = self._pass
        self.tv.experts[:, layer, :] = index
        if predicted_next is not None and layer + 1 < self.n_layers:
            self.tv.predicted[:, layer + 1, :] = predicted_next

    def gate(self, layer: int, experts: np.ndarray, tokens: np.ndarray | None = None
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Hit or miss for each needed expert (ascending ids), the victim each miss evicted, miss kinds.

        `tokens`: tokens routed to each expert (policies that learn from the gate read them). The needed
        keys stay protected (never victims) until `release`.
        """
        keys = np.ascontiguousarray(layer * self.n_experts + np.asarray(experts, np.int64))
        n = keys.shape[0]
        tok = np.ones(n, np.int64) if tokens is None else np.ascontiguousarray(tokens, np.int64)
        outcome = np.empty(n, np.int8)
        victims = np.empty(n, np.int64)
        kinds = np.empty(n, np.int8)
        _gate_layer(self.stack, self.cs, self.tv, self._pass, layer, keys, tok, outcome, victims, kinds)
        return outcome, victims, kinds

    def prefetch(self, layer: int) -> tuple[np.ndarray, np.ndarray]:
        """The prefetch step of layer `layer`'s gate (call right after `gate`): keys issued, in issue order,
        and the victim each evicted (-1: a free slot). Each key is in flight until `complete`."""
        m = _prefetch_layer(self.stack, self.cs, self.tv, self._pass, layer, self._pf_keys, self._pf_victims)
        return self._pf_keys[:m].copy(), self._pf_victims[:m].copy()

    def retry(self, layer: int, expert: int) -> int:
        """A waiting miss tries again: -1 free slot, a victim key, or -2 still no victim."""
        return int(_retry(self.stack, self.cs, self.tv, int64(layer * self.n_experts + expert), layer))

    def complete(self, layer: int, expert: int) -> None:
        """The copy landed: the expert may now be evicted once released."""
        key = layer * self.n_experts + expert
        if self.cs.status[key] == IN_FLIGHT:
            self.cs.status[key] = RESIDENT

    def release(self, layer: int, expert: int) -> None:
        self.cs.protect[layer * self.n_experts + expert] -= 1

    def gated(self) -> np.ndarray:
        """The keys the last gate was asked for (its layer's experts, ascending)."""
        return self.cs.cur_key[: self.cs.sc[SC.NCUR]]

    def resident(self) -> np.ndarray:
        """Keys that hold a slot (resident or in flight)."""
        st = self.cs.status
        return np.flatnonzero((st == RESIDENT) | (st == IN_FLIGHT))

    def prefetch_counts(self) -> dict[str, int]:
        """Prefetches issued, useful, dropped and wasted, and late hits, as the core counts them at the end of
        a run (wasted: evicted unused, or still unused now, as `core.close` adds)."""
        st = self.cs.stats_i
        wasted = int(st[ST.PF_WASTED].sum()) + int(self.cs.pf_unused.sum())
        return {"prefetch_issued": int(st[ST.PF_ISSUED].sum()), "prefetch_useful": int(st[ST.PF_USEFUL].sum()),
                "prefetch_dropped": int(st[ST.PF_DROPPED].sum()), "prefetch_wasted": wasted,
                "late_hits": int(st[ST.LATE_HITS].sum())}
