"""Score-percentile prefetch (SpecMD's dynamic, score-based prefetch; default p = 80): at layer l's gate, fetch
experts of layer l+1 by their predicted scores, by one of two readings of "above the p-th percentile".

SpecMD 3.1.4, the sentences implemented: "Following Zhu et al. (2025), this strategy filters experts by softmax
score rather than fixed top-k count and prefetch all experts above a configurable percentile threshold (the
default is 80th percentile). Unlike top-k approaches, this method adapts the number of prefetched experts based
on score distribution."; 5.3: "the score-based approach more effectively adapts the number of experts to
prefetch on a per-layer basis".
- `mass` 0 (the default, kept so bundled scenarios are unchanged): every expert whose score is above the p-th
  percentile of the layer's E scores. With distinct scores this is a fixed share of the experts, about
  (1 - p/100) * E whatever the distribution (at batch 1, where the popularity prior makes the scores distinct, a
  fixed-count top-k): it does not adapt as the text says.
- `mass` 1 (the text's reading): the fewest highest-scored experts whose scores add up to at least p% of the
  layer's total predicted score: a peaked prediction (one expert holding p%) fetches one expert, a flat one
  fetches many, and each layer (each gate) gets its own count. Ties at the boundary go to the lower id
  (`push_top`'s order); p = 0 fetches nothing, p = 100 every expert with a score > 0.
Scores as in `topk`: the speculator's predicted routing mass for layer l+1 (recorded predictions, or the seeded
stand-in with `accuracy`) plus a tiny popularity prior. The trace records only each token's top-k gate scores,
not the full softmax the paper filters, so with `mass` 1 the share is of the predicted top-k mass (plus the
prior's at most 1e-3), and a token's experts beyond its top k are never candidates on their own mass.
State: topk's rows (`score_next_layer` fills them): `f[F.SCORES]` scores, `f[F.COUNTS, key]` access counts
seen at gates, `i[I.SCALARS, C.RNG]` the RNG state; then `f[F.SCRATCH]`; `p[P.PERCENTILE]`, `p[P.ACCURACY]`,
`p[P.MASS]`.
Cost: O(tokens * top_k + n_experts^2) worst case per gate (insertion sort of the layer's scores).
"""

from __future__ import annotations

from enum import auto

import numpy as np
from numba import njit

from ...kernel.helpers import percentile_inplace, push_top, seed_state, sort_prefix
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
    MASS = auto()  # 0: percentile of the experts' scores; 1: share of the layer's score mass


def init(ctx: PolicyContext, params: dict[str, float]) -> object:
    ps = new_policy_state(f_rows=len(F), f_cols=max(ctx.n_experts, ctx.n_layers * ctx.n_experts),
                          i_rows=len(I), i_cols=len(C), params=param_values(P, params))
    ps.i[I.SCALARS, C.RNG] = seed_state(ctx.seed, 13)
    return ps


@njit(cache=True, _nrt=False)
def mass_share_count(buf: np.ndarray, n: int, q: float) -> int:
    """The fewest of the highest values of buf[:n] (sorted in place) whose sum reaches q% of the sum of the
    positive ones; only positive values count."""
    sort_prefix(buf, n)
    total = 0.0
    for a in range(n - 1, -1, -1):  # the same order as the running sum below, so q = 100 reaches it exactly
        if buf[a] > 0.0:
            total += buf[a]
    goal = q / 100.0 * total
    taken = 0
    acc = 0.0
    a = n - 1
    while a >= 0 and buf[a] > 0.0 and acc < goal:
        acc += buf[a]
        taken += 1
        a -= 1
    return taken


@hook(PREFETCH_SIG, nrt=True)
def prefetch(ps, cs, tv, p, layer, t):
    target = score_next_layer(ps, cs, tv, p, layer, ps.p[P.ACCURACY])
    if target < 0:
        return 0
    n_exp = cs.cur_key.shape[0]
    scores = ps.f[F.SCORES, :n_exp]
    tmp = ps.f[F.SCRATCH, :n_exp]
    tmp[:] = scores
    if ps.p[P.MASS] != 0.0:
        return push_top(cs, scores, target, mass_share_count(tmp, n_exp, ps.p[P.PERCENTILE]), 0, 0.0)
    threshold = percentile_inplace(tmp, n_exp, ps.p[P.PERCENTILE])
    return push_top(cs, scores, target, n_exp, 0, max(threshold, 0.0))


POLICY = register(Policy(
    name="score-percentile", kind="prefetch", hooks={"prefetch": prefetch}, init=init,
    capabilities=Capabilities(live=True),
    params={"percentile": Param(80.0, 0.0, 100.0, "prefetch experts scored above this percentile"),
            "accuracy": Param(0.85, 0.0, 1.0, "stand-in speculator accuracy (no recorded predictions)"),
            "mass": Param(0, 0, 1, "0: experts scored above the p-th percentile of the layer's scores (a fixed "
                                   "share of the experts); 1: the fewest best experts holding p% of the layer's "
                                   "predicted score mass (SpecMD's per-layer adaptive count)", integer=True)},
    doc="Prefetch next-layer experts whose predicted score is above the p-th percentile (mass=1: the best "
        "experts holding p% of the predicted score mass)."))
