"""Fetch with a precision cascade (SpecMD's Fetch-priority "int8:4:2"; HOBBIT's precision cascading): every
miss is fetched, at the model's precision, at `int{bits}` or at `int{lowest_bits}` by the entry's importance.

SpecMD, the sentences implemented:
- 3.1.2: "Fetch-priority (e.g., int8:4:2) always fetches highest precision with fallback levels
  (int8->int4->int2) for graceful degradation under capacity constraints."
- 5.4: "This approach stores multiple precision levels and selectively degrades low-importance experts
  (bottom 60th percentile) during cache misses."
- 2 (related work): "HOBBIT introduces precision cascading: dynamically loading lower-precision versions (int4
  for float16, int2 for int8) based on gating score thresholds Tang et al. (2024)."; Appendix B: "fetch cascade
  precision policies (e.g., int8->int4->int2) that allow graceful degradation to lower precision on cache misses."
So the levels are the model's own precision, then `int{bits}`, then `int{lowest_bits}` (defaults 4 and 2:
int8 -> int4 -> int2 on an int8 model), and an entry's importance is the routing mass it carries in this layer
(its gate scores summed over the pass's tokens, as `fetch-priority` reads it). An entry whose mass is below
the `percentile`-th percentile (default 60, the paper's "bottom 60th percentile") of the masses of all
entries the layer needs now is degraded to `int{bits}`; one below the `lowest_percentile`-th percentile is
degraded further, to `int{lowest_bits}`; the rest are fetched at the model's precision.
Where the text is silent, the tool's choices: the second threshold (the paper names one percentile for a
cascade of three levels) is its own parameter, default 30, the bottom 60% split evenly between the two
fallback levels; the level depends on importance only, not on the free capacity at the miss (the paper's
evaluation degrades by importance, and in the emulator a fetch always finds room by evicting); "below" is
strict, as in `fetch-priority`. `lowest_bits = bits` is a cascade of two levels. Each level must be a stored
precision smaller than the model's (`PolicyContext.precisions[1:]`, which `model.stored_precisions` narrows; a
level the model does not store is never replaced by a neighbour, as that would be another cascade than the one
asked for): otherwise, and for `lowest_bits > bits`
or `lowest_percentile > percentile`, `init` fails naming the key. Degraded misses are booked by the core as
`quality.degraded_mass`, and the expert stays resident at that precision.
State: `f[F.MASS]` scratch; `p[P.PERCENTILE]`, `p[P.LOWEST_PERCENTILE]`, `p[P.MIDDLE]` and `p[P.LOWEST]` the
precision indices of the two fallback levels.
Cost: O(entries^2) worst case per miss (insertion sort of the layer's masses; entries are few).
"""

from __future__ import annotations

from enum import auto

from numba import njit

from ...errors import EmuError
from ...kernel.helpers import percentile_inplace
from ...kernel.hooks import MISS_FETCH, MISS_SIG, encode_miss, hook
from ...kernel.layout import SC, Fields, new_policy_state
from ..api import Param, Policy, PolicyContext, param_values, register


class F(Fields):
    """Rows of `ps.f`."""

    MASS = auto()  # scratch: the masses of the layer's entries, sorted for the percentiles


class P(Fields):
    """`ps.p`: the resolved percentiles, and `bits`, `lowest_bits` as precision indices (`cascade_levels`)."""

    PERCENTILE = auto()
    LOWEST_PERCENTILE = auto()
    MIDDLE = auto()  # precision index of int{bits}
    LOWEST = auto()  # precision index of int{lowest_bits}


#: the cascade's parameters, shared with drop-priority-cascade
PARAMS: dict[str, Param] = {
    "percentile": Param(60.0, 0.0, 100.0, "entries with mass below this percentile of the layer's are degraded "
                                          "to int{bits} (SpecMD: bottom 60th percentile)"),
    "bits": Param(4, 2, 8, "bits of the first fallback level (a stored precision below the model's)", integer=True),
    "lowest_percentile": Param(30.0, 0.0, 100.0, "entries with mass below this percentile are degraded further, to "
                                                 "int{lowest_bits} (at most `percentile`)"),
    "lowest_bits": Param(2, 2, 8, "bits of the last fallback level (at most `bits`)", integer=True),
}


def cascade_levels(precisions: tuple[str, ...], params: dict[str, float], policy: str) -> tuple[int, int]:
    """Precision indices of the cascade's two fallback levels; an EmuError naming the key for a level the model
    does not store below its own precision, `lowest_bits > bits` or `lowest_percentile > percentile`."""
    own, smaller = precisions[0], precisions[1:]
    bits, lowest_bits = int(params["bits"]), int(params["lowest_bits"])
    for key, b in (("bits", bits), ("lowest_bits", lowest_bits)):
        if f"int{b}" not in smaller:
            raise EmuError(f"miss policy {policy!r}: the cascade level int{b} is not a stored precision below the "
                           f"model's {own} (stored below it, model.stored_precisions: {', '.join(smaller) or 'none'})",
                           key=f"policy.miss.{key}")
    if lowest_bits > bits:
        raise EmuError(f"miss policy {policy!r}: lowest_bits = {lowest_bits} is above bits = {bits}; the cascade "
                       "goes down (e.g. bits = 4, lowest_bits = 2)", key="policy.miss.lowest_bits")
    if params["lowest_percentile"] > params["percentile"]:
        raise EmuError(f"miss policy {policy!r}: lowest_percentile = {params['lowest_percentile']:g} is above "
                       f"percentile = {params['percentile']:g}; the lowest level takes the least important "
                       "entries", key="policy.miss.lowest_percentile")
    return precisions.index(f"int{bits}"), precisions.index(f"int{lowest_bits}")


def init(ctx: PolicyContext, params: dict[str, float]) -> object:
    middle, lowest = cascade_levels(ctx.precisions, params, "fetch-cascade")
    return new_policy_state(f_rows=len(F), f_cols=ctx.n_experts,
                            params=param_values(P, {**params, "middle": middle, "lowest": lowest}))


@njit(cache=True, _nrt=False)
def cascade_index(mass: float, high: float, low: float, middle: int, lowest: int) -> int:
    """Precision index for an entry of `mass`, given the two mass thresholds (low <= high)."""
    if mass < low:
        return lowest
    if mass < high:
        return middle
    return 0


@hook(MISS_SIG)
def on_miss(ps, cs, tv, i, t):
    n = cs.sc[SC.NCUR]
    buf = ps.f[F.MASS, :n]
    for j in range(n):
        buf[j] = cs.cur_mass[j]
    high = percentile_inplace(buf, n, ps.p[P.PERCENTILE])
    low = percentile_inplace(buf, n, ps.p[P.LOWEST_PERCENTILE])  # buf is sorted now: a linear pass
    return encode_miss(MISS_FETCH, cascade_index(cs.cur_mass[i], high, low, int(ps.p[P.MIDDLE]),
                                                 int(ps.p[P.LOWEST])))


POLICY = register(Policy(
    name="fetch-cascade", kind="miss", hooks={"on_miss": on_miss}, init=init, params=PARAMS,
    doc="Precision cascade (SpecMD Fetch-priority int8:4:2): fetch every miss, degraded to int{bits} below a "
        "mass percentile and to int{lowest_bits} below a lower one."))
