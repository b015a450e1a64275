"""The time side of docs/ARCHITECTURE.md's contract, as the fast engine and the SimPy engine drive it: the
forward pass as a state machine, the copy engines' order and the host timeline. What the cache decides
(gates, slots, evictions, prefetches, landings) is decisions.py's, called from here.

Engines own the clock. They call these handlers in one fixed order at every instant t:
1. completions at t: `decisions.land` for each copy that ends at t, `gpu_done` / `cpu_done` for jobs that end;
2. `decide(t)`: demand copies waiting for a victim retry (FIFO), then the forward pass moves on as far
   as it can at t: gate decisions, the next dense or expert job (lowest expert id among ready ones);
   a started job is announced in `sc[SC.GPU_NEW]` / `sc[SC.CPU_NEW]` with its duration in `fc`;
3. `next_copy(t)` while a copy engine is free: the best queued copy (demand before prefetch, then
   issue order) starts and its duration is returned.
Everything here is numba code with fixed signatures, so it compiles once and is cached.

Functions that allocate nothing are compiled with `_nrt=False` (numba's flag for "no runtime"), as are
the policy kernels: the state's arrays are borrowed views with a null meminfo, but numba still called
NRT_incref / NRT_decref for every array bound to a local, ~18 % of a run (docs/fast_engine.md). A
function that must allocate keeps the runtime; numba refuses to compile one that allocates without it.

In the hot paths an index that is a key, an expert id, a layer or a cursor is written `arr[ix(i)]`
(`kernel.helpers.ix`, an unsigned view of a value that is never negative): numba then skips its
negative-index fix-up, ~14 % of a run (docs/fast_engine.md, "The hot path").
"""

from __future__ import annotations

import numpy as np
from numba import boolean, float64, int64, njit, types

from ..kernel.helpers import interp_curve, ix, key_layer
from ..kernel.layout import (
    COPY_RUNNING,
    CS_T,
    E_DONE,
    E_PENDING,
    E_RUNNING,
    FC,
    JOB_CHAIN,
    JOB_DENSE,
    JOB_NONE,
    JOB_PRE,
    ON_CPU,
    ON_GPU,
    PH_DENSE_RUN,
    PH_EXPERTS,
    PH_FINISHED,
    PH_GATE,
    PH_LAYER_START,
    PH_PASS_START,
    PH_PRE_RUN,
    RESIDENT,
    SC,
    SCAL,
    SF,
    ST,
    TM_T,
    TV_T,
)
from ..kernel.stack import STACK_T
from ..trace.routing_trace import PHASE_DECODE
from . import copy_queue, decisions

# ---- small pure helpers --------------------------------------------------------------------------


@njit(cache=True, inline="always")
def expert_seconds(tm, prec: int, tokens: int) -> float:
    r = ix(prec)
    return interp_curve(tm.exp_tok[r], tm.exp_s[r], tm.exp_n[r], float(tokens))


@njit(cache=True, inline="always")
def entry_seconds(tm, cs, key: int, i: int) -> float:
    """Entry i's device seconds (its expert `key` resident): its own kernel's by its tokens, or, where the
    runtime runs a layer's experts as one grouped GEMM (`Timing.fz_n` > 0), an equal share of that kernel's
    time for the layer's k GPU entries: fused(k) / k."""
    prec = cs.prec[ix(key)]
    r = ix(prec)
    if tm.fz_n[r] > 0:
        k = cs.sc[SC.GPU_N]
        return interp_curve(tm.fz_k[r], tm.fz_s[r], tm.fz_n[r], float(k)) / k
    return expert_seconds(tm, prec, cs.cur_tokens[ix(i)])


@njit(cache=True, inline="always")
def cpu_seconds(tm, prec: int, tokens: int) -> float:
    return interp_curve(tm.cpu_tok[prec], tm.cpu_s[prec], tm.cpu_n[prec], float(tokens))


@njit(cache=True, _nrt=False)
def dense_seconds(tm, tokens: float, context: float, col: np.ndarray) -> float:
    """Bilinear in (tokens, context) with the same clamping and extension as `interp_curve`;
    `col` is scratch of at least the table's token rows."""
    nt = tm.d_tok.shape[0]
    nc = tm.d_ctx.shape[0]
    for i in range(nt):
        col[i] = interp_curve(tm.d_ctx, tm.d_s[i], nc, context)
    return interp_curve(tm.d_tok, col, nt, tokens)


# ---- the forward pass as a state machine ----------------------------------------------------------

@njit(cache=True, _nrt=False)
def _pass_times(cs, tm, tv, p: int) -> None:
    t0 = tv.pass_offsets[p]
    t1 = tv.pass_offsets[p + 1]
    # context: tokens already in the KV cache before this pass (the calibration's definition), i.e. the
    # position of each request's first token in this pass, averaged over the pass's tokens
    ctx = 0.0
    start = 0
    for tok in range(t0, t1):
        if tok == t0 or tv.token_request[tok] != tv.token_request[tok - 1]:
            start = tv.token_position[tok]
        ctx += start
    tokens = float(t1 - t0)
    dense = dense_seconds(tm, tokens, ctx / tokens, cs.dense_col)
    cs.fc[FC.DENSE_S] = dense + tm.scal[SCAL.LAYER_OVERHEAD_S]
    cs.fc[FC.PRE_S] = tm.scal[SCAL.PASS_OVERHEAD_S] + tm.scal[SCAL.N_DENSE_LAYERS] * dense
    # a decode pass's copies and a prefill's cost the host differently (runtime calibration: in the pass with
    # launches around them, or back to back as a prefill's gates issue their tens of misses)
    if tv.pass_phase[p] == PHASE_DECODE:
        cs.fc[FC.ISSUE_S] = tm.scal[SCAL.DECODE_COPY_ISSUE_S]
        cs.fc[FC.PF_ISSUE_S] = tm.scal[SCAL.DECODE_PREFETCH_ISSUE_S]
        # a pass of several tokens gathers each expert's rows and scatters its output: launches a one-token
        # pass skips
        one = SCAL.DECODE_EXPERT_HOST_S if t1 - t0 == 1 else SCAL.BATCH_EXPERT_HOST_S
        cs.fc[FC.EXPERT_HOST_S] = tm.scal[one]
        cs.fc[FC.LAYER_HOST_S] = tm.scal[SCAL.HOST_LAYER_S]
        cs.fc[FC.READBACK_HOST_S] = tm.scal[SCAL.HOST_READBACK_S]
    else:
        cs.fc[FC.ISSUE_S] = tm.scal[SCAL.PREFILL_COPY_ISSUE_S]
        cs.fc[FC.PF_ISSUE_S] = tm.scal[SCAL.PREFILL_PREFETCH_ISSUE_S]
        cs.fc[FC.EXPERT_HOST_S] = tm.scal[SCAL.PREFILL_EXPERT_HOST_S]
        cs.fc[FC.LAYER_HOST_S] = tm.scal[SCAL.PREFILL_HOST_LAYER_S]
        cs.fc[FC.READBACK_HOST_S] = tm.scal[SCAL.PREFILL_HOST_READBACK_S]


# ---- the host rule: device jobs that a host thread launches ----------------------------------------

@njit(cache=True, inline="always")
def _launched_job(launch: float, host_s: float, dev: float, t: float) -> float:
    """How long, from t (the device free), a job runs that the host launches from `launch` for `host_s`
    seconds and the device executes for `dev`: it starts once the host has begun launching it and the device
    is free, and ends no earlier than the host has finished launching it. A device-paced job takes `dev`
    after the later of the two; a host-paced one ends with its last launch."""
    wait = launch - t if launch > t else 0.0
    dur = wait + dev
    floor = launch + host_s - t
    return floor if floor > dur else dur


@njit(cache=True, inline="always")
def _launch_point(cs) -> float:
    """Where the host launches its next job: after what it launched so far and the copies it issued."""
    cursor = cs.fc[FC.LAYER_HOST]
    free = cs.fc[FC.HOST_FREE]
    return cursor if cursor > free else free


@njit(cache=True, inline="always")
def _expert_job_s(cs, dev: float, t: float) -> float:
    """An expert the GPU takes at t: the host launched it at its cursor, one `expert_s` after the last (it
    launches a layer's experts back to back, without waiting for their copies: the device does)."""
    launch = _launch_point(cs)
    host_s = cs.fc[FC.EXPERT_HOST_S]
    cs.fc[FC.LAYER_HOST] = launch + host_s
    return _launched_job(launch, host_s, dev, t)


@njit(cache=True, inline="always")
def _dense_job_s(cs, tm, t: float) -> float:
    """The next layer's dense job, the GPU free at t: the host launches it after the layer's experts
    (`layer_s`), then blocks on its routing readback and decides the layer's experts (`readback_s + gate_s`):
    the gate comes that much after the dense part ends, the GPU idle meanwhile."""
    job = _launched_job(_launch_point(cs), cs.fc[FC.LAYER_HOST_S], cs.fc[FC.DENSE_S], t)
    return job + cs.fc[FC.READBACK_HOST_S]


@njit(cache=True, inline="always")
def _end_idle(cs, t: float) -> None:
    """The GPU takes a job: an idle spell ends (stall time)."""
    if cs.sc[SC.GPU_IDLE] == 1:
        cs.sc[SC.GPU_IDLE] = 0
        cs.stats_f[SF.STALL_S, cs.sc[SC.LAYER]] += t - cs.fc[FC.IDLE_T]


@njit(cache=True, inline="always")
def _start_gpu(cs, job: int, dur: float, dev: float, t: float, layer: int) -> None:
    """The GPU takes a job at t for `dur`, `dev` of it the device's own work, the rest a wait for the host."""
    _end_idle(cs, t)
    wait = dur - dev
    if wait > 0.0:
        cs.stats_f[SF.HOST_WAIT_S, ix(layer)] += wait
    cs.sc[SC.GPU_JOB] = job
    cs.sc[SC.GPU_NEW] = 1
    cs.chain_job[0] = job
    cs.chain_dur[0] = dur
    cs.fc[FC.GPU_DUR] = dur
    cs.fc[FC.GPU_BUSY] += dev


@njit(cache=True, inline="always")
def _chain(pk, cs, tm, tv, i: int, dev: float, t: float) -> None:
    """Start entry i on the GPU, followed back to back by every job whose start is already decided.

    Called only when no demand copy waits, the CPU is idle with nothing routed to it, and no GPU entry
    before i is waiting for its copy. Then nothing can change the GPU's next choices before they are
    made: no victim is chosen and no policy runs until the next gate (only gates and waiters do that),
    resident entries are protected, and a copy that lands can only make a pending entry ready, which
    matters only if its index is below a later member's. So the members are the resident entries
    after i up to the first one still in flight (or of zero duration); when they finish the layer
    and another layer follows, its dense job too. The engine gives each member its own end,
    `previous end + duration`, as separate instants would; the instants between are skipped, and
    `_gpu_done` finishes the members when the chain ends. One member is a plain job. The host's launches are
    fixed too (its cursor moves by one launch per member), so each member's wait for them is known.
    """
    _end_idle(cs, t)
    dur = _expert_job_s(cs, dev, t)
    n = cs.sc[SC.NCUR]
    cur_state = cs.cur_state
    cur_where = cs.cur_where
    status = cs.status
    chain_job = cs.chain_job
    chain_dur = cs.chain_dur
    cur_state[ix(i)] = E_RUNNING
    chain_job[0] = i
    chain_dur[0] = dur
    busy = cs.fc[FC.GPU_BUSY] + dev
    end = t + dur
    wait = dur - dev
    m = 1
    whole = True  # the members finish every entry of the layer
    for j in range(i + 1, n):
        if cur_state[ix(j)] != E_PENDING or cur_where[ix(j)] != ON_GPU:
            continue
        key = _entry_key(cs, j)
        if status[ix(key)] != RESIDENT:
            whole = False
            break
        d = entry_seconds(tm, cs, key, j)
        if d <= 0.0:
            whole = False
            break
        cur_state[ix(j)] = E_RUNNING
        dj = _expert_job_s(cs, d, end)
        chain_job[m] = j
        chain_dur[m] = dj
        busy += d
        end = end + dj
        wait += dj - d
        m += 1
    layer = cs.sc[SC.LAYER]
    if wait > 0.0:
        cs.stats_f[SF.HOST_WAIT_S, ix(layer)] += wait
    if whole and layer + 1 < tv.experts.shape[1]:
        d = _dense_job_s(cs, tm, end)
        if d > 0.0:
            dense = cs.fc[FC.DENSE_S]
            chain_job[m] = JOB_DENSE
            chain_dur[m] = d
            busy += dense
            if d > dense:
                cs.stats_f[SF.HOST_WAIT_S, ix(layer + 1)] += d - dense
            m += 1
    cs.sc[SC.GPU_JOB] = JOB_CHAIN if m > 1 else i
    cs.sc[SC.CHAIN_N] = m
    cs.sc[SC.GPU_NEW] = m
    cs.fc[FC.GPU_DUR] = chain_dur[m - 1]
    cs.fc[FC.GPU_BUSY] = busy


@njit(cache=True, inline="always")
def _entry_key(cs, i: int) -> int:
    sub = cs.cur_sub[ix(i)]
    return sub if sub >= 0 else cs.cur_key[ix(i)]


@njit(cache=True, inline="always")
def _finish_entry(cs, i: int) -> None:
    cs.cur_state[ix(i)] = E_DONE
    decisions.release(cs, i)


STEP_NONE = 0  # nothing changed
STEP_CHANGED = 1
STEP_GPU_STARTED = 2  # the GPU took a job and nothing else changed: a further step at t changes nothing


@njit(cache=True, _nrt=False)
def _step(pk, cs, tm, tv, t: float) -> int:
    """Advance the forward pass at instant t as far as one transition (STEP_*).

    STEP_GPU_STARTED is returned where the step's only effect is a job started on the GPU (after the CPU
    had its chance in this same step): the next step would find the GPU busy, the CPU as it left it and
    the phase waiting for a job, so `_decide` stops there unless demand copies wait for a victim.

    A call, not inlined into the loop: numba inlines `inline="always"` code by copying its IR into each caller
    at every level, at a cost that grows with the square of its size; inlining the step (with `_chain`) through
    `_decide` and `instant_inline` into the loop doubled the fast core's cold compile. The call costs the warm
    loop up to 5 % (docs/fast_engine.md, "Compile time")."""
    phase = cs.sc[SC.PHASE]
    if phase == PH_FINISHED:
        return STEP_NONE
    gpu_free = cs.sc[SC.GPU_JOB] == JOB_NONE
    if phase == PH_PASS_START:
        p = cs.sc[SC.PASS]
        if p >= tv.pass_offsets.shape[0] - 1:
            cs.sc[SC.PHASE] = PH_FINISHED
            return STEP_CHANGED
        cs.pass_start[p] = t
        decisions.begin_pass(pk, cs, tv, p, t)
        _pass_times(cs, tm, tv, p)
        cs.sc[SC.LAYER] = 0
        # the host prepares the pass, then launches its first part (embedding, dense layers before the MoE ones)
        free = cs.fc[FC.HOST_FREE]
        launch = (t if t > free else free) + tm.scal[SCAL.HOST_PASS_S]
        host_s = tm.scal[SCAL.N_DENSE_LAYERS] * cs.fc[FC.LAYER_HOST_S]
        cs.fc[FC.LAYER_HOST] = launch + host_s
        pre = cs.fc[FC.PRE_S]
        dur = _launched_job(launch, host_s, pre, t)
        if dur > 0.0:
            _start_gpu(cs, JOB_PRE, dur, pre, t, 0)
            cs.sc[SC.PHASE] = PH_PRE_RUN
        else:
            cs.sc[SC.PHASE] = PH_LAYER_START
        return STEP_CHANGED
    if phase == PH_LAYER_START:
        d = _dense_job_s(cs, tm, t)
        if d > 0.0:
            _start_gpu(cs, JOB_DENSE, d, cs.fc[FC.DENSE_S], t, cs.sc[SC.LAYER])
            cs.sc[SC.PHASE] = PH_DENSE_RUN
            return STEP_GPU_STARTED
        cs.sc[SC.PHASE] = PH_GATE
        return STEP_CHANGED
    if phase == PH_GATE:
        decisions.gate(pk, cs, tv, cs.sc[SC.PASS], cs.sc[SC.LAYER], t)
        host = cs.fc[FC.HOST_FREE]  # the host launches the layer's experts once it issued the gate's copies
        cs.fc[FC.LAYER_HOST] = host if host > t else t
        cs.sc[SC.PHASE] = PH_EXPERTS
        return STEP_CHANGED
    if phase != PH_EXPERTS:
        return STEP_NONE  # a pre-pass or dense job is running
    n = cs.sc[SC.NCUR]
    changed = False
    # the CPU takes the lowest pending expert routed to it
    if cs.sc[SC.CPU_JOB] == JOB_NONE and cs.sc[SC.CPU_PENDING] > 0:
        for i in range(n):
            if cs.cur_state[i] == E_PENDING and cs.cur_where[i] == ON_CPU:
                cs.sc[SC.CPU_PENDING] -= 1
                dur = cpu_seconds(tm, 0, cs.cur_tokens[i])  # the host holds the full-precision weights
                cs.cur_state[i] = E_RUNNING
                cs.sc[SC.CPU_JOB] = i
                cs.sc[SC.CPU_NEW] = 1
                cs.fc[FC.CPU_DUR] = dur
                cs.fc[FC.CPU_BUSY] += dur
                changed = True
                break
    if not gpu_free:
        return STEP_CHANGED if changed else STEP_NONE
    # entries before the cursor are done: the scan for the lowest ready one starts after them
    cur_state = cs.cur_state
    first = cs.sc[SC.CURSOR]
    while first < n and cur_state[ix(first)] == E_DONE:
        first += 1
    cs.sc[SC.CURSOR] = first
    cur_where = cs.cur_where
    status = cs.status
    waiting = False  # a GPU entry before i waits for its copy
    start = first
    if tm.fz_n[0] > 0:  # one grouped GEMM runs the layer's experts: it starts once every one of them is in
        for j in range(first, n):
            if (cur_state[ix(j)] == E_PENDING and cur_where[ix(j)] == ON_GPU
                    and status[ix(_entry_key(cs, j))] != RESIDENT):
                start = n
                break
    for i in range(start, n):
        if cur_state[ix(i)] == E_PENDING and cur_where[ix(i)] == ON_GPU:
            key = _entry_key(cs, i)
            if status[ix(key)] == RESIDENT:
                dur = entry_seconds(tm, cs, key, i)
                if dur > 0.0:
                    if (waiting or cs.sc[SC.WQ_N] > 0 or cs.sc[SC.CPU_JOB] != JOB_NONE
                            or cs.sc[SC.CPU_PENDING] > 0):
                        cur_state[ix(i)] = E_RUNNING
                        _start_gpu(cs, i, _expert_job_s(cs, dur, t), dur, t, cs.sc[SC.LAYER])
                    else:
                        _chain(pk, cs, tm, tv, i, dur, t)
                    return STEP_CHANGED if changed else STEP_GPU_STARTED
                _finish_entry(cs, i)
                return STEP_CHANGED
            waiting = True
    if first == n:
        _end_idle(cs, t)  # a wait for the CPU that ended the layer is the layer's stall
        layer = cs.sc[SC.LAYER] + 1
        if layer == tv.experts.shape[1]:
            p = cs.sc[SC.PASS]
            cs.pass_end[p] = t
            cs.sc[SC.PASS] = p + 1
            cs.sc[SC.PHASE] = PH_PASS_START
        else:
            cs.sc[SC.LAYER] = layer
            cs.sc[SC.PHASE] = PH_LAYER_START
        return STEP_CHANGED
    if cs.sc[SC.GPU_IDLE] == 0:
        cs.sc[SC.GPU_IDLE] = 1
        cs.fc[FC.IDLE_T] = t
    return STEP_CHANGED if changed else STEP_NONE


# ---- the instant: the one entry point engines call ----------------------------------------------

@njit(cache=True, inline="always")
def _decide(pk, cs, tm, tv, t: float) -> None:
    while True:
        if cs.sc[SC.WQ_N] > 0:
            decisions.retry_waiters(pk, cs, tv, t)
        r = _step(pk, cs, tm, tv, t)
        if r == STEP_NONE or (r == STEP_GPU_STARTED and cs.sc[SC.WQ_N] == 0):
            break


@njit(cache=True, inline="always")
def _next_copy(cs, tm) -> float:
    """The best queued copy starts; returns its duration (key in sc[SC.LAST_COPY]) or -1 if none."""
    while cs.sc[SC.DQ_N] + cs.sc[SC.PQ_N] > 0:
        item = copy_queue.pop(cs)
        key = copy_queue.entry_key(item)
        kx = ix(key)
        if not copy_queue.is_current(cs, key, copy_queue.entry_seq(item)):
            continue  # stale entry of a promoted prefetch
        cs.copy_state[kx] = COPY_RUNNING
        lx = ix(key_layer(cs, key))
        dur = tm.layer_copy_s[lx, ix(cs.prec[kx])]
        cs.stats_i[ST.BYTES_H2D, lx] += cs.nbytes[kx]
        cs.stats_i[ST.COPIES, lx] += 1
        cs.fc[FC.COPY_BUSY] += dur
        cs.sc[SC.LAST_COPY] = key
        return dur
    return -1.0


@njit(cache=True, inline="always")
def _gpu_done(cs) -> None:
    job = cs.sc[SC.GPU_JOB]
    cs.sc[SC.GPU_JOB] = JOB_NONE
    if job == JOB_PRE:
        cs.sc[SC.PHASE] = PH_LAYER_START
    elif job == JOB_DENSE:
        cs.sc[SC.PHASE] = PH_GATE
    elif job >= 0:
        _finish_entry(cs, job)
    elif job == JOB_CHAIN:
        for k in range(cs.sc[SC.CHAIN_N]):
            member = cs.chain_job[k]
            if member >= 0:
                _finish_entry(cs, member)
            else:  # the next layer's dense job ended the chain: its gate is next
                cs.sc[SC.LAYER] += 1
                cs.sc[SC.PHASE] = PH_GATE


@njit(cache=True, inline="always")
def _cpu_done(cs) -> None:
    job = cs.sc[SC.CPU_JOB]
    cs.sc[SC.CPU_JOB] = JOB_NONE
    _finish_entry(cs, job)


GPU_DONE = 1
CPU_DONE = 2


@njit(cache=True, inline="always")
def quiet(cs) -> bool:
    """Would `_decide` change nothing now? True while the GPU runs a job, the CPU is idle with
    nothing routed to it, no demand copy waits for a victim, and the pass is in a phase that only a
    job's end moves on (an expert layer, a pre-pass or a dense job): `_step` then returns STEP_NONE
    at once (the phases a step always leaves, pass start, layer start and gate, are never left pending
    between instants). An instant where only copies land in this state just starts the next copies."""
    sc = cs.sc
    phase = sc[SC.PHASE]
    return (sc[SC.GPU_JOB] != JOB_NONE and sc[SC.WQ_N] == 0 and sc[SC.CPU_JOB] == JOB_NONE
            and sc[SC.CPU_PENDING] == 0 and phase in (PH_EXPERTS, PH_DENSE_RUN, PH_PRE_RUN))


@njit(cache=True, inline="always")
def copy_instant(cs, tm, key: int, t: float) -> float:
    """The whole instant when one copy lands while `quiet(cs)`: the key becomes resident and the next
    queued copy starts (its duration, key in sc[SC.LAST_COPY]; -1.0 if none): what `instant_inline`
    does then (`_decide` changes nothing, the phase is not finished), without its general machinery.
    The fast engine calls it for such instants, about half of all."""
    decisions.land(cs, key, t)
    return _next_copy(cs, tm)


@njit(cache=True, inline="always")
def instant_inline(pk, cs, tm, tv, t: float, n_done: int, done_jobs: int, n_free: int) -> int:
    """`instant`, inlined into the fast engine's loop (no call per instant); the very same code."""
    for i in range(n_done):
        decisions.land(cs, cs.io_done[i], t)
    if done_jobs & GPU_DONE:
        _gpu_done(cs)
    if done_jobs & CPU_DONE:
        _cpu_done(cs)
    _decide(pk, cs, tm, tv, t)
    n = 0
    if cs.sc[SC.PHASE] == PH_FINISHED:
        return 0
    while n < n_free:
        dur = _next_copy(cs, tm)
        if dur < 0.0:
            break
        cs.io_keys[n] = cs.sc[SC.LAST_COPY]
        cs.io_durs[n] = dur
        n += 1
    return n


#: `instant`'s signature: compiled when the SimPy engine first runs (`compiled`), not at import
INSTANT_SIG = int64(STACK_T, CS_T, TM_T, TV_T, float64, int64, int64, int64)


@njit(cache=True, _nrt=False)
def instant(pk, cs, tm, tv, t, n_done, done_jobs, n_free):
    """Everything that happens at instant t, in the contract's order.

    1. completions: the copies `cs.io_done[:n_done]` landed; `done_jobs` has GPU_DONE / CPU_DONE bits;
    2. decisions (`_decide`);
    3. dispatch: up to `n_free` idle copy engines start the best queued copies, written to
       `cs.io_keys` / `cs.io_durs`; returns how many started. Once the trace is done nothing more starts.
    New GPU/CPU jobs are announced in sc[SC.GPU_NEW] / sc[SC.CPU_NEW] with durations in fc.
    """
    return instant_inline(pk, cs, tm, tv, t, n_done, done_jobs, n_free)


@njit(inline="always")
def trace_done(sc) -> bool:
    """Has the forward pass gone past the last pass? (`trace_done.py_func` serves the SimPy engine.)"""
    return sc[SC.PHASE] == PH_FINISHED


@njit(boolean(CS_T), cache=True, _nrt=False)
def finished(cs):
    return trace_done(cs.sc)


@njit(types.none(CS_T), cache=True, _nrt=False)
def close(cs):
    """End of run: prefetched experts never used count as wasted."""
    for key in range(cs.status.shape[0]):
        if cs.pf_unused[key] == 1:
            layer = key_layer(cs, key)
            cs.pf_unused[key] = 0
            cs.stats_i[ST.PF_WASTED, layer] += 1
            cs.stats_f[SF.PF_WASTED_BYTES, layer] += cs.nbytes[key]
