"""Drop Priority Cascade: drop the low-rank misses (as `drop`), fetch the others through the precision cascade
(as `fetch-cascade`).

SpecMD, the sentences implemented:
- 3.1.2 (Drop): "Drop policies selectively skip cache-miss experts. [...] models are resilient beyond rank 2
  [...] minimal perplexity degradation when swapping rank 3+ experts, which we leverage similarily by dropping
  only low-rank experts and always fetching high-rank ones."
- 3.1.2 (the cascade): "Fetch-priority (e.g., int8:4:2) always fetches highest precision with fallback levels
  (int8->int4->int2) for graceful degradation under capacity constraints."; 5.4: "selectively degrades
  low-importance experts (bottom 60th percentile) during cache misses."
- 5.4 names the policy ("Fetch Lowest Bit and Drop Priority Cascade show inconsistent results across models")
  and defines it no further.
Where the text is silent, the tool's choices: the name is read as Drop Priority followed by the cascade. A
missing expert whose best rank among the pass's tokens at this layer is >= `rank` is dropped (rank 0 = the
highest gate score; slot order without scores; `drop`'s `best_rank`), its mass booked as
`quality.dropped_mass`. Default `rank` 2: ranks 0 and 1 (the paper's 1 and 2) are kept, "rank 3+" dropped.
A miss the rank rule keeps is fetched at the level `fetch-cascade` gives it, with the percentiles taken over
the masses of the layer's entries that the rank rule keeps (resident or not): the dropped ones already took the
lowest priority, and over all entries the kept ones, the heaviest, would seldom be degraded. The other
parameters, their defaults and their checks are `fetch-cascade`'s.
State: `i[I.SCALARS, C.PASS]`, `i[I.SCALARS, C.LAYER]` the (pass, layer) whose ranks and thresholds are held
(-1: none yet), `i[I.RANK, expert]` each entry's best rank there, `f[F.SCALARS, CF.HIGH]` and
`f[F.SCALARS, CF.LOW]` the two mass thresholds, `f[F.MASS]` scratch; `p` as `fetch-cascade`'s plus `P.RANK`.
Cost: O(entries * tokens of the pass * top_k^2) at the first miss of a (pass, layer), O(1) per miss after it.
"""

from __future__ import annotations

from enum import auto

from ...kernel.helpers import percentile_inplace
from ...kernel.hooks import MISS_DROP, MISS_FETCH, MISS_SIG, encode_miss, hook
from ...kernel.layout import SC, Fields, new_policy_state
from ..api import Param, Policy, PolicyContext, param_values, register
from .drop import best_rank
from .fetch_cascade import PARAMS, cascade_index, cascade_levels


class I(Fields):
    """Rows of `ps.i`."""

    SCALARS = auto()  # the scalars, at the columns C
    RANK = auto()  # per expert: its best rank in the (pass, layer) held


class C(Fields):
    """Columns of row I.SCALARS: the (pass, layer) whose ranks and thresholds are held (-1: none yet)."""

    PASS = auto()
    LAYER = auto()


class F(Fields):
    """Rows of `ps.f`."""

    SCALARS = auto()  # the thresholds, at the columns CF
    MASS = auto()  # scratch: the kept entries' masses, sorted for the percentiles


class CF(Fields):
    """Columns of row F.SCALARS."""

    HIGH = auto()  # mass below it: int{bits}
    LOW = auto()  # mass below it: int{lowest_bits}


class P(Fields):
    """`ps.p`: the resolved parameters; `bits`, `lowest_bits` as precision indices (`cascade_levels`)."""

    RANK = auto()
    PERCENTILE = auto()
    LOWEST_PERCENTILE = auto()
    MIDDLE = auto()  # precision index of int{bits}
    LOWEST = auto()  # precision index of int{lowest_bits}


def init(ctx: PolicyContext, params: dict[str, float]) -> object:
    middle, lowest = cascade_levels(ctx.precisions, params, "drop-priority-cascade")
    ps = new_policy_state(f_rows=len(F), f_cols=max(ctx.n_experts, len(CF)), i_rows=len(I),
                          i_cols=max(ctx.n_experts, len(C)),
                          params=param_values(P, {**params, "middle": middle, "lowest": lowest}))
    ps.i[I.SCALARS, :] = -1
    return ps


@hook(MISS_SIG)
def on_miss(ps, cs, tv, i, t):
    p = cs.sc[SC.PASS]
    layer = cs.sc[SC.LAYER]
    rank = ps.p[P.RANK]
    # a layer's entries and masses are fixed while its misses are handled: ranks and thresholds once per layer
    if ps.i[I.SCALARS, C.PASS] != p or ps.i[I.SCALARS, C.LAYER] != layer:
        ps.i[I.SCALARS, C.PASS] = p
        ps.i[I.SCALARS, C.LAYER] = layer
        buf = ps.f[F.MASS]
        kept = 0
        for j in range(cs.sc[SC.NCUR]):
            r = best_rank(tv, p, layer, cs.cur_expert[j])
            ps.i[I.RANK, cs.cur_expert[j]] = r
            if r < rank:
                buf[kept] = cs.cur_mass[j]
                kept += 1
        high = 0.0
        low = 0.0
        if kept > 0:
            high = percentile_inplace(buf, kept, ps.p[P.PERCENTILE])
            low = percentile_inplace(buf, kept, ps.p[P.LOWEST_PERCENTILE])
        ps.f[F.SCALARS, CF.HIGH] = high
        ps.f[F.SCALARS, CF.LOW] = low
    if ps.i[I.RANK, cs.cur_expert[i]] >= rank:
        return encode_miss(MISS_DROP, 0)
    return encode_miss(MISS_FETCH, cascade_index(cs.cur_mass[i], ps.f[F.SCALARS, CF.HIGH], ps.f[F.SCALARS, CF.LOW],
                                                 int(ps.p[P.MIDDLE]), int(ps.p[P.LOWEST])))


POLICY = register(Policy(
    name="drop-priority-cascade", kind="miss", hooks={"on_miss": on_miss}, init=init,
    params={"rank": Param(2, 1, 4096, "misses of rank >= this are dropped (0 = top-1; SpecMD drops rank 3+)",
                          integer=True), **PARAMS},
    doc="Drop misses of rank >= r; fetch the others through the precision cascade int{bits}, int{lowest_bits} "
        "by mass percentile among the kept entries."))
