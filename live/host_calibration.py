"""`emu calibrate --runtime NAME`: a runtime profile measured from runs of the live runtime that are then thrown away.

For each model, a calibration request (its own prompt and seed, none of a validation's) runs through the
runtime, in the decode mode it calibrates, after a warm-up and an untimed rehearsal, with the runtime's host
ledger on (`offload.HostLedger`): the routing readback's transfer is timed apart from its wait (a sync
first), the cache decisions from the readback to the first expert launch, each copy's issue, and the expert
launch loop per expert. The launches from one layer's experts to the next layer's readback (attention, norms,
router, speculator: `ExpertOffload.launch_ahead_s`) give `layer_s`. What a decode step's host work holds
beyond those (its time less its readback waits less every item above, `layer_s` counted for every layer) is
`pass_s`. The request runs four times on the same prompt: with every expert resident (all hits), which prices
the pass, layer, readback, gate and expert launch; the same with a prefetch policy (`PREFETCH`), which then
decides at each gate and issues nothing (`prefetch_gate_s`: what the policy adds to a step, per gate: the part
of its work that the device waits for; under the graph decode some of it runs while the device works); with a small LRU
cache, whose steps' host work over their copies (the slope, within the one request; where every step copies as
many, its host work beyond the first run's prices) is what a demand miss adds, per copy (`copy_s`; never below
the copy's own issue), and whose prefill gives the prefill items; and with the same cache and the
prefetch policy, which prices a prefetch (`prefetch_s`, and `prefill_prefetch_s` from its prefill): its host
work beyond the third run's, less what its other expert launches and demand copies and the policy's gates
cost, over the prefetches it issued (the queue, the copies' submission, the landing polls; never below the
issue alone, which a prefetching sibling runtime times through the prefetch path's own loop,
`runtime_cal.measure_prefetch_issue`). Where every expert fits the device, a fifth run decodes `BATCH` prompts in
lockstep with every expert resident: a pass of several tokens gathers each expert's rows and scatters its output,
launches a one-token pass skips, so its expert launch is priced on its own (`batch_expert_s`).

The profile's `[models."<preset>"]` entries hold each model's costs; `[host]` the median over the models, for a
model the profile has no entry for. None of these runs is ever compared with the emulator.
"""

from __future__ import annotations

import datetime
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import attrs
import numpy as np

from emu.errors import EmuError
from emu.runtime_profile import HOST_KEYS, HostCosts, RuntimeProfile

#: the calibration request: its prompt and decode steps, its seed (none of a validation's), its cache
PROMPT_LEN = 128
DECODE_STEPS = 32
SEED = 4242
CAPACITY = 0.10
#: the prefetch policy of the request that prices a prefetch
PREFETCH = "next-layer"
#: the requests of the resident batch request, decoded in lockstep: a decode pass of several tokens launches each
#: expert with the gather of its rows and the scatter of its output (`batch_expert_s`)
BATCH = 4


@attrs.frozen
class ModelCalibration:
    """One model's host costs and what they came from."""

    preset: str
    n_layers: int
    costs: HostCosts
    raw: dict[str, Any]
    #: `prefetch_gate_s` of each live prefetch policy measured on its own (`prefetch_gate_by_policy`)
    gates: dict[str, float] = attrs.field(factory=dict)


def parse_model_arg(value: str) -> tuple[str, int | None]:
    """`PRESET` or `PRESET@LAYERS` (a model cut to its first LAYERS MoE layers)."""
    preset, _, layers = value.partition("@")
    if not layers:
        return preset, None
    try:
        n = int(layers)
    except ValueError:
        n = 0
    if n < 1:
        raise EmuError(f"expected PRESET or PRESET@LAYERS with a positive layer count, got {value!r}", key="--model")
    return preset, n


def calibrate_model(preset: str, n_layers: int | None, *, device: str = "cuda", scale: str = "full",
                    prompt_len: int = PROMPT_LEN, steps: int = DECODE_STEPS, capacity: float = CAPACITY,
                    seed: int = SEED, decode: str = "eager", kernel: str = "eager") -> ModelCalibration:
    """Build the model (random weights) and calibrate it with the runtime's experts `kernel`."""
    from .models import build_model, shape_of
    from .offload import ExpertOffload

    model = build_model(preset, scale, n_layers=n_layers, dtype="bf16", seed=seed)
    shape = shape_of(model, preset, scale)
    runtime = ExpertOffload(model, shape.top_k, eviction="lru", device=device, seed=seed, kernel=kernel)
    try:
        return calibrate_built(model, runtime, shape, preset, prompt_len=prompt_len, steps=steps,
                               capacity=capacity, seed=seed, decode=decode)
    finally:
        runtime.close()


def calibrate_built(model: Any, runtime: Any, shape: Any, preset: str, *, prompt_len: int = PROMPT_LEN,
                    steps: int = DECODE_STEPS, capacity: float = CAPACITY, seed: int = SEED,
                    again: bool = False, decode: str = "eager") -> ModelCalibration:
    """Calibrate on a model already offloaded to `runtime` (its slots and policies are set here and left so).
    `again`: a repeat later in the same process (no warm-up or rehearsal: those ran).
    `decode`: the runner's decode mode the calibrated runtime runs (`runner.DECODE_MODES`).

    Four timed requests on the same prompt (so the same routing where the model routes itself; the module's
    text): with every expert resident (each access a hit) what a pass, a layer, a readback, a gate and an
    expert launch cost, and again with the prefetch policy what its gates add; with the small cache what a
    demand miss adds, all of it charged to the copy it issues (`copy_s`: a miss's host work is more than the
    copy's own issue: the copy's event, the wait that the compute stream is told of, the slot bookkeeping; an
    expert launch measured among misses would charge that to every hit), and again with the prefetch policy
    what a prefetch adds. With the fused kernel the resident request reads every layer's routing
    back (no deferred layers), so that it prices the layers that do, and a layer's one launch is shared by
    its experts (`expert_s`). Where every key fits the device, a fifth request, `BATCH` prompts decoded in
    lockstep over every key resident, prices an expert launched in a decode pass of several tokens
    (`batch_expert_s`)."""
    import torch

    from .models import live_spec
    from .runner import PassPlan, run_live

    spec = live_spec(shape, "bf16")
    n_keys = shape.n_layers * shape.n_experts
    slots = max(shape.top_k, min(n_keys, int(capacity * n_keys)))
    dev = runtime.device
    runtime.close()  # a prefetch watchdog of the runtime's last use must not submit into the old pool
    runtime.resize(slots)
    runtime.eviction, runtime.eviction_params, runtime.seed = "lru", {}, seed
    runtime.prefetch, runtime.prefetch_params = "none", {}
    runtime.reset()
    runtime.attach()
    plan = PassPlan(prompt_len, steps)
    # warm-up and an untimed rehearsal (every kernel's first call, allocator growth), then the timed requests
    if not again:
        run_live(model, [plan], vocab=shape.vocab, device=dev, seed=seed + 1, runtime=runtime, warmup_passes=3,
                 rehearse=True, model_name=spec.name, decode=decode)
    gen = torch.Generator().manual_seed(seed)
    prompt = torch.randint(0, shape.vocab, (1, prompt_len), generator=gen).to(dev)
    missing = _timed_request(model, runtime, plan, prompt, dev, decode, preload=False)
    issue_s = _prefetch_issue(runtime, model, shape, plan, dev, seed)
    runtime.prefetch = PREFETCH
    try:
        prefetching = _timed_request(model, runtime, plan, prompt, dev, decode, preload=False)
    finally:
        runtime.close()
        runtime.prefetch = "none"
        runtime.reset()
    resident = resident_pf = batch = None
    resident_others: dict[str, _Request] = {}
    gate_errors: dict[str, str] = {}
    batch_error = None
    keys = _resident_keys(runtime, missing, n_keys, decode)
    if _fits_every_expert(runtime, n_keys if keys is None else len(keys)):
        runtime.close()
        runtime.resize(n_keys if keys is None else len(keys))
        runtime.defer = False
        try:
            resident = _timed_request(model, runtime, plan, prompt, dev, decode, preload=True, keys=keys)
            runtime.prefetch = PREFETCH  # every expert resident: the policy decides at each gate, issues nothing
            resident_pf = _timed_request(model, runtime, plan, prompt, dev, decode, preload=True, keys=keys)
            for policy in gate_policies():  # each other policy's gate, over the same resident pool
                runtime.prefetch = policy
                try:
                    resident_others[policy] = _timed_request(model, runtime, plan, prompt, dev, decode,
                                                             preload=True, keys=keys)
                except Exception as err:  # that policy stays unpriced (the generic price), said and recorded
                    gate_errors[policy] = f"{type(err).__name__}: {err}"
                    print(f"warning: {preset}: the {policy} prefetch policy's gate could not be timed ({err}); "
                          "it takes the generic prefetch_gate_s", file=sys.stderr)
                    runtime.close()
            if keys is None:  # a batch routes beyond one prompt's keys: a pool of every key holds them all
                runtime.prefetch = "none"
                batch_prompt = torch.randint(0, shape.vocab, (BATCH, prompt_len), generator=gen).to(dev)
                try:
                    batch = _timed_request(model, runtime, PassPlan(prompt_len, steps, batch=BATCH), batch_prompt,
                                           dev, decode, preload=True)
                except Exception as err:  # batch_expert_s stays unset (expert_s prices a batch), said and recorded
                    batch_error = f"{type(err).__name__}: {err}"
                    print(f"warning: {preset}: the batch request failed ({err}); a batched decode pass's expert "
                          "launch takes expert_s", file=sys.stderr)
                    runtime.close()
        finally:
            runtime.defer = True
            runtime.close()
            runtime.prefetch = "none"
        runtime.resize(slots)  # the pool of the requests' cache again, for what runs next
        runtime.reset()
    if missing.ahead_n == 0:
        raise EmuError(f"{preset}: no layer launch was timed (a model of one MoE layer cannot calibrate layer_s)")
    hits = resident or missing
    costs = HostCosts(pass_s=max(hits.pass_s(shape.n_layers), 0.0), layer_s=hits.layer_s,
                      readback_s=hits.item(1, "readback"), gate_s=hits.item(1, "gate"),
                      expert_s=hits.item(1, "expert"), copy_s=missing.item(1, "copy"),
                      batch_expert_s=None if batch is None else batch.item(1, "expert"),
                      prefill_expert_s=missing.item(0, "expert"), prefill_copy_s=missing.item(0, "copy"),
                      prefill_layer_s=missing.prefill_layer_s, prefill_readback_s=missing.item(0, "readback"),
                      prefill_gate_s=hits.item(0, "gate"))
    prefill_per_miss = None if resident is None else missing.prefill_copy_over(resident)
    if prefill_per_miss is not None:
        costs = attrs.evolve(costs, prefill_copy_s=prefill_per_miss)
    per_miss = None if resident is None else missing.per_copy_over(costs, shape.n_layers)
    within = missing.per_copy_within()
    costs = attrs.evolve(costs, copy_s=copy_price(costs.copy_s, within, per_miss))
    # the policy's gate: what the device waits for is charged at the gate; all of its work comes off the
    # prefetching request's before its prefetches are priced
    gate_work = None if resident_pf is None else resident_pf.per_gate_over(resident, shape.n_layers)
    gate_step = None if resident_pf is None else resident_pf.per_gate_step_over(resident, shape.n_layers)
    if gate_step is not None:
        costs = attrs.evolve(costs, prefetch_gate_s=max(gate_step, 0.0))
    # a policy that issued prefetches over the resident pool (it picks beyond what the request touched) has none
    gates = {policy: max(step, 0.0) for policy, step in
             [(PREFETCH, gate_step)] + [(p, r.per_gate_step_over(resident, shape.n_layers))
                                        for p, r in resident_others.items()]
             if step is not None}
    floor = issue_s or 0.0
    per_prefetch = [prefetching.per_prefetch_over(missing, phase, expert_s=e, copy_s=c,
                                                  gate_s=max(gate_work or 0.0, 0.0), n_layers=shape.n_layers)
                    for phase, e, c in ((0, costs.prefill_expert_s, costs.prefill_copy_s),
                                        (1, costs.expert_s, costs.copy_s))]
    prefill_pf, decode_pf = (None if x is None else max(x, floor) for x in per_prefetch)
    costs = attrs.evolve(costs, prefetch_s=decode_pf if decode_pf is not None else issue_s,
                         prefill_prefetch_s=prefill_pf)
    raw = {"slots": slots, "n_keys": n_keys, "prompt_len": prompt_len, "steps": steps, "seed": seed,
           "decode": decode, "kernel": runtime.kernel, **missing.raw(shape.n_layers),
           "resident_slots": n_keys if keys is None else len(keys),  # the resident requests' pool
           "resident_request": None if resident is None else resident.raw(shape.n_layers),
           "resident_prefetch_request": None if resident_pf is None else resident_pf.raw(shape.n_layers),
           "resident_batch_request": None if batch is None else batch.raw(shape.n_layers) | {"batch": BATCH},
           "prefetch_request": prefetching.raw(shape.n_layers) | {"prefetch": PREFETCH},
           "copy_s_issue": missing.item(1, "copy"), "copy_s_per_miss": per_miss,
           "copy_s_within": within,
           "prefill_copy_s_issue": missing.item(0, "copy"), "prefill_copy_s_per_miss": prefill_per_miss,
           "prefetch_gate_s_work": gate_work,
           "prefetch_gate_by_policy": gates or None,
           "prefetch_gate_errors": gate_errors or None,
           "resident_batch_error": batch_error,
           "resident_policy_requests": {p: r.raw(shape.n_layers) for p, r in resident_others.items()} or None,
           **({} if issue_s is None else {"prefetch_s_issue": issue_s}),
           "prefetch_s_per_prefetch": {ph: x for ph, x in zip(("prefill", "decode"), per_prefetch) if x is not None},
           "prefetch_s_within": prefetching.per_prefetch_within()}
    raw = {k: v for k, v in raw.items() if v is not None}  # TOML has no null
    return ModelCalibration(preset, shape.n_layers, costs, raw, gates)


def copy_price(issue: float | None, within: float | None, per_miss: float | None) -> float | None:
    """A demand copy's host price: the slope over the small-cache request's own steps (`within`: no other
    request's pace in it) where its steps vary in copies, else its host work beyond the resident request's per
    copy (`per_miss`); never below the copy's own issue. None where the request issued no copy."""
    if issue is None:
        return None
    price = within if within is not None else per_miss
    return issue if price is None else max(price, issue)


def gate_policies() -> tuple[str, ...]:
    """The live prefetch policies whose gate is priced on its own besides `PREFETCH`'s."""
    from .cache_bridge import LIVE_PREFETCH

    return tuple(p for p in LIVE_PREFETCH if p not in ("none", PREFETCH))


def median_gates(gates: list[dict[str, float]]) -> dict[str, float]:
    """Each policy's median over the entries that price it."""
    names = sorted({p for g in gates for p in g})
    return {p: float(statistics.median([g[p] for g in gates if p in g])) for p in names}


def _resident_keys(runtime: Any, missing: _Request, n_keys: int, decode: str) -> np.ndarray | None:
    """The keys the resident requests hold: every key (None), or, where the graph decode captures the experts
    but not over a pool of every key (one grouped GEMM takes at most `MAX_GROUPS` slots), the keys the small-cache
    request routed to or predicted. The same prompt routes the same way, so every access of the resident requests
    is still a hit and the prefetch policy of the second finds nothing to fetch, and they run the captured experts
    that the runs do instead of launching them between the graphs."""
    from .offload import MAX_GROUPS

    if decode != "graph" or n_keys <= MAX_GROUPS or missing.keys is None:
        return None
    return missing.keys if runtime.graph_experts(len(missing.keys)) else None


def _touched_keys(trace: Any, n_experts: int) -> np.ndarray:
    """The distinct keys (layer * n_experts + expert) a request's passes routed to or its speculator predicted
    (a prefetch policy's picks come from those predictions: a resident pool of these issues none)."""
    offsets = np.arange(trace.experts.shape[1], dtype=np.int64)[None, :, None] * n_experts
    keys = [trace.experts.astype(np.int64) + offsets]
    if trace.predicted is not None:
        keys.append(trace.predicted.astype(np.int64) + offsets)
    return np.unique(np.concatenate([k.ravel() for k in keys]))


def _step_distinct(trace: Any) -> list[list[int]]:
    """Per decode pass of a recorded request, per MoE layer, how many distinct experts its tokens routed to: the
    expert launches of a batch's step (a batch-1 step launches `top_k` at every layer)."""
    out = []
    for p in np.flatnonzero(trace.pass_phase == 1):
        rows = trace.experts[trace.pass_offsets[p]:trace.pass_offsets[p + 1]]
        out.append([len(np.unique(rows[:, layer])) for layer in range(rows.shape[1])])
    return out


def _fits_every_expert(runtime: Any, n_keys: int) -> bool:
    """Whether a slot for every expert fits the device beside what it holds (half its free memory at most)."""
    if not runtime.cuda:
        return True
    import torch

    free, _total = torch.cuda.mem_get_info(runtime.device)
    return n_keys * runtime.expert_bytes < free // 2


@attrs.frozen
class _Request:
    """One timed calibration request: its host ledger and the steps' spans."""

    ledger: Any
    decode_s: list[float]
    host_s: list[float]
    prefill_s: float
    wait_s: float  # the decode steps' readback waits
    ahead_s: float
    ahead_n: int
    prefill_work_s: float = 0.0  # the prefill's host span less its readback waits
    copies: tuple[int, int] = (0, 0)  # copies started, by phase (prefill, decode): demand and prefetch
    prefetches: tuple[int, int] = (0, 0)  # prefetches issued, by phase
    prefill_ahead: tuple[float, int] = (0.0, 0)  # the prefill's layer launches: seconds, layers
    host_cpu_s: list[float] = attrs.field(factory=list)  # the forward thread's CPU seconds in each step's host span
    step_copies: list[int] = attrs.field(factory=list)  # copies started in each decode step (demand and prefetch)
    step_prefetches: list[int] = attrs.field(factory=list)  # prefetches issued in each decode step
    step_wait_s: list[float] = attrs.field(factory=list)  # each decode step's readback waits
    keys: np.ndarray | None = None  # the distinct keys (layer * n_experts + expert) it routed to or predicted
    step_distinct: list[list[int]] | None = None  # a batch's distinct experts per decode step and layer

    def _step_slopes(self, *counts: list[int]) -> np.ndarray | None:
        """The least-squares slopes (an intercept beside them) of each decode step's host work (its span less its
        readback waits) over the given per-step counts; None where the steps were not recorded alongside the
        counts or the counts do not vary independently of each other."""
        n = len(self.host_s)
        if len(self.step_wait_s) != n or any(len(c) != n for c in counts):
            return None
        x = np.column_stack([np.ones(n), *(np.asarray(c, float) for c in counts)])
        if n < x.shape[1] or np.linalg.matrix_rank(x) < x.shape[1]:
            return None
        y = np.asarray(self.host_s) - np.asarray(self.step_wait_s)
        return np.linalg.lstsq(x, y, rcond=None)[0][1:]

    def per_copy_within(self) -> float | None:
        """Host seconds per decode copy from this request alone: the slope of each step's host work over its
        copies, the copy's price. `per_copy_over`, the price where this is None, takes the difference from another
        request and so whatever the host's pace did between the two; None when every step started as many copies
        or the steps were not recorded."""
        slopes = self._step_slopes(self.step_copies)
        return None if slopes is None else float(slopes[0])

    def per_prefetch_within(self) -> float | None:
        """Host seconds per decode prefetch from this request alone: the slope of each step's host work over its
        prefetches, its demand copies the other regressor. A diagnostic beside the priced `per_prefetch_over`,
        which subtracts another request's work and the gates' from a third pair, and so takes in the host's
        drift between them; None where the steps were not recorded or their prefetch counts (or demand counts)
        do not vary independently."""
        if len(self.step_prefetches) != len(self.step_copies):
            return None
        demand = [c - f for c, f in zip(self.step_copies, self.step_prefetches)]
        slopes = self._step_slopes(self.step_prefetches, demand)
        return None if slopes is None else float(slopes[0])

    @property
    def prefill_layer_s(self) -> float | None:
        return self.prefill_ahead[0] / self.prefill_ahead[1] if self.prefill_ahead[1] else None

    @property
    def layer_s(self) -> float:
        return self.ahead_s / self.ahead_n if self.ahead_n else 0.0

    @property
    def work_s(self) -> float:
        """The steps' host work: the host's own span of each (from its start to its last launch, not the
        device's tail after it) less its readback waits."""
        return sum(self.host_s) - self.wait_s

    def item(self, phase: int, name: str) -> float | None:
        return self.ledger.per_item(phase, name)

    def count(self, phase: int, name: str) -> int:
        return int(self.ledger.counts.get((phase, name), 0))

    def pass_s(self, n_layers: int) -> float:
        """What a step's host work holds beyond the ledger's items and the layers' launches."""
        items = sum(v for (phase, _item), v in self.ledger.seconds.items() if phase == 1)
        steps = len(self.decode_s)
        return (self.work_s - items - steps * n_layers * self.layer_s) / steps

    def per_copy_over(self, hit: HostCosts, n_layers: int) -> float | None:
        """Host seconds per decode copy: this request's host work beyond what its passes, layers, readbacks,
        gates and expert launches cost at the all-hit request's prices; None without copies."""
        copies = self.count(1, "copy")
        if copies == 0:
            return None
        steps = len(self.decode_s)
        layer = (hit.layer_s or 0.0) + (hit.readback_s or 0.0) + (hit.gate_s or 0.0)
        base = steps * ((hit.pass_s or 0.0) + n_layers * layer) + self.count(1, "expert") * (hit.expert_s or 0.0)
        return (self.work_s - base) / copies

    def prefill_copy_over(self, hit: _Request) -> float | None:
        """Host seconds per prefill copy: its issue, and the gates' decision work beyond the all-hit request's
        gates spread over the copies. A prefill's gate decides tens of misses and issues each one's copy as it
        goes, so the copy engine starts after the first miss's decision, not after the last: that work is the
        copies' (as a decode miss's is, `per_copy_over`), and the gate keeps what it costs with no miss. None
        without prefill copies."""
        copies = self.count(0, "copy")
        issue = self.item(0, "copy")
        if copies == 0 or issue is None:
            return None
        hit_gate_s = hit.item(0, "gate") or 0.0
        surplus = self.ledger.seconds.get((0, "gate"), 0.0) - self.count(0, "gate") * hit_gate_s
        return issue + max(surplus, 0.0) / copies

    def per_prefetch_over(self, base: _Request, phase: int, expert_s: float | None, copy_s: float | None,
                          gate_s: float = 0.0, n_layers: int = 0) -> float | None:
        """Host seconds per prefetch issued in `phase`: this (prefetching) request's host work beyond `base`'s
        (the same request without prefetch), less its other expert launches and demand copies at the prices
        given and the policy's work at each of its `n_layers`-layer passes' gates (`gate_s`); None without
        prefetches."""
        issued = self.prefetches[phase]
        if issued == 0:
            return None
        work = (self.prefill_work_s - base.prefill_work_s) if phase == 0 else (self.work_s - base.work_s)
        launches = self.count(phase, "expert") - base.count(phase, "expert")
        demand = (self.copies[phase] - issued) - (base.copies[phase] - base.prefetches[phase])
        gates = n_layers * (1 if phase == 0 else len(self.decode_s))
        return (work - launches * (expert_s or 0.0) - demand * (copy_s or 0.0) - gates * gate_s) / issued

    def per_gate_over(self, base: _Request, n_layers: int) -> float | None:
        """Host work per decode gate that this request (every expert resident, a prefetch policy deciding at
        each gate and issuing nothing) does beyond `base` (the same without the policy); None where it issued
        prefetches after all. Part of it may run while the device works (after a layer's launch), so it is
        what the policy costs the host, not what it adds to a step: see `per_gate_step_over`."""
        if self.prefetches[1] or not self.decode_s:
            return None
        return (self.work_s - base.work_s) / (len(self.decode_s) * n_layers)

    def per_gate_step_over(self, base: _Request, n_layers: int) -> float | None:
        """What the policy adds to a decode step per gate: the median step beyond `base`'s, per layer. Both
        requests do the same device work (every access a hit, nothing fetched), so the difference is the part
        of the policy's host work that the device waits for, the part the host rule charges at the gate
        (docs/ARCHITECTURE.md); None as `per_gate_over`."""
        if self.prefetches[1] or not self.decode_s or not base.decode_s:
            return None
        return (statistics.median(self.decode_s) - statistics.median(base.decode_s)) / n_layers

    def raw(self, n_layers: int) -> dict[str, Any]:
        return {"prefill_work_s": self.prefill_work_s, "prefill_launch_ahead": list(self.prefill_ahead),
                "copies": list(self.copies),
                "prefetches": list(self.prefetches), "decode_step_s": self.decode_s,
                "decode_host_span_s": self.host_s, "decode_host_cpu_s": self.host_cpu_s, "prefill_s": self.prefill_s,
                "decode_step_copies": self.step_copies, "decode_step_prefetches": self.step_prefetches,
                "decode_step_wait_s": self.step_wait_s,
                **({} if self.step_distinct is None else {"decode_step_distinct_experts": self.step_distinct}),
                "decode_readback_wait_s": self.wait_s, "decode_work_s": self.work_s,
                "pass_s_residual": self.pass_s(n_layers), "launch_ahead_n": self.ahead_n,
                "ledger": {f"{'decode' if phase == 1 else 'prefill'}.{item}": [self.ledger.seconds[(phase, item)],
                                                                               self.ledger.counts[(phase, item)]]
                           for (phase, item) in sorted(self.ledger.seconds)},
                # parts of those items and of the residual, for diagnosis (`HostLedger.parts`), per decode step
                "decode_parts_s": {part: seconds / max(len(self.decode_s), 1)
                                   for (phase, part), seconds in sorted(self.ledger.parts.items()) if phase == 1}}


def _timed_request(model: Any, runtime: Any, plan: Any, prompt: Any, dev: Any, decode: str,
                   preload: bool, keys: np.ndarray | None = None) -> _Request:
    """The request on an emptied cache (`preload`: every slot filled first, with `keys` alone if given), with
    the host ledger on."""
    from .hooks import RoutingHooks
    from .offload import HostLedger
    from .runner import PassPlan, RequestSteps, attention_backends, capture_decode, graphed_decode

    hooks = RoutingHooks(model, record=True, speculate=True, static=decode != "eager")
    graphed = None
    runtime.reset()  # a cache of the pool as it is now (a resize leaves the old pool's state)
    if decode != "eager":  # its own static cache and graphs, warmed up by a prefill over them first
        graphed = graphed_decode(model, runtime, [plan], 0, dev)
        with attention_backends(dev):  # capture with the backends of the replays (no cuDNN: it allocates)
            RequestSteps(model, prompt, PassPlan(plan.prompt_len, 3, batch=plan.batch), runtime=runtime,
                         graphed=graphed).prefill()
            if decode == "graph":
                capture_decode(graphed, [plan], hooks)
    runtime.reset()
    if preload:
        runtime.preload(keys)
    runtime.attach()
    ledger = runtime.ledger = HostLedger()
    clock = _HostSpans(dev)
    try:
        with attention_backends(dev):
            req = RequestSteps(model, prompt, plan, hooks=hooks, runtime=runtime, clock=clock, graphed=graphed)
            marks = [(runtime.readback_wait_s, runtime.copies, _issued(runtime))]
            pre0, n_pre0 = runtime.launch_ahead_s, runtime.launch_ahead_n
            req.prefill()
            marks.append((runtime.readback_wait_s, runtime.copies, _issued(runtime)))
            ahead0, n_ahead0 = runtime.launch_ahead_s, runtime.launch_ahead_n
            step_copies, step_wait, step_pf = [], [], []
            issued = marks[-1][2]
            for _ in range(plan.n_decode):
                c, w = runtime.copies, runtime.readback_wait_s
                req.decode()
                step_copies.append(runtime.copies - c)
                step_wait.append(runtime.readback_wait_s - w)
                step_pf.append(_issued(runtime) - issued)
                issued += step_pf[-1]
            marks.append((runtime.readback_wait_s, runtime.copies, issued))
            ahead_s, ahead_n = runtime.launch_ahead_s - ahead0, runtime.launch_ahead_n - n_ahead0
        trace = hooks.trace()
        touched = _touched_keys(trace, runtime.n_experts)
        distinct = _step_distinct(trace) if plan.batch > 1 else None
    finally:
        hooks.remove()
        runtime.ledger = None
    seconds = clock.seconds()
    (w0, c0, p0), (w1, c1, p1), (w2, c2, p2) = marks
    return _Request(ledger, seconds[1:], clock.host[1:], seconds[0], w2 - w1, ahead_s, ahead_n,
                    prefill_work_s=clock.host[0] - (w1 - w0), copies=(c1 - c0, c2 - c1), prefetches=(p1 - p0, p2 - p1),
                    prefill_ahead=(ahead0 - pre0, n_ahead0 - n_pre0), host_cpu_s=clock.cpu[1:],
                    step_copies=step_copies, step_wait_s=step_wait, step_prefetches=step_pf, keys=touched,
                    step_distinct=distinct)


def _issued(runtime: Any) -> int:
    """Prefetches the runtime's policy has issued so far."""
    if runtime.watchdog is None:
        return 0
    return runtime.bridge.prefetch_counts()["prefetch_issued"]


class _HostSpans:
    """`PassClock` that also keeps the host's own span of each pass (perf_counter at its start and at its stop,
    i.e. after the pass's last launch) and the forward thread's CPU seconds in that span (`thread_time`: a span
    that grows with its CPU seconds ran on a slower core; one that grows without them waited or was preempted)."""

    def __init__(self, dev: Any) -> None:
        from .runner import PassClock

        self._clock = PassClock(dev)
        self.host: list[float] = []
        self.cpu: list[float] = []
        self._t0 = 0.0
        self._c0 = 0.0

    def start(self) -> None:
        self._t0 = time.perf_counter()
        self._c0 = time.thread_time()
        self._clock.start()

    def stop(self) -> None:
        self._clock.stop()
        self.cpu.append(time.thread_time() - self._c0)
        self.host.append(time.perf_counter() - self._t0)

    def seconds(self) -> list[float]:
        return self._clock.seconds()


def _median_costs(costs: list[HostCosts]) -> tuple[HostCosts, dict[str, list[float]]]:
    """Each cost's median over the measurements that hold it (unset where none does), and its [min, max]."""
    median: dict[str, float | None] = {}
    spread = {}
    for key in HOST_KEYS:
        values = [getattr(c, key) for c in costs if getattr(c, key) is not None]
        median[key] = float(statistics.median(values)) if values else None
        if values:
            spread[key] = [min(values), max(values)]
    return HostCosts(**median), spread


def device_name(dev: Any) -> str:
    """The GPU's name, or the host processor's for a CPU run (what records and profiles call the device)."""
    import torch

    dev = torch.device(dev)
    return torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or "cpu"


def merge(cals: list[ModelCalibration]) -> ModelCalibration:
    """One model's calibration from several requests taken at different moments of a lease: each cost the
    median of the requests' (the host's pace drifts for minutes at a time; the median keeps the usual one),
    every request's figures kept in `raw["requests"]` with the spread of each cost."""
    if len(cals) == 1:
        return cals[0]
    costs, spread = _median_costs([c.costs for c in cals])
    measured = [{k: v for k, v in attrs.asdict(c.costs).items() if v is not None} for c in cals]
    return ModelCalibration(cals[0].preset, cals[0].n_layers, costs,
                            {"requests": [c.raw | {"costs": m} for c, m in zip(cals, measured)],
                             "spread": spread, "statistic": f"median of {len(cals)} requests"},
                            median_gates([c.gates for c in cals]))


def _prefetch_issue(runtime: Any, model: Any, shape: Any, plan: Any, dev: Any, seed: int) -> float | None:
    """Host seconds per prefetch through the prefetch path (a sibling runtime, every expert resident after a
    request, the forward thread submitting: the "inline" hand-over); None where no inline hand-over exists."""
    from .runner import run_live
    from .runtime_cal import measure_prefetch_issue

    sib = runtime.sibling(shape.n_layers * shape.n_experts, prefetch="next-layer", seed=seed, handover="inline")
    try:
        sib.attach()
        run_live(model, [plan], vocab=shape.vocab, device=dev, seed=seed + 2, runtime=sib, warmup_passes=0)
        return measure_prefetch_issue(sib)
    finally:
        sib.close()
        runtime.attach()


def runtime_profile(name: str, calibrations: list[ModelCalibration], device_name: str) -> RuntimeProfile:
    """The profile: each model's entry, and `[host]` the median of each cost over the models."""
    if not calibrations:
        raise EmuError("no model calibrated", key="--model")
    host, _spread = _median_costs([c.costs for c in calibrations])
    import torch
    import transformers

    prov = {"date": datetime.date.today().isoformat(), "tool": "emu calibrate --runtime", "device": device_name,
            "torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version(), "kernel": _mode_of(calibrations, "kernel"),
            "decode": _mode_of(calibrations, "decode"),
            "method": "host ledger of calibration requests of the runtime's own (prompt "
                      f"{PROMPT_LEN}, {DECODE_STEPS} decode steps, seeds from {SEED}; each four times on the "
                      "same prompt: every expert resident (pass, layer, readback, gate, expert launch: a hit's "
                      f"costs; and {BATCH} prompts in lockstep: batch_expert_s), the same with {PREFETCH} "
                      f"prefetch (prefetch_gate_s), a {int(CAPACITY * 100)}% "
                      "LRU cache (copy_s: its host work beyond the hit costs, per copy; prefill items), the same "
                      "with prefetch (prefetch_s, prefill_prefetch_s: per prefetch beyond the rest); several "
                      "per model: the median, models.<m>.statistic); never a validated run",
            "models": {c.preset: dict(c.raw, n_layers=c.n_layers) for c in calibrations}}
    # the fused kernel runs a layer's experts as one grouped GEMM: the hardware profile's fused table prices it
    experts = "fused" if prov["kernel"] == "fused" else "per-expert"
    gates = {c.preset: c.gates for c in calibrations if c.gates}
    return RuntimeProfile(name=name, host=host, models={c.preset: c.costs for c in calibrations},
                          provenance=prov, experts=experts, prefetch_gates=gates,
                          host_prefetch_gates=median_gates(list(gates.values())))


def _mode_of(calibrations: list[ModelCalibration], key: str) -> str:
    """The runtime's mode `key` ("decode", "kernel") its calibration requests ran in."""
    raws = [r for c in calibrations for r in c.raw.get("requests", [c.raw])]
    modes = sorted({str(r.get(key, "eager")) for r in raws})
    return modes[0] if len(modes) == 1 else "+".join(modes)


def write_runtime_profile(profile: RuntimeProfile, path: Path) -> None:
    import tomli_w

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(tomli_w.dumps(profile.to_dict()))


def run(name: str, models: list[str], out: Path, device: str = "cuda", scale: str = "full",
        decode: str = "eager", kernel: str = "eager") -> RuntimeProfile:
    import torch

    if out.suffix != ".toml":
        raise EmuError("expected a path ending in .toml", file=str(out), key="--out")
    cals = []
    for arg in models:
        preset, layers = parse_model_arg(arg)
        cals.append(calibrate_model(preset, layers, device=device, scale=scale, decode=decode, kernel=kernel))
        if device == "cuda":
            torch.cuda.empty_cache()
    profile = runtime_profile(name, cals, device_name(device))
    write_runtime_profile(profile, out)
    return profile
