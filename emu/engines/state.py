"""Flat-array state shared by every engine and the policy kernels.

Everything the timing semantics needs lives in three namedtuples of numpy arrays, so numba can pass
them to the shared core and to the policy kernels, and the SimPy engine can read the same arrays.
Scalars sit in small arrays (`sc` for integers, `fc` for floats) at the indices named below.
"""

from __future__ import annotations

from collections import namedtuple
from typing import Any

import numpy as np
from numba import typeof

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

# ---- sc: integer scalars ---------------------------------------------------------------------------
SC_PASS = 0
SC_LAYER = 1
SC_PHASE = 2
SC_USED = 3  # bytes held by resident and in-flight experts
SC_CAP = 4  # capacity in bytes
SC_SEQ = 5  # copy issue counter (tie-breaker)
SC_HEAP_N = 6
SC_WQ_N = 7
SC_NCUR = 8
SC_GPU_JOB = 9  # JOB_* or index into cur_* of the expert running
SC_CPU_JOB = 10
SC_GPU_IDLE = 11  # 1 while the GPU waits for an expert of the current layer
SC_SAME_LAYER = 12  # 1 while the incoming copy's layer is at its cap: victims must come from it
SC_CLOCK = 13  # logical access clock for recency policies
SC_GPU_NEW = 14  # set by decide when it started a GPU job; the engine schedules it and clears it
SC_CPU_NEW = 15
SC_RUNNING_COPIES = 16
SC_N_ENGINES = 17
SC_PF_N = 18
SC_LAST_COPY = 19  # key of the copy `next_copy` just started
SC_N = 24

# ---- fc: float scalars ---------------------------------------------------------------------------
FC_IDLE_T = 0
FC_DENSE_S = 1  # dense time of one layer in the current pass
FC_PRE_S = 2  # per-pass fixed cost plus dense (non-MoE) layers
FC_GATE_T = 3
FC_GPU_DUR = 4  # duration of the GPU job just started
FC_CPU_DUR = 5
FC_COPY_BUSY = 6
FC_GPU_BUSY = 7
FC_CPU_BUSY = 8
FC_N = 12

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
SF_N = 7

CacheState = namedtuple("CacheState", [
    "sc", "fc",
    # per key (layer * n_experts + expert)
    "status", "prec", "nbytes", "loaded_ever", "evict_pass", "protect", "copy_state", "copy_prio",
    "copy_seq", "pf_unused", "late_gate_t", "late_flag", "wait_prec",
    # structures
    "heap", "waitq", "pf_buf",
    # the layer now computing
    "cur_key", "cur_expert", "cur_tokens", "cur_mass", "cur_where", "cur_state", "cur_sub",
    "cur_prec", "gather_count", "gather_mass",
    # per layer
    "layer_bytes", "layer_count", "layer_floor", "layer_cap",
    # precisions
    "prec_bytes",
    # per pass
    "pass_start", "pass_end",
    # statistics
    "stats_i", "stats_f",
])

TraceView = namedtuple("TraceView", [
    "experts", "scores", "predicted", "pass_offsets", "pass_phase", "token_position", "token_request",
    "dims",  # int64 [has_scores, has_predicted, n_experts]
])

Timing = namedtuple("Timing", [
    "copy_s",  # float64 [precision]: time of one expert copy
    "exp_tok", "exp_s", "exp_n",  # expert FFN curve per precision
    "cpu_tok", "cpu_s", "cpu_n",  # CPU expert curve per precision (cpu_n = 0: none)
    "d_tok", "d_ctx", "d_s",  # dense table
    "scal",  # float64 [pass_overhead_s, layer_overhead_s, n_dense_layers]
])

PolicyState = namedtuple("PolicyState", ["f", "i", "p"])


def new_cache_state(n_layers: int, n_experts: int, top_k: int, n_passes: int, capacity_bytes: int,
                    prec_bytes: np.ndarray, n_engines: int) -> Any:
    k = n_layers * n_experts
    sc = np.zeros(SC_N, np.int64)
    sc[SC_CAP] = capacity_bytes
    sc[SC_N_ENGINES] = n_engines
    sc[SC_GPU_JOB] = JOB_NONE
    sc[SC_CPU_JOB] = JOB_NONE
    cs = CacheState(
        sc=sc, fc=np.zeros(FC_N, np.float64),
        status=np.zeros(k, np.int8), prec=np.zeros(k, np.int8), nbytes=np.zeros(k, np.int64),
        loaded_ever=np.zeros(k, np.uint8), evict_pass=np.full(k, -1, np.int64), protect=np.zeros(k, np.int32),
        copy_state=np.zeros(k, np.int8), copy_prio=np.zeros(k, np.int8), copy_seq=np.zeros(k, np.int64),
        pf_unused=np.zeros(k, np.uint8), late_gate_t=np.zeros(k, np.float64), late_flag=np.zeros(k, np.uint8),
        wait_prec=np.zeros(k, np.int8),
        heap=np.zeros(2 * k + 8, np.int64), waitq=np.zeros(k, np.int64), pf_buf=np.zeros(k, np.int64),
        cur_key=np.zeros(n_experts, np.int64), cur_expert=np.zeros(n_experts, np.int64),
        cur_tokens=np.zeros(n_experts, np.int64), cur_mass=np.zeros(n_experts, np.float64),
        cur_where=np.zeros(n_experts, np.int8), cur_state=np.zeros(n_experts, np.int8),
        cur_sub=np.full(n_experts, -1, np.int64), cur_prec=np.zeros(n_experts, np.int8),
        gather_count=np.zeros(n_experts, np.int64), gather_mass=np.zeros(n_experts, np.float64),
        layer_bytes=np.zeros(n_layers, np.int64), layer_count=np.zeros(n_layers, np.int64),
        layer_floor=np.zeros(n_layers, np.int64), layer_cap=np.full(n_layers, capacity_bytes, np.int64),
        prec_bytes=np.ascontiguousarray(prec_bytes, dtype=np.int64),
        pass_start=np.zeros(n_passes, np.float64), pass_end=np.zeros(n_passes, np.float64),
        stats_i=np.zeros((ST_N, n_layers), np.int64), stats_f=np.zeros((SF_N, n_layers), np.float64),
    )
    return cs


def new_policy_state(f_rows: int = 0, f_cols: int = 0, i_rows: int = 0, i_cols: int = 0,
                     params: tuple[float, ...] | np.ndarray = ()) -> Any:
    """State of one policy: a float table, an int table and its numeric parameters."""
    return PolicyState(np.zeros((f_rows, f_cols), np.float64), np.zeros((i_rows, i_cols), np.int64),
                       np.ascontiguousarray(np.asarray(params, dtype=np.float64).reshape(-1)))


def _sample_types() -> tuple[Any, Any, Any, Any]:
    cs = new_cache_state(1, 2, 1, 1, 10, np.array([1], np.int64), 1)
    tv = TraceView(np.zeros((1, 1, 1), np.int16), np.zeros((1, 1, 1), np.float32),
                   np.zeros((1, 1, 1), np.int16), np.zeros(2, np.int64), np.zeros(1, np.int8),
                   np.zeros(1, np.int32), np.zeros(1, np.int32), np.zeros(3, np.int64))
    tm = Timing(np.zeros(1), np.zeros((1, 1)), np.zeros((1, 1)), np.zeros(1, np.int64), np.zeros((1, 1)),
                np.zeros((1, 1)), np.zeros(1, np.int64), np.zeros(1), np.zeros(1), np.zeros((1, 1)), np.zeros(3))
    return typeof(cs), typeof(tv), typeof(tm), typeof(new_policy_state())


CS_T, TV_T, TM_T, PS_T = _sample_types()
