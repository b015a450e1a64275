"""The timing semantics of docs/ARCHITECTURE.md, once, for every engine and the live runtime.

Engines own time only. They call these handlers in one fixed order at every instant t:
1. completions at t: `copy_done` for each copy that ends at t, `gpu_done` / `cpu_done` for jobs that end;
2. `decide(t)`: demand copies waiting for a victim retry (FIFO), then the forward pass moves on as far
   as it can at t: gate decisions, the next dense or expert job (lowest expert id among ready ones);
   a started job is announced in `sc[SC_GPU_NEW]` / `sc[SC_CPU_NEW]` with its duration in `fc`;
3. `next_copy(t)` while a copy engine is free: the best queued copy (demand before prefetch, then
   issue order) starts and its duration is returned.
Everything here is numba code with fixed signatures, so it compiles once and is cached.

Functions that allocate nothing are compiled with `_nrt=False` (numba's flag for "no runtime"), as are
the policy kernels: the state's arrays are borrowed views with a null meminfo, but numba still called
NRT_incref / NRT_decref for every array bound to a local, ~18 % of a run (docs/fast_engine.md). A
function that must allocate keeps the runtime; numba refuses to compile one that allocates without it.

In the hot paths an index that is a key, an expert id, a layer or a cursor is written `arr[ix(i)]`
(`kernel_util.ix`, an unsigned view of a value that is never negative): numba then skips its
negative-index fix-up, ~14 % of a run (docs/fast_engine.md, sixth round).
"""

from __future__ import annotations

import numpy as np
from numba import boolean, float64, int64, njit, types
from numba.cpython.unsafe.numbers import trailing_zeros

from ..policies.api import (
    EV_ACCESS,
    EV_EVICT,
    EV_INSERT,
    EV_PASS,
    MISS_CPU,
    MISS_DROP,
    MISS_FETCH,
    MISS_SUBSTITUTE,
)
from ..policies.kernel_util import ix, sort_prefix
from ..trace.routing_trace import PHASE_DECODE
from .stack import STACK_T
from .state import (
    ABSENT,
    COPY_NONE,
    COPY_QUEUED,
    COPY_RUNNING,
    CS_T,
    DEMAND,
    E_DONE,
    E_PENDING,
    E_RUNNING,
    FC_AHEAD_S,
    FC_COPY_BUSY,
    FC_CPU_BUSY,
    FC_CPU_DUR,
    FC_DENSE_S,
    FC_GATE_T,
    FC_GPU_BUSY,
    FC_GPU_DUR,
    FC_HOST_FREE,
    FC_IDLE_T,
    FC_ISSUE_S,
    FC_LAYER_HOST,
    FC_PF_ISSUE_S,
    FC_PRE_S,
    IN_FLIGHT,
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
    PREFETCH,
    RESIDENT,
    SC_CAP,
    SC_CHAIN_N,
    SC_CLOCK,
    SC_CPU_JOB,
    SC_CPU_NEW,
    SC_CPU_PENDING,
    SC_CURSOR,
    SC_DQ_HEAD,
    SC_DQ_N,
    SC_GPU_IDLE,
    SC_GPU_JOB,
    SC_GPU_NEW,
    SC_LAST_COPY,
    SC_LAYER,
    SC_NCUR,
    SC_PASS,
    SC_PHASE,
    SC_PQ_HEAD,
    SC_PQ_N,
    SC_SAME_LAYER,
    SC_SEQ,
    SC_USED,
    SC_WQ_N,
    SCAL_ISSUE,
    SF_DEGRADED_MASS,
    SF_DROPPED_MASS,
    SF_LATE_WAIT_S,
    SF_MASS,
    SF_PF_WASTED_BYTES,
    SF_STALL_S,
    SF_SUBSTITUTED_MASS,
    SKIPPED,
    ST_ACCESSES,
    ST_BYTES_H2D,
    ST_COPIES,
    ST_CPU_RUNS,
    ST_DEGRADED,
    ST_DEMAND_WAITS,
    ST_DROPPED,
    ST_EVICTIONS,
    ST_HITS,
    ST_LATE_HITS,
    ST_MISS_CAPACITY,
    ST_MISS_COLLISION,
    ST_MISS_COMPULSORY,
    ST_PF_DROPPED,
    ST_PF_ISSUED,
    ST_PF_USEFUL,
    ST_PF_WASTED,
    ST_SUBSTITUTED,
    TM_T,
    TV_T,
    WAITING,
)

_HEAP_KEY_BITS = 20
_HEAP_SEQ_BITS = 38


# ---- small pure helpers --------------------------------------------------------------------------


@njit(cache=True, inline="always")
def interp_curve(xs: np.ndarray, ys: np.ndarray, n: int, x: float) -> float:
    """Piecewise linear, clamped below the first point, extended past the last (never decreasing)."""
    if x <= xs[0] or n == 1:
        return ys[0]
    if x >= xs[n - 1]:
        slope = (ys[n - 1] - ys[n - 2]) / (xs[n - 1] - xs[n - 2])
        if slope < 0.0:
            slope = 0.0
        return ys[n - 1] + slope * (x - xs[n - 1])
    lo = 0
    hi = n - 1
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if xs[mid] <= x:
            lo = mid
        else:
            hi = mid
    w = (x - xs[lo]) / (xs[hi] - xs[lo])
    return ys[lo] + w * (ys[hi] - ys[lo])


@njit(cache=True, inline="always")
def expert_seconds(tm, prec: int, tokens: int) -> float:
    r = ix(prec)
    return interp_curve(tm.exp_tok[r], tm.exp_s[r], tm.exp_n[r], float(tokens))


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


@njit(cache=True, inline="always")
def key_layer(cs, key: int) -> int:
    n = cs.cur_key.shape[0]
    if n & (n - 1) == 0:  # a power of two: an arithmetic shift floors like //, without a division
        return key >> trailing_zeros(n)
    return key // n


@njit(cache=True, _nrt=False)
def encode_miss(action: int, arg: int) -> int:
    return action | (arg << 4)


# ---- copy queue: one FIFO per priority, of (seq, key) packed in one int64 ------------------------
# Copies start in (priority, issue seq) order. Seqs are handed out in increasing order, so within one
# priority the push order is the seq order: a FIFO per priority (demand before prefetch) pops exactly
# what a heap on (priority, seq) would, at O(1). `cs.heap` holds two rings of R slots (R a power of
# two, `state.queue_ring`): demand in [0, R), prefetch in [R, 2R).

@njit(cache=True, inline="always")
def _queue_push(cs, prio: int, seq: int, key: int) -> None:
    h = cs.heap
    r = h.shape[0] >> 1
    item = (seq << _HEAP_KEY_BITS) | key
    if prio == DEMAND:
        n = cs.sc[SC_DQ_N]
        h[ix((cs.sc[SC_DQ_HEAD] + n) & (r - 1))] = item
        cs.sc[SC_DQ_N] = n + 1
    else:
        n = cs.sc[SC_PQ_N]
        h[ix(r + ((cs.sc[SC_PQ_HEAD] + n) & (r - 1)))] = item
        cs.sc[SC_PQ_N] = n + 1


@njit(cache=True, inline="always")
def _queue_pop(cs) -> int:
    """The first entry of the demand FIFO, else of the prefetch FIFO; the caller checks one is there."""
    h = cs.heap
    r = h.shape[0] >> 1
    n = cs.sc[SC_DQ_N]
    if n > 0:
        head = cs.sc[SC_DQ_HEAD]
        cs.sc[SC_DQ_HEAD] = (head + 1) & (r - 1)
        cs.sc[SC_DQ_N] = n - 1
        return h[ix(head)]
    head = cs.sc[SC_PQ_HEAD]
    cs.sc[SC_PQ_HEAD] = (head + 1) & (r - 1)
    cs.sc[SC_PQ_N] -= 1
    return h[ix(r + head)]


# ---- slots -----------------------------------------------------------------------------------------

@njit(cache=True, inline="always")
def is_evictable(cs, key: int, in_layer: int) -> bool:
    """May `key` make room for a copy into `in_layer`? Policies choose only among such keys."""
    if cs.status[ix(key)] != RESIDENT or cs.protect[ix(key)] > 0:
        return False
    vl = key_layer(cs, key)
    if cs.sc[SC_SAME_LAYER] == 1 and vl != in_layer:
        return False
    return not (vl != in_layer and cs.layer_count[ix(vl)] - 1 < cs.layer_floor[ix(vl)])


@njit(cache=True, inline="always")
def evict(pk, cs, tv, key: int, t: float) -> None:
    kx = ix(key)
    layer = key_layer(cs, key)
    lx = ix(layer)
    b = cs.nbytes[kx]
    cs.status[kx] = ABSENT
    cs.sc[SC_USED] -= b
    cs.layer_bytes[lx] -= b
    cs.layer_count[lx] -= 1
    cs.evict_pass[kx] = cs.sc[SC_PASS]
    cs.stats_i[ST_EVICTIONS, lx] += 1
    wasted = cs.pf_unused[kx]  # 1 for a prefetched expert never used; counted without a branch
    cs.pf_unused[kx] = 0
    cs.stats_i[ST_PF_WASTED, lx] += wasted
    cs.stats_f[SF_PF_WASTED_BYTES, lx] += float(b * wasted)  # + 0.0 leaves a sum of sizes as it was
    pk.event(pk.s_evict, cs, tv, EV_EVICT, key, t)


@njit(cache=True, inline="always")
def make_room(pk, cs, tv, in_layer: int, nbytes: int, t: float) -> bool:
    """Evict until `nbytes` fit in the pool and in the layer's cap; False when no victim is left."""
    while True:
        fits_layer = cs.layer_bytes[ix(in_layer)] + nbytes <= cs.layer_cap[ix(in_layer)]
        if cs.sc[SC_USED] + nbytes <= cs.sc[SC_CAP] and fits_layer:
            return True
        cs.sc[SC_SAME_LAYER] = 0 if fits_layer else 1
        victim = pk.victim(pk.s_evict, cs, tv, in_layer, 0, t)
        cs.sc[SC_SAME_LAYER] = 0
        if victim < 0:
            return False
        evict(pk, cs, tv, victim, t)


@njit(cache=True, inline="always")
def _start_copy_entry(pk, cs, tv, key: int, prec: int, prio: int, t: float) -> None:
    kx = ix(key)
    lx = ix(key_layer(cs, key))
    b = cs.prec_bytes[ix(prec)]
    cs.status[kx] = IN_FLIGHT
    cs.prec[kx] = prec
    cs.nbytes[kx] = b
    cs.sc[SC_USED] += b
    cs.layer_bytes[lx] += b
    cs.layer_count[lx] += 1
    cs.loaded_ever[kx] = 1
    seq = cs.sc[SC_SEQ]
    cs.sc[SC_SEQ] = seq + 1
    cs.copy_state[kx] = COPY_QUEUED
    cs.copy_prio[kx] = prio
    cs.copy_seq[kx] = seq
    _queue_push(cs, prio, seq, key)
    issue_s = cs.fc[FC_ISSUE_S] if prio == DEMAND else cs.fc[FC_PF_ISSUE_S]
    if issue_s > 0.0:  # a host-paced runtime issues copies on the thread that launches the compute
        host = cs.fc[FC_HOST_FREE]
        cs.fc[FC_HOST_FREE] = (host if host > t else t) + issue_s
    cs.sc[SC_CLOCK] += 1
    pk.event(pk.s_evict, cs, tv, EV_INSERT, key, t)


@njit(cache=True, _nrt=False)
def issue_demand(pk, cs, tv, key: int, prec: int, t: float) -> bool:
    """A demand copy takes a slot now, or waits (FIFO) for a victim."""
    if make_room(pk, cs, tv, key_layer(cs, key), cs.prec_bytes[prec], t):
        _start_copy_entry(pk, cs, tv, key, prec, DEMAND, t)
        return True
    cs.status[key] = WAITING
    cs.wait_prec[key] = prec
    cs.waitq[cs.sc[SC_WQ_N]] = key
    cs.sc[SC_WQ_N] += 1
    cs.stats_i[ST_DEMAND_WAITS, key_layer(cs, key)] += 1
    return False


@njit(cache=True, _nrt=False)
def issue_prefetch(pk, cs, tv, key: int, prec: int, t: float) -> bool:
    """A prefetch that finds no victim is dropped and counted."""
    if cs.status[ix(key)] != ABSENT:
        return False
    layer = key_layer(cs, key)
    if not make_room(pk, cs, tv, layer, cs.prec_bytes[prec], t):
        cs.stats_i[ST_PF_DROPPED, layer] += 1
        return False
    _start_copy_entry(pk, cs, tv, key, prec, PREFETCH, t)
    cs.pf_unused[ix(key)] = 1
    cs.stats_i[ST_PF_ISSUED, ix(layer)] += 1
    return True


@njit(cache=True, _nrt=False)
def retry_waiters(pk, cs, tv, t: float) -> None:
    n = cs.sc[SC_WQ_N]
    kept = 0
    for i in range(n):
        key = cs.waitq[i]
        prec = cs.wait_prec[key]
        if make_room(pk, cs, tv, key_layer(cs, key), cs.prec_bytes[prec], t):
            _start_copy_entry(pk, cs, tv, key, prec, DEMAND, t)
        else:
            cs.waitq[kept] = key
            kept += 1
    cs.sc[SC_WQ_N] = kept


# ---- routing helper shared by routing policies ----------------------------------------------------

@njit(cache=True, _nrt=False)
def gather_layer(cs, tv, p: int, layer: int) -> int:
    """The distinct experts the tokens of pass p need at `layer`, in expert-id order, with token counts
    and routing mass (gate scores when the trace has them, else 1/top_k per token)."""
    # Fields are read into locals once: inside loops with stores LLVM would reload them every time.
    experts = tv.experts
    scores = tv.scores
    t0 = tv.pass_offsets[p]
    t1 = tv.pass_offsets[p + 1]
    k = experts.shape[2]
    n_exp = cs.cur_key.shape[0]
    has_scores = tv.dims[0] == 1
    count = cs.gather_count
    mass = cs.gather_mass
    ids = cs.cur_expert
    n = 0
    if n_exp <= 64:
        # a bit per expert: the set bits, lowest first, are the distinct ids in order (no sort)
        bits = np.uint64(0)
        for tok in range(t0, t1):
            for s in range(k):
                e = np.int64(experts[ix(tok), ix(layer), s])
                bits |= np.uint64(1) << np.uint64(e)
                count[ix(e)] += 1
                mass[ix(e)] += np.float64(scores[ix(tok), ix(layer), s]) if has_scores else 1.0 / k
        while bits != np.uint64(0):
            ids[n] = np.int64(trailing_zeros(bits))
            bits &= bits - np.uint64(1)
            n += 1
    else:
        for tok in range(t0, t1):
            for s in range(k):
                e = np.int64(experts[tok, layer, s])
                if count[e] == 0:
                    ids[n] = e
                    n += 1
                count[e] += 1
                mass[e] += np.float64(scores[tok, layer, s]) if has_scores else 1.0 / k
        sort_prefix(ids, n)  # n is at most n_experts and usually top_k
    cur_key = cs.cur_key
    cur_tokens = cs.cur_tokens
    cur_mass = cs.cur_mass
    for i in range(n):
        e = ix(ids[i])
        cur_key[i] = layer * n_exp + ids[i]
        cur_tokens[i] = count[e]
        cur_mass[i] = mass[e]
        count[e] = 0
        mass[e] = 0.0
    return n


# ---- the gate: classify accesses, handle misses, prefetch --------------------------------------

@njit(cache=True, _nrt=False)
def gate(pk, cs, tv, p: int, layer: int, t: float) -> None:
    cs.fc[FC_GATE_T] = t
    pk.partition(pk.s_partition, cs, tv, p, layer, t)
    n = pk.route(pk.s_route, cs, tv, p, layer, t)
    # Fields are read into locals once (a store through any array would make LLVM reload them); the
    # arrays themselves are shared, so kernels called below see every write at once.
    sc = cs.sc
    stats_i = cs.stats_i
    stats_f = cs.stats_f
    status = cs.status
    protect = cs.protect
    cur_key = cs.cur_key
    cur_mass = cs.cur_mass
    cur_where = cs.cur_where
    cur_state = cs.cur_state
    cur_sub = cs.cur_sub
    pf_unused = cs.pf_unused
    sc[SC_NCUR] = n
    sc[SC_CURSOR] = 0
    n_exp = cur_key.shape[0]
    for i in range(n):
        key = cur_key[i]
        cs.cur_expert[i] = key - layer * n_exp
        cur_state[i] = E_PENDING
        cur_where[i] = ON_GPU
        cur_sub[i] = -1
        protect[ix(key)] += 1
    # the access, hit and first-use counts and the routed mass stay in registers for the loop (no
    # kernel reads them); the mass is summed in the same order, so the float total is the same
    stats_i[ST_ACCESSES, layer] += n
    mass_sum = stats_f[SF_MASS, layer]
    hits = 0
    useful = 0
    for i in range(n):
        key = cur_key[i]
        kx = ix(key)
        mass_sum += cur_mass[i]
        st = status[kx]
        if st in (RESIDENT, IN_FLIGHT):
            hits += 1
            if st == IN_FLIGHT:
                stats_i[ST_LATE_HITS, layer] += 1
                cs.late_flag[kx] = 1
                cs.late_gate_t[kx] = t
                if cs.copy_state[kx] == COPY_QUEUED and cs.copy_prio[kx] == PREFETCH:
                    seq = sc[SC_SEQ]  # promote: the stale prefetch entry is skipped when popped
                    sc[SC_SEQ] = seq + 1
                    cs.copy_prio[kx] = DEMAND
                    cs.copy_seq[kx] = seq
                    _queue_push(cs, DEMAND, seq, key)
            # a first use of a prefetched expert, counted without a branch (about half of the hits
            # are one, in no predictable order)
            useful += pf_unused[kx]
            pf_unused[kx] = 0
            if cs.prec[kx] != 0:  # a hit on a lower-precision copy runs degraded too
                stats_i[ST_DEGRADED, layer] += 1
                stats_f[SF_DEGRADED_MASS, layer] += cur_mass[i]
            sc[SC_CLOCK] += 1
            pk.event(pk.s_evict, cs, tv, EV_ACCESS, key, t)
            continue
        action = pk.miss(pk.s_miss, cs, tv, i, 0, t)
        code = action & 15
        arg = action >> 4
        if code == MISS_DROP:
            stats_i[ST_DROPPED, layer] += 1
            stats_f[SF_DROPPED_MASS, layer] += cur_mass[i]
            cur_where[i] = SKIPPED
            cur_state[i] = E_DONE
            protect[kx] -= 1
            continue
        if cs.loaded_ever[kx] == 0:
            stats_i[ST_MISS_COMPULSORY, layer] += 1
        elif cs.evict_pass[kx] == p:
            stats_i[ST_MISS_COLLISION, layer] += 1
        else:
            stats_i[ST_MISS_CAPACITY, layer] += 1
        if code == MISS_FETCH:
            if arg != 0:
                stats_i[ST_DEGRADED, layer] += 1
                stats_f[SF_DEGRADED_MASS, layer] += cur_mass[i]
            sc[SC_CLOCK] += 1
            issue_demand(pk, cs, tv, key, arg, t)
        elif code == MISS_SUBSTITUTE:
            stats_i[ST_SUBSTITUTED, layer] += 1
            stats_f[SF_SUBSTITUTED_MASS, layer] += cur_mass[i]
            cur_sub[i] = arg
            protect[arg] += 1
            protect[kx] -= 1
            sc[SC_CLOCK] += 1
            pk.event(pk.s_evict, cs, tv, EV_ACCESS, arg, t)
        elif code == MISS_CPU:
            stats_i[ST_CPU_RUNS, layer] += 1
            cur_where[i] = ON_CPU
            sc[SC_CPU_PENDING] += 1
            protect[kx] -= 1
    stats_i[ST_HITS, layer] += hits
    stats_i[ST_PF_USEFUL, layer] += useful
    stats_f[SF_MASS, layer] = mass_sum
    n_pf = pk.prefetch(pk.s_prefetch, cs, tv, p, layer, t)
    pf_buf = cs.pf_buf
    for j in range(n_pf):
        issue_prefetch(pk, cs, tv, pf_buf[j], 0, t)


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
    cs.fc[FC_DENSE_S] = dense + tm.scal[1]
    cs.fc[FC_PRE_S] = tm.scal[0] + tm.scal[2] * dense
    # a decode pass's copies and a prefill's cost the host differently (runtime calibration: in the pass with
    # launches around them, or back to back as a prefill's gates issue their tens of misses)
    at = SCAL_ISSUE if tv.pass_phase[p] == PHASE_DECODE else SCAL_ISSUE + 2
    cs.fc[FC_ISSUE_S] = tm.scal[at]
    cs.fc[FC_PF_ISSUE_S] = tm.scal[at + 1]


@njit(cache=True, inline="always")
def _host_wait(cs, t: float) -> float:
    """How long a GPU job started at t waits for the host to finish issuing copies (profile
    `copy_issue_s`): the job's duration grows by it, as if launched once the host is free."""
    host = cs.fc[FC_HOST_FREE]
    return host - t if host > t else 0.0


@njit(cache=True, inline="always")
def _end_idle(cs, t: float) -> None:
    """The GPU takes a job: an idle spell ends (stall time)."""
    if cs.sc[SC_GPU_IDLE] == 1:
        cs.sc[SC_GPU_IDLE] = 0
        cs.stats_f[SF_STALL_S, cs.sc[SC_LAYER]] += t - cs.fc[FC_IDLE_T]


@njit(cache=True, inline="always")
def _dense_job_s(cs, t_end: float) -> float:
    """The next layer's dense job, once this layer's experts end at `t_end`. A host-paced runtime launches the
    layer's experts one after another from its gate (an expert job's time is its launch), then the next
    layer's dense part, blocking only at that layer's routing readback; so where the experts end after the
    host launched them (`FC_LAYER_HOST`: a wait for copies), up to `launch_ahead_s` of the dense job is
    already launched and comes off it (0 for most profiles; none for a pass's first layer)."""
    d = cs.fc[FC_DENSE_S]
    slack = t_end - cs.fc[FC_LAYER_HOST]
    if slack <= 0.0:
        return d
    ahead = cs.fc[FC_AHEAD_S]
    credit = ahead if ahead < slack else slack
    return d - credit if credit < d else 0.0


@njit(cache=True, inline="always")
def _start_gpu(cs, job: int, dur: float, t: float) -> None:
    _end_idle(cs, t)
    if job >= 0:  # an expert: the host's launch of it
        cs.fc[FC_LAYER_HOST] += dur
    dur += _host_wait(cs, t)
    cs.sc[SC_GPU_JOB] = job
    cs.sc[SC_GPU_NEW] = 1
    cs.chain_job[0] = job
    cs.chain_dur[0] = dur
    cs.fc[FC_GPU_DUR] = dur
    cs.fc[FC_GPU_BUSY] += dur


@njit(cache=True, inline="always")
def _chain(pk, cs, tm, tv, i: int, dur: float, t: float) -> None:
    """Start entry i on the GPU, followed back to back by every job whose start is already decided.

    Called only when no demand copy waits, the CPU is idle with nothing routed to it, and no GPU entry
    before i is waiting for its copy. Then nothing can change the GPU's next choices before they are
    made: no victim is chosen and no policy runs until the next gate (only gates and waiters do that),
    resident entries are protected, and a copy that lands can only make a pending entry ready, which
    matters only if its index is below a later member's. So the members are the resident entries
    after i up to the first one still in flight (or of zero duration); when they finish the layer
    and another layer follows, its dense job too. The engine gives each member its own end,
    `previous end + duration`, as separate instants would; the instants between are skipped, and
    `_gpu_done` finishes the members when the chain ends. One member is a plain job.
    """
    _end_idle(cs, t)
    host = cs.fc[FC_LAYER_HOST] + dur
    dur += _host_wait(cs, t)
    n = cs.sc[SC_NCUR]
    cur_state = cs.cur_state
    cur_where = cs.cur_where
    status = cs.status
    chain_job = cs.chain_job
    chain_dur = cs.chain_dur
    cur_state[ix(i)] = E_RUNNING
    chain_job[0] = i
    chain_dur[0] = dur
    busy = cs.fc[FC_GPU_BUSY] + dur
    m = 1
    whole = True  # the members finish every entry of the layer
    for j in range(i + 1, n):
        if cur_state[ix(j)] != E_PENDING or cur_where[ix(j)] != ON_GPU:
            continue
        key = _entry_key(cs, j)
        if status[ix(key)] != RESIDENT:
            whole = False
            break
        d = expert_seconds(tm, cs.prec[ix(key)], cs.cur_tokens[ix(j)])
        if d <= 0.0:
            whole = False
            break
        cur_state[ix(j)] = E_RUNNING
        chain_job[m] = j
        chain_dur[m] = d
        busy += d
        host += d
        m += 1
    cs.fc[FC_LAYER_HOST] = host
    if whole and cs.sc[SC_LAYER] + 1 < tv.experts.shape[1]:
        d = _dense_job_s(cs, t + (busy - cs.fc[FC_GPU_BUSY]))
        if d > 0.0:
            chain_job[m] = JOB_DENSE
            chain_dur[m] = d
            busy += d
            m += 1
    cs.sc[SC_GPU_JOB] = JOB_CHAIN if m > 1 else i
    cs.sc[SC_CHAIN_N] = m
    cs.sc[SC_GPU_NEW] = m
    cs.fc[FC_GPU_DUR] = chain_dur[m - 1]
    cs.fc[FC_GPU_BUSY] = busy


@njit(cache=True, inline="always")
def _entry_key(cs, i: int) -> int:
    sub = cs.cur_sub[ix(i)]
    return sub if sub >= 0 else cs.cur_key[ix(i)]


@njit(cache=True, inline="always")
def _finish_entry(cs, i: int) -> None:
    cs.cur_state[ix(i)] = E_DONE
    if cs.cur_where[ix(i)] == ON_GPU:
        cs.protect[ix(_entry_key(cs, i))] -= 1


STEP_NONE = 0  # nothing changed
STEP_CHANGED = 1
STEP_GPU_STARTED = 2  # the GPU took a job and nothing else changed: a further step at t changes nothing


@njit(cache=True, inline="always")
def _step(pk, cs, tm, tv, t: float) -> int:
    """Advance the forward pass at instant t as far as one transition (STEP_*).

    STEP_GPU_STARTED is returned where the step's only effect is a job started on the GPU (after the CPU
    had its chance in this same step): the next step would find the GPU busy, the CPU as it left it and
    the phase waiting for a job, so `_decide` stops there unless demand copies wait for a victim."""
    phase = cs.sc[SC_PHASE]
    if phase == PH_FINISHED:
        return STEP_NONE
    gpu_free = cs.sc[SC_GPU_JOB] == JOB_NONE
    if phase == PH_PASS_START:
        p = cs.sc[SC_PASS]
        if p >= tv.pass_offsets.shape[0] - 1:
            cs.sc[SC_PHASE] = PH_FINISHED
            return STEP_CHANGED
        cs.pass_start[p] = t
        pk.event(pk.s_evict, cs, tv, EV_PASS, p, t)
        _pass_times(cs, tm, tv, p)
        cs.fc[FC_LAYER_HOST] = np.inf  # a pass's first layer: nothing launched ahead of its dense part
        cs.sc[SC_LAYER] = 0
        if cs.fc[FC_PRE_S] > 0.0:
            _start_gpu(cs, JOB_PRE, cs.fc[FC_PRE_S], t)
            cs.sc[SC_PHASE] = PH_PRE_RUN
        else:
            cs.sc[SC_PHASE] = PH_LAYER_START
        return STEP_CHANGED
    if phase == PH_LAYER_START:
        d = _dense_job_s(cs, t)
        if d > 0.0:
            _start_gpu(cs, JOB_DENSE, d, t)
            cs.sc[SC_PHASE] = PH_DENSE_RUN
            return STEP_GPU_STARTED
        cs.sc[SC_PHASE] = PH_GATE
        return STEP_CHANGED
    if phase == PH_GATE:
        gate(pk, cs, tv, cs.sc[SC_PASS], cs.sc[SC_LAYER], t)
        host = cs.fc[FC_HOST_FREE]  # the host launches the layer's experts once it issued the gate's copies
        cs.fc[FC_LAYER_HOST] = host if host > t else t
        cs.sc[SC_PHASE] = PH_EXPERTS
        return STEP_CHANGED
    if phase != PH_EXPERTS:
        return STEP_NONE  # a pre-pass or dense job is running
    n = cs.sc[SC_NCUR]
    changed = False
    # the CPU takes the lowest pending expert routed to it
    if cs.sc[SC_CPU_JOB] == JOB_NONE and cs.sc[SC_CPU_PENDING] > 0:
        for i in range(n):
            if cs.cur_state[i] == E_PENDING and cs.cur_where[i] == ON_CPU:
                cs.sc[SC_CPU_PENDING] -= 1
                dur = cpu_seconds(tm, 0, cs.cur_tokens[i])  # the host holds the full-precision weights
                cs.cur_state[i] = E_RUNNING
                cs.sc[SC_CPU_JOB] = i
                cs.sc[SC_CPU_NEW] = 1
                cs.fc[FC_CPU_DUR] = dur
                cs.fc[FC_CPU_BUSY] += dur
                cs.fc[FC_LAYER_HOST] += dur  # the host runs it: no time to launch ahead meanwhile
                changed = True
                break
    if not gpu_free:
        return STEP_CHANGED if changed else STEP_NONE
    # entries before the cursor are done: the scan for the lowest ready one starts after them
    cur_state = cs.cur_state
    first = cs.sc[SC_CURSOR]
    while first < n and cur_state[ix(first)] == E_DONE:
        first += 1
    cs.sc[SC_CURSOR] = first
    cur_where = cs.cur_where
    status = cs.status
    waiting = False  # a GPU entry before i waits for its copy
    for i in range(first, n):
        if cur_state[ix(i)] == E_PENDING and cur_where[ix(i)] == ON_GPU:
            key = _entry_key(cs, i)
            if status[ix(key)] == RESIDENT:
                dur = expert_seconds(tm, cs.prec[ix(key)], cs.cur_tokens[ix(i)])
                if dur > 0.0:
                    if (waiting or cs.sc[SC_WQ_N] > 0 or cs.sc[SC_CPU_JOB] != JOB_NONE
                            or cs.sc[SC_CPU_PENDING] > 0):
                        cur_state[ix(i)] = E_RUNNING
                        _start_gpu(cs, i, dur, t)
                    else:
                        _chain(pk, cs, tm, tv, i, dur, t)
                    return STEP_CHANGED if changed else STEP_GPU_STARTED
                _finish_entry(cs, i)
                return STEP_CHANGED
            waiting = True
    if first == n:
        layer = cs.sc[SC_LAYER] + 1
        if layer == tv.experts.shape[1]:
            p = cs.sc[SC_PASS]
            cs.pass_end[p] = t
            cs.sc[SC_PASS] = p + 1
            cs.sc[SC_PHASE] = PH_PASS_START
        else:
            cs.sc[SC_LAYER] = layer
            cs.sc[SC_PHASE] = PH_LAYER_START
        return STEP_CHANGED
    if cs.sc[SC_GPU_IDLE] == 0:
        cs.sc[SC_GPU_IDLE] = 1
        cs.fc[FC_IDLE_T] = t
    return STEP_CHANGED if changed else STEP_NONE


# ---- the instant: the one entry point engines call ----------------------------------------------

@njit(cache=True, inline="always")
def _decide(pk, cs, tm, tv, t: float) -> None:
    while True:
        if cs.sc[SC_WQ_N] > 0:
            retry_waiters(pk, cs, tv, t)
        r = _step(pk, cs, tm, tv, t)
        if r == STEP_NONE or (r == STEP_GPU_STARTED and cs.sc[SC_WQ_N] == 0):
            break


@njit(cache=True, inline="always")
def _next_copy(cs, tm) -> float:
    """The best queued copy starts; returns its duration (key in sc[SC_LAST_COPY]) or -1 if none."""
    while cs.sc[SC_DQ_N] + cs.sc[SC_PQ_N] > 0:
        item = _queue_pop(cs)
        key = item & ((1 << _HEAP_KEY_BITS) - 1)
        seq = (item >> _HEAP_KEY_BITS) & ((1 << _HEAP_SEQ_BITS) - 1)
        kx = ix(key)
        if cs.copy_state[kx] != COPY_QUEUED or cs.copy_seq[kx] != seq:
            continue  # stale entry of a promoted prefetch
        cs.copy_state[kx] = COPY_RUNNING
        dur = tm.copy_s[ix(cs.prec[kx])]
        lx = ix(key_layer(cs, key))
        cs.stats_i[ST_BYTES_H2D, lx] += cs.nbytes[kx]
        cs.stats_i[ST_COPIES, lx] += 1
        cs.fc[FC_COPY_BUSY] += dur
        cs.sc[SC_LAST_COPY] = key
        return dur
    return -1.0


@njit(cache=True, inline="always")
def _copy_done(cs, key: int, t: float) -> None:
    kx = ix(key)
    cs.status[kx] = RESIDENT
    cs.copy_state[kx] = COPY_NONE
    # the wait of a late hit, added without a branch (late and timely copies come in no predictable
    # order): nothing else adds 0.0, a sum of waits (>= 0, from +0.0) is unchanged by it
    late = cs.late_flag[kx]
    cs.late_flag[kx] = 0
    cs.stats_f[SF_LATE_WAIT_S, ix(key_layer(cs, key))] += t - cs.late_gate_t[kx] if late == 1 else 0.0


@njit(cache=True, inline="always")
def _gpu_done(cs) -> None:
    job = cs.sc[SC_GPU_JOB]
    cs.sc[SC_GPU_JOB] = JOB_NONE
    if job == JOB_PRE:
        cs.sc[SC_PHASE] = PH_LAYER_START
    elif job == JOB_DENSE:
        cs.sc[SC_PHASE] = PH_GATE
    elif job >= 0:
        _finish_entry(cs, job)
    elif job == JOB_CHAIN:
        for k in range(cs.sc[SC_CHAIN_N]):
            member = cs.chain_job[k]
            if member >= 0:
                _finish_entry(cs, member)
            else:  # the next layer's dense job ended the chain: its gate is next
                cs.sc[SC_LAYER] += 1
                cs.sc[SC_PHASE] = PH_GATE


@njit(cache=True, inline="always")
def _cpu_done(cs) -> None:
    job = cs.sc[SC_CPU_JOB]
    cs.sc[SC_CPU_JOB] = JOB_NONE
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
    phase = sc[SC_PHASE]
    return (sc[SC_GPU_JOB] != JOB_NONE and sc[SC_WQ_N] == 0 and sc[SC_CPU_JOB] == JOB_NONE
            and sc[SC_CPU_PENDING] == 0 and phase in (PH_EXPERTS, PH_DENSE_RUN, PH_PRE_RUN))


@njit(cache=True, inline="always")
def copy_instant(cs, tm, key: int, t: float) -> float:
    """The whole instant when one copy lands while `quiet(cs)`: the key becomes resident and the next
    queued copy starts (its duration, key in sc[SC_LAST_COPY]; -1.0 if none): what `instant_inline`
    does then (`_decide` changes nothing, the phase is not finished), without its general machinery.
    The fast engine calls it for such instants, about half of all."""
    _copy_done(cs, key, t)
    return _next_copy(cs, tm)


@njit(cache=True, inline="always")
def instant_inline(pk, cs, tm, tv, t: float, n_done: int, done_jobs: int, n_free: int) -> int:
    """`instant`, inlined into the fast engine's loop (no call per instant); the very same code."""
    for i in range(n_done):
        _copy_done(cs, cs.io_done[i], t)
    if done_jobs & GPU_DONE:
        _gpu_done(cs)
    if done_jobs & CPU_DONE:
        _cpu_done(cs)
    _decide(pk, cs, tm, tv, t)
    n = 0
    if cs.sc[SC_PHASE] == PH_FINISHED:
        return 0
    while n < n_free:
        dur = _next_copy(cs, tm)
        if dur < 0.0:
            break
        cs.io_keys[n] = cs.sc[SC_LAST_COPY]
        cs.io_durs[n] = dur
        n += 1
    return n


@njit(int64(STACK_T, CS_T, TM_T, TV_T, float64, int64, int64, int64), cache=True, _nrt=False)
def instant(pk, cs, tm, tv, t, n_done, done_jobs, n_free):
    """Everything that happens at instant t, in the contract's order.

    1. completions: the copies `cs.io_done[:n_done]` landed; `done_jobs` has GPU_DONE / CPU_DONE bits;
    2. decisions (`_decide`);
    3. dispatch: up to `n_free` idle copy engines start the best queued copies, written to
       `cs.io_keys` / `cs.io_durs`; returns how many started. Once the trace is done nothing more starts.
    New GPU/CPU jobs are announced in sc[SC_GPU_NEW] / sc[SC_CPU_NEW] with durations in fc.
    """
    return instant_inline(pk, cs, tm, tv, t, n_done, done_jobs, n_free)


@njit(inline="always")
def trace_done(sc) -> bool:
    """Has the forward pass gone past the last pass? (`trace_done.py_func` serves the SimPy engine.)"""
    return sc[SC_PHASE] == PH_FINISHED


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
            cs.stats_i[ST_PF_WASTED, layer] += 1
            cs.stats_f[SF_PF_WASTED_BYTES, layer] += cs.nbytes[key]
