"""A timeline of one SimPy run as Chrome trace events (Perfetto, chrome://tracing).

The recorder watches the SimPy engine's instants: after each call of the shared core it reads what
started (copies, a GPU job, a CPU job) and whether the GPU went idle, from the same arrays the core
wrote. So every event is one of the run's own jobs or copies with the duration the core booked: summed
over the whole trace they give the run's copy, compute and stall times (tests/test_timeline.py).
A stall is the GPU waiting inside a layer's expert phase (for a copy, or for the CPU); it is recorded
exactly when the core books it: when the next GPU job starts, or when the layer ends while the GPU waits.

Passes outside the window are not stored; a job or copy belongs to the pass in progress when it starts.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

from ...errors import EmuError, EmuWarning
from ...kernel.layout import E_PENDING, FC, JOB_DENSE, JOB_PRE, ON_GPU, PREFETCH, SC
from ...trace import PHASE_DECODE

DEFAULT_PASSES = (0, 8)
#: above this many passes a timeline run warns that the SimPy engine takes minutes (it runs ~55 OLMoE
#: passes/s on 2 cores: 1028 passes of scenarios/olmoe-1b-7b_h100_5pct.toml in 18 s)
SLOW_PASSES = 10_000

# track ids (Chrome "tid") inside one process; copy engine i is COPY_TID + i
PASSES_TID = 0
GPU_TID = 1
STALL_TID = 2
CPU_TID = 3
COPY_TID = 10
PID = 1


def parse_pass_window(text: str) -> tuple[int, int | None]:
    """`A:B` (passes A..B-1, either side may be left out) -> (A, B or None for 'to the end')."""
    start, sep, stop = text.partition(":")
    try:
        if not sep:
            raise ValueError
        a = int(start) if start.strip() else 0
        b = int(stop) if stop.strip() else None
    except ValueError:
        raise EmuError(f"expected A:B (pass numbers, e.g. 0:8 or 16:), got {text!r}",
                       key="--timeline-passes") from None
    if a < 0 or (b is not None and b <= a):
        raise EmuError(f"expected 0 <= A < B, got {text!r}", key="--timeline-passes")
    return a, b


class TimelineRecorder:
    """Pass one to `DesEngine(inputs, recorder=...)`; afterwards `write(path)` or `chrome_trace()`."""

    def __init__(self, passes: tuple[int, int | None] = DEFAULT_PASSES) -> None:
        self.first, self.stop = passes
        # events in seconds: (tid, name, category, start, duration, args)
        self.events: list[tuple[int, str, str, float, float, dict[str, Any]]] = []
        self._cs: Any = None

    # ---- called by the engine ------------------------------------------------------------------
    def bind(self, cs: Any, inputs: Any) -> None:
        n_passes = inputs.trace.n_passes
        if self.first >= n_passes:
            raise EmuError(f"the window starts at pass {self.first} but the trace has {n_passes} passes",
                           key="--timeline-passes")
        self.stop = n_passes if self.stop is None else min(self.stop, n_passes)
        if n_passes > SLOW_PASSES:
            warnings.warn(f"--timeline runs all {n_passes} passes on the SimPy engine (tens of passes per second); "
                          "set workload.max_tokens to stop sooner", EmuWarning, stacklevel=2)
        self._cs = cs
        self._n_experts = inputs.model.n_experts
        self._precisions = inputs.precisions
        self._trace = inputs.trace
        self._lane_end = [0.0] * inputs.profile.copy.h2d_engines
        self._stall: tuple[float, dict[str, Any]] | None = None  # (idle since, args) while the GPU waits

    def after_instant(self, t: float, n_started: int) -> None:
        """Read what the core just started at t (before the engine clears its 'new job' flags)."""
        cs = self._cs
        sc, fc = cs.sc, cs.fc
        p = int(sc[SC.PASS])
        keep = self.first <= p < self.stop
        for j in range(n_started):
            key, dur = int(cs.io_keys[j]), float(cs.io_durs[j])
            lane = self._free_lane(t, dur)
            if keep:
                layer, expert = divmod(key, self._n_experts)
                kind = "prefetch" if cs.copy_prio[key] == PREFETCH else "demand"
                self.events.append((COPY_TID + lane, f"copy L{layer} E{expert}", kind, t, dur, {
                    "pass": p, "layer": layer, "expert": expert, "kind": kind,
                    "precision": self._precisions[int(cs.prec[key])], "bytes": int(cs.nbytes[key])}))
        if self._stall is not None and (sc[SC.GPU_IDLE] == 0 or float(fc[FC.IDLE_T]) != self._stall[0]):
            # the wait ended at t: the GPU took a job, or the layer it waited in ended (a wait for the CPU)
            since, args = self._stall
            self._stall = None
            if self.first <= args["pass"] < self.stop:
                self.events.append((STALL_TID, f"stall L{args['layer']}", "stall", since, t - since, args))
        n_gpu = int(sc[SC.GPU_NEW])
        if n_gpu > 0 and keep:
            # a chain of jobs back to back (core._chain) is unfolded: one span per job, each starting
            # where the previous one ends (the same additions the engines make)
            start = t
            layer = int(sc[SC.LAYER])
            for k in range(n_gpu):
                job, dur = int(cs.chain_job[k]), float(cs.chain_dur[k])
                # a chain's dense job is the next layer's (the core moves on when the chain ends)
                job_layer = layer + 1 if job == JOB_DENSE and n_gpu > 1 else layer
                self.events.append(self._gpu_event(start, dur, p, job, job_layer))
                start = start + dur
        if sc[SC.CPU_NEW] == 1 and keep:
            i = int(sc[SC.CPU_JOB])
            layer = int(sc[SC.LAYER])
            expert = int(cs.cur_expert[i])
            self.events.append((CPU_TID, f"expert L{layer} E{expert} (CPU)", "cpu", t, float(fc[FC.CPU_DUR]),
                                {"pass": p, "layer": layer, "expert": expert, "tokens": int(cs.cur_tokens[i])}))
        if sc[SC.GPU_IDLE] == 1 and self._stall is None:
            self._stall = (float(fc[FC.IDLE_T]), self._stall_args(p))

    def _stall_args(self, p: int) -> dict[str, Any]:
        """What the idle GPU waits for when it goes idle: experts of the layer not resident yet, and
        whether the CPU still runs some of the layer's experts."""
        cs = self._cs
        pending = [int(cs.cur_expert[i]) for i in range(int(cs.sc[SC.NCUR]))
                   if cs.cur_state[i] == E_PENDING and cs.cur_where[i] == ON_GPU]
        return {"pass": p, "layer": int(cs.sc[SC.LAYER]), "waiting_for": pending,
                "cpu_busy": bool(cs.sc[SC.CPU_JOB] >= 0)}

    def _free_lane(self, t: float, dur: float) -> int:
        """The lowest-numbered copy engine whose last copy has landed by t (the engine had one free)."""
        for lane, end in enumerate(self._lane_end):
            if end <= t:
                self._lane_end[lane] = t + dur
                return lane
        raise AssertionError("a copy started while every copy engine was busy")

    def _gpu_event(self, t: float, dur: float, p: int, job: int,
                   layer: int) -> tuple[int, str, str, float, float, dict[str, Any]]:
        cs = self._cs
        if job == JOB_PRE:
            return GPU_TID, "pre-pass", "pre", t, dur, {"pass": p}
        if job == JOB_DENSE:
            return GPU_TID, f"dense L{layer}", "dense", t, dur, {"pass": p, "layer": layer}
        expert = int(cs.cur_expert[job])
        args: dict[str, Any] = {"pass": p, "layer": layer, "expert": expert, "tokens": int(cs.cur_tokens[job])}
        name = f"expert L{layer} E{expert}"
        sub = int(cs.cur_sub[job])
        if sub >= 0:
            args["substitute"] = sub % self._n_experts
            name += f" (as E{args['substitute']})"
        run_key = sub if sub >= 0 else int(cs.cur_key[job])
        args["precision"] = self._precisions[int(cs.prec[run_key])]
        return GPU_TID, name, "expert", t, dur, args

    # ---- output ---------------------------------------------------------------------------------
    def chrome_trace(self) -> dict[str, Any]:
        """`{"traceEvents": [...]}`: "M" names for the tracks, "X" spans, "i" pass boundaries (us)."""
        cs = self._cs
        if cs is None:
            raise RuntimeError("the recorder was never attached to a run")
        tracks = [(PASSES_TID, "passes"), (GPU_TID, "GPU compute"), (STALL_TID, "stall"), (CPU_TID, "CPU")]
        tracks += [(COPY_TID + i, f"copy engine {i}") for i in range(len(self._lane_end))]
        out: list[dict[str, Any]] = [{"name": "process_name", "ph": "M", "pid": PID, "tid": 0,
                                      "args": {"name": "moe-emu (SimPy engine)"}}]
        for order, (tid, name) in enumerate(tracks):
            out.append({"name": "thread_name", "ph": "M", "pid": PID, "tid": tid, "args": {"name": name}})
            out.append({"name": "thread_sort_index", "ph": "M", "pid": PID, "tid": tid,
                        "args": {"sort_index": order}})
        trace = self._trace
        for p in range(self.first, self.stop):
            phase = "decode" if trace.pass_phase[p] == PHASE_DECODE else "prefill"
            tokens = int(trace.pass_offsets[p + 1] - trace.pass_offsets[p])
            out.append({"name": f"pass {p} start ({phase})", "ph": "i", "s": "g", "pid": PID, "tid": PASSES_TID,
                        "ts": float(cs.pass_start[p]) * 1e6, "args": {"pass": p, "phase": phase, "tokens": tokens}})
            out.append({"name": f"pass {p} end", "ph": "i", "s": "g", "pid": PID, "tid": PASSES_TID,
                        "ts": float(cs.pass_end[p]) * 1e6, "args": {"pass": p}})
        for tid, name, cat, start, dur, args in self.events:
            out.append({"name": name, "cat": cat, "ph": "X", "pid": PID, "tid": tid, "ts": start * 1e6,
                        "dur": dur * 1e6, "args": args})
        return {"traceEvents": out, "displayTimeUnit": "ms",
                "otherData": {"passes": [self.first, self.stop], "time_unit": "us"}}

    def write(self, path: str | Path) -> Path:
        out = Path(path)
        if out.parent != Path():
            out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(self.chrome_trace()) + "\n")
        return out
