"""Drop low-rank misses: an expert whose best rank among its tokens is >= `rank` is skipped when it is
not resident; the top ranks are always fetched.

Rank r of an expert for a token is its place in that token's top-k by gate score (0 = highest; slot
order when the trace has no scores). The skipped routing mass is booked as `quality.dropped_mass`.
State: `p[P.RANK]`. Cost: O(tokens of the pass * top_k^2) per miss.
"""

from __future__ import annotations

from enum import auto

from numba import njit

from ...kernel.helpers import expert_id
from ...kernel.hooks import MISS_DROP, MISS_FETCH, MISS_SIG, encode_miss, hook
from ...kernel.layout import SC, Fields, new_policy_state
from ..api import Capabilities, Param, Policy, PolicyContext, param_values, register


class P(Fields):
    """`ps.p`: the resolved parameters (param_values)."""

    RANK = auto()


def init(ctx: PolicyContext, params: dict[str, float]) -> object:
    return new_policy_state(params=param_values(P, params))


@njit(cache=True, _nrt=False)
def best_rank(tv, p: int, layer: int, expert: int) -> int:
    """Lowest rank `expert` has among the tokens of pass p at `layer` (k when it is not routed)."""
    k = tv.experts.shape[2]
    has_scores = tv.dims[0] == 1
    best = k
    for tok in range(tv.pass_offsets[p], tv.pass_offsets[p + 1]):
        for s in range(k):
            if expert_id(tv, tok, layer, s) != expert:
                continue
            r = s
            if has_scores:
                r = 0
                mine = tv.scores[tok, layer, s]
                for o in range(k):
                    other = tv.scores[tok, layer, o]
                    if other > mine or (other == mine and o < s):
                        r += 1
            if r < best:
                best = r
    return best


@hook(MISS_SIG)
def on_miss(ps, cs, tv, i, t):
    if best_rank(tv, cs.sc[SC.PASS], cs.sc[SC.LAYER], cs.cur_expert[i]) >= ps.p[P.RANK]:
        return encode_miss(MISS_DROP, 0)
    return encode_miss(MISS_FETCH, 0)


POLICY = register(Policy(
    name="drop", kind="miss", hooks={"on_miss": on_miss}, init=init, capabilities=Capabilities(live=True),
    params={"rank": Param(1, 1, 4096, "misses of rank >= this are dropped (0 = top-1)", integer=True)},
    doc="Skip missing experts of rank >= r; always fetch the top ranks."))
