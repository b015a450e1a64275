"""The live runtime's own host cost, measured on the model itself and folded into a hardware profile.

`emu calibrate` times a Llama-style eager layer and a bare expert call. The live runtime runs the
transformers modules plus its hooks (recording, speculator, forced routing) and per layer the routing
readback, the cache bridge and the row index upload; on the H100 that host work, not the GPU, sets the
decode pace. So, in the same lease as the runs it will be compared with, a separate calibration request
(own routing, its own prompt) is replayed twice with every expert resident: once as is (`full`) and
once with each expert's computation replaced by zeros (`no_experts`, everything else unchanged). Then

- per layer:  (no_experts step - pass overhead) / layers - dense(1 token, context)  -> layer overhead
- per expert: (full step - no_experts step) / (layers x top_k)                   -> expert host floor

and `apply_runtime_overheads` writes both into the profile's model entry (the expert curve is raised to
the floor where it is below it: the runtime cannot issue an expert faster than that).

A third figure, `copy_issue_s`, is the host time a copy costs the forward thread. Its loop
(`measure_copy_issue`: the runtime's own `_copy`, copy stream made current, a wait for the slot's last reader,
the expert's one copy, an event, plus the compute stream's wait on that event, a few hundred times over
resident experts onto their own slots) runs hot code with no copies streaming; where copies are short, the
lockstep calibration's `copying` mode measures it in the pass instead: the calibration request with every
expert access copied again onto its own slot (and, prefetching, every predicted next-layer key through the
prefetch path), its host work per copy against the full mode's. On the H100 that is about twice the loop's:
the whole step slows with copies streaming, not only the copy calls. A Python runtime issues copies on the
thread that launches the compute, so the emulator (profile key `copy_issue_s`) keeps its compute from
starting until the host has issued the copies decided before it. Where the forward thread also issues the
prefetches (the "inline" hand-over), `prefetch_issue_s` is the same for a prefetch through its whole path
(slot, queue, submission, landing poll, the compute stream's wait), charged to prefetch copies. A prefill's
gates issue tens of misses back to back, as the loops do: the loops' figures are the prefill's
(`prefill_copy_issue_s`, `prefill_prefetch_issue_s`). Calibrations written before a key existed leave the
profile's value alone.

The full mode also gives `launch_ahead_s`: per layer, the host time from leaving a layer's experts to the
next layer's routing readback (`ExpertOffload.launch_ahead_s`: the next layer's attention, norms, router
and speculator launches). The forward thread blocks only at that readback, so while the GPU waits for a
copy the host has those launches queued; the emulator takes that much of the wait off the next dense job.

The host's pace switches within seconds on the H100 machines, so a calibration paired with a run is best
taken in lockstep with it (`InterleavedCalibration`: one step of each mode before each of the run's decode
steps) rather than before it (`measure_runtime_overheads`).
"""

from __future__ import annotations

import contextlib
import statistics
from collections.abc import Iterator
from typing import Any

import attrs
import numpy as np

from emu.errors import EmuError
from emu.models import ModelSpec
from emu.profile import Curve, HardwareProfile, dense_table, model_overhead
from emu.runtime_profile import HostCosts, RuntimeProfile

_KEYS = ("full_step_s", "no_experts_step_s", "n_layers", "top_k", "context")
#: the host times a calibration may hold besides its steps: per demand copy, per prefetch, and per layer the
#: launches between leaving a layer and the next layer's readback (`ExpertOffload.launch_ahead_s`)
HOST_KEYS = ("copy_issue_s", "prefetch_issue_s", "launch_ahead_s", "prefill_copy_issue_s", "prefill_prefetch_issue_s")


def median_key(key: str) -> str:
    """Where a model-level calibration keeps the median of the rounds' `key` (`key` itself: their best)."""
    return key.removesuffix("_s") + "_median_s"


MODES = ("full", "no_experts")
#: the lockstep calibration's third mode, where copies are short (`InterleavedCalibration(copying=True)`):
#: every expert access copied again onto its own slot through the demand path and, when prefetching, each
#: key the speculator predicts for the next layer through the prefetch path
COPYING = "copying"


def _skip_experts(slot: int, event: Any, act_fn: Any, hidden: Any, weights: Any, rows: Any) -> Any:
    """`ExpertOffload._compute` with the expert's computation replaced by zeros (the no_experts mode)."""
    token_idx = rows[1]
    return token_idx, hidden.new_zeros((token_idx.shape[0], hidden.shape[1]))


@contextlib.contextmanager
def _mode(runtime: Any, mode: str) -> Iterator[None]:
    """The runtime as the mode runs it; a copy other than the copying mode's own is refused (every expert is
    to be resident), whose copies leave the counters as they were."""
    if mode == "no_experts":
        runtime._compute = _skip_experts
    runtime.recopy = mode == COPYING
    saved = (runtime.copies, runtime.bytes_h2d, runtime.evictions)
    recopies = sum(runtime.recopies)
    try:
        yield
    finally:
        runtime.__dict__.pop("_compute", None)  # the class's method again (no bound copy left behind)
        runtime.recopy = False
    missed = (runtime.copies - saved[0]) - (sum(runtime.recopies) - recopies)
    if missed:
        raise EmuError(f"runtime calibration ({mode}) copied {missed} experts; it expects "
                       "every expert resident (run it with all slots)")
    runtime.copies, runtime.bytes_h2d, runtime.evictions = saved


def _calibration_prompt(vocab: int, prompt_len: int, seed: int, device: Any) -> Any:
    import torch

    return torch.randint(0, vocab, (1, prompt_len), generator=torch.Generator().manual_seed(seed)).to(device)


def _record_routing(model: Any, runtime: Any, prompt: Any, steps: int) -> Any:
    """The calibration request's own routing (and speculator predictions), replayed by every mode."""
    from .hooks import RoutingHooks
    from .runner import PassPlan, generate

    rec = RoutingHooks(model, record=True, speculate=True)
    try:
        generate(model, prompt, PassPlan(prompt.shape[1], steps), hooks=rec, runtime=runtime)
    finally:
        rec.remove()
    return rec.trace("calibration")


def prefill_experts(routing: Any) -> float:
    """Distinct experts per layer in the routing's first pass (the calibration request's prefill), the mean
    over layers: what a prefill of that request computes per layer."""
    first = routing.experts[routing.pass_offsets[0]: routing.pass_offsets[1]]
    return float(np.mean([np.unique(first[:, layer]).size for layer in range(first.shape[1])]))


@attrs.define
class _StepHost:
    """Per decode step of each mode: the host's sync waits (readbacks, the pass's end) and the copying mode's
    copies (demand, prefetch), so a step's host work is its time less its waits."""

    waits: dict[str, list[float]] = attrs.Factory(dict)
    copies: list[tuple[int, int]] = attrs.Factory(list)

    @contextlib.contextmanager
    def step(self, runtime: Any, mode: str) -> Iterator[None]:
        w0, (d0, p0) = runtime.sync_wait_s, runtime.recopies
        yield
        self.waits.setdefault(mode, []).append(runtime.sync_wait_s - w0)
        if mode == COPYING:
            self.copies.append((runtime.recopies[0] - d0, runtime.recopies[1] - p0))


def _in_pass_issue(steps_s: dict[str, list[float]], host: _StepHost, loop: dict[str, float]) -> dict[str, Any]:
    """`copy_issue_s` and `prefetch_issue_s` of a decode pass from the copying mode: the host work it adds to a
    step (step less its sync waits, against the full mode's), per copy. Demand and prefetch copies come
    together there; their split is the loops' (`measure_copy_issue`, `measure_prefetch_issue`: the ratio of
    the two), the total what the forward pass pays among its launches with copies streaming: on the H100
    1.5-2x the loops'. A prefill's gates issue their tens of misses back to back, as the loops do: theirs
    are the prefill's (`prefill_copy_issue_s`, `prefill_prefetch_issue_s`)."""
    n = min(len(steps_s[COPYING]), len(host.copies))
    work = {m: statistics.fmean(s - w for s, w in zip(steps_s[m][:n], host.waits[m][:n])) for m in ("full", COPYING)}
    demand = statistics.fmean(c[0] for c in host.copies[:n])
    prefetch = statistics.fmean(c[1] for c in host.copies[:n])
    both = "copy_issue_s" in loop and "prefetch_issue_s" in loop  # the loops run on a GPU only
    ratio = loop["prefetch_issue_s"] / loop["copy_issue_s"] if prefetch and both else 1.0
    added = work[COPYING] - work["full"]
    per_copy = max(added, 0.0) / (demand + ratio * prefetch)
    out: dict[str, Any] = {"copying_step_s": statistics.fmean(steps_s[COPYING][:n]), "copying_added_s": added,
                           "copying_copies": [demand, prefetch], "copy_issue_s": per_copy,
                           "issue_from": "copying mode"}
    out.update({f"prefill_{k}": v for k, v in loop.items()})
    if prefetch:
        out["prefetch_issue_s"] = ratio * per_copy
    return out


def _calibration(runtime: Any, steps_s: dict[str, list[float]], prompt_len: int, steps: int,
                 issue: list[float], pf_issue: list[float], ahead: list[float],
                 prefill_s: dict[str, float] | None = None, routing: Any = None,
                 host: _StepHost | None = None) -> dict[str, Any]:
    # the mean, as the decode rate it is compared with is (steps / their total time): with a host whose pace
    # switches within a run, a median keeps the majority pace and misses the slow steps a run pays for
    full, bare = steps_s["full"], steps_s["no_experts"]
    out = {"full_step_s": statistics.fmean(full), "no_experts_step_s": statistics.fmean(bare),
           "step_statistic": "mean", "full_steps_s": full, "no_experts_steps_s": bare,
           "n_layers": runtime.n_layers, "top_k": runtime.top_k, "context": prompt_len + steps // 2,
           "prompt_len": prompt_len, "steps": steps}
    for key, values in (("copy_issue_s", issue), ("prefetch_issue_s", pf_issue)):
        if values:  # two samples per run (before its prefill and halfway)
            out[key] = float(statistics.median(values))
    if ahead:  # one sample per step: a mean, as the steps' (the spans follow the host's pace step by step)
        out["launch_ahead_s"] = statistics.fmean(ahead)
    if prefill_s:  # each mode's prefill, of `prompt_len` tokens, with `prefill_experts` experts per layer
        out.update({f"{mode}_prefill_s": sec for mode, sec in prefill_s.items()})
        out["prefill_experts"] = prefill_experts(routing)
    if COPYING in steps_s and host is not None:
        out.update(_in_pass_issue(steps_s, host, {k: out[k] for k in ("copy_issue_s", "prefetch_issue_s") if k in out}))
    return out


class _AheadSpan:
    """The runtime's `launch_ahead_s` per layer over the steps run inside it (appended to `out` when any)."""

    def __init__(self, runtime: Any, out: list[float]) -> None:
        self.runtime, self.out = runtime, out

    def __enter__(self) -> None:
        self.s0, self.n0 = self.runtime.launch_ahead_s, self.runtime.launch_ahead_n

    def __exit__(self, *exc: Any) -> None:
        n = self.runtime.launch_ahead_n - self.n0
        if n > 0:
            self.out.append((self.runtime.launch_ahead_s - self.s0) / n)


def _issue_times(runtime: Any, issue: list[float], pf_issue: list[float]) -> None:
    """Append the copy and prefetch issue times (GPU only: the host cost of an asynchronous copy)."""
    if not runtime.cuda:
        return
    issue.append(measure_copy_issue(runtime))
    pf = measure_prefetch_issue(runtime)
    if pf is not None:
        pf_issue.append(pf)


def measure_runtime_overheads(model: Any, runtime: Any, *, vocab: int, device: Any, prompt_len: int = 256,
                             steps: int = 32, seed: int = 12345) -> dict[str, Any]:
    """Mean decode step with all experts resident, with and without the experts'
    computation; every step is kept beside it (`full_steps_s`, `no_experts_steps_s`)."""
    from .hooks import RoutingHooks
    from .runner import PassClock, PassPlan, attention_backends, generate

    prompt = _calibration_prompt(vocab, prompt_len, seed, device)
    runtime.attach()
    issue: list[float] = []
    pf_issue: list[float] = []
    ahead: list[float] = []
    with attention_backends(device):
        routing = _record_routing(model, runtime, prompt, steps)
        plan = PassPlan(prompt_len, steps, 0, tuple(range(1, steps + 1)))
        steps_s: dict[str, list[float]] = {}
        prefill_s: dict[str, float] = {}
        for mode in MODES:
            hooks = RoutingHooks(model, record=True, speculate=True, force=routing)
            clock = PassClock(device)
            try:
                with _mode(runtime, mode), _AheadSpan(runtime, ahead if mode == "full" else []):
                    generate(model, prompt, plan, hooks=hooks, runtime=runtime, clock=clock)
            finally:
                hooks.remove()
            seconds = clock.seconds()
            steps_s[mode], prefill_s[mode] = seconds[1:], seconds[0]
        _issue_times(runtime, issue, pf_issue)
    return _calibration(runtime, steps_s, prompt_len, steps, issue, pf_issue, ahead, prefill_s, routing)


class InterleavedCalibration:
    """The calibration of `measure_runtime_overheads` in lockstep with a measured run: called before the
    run's prefill (`step` 0) and before each of its decode steps (`runner.Between(cal, every=1)`), it runs
    one decode step of each mode, so the calibration samples the very seconds the run ran in (the host's
    pace switches within seconds: OLMoE steps 45-88 ms within one 4-second run). Each mode is its own
    request on `runtime` (a sibling holding every expert), its prefill run before the measured one's; the
    routing is recorded once, at construction; the copy and prefetch issue times are measured before the
    run's prefill and halfway through its decode. `begin` starts the next run's calibration."""

    def __init__(self, model: Any, runtime: Any, *, vocab: int, device: Any, prompt_len: int, steps: int,
                 seed: int = 12345, copying: bool = False) -> None:
        from .runner import attention_backends

        self.model, self.runtime, self.device, self.prompt_len, self.steps = model, runtime, device, prompt_len, steps
        self.modes = (*MODES, COPYING) if copying else MODES
        self._host = _StepHost()
        self.prompt = _calibration_prompt(vocab, prompt_len, seed, device)
        runtime.attach()
        with attention_backends(device):
            self.routing = _record_routing(model, runtime, self.prompt, steps)
        self._requests: dict[str, Any] = {}
        self._clocks: dict[str, Any] = {}
        self._issue: list[float] = []
        self._pf_issue: list[float] = []
        self._ahead: list[float] = []

    def begin(self) -> None:
        """Each mode a fresh request (their prefills run at the measured run's step 0)."""
        from .hooks import RoutingHooks
        from .runner import PassClock, PassPlan, RequestSteps

        plan = PassPlan(self.prompt_len, self.steps, 0, tuple(range(1, self.steps + 1)))
        self._requests, self._clocks, self._issue, self._pf_issue, self._ahead = {}, {}, [], [], []
        self._host = _StepHost()
        for mode in self.modes:
            hooks = RoutingHooks(self.model, record=True, speculate=True, force=self.routing)
            hooks.remove()  # installed for its own passes only
            self._clocks[mode] = PassClock(self.device)
            self._requests[mode] = RequestSteps(self.model, self.prompt, plan, hooks=hooks, runtime=self.runtime,
                                                clock=self._clocks[mode], interleaved=True)

    def __call__(self, step: int) -> None:
        from .runner import attention_backends

        if not self._requests:
            raise EmuError("InterleavedCalibration: begin() before the run")
        with attention_backends(self.device):
            for mode in self.modes:
                req = self._requests[mode]
                if req.step >= self.steps:
                    continue  # the run has more decode steps than the calibration recorded
                with _mode(self.runtime, mode):
                    if step == 0:
                        req.prefill()
                    with _AheadSpan(self.runtime, self._ahead if mode == "full" else []), \
                            self._host.step(self.runtime, mode):
                        req.decode()  # at step 0 too: one decode step after each prefill, as before each later step
            if step in (0, self.steps // 2):
                _issue_times(self.runtime, self._issue, self._pf_issue)

    def result(self) -> dict[str, Any]:
        """The calibration of the run just measured; the modes' prefills, each run right before the run's own,
        beside it (`full_prefill_s`, `no_experts_prefill_s`)."""
        seconds = {mode: clock.seconds() for mode, clock in self._clocks.items()}
        steps_s = {mode: s[1:] for mode, s in seconds.items()}
        if not all(steps_s.values()):
            raise EmuError("InterleavedCalibration: no decode step was measured (was it passed to the run?)")
        done = min(len(s) for s in steps_s.values())
        prefill_s = {mode: s[0] for mode, s in seconds.items()}
        return dict(_calibration(self.runtime, steps_s, self.prompt_len, done, self._issue, self._pf_issue,
                                 self._ahead, prefill_s, self.routing, self._host),
                    calibration="interleaved")


def host_pace(device: Any, launches: int = 200, repeats: int = 5) -> float:
    """Median seconds per tiny tensor op launched from Python: a probe of the host's pace (interpreter,
    torch dispatch, the driver's launch path: the work that sets a host-paced decode step), taken around
    calibrations and runs to see whether the pace they ran at differed."""
    import time

    import torch

    cuda = torch.device(device).type == "cuda"
    x = torch.zeros(1, device=device)
    samples = []
    for _ in range(repeats):
        if cuda:
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        for _ in range(launches):
            x = x + 1
        if cuda:
            torch.cuda.synchronize(device)
        samples.append((time.perf_counter() - t0) / launches)
    return float(statistics.median(samples))


def measure_copy_issue(runtime: Any, copies: int = 256, repeats: int = 3) -> float:
    """Median host seconds per copy issued through the runtime's copy path (resident experts copied onto
    their own slots: the same bytes, so the cache is unchanged; the counters are restored)."""
    import time

    import torch

    keys = np.flatnonzero(runtime.slot_of >= 0)
    if keys.size == 0:
        raise EmuError("copy issue calibration: no resident expert to copy")
    saved = (runtime.copies, runtime.bytes_h2d)
    per_copy = []
    for _ in range(repeats):
        torch.cuda.synchronize(runtime.device)
        t0 = time.perf_counter()
        for i in range(copies):
            key = int(keys[i % keys.size])
            layer, expert = divmod(key, runtime.n_experts)
            event = runtime._copy(layer, expert, int(runtime.slot_of[key]))
            runtime.compute_stream.wait_event(event)
        per_copy.append((time.perf_counter() - t0) / copies)
        torch.cuda.synchronize(runtime.device)
    for pending in runtime.pending:
        pending.clear()
    runtime.copies, runtime.bytes_h2d = saved
    return float(statistics.median(per_copy))


def measure_prefetch_issue(runtime: Any, prefetches: int = 256, batch: int = 8, repeats: int = 3) -> float | None:
    """Median host seconds per prefetch through the runtime's prefetch path, where the forward thread issues
    prefetches itself (the "inline" hand-over; None for a hand-over through the watchdog task): its slot
    (`_assign`), the queue, the layer's checkpoints while it is queued (`pump` after each of the layer's
    top_k expert launches: an engine query, a submission where the engine is idle; a calibration whose
    prefetch queue is always empty pays none of them), the submission as the thread leaves the layer
    (`away`: the copy), the landing poll at the next gate (`_poll_prefetches`: the event's query,
    `complete`), the compute stream's wait on the copy. `batch` prefetches per layer; resident experts
    copied onto their own slots (the same bytes: cache, policy state and counters unchanged; the poll runs
    once the copies landed, as at a next gate)."""
    import time

    import torch

    wd = runtime.watchdog
    if wd is None or wd.handover != "inline":
        return None
    keys = np.flatnonzero(runtime.slot_of >= 0)
    if keys.size == 0:
        raise EmuError("prefetch issue calibration: no resident expert to copy")
    saved = (runtime.copies, runtime.bytes_h2d, runtime.evictions)
    stream = runtime.compute_stream
    per = []
    for _ in range(repeats):
        spent = 0.0
        for b in range(0, prefetches, batch):
            chosen = [int(keys[(b + j) % keys.size]) for j in range(batch)]
            t0 = time.perf_counter()
            for key in chosen:  # `_issue_prefetches`, each victim the key itself (its own slot)
                kl, ke = divmod(key, runtime.n_experts)
                slot = runtime._assign(kl, ke, key)
                runtime.inflight_pf[key] = slot
                wd.enqueue(key, (kl, ke, slot))
            for _ in range(runtime.top_k):  # the layer's checkpoints, one after each expert's launch
                wd.pump()
            wd.away(int(chosen[-1] // runtime.n_experts))  # leaving the layer: the rest goes to the copy stream
            wd.present()
            spent += time.perf_counter() - t0
            if runtime.cuda:
                torch.cuda.synchronize(runtime.device)  # the next gate comes after the copies landed
            t0 = time.perf_counter()
            runtime._poll_prefetches()
            for key in chosen:  # the hit's compute waits for its copy's event (`_compute`), then `_waited`
                kl = key // runtime.n_experts
                event = runtime.pending[kl].pop(int(runtime.slot_of[key]), None)
                if event is not None and stream is not None:
                    stream.wait_event(event)
            spent += time.perf_counter() - t0
        per.append(spent / (-(-prefetches // batch) * batch))
    if runtime.cuda:
        torch.cuda.synchronize(runtime.device)
    if runtime.inflight_pf or len(wd):
        raise EmuError("prefetch issue calibration: a prefetch did not land (the runtime's poll kept it in flight)")
    runtime.copies, runtime.bytes_h2d, runtime.evictions = saved
    return float(statistics.median(per))


def derived_overheads(profile: HardwareProfile, model: ModelSpec, cal: dict[str, Any],
                      file: str | None = None) -> tuple[float, float]:
    """(layer overhead, expert host floor) in seconds from a measurement of `measure_runtime_overheads`."""
    for key in _KEYS:
        if not isinstance(cal.get(key), (int, float)) or cal[key] <= 0:
            raise EmuError("expected a positive number", file=file, key=key)
    mc = profile.models.get(model.name)
    if mc is None:
        raise EmuError(f"profile {profile.name} has no measured tables for {model.name}; the runtime calibration "
                       "corrects measured tables", file=file)
    d = dense_table(profile, model)
    col = float(np.interp(cal["context"], d.context, np.asarray(d.seconds)[0]))
    pass_oh = model_overhead(profile, model, "pass_overhead_s")
    layer = (cal["no_experts_step_s"] - pass_oh) / cal["n_layers"] - col
    expert = (cal["full_step_s"] - cal["no_experts_step_s"]) / (cal["n_layers"] * cal["top_k"])
    return max(layer, 0.0), max(expert, 0.0)


def _device_expert(profile: HardwareProfile, model: ModelSpec) -> Curve | None:
    """The calibration's device-only bf16 expert time (`provenance.expert_bf16_device`), where it has one."""
    entry = profile.provenance.get("expert_bf16_device", {})
    entry = entry.get(model.name) if isinstance(entry, dict) else None
    if not isinstance(entry, dict):
        return None
    tokens, seconds = entry.get("tokens"), entry.get("seconds")
    if not (isinstance(tokens, list) and isinstance(seconds, list) and tokens and len(tokens) == len(seconds)):
        return None
    return Curve(tuple(float(t) for t in tokens), tuple(float(s) for s in seconds))


#: a lockstep calibration's issue times and the runtime profile's keys they become
_ISSUE_KEYS = {"copy_issue_s": "copy_s", "prefetch_issue_s": "prefetch_s", "prefill_copy_issue_s": "prefill_copy_s",
               "prefill_prefetch_issue_s": "prefill_prefetch_s"}


def apply_runtime_overheads(profile: HardwareProfile, model: ModelSpec, cal: dict[str, Any],
                            file: str | None = None) -> tuple[HardwareProfile, RuntimeProfile]:
    """The lockstep diagnostic: a runtime profile from a calibration taken beside (or in lockstep with) the
    run it is compared with, and the hardware profile with the device-only expert curve where it holds one.
    The runtime launches an expert in the host floor (`expert_s`), a layer's dense part in the no-experts
    mode's time per layer (`layer_s`: host-paced, that is the layer), and issues copies in the measured issue
    times. Never the validation of a prediction: it has seen the run (docs/validation.md)."""
    layer, floor = derived_overheads(profile, model, cal, file)
    mc = profile.models[model.name]
    device = _device_expert(profile, model)
    if device is not None and "bf16" in mc.expert:
        profile = attrs.evolve(profile, models={**profile.models,
                                                model.name: attrs.evolve(mc, expert={**mc.expert, "bf16": device})})
    d = dense_table(profile, model)
    dense = float(np.interp(cal["context"], d.context, np.asarray(d.seconds)[0]))
    host: dict[str, float] = {"expert_s": floor, "layer_s": layer + dense}
    for key, name in _ISSUE_KEYS.items():
        value = cal.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
            raise EmuError(f"expected a non-negative number of seconds, got {value!r}", file=file, key=key)
        host[name] = float(value)
    runtime = RuntimeProfile(name=f"lockstep:{model.name}", models={model.name: HostCosts(**host)},
                             provenance={"runtime_calibration": dict(cal, layer_overhead_s=layer,
                                                                     expert_floor_s=floor)})
    return profile, runtime
