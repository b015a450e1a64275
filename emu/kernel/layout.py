"""The state layout every engine and policy kernel shares: four structs of numpy arrays, fields by name.

Everything the timing semantics needs lives in `CacheState` (cs), `TraceView` (tv), `Timing` (tm) and
`PolicyState` (ps). In jitted code each is one borrowed pointer (emu/kernel/structs.py), so the shared core
and the policy kernels (first-class functions) call each other for a few nanoseconds, while code reads
`cs.status[key]` or `ps.i[COUNT, key]`. The SimPy engine and the metrics read the same arrays from Python
through the proxies' attributes (no copies).

Scalars sit in small arrays (`sc` for integers, `fc` for floats, `tm.scal`) at the positions of the `Fields`
enums below (`cs.sc[SC.PASS]`); statistics per layer in `stats_i` / `stats_f` rows (`ST`, `SF`). Adding a
field is one line: an `auto()` member, or a `(name, type)` pair in a struct's field list; the constructors
are generated from the lists (`structs.constructor`). Numba folds an enum member to its integer, so a named
index costs what a literal did.
"""

from __future__ import annotations

from enum import IntEnum, auto
from typing import Any

import numpy as np
from numba import types

from .structs import ArrayStruct

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
JOB_CHAIN = -4  # jobs run back to back, listed in chain_job[:sc[SC.CHAIN_N]] (see core._chain)


class Fields(IntEnum):
    """Named positions in one array, numbered from 0 in declaration order (`auto()`)."""

    @staticmethod
    def _generate_next_value_(name: str, start: int, count: int, last_values: list[Any]) -> int:
        return count


#: `SC.COPY_ORDER`: queued copies start demand before prefetch, then in issue order; or in issue order alone (a CUDA
#: copy engine runs what was submitted to it in submission order, whatever the stream's priority)
ORDER_DEMAND_FIRST = 0
ORDER_SUBMISSION = 1

#: how many of the latest landings `cs.landed` holds (a power of two): the key of landing n (counted from 0, as
#: `SC.LANDED` counts them) is at `landed[n & (LANDED_LOG - 1)]` while n >= SC.LANDED - LANDED_LOG
LANDED_LOG = 64


class SC(Fields):
    """Integer scalars of the cache state: `cs.sc[SC.PASS]`."""

    PASS = auto()
    LAYER = auto()
    PHASE = auto()
    USED = auto()  # bytes held by resident and in-flight experts
    CAP = auto()  # capacity in bytes
    SEQ = auto()  # copy issue counter (tie-breaker)
    DQ_HEAD = auto()  # copy queue: demand FIFO's first slot in heap[:R] (see copy_queue.push)
    WQ_N = auto()
    NCUR = auto()
    GPU_JOB = auto()  # JOB_* or index into cur_* of the expert running
    CPU_JOB = auto()
    GPU_IDLE = auto()  # 1 while the GPU waits for an expert of the current layer
    SAME_LAYER = auto()  # 1 while the incoming copy's layer is at its cap: victims must come from it
    CLOCK = auto()  # logical access clock for recency policies
    GPU_NEW = auto()  # set by decide to the number of GPU jobs it started back to back (durations in
    # chain_dur); the engine schedules them and clears it
    CPU_NEW = auto()
    DQ_N = auto()  # entries in the demand FIFO
    N_ENGINES = auto()
    PQ_HEAD = auto()  # prefetch FIFO's first slot in heap[R:]
    LAST_COPY = auto()  # key of the copy `next_copy` just started
    CPU_PENDING = auto()  # entries of the current layer routed to the CPU and not started yet
    CURSOR = auto()  # entries of the current layer before this index are done
    CHAIN_N = auto()  # members of the GPU chain now running (SC.GPU_JOB == JOB_CHAIN)
    PQ_N = auto()  # entries in the prefetch FIFO
    SLOT_LOG_N = auto()  # entries in `slot_log` (decisions.log_slot)
    MISS_EVENTS = auto()  # 1: the eviction policy declared `miss_events` and is told EV_MISS
    COPY_ORDER = auto()  # the copy engine's order: ORDER_DEMAND_FIRST, or ORDER_SUBMISSION (profile `copy.order`)
    GPU_N = auto()  # the current layer's entries that run on the GPU (a fused layer's distinct experts)
    LANDED = auto()  # copies landed so far: a key a policy saw in flight is still in flight while this is unchanged
    # (which keys landed last: `cs.landed`)
    RELEASED = auto()  # entries released so far: a key a policy saw protected is still protected while this and
    # LANDED are unchanged


class FC(Fields):
    """Float scalars of the cache state: `cs.fc[FC.GATE_T]`."""

    IDLE_T = auto()
    DENSE_S = auto()  # dense time of one layer in the current pass
    PRE_S = auto()  # per-pass fixed cost plus dense (non-MoE) layers
    GATE_T = auto()
    GPU_DUR = auto()  # duration of the (last) GPU job just started
    CPU_DUR = auto()
    COPY_BUSY = auto()
    GPU_BUSY = auto()
    CPU_BUSY = auto()
    HOST_FREE = auto()  # the host is busy issuing copies until then (no launch before)
    ISSUE_S = auto()  # host seconds to issue one demand copy in this pass (runtime `copy_s` or `prefill_copy_s`)
    PF_ISSUE_S = auto()  # the same for a prefetch copy (runtime `prefetch_s` or `prefill_prefetch_s`)
    EXPERT_HOST_S = auto()  # host seconds to launch one expert in this pass (`expert_s`, `batch_expert_s`, ...)
    LAYER_HOST = auto()  # the host's launch cursor: it has launched everything decided so far by then
    LAYER_HOST_S = auto()  # host seconds to launch one layer's dense part in this pass (`layer_s`, `prefill_layer_s`)
    READBACK_HOST_S = auto()  # the routing readback and the layer's decisions in this pass (readback_s + gate_s)


class ST(Fields):
    """Per-layer integer statistics: `cs.stats_i[ST.HITS, layer]`."""

    ACCESSES = auto()
    HITS = auto()
    LATE_HITS = auto()
    MISS_COMPULSORY = auto()
    MISS_CAPACITY = auto()
    MISS_COLLISION = auto()
    DROPPED = auto()
    SUBSTITUTED = auto()
    DEGRADED = auto()
    CPU_RUNS = auto()
    PF_ISSUED = auto()
    PF_USEFUL = auto()
    PF_DROPPED = auto()  # prefetch found no victim
    PF_WASTED = auto()  # prefetched, evicted (or left at the end) unused
    BYTES_H2D = auto()
    COPIES = auto()
    EVICTIONS = auto()
    DEMAND_WAITS = auto()  # demand copies that had to wait for a victim
    # the same counts in decode passes alone (a prefill's are the totals less these)
    DECODE_ACCESSES = auto()
    DECODE_HITS = auto()  # on time and late, as HITS
    DECODE_LATE_HITS = auto()
    DECODE_MISSES = auto()  # compulsory + capacity + collision
    DECODE_MISS_COLLISION = auto()


class SF(Fields):
    """Per-layer float statistics: `cs.stats_f[SF.STALL_S, layer]`."""

    LATE_WAIT_S = auto()
    STALL_S = auto()
    DROPPED_MASS = auto()
    SUBSTITUTED_MASS = auto()
    DEGRADED_MASS = auto()
    MASS = auto()
    PF_WASTED_BYTES = auto()
    REROUTED_MASS = auto()  # routing mass a routing policy moved off the router's own choices
    HOST_WAIT_S = auto()  # the GPU idle for the host: launches not yet issued, routing readbacks, decisions


class SCAL(Fields):
    """`Timing.scal`: the device's per-pass and per-layer costs, and the runtime's host costs (a runtime
    profile's, emu/runtime_profile.py), per decode pass and per prefill pass where they differ
    (`core._pass_times` picks them)."""

    PASS_OVERHEAD_S = auto()
    LAYER_OVERHEAD_S = auto()
    N_DENSE_LAYERS = auto()
    DECODE_COPY_ISSUE_S = auto()
    DECODE_PREFETCH_ISSUE_S = auto()
    PREFILL_COPY_ISSUE_S = auto()
    PREFILL_PREFETCH_ISSUE_S = auto()
    HOST_PASS_S = auto()  # before a pass's first launch
    HOST_LAYER_S = auto()  # launching one layer's dense part
    HOST_READBACK_S = auto()  # the routing readback and the layer's cache decisions, after its dense part
    DECODE_EXPERT_HOST_S = auto()  # launching one expert
    BATCH_EXPERT_HOST_S = auto()  # launching one expert in a decode pass of more than one token
    PREFILL_EXPERT_HOST_S = auto()
    PREFILL_HOST_LAYER_S = auto()
    PREFILL_HOST_READBACK_S = auto()


# ---- the structs ----------------------------------------------------------------------------------
# Field order is the constructor's argument order. Types are exact (C-contiguous, writable arrays), so
# every jitted function that takes a struct compiles once and is cached across processes.
_I8, _U8, _I32, _I64, _U64, _F32, _F64 = (types.int8, types.uint8, types.int32, types.int64, types.uint64,
                                          types.float32, types.float64)

CS_FIELDS: tuple[tuple[str, Any], ...] = (
    ("sc", _I64[::1]), ("fc", _F64[::1]),
    # per key (layer * n_experts + expert)
    ("status", _I8[::1]), ("prec", _I8[::1]), ("nbytes", _I64[::1]), ("referenced", _U8[::1]),
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
    ("mask", _U64[::1]),  # scratch: a bit per expert in 64-bit words, all zero between uses
    # per layer
    ("layer_bytes", _I64[::1]), ("layer_count", _I64[::1]), ("layer_floor", _I64[::1]),
    ("layer_cap", _I64[::1]),
    # precisions
    ("prec_bytes", _I64[::1]),
    ("layer_prec_bytes", _I64[:, ::1]),  # [layer, precision]: bytes of one expert (mixed sizes per layer)
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
    # slot takes and evictions in order, for a runtime that owns real slots (empty in the engines)
    ("slot_log", _I64[::1]),
    # the keys of the latest LANDED_LOG landings, a ring (decisions.land writes it, `helpers.landed_key` reads it):
    # a policy that set keys in flight aside learns which of them landed without a scan
    ("landed", _I64[::1]),
)

TV_FIELDS: tuple[tuple[str, Any], ...] = (
    # expert ids, one byte each, and their high bytes: [tokens, layers, top_k], or [0, layers, top_k] when every
    # id < 256 (most models: one byte an id halves the trace the run holds). Read them with `helpers.read_id`.
    ("experts", _U8[:, :, ::1]), ("experts_hi", _U8[:, :, ::1]),
    ("scores", _F32[:, :, ::1]),
    ("predicted", _U8[:, :, ::1]), ("predicted_hi", _U8[:, :, ::1]),  # the speculator's ids, the same way
    ("pass_offsets", _I64[::1]), ("pass_phase", _I8[::1]), ("token_position", _I32[::1]),
    ("token_request", _I32[::1]),
    ("dims", _I64[::1]),  # [has_scores, has_predicted, n_experts, has_logits]
    # the router's full logits [tokens, layers, n_experts] (float32: numba computes on no float16), or
    # [0, layers, n_experts] when the trace has none
    ("logits", _F32[:, :, ::1]),
)

TM_FIELDS: tuple[tuple[str, Any], ...] = (
    ("copy_s", _F64[::1]),  # time of one expert copy, per precision (the model's nominal expert)
    ("layer_copy_s", _F64[:, ::1]),  # [layer, precision]: time of one copy of that layer's expert
    ("exp_tok", _F64[:, ::1]), ("exp_s", _F64[:, ::1]), ("exp_n", _I64[::1]),  # expert FFN curve per precision
    ("cpu_tok", _F64[:, ::1]), ("cpu_s", _F64[:, ::1]), ("cpu_n", _I64[::1]),  # CPU curve (cpu_n = 0: none)
    # a fused runtime's layer: seconds by its distinct experts, per precision (fz_n = 0: experts one by one)
    ("fz_k", _F64[:, ::1]), ("fz_s", _F64[:, ::1]), ("fz_n", _I64[::1]),
    ("d_tok", _F64[::1]), ("d_ctx", _F64[::1]), ("d_s", _F64[:, ::1]),  # dense table
    ("scal", _F64[::1]),  # SCAL
)

PS_FIELDS: tuple[tuple[str, Any], ...] = (("f", _F64[:, ::1]), ("i", _I64[:, ::1]), ("p", _F64[::1]))


class CacheState(ArrayStruct):
    _FIELDS = CS_FIELDS


class TraceView(ArrayStruct):
    _FIELDS = TV_FIELDS


class Timing(ArrayStruct):
    _FIELDS = TM_FIELDS


class PolicyState(ArrayStruct):
    _FIELDS = PS_FIELDS


# The view types: what jitted code and the policy kernels' signatures see.
CS_T = CacheState._VIEW
TV_T = TraceView._VIEW
TM_T = Timing._VIEW
PS_T = PolicyState._VIEW


def id_bytes(ids: np.ndarray | None, shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Expert ids (any integer dtype, each in 0..65535) as the trace view's (low, high) byte arrays; high is
    [0, layers, top_k] when every id < 256, and a uint8 `ids` is taken as it is (no copy when contiguous).
    `ids` None: both empty, of `shape`'s layers and top_k."""
    empty = np.zeros((0, shape[1], shape[2]), np.uint8)
    if ids is None:
        return empty, empty
    if ids.dtype == np.uint8:
        return np.ascontiguousarray(ids), empty
    if ids.size == 0 or int(ids.max()) < 256:
        return np.ascontiguousarray(ids, dtype=np.uint8), empty
    return (np.ascontiguousarray(ids & 0xFF, dtype=np.uint8),
            np.ascontiguousarray(ids >> 8, dtype=np.uint8))


def queue_ring(n_keys: int) -> int:
    """Slots of each copy FIFO (demand, prefetch): a power of two (index by mask) of at least the
    2 * keys + 8 entries the binary heap they replaced held for both priorities together."""
    r = 1
    while r < 2 * n_keys + 8:
        r *= 2
    return r


def new_cache_state(n_layers: int, n_experts: int, top_k: int, n_passes: int, capacity_bytes: int,
                    prec_bytes: np.ndarray, n_engines: int, dense_rows: int = 1, slot_log: int = 0,
                    layer_prec_bytes: np.ndarray | None = None) -> Any:
    """`layer_prec_bytes[layer, precision]`: bytes of one expert per layer (default: `prec_bytes` at every layer)."""
    k = n_layers * n_experts
    if layer_prec_bytes is None:
        layer_prec_bytes = np.tile(np.asarray(prec_bytes, np.int64), (n_layers, 1))
    sc = np.zeros(len(SC), np.int64)
    sc[SC.CAP] = capacity_bytes
    sc[SC.N_ENGINES] = n_engines
    sc[SC.GPU_JOB] = JOB_NONE
    sc[SC.CPU_JOB] = JOB_NONE
    return CacheState(
        sc=sc, fc=np.zeros(len(FC), np.float64),
        status=np.zeros(k, np.int8), prec=np.zeros(k, np.int8), nbytes=np.zeros(k, np.int64),
        referenced=np.zeros(k, np.uint8), evict_pass=np.full(k, -1, np.int64), protect=np.zeros(k, np.int32),
        copy_state=np.zeros(k, np.int8), copy_prio=np.zeros(k, np.int8), copy_seq=np.zeros(k, np.int64),
        pf_unused=np.zeros(k, np.uint8), late_gate_t=np.zeros(k, np.float64), late_flag=np.zeros(k, np.uint8),
        wait_prec=np.zeros(k, np.int8),
        heap=np.zeros(2 * queue_ring(k), np.int64), waitq=np.zeros(k, np.int64), pf_buf=np.zeros(k, np.int64),
        cur_key=np.zeros(n_experts, np.int64), cur_expert=np.zeros(n_experts, np.int64),
        cur_tokens=np.zeros(n_experts, np.int64), cur_mass=np.zeros(n_experts, np.float64),
        cur_where=np.zeros(n_experts, np.int8), cur_state=np.zeros(n_experts, np.int8),
        cur_sub=np.full(n_experts, -1, np.int64), cur_prec=np.zeros(n_experts, np.int8),
        gather_count=np.zeros(n_experts, np.int64), gather_mass=np.zeros(n_experts, np.float64),
        pick_buf=np.zeros(n_experts, np.int64), mask=np.zeros((n_experts + 63) // 64, np.uint64),
        layer_bytes=np.zeros(n_layers, np.int64), layer_count=np.zeros(n_layers, np.int64),
        layer_floor=np.zeros(n_layers, np.int64), layer_cap=np.full(n_layers, capacity_bytes, np.int64),
        prec_bytes=prec_bytes, layer_prec_bytes=np.ascontiguousarray(layer_prec_bytes, np.int64),
        pass_start=np.zeros(n_passes, np.float64), pass_end=np.zeros(n_passes, np.float64),
        stats_i=np.zeros((len(ST), n_layers), np.int64), stats_f=np.zeros((len(SF), n_layers), np.float64),
        dense_col=np.zeros(max(dense_rows, 1), np.float64),
        io_done=np.zeros(n_engines, np.int64), io_keys=np.zeros(n_engines, np.int64),
        io_durs=np.zeros(n_engines, np.float64),
        chain_job=np.zeros(n_experts + 1, np.int64), chain_dur=np.zeros(n_experts + 1, np.float64),
        slot_log=np.zeros(slot_log, np.int64), landed=np.full(LANDED_LOG, -1, np.int64),
    )


def new_policy_state(f_rows: int = 0, f_cols: int = 0, i_rows: int = 0, i_cols: int = 0,
                     params: tuple[float, ...] | np.ndarray = ()) -> Any:
    """State of one policy: a float table, an int table and its numeric parameters."""
    return PolicyState(np.zeros((f_rows, f_cols), np.float64), np.zeros((i_rows, i_cols), np.int64),
                       np.asarray(params, dtype=np.float64).reshape(-1))
