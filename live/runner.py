"""Greedy generation with a KV cache, timed pass by pass, with routing hooks and the offloaded runtime.

A prefill is one pass and each decode step another, the emulator's pass structure. TTFT is the prefill
pass plus picking the first token; each decode time is one decode pass plus picking its token. On the
GPU the times come from CUDA events on the compute stream (read after the run, one synchronize); on the
CPU from `time.perf_counter`. Warm-up passes run first and the expert cache is emptied after them, so
the measured run starts cold, as the emulator does.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import attrs
import numpy as np
import torch

from emu.errors import EmuError
from emu.trace import RoutingTrace
from emu.trace.routing_trace import PHASE_DECODE, PHASE_PREFILL

from .graphed import GraphedDecode
from .hooks import RoutingHooks
from .offload import ExpertOffload, OffloadStats


class PassClock:
    """Elapsed time of bracketed spans: CUDA events on a GPU, perf_counter on a CPU."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self._spans: list[tuple[Any, Any]] = []
        self._start: Any = None

    def start(self) -> None:
        if self.cuda:
            self._start = torch.cuda.Event(enable_timing=True)
            self._start.record()
        else:
            self._start = time.perf_counter()

    def stop(self) -> None:
        if self.cuda:
            end = torch.cuda.Event(enable_timing=True)
            end.record()
        else:
            end = time.perf_counter()
        self._spans.append((self._start, end))

    def seconds(self) -> list[float]:
        if self.cuda:
            torch.cuda.synchronize()
            return [a.elapsed_time(b) / 1e3 for a, b in self._spans]
        return [b - a for a, b in self._spans]


@attrs.frozen(eq=False)
class PassPlan:
    """What one request's run looks like (or `batch` requests' in lockstep, prompts of one length): prompt
    length, decode steps, and trace passes to force (passes of `batch` requests' tokens each)."""

    prompt_len: int
    n_decode: int
    force_prefill: int | None = None  # trace pass replayed by the prefill
    force_decode: tuple[int, ...] = ()  # trace passes replayed by the decode steps, in order
    batch: int = 1

    def __attrs_post_init__(self) -> None:
        if self.batch < 1:
            raise EmuError(f"expected a batch of at least 1 request, got {self.batch}", key="batch")


def plans_from_trace(trace: RoutingTrace, prompt_len: int, max_decode: int | None = None) -> list[PassPlan]:
    """One plan per request of a trace, or per group of requests that share every pass (a batched trace,
    `batched_trace`), so a run replays its routing pass by pass.

    A request without a prefill pass in the trace (decode-only captures) gets an unforced prefill of
    `prompt_len` tokens.
    """
    plans = []
    firsts = trace.token_request[trace.pass_offsets[:-1]]
    grouped: set[int] = set()
    for first in dict.fromkeys(firsts.tolist()):
        passes = np.flatnonzero(firsts == first)
        group = trace.token_request[trace.pass_offsets[passes[0]]:trace.pass_offsets[passes[0] + 1]]
        members = list(dict.fromkeys(group.tolist()))
        batch = len(members)
        if grouped & set(members):
            raise EmuError(f"request {first}'s passes batch requests another group holds; the live runner replays "
                           "requests in lockstep, each in one group", key="workload.trace")
        grouped |= set(members)
        for p in passes:
            t0, t1 = trace.pass_offsets[p], trace.pass_offsets[p + 1]
            rows = trace.token_request[t0:t1]
            per = (t1 - t0) // batch
            if (t1 - t0) % batch or not np.array_equal(rows, np.repeat(members, per)):
                raise EmuError(f"trace pass {p} does not hold the same requests, each as many tokens in order, as "
                               f"the first pass of request {first}; the live runner replays requests in lockstep",
                               key="workload.trace")
        prefill = [int(p) for p in passes if trace.pass_phase[p] == PHASE_PREFILL]
        decode = [int(p) for p in passes if trace.pass_phase[p] == PHASE_DECODE]
        if len(prefill) > 1:
            raise EmuError(f"request {first} has {len(prefill)} prefill passes; expected at most one",
                           key="workload.trace")
        bad = [p for p in decode if trace.pass_offsets[p + 1] - trace.pass_offsets[p] != batch]
        if bad:
            raise EmuError(f"decode pass {bad[0]} of request {first} has more than one token per request",
                           key="workload.trace")
        if max_decode is not None:
            decode = decode[:max_decode]
        if prefill:
            n = int(trace.pass_offsets[prefill[0] + 1] - trace.pass_offsets[prefill[0]]) // batch
            plans.append(PassPlan(n, len(decode), prefill[0], tuple(decode), batch))
        else:
            plans.append(PassPlan(prompt_len, len(decode), None, tuple(decode), batch))
    return plans


def batched_trace(trace: RoutingTrace, batch: int) -> RoutingTrace:
    """The trace's requests run `batch` at a time in lockstep: consecutive groups of `batch` requests (in order
    of first appearance), pass i of a group holding pass i of each member, request by request (the order a
    batch's rows take through the model); a group runs as many passes as its shortest member. Each member must
    be a batch-1 request; members' prefills must have one length."""
    if batch < 1:
        raise EmuError(f"expected a batch of at least 1 request, got {batch}", key="batch")
    if batch == 1:
        return trace
    firsts = trace.token_request[trace.pass_offsets[:-1]]
    requests = list(dict.fromkeys(firsts.tolist()))
    if len(requests) < batch:
        raise EmuError(f"the trace has {len(requests)} requests; a batch of {batch} needs as many",
                       key="workload.trace")
    passes_of = {r: np.flatnonzero(firsts == r).tolist() for r in requests}
    rows: list[np.ndarray] = []
    offsets, phases = [0], []
    for g in range(len(requests) // batch):
        members = requests[g * batch:(g + 1) * batch]
        depth = min(len(passes_of[r]) for r in members)
        for i in range(depth):
            group = [passes_of[r][i] for r in members]
            kinds = {int(trace.pass_phase[p]) for p in group}
            sizes = {int(trace.pass_offsets[p + 1] - trace.pass_offsets[p]) for p in group}
            if len(kinds) != 1 or len(sizes) != 1:
                raise EmuError(f"requests {members} differ at their pass {i} (phase or length); a batch replays "
                               "requests of one shape", key="workload.trace")
            for p in group:
                rows.append(np.arange(trace.pass_offsets[p], trace.pass_offsets[p + 1]))
            offsets.append(offsets[-1] + batch * sizes.pop())
            phases.append(kinds.pop())
    if not rows:
        raise EmuError("no pass left to batch", key="workload.trace")
    idx = np.concatenate(rows)
    return attrs.evolve(
        trace, experts=trace.experts[idx], pass_offsets=np.asarray(offsets, np.int64),
        pass_phase=np.asarray(phases, np.int8), token_request=trace.token_request[idx],
        token_position=trace.token_position[idx], scores=None if trace.scores is None else trace.scores[idx],
        predicted=None if trace.predicted is None else trace.predicted[idx],
        logits=None if trace.logits is None else trace.logits[idx],
        meta=dict(trace.meta, batched=batch)).validate()


@attrs.frozen
class RequestTimes:
    """One request's (or one batch's) times: its prefill pass and its decode passes."""

    ttft_s: float
    decode_s: tuple[float, ...]
    batch: int = 1  # tokens per decode pass


#: how decode passes run (`run_live`)
DECODE_MODES = ("eager", "static", "graph")

#: what runs between a request's passes (`Between`): called with the decode step about to run (0 = the prefill)
BetweenFn = Callable[[int], None]


@attrs.frozen
class Between:
    """Other work run between a measured request's passes: before its prefill and before every `every`-th
    decode step (e.g. a runtime calibration, interleaved so that both see the host's pace of the same
    seconds). The request's hooks come off the model meanwhile and its runtime is attached again after."""

    fn: BetweenFn
    every: int

    def __attrs_post_init__(self) -> None:
        if self.every < 1:
            raise EmuError(f"expected a decode step interval >= 1, got {self.every}")


def _run_between(between: Between | None, step: int, hooks: RoutingHooks | None,
                 runtime: ExpertOffload | None) -> None:
    if between is None:
        return
    if hooks is not None:
        hooks.remove()
    try:
        between.fn(step)
    finally:
        if hooks is not None:
            hooks.install()
        if runtime is not None:
            runtime.attach()


class RequestSteps:
    """One request's greedy decoding a pass at a time (`prefill`, then `decode` per token), or a batch of
    requests' in lockstep (a prompt of several rows: requests `request`, `request + 1`, ...), so that another
    request's passes can run in between (`live.runtime_cal.InterleavedCalibration`); `generate` runs one
    to the end. `interleaved`: other passes run between this request's, so each of its passes installs its
    hooks and attaches its runtime first and removes the hooks after."""

    def __init__(self, model: Any, prompt: torch.Tensor, plan: PassPlan, *, request: int = 0,
                 hooks: RoutingHooks | None = None, runtime: ExpertOffload | None = None,
                 clock: PassClock | None = None, interleaved: bool = False,
                 graphed: GraphedDecode | None = None) -> None:
        from transformers import DynamicCache

        if prompt.shape[0] != plan.batch:
            raise EmuError(f"a prompt of {prompt.shape[0]} rows for a plan of batch {plan.batch}", key="batch")
        self.model, self.prompt, self.plan, self.request = model, prompt, plan, request
        self.hooks, self.runtime, self.clock, self.interleaved = hooks, runtime, clock, interleaved
        # graphed: decode passes replayed from its CUDA graphs over its static cache (the prefill stays eager)
        self.graphed = graphed
        if graphed is not None:
            if interleaved:
                raise EmuError("the device-paced decode does not interleave requests")
            graphed.cache.reset()
            self.cache = graphed.cache
        else:
            self.cache = DynamicCache(config=model.config)
        self.rows = np.arange(request, request + plan.batch)  # the requests of the prompt's rows
        self.out: list[tuple[int, ...]] = []  # each pass's tokens, one per row
        self.step = 0  # decode steps run

    @property
    def out_ids(self) -> list[int]:
        """The generated ids of a single request (first from the prefill)."""
        return [t[0] for t in self.out]

    def prefill(self) -> int:
        """The prompt's pass; returns the first row's token (`out[-1]` holds every row's)."""
        n = self.prompt.shape[1]
        toks = self._run(self.prompt, PHASE_PREFILL, np.repeat(self.rows, n), np.tile(np.arange(n), len(self.rows)),
                         self.plan.force_prefill)
        if self.graphed is not None:
            self.graphed.start(toks, n)
        return toks[0]

    def decode(self) -> int:
        """The next decode step (after `prefill`); returns the first row's token."""
        if not self.out:
            raise EmuError("decode before prefill")
        step, n = self.step, self.prompt.shape[1]
        force = self.plan.force_decode[step] if step < len(self.plan.force_decode) else None
        self.step += 1
        positions = np.full(len(self.rows), n + step)
        if self.graphed is not None and self.graphed.captured(force is not None):
            toks = _replayed_pass(self.graphed, force, self.rows, positions, self.hooks, self.runtime, self.clock)
            self.out.append(toks)
            return toks[0]
        ids = torch.tensor([[t] for t in self.out[-1]], device=self.prompt.device)
        toks = self._run(ids, PHASE_DECODE, self.rows, positions, force)
        if self.graphed is not None:
            self.graphed.start(toks, n + step + 1)
        return toks[0]

    def _run(self, ids: torch.Tensor, phase: int, requests: np.ndarray, positions: np.ndarray,
             force: int | None) -> tuple[int, ...]:
        hooks = self.hooks
        if self.interleaved:
            if hooks is not None:
                hooks.install()
            if self.runtime is not None:
                self.runtime.attach()
        try:
            with torch.no_grad():
                toks = _pass(self.model, ids, self.cache, phase, requests, positions, force, hooks, self.runtime,
                             self.clock, static=self.graphed is not None)
        finally:
            if self.interleaved and hooks is not None:
                hooks.remove()
        self.out.append(toks)
        return toks


def generate(model: Any, prompt: torch.Tensor, plan: PassPlan, *, request: int = 0,
             hooks: RoutingHooks | None = None, runtime: ExpertOffload | None = None,
             clock: PassClock | None = None, between: Between | None = None,
             graphed: GraphedDecode | None = None) -> list[int]:
    """Greedy decoding of one request (or a batch in lockstep); returns the generated ids (first from the
    prefill), the first row's (`generate_rows` gives every row's)."""
    return [t[0] for t in generate_rows(model, prompt, plan, request=request, hooks=hooks, runtime=runtime,
                                        clock=clock, between=between, graphed=graphed)]


def generate_rows(model: Any, prompt: torch.Tensor, plan: PassPlan, *, request: int = 0,
                  hooks: RoutingHooks | None = None, runtime: ExpertOffload | None = None,
                  clock: PassClock | None = None, between: Between | None = None,
                  graphed: GraphedDecode | None = None) -> list[tuple[int, ...]]:
    """`generate` with every pass's tokens, one per row of the prompt."""
    steps = RequestSteps(model, prompt, plan, request=request, hooks=hooks, runtime=runtime, clock=clock,
                         graphed=graphed)
    if runtime is not None:
        runtime.attach()  # the model's blocks may have been routed to a sibling runtime since
    _run_between(between, 0, hooks, runtime)
    steps.prefill()
    for step in range(plan.n_decode):
        if between is not None and step > 0 and step % between.every == 0:
            _run_between(between, step, hooks, runtime)
        steps.decode()
    return steps.out


def _pass(model: Any, ids: torch.Tensor, cache: Any, phase: int, requests: np.ndarray, positions: np.ndarray,
          force: int | None, hooks: RoutingHooks | None, runtime: ExpertOffload | None,
          clock: PassClock | None, static: bool = False) -> tuple[int, ...]:
    kw: dict[str, Any] = {}
    if static:  # a static cache is told the positions (a device kernel: no upload, no read of the cache)
        kw["cache_position"] = torch.arange(int(positions[0]), int(positions[0]) + ids.shape[1], device=ids.device)

    def forward() -> torch.Tensor:
        logits = model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1, **kw).logits
        return logits[:, -1].argmax(-1)

    return _timed_pass(forward, phase, force, requests, positions, hooks, runtime, clock)


def _replayed_pass(graphed: GraphedDecode, force: int | None, requests: np.ndarray, positions: np.ndarray,
                   hooks: RoutingHooks | None, runtime: ExpertOffload | None,
                   clock: PassClock | None) -> tuple[int, ...]:
    """One decode pass replayed from the graphs (captured for this forcing before the measured run)."""

    def forward() -> torch.Tensor:
        with torch.no_grad():
            return graphed.replay(force is not None, hooks)

    return _timed_pass(forward, PHASE_DECODE, force, requests, positions, hooks, runtime, clock)


def _timed_pass(forward: Callable[[], torch.Tensor], phase: int, force: int | None, requests: np.ndarray,
                positions: np.ndarray, hooks: RoutingHooks | None, runtime: ExpertOffload | None,
                clock: PassClock | None) -> tuple[int, ...]:
    """A pass between its hooks' and runtime's brackets and the clock; returns its tokens (read at the pass's
    end: the host's wait for the GPU, booked as the runtime's `pass_end_wait_s`)."""
    if hooks is not None:
        hooks.begin_pass(phase, requests, positions, force_pass=force)
    if runtime is not None:
        runtime.begin_pass(phase)
    if clock is not None:
        clock.start()
    tok = forward()
    if clock is not None:
        clock.stop()
    if hooks is not None:
        hooks.end_pass()
    t0 = time.perf_counter()
    out = tuple(tok.tolist())
    if runtime is not None:
        runtime.pass_end_wait_s += time.perf_counter() - t0
    return out


def capture_decode(graphed: GraphedDecode, plans: list[PassPlan], hooks: RoutingHooks | None) -> None:
    """Capture the decode pass for each forcing the plans' decode steps use (forced, self-routed), through
    `hooks` (whose recording and forcing become part of the graphs)."""
    rows = np.zeros(graphed.ids.shape[0])  # one token per request of the batch
    for forced in sorted({step < len(p.force_decode) for p in plans for step in range(p.n_decode)}):
        first = next((p.force_decode[0] for p in plans if p.force_decode), None) if forced else None
        if hooks is not None:
            hooks.begin_pass(PHASE_DECODE, rows, rows, force_pass=first)
        graphed.capture(forced, hooks)
        if hooks is not None:
            hooks.discard_pass()


def graphed_decode(model: Any, runtime: ExpertOffload | None, plans: list[PassPlan], warmup_passes: int,
                   device: torch.device, between: Between | None = None) -> GraphedDecode:
    """A device-paced decode with a static cache long enough for `plans` and the warm-up (not captured yet)."""
    from transformers import StaticCache

    if runtime is None:
        raise EmuError("the device-paced decode runs the offloaded runtime; no runtime was given")
    if between is not None:
        raise EmuError("the device-paced decode does not interleave other work between passes")
    if len({p.batch for p in plans}) > 1:
        raise EmuError("a static KV cache holds one batch size; the plans have several", key="batch")
    longest = max([p.prompt_len + p.n_decode + 1 for p in plans] + [8 + warmup_passes])
    cache = StaticCache(config=model.config, max_cache_len=longest)
    return GraphedDecode(model, runtime, cache, device, batch=plans[0].batch if plans else 1)


@attrs.frozen(eq=False)
class LiveResult:
    """One measured live run."""

    requests: tuple[RequestTimes, ...]
    stats: OffloadStats | None
    trace: RoutingTrace
    tokens: tuple[tuple[int, ...], ...]
    # device-paced decode: the host's busy seconds in the replayed decode passes (launches, cache decisions,
    # copies issued; not its waits for the device) over the passes' device-timed seconds
    decode_host_share: float | None = None
    # more cold prefills of the (single) request after the run, each on an emptied cache: one prefill is one
    # sample of a host whose pace drifts
    ttft_repeats_s: tuple[float, ...] = ()
    # the device-paced decode's graphs captured the experts too (`graphed.GraphedDecode.captures_experts`)
    experts_captured: bool = False

    @property
    def ttft_samples_s(self) -> tuple[float, ...]:
        """The run's TTFT and its repeats."""
        return (self.ttft_s, *self.ttft_repeats_s)

    @property
    def ttft_s(self) -> float:
        return float(np.mean([r.ttft_s for r in self.requests]))

    @property
    def decode_s(self) -> tuple[float, ...]:
        return tuple(t for r in self.requests for t in r.decode_s)

    @property
    def decode_tok_s(self) -> float:
        """Decode tokens per second over every request (a batch's pass gives a token per request)."""
        total = sum(self.decode_s)
        tokens = sum(r.batch * len(r.decode_s) for r in self.requests)
        return tokens / total if total > 0 else 0.0


def attention_backends(device: torch.device) -> Any:
    """SDPA without the cuDNN backend on a GPU: it builds an execution plan for every new key length, so
    each decode step of a first run paid ~14 ms of host time (measured on an H100, torch 2.11)."""
    import contextlib

    if device.type != "cuda":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])


def run_live(model: Any, plans: list[PassPlan], *, vocab: int, device: torch.device, seed: int = 0,
             runtime: ExpertOffload | None = None, force: RoutingTrace | None = None, warmup_passes: int = 3,
             rehearse: bool = False, model_name: str = "", meta: dict[str, Any] | None = None,
             preload: bool = False, between: Between | None = None, decode: str = "eager",
             progress: Callable[[str], None] | None = None, ttft_repeats: int = 0,
             logits: bool = False) -> LiveResult:
    """Warm up, empty the expert cache (or, with `preload`, fill it in key order), then run every plan
    (one request each) timed and recorded.

    `rehearse` first runs every plan once untimed (same shapes, other prompt ids), so no measured pass
    is the first of its shape for any kernel library; the cache is emptied after it all the same. The
    measured prompts are drawn first, so they (and the speculator's predictions, which follow the hidden
    states) do not depend on the warm-up or the rehearsal.
    `between` runs between the measured passes (not during warm-up or rehearsal).
    `decode` (`DECODE_MODES`): "eager" runs every pass through the model's Python with a dynamic KV cache;
    "graph" is the device-paced decode (`graphed.GraphedDecode`): one static KV cache for every request, the
    warm-up and rehearsal eager over it, then each decode pass captured (per forcing) and replayed; "static"
    is "graph" without the graphs (its passes eager over the static cache: the same kernels, for comparison).
    `progress(label)` is called after each measured request (`emu.progress.Progress.step`).
    `ttft_repeats`: after a single request's run, that many more prefills of its prompt, each on the cache
    emptied (or preloaded) as the run's was (`LiveResult.ttft_repeats_s`; the counts are the run's alone).
    `logits`: the recorded trace carries the routers' full logits too (`RoutingHooks(logits=True)`).
    """
    if decode not in DECODE_MODES:
        raise EmuError(f"expected a decode mode in {list(DECODE_MODES)}, got {decode!r}", key="decode")
    if decode == "graph" and warmup_passes < 1 and not rehearse:
        raise EmuError("the graph decode needs a warm-up pass (or a rehearsal) before its capture: an eager "
                       "pass sets up the static KV cache", key="warmup_passes")
    with attention_backends(device):
        return _run_live(model, plans, vocab, device, seed, runtime, force, warmup_passes, rehearse, model_name,
                         meta, preload, between, decode, progress, ttft_repeats, logits)


def _run_live(model: Any, plans: list[PassPlan], vocab: int, device: torch.device, seed: int,
              runtime: ExpertOffload | None, force: RoutingTrace | None, warmup_passes: int, rehearse: bool,
              model_name: str, meta: dict[str, Any] | None, preload: bool = False,
              between: Between | None = None, decode: str = "eager",
              progress: Callable[[str], None] | None = None, ttft_repeats: int = 0,
              logits: bool = False) -> LiveResult:
    gen = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(0, vocab, (plan.batch, plan.prompt_len), generator=gen).to(device) for plan in plans]
    graphed = None if decode == "eager" else graphed_decode(model, runtime, plans, warmup_passes, device, between)
    batch = plans[0].batch if plans else 1  # the warm-up's (a static cache holds one batch size)
    if warmup_passes > 0:
        warm = torch.randint(0, vocab, (batch, 8), generator=gen).to(device)
        generate(model, warm, PassPlan(8, warmup_passes - 1, batch=batch), runtime=runtime, graphed=graphed)
    if rehearse:
        for plan in plans:
            prompt = torch.randint(0, vocab, (plan.batch, plan.prompt_len), generator=gen).to(device)
            generate(model, prompt, PassPlan(plan.prompt_len, plan.n_decode, batch=plan.batch), runtime=runtime,
                     graphed=graphed)
    hooks = RoutingHooks(model, record=True, speculate=True, force=force, static=graphed is not None,
                         logits=logits)
    if graphed is not None and decode == "graph":
        capture_decode(graphed, plans, hooks)
    if runtime is not None:
        runtime.reset()
        if preload:
            runtime.preload()
    clock = PassClock(device)
    tokens: list[tuple[int, ...]] = []
    try:
        req = 0
        for plan, prompt in zip(plans, prompts):
            out = generate_rows(model, prompt, plan, request=req, hooks=hooks, runtime=runtime, clock=clock,
                                between=between, graphed=graphed)
            tokens.extend(tuple(int(t[b]) for t in out) for b in range(plan.batch))
            req += plan.batch
            if progress is not None:
                progress(f"request {req}")
        spans = clock.seconds()
    finally:
        hooks.remove()
    stats = runtime.stats() if runtime is not None else None  # the run's counts, before any repeat
    repeats = _prefill_repeats(model, plans, prompts, runtime, force, graphed, device, ttft_repeats, preload)
    times, i = [], 0
    for plan in plans:
        times.append(RequestTimes(spans[i], tuple(spans[i + 1: i + 1 + plan.n_decode]), plan.batch))
        i += 1 + plan.n_decode
    trace = hooks.trace(model_name, meta)
    host_share = None
    if graphed is not None and graphed.passes:
        host_share = graphed.host_s / sum(t for r in times for t in r.decode_s)
    captured = graphed is not None and graphed.captures_experts()
    return LiveResult(tuple(times), stats, trace, tuple(tokens), host_share, repeats, captured)


def cold_prefill(model: Any, prompt: torch.Tensor, plan: PassPlan, *, hooks: RoutingHooks | None,
                 runtime: ExpertOffload | None, device: torch.device, graphed: GraphedDecode | None = None,
                 preload: bool = False) -> float:
    """The seconds of one prefill of `prompt` (the plan's forced prefill pass, if any), timed as a run's, on the
    runtime's cache emptied (or, with `preload`, filled) first."""
    if runtime is not None:
        runtime.reset()
        if preload:
            runtime.preload()
        runtime.attach()
    clock = PassClock(device)
    RequestSteps(model, prompt, PassPlan(plan.prompt_len, 0, plan.force_prefill, batch=plan.batch), hooks=hooks,
                 runtime=runtime, clock=clock, graphed=graphed).prefill()
    return clock.seconds()[0]


def _prefill_repeats(model: Any, plans: list[PassPlan], prompts: list[torch.Tensor], runtime: ExpertOffload | None,
                     force: RoutingTrace | None, graphed: GraphedDecode | None, device: torch.device,
                     n: int, preload: bool) -> tuple[float, ...]:
    """`n` more prefills of a single request's prompt, timed like the run's, each on the cache emptied as the
    run's was (the same prompt routes the same where the model routes itself; a forced prefill is forced again)."""
    if n <= 0:
        return ()
    if len(plans) != 1:
        raise EmuError(f"TTFT repeats replay a single request's prefill; the run has {len(plans)}", key="ttft_repeats")
    plan = plans[0]
    hooks = RoutingHooks(model, record=False, speculate=True, force=force, static=graphed is not None)
    out = []
    try:
        for _ in range(n):
            out.append(cold_prefill(model, prompts[0], plan, hooks=hooks, runtime=runtime, device=device,
                                    graphed=graphed, preload=preload))
    finally:
        hooks.remove()
    return tuple(out)
