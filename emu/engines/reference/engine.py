"""The reference engine: the timing contract of docs/ARCHITECTURE.md written again as a SimPy model.

It shares the cache decisions with every other engine (decisions.py: gates, slots, evictions, waiting demand
copies, prefetches, landings, each policy hook) and nothing of the time side: it never calls the numba time
core (core.py). What happens when, how long it takes and in which order the same instant's events are seen
is modelled here again, so that a test of this engine against the fast one (tests/test_engine_reference.py)
checks the time semantics themselves, not only the event loops that drive one shared implementation.

The model:
- the compute stream and the CPU are `simpy.Resource`s of one; every GPU job (the pre-pass part, a layer's
  dense part, one expert) and every CPU expert is a process holding its resource for its duration;
- the copy engines are a `simpy.PriorityResource` of `copy.h2d_engines`; every copy is a process that asks
  for an engine at priority (demand before prefetch, then issue order) and holds it for
  `Timing.layer_copy_s[layer, precision]`. A queued prefetch that a gate promotes to demand cancels its request and asks
  again at demand priority;
- the VRAM pool is a `simpy.Container` of bytes: a copy's bytes go in when it takes its slot, an evicted
  key's come out (both read off the decision layer after each of its calls); the container's capacity is
  the cache's, so a decision layer that over-committed the pool would block it, which is raised as an error;
- the forward pass is a process: per pass its pre-pass job, then per layer the dense job, the gate, and the
  expert phase, where the CPU takes the lowest pending expert routed to it and the GPU the lowest ready one.

Same-instant order (the contract): every completion at t (a copy lands, a job ends) is an ordinary event;
the first one schedules the instant's decision event at a priority after every ordinary event of t, so all
completions at t are seen before anything is decided at t. At that event the forward pass decides (demand
copies waiting for a victim retry before each of its steps), then the dispatcher hands the engines of the
copies that landed at t back and asks for the copies issued or promoted at t in (priority, issue seq)
order; only then do copies start. Once the trace is done nothing more starts; copies under way still land.
"""

from __future__ import annotations

import time
from bisect import bisect_right
from collections.abc import Callable, Generator
from functools import partial
from typing import Any

import numpy as np
import simpy
from simpy.events import NORMAL

from ...errors import EmuError
from ...kernel.layout import (
    COPY_RUNNING,
    E_DONE,
    E_PENDING,
    E_RUNNING,
    FC,
    ON_CPU,
    ON_GPU,
    RESIDENT,
    SC,
    SCAL,
    SF,
    ST,
)
from ...trace.routing_trace import PHASE_DECODE
from .. import copy_queue, decisions
from ..setup import SimInputs, fresh_state

#: the priority of an instant's decision event: after every ordinary event (completion) of the same time
DECIDE = NORMAL + 1

Process = Generator[simpy.Event, Any, None]

# what one step of a layer's expert phase did
NOTHING = 0  # nothing changed: wait for the next instant
CHANGED = 1
GPU_STARTED = 2  # only a GPU job started: the next step changes nothing unless a demand copy waits
LAYER_DONE = 3  # every entry of the layer is done


def interp(xs: list[float], ys: list[float], n: int, x: float) -> float:
    """The profile's curves: piecewise linear through the first n points, the first value below the first
    point, extended past the last point along the last segment, never downwards."""
    if x <= xs[0] or n == 1:
        return ys[0]
    if x >= xs[n - 1]:
        slope = max((ys[n - 1] - ys[n - 2]) / (xs[n - 1] - xs[n - 2]), 0.0)
        return ys[n - 1] + slope * (x - xs[n - 1])
    hi = bisect_right(xs, x, 0, n)  # xs[hi - 1] <= x < xs[hi]
    lo = hi - 1
    w = (x - xs[lo]) / (xs[hi] - xs[lo])
    return ys[lo] + w * (ys[hi] - ys[lo])


class Curves:
    """Every duration of the contract, from the Timing arrays: expert FFN and CPU curves per precision, the
    dense table (tokens x context), one copy per precision, the per-pass and per-layer overheads."""

    def __init__(self, tm: Any) -> None:
        self.copy_s: list[list[float]] = [list(map(float, row)) for row in tm.layer_copy_s]  # [layer][precision]
        self.gpu = [(list(map(float, tm.exp_tok[r])), list(map(float, tm.exp_s[r])), int(tm.exp_n[r]))
                    for r in range(tm.exp_n.shape[0])]
        self.cpu = [(list(map(float, tm.cpu_tok[r])), list(map(float, tm.cpu_s[r])), int(tm.cpu_n[r]))
                    for r in range(tm.cpu_n.shape[0])]
        # a runtime that runs a layer's experts as one grouped GEMM: its seconds by the layer's distinct experts
        self.fused = [(list(map(float, tm.fz_k[r])), list(map(float, tm.fz_s[r])), int(tm.fz_n[r]))
                      for r in range(tm.fz_n.shape[0])] if int(tm.fz_n[0]) > 0 else None
        self.d_tok: list[float] = list(map(float, tm.d_tok))
        self.d_ctx: list[float] = list(map(float, tm.d_ctx))
        self.d_s: list[list[float]] = [list(map(float, row)) for row in tm.d_s]
        self.pass_overhead_s = float(tm.scal[SCAL.PASS_OVERHEAD_S])
        self.layer_overhead_s = float(tm.scal[SCAL.LAYER_OVERHEAD_S])
        self.n_dense_layers = float(tm.scal[SCAL.N_DENSE_LAYERS])
        self.issue_s = {True: (float(tm.scal[SCAL.DECODE_COPY_ISSUE_S]), float(tm.scal[SCAL.DECODE_PREFETCH_ISSUE_S])),
                        False: (float(tm.scal[SCAL.PREFILL_COPY_ISSUE_S]),
                                float(tm.scal[SCAL.PREFILL_PREFETCH_ISSUE_S]))}
        # the runtime's host costs: before a pass, per layer launched, per readback and decisions, per expert
        self.host_pass_s = float(tm.scal[SCAL.HOST_PASS_S])
        self.host_layer_s = {True: float(tm.scal[SCAL.HOST_LAYER_S]), False: float(tm.scal[SCAL.PREFILL_HOST_LAYER_S])}
        self.host_readback_s = {True: float(tm.scal[SCAL.HOST_READBACK_S]),
                                False: float(tm.scal[SCAL.PREFILL_HOST_READBACK_S])}
        # launching one expert, by phase: a decode pass of one token, one of several, a prefill
        self.expert_host_s = {"decode": float(tm.scal[SCAL.DECODE_EXPERT_HOST_S]),
                              "batch": float(tm.scal[SCAL.BATCH_EXPERT_HOST_S]),
                              "prefill": float(tm.scal[SCAL.PREFILL_EXPERT_HOST_S])}
        self._expert: dict[tuple[int, int], float] = {}

    def expert(self, prec: int, tokens: int) -> float:
        """One expert on the GPU at precision `prec` for `tokens` routed tokens."""
        dur = self._expert.get((prec, tokens))
        if dur is None:
            xs, ys, n = self.gpu[prec]
            dur = self._expert[(prec, tokens)] = interp(xs, ys, n, float(tokens))
        return dur

    def fused_share(self, prec: int, experts: int) -> float | None:
        """One expert's share of its layer's grouped GEMM over `experts` distinct experts; None at a lower
        precision without a fused table (its own kernel then)."""
        assert self.fused is not None
        xs, ys, n = self.fused[prec]
        return interp(xs, ys, n, float(experts)) / experts if n > 0 else None

    def cpu_expert(self, tokens: int) -> float:
        """One expert on the CPU: the host holds the full-precision weights."""
        xs, ys, n = self.cpu[0]
        return interp(xs, ys, n, float(tokens))

    def dense(self, tokens: float, context: float) -> float:
        """The dense table, bilinear: along the context within each token row, then along the tokens."""
        col = [interp(self.d_ctx, row, len(self.d_ctx), context) for row in self.d_s]
        return interp(self.d_tok, col, len(self.d_tok), tokens)


class _DecideEvent(simpy.Event):
    """One instant's decision event; `fire` schedules it after every ordinary event of the current time."""

    def fire(self) -> None:
        self._ok = True
        self._value = None
        self.env.schedule(self, DECIDE)


class _Copy:
    """A copy that holds its slot: its priority and issue seq (the decision layer's), its engine request."""

    __slots__ = ("key", "prio", "process", "request", "seq")

    def __init__(self, key: int) -> None:
        self.key = key
        self.prio = 0
        self.seq = 0
        self.request: Any = None
        self.process: simpy.Process | None = None


class ReferenceEngine:
    def __init__(self, inputs: SimInputs) -> None:
        self.inputs = inputs
        self.cs, self.stack = fresh_state(inputs)
        self.tv = inputs.tv
        cs = self.cs  # its arrays, bound once (each attribute of the struct proxy is a property call)
        self.sc, self.fc, self.status, self.prec, self.nbytes = cs.sc, cs.fc, cs.status, cs.prec, cs.nbytes
        self.cur_state, self.cur_where, self.cur_key, self.cur_sub, self.cur_tokens = (
            cs.cur_state, cs.cur_where, cs.cur_key, cs.cur_sub, cs.cur_tokens)
        model, profile = inputs.model, inputs.profile
        self.n_layers = model.n_moe_layers
        self.n_experts = model.n_experts
        self.curves = Curves(inputs.tm)
        self.env = simpy.Environment(initial_time=0.0)
        self.compute = simpy.Resource(self.env, capacity=1)
        self.cpu = simpy.Resource(self.env, capacity=1)
        self.copy_engines = simpy.PriorityResource(self.env, capacity=profile.copy.h2d_engines)
        self.submission = profile.copy.order == "submission"
        self.vram = simpy.Container(self.env, capacity=max(inputs.capacity_bytes, 1), init=0)
        # the time side's own state
        self.gpu_free = True
        self.cpu_free = True
        self.idle_since: float | None = None  # the GPU waits in a layer's expert phase since then
        self.host_cursor = 0.0  # the host has launched everything decided so far by then
        self.expert_launch_s = 0.0  # the host's time to launch one expert in this pass
        self.dense_s = 0.0  # a layer's dense part on the device in this pass
        self.pre_s = 0.0  # the pass's fixed cost and dense (non-MoE) layers
        self.copy_busy = 0.0
        self.gpu_busy = 0.0
        self.cpu_busy = 0.0
        self.finished = False
        self.end_time: float | None = None
        self._queued: dict[int, _Copy] = {}  # copies holding a slot that have not started, by key
        self._ready: dict[int, _Copy] = {}  # of those, the ones issued or promoted since the last dispatch
        self._landed: list[Any] = []  # engine requests of the copies that landed since the last dispatch
        self._next = self._new_instant()
        self._fired = False

    # ---- instants -------------------------------------------------------------------------------------
    def _new_instant(self) -> _DecideEvent:
        event = _DecideEvent(self.env)
        event.callbacks.append(self._begin_instant)  # first: the waiters (forward pass, dispatcher) follow
        return event

    def _begin_instant(self, _event: simpy.Event) -> None:
        self._fired = False
        self._next = self._new_instant()

    def _kick(self) -> None:
        """Something completed now: this instant's decisions run once every completion of now is in."""
        if not self._fired:
            self._fired = True
            self._next.fire()

    def _instant(self) -> simpy.Event:
        """The next instant's decision event (the forward pass waits on it before the dispatcher does)."""
        return self._next

    # ---- the forward pass ---------------------------------------------------------------------------
    def _forward(self) -> Process:
        yield self._instant()  # t = 0
        for p in range(self.tv.pass_offsets.shape[0] - 1):
            yield from self._pass(p)
        self.finished = True
        self.end_time = self.env.now

    def _pass(self, p: int) -> Process:
        cs, env = self.cs, self.env
        t = env.now
        cs.pass_start[p] = t
        decisions.begin_pass(self.stack, cs, self.tv, p, t)
        self._pass_times(p)
        cs.sc[SC.LAYER] = 0
        c = self.curves
        launch = max(t, float(self.fc[FC.HOST_FREE])) + c.host_pass_s  # the host prepares the pass
        host_s = c.n_dense_layers * self.layer_launch_s  # then launches the dense layers before the MoE ones
        self.host_cursor = launch + host_s
        pre = self._launched(launch, host_s, self.pre_s)
        if pre > 0.0:
            yield from self._gpu_job_and_wait(pre, self.pre_s, 0)
        for layer in range(self.n_layers):
            cs.sc[SC.LAYER] = layer
            # the host launches the dense part after the last layer's experts, then waits for its routing
            dense = self._launched(self._launch_point(), self.layer_launch_s, self.dense_s) + self.readback_host_s
            if dense > 0.0:
                yield from self._gpu_job_and_wait(dense, self.dense_s, layer)
            self._gate(p, layer)
            yield from self._experts(layer)
        cs.pass_end[p] = env.now
        cs.sc[SC.PASS] = p + 1

    def _pass_times(self, p: int) -> None:
        """The pass's dense time at its token count and context (tokens already in the KV cache before the
        pass: each token counts the position of its request's first token in the pass, averaged), and the
        host's issue time per copy and per prefetch for its phase."""
        tv, c = self.tv, self.curves
        t0, t1 = int(tv.pass_offsets[p]), int(tv.pass_offsets[p + 1])
        requests = tv.token_request[t0:t1]
        positions = tv.token_position[t0:t1].astype(np.int64)
        first = np.flatnonzero(np.r_[True, requests[1:] != requests[:-1]])  # where each request's run starts
        run_len = np.diff(np.r_[first, t1 - t0])
        context = float(int((positions[first] * run_len).sum()))
        tokens = float(t1 - t0)
        dense = c.dense(tokens, context / tokens)
        self.dense_s = dense + c.layer_overhead_s
        self.pre_s = c.pass_overhead_s + c.n_dense_layers * dense
        decode = bool(tv.pass_phase[p] == PHASE_DECODE)
        self.cs.fc[FC.ISSUE_S], self.cs.fc[FC.PF_ISSUE_S] = c.issue_s[decode]
        self.expert_launch_s = c.expert_host_s["prefill" if not decode else "decode" if t1 - t0 == 1 else "batch"]
        self.layer_launch_s = c.host_layer_s[decode]
        self.readback_host_s = c.host_readback_s[decode]

    def _launch_point(self) -> float:
        """The host launches its next job after what it launched so far and the copies it issued."""
        return max(self.host_cursor, float(self.fc[FC.HOST_FREE]))

    def _launched(self, launch: float, host_s: float, dev: float) -> float:
        """The host rule, from now with the device free: a job the host launches from `launch` for `host_s`
        starts once the host began and ends no sooner than it finished; the device runs it for `dev`."""
        now = self.env.now
        wait = max(launch - now, 0.0)
        return max(wait + dev, launch + host_s - now)

    def _gpu_job_and_wait(self, duration: float, dev: float, layer: int) -> Process:
        """A pre-pass or dense job: it runs on the compute stream; the pass goes on at its end's instant."""
        job = self._start_gpu(duration, dev, layer, self._gpu_done)
        while not job.triggered:
            yield self._instant()

    def _gate(self, p: int, layer: int) -> None:
        t = self.env.now
        decisions.gate(self.stack, self.cs, self.tv, p, layer, t)
        self._after_decision()
        self.host_cursor = max(float(self.cs.fc[FC.HOST_FREE]), t)  # it launches once it issued the copies

    def _retry_waiters(self) -> None:
        """Demand copies waiting for a victim retry before each decision step (FIFO)."""
        if self.sc[SC.WQ_N] > 0:
            decisions.retry_waiters(self.stack, self.cs, self.tv, self.env.now)
            self._after_decision()

    def _experts(self, layer: int) -> Process:
        """The layer's expert phase: step as far as possible at each instant until every entry is done. Demand
        copies wait for a victim only here (each is an entry of the layer, which ends once it ran), so this is
        where they retry: before every step, as at the start of every instant."""
        while True:
            self._retry_waiters()
            step = self._expert_step(layer)
            if step == LAYER_DONE:
                self._end_stall(layer)
                return
            if step == NOTHING or (step == GPU_STARTED and self.sc[SC.WQ_N] == 0):
                yield self._instant()

    def _expert_step(self, layer: int) -> int:
        sc, cur_state, cur_where = self.sc, self.cur_state, self.cur_where
        n = int(sc[SC.NCUR])
        changed = False
        if self.cpu_free and sc[SC.CPU_PENDING] > 0:  # the CPU takes the lowest pending expert routed to it
            i = next(i for i in range(n) if cur_state[i] == E_PENDING and cur_where[i] == ON_CPU)
            sc[SC.CPU_PENDING] -= 1
            duration = self.curves.cpu_expert(int(self.cur_tokens[i]))
            cur_state[i] = E_RUNNING
            self.cpu_busy += duration
            self.cpu_free = False
            self._start(self.cpu, duration, partial(self._cpu_done, i))
            changed = True
        if not self.gpu_free:
            return CHANGED if changed else NOTHING
        fused = self.curves.fused is not None
        on_gpu = [i for i in range(n) if cur_where[i] == ON_GPU] if fused else []
        # one grouped GEMM runs the layer's experts: it starts once every one of them is in
        blocked = any(cur_state[i] == E_PENDING and self.status[self._key_of(i)] != RESIDENT for i in on_gpu)
        all_done = True
        for i in range(n):  # the GPU takes the lowest ready expert
            state = cur_state[i]
            if state != E_DONE:
                all_done = False
            if state != E_PENDING or cur_where[i] != ON_GPU or blocked:
                continue
            key = self._key_of(i)
            if self.status[key] != RESIDENT:
                continue
            share = self.curves.fused_share(int(self.prec[key]), len(on_gpu)) if fused else None
            duration = self.curves.expert(int(self.prec[key]), int(self.cur_tokens[i])) if share is None else share
            if duration <= 0.0:  # nothing to run: done at once
                self._entry_done(i)
                return CHANGED
            self._end_stall(layer)
            launch = self._launch_point()  # the host launches the layer's experts back to back
            self.host_cursor = launch + self.expert_launch_s
            cur_state[i] = E_RUNNING
            self._start_gpu(self._launched(launch, self.expert_launch_s, duration), duration, layer,
                            partial(self._gpu_expert_done, i))
            return CHANGED if changed else GPU_STARTED
        if all_done:
            return LAYER_DONE
        if self.idle_since is None:  # the GPU waits for a copy or for the CPU: a stall
            self.idle_since = self.env.now
        return CHANGED if changed else NOTHING

    def _key_of(self, i: int) -> int:
        """The expert entry i runs: its substitute's, if the miss policy gave it one."""
        sub = int(self.cur_sub[i])
        return sub if sub >= 0 else int(self.cur_key[i])

    def _end_stall(self, layer: int) -> None:
        if self.idle_since is not None:
            self.cs.stats_f[SF.STALL_S, layer] += self.env.now - self.idle_since
            self.idle_since = None

    # ---- jobs -----------------------------------------------------------------------------------------
    def _start_gpu(self, duration: float, dev: float, layer: int, done: Callable[[], None]) -> simpy.Process:
        """A job on the compute stream for `duration`: `dev` of the device's work, the rest a wait for the host."""
        if duration > dev:
            self.cs.stats_f[SF.HOST_WAIT_S, layer] += duration - dev
        self.gpu_busy += dev
        self.gpu_free = False
        return self._start(self.compute, duration, done)

    def _start(self, resource: simpy.Resource, duration: float, done: Callable[[], None]) -> simpy.Process:
        if resource.count or resource.queue:
            raise RuntimeError("a job started on a busy compute stream or CPU")
        return self.env.process(self._job(resource, duration, done))

    def _job(self, resource: simpy.Resource, duration: float, done: Callable[[], None]) -> Process:
        with resource.request() as request:
            yield request
            yield self.env.timeout(duration)
        done()
        self._kick()

    def _gpu_done(self) -> None:
        self.gpu_free = True

    def _gpu_expert_done(self, i: int) -> None:
        self.gpu_free = True
        self._entry_done(i)

    def _cpu_done(self, i: int) -> None:
        self.cpu_free = True
        self._entry_done(i)

    def _entry_done(self, i: int) -> None:
        self.cur_state[i] = E_DONE
        decisions.release(self.cs, i)  # its key may be evicted again

    # ---- copies ---------------------------------------------------------------------------------------
    def _after_decision(self) -> None:
        """Take the copies a decision call issued (or promoted) off the decision layer's queue into this
        engine's own, and follow the pool: the new copies' bytes go in, the evicted keys' bytes come out."""
        cs, sc = self.cs, self.sc
        new_bytes = 0
        while sc[SC.DQ_N] + sc[SC.PQ_N] > 0:
            item = copy_queue.pop(cs)
            key = int(copy_queue.entry_key(item))
            seq = int(copy_queue.entry_seq(item))
            if not copy_queue.is_current(cs, key, seq):
                continue  # a prefetch entry promoted since: its demand entry stands for it
            copy = self._queued.get(key)
            if copy is None:
                copy = self._queued[key] = _Copy(key)
                new_bytes += int(self.nbytes[key])
            copy.prio, copy.seq = int(cs.copy_prio[key]), seq
            self._ready[key] = copy
        freed = self.vram.level + new_bytes - int(sc[SC.USED])
        if freed < 0:
            raise RuntimeError("the pool grew by more bytes than the copies issued")
        if freed > 0:
            self.vram.get(freed)
        if new_bytes > 0 and not self.vram.put(new_bytes).triggered:
            raise RuntimeError("VRAM pool over capacity: the decision layer let resident and in-flight bytes "
                               "exceed the cache")

    def _dispatcher(self) -> Process:
        while True:
            yield self._instant()  # after the forward pass's decisions at this instant
            if not self.finished:  # once the trace is done nothing more starts
                self._dispatch()

    def _dispatch(self) -> None:
        """Ask for an engine for each copy issued or promoted at this instant, best first, then hand back the
        engines whose copies landed: the priority queue gives each to the best copy waiting."""
        for copy in sorted(self._ready.values(), key=self._order):
            if copy.request is not None:  # a queued prefetch promoted to demand asks again
                copy.request.cancel()
            copy.request = self.copy_engines.request(priority=self._order(copy))
            if copy.process is None:
                copy.process = self.env.process(self._copy(copy))
            else:
                copy.process.interrupt("promoted to demand")
        self._ready.clear()
        for request in self._landed:
            self.copy_engines.release(request)
        self._landed.clear()

    def _order(self, copy: _Copy) -> tuple[int, int]:
        """A copy's place on the engines: (demand before prefetch, issue order), or issue order alone where the
        engine runs copies in submission order (profile `copy.order`)."""
        return (0, copy.seq) if self.submission else (copy.prio, copy.seq)

    def _copy(self, copy: _Copy) -> Process:
        while True:
            try:
                yield copy.request
                break
            except simpy.Interrupt:
                continue  # promoted: wait for the demand request now in copy.request
        cs, key = self.cs, copy.key
        del self._queued[key]
        cs.copy_state[key] = COPY_RUNNING
        layer = key // self.n_experts
        duration = self.curves.copy_s[layer][int(self.prec[key])]
        cs.stats_i[ST.BYTES_H2D, layer] += self.nbytes[key]
        cs.stats_i[ST.COPIES, layer] += 1
        self.copy_busy += duration
        yield self.env.timeout(duration)
        decisions.land(cs, key, self.env.now)
        self._landed.append(copy.request)  # the engine goes back at this instant's dispatch
        self._kick()

    # ---- the run --------------------------------------------------------------------------------------
    def run(self) -> float:
        self.env.process(self._forward())  # before the dispatcher: it decides first at every instant
        self.env.process(self._dispatcher())
        self._kick()
        self.env.run()
        if self.end_time is None:
            raise EmuError("the run deadlocked: a demand copy can never find room (is a layer's cap below one "
                           "expert?)", key="cache.capacity")
        cs = self.cs
        cs.fc[FC.COPY_BUSY] = self.copy_busy
        cs.fc[FC.GPU_BUSY] = self.gpu_busy
        cs.fc[FC.CPU_BUSY] = self.cpu_busy
        if self.vram.level != int(cs.sc[SC.USED]):
            raise RuntimeError("the VRAM pool and the decision layer disagree on the bytes held")
        self._close()
        return self.end_time

    def _close(self) -> None:
        """End of run: prefetched experts never used count as wasted."""
        cs = self.cs
        for key in np.flatnonzero(cs.pf_unused == 1):
            layer = int(key) // self.n_experts
            cs.pf_unused[key] = 0
            cs.stats_i[ST.PF_WASTED, layer] += 1
            cs.stats_f[SF.PF_WASTED_BYTES, layer] += cs.nbytes[key]


def run_reference(inputs: SimInputs) -> tuple[Any, float, dict[str, float]]:
    """Run the trace on the reference engine; same return as `run_fast`: (final cache state, end time,
    timings: `setup_s` for the fresh state and the policies' init, `run_s` for the simulation)."""
    t0 = time.perf_counter()
    engine = ReferenceEngine(inputs)
    t1 = time.perf_counter()
    end = engine.run()
    t2 = time.perf_counter()
    return engine.cs, float(end), {"setup_s": t1 - t0, "run_s": t2 - t1}
