"""Score-percentile prefetch: fetch every expert of layer l+1 whose predicted score is above the p-th
percentile of that layer's predicted scores (SpecMD's dynamic, score-based prefetch; default p = 80).

Scores as in `topk` (speculator mass plus a tiny popularity prior), so the threshold adapts to how
peaked the prediction is: a confident prediction fetches few experts, a flat one fetches more.
State: `f[0]` scores, `f[1, key]` access counts seen at gates, `f[2]` scratch; `i[0, 0]` RNG state.
Cost: O(tokens * top_k + n_experts log n_experts) per gate.
"""

from __future__ import annotations

from numba import njit

from ...engines.state import new_policy_state
from ..api import KERNEL_SIG, Param, Policy, PolicyContext
from ..kernel_util import percentile_inplace, push_top, seed_state
from .topk import score_next_layer


def init(ctx: PolicyContext, params: dict[str, float]) -> object:
    ps = new_policy_state(f_rows=3, f_cols=max(ctx.n_experts, ctx.n_layers * ctx.n_experts), i_rows=1,
                          i_cols=1, params=(params["percentile"], params["accuracy"]))
    ps.i[0, 0] = seed_state(ctx.seed, 13)
    return ps


@njit(KERNEL_SIG, cache=True)
def prefetch(ps, cs, tv, p, layer, t):
    target = score_next_layer(ps, cs, tv, p, layer, ps.p[1])
    if target < 0:
        return 0
    n_exp = cs.cur_key.shape[0]
    scores = ps.f[0, :n_exp]
    tmp = ps.f[2, :n_exp]
    tmp[:] = scores
    threshold = percentile_inplace(tmp, n_exp, ps.p[0])
    return push_top(cs, scores, target, n_exp, 0, max(threshold, 0.0))


POLICY = Policy(
    name="score-percentile", kind="prefetch", kernels=(prefetch,), init=init,
    params={"percentile": Param(80.0, 0.0, 100.0, "prefetch experts scored above this percentile"),
            "accuracy": Param(0.85, 0.0, 1.0, "stand-in speculator accuracy (no recorded predictions)")},
    doc="Prefetch next-layer experts whose predicted score is above the p-th percentile.")
