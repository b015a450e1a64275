"""Flat-array state shared by every engine and the policy kernels.

Everything the timing semantics needs lives in four structs of numpy arrays: `CacheState` (cs),
`TraceView` (tv), `Timing` (tm) and `PolicyState` (ps). In jitted code each is one borrowed pointer
(emu/engines/structs.py), so the shared core and the policy kernels (first-class functions) call each
other for a few nanoseconds, while code still reads `cs.status[key]` or `ps.i[0, key]`. The SimPy
engine and the metrics read the same arrays from Python through the proxies' attributes (no copies).
Scalars sit in small arrays (`sc` for integers, `fc` for floats) at the indices named below.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numba import njit, types
from numba.experimental import structref

from .structs import ArrayStruct, StructOwnerType, StructView, borrowed

# ---- (layer, expert) status ----------------------------------------------------------------------
ABSENT = 0
RESIDENT = 1
IN_FLIGHT = 2  # a copy is queued or running; it holds its slot
WAITING = 3  # a demand copy found no victim yet: it holds no slot

# copy state of a key
COPY_NONE = 0
COPY_QUEUED = 1
COPY_RUNNING = 2

DEMAND = 0
PREFETCH = 1

# what runs a needed expert of the layer now computing
ON_GPU = 0
ON_CPU = 1
SKIPPED = 2  # dropped: never computed

# per-entry progress in the current layer
E_PENDING = 0
E_RUNNING = 1
E_DONE = 2

# forward phases
PH_PASS_START = 0
PH_PRE_RUN = 1
PH_LAYER_START = 2
PH_DENSE_RUN = 3
PH_GATE = 4
PH_EXPERTS = 5
PH_FINISHED = 6

# GPU job kinds
JOB_NONE = -1
JOB_PRE = -2
JOB_DENSE = -3
JOB_CHAIN = -4  # jobs run back to back, listed in chain_job[:sc[SC_CHAIN_N]] (see core._chain)

# ---- sc: integer scalars ---------------------------------------------------------------------------
SC_PASS = 0
SC_LAYER = 1
SC_PHASE = 2
SC_USED = 3  # bytes held by resident and in-flight experts
SC_CAP = 4  # capacity in bytes
SC_SEQ = 5  # copy issue counter (tie-breaker)
SC_DQ_HEAD = 6  # copy queue: demand FIFO's first slot in heap[:R] (see core._queue_push)
SC_WQ_N = 7
SC_NCUR = 8
SC_GPU_JOB = 9  # JOB_* or index into cur_* of the expert running
SC_CPU_JOB = 10
SC_GPU_IDLE = 11  # 1 while the GPU waits for an expert of the current layer
SC_SAME_LAYER = 12  # 1 while the incoming copy's layer is at its cap: victims must come from it
SC_CLOCK = 13  # logical access clock for recency policies
SC_GPU_NEW = 14  # set by decide to the number of GPU jobs it started back to back (durations in
# chain_dur); the engine schedules them and clears it
SC_CPU_NEW = 15
SC_DQ_N = 16  # entries in the demand FIFO
SC_N_ENGINES = 17
SC_PQ_HEAD = 18  # prefetch FIFO's first slot in heap[R:]
SC_LAST_COPY = 19  # key of the copy `next_copy` just started
SC_CPU_PENDING = 20  # entries of the current layer routed to the CPU and not started yet
SC_CURSOR = 21  # entries of the current layer before this index are done
SC_CHAIN_N = 22  # members of the GPU chain now running (SC_GPU_JOB == JOB_CHAIN)
SC_PQ_N = 23  # entries in the prefetch FIFO
SC_N = 24

# ---- fc: float scalars ---------------------------------------------------------------------------
FC_IDLE_T = 0
FC_DENSE_S = 1  # dense time of one layer in the current pass
FC_PRE_S = 2  # per-pass fixed cost plus dense (non-MoE) layers
FC_GATE_T = 3
FC_GPU_DUR = 4  # duration of the (last) GPU job just started
FC_CPU_DUR = 5
FC_COPY_BUSY = 6
FC_GPU_BUSY = 7
FC_CPU_BUSY = 8
FC_HOST_FREE = 9  # the host is busy issuing copies until then (a GPU job starts no earlier)
FC_ISSUE_S = 10  # host seconds to issue one copy in this pass (profile `copy_issue_s`, or `prefill_copy_issue_s`)
FC_PF_ISSUE_S = 11  # the same for a prefetch copy (profile `prefetch_issue_s`, else `copy_issue_s`)
FC_AHEAD_S = 12  # host seconds launching a layer's dense part ahead of the GPU (profile `launch_ahead_s`)
FC_LAYER_HOST = 13  # when the host has launched the current layer's experts so far (see core._dense_job_s)
FC_N = 14
#: where `Timing.scal` holds the decode pass's (demand, prefetch) issue seconds; the prefill's follow
SCAL_ISSUE = 3

# ---- per-layer integer statistics (stats_i[STAT, layer]) ------------------------------------------
ST_ACCESSES = 0
ST_HITS = 1
ST_LATE_HITS = 2
ST_MISS_COMPULSORY = 3
ST_MISS_CAPACITY = 4
ST_MISS_COLLISION = 5
ST_DROPPED = 6
ST_SUBSTITUTED = 7
ST_DEGRADED = 8
ST_CPU_RUNS = 9
ST_PF_ISSUED = 10
ST_PF_USEFUL = 11
ST_PF_DROPPED = 12  # prefetch found no victim
ST_PF_WASTED = 13  # prefetched, evicted (or left at the end) unused
ST_BYTES_H2D = 14
ST_COPIES = 15
ST_EVICTIONS = 16
ST_DEMAND_WAITS = 17  # demand copies that had to wait for a victim
ST_N = 18

# per-layer float statistics (stats_f[STAT, layer])
SF_LATE_WAIT_S = 0
SF_STALL_S = 1
SF_DROPPED_MASS = 2
SF_SUBSTITUTED_MASS = 3
SF_DEGRADED_MASS = 4
SF_MASS = 5
SF_PF_WASTED_BYTES = 6
SF_REROUTED_MASS = 7  # routing mass a routing policy moved off the router's own choices
SF_N = 8


# ---- the structs ----------------------------------------------------------------------------------
# Field order is the constructor's argument order. Types are exact (C-contiguous, writable arrays), so
# every jitted function that takes a struct compiles once and is cached across processes.
_I8, _U8, _I16, _I32, _I64, _F32, _F64 = (types.int8, types.uint8, types.int16, types.int32, types.int64,
                                          types.float32, types.float64)

CS_FIELDS: tuple[tuple[str, Any], ...] = (
    ("sc", _I64[::1]), ("fc", _F64[::1]),
    # per key (layer * n_experts + expert)
    ("status", _I8[::1]), ("prec", _I8[::1]), ("nbytes", _I64[::1]), ("loaded_ever", _U8[::1]),
    ("evict_pass", _I64[::1]), ("protect", _I32[::1]), ("copy_state", _I8[::1]), ("copy_prio", _I8[::1]),
    ("copy_seq", _I64[::1]), ("pf_unused", _U8[::1]), ("late_gate_t", _F64[::1]), ("late_flag", _U8[::1]),
    ("wait_prec", _I8[::1]),
    # structures
    ("heap", _I64[::1]), ("waitq", _I64[::1]), ("pf_buf", _I64[::1]),
    # the layer now computing
    ("cur_key", _I64[::1]), ("cur_expert", _I64[::1]), ("cur_tokens", _I64[::1]), ("cur_mass", _F64[::1]),
    ("cur_where", _I8[::1]), ("cur_state", _I8[::1]), ("cur_sub", _I64[::1]), ("cur_prec", _I8[::1]),
    ("gather_count", _I64[::1]), ("gather_mass", _F64[::1]),
    ("pick_buf", _I64[::1]),  # scratch of n_experts for the prefetch helpers (no allocation per gate)
    # per layer
    ("layer_bytes", _I64[::1]), ("layer_count", _I64[::1]), ("layer_floor", _I64[::1]),
    ("layer_cap", _I64[::1]),
    # precisions
    ("prec_bytes", _I64[::1]),
    # per pass
    ("pass_start", _F64[::1]), ("pass_end", _F64[::1]),
    # statistics
    ("stats_i", _I64[:, ::1]), ("stats_f", _F64[:, ::1]),
    # scratch: one dense-table column (so the per-pass dense time allocates nothing)
    ("dense_col", _F64[::1]),
    # engine <-> core exchange at an instant, one slot per copy engine: copies that landed (in),
    # copies started (out) and their durations
    ("io_done", _I64[::1]), ("io_keys", _I64[::1]), ("io_durs", _F64[::1]),
    # the GPU jobs started at an instant, back to back: job (cur_* index or JOB_*) and duration
    ("chain_job", _I64[::1]), ("chain_dur", _F64[::1]),
)

TV_FIELDS: tuple[tuple[str, Any], ...] = (
    ("experts", _I16[:, :, ::1]), ("scores", _F32[:, :, ::1]), ("predicted", _I16[:, :, ::1]),
    ("pass_offsets", _I64[::1]), ("pass_phase", _I8[::1]), ("token_position", _I32[::1]),
    ("token_request", _I32[::1]),
    ("dims", _I64[::1]),  # [has_scores, has_predicted, n_experts]
)

TM_FIELDS: tuple[tuple[str, Any], ...] = (
    ("copy_s", _F64[::1]),  # time of one expert copy, per precision
    ("exp_tok", _F64[:, ::1]), ("exp_s", _F64[:, ::1]), ("exp_n", _I64[::1]),  # expert FFN curve per precision
    ("cpu_tok", _F64[:, ::1]), ("cpu_s", _F64[:, ::1]), ("cpu_n", _I64[::1]),  # CPU curve (cpu_n = 0: none)
    ("d_tok", _F64[::1]), ("d_ctx", _F64[::1]), ("d_s", _F64[:, ::1]),  # dense table
    # [pass_overhead_s, layer_overhead_s, n_dense_layers, then the host seconds per demand and per prefetch copy
    #  in a decode pass (SCAL_ISSUE) and in a prefill pass (SCAL_ISSUE + 2): `core._pass_times` picks a pair]
    ("scal", _F64[::1]),
)

PS_FIELDS: tuple[tuple[str, Any], ...] = (("f", _F64[:, ::1]), ("i", _I64[:, ::1]), ("p", _F64[::1]))


# A view type (what jitted code and policy kernels see) and an owner type (the payload's memory) each.
CS_T = StructView("CacheState", CS_FIELDS)
TV_T = StructView("TraceView", TV_FIELDS)
TM_T = StructView("Timing", TM_FIELDS)
PS_T = StructView("PolicyState", PS_FIELDS)
_CS_OWN = StructOwnerType(list(CS_FIELDS))
_TV_OWN = StructOwnerType(list(TV_FIELDS))
_TM_OWN = StructOwnerType(list(TM_FIELDS))
_PS_OWN = StructOwnerType(list(PS_FIELDS))


# Constructors are spelled out (not generated) so numba can cache them.
@njit(_CS_OWN(*(t for _n, t in CS_FIELDS)), cache=True)
def _new_cs(sc, fc, status, prec, nbytes, loaded_ever, evict_pass, protect, copy_state, copy_prio, copy_seq,
            pf_unused, late_gate_t, late_flag, wait_prec, heap, waitq, pf_buf, cur_key, cur_expert, cur_tokens,
            cur_mass, cur_where, cur_state, cur_sub, cur_prec, gather_count, gather_mass, pick_buf, layer_bytes,
            layer_count, layer_floor, layer_cap, prec_bytes, pass_start, pass_end, stats_i, stats_f, dense_col,
            io_done, io_keys, io_durs, chain_job, chain_dur):
    s = structref.new(_CS_OWN)
    s.sc = borrowed(sc)
    s.fc = borrowed(fc)
    s.status = borrowed(status)
    s.prec = borrowed(prec)
    s.nbytes = borrowed(nbytes)
    s.loaded_ever = borrowed(loaded_ever)
    s.evict_pass = borrowed(evict_pass)
    s.protect = borrowed(protect)
    s.copy_state = borrowed(copy_state)
    s.copy_prio = borrowed(copy_prio)
    s.copy_seq = borrowed(copy_seq)
    s.pf_unused = borrowed(pf_unused)
    s.late_gate_t = borrowed(late_gate_t)
    s.late_flag = borrowed(late_flag)
    s.wait_prec = borrowed(wait_prec)
    s.heap = borrowed(heap)
    s.waitq = borrowed(waitq)
    s.pf_buf = borrowed(pf_buf)
    s.cur_key = borrowed(cur_key)
    s.cur_expert = borrowed(cur_expert)
    s.cur_tokens = borrowed(cur_tokens)
    s.cur_mass = borrowed(cur_mass)
    s.cur_where = borrowed(cur_where)
    s.cur_state = borrowed(cur_state)
    s.cur_sub = borrowed(cur_sub)
    s.cur_prec = borrowed(cur_prec)
    s.gather_count = borrowed(gather_count)
    s.gather_mass = borrowed(gather_mass)
    s.pick_buf = borrowed(pick_buf)
    s.layer_bytes = borrowed(layer_bytes)
    s.layer_count = borrowed(layer_count)
    s.layer_floor = borrowed(layer_floor)
    s.layer_cap = borrowed(layer_cap)
    s.prec_bytes = borrowed(prec_bytes)
    s.pass_start = borrowed(pass_start)
    s.pass_end = borrowed(pass_end)
    s.stats_i = borrowed(stats_i)
    s.stats_f = borrowed(stats_f)
    s.dense_col = borrowed(dense_col)
    s.io_done = borrowed(io_done)
    s.io_keys = borrowed(io_keys)
    s.io_durs = borrowed(io_durs)
    s.chain_job = borrowed(chain_job)
    s.chain_dur = borrowed(chain_dur)
    return s


@njit(_TV_OWN(*(t for _n, t in TV_FIELDS)), cache=True)
def _new_tv(experts, scores, predicted, pass_offsets, pass_phase, token_position, token_request, dims):
    s = structref.new(_TV_OWN)
    s.experts = borrowed(experts)
    s.scores = borrowed(scores)
    s.predicted = borrowed(predicted)
    s.pass_offsets = borrowed(pass_offsets)
    s.pass_phase = borrowed(pass_phase)
    s.token_position = borrowed(token_position)
    s.token_request = borrowed(token_request)
    s.dims = borrowed(dims)
    return s


@njit(_TM_OWN(*(t for _n, t in TM_FIELDS)), cache=True)
def _new_tm(copy_s, exp_tok, exp_s, exp_n, cpu_tok, cpu_s, cpu_n, d_tok, d_ctx, d_s, scal):
    s = structref.new(_TM_OWN)
    s.copy_s = borrowed(copy_s)
    s.exp_tok = borrowed(exp_tok)
    s.exp_s = borrowed(exp_s)
    s.exp_n = borrowed(exp_n)
    s.cpu_tok = borrowed(cpu_tok)
    s.cpu_s = borrowed(cpu_s)
    s.cpu_n = borrowed(cpu_n)
    s.d_tok = borrowed(d_tok)
    s.d_ctx = borrowed(d_ctx)
    s.d_s = borrowed(d_s)
    s.scal = borrowed(scal)
    return s


@njit(_PS_OWN(*(t for _n, t in PS_FIELDS)), cache=True)
def _new_ps(f, i, p):
    s = structref.new(_PS_OWN)
    s.f = borrowed(f)
    s.i = borrowed(i)
    s.p = borrowed(p)
    return s


class CacheState(ArrayStruct):
    _VIEW = CS_T
    _FIELDS = CS_FIELDS
    _new = staticmethod(_new_cs)


class TraceView(ArrayStruct):
    _VIEW = TV_T
    _FIELDS = TV_FIELDS
    _new = staticmethod(_new_tv)


class Timing(ArrayStruct):
    _VIEW = TM_T
    _FIELDS = TM_FIELDS
    _new = staticmethod(_new_tm)


class PolicyState(ArrayStruct):
    _VIEW = PS_T
    _FIELDS = PS_FIELDS
    _new = staticmethod(_new_ps)


def queue_ring(n_keys: int) -> int:
    """Slots of each copy FIFO (demand, prefetch): a power of two (index by mask) of at least the
    2 * keys + 8 entries the binary heap they replaced held for both priorities together."""
    r = 1
    while r < 2 * n_keys + 8:
        r *= 2
    return r


def new_cache_state(n_layers: int, n_experts: int, top_k: int, n_passes: int, capacity_bytes: int,
                    prec_bytes: np.ndarray, n_engines: int, dense_rows: int = 1) -> Any:
    k = n_layers * n_experts
    sc = np.zeros(SC_N, np.int64)
    sc[SC_CAP] = capacity_bytes
    sc[SC_N_ENGINES] = n_engines
    sc[SC_GPU_JOB] = JOB_NONE
    sc[SC_CPU_JOB] = JOB_NONE
    return CacheState(
        sc=sc, fc=np.zeros(FC_N, np.float64),
        status=np.zeros(k, np.int8), prec=np.zeros(k, np.int8), nbytes=np.zeros(k, np.int64),
        loaded_ever=np.zeros(k, np.uint8), evict_pass=np.full(k, -1, np.int64), protect=np.zeros(k, np.int32),
        copy_state=np.zeros(k, np.int8), copy_prio=np.zeros(k, np.int8), copy_seq=np.zeros(k, np.int64),
        pf_unused=np.zeros(k, np.uint8), late_gate_t=np.zeros(k, np.float64), late_flag=np.zeros(k, np.uint8),
        wait_prec=np.zeros(k, np.int8),
        heap=np.zeros(2 * queue_ring(k), np.int64), waitq=np.zeros(k, np.int64), pf_buf=np.zeros(k, np.int64),
        cur_key=np.zeros(n_experts, np.int64), cur_expert=np.zeros(n_experts, np.int64),
        cur_tokens=np.zeros(n_experts, np.int64), cur_mass=np.zeros(n_experts, np.float64),
        cur_where=np.zeros(n_experts, np.int8), cur_state=np.zeros(n_experts, np.int8),
        cur_sub=np.full(n_experts, -1, np.int64), cur_prec=np.zeros(n_experts, np.int8),
        gather_count=np.zeros(n_experts, np.int64), gather_mass=np.zeros(n_experts, np.float64),
        pick_buf=np.zeros(n_experts, np.int64),
        layer_bytes=np.zeros(n_layers, np.int64), layer_count=np.zeros(n_layers, np.int64),
        layer_floor=np.zeros(n_layers, np.int64), layer_cap=np.full(n_layers, capacity_bytes, np.int64),
        prec_bytes=prec_bytes,
        pass_start=np.zeros(n_passes, np.float64), pass_end=np.zeros(n_passes, np.float64),
        stats_i=np.zeros((ST_N, n_layers), np.int64), stats_f=np.zeros((SF_N, n_layers), np.float64),
        dense_col=np.zeros(max(dense_rows, 1), np.float64),
        io_done=np.zeros(n_engines, np.int64), io_keys=np.zeros(n_engines, np.int64),
        io_durs=np.zeros(n_engines, np.float64),
        chain_job=np.zeros(n_experts + 1, np.int64), chain_dur=np.zeros(n_experts + 1, np.float64),
    )


def new_policy_state(f_rows: int = 0, f_cols: int = 0, i_rows: int = 0, i_cols: int = 0,
                     params: tuple[float, ...] | np.ndarray = ()) -> Any:
    """State of one policy: a float table, an int table and its numeric parameters."""
    return PolicyState(np.zeros((f_rows, f_cols), np.float64), np.zeros((i_rows, i_cols), np.int64),
                       np.asarray(params, dtype=np.float64).reshape(-1))
