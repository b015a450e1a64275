"""Adaptive partition: each layer's floor follows its working set, max(TopK, working_set[l]) + 1.

The working set of layer l is the number of distinct experts the last `window` passes routed to at l
(measured online from passes already done). Eviction never takes a layer below its floor. When the
floors add up to more than the cache can guarantee (`slots - top_k`, so the layer that needs room
always finds it) they are scaled down together. A warning names the layers whose guaranteed share
cannot reach TopK even at the smallest target.
State: `i[I.LAST_PASS, key]` the last pass that used the key (from the trace, passes before now),
`i[I.TARGET, l]` the target of layer l, `i[I.SCALARS, C.TOTAL]` the sum of targets; `p[P.WINDOW]`,
`p[P.BUDGET]` (the slots the floors may guarantee together), `p[P.TOP_K]`.
Cost: O(tokens * top_k + E + L) per gate.
"""

from __future__ import annotations

from enum import auto

from ...kernel.helpers import expert_id
from ...kernel.hooks import PARTITION_SIG, hook
from ...kernel.layout import Fields, new_policy_state
from ..api import Capabilities, Param, Policy, PolicyContext, param_values, register
from .budget import safe_floor, slots, warn_below_top_k


class I(Fields):
    """Rows of `ps.i`."""

    LAST_PASS = auto()  # per key: the last pass that used it (-1: none)
    TARGET = auto()  # per layer: its target floor (before scaling)
    SCALARS = auto()  # the scalars, at the columns C


class C(Fields):
    """Columns of row I.SCALARS."""

    TOTAL = auto()  # the sum of the targets


class P(Fields):
    """`ps.p`: the resolved parameters (param_values) and two sizes from init."""

    WINDOW = auto()
    BUDGET = auto()  # slots the floors may guarantee together
    TOP_K = auto()


def init(ctx: PolicyContext, params: dict[str, float]) -> object:
    n = ctx.n_layers * ctx.n_experts
    floor = safe_floor(ctx, ctx.top_k + 1)
    warn_below_top_k(ctx, [floor] * ctx.n_layers, "adaptive", "the guaranteed share")
    budget = max(0, slots(ctx) - ctx.top_k) if ctx.n_layers > 1 else slots(ctx)
    ps = new_policy_state(i_rows=len(I), i_cols=max(n, ctx.n_layers, len(C)),
                          params=param_values(P, {**params, "budget": budget, "top_k": ctx.top_k}))
    ps.i[I.LAST_PASS, :] = -1
    ps.i[I.TARGET, : ctx.n_layers] = ctx.top_k + 1
    ps.i[I.SCALARS, C.TOTAL] = (ctx.top_k + 1) * ctx.n_layers
    return ps


@hook(PARTITION_SIG)
def partition(ps, cs, tv, p, layer, t):
    n_exp = cs.cur_key.shape[0]
    n_layers = cs.layer_floor.shape[0]
    base = layer * n_exp
    window = int(ps.p[P.WINDOW])
    if p > 0:
        for tok in range(tv.pass_offsets[p - 1], tv.pass_offsets[p]):
            for s in range(tv.experts.shape[2]):
                ps.i[I.LAST_PASS, base + expert_id(tv, tok, layer, s)] = p - 1
    ws = 0
    for e in range(n_exp):
        if ps.i[I.LAST_PASS, base + e] >= 0 and ps.i[I.LAST_PASS, base + e] >= p - window:
            ws += 1
    target = max(int(ps.p[P.TOP_K]), ws) + 1
    ps.i[I.SCALARS, C.TOTAL] += target - ps.i[I.TARGET, layer]
    ps.i[I.TARGET, layer] = target
    budget = ps.p[P.BUDGET]
    total = ps.i[I.SCALARS, C.TOTAL]
    scale = 1.0 if total <= budget else budget / total
    for v in range(n_layers):
        cs.layer_floor[v] = int(ps.i[I.TARGET, v] * scale)
    return 0


POLICY = register(Policy(
    name="adaptive", kind="partition", hooks={"partition": partition}, init=init,
    capabilities=Capabilities(partition_aware=True),
    params={"window": Param(8, 1, 1e9, "passes over which a layer's working set is measured", integer=True)},
    doc="Per-layer floor max(TopK, working set) + 1, measured online over a window of passes."))
