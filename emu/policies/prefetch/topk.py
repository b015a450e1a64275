"""Top-k prefetch with overfetch: fetch the `ceil(overfetch * top_k)` best-scored experts of layer l+1.

Scores are the speculator's predicted routing mass for layer l+1 (recorded predictions, or the seeded
stand-in with `accuracy`), plus a tiny popularity prior (each expert's share of past accesses at that
layer, times 1e-3) so that an overfetch beyond the predicted set takes the most used other experts.
State: `f[0]` scores, `f[1, key]` access counts seen at gates; `i[0, 0]` RNG state.
Cost: O(tokens of the pass * top_k + n_experts * picks) per gate.
"""

from __future__ import annotations

import math

from numba import njit

from ...engines.state import SC_NCUR, new_policy_state
from ..api import KERNEL_SIG, Param, Policy, PolicyContext
from ..kernel_util import predicted_layer_mass, push_top, seed_state

PRIOR = 1e-3


def init(ctx: PolicyContext, params: dict[str, float]) -> object:
    n_pick = max(1, math.ceil(params["overfetch"] * ctx.top_k - 1e-9))
    ps = new_policy_state(f_rows=2, f_cols=max(ctx.n_experts, ctx.n_layers * ctx.n_experts), i_rows=1,
                          i_cols=1, params=(params["accuracy"], float(n_pick)))
    ps.i[0, 0] = seed_state(ctx.seed, 12)
    return ps


@njit(cache=True, _nrt=False)
def count_layer(ps, cs, layer: int, row: int) -> None:
    """Add the gate's routed token counts of the current layer to `f[row, key]`."""
    for j in range(cs.sc[SC_NCUR]):
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
    """Learn from this gate, then score layer l+1 into `f[0]`: predicted mass plus the popularity prior.

    Returns the scored layer, or -1 at the last layer (nothing to prefetch)."""
    count_layer(ps, cs, layer, 1)
    target = layer + 1
    if target >= tv.experts.shape[1]:
        return -1
    n_exp = cs.cur_key.shape[0]
    scores = ps.f[0, :n_exp]
    predicted_layer_mass(tv, p, target, accuracy, ps.i[0], 0, scores)
    add_prior(ps, cs, target, 1, scores)
    return target


@njit(KERNEL_SIG, cache=True, _nrt=False)
def prefetch(ps, cs, tv, p, layer, t):
    target = score_next_layer(ps, cs, tv, p, layer, ps.p[0])
    if target < 0:
        return 0
    return push_top(cs, ps.f[0, : cs.cur_key.shape[0]], target, int(ps.p[1]), 0, 0.0)


POLICY = Policy(
    name="topk", kind="prefetch", kernels=(prefetch,), init=init,
    params={"overfetch": Param(1.0, 0.1, 64.0, "experts fetched = ceil(overfetch * top_k)"),
            "accuracy": Param(0.85, 0.0, 1.0, "stand-in speculator accuracy (no recorded predictions)")},
    doc="Prefetch the ceil(overfetch*top_k) highest predicted experts of the next layer.")
