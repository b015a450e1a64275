"""The cache decisions, once, for both engines and the live runtime: jitted functions of the state.

What happens to the cache when the forward pass reaches a gate or a copy lands, with the policy stack's
hooks called where the contract says (docs/ARCHITECTURE.md): a pass begins (`begin_pass`: EV_PASS); a
layer's gate (`gate`: the partition's caps, the routing, each access classified as a hit, a late hit or a
compulsory / capacity / collision miss, the miss policy's action, then the prefetch policy's picks);
a miss takes a slot or waits for a victim (`issue_demand`, `retry_waiters`), a prefetch takes one or is
dropped (`issue_prefetch`); room is made by evicting the eviction policy's victims (`make_room`,
`evict`); a copy lands (`land`); an entry of the layer is done with its key (`release`).

A copy that takes a slot is pushed onto the copy queue (copy_queue.py) in issue order and charges the host
the runtime's issue time (`FC.HOST_FREE`); when copies start, how long they run and when the GPU runs what,
is the engines' business (core.py, engines/des), never this module's. Nothing here reads the clock except
to stamp a late hit's gate time and to hand `t` to the hooks.
"""

from __future__ import annotations

from numba import njit

from ..kernel.helpers import ix, key_layer
from ..kernel.hooks import (
    EV_ACCESS,
    EV_EVICT,
    EV_INSERT,
    EV_MISS,
    EV_PASS,
    MISS_CPU,
    MISS_DROP,
    MISS_FETCH,
    MISS_SUBSTITUTE,
)
from ..kernel.layout import (
    ABSENT,
    COPY_NONE,
    COPY_QUEUED,
    DEMAND,
    E_DONE,
    E_PENDING,
    FC,
    IN_FLIGHT,
    LANDED_LOG,
    ON_CPU,
    ON_GPU,
    ORDER_DEMAND_FIRST,
    PREFETCH,
    RESIDENT,
    SC,
    SF,
    SKIPPED,
    ST,
    WAITING,
)
from ..trace.routing_trace import PHASE_DECODE
from . import copy_queue


@njit(cache=True, inline="always")
def log_slot(cs, entry: int) -> None:
    """Append to the slot log where one is kept (`cs.slot_log`, empty in the engines): a key that took a slot,
    or -1 - key for a key evicted, in the order it happened. A runtime that owns real slots reads it to
    pair each copy with the slot its victim freed."""
    log = cs.slot_log
    n = cs.sc[SC.SLOT_LOG_N]
    if n < log.shape[0]:
        log[ix(n)] = entry
        cs.sc[SC.SLOT_LOG_N] = n + 1


@njit(cache=True, inline="always")
def begin_pass(pk, cs, tv, p: int, t: float) -> None:
    pk.on_event(pk.s_eviction, cs, tv, EV_PASS, p, t)


@njit(cache=True, inline="always")
def evict(pk, cs, tv, key: int, t: float) -> None:
    kx = ix(key)
    layer = key_layer(cs, key)
    lx = ix(layer)
    b = cs.nbytes[kx]
    cs.status[kx] = ABSENT
    cs.sc[SC.USED] -= b
    cs.layer_bytes[lx] -= b
    cs.layer_count[lx] -= 1
    cs.evict_pass[kx] = cs.sc[SC.PASS]
    cs.stats_i[ST.EVICTIONS, lx] += 1
    wasted = cs.pf_unused[kx]  # 1 for a prefetched expert never used; counted without a branch
    cs.pf_unused[kx] = 0
    cs.stats_i[ST.PF_WASTED, lx] += wasted
    cs.stats_f[SF.PF_WASTED_BYTES, lx] += float(b * wasted)  # + 0.0 leaves a sum of sizes as it was
    log_slot(cs, -1 - key)
    pk.on_event(pk.s_eviction, cs, tv, EV_EVICT, key, t)


@njit(cache=True, inline="always")
def make_room(pk, cs, tv, incoming: int, in_layer: int, nbytes: int, t: float) -> bool:
    """Evict until `nbytes` for key `incoming` (of layer `in_layer`) fit in the pool and in its layer's cap;
    False when no victim is left."""
    while True:
        fits_layer = cs.layer_bytes[ix(in_layer)] + nbytes <= cs.layer_cap[ix(in_layer)]
        if cs.sc[SC.USED] + nbytes <= cs.sc[SC.CAP] and fits_layer:
            return True
        cs.sc[SC.SAME_LAYER] = 0 if fits_layer else 1
        victim = pk.victim(pk.s_eviction, cs, tv, incoming, t)
        cs.sc[SC.SAME_LAYER] = 0
        if victim < 0:
            return False
        evict(pk, cs, tv, victim, t)


@njit(cache=True, inline="always")
def take_slot(pk, cs, tv, key: int, layer: int, prec: int, prio: int, t: float) -> None:
    kx = ix(key)
    lx = ix(layer)
    b = cs.layer_prec_bytes[lx, ix(prec)]
    cs.status[kx] = IN_FLIGHT
    cs.prec[kx] = prec
    cs.nbytes[kx] = b
    cs.sc[SC.USED] += b
    cs.layer_bytes[lx] += b
    cs.layer_count[lx] += 1
    cs.referenced[kx] = 1
    seq = cs.sc[SC.SEQ]
    cs.sc[SC.SEQ] = seq + 1
    cs.copy_state[kx] = COPY_QUEUED
    cs.copy_prio[kx] = prio
    cs.copy_seq[kx] = seq
    copy_queue.push(cs, prio, seq, key)
    issue_s = cs.fc[FC.ISSUE_S] if prio == DEMAND else cs.fc[FC.PF_ISSUE_S]
    if issue_s > 0.0:  # a host-paced runtime issues copies on the thread that launches the compute
        host = cs.fc[FC.HOST_FREE]
        cs.fc[FC.HOST_FREE] = (host if host > t else t) + issue_s
    cs.sc[SC.CLOCK] += 1
    log_slot(cs, key)
    pk.on_event(pk.s_eviction, cs, tv, EV_INSERT, key, t)


@njit(cache=True, _nrt=False)
def issue_demand(pk, cs, tv, key: int, prec: int, t: float) -> bool:
    """A demand copy takes a slot now, or waits (FIFO) for a victim."""
    layer = key_layer(cs, key)
    if make_room(pk, cs, tv, key, layer, cs.layer_prec_bytes[ix(layer), ix(prec)], t):
        take_slot(pk, cs, tv, key, layer, prec, DEMAND, t)
        return True
    cs.status[key] = WAITING
    cs.wait_prec[key] = prec
    cs.waitq[cs.sc[SC.WQ_N]] = key
    cs.sc[SC.WQ_N] += 1
    cs.stats_i[ST.DEMAND_WAITS, layer] += 1
    return False


@njit(cache=True, _nrt=False)
def issue_prefetch(pk, cs, tv, key: int, prec: int, t: float) -> bool:
    """A prefetch that finds no victim is dropped and counted."""
    if cs.status[ix(key)] != ABSENT:
        return False
    layer = key_layer(cs, key)
    if not make_room(pk, cs, tv, key, layer, cs.layer_prec_bytes[ix(layer), ix(prec)], t):
        cs.stats_i[ST.PF_DROPPED, layer] += 1
        return False
    take_slot(pk, cs, tv, key, layer, prec, PREFETCH, t)
    cs.pf_unused[ix(key)] = 1
    cs.stats_i[ST.PF_ISSUED, ix(layer)] += 1
    return True


@njit(cache=True, _nrt=False)
def retry_waiters(pk, cs, tv, t: float) -> None:
    """Every demand copy waiting for a victim tries again, in the order they began to wait."""
    n = cs.sc[SC.WQ_N]
    kept = 0
    for i in range(n):
        key = cs.waitq[i]
        if not _retry(pk, cs, tv, key, t):
            cs.waitq[kept] = key
            kept += 1
    cs.sc[SC.WQ_N] = kept


@njit(cache=True, inline="always")
def _retry(pk, cs, tv, key: int, t: float) -> bool:
    prec = cs.wait_prec[key]
    layer = key_layer(cs, key)
    if make_room(pk, cs, tv, key, layer, cs.layer_prec_bytes[ix(layer), ix(prec)], t):
        take_slot(pk, cs, tv, key, layer, prec, DEMAND, t)
        return True
    return False


@njit(cache=True, _nrt=False)
def retry_one(pk, cs, tv, key: int, t: float) -> bool:
    """The waiting demand copy of `key` alone tries again (a runtime that retries its first waiter whenever
    an expert is released); on success it leaves the waiters, the others keep their order."""
    if not _retry(pk, cs, tv, key, t):
        return False
    kept = 0
    for i in range(cs.sc[SC.WQ_N]):
        if cs.waitq[i] != key:
            cs.waitq[kept] = cs.waitq[i]
            kept += 1
    cs.sc[SC.WQ_N] = kept
    return True


@njit(cache=True, _nrt=False)
def gate(pk, cs, tv, p: int, layer: int, t: float) -> None:
    """Layer `layer`'s gate in pass p: the partition's caps, the routing policy's entries, their accesses,
    the prefetch policy's picks."""
    partition_layer(pk, cs, tv, p, layer, t)
    n = pk.route(pk.s_routing, cs, tv, p, layer, t)
    # the layer's counts also apart for decode passes: the gate's share of each, taken around one inlined copy
    # of `access_layer` (each copy costs its compile time again)
    decode = tv.pass_phase[p] == PHASE_DECODE
    st = cs.stats_i
    hits0, late0, col0 = st[ST.HITS, layer], st[ST.LATE_HITS, layer], st[ST.MISS_COLLISION, layer]
    misses0 = st[ST.MISS_COMPULSORY, layer] + st[ST.MISS_CAPACITY, layer] + col0
    access_layer(pk, cs, tv, p, layer, n, t)
    if decode:
        st[ST.DECODE_ACCESSES, layer] += n
        st[ST.DECODE_HITS, layer] += st[ST.HITS, layer] - hits0
        st[ST.DECODE_LATE_HITS, layer] += st[ST.LATE_HITS, layer] - late0
        st[ST.DECODE_MISS_COLLISION, layer] += st[ST.MISS_COLLISION, layer] - col0
        st[ST.DECODE_MISSES, layer] += (st[ST.MISS_COMPULSORY, layer] + st[ST.MISS_CAPACITY, layer]
                                        + st[ST.MISS_COLLISION, layer] - misses0)
    prefetch_layer(pk, cs, tv, p, layer, t)


@njit(cache=True, inline="always")
def partition_layer(pk, cs, tv, p: int, layer: int, t: float) -> None:
    cs.fc[FC.GATE_T] = t
    pk.partition(pk.s_partition, cs, tv, p, layer, t)


@njit(cache=True, inline="always")
def access_layer(pk, cs, tv, p: int, layer: int, n: int, t: float) -> None:
    """The layer's n entries (`cs.cur_key/cur_tokens/cur_mass`, written by the routing): each a hit (a late
    one when still in flight: a queued prefetch is promoted to demand), or a miss classified compulsory,
    capacity or collision and handled as the miss policy says (fetch: a demand copy takes a slot or waits;
    drop; substitute; run on the CPU). Every entry's key is protected until `release`."""
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
    sc[SC.NCUR] = n
    sc[SC.CURSOR] = 0
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
    stats_i[ST.ACCESSES, layer] += n
    mass_sum = stats_f[SF.MASS, layer]
    hits = 0
    useful = 0
    gpu_n = n  # the entries left on the GPU: all but the dropped ones and those routed to the CPU
    for i in range(n):
        key = cur_key[i]
        kx = ix(key)
        mass_sum += cur_mass[i]
        st = status[kx]
        if st in (RESIDENT, IN_FLIGHT):
            hits += 1
            if st == IN_FLIGHT:
                stats_i[ST.LATE_HITS, layer] += 1
                cs.late_flag[kx] = 1
                cs.late_gate_t[kx] = t
                if (cs.copy_state[kx] == COPY_QUEUED and cs.copy_prio[kx] == PREFETCH
                        and sc[SC.COPY_ORDER] == ORDER_DEMAND_FIRST):  # submitted copies keep their place
                    seq = sc[SC.SEQ]  # promote: the stale prefetch entry is skipped when popped
                    sc[SC.SEQ] = seq + 1
                    cs.copy_prio[kx] = DEMAND
                    cs.copy_seq[kx] = seq
                    copy_queue.push(cs, DEMAND, seq, key)
            # a first use of a prefetched expert, counted without a branch (about half of the hits
            # are one, in no predictable order)
            useful += pf_unused[kx]
            pf_unused[kx] = 0
            if cs.prec[kx] != 0:  # a hit on a lower-precision copy runs degraded too
                stats_i[ST.DEGRADED, layer] += 1
                stats_f[SF.DEGRADED_MASS, layer] += cur_mass[i]
            sc[SC.CLOCK] += 1
            pk.on_event(pk.s_eviction, cs, tv, EV_ACCESS, key, t)
            continue
        if sc[SC.MISS_EVENTS] != 0:
            pk.on_event(pk.s_eviction, cs, tv, EV_MISS, key, t)
        action = pk.on_miss(pk.s_miss, cs, tv, i, t)
        code = action & 15
        arg = action >> 4
        if code == MISS_DROP:
            stats_i[ST.DROPPED, layer] += 1
            stats_f[SF.DROPPED_MASS, layer] += cur_mass[i]
            cur_where[i] = SKIPPED
            cur_state[i] = E_DONE
            protect[kx] -= 1
            gpu_n -= 1
            continue
        if cs.referenced[kx] == 0:  # the key's first reference (the 3C model), loaded or not
            stats_i[ST.MISS_COMPULSORY, layer] += 1
            cs.referenced[kx] = 1
        elif cs.evict_pass[kx] == p:
            stats_i[ST.MISS_COLLISION, layer] += 1
        else:
            stats_i[ST.MISS_CAPACITY, layer] += 1
        if code == MISS_FETCH:
            if arg != 0:
                stats_i[ST.DEGRADED, layer] += 1
                stats_f[SF.DEGRADED_MASS, layer] += cur_mass[i]
            sc[SC.CLOCK] += 1
            issue_demand(pk, cs, tv, key, arg, t)
        elif code == MISS_SUBSTITUTE:
            stats_i[ST.SUBSTITUTED, layer] += 1
            stats_f[SF.SUBSTITUTED_MASS, layer] += cur_mass[i]
            cur_sub[i] = arg
            protect[arg] += 1
            protect[kx] -= 1
            sc[SC.CLOCK] += 1
            pk.on_event(pk.s_eviction, cs, tv, EV_ACCESS, arg, t)
        elif code == MISS_CPU:
            stats_i[ST.CPU_RUNS, layer] += 1
            cur_where[i] = ON_CPU
            sc[SC.CPU_PENDING] += 1
            protect[kx] -= 1
            gpu_n -= 1
    stats_i[ST.HITS, layer] += hits
    stats_i[ST.PF_USEFUL, layer] += useful
    stats_f[SF.MASS, layer] = mass_sum
    sc[SC.GPU_N] = gpu_n


@njit(cache=True, inline="always")
def prefetch_layer(pk, cs, tv, p: int, layer: int, t: float) -> None:
    """The prefetch policy's picks at the gate, each taking a slot or dropped."""
    n_pf = pk.prefetch(pk.s_prefetch, cs, tv, p, layer, t)
    pf_buf = cs.pf_buf
    for j in range(n_pf):
        issue_prefetch(pk, cs, tv, pf_buf[j], 0, t)


@njit(cache=True, inline="always")
def land(cs, key: int, t: float) -> None:
    """A copy has landed: the key is resident; a late hit's wait since its gate is booked."""
    kx = ix(key)
    cs.status[kx] = RESIDENT
    cs.copy_state[kx] = COPY_NONE
    landed = cs.sc[SC.LANDED]
    cs.landed[landed & (LANDED_LOG - 1)] = key
    cs.sc[SC.LANDED] = landed + 1
    # the wait of a late hit, added without a branch (late and timely copies come in no predictable
    # order): nothing else adds 0.0, a sum of waits (>= 0, from +0.0) is unchanged by it
    late = cs.late_flag[kx]
    cs.late_flag[kx] = 0
    cs.stats_f[SF.LATE_WAIT_S, ix(key_layer(cs, key))] += t - cs.late_gate_t[kx] if late == 1 else 0.0


@njit(cache=True, inline="always")
def release(cs, i: int) -> None:
    """Entry i of the current layer is done with its key: a GPU entry's key may be evicted again."""
    if cs.cur_where[ix(i)] == ON_GPU:
        sub = cs.cur_sub[ix(i)]
        cs.protect[ix(sub if sub >= 0 else cs.cur_key[ix(i)])] -= 1
        cs.sc[SC.RELEASED] += 1
