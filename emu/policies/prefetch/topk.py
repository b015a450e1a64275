"""Top-k prefetch with overfetch: fetch the `ceil(overfetch * top_k)` best-scored experts of layer l+1.

Scores are the speculator's predicted routing mass for layer l+1 (recorded predictions, or the seeded
stand-in with `accuracy`), plus a tiny popularity prior (each expert's share of past accesses at that
layer, times 1e-3) so that an overfetch beyond the predicted set takes the most used other experts.
State: `f[F.SCORES]` scores, `f[F.COUNTS, key]` access counts seen at gates; `i[I.SCALARS, C.RNG]` the RNG
state; `p[P.ACCURACY]`, `p[P.N_PICK]` (experts fetched).
Cost: O(tokens of the pass * top_k + n_experts * picks) per gate.
"""

from __future__ import annotations

import math
from enum import auto

from numba import njit

from ...kernel.helpers import predicted_layer_mass, push_top, seed_state
from ...kernel.hooks import PREFETCH_SIG, hook
from ...kernel.layout import SC, Fields, new_policy_state
from ..api import Capabilities, Param, Policy, PolicyContext, param_values, register

PRIOR = 1e-3


class I(Fields):
    """Rows of `ps.i` (score-percentile keeps the same rows: it shares `score_next_layer`)."""

    SCALARS = auto()  # the scalars, at the columns C


class C(Fields):
    """Columns of row I.SCALARS."""

    RNG = auto()  # splitmix64 state of the stand-in speculator


class F(Fields):
    """Rows of `ps.f` (score-percentile's first rows are the same)."""

    SCORES = auto()  # per expert: the next layer's scores
    COUNTS = auto()  # per key: access counts seen at gates


class P(Fields):
    """`ps.p`: the resolved parameters (param_values), `overfetch` as the experts fetched."""

    ACCURACY = auto()
    N_PICK = auto()  # ceil(overfetch * top_k)


def init(ctx: PolicyContext, params: dict[str, float]) -> object:
    n_pick = max(1, math.ceil(params["overfetch"] * ctx.top_k - 1e-9))
    ps = new_policy_state(f_rows=len(F), f_cols=max(ctx.n_experts, ctx.n_layers * ctx.n_experts),
                          i_rows=len(I), i_cols=len(C), params=param_values(P, {**params, "n_pick": n_pick}))
    ps.i[I.SCALARS, C.RNG] = seed_state(ctx.seed, 12)
    return ps


@njit(cache=True, _nrt=False)
def count_layer(ps, cs, layer: int, row: int) -> None:
    """Add the gate's routed token counts of the current layer to `f[row, key]`."""
    for j in range(cs.sc[SC.NCUR]):
        ps.f[row, cs.cur_key[j]] += cs.cur_tokens[j]


@njit(cache=True, _nrt=False)
def add_prior(ps, cs, target: int, row: int, scores) -> None:
    n_exp = cs.cur_key.shape[0]
    base = target * n_exp
    total = 0.0
    for e in range(n_exp):
        total += ps.f[row, base + e]
    if total > 0.0:
        for e in range(n_exp):
            scores[e] += PRIOR * ps.f[row, base + e] / total


@njit(cache=True, _nrt=False)
def score_next_layer(ps, cs, tv, p: int, layer: int, accuracy: float) -> int:
    """Learn from this gate, then score layer l+1 into `f[F.SCORES]`: predicted mass plus the popularity prior.

    Returns the scored layer, or -1 at the last layer (nothing to prefetch)."""
    count_layer(ps, cs, layer, F.COUNTS)
    target = layer + 1
    if target >= tv.experts.shape[1]:
        return -1
    n_exp = cs.cur_key.shape[0]
    scores = ps.f[F.SCORES, :n_exp]
    predicted_layer_mass(tv, p, target, accuracy, ps.i[I.SCALARS], C.RNG, scores)
    add_prior(ps, cs, target, F.COUNTS, scores)
    return target


@hook(PREFETCH_SIG)
def prefetch(ps, cs, tv, p, layer, t):
    target = score_next_layer(ps, cs, tv, p, layer, ps.p[P.ACCURACY])
    if target < 0:
        return 0
    return push_top(cs, ps.f[F.SCORES, : cs.cur_key.shape[0]], target, int(ps.p[P.N_PICK]), 0, 0.0)


POLICY = register(Policy(
    name="topk", kind="prefetch", hooks={"prefetch": prefetch}, init=init,
    capabilities=Capabilities(live=True),
    params={"overfetch": Param(1.0, 0.1, 64.0, "experts fetched = ceil(overfetch * top_k)"),
            "accuracy": Param(0.85, 0.0, 1.0, "stand-in speculator accuracy (no recorded predictions)")},
    doc="Prefetch the ceil(overfetch*top_k) highest predicted experts of the next layer."))
