"""The live runtime's door into the emulator: the cache decisions made by the emulator's own decision layer.

The runtime owns the slots and the copies; `emu.engines.decisions` owns the decisions, the very functions
both engines call. This module keeps an emulator `CacheState` (keys = layer * n_experts + expert, one slot
= one byte of capacity) and a kernel `Stack` of the chosen policies, and calls: `begin_pass` at a pass
start (EV_PASS), the partition policy then `access_layer` at a layer's gate with the entries the model's
router chose (hits, late hits, compulsory / capacity / collision misses, EV_MISS, the miss policy: `fetch`,
a demand copy that takes a slot or waits), `prefetch_layer` for the prefetch policy's picks, `retry_one`
for a waiting miss, `land` when a copy lands and `release` when an entry is done with its key. So live and
emulated runs of one stack on one trace evict the same keys by construction.

The decisions log every slot taken and every key evicted, in order (`cs.slot_log`); the bridge turns the log
into what the runtime needs: for each miss its victim (the slot to reuse) or a free slot, for each prefetch
the same. The routing and prediction the prefetch hooks read come from `observe` (a `TraceView` of the
current pass, filled layer by layer), so only policies declared `live` run here (`LIVE_*`: they read
nothing later than the gate). The runtime issues its own copies, so the decisions' copy queue is emptied
after each call.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numba import njit

from emu.engines import decisions
from emu.errors import EmuError
from emu.kernel.layout import IN_FLIGHT, ON_CPU, RESIDENT, SC, SKIPPED, ST, WAITING, TraceView, new_cache_state
from emu.kernel.stack import Stack
from emu.policies.api import PolicyContext
from emu.policies.registry import get_policy, live_policies

# what `gate` says about each needed key
HIT = 0
MISS_FREE = 1  # a miss that found a free slot
MISS_EVICT = 2  # a miss that evicted `victims[i]`
MISS_WAIT = 3  # a miss with no victim yet: retried when a key of this layer is released
MISS_DROP = 4  # the miss policy skips the expert: its tokens lose its share of the output
MISS_CPU = 5  # the miss policy runs the expert on the host from its host weights

# miss kinds, as the emulator classifies them (rows of `gate`'s miss counts)
COMPULSORY = 0
CAPACITY = 1
COLLISION = 2

#: prefetch policies declared `live`: their hooks read only the current pass up to layer l, the speculator's
#: prediction for layer l+1 and their own state, what the runtime knows at layer l's gate
LIVE_PREFETCH = live_policies("prefetch")
#: eviction policies declared `live`: their hooks read only what the bridge keeps
LIVE_EVICTION = live_policies("eviction")
#: partition policies declared `live`: their caps and floors come from the model and the cache alone
LIVE_PARTITION = live_policies("partition")
#: miss policies declared `live`: fetch, drop (skip the expert) and cpu (run it from the host weights)
LIVE_MISS = live_policies("miss")


def _empty_trace_view(n_layers: int, top_k: int, n_experts: int) -> Any:
    """Recency policies never read the trace; the hooks still need one of the right type."""
    shape = (0, n_layers, top_k)
    empty = np.zeros(shape, np.uint8)
    return TraceView(empty, empty, np.zeros(shape, np.float32), empty, empty,
                     np.zeros(1, np.int64), np.zeros(0, np.int8), np.zeros(0, np.int32), np.zeros(0, np.int32),
                     np.array([0, 0, n_experts, 0], np.int64), np.zeros((0, n_layers, n_experts), np.float32))


def _pass_view(n_layers: int, top_k: int, n_experts: int, p: int, n_tok: int) -> Any:
    """Pass p's routing and predictions as the trace view the hooks read (layers filled by `observe`)."""
    shape = (n_tok, n_layers, top_k)
    offsets = np.zeros(p + 2, np.int64)
    offsets[p + 1] = n_tok
    high = (n_tok if n_experts > 256 else 0, n_layers, top_k)  # ids' high bytes: none when every id < 256
    return TraceView(np.zeros(shape, np.uint8), np.zeros(high, np.uint8),
                     np.zeros((0, n_layers, top_k), np.float32), np.zeros(shape, np.uint8), np.zeros(high, np.uint8),
                     offsets, np.zeros(p + 1, np.int8), np.zeros(n_tok, np.int32),
                     np.zeros(n_tok, np.int32), np.array([0, 1, n_experts, 0], np.int64),
                     np.zeros((0, n_layers, n_experts), np.float32))


def _put_ids(low: np.ndarray, high: np.ndarray, layer: int, ids: np.ndarray) -> None:
    """Store one layer's ids (tokens x top_k) into a pass view's byte arrays (`helpers.read_id` reads them)."""
    ids = np.asarray(ids)
    low[:, layer, :] = ids & 0xFF
    if high.shape[0]:
        high[:, layer, :] = ids >> 8


@njit(cache=True)
def _begin_pass(pk, cs, tv, p: int) -> None:
    cs.sc[SC.PASS] = p
    decisions.begin_pass(pk, cs, tv, p, 0.0)


@njit(cache=True)
def _gate(pk, cs, tv, p: int, layer: int, keys, tokens, top_k: int) -> None:
    """The decision layer's gate with the router's entries: the partition's caps, then the accesses."""
    cs.sc[SC.LAYER] = layer
    decisions.partition_layer(pk, cs, tv, p, layer, 0.0)
    for i in range(keys.shape[0]):
        cs.cur_key[i] = keys[i]
        cs.cur_tokens[i] = tokens[i]
        cs.cur_mass[i] = tokens[i] / top_k
    decisions.access_layer(pk, cs, tv, p, layer, keys.shape[0], 0.0)


@njit(cache=True, inline="always")
def _land_key(cs, key: int) -> None:
    if cs.status[key] == IN_FLIGHT:
        decisions.land(cs, key, 0.0)


@njit(cache=True)
def _land(cs, key: int) -> None:
    _land_key(cs, key)


@njit(cache=True, inline="always")
def _release_key(cs, key: int) -> None:
    for i in range(cs.sc[SC.NCUR]):
        if cs.cur_key[i] == key:
            decisions.release(cs, i)
            return


@njit(cache=True)
def _release(cs, key: int) -> None:
    _release_key(cs, key)


@njit(cache=True)
def _finish(cs, keys) -> None:
    """Each key's copy landed (if it was in flight), then its entry released, key by key in order."""
    for j in range(keys.shape[0]):
        _land_key(cs, keys[j])
        _release_key(cs, keys[j])


@njit(cache=True, inline="always")
def _drain(cs) -> None:
    """Empty the slot log and the copy queue (the runtime issues its own copies)."""
    sc = cs.sc
    sc[SC.SLOT_LOG_N] = 0
    sc[SC.DQ_N] = 0
    sc[SC.PQ_N] = 0
    sc[SC.DQ_HEAD] = 0
    sc[SC.PQ_HEAD] = 0


@njit(cache=True, inline="always")
def _read_takes(cs, keys, victims) -> int:
    """The slot log's takes, in order: each key that took a slot and the key evicted just before it, which freed
    that slot (-1: a free slot); how many."""
    n = 0
    freed = -1
    for j in range(cs.sc[SC.SLOT_LOG_N]):
        entry = cs.slot_log[j]
        if entry < 0:
            freed = -1 - entry
        else:
            keys[n] = entry
            victims[n] = freed
            n += 1
            freed = -1
    return n


@njit(cache=True)
def _gate_outcome(pk, cs, tv, p: int, layer: int, keys, tokens, top_k: int, outcome, victims, misses,
                  take_keys, take_victims) -> bool:
    """`_gate`, and what it decided for each key: `outcome` (HIT ... MISS_CPU), `victims` and the layer's
    misses by kind, in one call (the runtime makes one per layer; `take_*`: scratch for the slot log's takes).
    False when a miss took no slot."""
    n = keys.shape[0]
    for i in range(n):
        s = cs.status[keys[i]]
        outcome[i] = HIT if s in (RESIDENT, IN_FLIGHT) else -1
        victims[i] = -1
    misses[0] = -cs.stats_i[ST.MISS_COMPULSORY, layer]
    misses[1] = -cs.stats_i[ST.MISS_CAPACITY, layer]
    misses[2] = -cs.stats_i[ST.MISS_COLLISION, layer]
    _drain(cs)
    _gate(pk, cs, tv, p, layer, keys, tokens, top_k)
    n_takes = _read_takes(cs, take_keys, take_victims)
    ok = True
    for i in range(n):
        if outcome[i] == HIT:
            continue
        where = cs.cur_where[i]
        if where == SKIPPED:
            outcome[i] = MISS_DROP
        elif where == ON_CPU:
            outcome[i] = MISS_CPU
        elif cs.status[keys[i]] == WAITING:
            outcome[i] = MISS_WAIT
        else:
            v = -2  # the victim of the key's last take
            for j in range(n_takes):
                if take_keys[j] == keys[i]:
                    v = take_victims[j]
            ok = ok and v != -2
            victims[i] = v
            outcome[i] = MISS_EVICT if v >= 0 else MISS_FREE
    misses[0] += cs.stats_i[ST.MISS_COMPULSORY, layer]
    misses[1] += cs.stats_i[ST.MISS_CAPACITY, layer]
    misses[2] += cs.stats_i[ST.MISS_COLLISION, layer]
    _drain(cs)
    return ok


@njit(cache=True)
def _prefetch_takes(pk, cs, tv, p: int, layer: int, keys, victims) -> int:
    """The prefetch step of layer `layer`'s gate, and the keys it took slots for, in issue order, with the key each
    evicted (-1: a free slot): how many."""
    _drain(cs)
    decisions.prefetch_layer(pk, cs, tv, p, layer, 0.0)
    n = _read_takes(cs, keys, victims)
    _drain(cs)
    return n


@njit(cache=True)
def _retry_take(pk, cs, tv, key: int, take_keys, take_victims) -> int:
    """A waiting miss tries again: -1 a free slot, the victim key, or -2 still no victim."""
    _drain(cs)
    if not decisions.retry_one(pk, cs, tv, key, 0.0):
        return -2
    _read_takes(cs, take_keys, take_victims)
    _drain(cs)
    return take_victims[0]


class CacheBridge:
    """Eviction and prefetch decisions for `n_slots` expert slots, made by registered emulator policies
    through the emulator's decision layer."""

    def __init__(self, n_layers: int, n_experts: int, top_k: int, n_slots: int, eviction: str = "lru",
                 params: dict[str, Any] | None = None, seed: int = 0, prefetch: str = "none",
                 prefetch_params: dict[str, Any] | None = None, partition: str = "global",
                 partition_params: dict[str, Any] | None = None, miss: str = "fetch",
                 miss_params: dict[str, Any] | None = None, timing: Any = None) -> None:
        policy = get_policy("eviction", eviction)
        pf_policy = get_policy("prefetch", prefetch)
        if eviction not in LIVE_EVICTION:
            raise EmuError(f"the live runtime cannot run eviction policy {eviction!r} (it reads what the runtime "
                           f"does not keep); expected one of {list(LIVE_EVICTION)}", key="policy.eviction")
        if prefetch not in LIVE_PREFETCH:
            raise EmuError(f"the live runtime cannot run prefetch policy {prefetch!r} (it reads routing the runtime "
                           f"does not know yet); expected one of {list(LIVE_PREFETCH)}", key="policy.prefetch")
        if partition not in LIVE_PARTITION:
            raise EmuError(f"the live runtime cannot run partition policy {partition!r} (it reads routing the "
                           f"runtime does not keep); expected one of {list(LIVE_PARTITION)}", key="policy.partition")
        if miss not in LIVE_MISS:
            raise EmuError(f"the live runtime cannot run miss policy {miss!r}; expected one of {list(LIVE_MISS)}",
                           key="policy.miss")
        part_policy = get_policy("partition", partition)
        miss_policy = get_policy("miss", miss)
        resolved = policy.resolve_params(params or {}, "policy.eviction", None)
        pf_resolved = pf_policy.resolve_params(prefetch_params or {}, "policy.prefetch", None)
        self.n_layers, self.n_experts, self.top_k, self.n_slots = n_layers, n_experts, top_k, n_slots
        self.prefetch_name = prefetch
        n_keys = n_layers * n_experts
        # the log holds one gate's takes and evictions: at most two entries per key
        self.cs = new_cache_state(n_layers, n_experts, top_k, 1, n_slots, np.array([1], np.int64), 1,
                                  slot_log=2 * (n_keys + n_experts))
        self.tv = _empty_trace_view(n_layers, top_k, n_experts)
        # `timing`: the emulator's Timing of the model on the run's hardware profile, for a miss policy that
        # weighs a copy against the CPU (cpu)
        ctx = PolicyContext(n_layers=n_layers, n_experts=n_experts, top_k=top_k, capacity_bytes=n_slots,
                            expert_bytes=1, prec_bytes=np.array([1], np.int64), trace=self.tv, seed=seed,
                            precisions=("model",), timing=timing)
        # the router is the model's own (the routing hook is never called: `gate` writes the router's
        # entries); a partition's caps and floors bind the victims the decisions pick
        chosen = {"eviction": (policy, resolved), "prefetch": (pf_policy, pf_resolved),
                  "miss": (miss_policy, miss_policy.resolve_params(miss_params or {}, "policy.miss", None)),
                  "routing": (get_policy("routing", "standard"), {}),
                  "partition": (part_policy, part_policy.resolve_params(partition_params or {}, "policy.partition",
                                                                        None))}
        states = {kind: pol.init(ctx, prm) for kind, (pol, prm) in chosen.items()}
        self.cs.sc[SC.MISS_EVENTS] = int(policy.capabilities.miss_events)
        self.stack = Stack({name: hook for pol, _p in chosen.values() for name, hook in pol.hooks.items()}, states)
        # a call's takes (keys and victims) read from the slot log: at most one per entry
        self._take_keys = np.empty(self.cs.slot_log.shape[0], np.int64)
        self._take_victims = np.empty(self.cs.slot_log.shape[0], np.int64)
        self._pass = -1
        self._view_pass = -1

    @property
    def prefetching(self) -> bool:
        return self.prefetch_name != "none"

    def begin_pass(self, p: int) -> None:
        self._pass = p
        _begin_pass(self.stack, self.cs, self.tv, p)

    def observe(self, layer: int, index: np.ndarray, predicted_next: np.ndarray | None) -> None:
        """Layer `layer`'s routing (tokens x top_k) and the speculator's prediction for the next layer, for
        the prefetch hook; the view is rebuilt at the first layer a pass observes."""
        if self._view_pass != self._pass or self.tv.experts.shape[0] != index.shape[0]:
            self.tv = _pass_view(self.n_layers, self.top_k, self.n_experts, max(self._pass, 0), index.shape[0])
            self._view_pass = self._pass
        _put_ids(self.tv.experts, self.tv.experts_hi, layer, index)
        if predicted_next is not None and layer + 1 < self.n_layers:
            _put_ids(self.tv.predicted, self.tv.predicted_hi, layer + 1, predicted_next)

    def gate(self, layer: int, experts: np.ndarray, tokens: np.ndarray | None = None
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Hit or miss for each needed expert (ascending ids), the victim each miss evicted (-1: a free slot),
        and the layer's misses by kind (COMPULSORY, CAPACITY, COLLISION).

        `tokens`: tokens routed to each expert (policies that learn from the gate read them). The needed
        keys stay protected (never victims) until `release`; the prefetch policy runs at `prefetch`.
        """
        keys = np.ascontiguousarray(layer * self.n_experts + np.asarray(experts, np.int64))
        n = keys.shape[0]
        tok = np.ones(n, np.int64) if tokens is None else np.ascontiguousarray(tokens, np.int64)
        outcome = np.empty(n, np.int8)
        victims = np.empty(n, np.int64)
        misses = np.empty(3, np.int64)
        if not _gate_outcome(self.stack, self.cs, self.tv, self._pass, layer, keys, tok, self.top_k, outcome,
                             victims, misses, self._take_keys, self._take_victims):
            raise RuntimeError(f"layer {layer}: a miss took no slot and does not wait for one")
        return outcome, victims, misses

    def prefetch(self, layer: int) -> tuple[np.ndarray, np.ndarray]:
        """The prefetch step of layer `layer`'s gate (call right after `gate`): keys issued, in issue order,
        and the victim each evicted (-1: a free slot). Each key is in flight until `complete`."""
        buf_k, buf_v = self._take_keys, self._take_victims
        n = _prefetch_takes(self.stack, self.cs, self.tv, self._pass, layer, buf_k, buf_v)
        return buf_k[:n].copy(), buf_v[:n].copy()

    def retry(self, layer: int, expert: int) -> int:
        """A waiting miss tries again: -1 free slot, a victim key, or -2 still no victim."""
        return int(_retry_take(self.stack, self.cs, self.tv, layer * self.n_experts + expert, self._take_keys,
                               self._take_victims))

    def complete(self, layer: int, expert: int) -> None:
        """The copy landed: the expert may now be evicted once released."""
        _land(self.cs, layer * self.n_experts + expert)

    def release(self, layer: int, expert: int) -> None:
        """The gate's entry for this expert is done with it (it may be evicted again)."""
        _release(self.cs, layer * self.n_experts + expert)

    def finish(self, layer: int, experts: Any) -> None:
        """`complete` then `release` for each expert of the layer, in order, in one call."""
        _finish(self.cs, layer * self.n_experts + np.asarray(experts, np.int64))

    def gated(self) -> np.ndarray:
        """The keys the last gate was asked for (its layer's experts, ascending)."""
        return self.cs.cur_key[: self.cs.sc[SC.NCUR]]

    def resident(self) -> np.ndarray:
        """Keys that hold a slot (resident or in flight)."""
        st = self.cs.status
        return np.flatnonzero((st == RESIDENT) | (st == IN_FLIGHT))

    def miss_actions(self) -> dict[str, int]:
        """Misses the miss policy dropped or ran on the host, as the core counts them."""
        st = self.cs.stats_i
        return {"dropped": int(st[ST.DROPPED].sum()), "cpu_runs": int(st[ST.CPU_RUNS].sum())}

    def prefetch_counts(self) -> dict[str, int]:
        """Prefetches issued, useful, dropped and wasted, and late hits, as the core counts them at the end of
        a run (wasted: evicted unused, or still unused now, as `core.close` adds)."""
        st = self.cs.stats_i
        wasted = int(st[ST.PF_WASTED].sum()) + int(self.cs.pf_unused.sum())
        return {"prefetch_issued": int(st[ST.PF_ISSUED].sum()), "prefetch_useful": int(st[ST.PF_USEFUL].sum()),
                "prefetch_dropped": int(st[ST.PF_DROPPED].sum()), "prefetch_wasted": wasted,
                "late_hits": int(st[ST.LATE_HITS].sum())}
