"""Offloaded experts: each sparse-MoE block's fused experts replaced by a module that computes from a
slot pool, fetching misses from host memory.

Expert weights live in host memory (pinned when the device is CUDA); the device holds `n_slots` expert slots.
Host and slots keep each expert's matrices back to back (gate_up, then down), so a copy is one memcpy of the
expert's bytes, the copy the profile's table times. At each layer the needed experts are classified by the
emulator's eviction policy (`cache_bridge`); a miss copies its expert into a free or evicted slot on a
dedicated copy stream and records a CUDA event that the compute stream waits on. Hits run first while misses
load. A slot is overwritten only after the compute that last read it (an event per slot). Each expert's output
is added in ascending expert order, the order of the transformers eager implementation, so offloading does not
change the math. On the CPU the same code runs with plain copies and no streams.

Two ways to compute a layer (`kernel`): "eager" runs expert by expert (hits first while misses load,
the emulator's per-expert semantics; bitwise equal to transformers' eager experts), "fused" calls the
model's own experts implementation (grouped_mm by default in transformers 5) once per layer on the slot
pool with the routing mapped to slots, after every copy of the layer has landed (bitwise equal to the
unmodified model: same function, same sums). A layer whose experts do not all fit at once (demand
copies waiting for victims) always runs the eager way. Under the graph decode the fused kernel is captured in
the decode graphs where it can be (`graph_experts`): the host then only places each layer before the replay that
computes it (`place_layer`) and books it after (`launched_layer`); see graphed.py.

Deferred hits (fused kernel): when every expert of a layer holds a slot, no decision can depend on the
routing, so the layer runs without reading it back: the router's ids are mapped to slots on the device
(the slot table, each entry written by a fill kernel when its slot is assigned: no host-to-device copy,
which would queue behind the expert copies; the fused kernel of a read-back layer maps its ids the same
way), copied to pinned host memory behind the layer, and booked with the cache policy later, in order,
before the next decision that reads the policy state (the next non-deferred layer, the next pass,
`stats()`). The policy sees the same events in the same order, so decisions and
counts are those of the synchronous path; the host no longer waits for the GPU at such layers, as the
unmodified model never does. Free slots are taken at `key % n_slots` when free, so at 100% cache each
layer's experts sit in one contiguous window.

Prefetch (`prefetch`, a policy of `cache_bridge.LIVE_PREFETCH`): at each layer's gate the policy's kernel
names keys, each takes a slot at once (as in the emulator) and its copy is queued with the prefetch
watchdog (`watchdog.py`), submitted when the copy engine is idle: by the forward thread at its checkpoints
(each gate, each expert launch, each fused layer), and as it leaves the runtime (`away`: from the end of a
layer's experts through attention and the router to the routing readback, and between passes) by the
hand-over (`watchdog.py`): for short copies (OLMoE, 0.23 ms) the forward thread submits the whole queue
itself ("inline": a task's wake would cost the host-paced thread more than the submissions); for long
ones (Mixtral, 6.4 ms) the watchdog's asyncio task submits what starts before the next gate and drains
the rest one per idle engine ("bounded"). Demand copies go
to the engine at once; a needed key still queued is promoted (submitted at once); a needed key in
flight is a late hit that the compute waits for. The routing and the speculator's prediction for the
next layer (its gate on this layer's input, the formula of `hooks.RoutingHooks`) come back to the host
in one copy. A prefetched key becomes evictable once its copy's event has completed, checked at each
gate. Deferred hits are off while prefetching: a layer's prefetch decision needs its routing.
"""

from __future__ import annotations

import contextlib
import copy
import gc
import time
from typing import Any, NamedTuple

import attrs
import numpy as np
import torch
from torch import nn

from emu.errors import EmuError

from .cache_bridge import (
    CAPACITY,
    COLLISION,
    COMPULSORY,
    HIT,
    MISS_CPU,
    MISS_DROP,
    MISS_EVICT,
    MISS_FREE,
    MISS_WAIT,
    CacheBridge,
)
from .hooks import sparse_blocks
from .watchdog import HANDOVER_CHOICES, PrefetchWatchdog


@attrs.frozen
class OffloadStats:
    """What the runtime itself counted since the last reset."""

    accesses: int
    hits: int  # at the gate: resident, or in flight (`late_hits` of them); the emulator's `hits` are on time only
    misses: int
    compulsory: int
    capacity: int
    collision: int
    copies: int
    bytes_h2d: int
    evictions: int
    waits: int
    per_layer_hits: tuple[int, ...]
    per_layer_misses: tuple[int, ...]
    prefetch_issued: int = 0
    prefetch_useful: int = 0
    prefetch_dropped: int = 0
    prefetch_wasted: int = 0
    late_hits: int = 0
    #: prefetches submitted out of turn because a layer needed them while still queued (runtime only)
    prefetch_promoted: int = 0
    #: misses the miss policy dropped (not counted in `misses`, as in the emulator) or ran on the host
    dropped: int = 0
    cpu_runs: int = 0

    @property
    def hit_rate(self) -> float:
        return self.hits / self.accesses if self.accesses else 0.0


def _check_fused(experts: Any) -> None:
    for name in ("gate_up_proj", "down_proj", "act_fn"):
        if not hasattr(experts, name):
            raise EmuError(f"{type(experts).__name__} has no `{name}`; the offloaded runtime expects the fused "
                           f"experts layout of transformers 5.x (gate_up_proj [E, 2I, H], down_proj [E, H, I])")
    if getattr(experts, "has_bias", False) or getattr(experts, "is_transposed", False):
        raise EmuError(f"{type(experts).__name__}: biased or transposed expert weights are not supported")


KERNELS = ("eager", "fused")
#: torch's grouped GEMM takes fewer than 1024 groups per call (`group_count < 1024` in its CUDA kernel)
MAX_GROUPS = 1023
#: "auto" hand-over: "bounded" from this copy time up, "inline" below. On the H100 a drain wake per held-back
#: copy left the engine idle ~50 us per copy: +20-36% decode with OLMoE's 0.23 ms copies, and even one task
#: wake per layer ("bulk") cost ~10 ms of GIL per step (docs/live.md), while Mixtral's 6.4 ms copies
#: need the bound (bulk put prefetches ahead of the next gate's demand copies)
AUTO_BOUNDED_COPY_S = 1e-3


class OffloadedExperts(nn.Module):
    """Drop-in for a fused experts module: same call, weights fetched through the runtime's slots."""

    def __init__(self, runtime: ExpertOffload, layer: int, act_fn: Any) -> None:
        super().__init__()
        self.layer = layer
        self.act_fn = act_fn
        self._runtime = [runtime]  # a list, so nn.Module does not register (and .to()) the runtime
        self.splitter: Any = None  # `graphed.GraphedDecode` while it captures a decode pass

    def forward(self, hidden_states: torch.Tensor, top_k_index: torch.Tensor,
                top_k_weights: torch.Tensor) -> torch.Tensor:
        if self.splitter is not None:
            return self.splitter.split(self.layer, self.act_fn, hidden_states, top_k_index, top_k_weights)
        return self._runtime[0].run_layer(self.layer, self.act_fn, hidden_states, top_k_index, top_k_weights)


class ExpertOffload:
    """The slot pool, host weights, copy stream and counters for every sparse-MoE block of one model."""

    def __init__(self, model: Any, n_slots: int, *, eviction: str = "lru",
                 eviction_params: dict[str, Any] | None = None, device: str = "cpu", seed: int = 0,
                 kernel: str | None = None, prefetch: str = "none",
                 prefetch_params: dict[str, Any] | None = None, handover: str = "auto",
                 partition: str = "global", partition_params: dict[str, Any] | None = None,
                 miss: str = "fetch", miss_params: dict[str, Any] | None = None, timing: Any = None) -> None:
        self.device = torch.device(device)
        if handover not in HANDOVER_CHOICES:
            raise EmuError(f"expected a prefetch hand-over in {list(HANDOVER_CHOICES)}, got {handover!r}",
                           key="handover")
        self.handover = handover  # how the watchdog task submits while the forward thread is away
        self.cuda = self.device.type == "cuda"
        if self.cuda and not torch.cuda.is_available():
            raise EmuError("device cuda requested but torch sees no CUDA device", key="--device")
        blocks = sparse_blocks(model)
        for b in blocks:
            _check_fused(b.experts)
        first = blocks[0].experts
        self.n_layers = len(blocks)
        self.n_experts = int(first.gate_up_proj.shape[0])
        self.top_k = int(blocks[0].gate.top_k)
        total = self.n_layers * self.n_experts
        if not 1 <= n_slots <= total:
            raise EmuError(f"expected 1..{total} expert slots, got {n_slots}", key="cache.capacity")
        self.n_slots = n_slots
        impl = getattr(model.config, "_experts_implementation", None)
        self.kernel = kernel or ("eager" if impl in (None, "eager") else "fused")
        if self.kernel not in KERNELS:
            raise EmuError(f"expected one of {list(KERNELS)}, got {self.kernel!r}", key="--experts")
        # fused kernel: a layer whose experts all hold slots runs without its readback (see the module's text);
        # off while calibrating the host cost of a layer that reads its routing back
        self.defer = True
        # a graph decode captures the experts in its graphs where it can (`graph_experts`); off: launched
        # between the graphs as in the eager decode (for comparison)
        self.capture = True
        self.eviction, self.eviction_params, self.seed = eviction, dict(eviction_params or {}), seed
        self.prefetch, self.prefetch_params = prefetch, dict(prefetch_params or {})
        self.partition, self.partition_params = partition, dict(partition_params or {})
        # miss: what a miss does (fetch; drop: skip the expert; cpu: run it from the host weights); `timing`
        # is the emulator's Timing for a miss policy that weighs a copy against the CPU
        self.miss, self.miss_params, self.timing = miss, dict(miss_params or {}), timing
        self.gates = [b.gate for b in blocks]  # the speculator: layer l+1's gate on layer l's input
        self.gu_shape = tuple(first.gate_up_proj.shape[1:])
        self.dn_shape = tuple(first.down_proj.shape[1:])
        self.dtype = first.gate_up_proj.dtype
        self.host_pack, self.host_gu, self.host_dn = self._packed((self.n_layers, self.n_experts), host=True)
        self.resize(n_slots)
        self.fused: list[Any] = []  # each block's own experts module, its weights now the slot pool
        self.modules: list[OffloadedExperts] = []  # what the blocks call (shared with `sibling` runtimes)
        for layer, b in enumerate(blocks):
            orig = b.experts
            if tuple(orig.gate_up_proj.shape[1:]) != self.gu_shape:
                raise EmuError("experts of different shapes across layers are not supported")
            self.host_gu[layer].copy_(orig.gate_up_proj.data)
            self.host_dn[layer].copy_(orig.down_proj.data)
            del orig.gate_up_proj, orig.down_proj  # the host copy is the only one now
            self.fused.append(orig)
            b.experts = OffloadedExperts(self, layer, orig.act_fn)
            self.modules.append(b.experts)
        self._point_fused()
        self.expert_bytes = self.host_pack[0, 0].numel() * self.host_pack.element_size()
        self.copy_stream = torch.cuda.Stream(device=self.device) if self.cuda else None
        pos = torch.arange(self.top_k, dtype=torch.int64, device=self.device)
        zero = torch.zeros(1, dtype=torch.int64, device=self.device)
        self._one_token_rows = [(pos[j: j + 1], zero, j) for j in range(self.top_k)]  # `_routing_rows`, one token
        model.to(self.device)
        self.watchdog: PrefetchWatchdog | None = None
        self._copy_s: float | None = None  # seconds per expert copy, measured once (`copy_seconds`)
        # host seconds from leaving a layer to the next layer's routing readback (its attention, norms, router
        # and speculator launches), summed over `launch_ahead_n` such spans: what the host launches while the
        # GPU may still wait for the last layer's copies (the runtime calibration's `launch_ahead_s`)
        self.launch_ahead_s = 0.0
        self.launch_ahead_n = 0
        # host seconds blocked in the routing readbacks (the device sync of `_readback`), over `readback_n`,
        # and at the passes' ends (the sampling sync, timed by `runner._pass`)
        self.readback_wait_s = 0.0
        self.readback_n = 0
        self.pass_end_wait_s = 0.0
        # the runtime calibration's copying mode (`runtime_cal`): every hit copied again onto its own slot
        # through the demand path, and with prefetch each predicted key of the next layer through the
        # prefetch path, so the forward pass carries a run's copy traffic and host work without a miss
        self.recopy = False
        self.recopies = [0, 0]  # (demand, prefetch) copies made so by the copying mode
        self._left: tuple[int, float] = (-2, 0.0)  # (layer, perf_counter) when the forward thread left it
        # the runtime calibration's host ledger (`HostLedger`; None: not timed): host seconds and counts per
        # item the emulator charges (readback, cache decisions, copy issue, expert launch), per pass phase
        self.ledger: HostLedger | None = None
        # each key's slot on the device, written by a fill kernel as the slot is assigned (no host-to-device
        # copy, which would queue behind the expert copies): the fused kernel maps routing ids to slots there.
        # One tensor for the runtime's life (zeroed by `reset`): a captured decode graph reads it in place
        self.slot_table = torch.zeros((self.n_layers, self.n_experts), dtype=torch.int64, device=self.device)
        self._table_cells = _cells(self.slot_table)
        self.reset()

    def sibling(self, n_slots: int, *, eviction: str = "lru", prefetch: str = "none", seed: int = 0,
                handover: str | None = None) -> ExpertOffload:
        """A second runtime on the same model and host weights, with its own slot pool, policies, copy
        stream, watchdog and counters (eager kernel), for a calibration whose passes run between a measured
        run's: `attach` makes a runtime the one the model's blocks call. The model stays attached to self."""
        if not 1 <= n_slots <= self.n_layers * self.n_experts:
            raise EmuError(f"expected 1..{self.n_layers * self.n_experts} expert slots, got {n_slots}",
                           key="cache.capacity")
        rt = copy.copy(self)  # shares the host weights, gates and the blocks' modules; the rest is replaced
        rt.n_slots, rt.kernel, rt.fused = n_slots, "eager", []
        rt.eviction, rt.eviction_params, rt.seed = eviction, {}, seed
        rt.prefetch, rt.prefetch_params = prefetch, {}
        rt.partition, rt.partition_params = "global", {}
        rt.miss, rt.miss_params = "fetch", {}
        rt.handover = self.handover if handover is None else handover
        rt.slot_pack, rt.slot_gu, rt.slot_dn = rt._packed((n_slots,), host=False)
        rt.copy_stream = torch.cuda.Stream(device=self.device) if self.cuda else None
        rt.watchdog = None
        rt.recopy, rt.recopies = False, [0, 0]
        rt.slot_table = torch.zeros_like(self.slot_table)  # its own: `reset` zeroes the table in place
        rt._table_cells = _cells(rt.slot_table)
        rt.reset()
        return rt

    def _packed(self, lead: tuple[int, ...], host: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Expert storage with each expert's matrices back to back (gate_up, then down), so one expert is
        one contiguous block and its copy one memcpy (two cost the host a second launch and the engine a
        second per-copy latency); returns the block tensor and the two matrices' views of it."""
        n_gu, n_dn = int(np.prod(self.gu_shape)), int(np.prod(self.dn_shape))
        kw: dict[str, Any] = {"pin_memory": self.cuda} if host else {"device": self.device}
        pack = torch.empty((*lead, n_gu + n_dn), dtype=self.dtype, **kw)
        return pack, pack[..., :n_gu].view(*lead, *self.gu_shape), pack[..., n_gu:].view(*lead, *self.dn_shape)

    def resize(self, n_slots: int) -> None:
        """A new slot pool of `n_slots` (the old one freed first: both may not fit), the blocks' fused
        experts pointed at it; the cache state is the caller's to reset."""
        self.slot_pack = self.slot_gu = self.slot_dn = None
        for fused in getattr(self, "fused", ()):  # the blocks' experts modules still point at the old pool
            fused.gate_up_proj = fused.down_proj = None
        if self.cuda:
            gc.collect()
            torch.cuda.empty_cache()
        self.n_slots = n_slots
        self.slot_pack, self.slot_gu, self.slot_dn = self._packed((n_slots,), host=False)
        self._point_fused()

    def _point_fused(self) -> None:
        for fused in getattr(self, "fused", ()):
            fused.gate_up_proj, fused.down_proj, fused.num_experts = self.slot_gu, self.slot_dn, self.n_slots

    def attach(self) -> None:
        """Route the model's offloaded blocks to this runtime (self or a `sibling`)."""
        for m in self.modules:
            m._runtime[0] = self

    # --- state -------------------------------------------------------------------------------------
    def reset(self) -> None:
        """An empty cache and zero counters (after warm-up, so a measured run starts cold like the emulator)."""
        bridge = CacheBridge(self.n_layers, self.n_experts, self.top_k, self.n_slots, self.eviction,
                             self.eviction_params, self.seed, self.prefetch, self.prefetch_params, self.partition,
                             self.partition_params, self.miss, self.miss_params, self.timing)
        handover = self.resolved_handover() if bridge.prefetching else self.handover
        if not bridge.prefetching or (self.watchdog is not None and self.watchdog.handover != handover):
            self.close()
        if bridge.prefetching and self.watchdog is None:
            copy_s = self.copy_seconds() if handover == "bounded" else 0.0
            self.watchdog = PrefetchWatchdog(_SlotCopier(self), handover, copy_s)
            self.watchdog.start()
        with self._locked():
            if self.watchdog is not None:
                self.watchdog.clear()
                self.watchdog.promoted = 0
            self._reset(bridge)

    def resolved_handover(self) -> str:
        """The watchdog's hand-over: as asked, or for "auto" "bounded" when one copy takes at least
        `AUTO_BOUNDED_COPY_S` (the drain's wake per held-back copy is then a small part of it) and "inline"
        otherwise (short copies: every prefetch starts before the next gate anyway, and the task's wake
        would cost the host-paced forward thread more than the submissions; docs/live.md)."""
        if self.handover != "auto":
            return self.handover
        return "bounded" if self.copy_seconds() >= AUTO_BOUNDED_COPY_S else "inline"

    def copy_seconds(self, copies: int = 4) -> float:
        """Seconds one expert's copy keeps the copy stream busy (CUDA events around a few copies into slot
        0; 0.0 on the CPU, where copies are synchronous), for the bounded hand-over. Called while the
        cache is being emptied: slot 0's contents are not kept."""
        if not self.cuda:
            return 0.0
        if self._copy_s is not None:
            return self._copy_s
        stream = self.copy_stream
        assert stream is not None
        torch.cuda.synchronize(self.device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        with torch.cuda.stream(stream):
            self.slot_pack[0].copy_(self.host_pack[0, 0], non_blocking=True)  # a first copy, not timed
            start.record(stream)
            for _ in range(copies):
                self.slot_pack[0].copy_(self.host_pack[0, 0], non_blocking=True)
            end.record(stream)
        end.synchronize()
        self._copy_s = start.elapsed_time(end) / 1e3 / copies
        return self._copy_s

    def _reset(self, bridge: CacheBridge) -> None:
        self.bridge = bridge
        self._cache_stream()
        self.inflight_pf: dict[int, int] = {}  # prefetched key -> slot, until its copy is known to have landed
        self._predicted: np.ndarray | None = None  # the speculator's prediction seen at the current gate
        self._recopied_pf: set[int] = set()  # keys the copying mode prefetched again, until their next hit
        self.slot_of = np.full(self.n_layers * self.n_experts, -1, np.int64)
        self.free = np.ones(self.n_slots, bool)
        self.slot_last_use: list[Any] = [None] * self.n_slots
        self.layer_slots = np.zeros(self.n_layers, np.int64)  # keys of each layer that hold a slot
        self.pending: list[dict[int, Any]] = [{} for _ in range(self.n_layers)]  # slot -> copy event not waited
        self.slot_table.zero_()
        self.lut_window: list[tuple[int, int] | None] = [None] * self.n_layers  # a resident layer's slot range
        self.deferred: list[tuple[int, torch.Tensor, Any]] = []  # (layer, host ids, event) not yet booked
        self.deferred_layers = 0
        self.pass_index = -1
        self._hits = np.zeros(self.n_layers, np.int64)
        self._misses = np.zeros((3, self.n_layers), np.int64)
        self.copies = self.bytes_h2d = self.evictions = self.waits = 0

    def preload(self, keys: np.ndarray | None = None) -> None:
        """Fill the free slots with experts in key order (layer by layer), as a server with room for them
        would at start; the copies are not counted. With every slot filled this way at 100% cache, every
        layer runs deferred. `keys` (layer * n_experts + expert): only these."""
        self.flush()
        wanted = None
        if keys is not None:
            wanted = np.zeros(self.n_layers * self.n_experts, bool)
            wanted[np.asarray(keys, np.int64)] = True  # the caller's keys are of this model (an index error else)
        for layer in range(self.n_layers):
            room = int(self.free.sum())
            if room == 0:
                break
            lo, hi = layer * self.n_experts, (layer + 1) * self.n_experts
            absent = self.slot_of[lo:hi] < 0
            if wanted is not None:
                absent &= wanted[lo:hi]
            experts = np.flatnonzero(absent)[:room].astype(np.int64)
            outcome, _victims, _misses = self.bridge.gate(layer, experts)
            for e, out in zip(experts.tolist(), outcome.tolist()):
                if out != MISS_FREE:
                    raise RuntimeError(f"preload: layer {layer} expert {e} found no free slot")
                self._place(layer, e, -1)
                self.bridge.finish(layer, (e,))
        self._hits[:] = 0
        self._misses[:] = 0
        self.copies = self.bytes_h2d = self.evictions = self.waits = 0

    def close(self) -> None:
        """Stop the prefetch watchdog (raising here what made it fail, if anything)."""
        wd, self.watchdog = self.watchdog, None
        if wd is not None:
            wd.stop()

    def _locked(self) -> Any:
        return self.watchdog.lock if self.watchdog is not None else contextlib.nullcontext()

    def _cache_stream(self) -> None:
        """The compute stream, looked up once per pass: `torch.cuda.current_stream` costs ~20 us of host
        time, and the runtime used to ask per expert and per copy (the profile's largest host cost)."""
        self.compute_stream = torch.cuda.current_stream(self.device) if self.cuda else None

    def begin_pass(self, phase: int = 1) -> None:
        if self.ledger is not None:
            self.ledger.begin_pass(phase)
        self._cache_stream()
        self._recopied_pf.clear()  # a next-layer prefetch of the copying mode never outlives its pass
        self.flush()
        self.pass_index += 1
        self.bridge.begin_pass(self.pass_index)

    def stats(self) -> OffloadStats:
        self.flush()
        pf = {}
        if self.watchdog is not None:
            self.watchdog.check()
            self.watchdog.pump()  # what the engine would have started by now
            pf = self.bridge.prefetch_counts() | {"prefetch_promoted": self.watchdog.promoted}
        hits = int(self._hits.sum())
        misses = int(self._misses.sum())
        actions = self.bridge.miss_actions()
        return OffloadStats(
            accesses=hits + misses + actions["dropped"], hits=hits, misses=misses, **actions,
            compulsory=int(self._misses[COMPULSORY].sum()),
            capacity=int(self._misses[CAPACITY].sum()), collision=int(self._misses[COLLISION].sum()),
            copies=self.copies, bytes_h2d=self.bytes_h2d, evictions=self.evictions, waits=self.waits,
            per_layer_hits=tuple(int(x) for x in self._hits),
            per_layer_misses=tuple(int(x) for x in self._misses.sum(axis=0)), **pf)

    # --- copies ------------------------------------------------------------------------------------
    def _place(self, layer: int, expert: int, victim: int) -> tuple[int, Any]:
        """Give the key a slot (the victim's or a free one) and start its copy (through the watchdog when
        prefetching, so it never interleaves with a prefetch submission); returns slot and event."""
        slot = self._assign(layer, expert, victim)
        return slot, self._demand(layer, expert, slot)

    def _demand(self, layer: int, expert: int, slot: int) -> Any:
        """A demand copy into the slot (through the watchdog when prefetching); returns its event."""
        if self.watchdog is None:
            return self._copy(layer, expert, slot)
        self.watchdog.demand((layer, expert, slot))
        return self.pending[layer].get(slot)

    def _assign(self, layer: int, expert: int, victim: int) -> int:
        """The slot bookkeeping of a copy decided now: the victim's slot or a free one."""
        key = layer * self.n_experts + expert
        if victim >= 0:
            slot = int(self.slot_of[victim])
            self.slot_of[victim] = -1
            self.evictions += 1
            self.inflight_pf.pop(victim, None)
            old = victim // self.n_experts
            self.layer_slots[old] -= 1
            self.lut_window[old] = None
            self.pending[old].pop(slot, None)
        else:
            home = key % self.n_slots
            slot = home if self.free[home] else int(np.argmax(self.free))
            self.free[slot] = False
        self.slot_of[key] = slot
        if self.kernel == "fused":  # only the fused kernel reads the table: a kernel launch less per copy
            self._table_cells[key].fill_(slot)
        self.layer_slots[layer] += 1
        self.lut_window[layer] = None
        return slot

    def _copy(self, layer: int, expert: int, slot: int) -> Any:
        """Start the copy of an expert into its slot once the compute that last read the slot is done."""
        if self.ledger is None:
            return self._start_copy(layer, expert, slot)
        t0 = time.perf_counter()
        event = self._start_copy(layer, expert, slot)
        self.ledger.add("copy", time.perf_counter() - t0)
        return event

    def _start_copy(self, layer: int, expert: int, slot: int) -> Any:
        src = self.host_pack[layer, expert]
        event = None
        if self.cuda:
            copy_stream = self.copy_stream
            assert copy_stream is not None
            # the copy stream made current for the two copies (set_stream, not the `torch.cuda.stream` context,
            # which looks up the current stream twice per use); then back to the compute stream
            torch.cuda.set_stream(copy_stream)
            try:
                last = self.slot_last_use[slot]
                if last is not None:
                    copy_stream.wait_event(last)
                self.slot_pack[slot].copy_(src, non_blocking=True)
                event = torch.cuda.Event()
                event.record(copy_stream)
            finally:
                torch.cuda.set_stream(self.compute_stream)
            self.pending[layer][slot] = event
        else:
            self.slot_pack[slot].copy_(src)
        self.copies += 1
        self.bytes_h2d += self.expert_bytes
        return event

    # --- one layer ---------------------------------------------------------------------------------
    def run_layer(self, layer: int, act_fn: Any, hidden: torch.Tensor, top_k_index: torch.Tensor,
                  top_k_weights: torch.Tensor) -> torch.Tensor:
        out = self._run_layer(layer, act_fn, hidden, top_k_index, top_k_weights)
        self._leave(layer)
        return out

    def _leave(self, layer: int) -> None:
        """The forward thread leaves the runtime after a layer's experts were launched."""
        wd = self.watchdog
        if wd is not None:
            # leaving the runtime until the next layer's readback (attention, norms, router; at the last
            # layer the lm head and the sampling sync): no checkpoint of ours runs there, so the queue is
            # handed over (submitted here with "inline", else to the watchdog task: one wake per layer);
            # the next gate comes no sooner than the copies of this layer's experts have landed
            n = self.n_experts
            jobs = ((layer, k % n, int(self.slot_of[k])) for k in self.bridge.gated().tolist())
            wd.away(layer, wd.last_landing(jobs))
        self._left = (layer, time.perf_counter())

    def _gate(self, layer: int, hidden: torch.Tensor, top_k_index: torch.Tensor) -> _Gate:
        """The layer's routing read back and decided: hits, copies started into free or evicted slots,
        misses that wait for a slot, misses the policy runs on the host (dropped ones are not computed at
        all), and the policy's prefetches issued."""
        self.flush()
        index, predicted = self._readback(layer, hidden, top_k_index)  # the host must know the ids
        experts, tokens = np.unique(index, return_counts=True)
        experts = experts.astype(np.int64)
        ready: list[tuple[int, int, Any]] = []  # (expert, slot, event to wait for)
        late: list[tuple[int, int, Any]] = []  # hits whose prefetch copy is still on its way
        loading: list[tuple[int, int, Any]] = []
        waiting: list[int] = []
        on_host: list[int] = []
        with self._locked():  # no prefetch submission between this gate's decisions and its demand copies
            if self.watchdog is not None:
                self._before_gate(layer, index, predicted)
            elif self.miss != "fetch":
                self.bridge.observe(layer, index, None)  # the miss policy ranks the layer's routing
            outcome, victims, misses = self.bridge.gate(layer, experts, tokens)
            for kind in (COMPULSORY, CAPACITY, COLLISION):
                self._misses[kind, layer] += int(misses[kind])
            self._hits[layer] += int((outcome == HIT).sum())
            for e, out, victim in zip(experts.tolist(), outcome.tolist(), victims.tolist()):
                key = layer * self.n_experts + e
                if out == HIT:
                    slot = int(self.slot_of[key])
                    if self.recopy and key not in self._recopied_pf and key not in self.inflight_pf:
                        self.recopies[0] += 1  # the copying mode: a hit taken as a miss onto its own slot
                        loading.append((e, slot, self._demand(layer, e, slot)))
                    elif self.watchdog is None:
                        ready.append((e, slot, None))
                    elif self.inflight_pf.pop(key, None) is not None:  # a late hit: promoted if still queued
                        self._recopied_pf.discard(key)
                        self.watchdog.promote(key)
                        late.append((e, slot, self.pending[layer].get(slot)))
                    else:
                        self._recopied_pf.discard(key)
                        ready.append((e, slot, self.pending[layer].get(slot)))
                elif out == MISS_WAIT:
                    waiting.append(e)
                elif out == MISS_CPU:
                    on_host.append(e)
                elif out == MISS_DROP:
                    pass
                else:
                    slot, event = self._place(layer, e, int(victim) if out == MISS_EVICT else -1)
                    loading.append((e, slot, event))
            if self.watchdog is not None:
                self._issue_prefetches(layer)
        self.waits += len(waiting)
        return _Gate(index, experts, ready + late, loading, waiting, on_host)

    def _retry_waiting(self, layer: int, waiting: list[int], queue: list[tuple[int, int, Any]]) -> None:
        """A released expert or a landed prefetch may make room for the waiting misses (FIFO): each that
        finds a slot starts its copy and joins `queue`."""
        with self._locked():
            while waiting:
                got = self.bridge.retry(layer, waiting[0])
                if got == -2:
                    break
                w = waiting.pop(0)
                slot_w, event_w = self._place(layer, w, got)
                queue.append((w, slot_w, event_w))

    def _run_layer(self, layer: int, act_fn: Any, hidden: torch.Tensor, top_k_index: torch.Tensor,
                   top_k_weights: torch.Tensor) -> torch.Tensor:
        resident = self.layer_slots[layer] == self.n_experts
        if resident and self.defer and self.watchdog is None and self.kernel == "fused":
            out = self._run_deferred(layer, hidden, top_k_index, top_k_weights)
            if out is not None:
                return out
        g = self._gate(layer, hidden, top_k_index)
        index, experts, ready, loading, waiting, on_host = g.index, g.experts, g.ready, g.loading, g.waiting, g.on_host
        ledger = self.ledger
        if ledger is not None:
            launch_from = ledger.close_gate()
        if self.kernel == "fused" and not waiting and len(ready) + len(loading) == len(experts):
            out = self._run_fused(layer, index, hidden, top_k_index, top_k_weights, ready + loading)
            if out is not None:
                if ledger is not None:  # the one launch's host work, shared by the layer's experts
                    ledger.close_experts(launch_from, len(experts))
                return out
        rows = self._routing_rows(index, top_k_index)
        results: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        for e in on_host:
            results[e] = self._compute_host(layer, e, act_fn, hidden, top_k_weights, rows[e])
        queue = ready + loading  # hits run first while the misses load
        unfinished: list[int] = []  # computed, not yet landed and released with the bridge
        while queue:
            e, slot, event = queue.pop(0)
            results[e] = self._compute(slot, event, act_fn, hidden, top_k_weights, rows[e])
            unfinished.append(e)
            if waiting:  # a waiting miss retries on what this expert frees; otherwise one call for the layer
                self.bridge.finish(layer, unfinished)
                unfinished.clear()
            if self.watchdog is not None:
                if waiting:
                    self._poll_prefetches()
                else:
                    self.watchdog.pump()  # a checkpoint: the engine may have freed up while this launched
            if waiting:
                self._retry_waiting(layer, waiting, queue)
        if waiting:
            raise EmuError(f"layer {layer}: {len(waiting)} experts found no slot; the cache has {self.n_slots}")
        self.bridge.finish(layer, unfinished)
        self._waited(layer, experts)
        final = torch.zeros_like(hidden)
        for e in experts.tolist():  # eager's summation order
            if e not in results:  # dropped by the miss policy
                continue
            token_idx, out = results[e]
            final.index_add_(0, token_idx, out.to(final.dtype))
        if ledger is not None:
            ledger.close_experts(launch_from, len(results) - len(on_host))
        return final

    def _readback(self, layer: int, hidden: torch.Tensor, top_k_index: torch.Tensor
                  ) -> tuple[np.ndarray, np.ndarray | None]:
        index, predicted = self._readback_ids(layer, hidden, top_k_index)
        if self.ledger is not None:
            self.ledger.gate_from = time.perf_counter()
        return index, predicted

    def _readback_ids(self, layer: int, hidden: torch.Tensor, top_k_index: torch.Tensor
                      ) -> tuple[np.ndarray, np.ndarray | None]:
        """The layer's routing on the host and, when prefetching, the speculator's prediction for the next
        layer (its gate on this layer's input, as `hooks.RoutingHooks` computes it), in one copy."""
        wd = self.watchdog
        if wd is None:
            self._launched(layer)
            return self._to_host(top_k_index), None
        if layer + 1 >= self.n_layers:
            self._launched(layer)
            wd.away()  # the copy below waits for the device: the watchdog task pumps meanwhile
            index = self._to_host(top_k_index)
            wd.present()
            return index, None
        gate = self.gates[layer + 1]
        x = hidden.reshape(-1, gate.weight.shape[1])
        with torch.no_grad():
            logits = nn.functional.linear(x.to(gate.weight.dtype), gate.weight)
            pred = torch.topk(logits, self.top_k, dim=-1).indices
        both = torch.cat([top_k_index, pred.to(top_k_index.dtype)], dim=1)
        self._launched(layer)
        wd.away()
        both = self._to_host(both)
        wd.present()
        return both[:, : self.top_k], both[:, self.top_k:]

    def _to_host(self, ids: torch.Tensor) -> np.ndarray:
        """The readback: the host blocks until the GPU has computed `ids` (timed: `readback_wait_s`). With the
        ledger the wait and the transfer are timed apart: a sync first (the wait), then the copy (host work)."""
        t0 = time.perf_counter()
        ledger = self.ledger
        if ledger is not None and self.cuda:
            self.compute_stream.synchronize()
            t1 = time.perf_counter()
            out = ids.cpu().numpy()
            ledger.add("readback", time.perf_counter() - t1)
            self.readback_wait_s += t1 - t0
        else:
            out = ids.cpu().numpy()
            self.readback_wait_s += time.perf_counter() - t0
        self.readback_n += 1
        return out

    def _launched(self, layer: int) -> None:
        """The host launched everything up to this layer's readback: close the span since the last layer."""
        last, at = self._left
        if last == layer - 1:
            self.launch_ahead_s += time.perf_counter() - at
            self.launch_ahead_n += 1

    @property
    def sync_wait_s(self) -> float:
        """Host seconds blocked on the device so far (readbacks and passes' ends): what a step's host work is not."""
        return self.readback_wait_s + self.pass_end_wait_s

    def _before_gate(self, layer: int, index: np.ndarray, predicted: np.ndarray | None) -> None:
        """Start what the idle copy engine would have started by now, tell the policy which prefetches
        have landed (evictable from now on), and show it this layer's routing and prediction."""
        self._poll_prefetches()
        self.bridge.observe(layer, index, predicted)
        self._predicted = predicted

    def _poll_prefetches(self) -> None:
        """Start what the idle copy engine would have started by now; prefetches whose copy landed become
        resident (evictable), as at a copy completion in the emulator."""
        wd = self.watchdog
        assert wd is not None
        with wd.lock:
            wd.check()
            wd.pump()
            for key, slot in list(self.inflight_pf.items()):
                if wd.queued(key):
                    continue
                kl = key // self.n_experts
                event = self.pending[kl].get(slot)
                if event is None or event.query():
                    self.bridge.complete(kl, key % self.n_experts)
                    del self.inflight_pf[key]

    def _issue_prefetches(self, layer: int) -> None:
        """The policy's prefetches of this gate: each takes its slot now and queues its copy."""
        assert self.watchdog is not None
        keys, victims = self.bridge.prefetch(layer)
        if self.recopy and self._predicted is not None:  # the copying mode: each predicted key again, own slot
            nxt = (layer + 1) * self.n_experts + np.unique(self._predicted)
            keys = nxt[(self.slot_of[nxt] >= 0) & np.array([k not in self.inflight_pf for k in nxt.tolist()], bool)]
            victims = keys
            self.recopies[1] += len(keys)
            self._recopied_pf.update(keys.tolist())
        for key, victim in zip(keys.tolist(), victims.tolist()):
            kl, ke = divmod(key, self.n_experts)
            slot = self._assign(kl, ke, victim)
            self.inflight_pf[key] = slot
            self.watchdog.enqueue(key, (kl, ke, slot))

    def _run_deferred(self, layer: int, hidden: torch.Tensor, top_k_index: torch.Tensor,
                      top_k_weights: torch.Tensor) -> torch.Tensor | None:
        """Every expert of the layer holds a slot: run the fused kernel with the ids mapped to slots on the
        device and book the accesses later (`flush`); None when the layer's window is too wide."""
        window = self.lut_window[layer]
        if window is None:
            slots = self.slot_of[layer * self.n_experts: (layer + 1) * self.n_experts]
            lo, hi = int(slots.min()), int(slots.max())
            if hi - lo + 1 > MAX_GROUPS:
                return None
            window = self.lut_window[layer] = (lo, hi)
        lo, hi = window
        self._wait_pending(layer)
        out = self._fused_window(layer, lo, hi, hidden, top_k_index, top_k_weights)
        done = self._defer(layer, top_k_index)
        if done is not None:
            for slot in range(lo, hi + 1):
                self.slot_last_use[slot] = done
        return out

    def _wait_pending(self, layer: int) -> None:
        """The compute stream waits for every copy of the layer not yet waited for."""
        if self.pending[layer]:
            stream = self.compute_stream
            if stream is not None:
                for event in self.pending[layer].values():
                    stream.wait_event(event)
            self.pending[layer].clear()

    def _defer(self, layer: int, top_k_index: torch.Tensor) -> Any:
        """Book a wholly resident layer's routing later (`flush`): copied to pinned host memory behind the
        layer's launches; returns the event after the copy (None on the CPU)."""
        ids = torch.empty(top_k_index.shape, dtype=top_k_index.dtype, pin_memory=self.cuda)
        ids.copy_(top_k_index, non_blocking=self.cuda)
        done = None
        if self.compute_stream is not None:
            done = torch.cuda.Event()
            done.record(self.compute_stream)
        self.deferred.append((layer, ids, done))
        self.deferred_layers += 1
        return done

    # --- experts captured in the decode graphs (`graphed.GraphedDecode`) --------------------------------
    def graph_experts(self, n_slots: int | None = None) -> bool:
        """Whether a graph decode captures this runtime's experts in its graphs (with a pool of `n_slots`;
        None: its own): the fused kernel over the whole slot pool (one grouped GEMM takes it) in bf16 (torch's
        grouped GEMM runs other dtypes group by group from the host, which a capture cannot hold), the routing
        mapped to slots on the device, every routed expert computed on the GPU (the miss policy fetches)."""
        pool = self.n_slots if n_slots is None else n_slots
        return (self.capture and self.kernel == "fused" and pool <= MAX_GROUPS and self.miss == "fetch"
                and self.dtype == torch.bfloat16)

    def captured_experts(self, layer: int, hidden: torch.Tensor, top_k_index: torch.Tensor,
                         top_k_weights: torch.Tensor) -> torch.Tensor:
        """While a decode pass is captured: the layer's experts as the fused kernel over the whole slot pool,
        reading the slot table in place (what a replay computes is what the table holds by then)."""
        return self._fused_window(layer, 0, self.n_slots - 1, hidden, top_k_index, top_k_weights)

    def place_layer(self, layer: int, hidden: torch.Tensor, top_k_index: torch.Tensor) -> _Placed:
        """Before the replay that computes the layer's captured experts: its decisions and copies, every
        routed expert given a slot, and the compute stream made to wait for their copies. A wholly resident
        layer (no prefetch) reads no routing: it is booked later, as a deferred layer."""
        ledger = self.ledger
        if self.layer_slots[layer] == self.n_experts and self.defer and self.watchdog is None:
            self._wait_pending(layer)
            self._defer(layer, top_k_index)
            slots = self.slot_of[layer * self.n_experts: (layer + 1) * self.n_experts].tolist()
            return _Placed(layer, None, slots, 0.0)
        g = self._gate(layer, hidden, top_k_index)
        if g.on_host:
            raise EmuError(f"layer {layer}: the miss policy ran experts on the host; experts captured in the "
                           f"decode graphs run every routed expert on the GPU", key="miss")
        since = ledger.close_gate() if ledger is not None else 0.0
        placed = g.ready + g.loading
        waiting = g.waiting
        while waiting:  # only a landing prefetch frees a slot: the layer's own experts run after the replay
            if self.watchdog is None or not self.inflight_pf:
                raise EmuError(f"layer {layer}: {len(waiting)} experts found no slot with every other slot "
                               f"taken by the layer; captured experts need more than {self.n_slots} slots",
                               key="cache.capacity")
            self._poll_prefetches()
            self._retry_waiting(layer, waiting, placed)
        stream = self.compute_stream
        if stream is not None:
            for _e, _slot, event in placed:
                if event is not None:
                    stream.wait_event(event)
        host = time.perf_counter() - since if ledger is not None else 0.0
        return _Placed(layer, g.experts, [slot for _e, slot, _event in placed], host)

    def launched_layer(self, placed: _Placed) -> None:
        """After the replay that computes the layer's experts was launched: their slots are busy until the
        compute stream gets past it, and the experts are finished with the cache policy."""
        t0 = time.perf_counter()
        done = None
        if self.compute_stream is not None:
            done = torch.cuda.Event()
            done.record(self.compute_stream)
        for slot in placed.slots:
            self.slot_last_use[slot] = done
        layer = placed.layer
        if placed.experts is not None:
            self.bridge.finish(layer, placed.experts.tolist())
            self._waited(layer, placed.experts)
            if self.watchdog is not None:
                self.watchdog.pump()  # a checkpoint after the launch
            if self.ledger is not None:  # the launch is the replay's: what is left is the bookkeeping
                self.ledger.note("place", placed.host_s)
                self.ledger.note("booking", time.perf_counter() - t0)
                self.ledger.close_experts(t0, len(placed.experts), before=placed.host_s)
        self._leave(layer)

    def flush(self) -> None:
        """Book the deferred layers' accesses with the cache policy, in the order they ran (all hits)."""
        if not self.deferred:
            return
        pending, self.deferred = self.deferred, []
        for layer, ids, done in pending:
            if done is not None:
                done.synchronize()
            experts = np.unique(ids.numpy()).astype(np.int64)
            outcome, _victims, _misses = self.bridge.gate(layer, experts)
            if not np.all(outcome == HIT):
                raise RuntimeError(f"layer {layer}: a deferred layer missed; every expert was to hold a slot")
            self._hits[layer] += len(experts)
            self.bridge.finish(layer, experts)

    def _run_fused(self, layer: int, index: np.ndarray, hidden: torch.Tensor, top_k_index: torch.Tensor,
                   top_k_weights: torch.Tensor, placed: list[tuple[int, int, Any]]) -> torch.Tensor | None:
        """The model's own experts function over the window of slots the layer uses, once every copy of
        the layer landed, the routing mapped to slots on the device; None when the window is wider than one
        grouped GEMM takes."""
        slot_ids = self.slot_of[layer * self.n_experts + index]
        lo, hi = int(slot_ids.min()), int(slot_ids.max())
        if hi - lo + 1 > MAX_GROUPS:
            return None
        stream = self.compute_stream
        for _e, _slot, event in placed:
            if event is not None:
                stream.wait_event(event)
        out = self._fused_window(layer, lo, hi, hidden, top_k_index, top_k_weights)
        done = None
        if self.cuda:
            done = torch.cuda.Event()
            done.record(stream)
        for _e, slot, _event in placed:
            self.slot_last_use[slot] = done
        self.bridge.finish(layer, [e for e, _slot, _event in placed])
        self._waited(layer, np.unique(index))
        if self.watchdog is not None:
            self.watchdog.pump()  # a checkpoint after the launch
        return out

    def _fused_window(self, layer: int, lo: int, hi: int, hidden: torch.Tensor, top_k_index: torch.Tensor,
                      top_k_weights: torch.Tensor) -> torch.Tensor:
        """The layer's own experts module over slots lo..hi of the pool, the routing's experts mapped to those
        slots on the device (through the slot table)."""
        fused = self.fused[layer]
        fused.gate_up_proj, fused.down_proj = self.slot_gu[lo: hi + 1], self.slot_dn[lo: hi + 1]
        fused.num_experts = hi - lo + 1
        ids = self.slot_table[layer][top_k_index]
        return fused(hidden, ids.sub_(lo) if lo else ids, top_k_weights)

    def _waited(self, layer: int, experts: np.ndarray) -> None:
        """The compute stream has waited for these experts' copies."""
        pending = self.pending[layer]
        if pending:
            for slot in self.slot_of[layer * self.n_experts + experts].tolist():
                pending.pop(slot, None)

    def _routing_rows(self, index: np.ndarray, top_k_index: torch.Tensor) -> dict[int, tuple[Any, Any, int | None]]:
        """Per needed expert, its (top-k slot, token) rows as device tensors, in eager's order
        (`torch.where((top_k_index == e).T)`: by top-k slot, then token), and for one token its top-k slot j
        (None for more).

        No host-to-device copy: the host sorts its readback to find each expert's span, and the device sorts
        the same ids with the same stable sort, so both hold one permutation. (An upload would be synchronous
        and queue on the copy engine behind every expert copy submitted before it.) One token needs no sort:
        expert index[0, j] has the one row (j, 0).
        """
        n_tok = index.shape[0]
        if n_tok == 1:
            return {int(e): self._one_token_rows[j] for j, e in enumerate(index[0].tolist())}
        flat = index.T.reshape(-1)  # (slot, token) order
        order = np.argsort(flat, kind="stable")
        experts, starts, counts = np.unique(flat[order], return_index=True, return_counts=True)
        order_dev = torch.argsort(top_k_index.T.reshape(-1), stable=True)
        rows_dev = torch.stack([order_dev // n_tok, order_dev % n_tok])
        return {int(e): (rows_dev[0, s: s + c], rows_dev[1, s: s + c], None)
                for e, s, c in zip(experts.tolist(), starts.tolist(), counts.tolist())}

    def _compute_host(self, layer: int, expert: int, act_fn: Any, hidden: torch.Tensor, top_k_weights: torch.Tensor,
                      rows: tuple[Any, Any, int | None]) -> tuple[torch.Tensor, torch.Tensor]:
        """The expert on the host CPU from its host weights (a `cpu` miss), its output back on the device."""
        x, weight, token_idx = _token_rows(hidden, top_k_weights, rows)
        h = _expert_ffn(x.to("cpu"), self.host_gu[layer, expert], self.host_dn[layer, expert], act_fn).to(hidden.device)
        return token_idx, h * weight

    def _compute(self, slot: int, event: Any, act_fn: Any, hidden: torch.Tensor, top_k_weights: torch.Tensor,
                 rows: tuple[Any, Any, int | None]) -> tuple[torch.Tensor, torch.Tensor]:
        if event is not None:
            self.compute_stream.wait_event(event)
        x, weight, token_idx = _token_rows(hidden, top_k_weights, rows)
        out = _expert_ffn(x, self.slot_gu[slot], self.slot_dn[slot], act_fn) * weight
        if self.cuda:
            done = torch.cuda.Event()
            done.record(self.compute_stream)
            self.slot_last_use[slot] = done
        return token_idx, out


class _Placed(NamedTuple):
    """A layer given slots before the replay that computes its captured experts (`place_layer`): its
    distinct experts (None: a deferred layer, booked later), the slots the replay reads, and the host
    seconds of the placement after the gate's decisions."""

    layer: int
    experts: np.ndarray | None
    slots: list[int]
    host_s: float


class _Gate(NamedTuple):
    """One layer's decisions (`ExpertOffload._gate`): its routing, its distinct experts, and per expert what
    runs it: (expert, slot, copy event or None) for hits (late ones included) and started copies."""

    index: np.ndarray
    experts: np.ndarray
    ready: list[tuple[int, int, Any]]
    loading: list[tuple[int, int, Any]]
    waiting: list[int]
    on_host: list[int]


@attrs.define
class HostLedger:
    """Host seconds and counts per item a runtime profile charges, per pass phase (0 prefill, 1 decode): the
    routing readback's transfer (`readback`, its wait timed apart), the layer's cache decisions from the
    readback to the first expert launch less the copies issued meanwhile (`gate`), each copy's issue (`copy`),
    and per expert launched the loop's work from the first launch to the layer's combined output less its
    copies (`expert`; a fused layer's one launch shared by its experts). A deferred layer is not timed: it
    reads no routing, so nothing of it is a decision's."""

    seconds: dict[tuple[int, str], float] = attrs.Factory(dict)
    counts: dict[tuple[int, str], int] = attrs.Factory(dict)
    phase: int = 1
    gate_from: float = 0.0
    _copy_mark: float = 0.0
    #: host seconds of parts of the items above, kept apart for diagnosis only (no cost is priced from them):
    #: under the captured experts, "replay" (the graph launches between the layers), "place" (what a layer's
    #: placement does after its gate: the compute stream's waits for the copies) and "booking" (the layer's
    #: bookkeeping after its replay's launch, while the device works)
    parts: dict[tuple[int, str], float] = attrs.Factory(dict)

    def add(self, item: str, seconds: float, n: int = 1) -> None:
        key = (self.phase, item)
        self.seconds[key] = self.seconds.get(key, 0.0) + seconds
        self.counts[key] = self.counts.get(key, 0) + n

    def note(self, part: str, seconds: float) -> None:
        key = (self.phase, part)
        self.parts[key] = self.parts.get(key, 0.0) + seconds

    def begin_pass(self, phase: int) -> None:
        self.phase = phase
        self._copy_mark = self.copy_seconds()

    def copy_seconds(self) -> float:
        return self.seconds.get((self.phase, "copy"), 0.0)

    def close_gate(self) -> float:
        """The decisions end where the launches begin; returns that moment."""
        now = time.perf_counter()
        self.add("gate", (now - self.gate_from) - (self.copy_seconds() - self._copy_mark))
        self._copy_mark = self.copy_seconds()
        return now

    def close_experts(self, since: float, n: int, before: float = 0.0) -> None:
        """The experts' launches end now; `before`: host seconds of theirs spent before `since`."""
        if n > 0:
            self.add("expert", before + (time.perf_counter() - since) - (self.copy_seconds() - self._copy_mark), n)
        self._copy_mark = self.copy_seconds()

    def per_item(self, phase: int, item: str) -> float | None:
        n = self.counts.get((phase, item), 0)
        return self.seconds[(phase, item)] / n if n else None


def _cells(table: torch.Tensor) -> list[torch.Tensor]:
    """One view per key of the slot table (layer * n_experts + expert), made once: a fill through a ready view
    skips the two-index lookup on the host (3.1 -> 0.8 us a fill on the CPU)."""
    return list(table.view(-1).split(1))


def _token_rows(hidden: torch.Tensor, top_k_weights: torch.Tensor, rows: tuple[Any, Any, int | None]
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """An expert's input rows, its routing weights (rows x 1) and its token ids. One token needs no gather: the
    same values as eager's `hidden[token_idx]` and `top_k_weights[token_idx, top_k_pos, None]` as views (two
    index kernels fewer per expert on the host's critical path)."""
    top_k_pos, token_idx, j = rows
    if j is not None and hidden.shape[0] == 1 and hidden.is_contiguous():
        return hidden, top_k_weights[:, j: j + 1], token_idx
    return hidden[token_idx], top_k_weights[token_idx, top_k_pos, None], token_idx


def _expert_ffn(x: torch.Tensor, gate_up: torch.Tensor, down: torch.Tensor, act_fn: Any) -> torch.Tensor:
    """One expert's FFN as the eager experts module computes it (the same ops, so the same bits)."""
    gate, up = nn.functional.linear(x, gate_up).chunk(2, dim=-1)
    return nn.functional.linear(act_fn(gate) * up, down)


class _SlotCopier:
    """The watchdog's copy engine: `ExpertOffload._copy` on the copy stream (plain copies on the CPU); idle
    once the last submitted copy's event has completed (one stream: copies land in submission order)."""

    def __init__(self, runtime: ExpertOffload) -> None:
        self.runtime = runtime
        self.last: Any = None

    def submit(self, job: tuple[int, int, int]) -> None:
        event = self.runtime._copy(*job)
        if event is not None:
            self.last = event

    def idle(self) -> bool:
        return self.last is None or bool(self.last.query())

    def wait_idle(self) -> None:
        last = self.last
        if last is not None:
            last.synchronize()  # releases the GIL
