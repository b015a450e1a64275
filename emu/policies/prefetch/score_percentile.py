"""Score-percentile prefetch: fetch every expert of layer l+1 whose predicted score is above the p-th
percentile of that layer's predicted scores (SpecMD's dynamic, score-based prefetch; default p = 80).

Scores as in `topk` (speculator mass plus a tiny popularity prior), so the threshold adapts to how
peaked the prediction is: a confident prediction fetches few experts, a flat one fetches more.
State: topk's rows (`score_next_layer` fills them): `f[F.SCORES]` scores, `f[F.COUNTS, key]` access counts
seen at gates, `i[I.SCALARS, C.RNG]` the RNG state; then `f[F.SCRATCH]`; `p[P.PERCENTILE]`, `p[P.ACCURACY]`.
Cost: O(tokens * top_k + n_experts log n_experts) per gate.
"""

from __future__ import annotations

from enum import auto

from ...kernel.helpers import percentile_inplace, push_top, seed_state
from ...kernel.hooks import PREFETCH_SIG, hook
from ...kernel.layout import Fields, new_policy_state
from ..api import Capabilities, Param, Policy, PolicyContext, param_values, register
from .topk import C, I, score_next_layer


class F(Fields):
    """Rows of `ps.f`: topk's (SCORES, COUNTS, as `score_next_layer` reads them), then a scratch row."""

    SCORES = auto()  # per expert: the next layer's scores
    COUNTS = auto()  # per key: access counts seen at gates
    SCRATCH = auto()  # the scores, sorted for the percentile


class P(Fields):
    """`ps.p`: the resolved parameters (param_values)."""

    PERCENTILE = auto()
    ACCURACY = auto()


def init(ctx: PolicyContext, params: dict[str, float]) -> object:
    ps = new_policy_state(f_rows=len(F), f_cols=max(ctx.n_experts, ctx.n_layers * ctx.n_experts),
                          i_rows=len(I), i_cols=len(C), params=param_values(P, params))
    ps.i[I.SCALARS, C.RNG] = seed_state(ctx.seed, 13)
    return ps


@hook(PREFETCH_SIG, nrt=True)
def prefetch(ps, cs, tv, p, layer, t):
    target = score_next_layer(ps, cs, tv, p, layer, ps.p[P.ACCURACY])
    if target < 0:
        return 0
    n_exp = cs.cur_key.shape[0]
    scores = ps.f[F.SCORES, :n_exp]
    tmp = ps.f[F.SCRATCH, :n_exp]
    tmp[:] = scores
    threshold = percentile_inplace(tmp, n_exp, ps.p[P.PERCENTILE])
    return push_top(cs, scores, target, n_exp, 0, max(threshold, 0.0))


POLICY = register(Policy(
    name="score-percentile", kind="prefetch", hooks={"prefetch": prefetch}, init=init,
    capabilities=Capabilities(live=True),
    params={"percentile": Param(80.0, 0.0, 100.0, "prefetch experts scored above this percentile"),
            "accuracy": Param(0.85, 0.0, 1.0, "stand-in speculator accuracy (no recorded predictions)")},
    doc="Prefetch next-layer experts whose predicted score is above the p-th percentile."))
