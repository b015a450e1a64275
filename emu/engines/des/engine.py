"""The SimPy engine: SimPy resources and processes driving the shared time core (core.py), one instant at a time.

It gives the fast engine's numbers (same core) and records timelines (`emu run --timeline`); the independent
model of the contract that checks the core is emu/engines/reference.

Resources mirror ../shared/DESIGN.md: a compute stream and a CPU (`simpy.Resource`, capacity 1), the
host-to-device copy engines (`simpy.Resource` with the profile's engine count; the queue order itself
is the shared core's demand-before-prefetch copy queue) and the VRAM pool (`simpy.Container` of bytes whose
level follows the bytes held by resident and in-flight experts).

Same-instant order is the core's contract: completions are ordinary events (priority NORMAL); the
decision step and the copy dispatch run in one `Instant` event at priority LATE, so every completion
at time t has been seen before anything is decided at t.

GPU jobs whose order the core has already fixed come as a chain (core._chain): one process holds the
compute stream and yields one timeout per member, so each member ends at the previous end plus its
duration, as the fast engine computes it, with no instant in between.

An optional `TimelineRecorder` (timeline.py) sees each instant's starts; without one the engine pays
one `is None` test per instant.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import simpy
from simpy.events import NORMAL

from ...errors import EmuError
from ...kernel.hooks import compiled
from ...kernel.layout import FC, SC
from .. import core
from ..setup import SimInputs, fresh_state

if TYPE_CHECKING:
    from .timeline import TimelineRecorder

LATE = NORMAL + 1


class Instant(simpy.Event):
    """An event processed after every ordinary event of the same instant."""

    def __init__(self, env: simpy.Environment) -> None:
        super().__init__(env)
        self._ok = True
        self._value = None
        env.schedule(self, LATE)


class DesEngine:
    def __init__(self, inputs: SimInputs, recorder: TimelineRecorder | None = None) -> None:
        self.inputs = inputs
        self.cs, self.stack = fresh_state(inputs)
        compiled(core.instant, core.INSTANT_SIG)  # the core's entry for this engine (fast runs never need it)
        self.recorder = recorder
        if recorder is not None:
            recorder.bind(self.cs, inputs)
        self.env = simpy.Environment()
        self.compute_stream = simpy.Resource(self.env, capacity=1)
        self.cpu = simpy.Resource(self.env, capacity=1)
        n_engines = inputs.profile.copy.h2d_engines
        self.copy_engines = simpy.Resource(self.env, capacity=n_engines)
        self.vram = simpy.Container(self.env, capacity=max(inputs.capacity_bytes, 1), init=0)
        self.end_time: float | None = None
        self._instant_pending = False
        self._done_keys: list[int] = []
        self._done_jobs = 0
        # the core's exchange arrays and scalars, read and written here without a jitted call
        self._io_done, self._io_keys, self._io_durs = self.cs.io_done, self.cs.io_keys, self.cs.io_durs
        self._sc, self._fc = self.cs.sc, self.cs.fc
        self._chain_dur = self.cs.chain_dur

    # ---- processes: each holds its resource for its duration, then reports the completion ----------
    def _copy(self, request: simpy.Event, key: int, duration: float) -> Any:
        with request:
            yield request
            yield self.env.timeout(duration)
        self._done_keys.append(key)
        self._kick()

    def _job(self, request: simpy.Event, durations: list[float], done_bit: int) -> Any:
        """Jobs back to back (a chain from the core, or one job): each timeout starts at the previous end."""
        with request:
            yield request
            for duration in durations:
                yield self.env.timeout(duration)
        self._done_jobs |= done_bit
        self._kick()

    # ---- the instant: completions, decisions, dispatch in one call of the shared core --------------
    def _kick(self) -> None:
        if not self._instant_pending:
            self._instant_pending = True
            Instant(self.env).callbacks.append(self._on_instant)

    def _on_instant(self, _event: simpy.Event) -> None:
        self._instant_pending = False
        env, sc, fc = self.env, self._sc, self._fc
        t = env.now
        n_done = len(self._done_keys)
        self._io_done[:n_done] = self._done_keys
        self._done_keys.clear()
        done_jobs, self._done_jobs = self._done_jobs, 0
        n_free = self.copy_engines.capacity - self.copy_engines.count
        started = core.instant(self.stack, self.cs, self.inputs.tm, self.inputs.tv, t, n_done, done_jobs, n_free)
        if self.recorder is not None:
            self.recorder.after_instant(t, started)
        n_gpu = int(sc[SC.GPU_NEW])
        if n_gpu > 0:
            sc[SC.GPU_NEW] = 0
            env.process(self._job(self.compute_stream.request(), self._chain_dur[:n_gpu].tolist(), core.GPU_DONE))
        if sc[SC.CPU_NEW] == 1:
            sc[SC.CPU_NEW] = 0
            env.process(self._job(self.cpu.request(), [float(fc[FC.CPU_DUR])], core.CPU_DONE))
        for j in range(started):
            request = self.copy_engines.request()  # granted at once: an engine is free
            env.process(self._copy(request, int(self._io_keys[j]), float(self._io_durs[j])))
        self._sync_vram()
        if self.end_time is None and core.trace_done.py_func(sc):  # plain Python: no jitted call
            self.end_time = t

    def _sync_vram(self) -> None:
        used = int(self._sc[SC.USED])
        delta = used - self.vram.level
        if delta > 0:
            self.vram.put(delta)
        elif delta < 0:
            self.vram.get(-delta)
        if self.vram.level != used:
            raise AssertionError("VRAM pool over capacity: the core let resident bytes exceed the budget")

    def run(self) -> float:
        self._kick()
        self.env.run()
        if self.end_time is None:
            raise EmuError("the run deadlocked: a demand copy can never find room (is a layer's cap below one "
                           "expert?)", key="cache.capacity")
        return self.end_time


def run_des(inputs: SimInputs, recorder: TimelineRecorder | None = None) -> tuple[Any, float, dict[str, float]]:
    """Run the trace on the SimPy engine; same return as `run_fast`."""
    t0 = time.perf_counter()
    engine = DesEngine(inputs, recorder)
    t1 = time.perf_counter()
    end = engine.run()
    t2 = time.perf_counter()
    core.close(engine.cs)
    return engine.cs, end, {"setup_s": t1 - t0, "run_s": t2 - t1}
