"""The fast engine: the shared core driven by a numba event loop over flat arrays.

Time jumps from one instant to the next (the earliest end of a copy or a job); at each instant the
core's `instant` runs completions, decisions and dispatch in the order every engine uses.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from numba import float64, int64, njit

from ...errors import EmuError
from ...kernel import cache as kernel_cache
from ...kernel.hooks import compiled
from ...kernel.layout import CS_T, FC, SC, TM_T, TV_T
from ...kernel.stack import STACK_T
from .. import core
from ..core import CPU_DONE, GPU_DONE
from ..setup import SimInputs, fresh_state

#: the event loop's own state between two calls (`run_loop` pauses at a pass and resumes from it)
_T, _GPU_END, _CPU_END, _END, _N_DONE, _DONE_JOBS, _LANDED = range(7)


def _loop_state() -> np.ndarray:
    return np.array([0.0, np.inf, np.inf, -1.0, 0.0, 0.0, -1.0])


#: `run_loop`'s one signature: compiled when a run first needs it (`_core`), or beforehand by a child process
#: into numba's cache (`warm_up`), not at import
RUN_LOOP_SIG = float64(STACK_T, CS_T, TM_T, TV_T, float64[::1], int64[::1], float64[::1], int64)


@njit(cache=True, _nrt=False)
def run_loop(pk, cs, tm, tv, eng_end, eng_key, state, stop_pass):
    """The event loop. Returns the end time, -1.0 when nothing can happen before the trace is done (deadlock),
    or -2.0 when the pass under way reaches `stop_pass`, its locals kept in `state`: a call with the same arrays
    goes on from there exactly as if it had not stopped (a progress display between calls).

    It allocates nothing, so it is compiled without reference counting (see core), and called from Python
    directly (a wrapper with the runtime on would compile and optimise the whole loop a second time).
    Copies still running when the trace ends land afterwards (as in the SimPy engine, whose copy processes run
    to completion), so both leave the same final cache state.

    An instant where one copy lands and nothing else ends, while `core.quiet` holds, only starts the
    next queued copy (`core.copy_instant`); it skips the general instant. If another engine is idle
    then, the queue was empty at the last dispatch and only copy instants have run since (they push
    nothing), so the copy that starts, if any, goes to the engine that just landed, as the general
    path would assign it (the lowest free engine is then that one)."""
    inf = np.inf
    n_engines = eng_end.shape[0]
    done_keys = cs.io_done
    t = state[_T]
    gpu_end = state[_GPU_END]
    cpu_end = state[_CPU_END]
    end = state[_END]
    n_done = int(state[_N_DONE])
    done_jobs = int(state[_DONE_JOBS])
    landed = int(state[_LANDED])  # the engine whose copy landed, when that is all that happens at t
    while True:
        if cs.sc[SC.PASS] >= stop_pass:
            state[_T] = t
            state[_GPU_END] = gpu_end
            state[_CPU_END] = cpu_end
            state[_END] = end
            state[_N_DONE] = n_done
            state[_DONE_JOBS] = done_jobs
            state[_LANDED] = landed
            return -2.0
        if landed >= 0:
            dur = core.copy_instant(cs, tm, done_keys[0], t)
            if dur >= 0.0:
                eng_key[landed] = cs.sc[SC.LAST_COPY]
                eng_end[landed] = t + dur
        else:
            n_free = 0
            for e in range(n_engines):
                if eng_key[e] < 0:
                    n_free += 1
            started = core.instant_inline(pk, cs, tm, tv, t, n_done, done_jobs, n_free)
            n_gpu = cs.sc[SC.GPU_NEW]
            if n_gpu > 0:  # jobs back to back: each ends at the previous end plus its duration
                cs.sc[SC.GPU_NEW] = 0
                gpu_end = t
                for k in range(n_gpu):
                    gpu_end = gpu_end + cs.chain_dur[k]
            if cs.sc[SC.CPU_NEW] == 1:
                cs.sc[SC.CPU_NEW] = 0
                cpu_end = t + cs.fc[FC.CPU_DUR]
            j = 0
            for e in range(n_engines):
                if j < started and eng_key[e] < 0:
                    eng_key[e] = cs.io_keys[j]
                    eng_end[e] = t + cs.io_durs[j]
                    j += 1
            if end < 0.0 and core.trace_done(cs.sc):
                end = t
        t_next = min(gpu_end, cpu_end)
        for e in range(n_engines):
            t_next = min(t_next, eng_end[e])
        if t_next == inf:
            return end
        t = t_next
        n_done = 0
        for e in range(n_engines):
            if eng_end[e] == t:
                done_keys[n_done] = eng_key[e]
                n_done += 1
                eng_key[e] = -1
                eng_end[e] = inf
                landed = e
        done_jobs = 0
        if gpu_end == t:
            gpu_end = inf
            done_jobs |= GPU_DONE
        if cpu_end == t:
            cpu_end = inf
            done_jobs |= CPU_DONE
        if n_done != 1 or done_jobs != 0 or not core.quiet(cs):
            landed = -1


def _core_cached() -> bool:
    """Does this process hold the compiled loop, or numba's cache a copy of it? (Read from the cache's index; a
    wrong no costs only a child process that finds the copy and leaves.)"""
    if run_loop.signatures:
        return True
    try:
        cache = run_loop._cache
        return cache._index_key(RUN_LOOP_SIG, run_loop.targetctx.codegen()) in cache._cache_file._load_index()
    except Exception:  # numba's cache internals moved: compile in a child as if it were empty
        return False


def compile_core() -> None:
    """Compile the loop (or load it from numba's cache): what the child process of `warm_up` runs."""
    compiled(run_loop, RUN_LOOP_SIG)


def _start_core_compile() -> subprocess.Popen[bytes]:
    """A child process compiling the loop into numba's cache (the same sources, numba cache folder and tracked
    policy packages as this process, so that its cache entry is the one this process looks up)."""
    root = str(Path(__file__).resolve().parents[3])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
    extra = [str(p) for p in kernel_cache.TRACKED[len(kernel_cache.DEFAULT_TRACKED):]]
    code = ("import sys; from emu.kernel import cache; [cache.track(p) for p in sys.argv[1:]]; "
            "import emu.policies.registry; from emu.engines.fast.engine import compile_core; compile_core()")
    return subprocess.Popen([sys.executable, "-c", code, *extra], env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _core() -> Any:
    """The loop, compiled or loaded from numba's cache; no other signature compiles later (a call with other
    argument types fails, as for a function compiled eagerly)."""
    if not run_loop.signatures:
        compile_core()
        run_loop.disable_compile()
    return run_loop


#: a run of this many passes or more shows a progress display when asked (`run_fast(progress=True)`)
PROGRESS_PASSES = 100_000

def run_fast(inputs: SimInputs, progress: bool = False, chunks: int = 50) -> tuple[Any, float, dict[str, float]]:
    """Run the trace; returns (final cache state, end time, timings: `setup_s` for the fresh state and
    the policies' init, and the stack's hooks' compilation or cache load the first time a process holds
    them; `run_s` for the event loop). The core compiles on its first run and loads from numba's cache
    after: see `warm_up`. `progress`: a run of `PROGRESS_PASSES` passes or more shows a progress display,
    the loop stopping `chunks` times on the way (the same run: it goes on from where it stopped)."""
    loop = _core()
    t0 = time.perf_counter()
    cs, stack = fresh_state(inputs)
    t1 = time.perf_counter()
    n_engines = inputs.profile.copy.h2d_engines
    eng_end, eng_key, state = np.full(n_engines, np.inf), np.full(n_engines, -1, np.int64), _loop_state()
    n_passes = inputs.trace.n_passes
    if not progress or n_passes < PROGRESS_PASSES:
        end = loop(stack, cs, inputs.tm, inputs.tv, eng_end, eng_key, state, n_passes + 1)
    else:
        from ...progress import Progress

        tick = Progress(chunks, label="run", unit="parts")
        try:
            for i in range(1, chunks + 1):
                stop = n_passes + 1 if i == chunks else n_passes * i // chunks
                end = loop(stack, cs, inputs.tm, inputs.tv, eng_end, eng_key, state, stop)
                tick.step(f"pass {min(stop, n_passes)}/{n_passes}")
                if end != -2.0:
                    break
        finally:
            tick.close()
    t2 = time.perf_counter()
    if end < 0:
        raise EmuError("the run deadlocked: a demand copy can never find room (is a layer's cap below one "
                       "expert?)", key="cache.capacity")
    core.close(cs)
    return cs, float(end), {"setup_s": t1 - t0, "run_s": t2 - t1}


def warm_up(while_compiling: Callable[[], object] | None = None) -> float:
    """Compile (or load from numba's cache) the fast engine's core and the default stack's hooks, so later
    timings exclude them; returns the seconds spent here. Another stack's hooks compile when a run first
    holds them (`kernel.hooks.hook`), so a benchmark of another stack warms up on that stack first.

    When numba's cache lacks the core (a first run), a child process compiles it into the cache while this one
    compiles the default stack's hooks and calls `while_compiling` (other work that compiles kernels: a
    scenario's trace and hooks), so the two halves share two cores; this process then loads the core from the
    cache. The two never compile the same function (numba's cache files are not safe for that: numba #4807)."""
    t0 = time.perf_counter()
    child = None if _core_cached() else _start_core_compile()
    try:
        inputs = _warm_inputs()
        fresh_state(inputs)  # the default stack's hooks and the state's constructors
        if child is not None:
            if while_compiling is not None:
                while_compiling()
            child.wait()  # whatever it left, `_core` loads it or compiles what is missing
            child = None
    finally:
        if child is not None:  # stopped on the way (an error, Ctrl-C): no compiler left running behind
            child.kill()
            child.wait()
    run_fast(inputs)
    return time.perf_counter() - t0


def _warm_inputs() -> SimInputs:
    """A two-layer, two-token run on the default stack."""
    from ...models import ModelSpec
    from ...profile import profile_from_dict
    from ...trace import RoutingTrace
    from ..setup import StackChoice, make_inputs

    model = ModelSpec(name="warm", n_moe_layers=2, n_experts=4, top_k=2, hidden=1, expert_intermediate=1)
    profile = profile_from_dict({
        "name": "warm", "copy": {"h2d_engines": 1, "latency_s": 0.0, "bw_pinned_Bps": 6.0, "bw_pageable_Bps": 1.0},
        "compute": {"expert_launch_s": 1.0, "hbm_Bps": 1.0, "flops_per_s": 1.0, "dense_layer_s": 1.0}})
    experts = np.array([[[0, 1], [2, 3]], [[1, 2], [0, 3]]], np.int16)
    trace = RoutingTrace(experts=experts, pass_offsets=np.array([0, 1, 2], np.int64),
                         pass_phase=np.array([1, 1], np.int8), token_request=np.zeros(2, np.int32),
                         token_position=np.arange(2, dtype=np.int32), n_experts=4).validate()
    return make_inputs(model, profile, trace, 3 * model.expert_bytes(), StackChoice())
