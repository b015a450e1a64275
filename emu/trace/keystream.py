"""Plain key-stream caches over a trace: the access streams and exact LRU, Belady (OPT) and LFU miss counts.

Access stream: per MoE layer and pass, the distinct experts the pass's tokens route to, in order of first
appearance (token order, then top-k slot): what a cache of that layer is asked for, once per expert and
pass, and the stream `emu workingset` uses. `layer_stream` is one layer's stream (an isolated per-layer
cache); `global_stream` is every layer's, keys `layer * n_experts + expert`, in pass then layer order (one
cache shared by all layers).

LRU and Belady's MIN are stack algorithms (Mattson, Gecsei, Slutz, Traiger 1970): each access has a stack
distance d (0 for a first use), and it hits a cache of c slots exactly when 1 <= d <= c, so one pass over
the stream gives the miss count at every capacity. LRU's stack is move-to-front. OPT's stack is ordered by
next use: the accessed key goes on top, and the key carried down from the top swaps, depth by depth, with
each key it meets that is used later than itself, until the carried key fills the accessed key's old depth
(or the bottom, on a first use). Misses at c slots then equal Belady's MIN with c slots (demand
insertion, no bypass): tests check it against `belady_misses`, a direct simulation. LFU is not a stack
algorithm, so `lfu_misses` simulates one capacity at a time.

No timing, prefetch or protection of the current layer's experts: these are bounds and references for the
stream, not the emulator's engines (whose `belady` policy also protects the experts of the layer now
computing, so the two differ only at capacities below one pass's distinct experts).
"""

from __future__ import annotations

import numba
import numpy as np

from .routing_trace import RoutingTrace

#: the next use of a key that is never used again
NEVER = np.iinfo(np.int64).max


@numba.njit(cache=True)
def _layer_stream(experts: np.ndarray, pass_offsets: np.ndarray, layer: int,
                  n_exp: int) -> tuple[np.ndarray, np.ndarray]:
    n_pass = pass_offsets.shape[0] - 1
    top_k = experts.shape[2]
    bound = 0
    for p in range(n_pass):
        bound += min(n_exp, (pass_offsets[p + 1] - pass_offsets[p]) * top_k)
    keys = np.empty(bound, np.int64)
    when = np.empty(bound, np.int64)
    stamp = np.full(n_exp, -1, np.int64)
    n = 0
    for p in range(n_pass):
        for t in range(pass_offsets[p], pass_offsets[p + 1]):
            for k in range(top_k):
                e = experts[t, layer, k]
                if stamp[e] != p:
                    stamp[e] = p
                    keys[n] = e
                    when[n] = p
                    n += 1
    return keys[:n], when[:n]


@numba.njit(cache=True)
def _global_stream(experts: np.ndarray, pass_offsets: np.ndarray, n_exp: int) -> np.ndarray:
    n_pass = pass_offsets.shape[0] - 1
    n_layers = experts.shape[1]
    top_k = experts.shape[2]
    bound = 0
    for p in range(n_pass):
        bound += n_layers * min(n_exp, (pass_offsets[p + 1] - pass_offsets[p]) * top_k)
    keys = np.empty(bound, np.int64)
    stamp = np.full(n_layers * n_exp, -1, np.int64)
    n = 0
    for p in range(n_pass):
        for layer in range(n_layers):
            for t in range(pass_offsets[p], pass_offsets[p + 1]):
                for k in range(top_k):
                    key = layer * n_exp + experts[t, layer, k]
                    if stamp[key] != p:
                        stamp[key] = p
                        keys[n] = key
                        n += 1
    return keys[:n]


def n_experts_of(trace: RoutingTrace) -> int:
    """Experts per layer: the trace's declared count, or the largest id + 1 when it declares none."""
    return max(trace.n_experts, int(trace.experts.max()) + 1 if trace.n_tokens else 1)


def layer_stream(trace: RoutingTrace, layer: int) -> tuple[np.ndarray, np.ndarray]:
    """(expert, pass) of every access of `layer`'s stream, in order."""
    return _layer_stream(np.ascontiguousarray(trace.experts), np.ascontiguousarray(trace.pass_offsets, np.int64),
                         layer, n_experts_of(trace))


def global_stream(trace: RoutingTrace) -> np.ndarray:
    """Keys `layer * n_experts + expert` of the all-layer stream, in pass then layer order."""
    return _global_stream(np.ascontiguousarray(trace.experts),
                          np.ascontiguousarray(trace.pass_offsets, np.int64), n_experts_of(trace))


@numba.njit(cache=True)
def next_use(keys: np.ndarray, n_keys: int) -> np.ndarray:
    """nxt[i] = index of the next access to keys[i] after i, NEVER if none."""
    nxt = np.empty(keys.shape[0], np.int64)
    seen = np.full(n_keys, NEVER, np.int64)
    for i in range(keys.shape[0] - 1, -1, -1):
        nxt[i] = seen[keys[i]]
        seen[keys[i]] = i
    return nxt


@numba.njit(cache=True, inline="always")
def _depth_of(stack: np.ndarray, depth: int, key: int) -> int:
    """The key's position in the first `depth` entries of a stack, or -1."""
    for j in range(depth):
        if stack[j] == key:
            return j
    return -1


@numba.njit(cache=True)
def lru_distances(keys: np.ndarray, n_keys: int) -> np.ndarray:
    """LRU stack distance of every access (1-based depth in the move-to-front stack; 0 for a first use)."""
    stack = np.empty(n_keys, np.int64)
    depth = 0
    dist = np.zeros(keys.shape[0], np.int64)
    for i in range(keys.shape[0]):
        e = keys[i]
        pos = _depth_of(stack, depth, e)
        if pos < 0:
            pos = depth
            depth += 1
        else:
            dist[i] = pos + 1
        for j in range(pos, 0, -1):
            stack[j] = stack[j - 1]
        stack[0] = e
    return dist


@numba.njit(cache=True)
def opt_distances(keys: np.ndarray, n_keys: int) -> np.ndarray:
    """OPT (Belady's MIN) stack distance of every access (0 for a first use): Mattson's priority stack with
    priority = next use, earlier first."""
    nxt = next_use(keys, n_keys)
    prio = np.full(n_keys, NEVER, np.int64)
    stack = np.empty(n_keys, np.int64)
    depth = 0
    dist = np.zeros(keys.shape[0], np.int64)
    for i in range(keys.shape[0]):
        x = keys[i]
        pos = _depth_of(stack, depth, x)
        prio[x] = nxt[i]
        if pos == 0:
            dist[i] = 1
            continue
        if pos < 0:
            end = depth
            depth += 1
            if end == 0:  # the first access: an empty stack
                stack[0] = x
                continue
        else:
            dist[i] = pos + 1
            end = pos
        carried = stack[0]
        stack[0] = x
        for j in range(1, end):
            cur = stack[j]
            if prio[carried] < prio[cur]:  # the carried key is needed sooner: it stays, cur goes down
                stack[j] = carried
                carried = cur
        stack[end] = carried
    return dist


def miss_curve(dist: np.ndarray, n_keys: int) -> np.ndarray:
    """misses[c - 1] at c = 1..n_keys slots from stack distances: first uses plus accesses deeper than c."""
    hist = np.bincount(dist, minlength=n_keys + 1)
    return dist.shape[0] - np.cumsum(hist[1:])


@numba.njit(cache=True)
def belady_misses(keys: np.ndarray, n_keys: int, slots: int) -> int:
    """Belady's MIN simulated directly: on a miss with a full cache, evict the resident key used farthest
    in the future (never used again first; ties: the lower key)."""
    nxt = next_use(keys, n_keys)
    resident = np.full(n_keys, False)
    members = np.empty(slots, np.int64)
    upcoming = np.empty(slots, np.int64)
    size = 0
    misses = 0
    for i in range(keys.shape[0]):
        x = keys[i]
        if resident[x]:
            for j in range(size):
                if members[j] == x:
                    upcoming[j] = nxt[i]
                    break
            continue
        misses += 1
        if size < slots:
            members[size] = x
            upcoming[size] = nxt[i]
            size += 1
        else:
            worst = 0
            for j in range(1, size):
                if upcoming[j] > upcoming[worst] or (upcoming[j] == upcoming[worst] and members[j] < members[worst]):
                    worst = j
            resident[members[worst]] = False
            members[worst] = x
            upcoming[worst] = nxt[i]
        resident[x] = True
    return misses


@numba.njit(cache=True)
def lfu_misses(keys: np.ndarray, n_keys: int, slots: int, keep_counts: bool) -> int:
    """LFU at `slots` slots: evict the resident key with the fewest accesses (ties: least recently used, then
    the lower key). keep_counts: a key's count runs over the whole stream, kept across evictions (the
    emulator's `lfu` policy, "perfect LFU"); else it restarts at 1 when the key is inserted again (in-cache
    LFU). A miss counts as an access of the inserted key."""
    count = np.zeros(n_keys, np.int64)
    last = np.zeros(n_keys, np.int64)
    resident = np.full(n_keys, False)
    members = np.empty(slots, np.int64)
    size = 0
    misses = 0
    for i in range(keys.shape[0]):
        x = keys[i]
        last[x] = i
        if resident[x]:
            count[x] += 1
            continue
        misses += 1
        count[x] = count[x] + 1 if keep_counts else 1
        if size < slots:
            members[size] = x
            size += 1
        else:
            worst = 0
            for j in range(1, size):
                a = members[j]
                b = members[worst]
                if count[a] < count[b] or (count[a] == count[b] and (
                        last[a] < last[b] or (last[a] == last[b] and a < b))):
                    worst = j
            resident[members[worst]] = False
            members[worst] = x
        resident[x] = True
    return misses


@numba.njit(cache=True)
def lru_misses(keys: np.ndarray, n_keys: int, slots: int) -> int:
    """LRU at `slots` slots, simulated directly (a check on the stack distances)."""
    last = np.zeros(n_keys, np.int64)
    resident = np.full(n_keys, False)
    members = np.empty(slots, np.int64)
    size = 0
    misses = 0
    for i in range(keys.shape[0]):
        x = keys[i]
        if not resident[x]:
            misses += 1
            if size < slots:
                members[size] = x
                size += 1
            else:
                worst = 0
                for j in range(1, size):
                    if last[members[j]] < last[members[worst]]:
                        worst = j
                resident[members[worst]] = False
                members[worst] = x
            resident[x] = True
        last[x] = i
    return misses


@numba.njit(cache=True)
def reuse_gaps(keys: np.ndarray, when: np.ndarray, n_keys: int) -> np.ndarray:
    """Per access: passes since the previous access to the same key (`when` is each access's pass), -1 for a
    first use."""
    last = np.full(n_keys, -1, np.int64)
    gaps = np.full(keys.shape[0], -1, np.int64)
    for i in range(keys.shape[0]):
        x = keys[i]
        if last[x] >= 0:
            gaps[i] = when[i] - last[x]
        last[x] = when[i]
    return gaps
