"""Belady's MIN: evict the expert whose next use lies farthest in the future (the offline optimum).

It reads the whole trace at init, so it is the bound every online policy is measured against, not a
policy a real system could run. Time is the position `pass * L + layer` of the forward pass; a key
(l, e) is used at position `p * L + l` for every pass p whose tokens route to e at layer l. The core
always knows where the forward pass is (`sc[SC_PASS]`, `sc[SC_LAYER]`), which is the cursor.

With uniform expert sizes, demand fetches and a cache that holds the distinct experts of any one
(pass, layer), this is optimal under the engine's rules: the keys of the layer now computing are
protected (never candidates), every other resident key's next use is strictly after the current
position, and evicting the farthest one is the classic exchange argument applied to a request sequence
of sets. When one layer needs more experts than the cache holds, its own experts evict each other while
it computes, in the engine's compute order (resident first, lowest id first), which pass-level next use
cannot see; there an online policy can beat it by luck (tests/test_policies_belady_property.py has a
case). Under a routing policy that changes the trace's choices (cache-aware), with prefetch or with
mixed precisions it is the trace-informed heuristic, no longer a proven bound.

State (all in `i`, one row used as a flat arena): `uses` = every key's use positions in increasing order
(CSR), `offsets[key]`, `cursor[key]` (index of the first use not yet passed; it only moves forward),
and the resident set (members, positions).
Cost: init O(trace); per victim O(resident) with amortised O(1) cursor advances.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ...engines.core import is_evictable
from ...engines.state import SC_LAYER, SC_PASS, new_policy_state
from ..api import EV_EVICT, EV_INSERT, KERNEL_SIG, Policy, PolicyContext
from ..kernel_util import set_add, set_remove, set_size

# arena layout: [0] n_keys, [1] off_offsets, [2] off_cursor, [3] off_members, [4] off_pos, [5] off_uses
_HDR = 8
_NEVER = np.iinfo(np.int64).max


@njit(cache=True)
def _count_uses(experts: np.ndarray, offsets_pass: np.ndarray, n_exp: int) -> np.ndarray:
    n_layers = experts.shape[1]
    k = experts.shape[2]
    counts = np.zeros(n_layers * n_exp, np.int64)
    seen = np.full(n_layers * n_exp, -1, np.int64)
    for p in range(offsets_pass.shape[0] - 1):
        for tok in range(offsets_pass[p], offsets_pass[p + 1]):
            for layer in range(n_layers):
                for s in range(k):
                    key = layer * n_exp + np.int64(experts[tok, layer, s])
                    if seen[key] != p:
                        seen[key] = p
                        counts[key] += 1
    return counts


@njit(cache=True)
def _fill_uses(experts: np.ndarray, offsets_pass: np.ndarray, n_exp: int, offsets: np.ndarray,
               uses: np.ndarray) -> None:
    n_layers = experts.shape[1]
    k = experts.shape[2]
    fill = offsets[:-1].copy()
    seen = np.full(n_layers * n_exp, -1, np.int64)
    for p in range(offsets_pass.shape[0] - 1):
        for tok in range(offsets_pass[p], offsets_pass[p + 1]):
            for layer in range(n_layers):
                for s in range(k):
                    key = layer * n_exp + np.int64(experts[tok, layer, s])
                    if seen[key] != p:
                        seen[key] = p
                        uses[fill[key]] = p * n_layers + layer
                        fill[key] += 1


def init(ctx: PolicyContext, params: dict[str, float]) -> object:
    tv = ctx.trace
    n = ctx.n_layers * ctx.n_experts
    counts = _count_uses(tv.experts, tv.pass_offsets, ctx.n_experts)
    offsets = np.zeros(n + 1, np.int64)
    np.cumsum(counts, out=offsets[1:])
    m = int(offsets[-1])
    o_off = _HDR
    o_cur = o_off + n + 1
    o_mem = o_cur + n
    o_pos = o_mem + n + 1
    o_use = o_pos + n + 1
    ps = new_policy_state(i_rows=1, i_cols=o_use + m)
    a = ps.i[0]
    a[:5] = (n, o_off, o_cur, o_mem, o_pos)
    a[5] = o_use
    a[o_off:o_cur] = offsets
    a[o_cur:o_mem] = offsets[:-1]
    a[o_mem:o_pos] = -1
    a[o_pos:o_use] = -1
    a[o_use - 1] = 0  # resident count lives in pos[n]
    _fill_uses(tv.experts, tv.pass_offsets, ctx.n_experts, offsets, a[o_use:])
    return ps


@njit(cache=True)
def _views(ps):
    a = ps.i[0]
    n = a[0]
    return a[a[1]:a[1] + n + 1], a[a[2]:a[2] + n], a[a[3]:a[3] + n + 1], a[a[4]:a[4] + n + 1], a[a[5]:]


@njit(KERNEL_SIG, cache=True)
def event(ps, cs, tv, ev, key, t):
    _off, _cur, members, pos, _uses = _views(ps)
    if ev == EV_INSERT:
        set_add(members, pos, key)
    elif ev == EV_EVICT:
        set_remove(members, pos, key)
    return 0


@njit(cache=True)
def next_use(ps, key: int, now: int) -> int:
    """First use position of `key` strictly after `now` (advancing the key's cursor), or never."""
    off, cur, _members, _pos, uses = _views(ps)
    c = cur[key]
    end = off[key + 1]
    while c < end and uses[c] <= now:
        c += 1
    cur[key] = c
    return uses[c] if c < end else _NEVER


@njit(KERNEL_SIG, cache=True)
def victim(ps, cs, tv, in_layer, _b, t):
    _off, _cur, members, pos, _uses = _views(ps)
    n_layers = cs.layer_count.shape[0]
    now = cs.sc[SC_PASS] * n_layers + cs.sc[SC_LAYER]
    best = -1
    best_use = -1
    for j in range(set_size(pos)):
        key = members[j]
        if not is_evictable(cs, key, in_layer):
            continue
        u = next_use(ps, key, now)
        if u > best_use or (u == best_use and key < best):
            best = key
            best_use = u
    return best


POLICY = Policy(name="belady", kind="eviction", kernels=(victim, event), init=init,
                doc="Offline optimum: evict the expert whose next use is farthest (reads the whole trace).")
