"""Adaptive partition: each layer's floor follows its working set, max(TopK, working_set[l]) + 1.

The working set of layer l is the number of distinct experts the last `window` passes routed to at l
(measured online from passes already done). Eviction never takes a layer below its floor. When the
floors add up to more than the cache can guarantee (`slots - top_k`, so the layer that needs room
always finds it) they are scaled down together. A warning names the layers whose guaranteed share
cannot reach TopK even at the smallest target.
State: `i[0, key]` the last pass that used the key (from the trace, passes before now), `i[1, l]` the
target of layer l, `i[2, 0]` the sum of targets. Cost: O(tokens * top_k + E + L) per gate.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ...engines.state import new_policy_state
from ..api import KERNEL_SIG, Param, Policy, PolicyContext
from .budget import safe_floor, slots, warn_below_top_k


def init(ctx: PolicyContext, params: dict[str, float]) -> object:
    n = ctx.n_layers * ctx.n_experts
    floor = safe_floor(ctx, ctx.top_k + 1)
    warn_below_top_k(ctx, [floor] * ctx.n_layers, "adaptive", "the guaranteed share")
    budget = max(0, slots(ctx) - ctx.top_k) if ctx.n_layers > 1 else slots(ctx)
    ps = new_policy_state(i_rows=3, i_cols=max(n, ctx.n_layers, 1),
                          params=(params["window"], float(budget), float(ctx.top_k)))
    ps.i[0, :] = -1
    ps.i[1, : ctx.n_layers] = ctx.top_k + 1
    ps.i[2, 0] = (ctx.top_k + 1) * ctx.n_layers
    return ps


@njit(KERNEL_SIG, cache=True, _nrt=False)
def partition(ps, cs, tv, p, layer, t):
    n_exp = cs.cur_key.shape[0]
    n_layers = cs.layer_floor.shape[0]
    base = layer * n_exp
    window = int(ps.p[0])
    if p > 0:
        for tok in range(tv.pass_offsets[p - 1], tv.pass_offsets[p]):
            for s in range(tv.experts.shape[2]):
                ps.i[0, base + np.int64(tv.experts[tok, layer, s])] = p - 1
    ws = 0
    for e in range(n_exp):
        if ps.i[0, base + e] >= 0 and ps.i[0, base + e] >= p - window:
            ws += 1
    target = max(int(ps.p[2]), ws) + 1
    ps.i[2, 0] += target - ps.i[1, layer]
    ps.i[1, layer] = target
    budget = ps.p[1]
    total = ps.i[2, 0]
    scale = 1.0 if total <= budget else budget / total
    for v in range(n_layers):
        cs.layer_floor[v] = int(ps.i[1, v] * scale)
    return 0


POLICY = Policy(name="adaptive", kind="partition", kernels=(partition,), init=init,
                params={"window": Param(8, 1, 1e9, "passes over which a layer's working set is measured",
                                        integer=True)},
                doc="Per-layer floor max(TopK, working set) + 1, measured online over a window of passes.")
