"""Substitute: run a resident expert of the same layer in place of a missing one when the missing
expert's mean gate score is within `tolerance`.

The trace only records the top-k gate scores, so a non-selected resident expert's own score is unknown
(it lies below the token's k-th score); the policy therefore bounds the loss by the missing expert's
mean gate weight per routed token (`mass / tokens`) and substitutes when that is <= tolerance. The
substitute is the resident (not in flight) expert of the layer, outside the experts the layer needs
now and not already substituting, that has carried the most tokens at this layer so far (ties: lower
id). The core books the missing expert's mass as `quality.substituted_mass`. No candidate: fetch.
State: `f[F.TOKENS, key]` tokens routed to each key, counted once per (pass, layer) at the first miss
there (layers that only hit are not counted); `i[I.SCALARS, C.PASS]`, `i[I.SCALARS, C.LAYER]` the (pass,
layer) last counted; `p[P.TOLERANCE]`.
Cost: O(entries + n_experts) per miss.
"""

from __future__ import annotations

from enum import auto

from ...kernel.hooks import MISS_FETCH, MISS_SIG, MISS_SUBSTITUTE, encode_miss, hook
from ...kernel.layout import RESIDENT, SC, Fields, new_policy_state
from ..api import Param, Policy, PolicyContext, param_values, register


class I(Fields):
    """Rows of `ps.i`."""

    SCALARS = auto()  # the scalars, at the columns C


class C(Fields):
    """Columns of row I.SCALARS: the (pass, layer) last counted (-1: none yet)."""

    PASS = auto()
    LAYER = auto()


class F(Fields):
    """Rows of `ps.f`."""

    TOKENS = auto()  # per key: tokens routed to it so far


class P(Fields):
    """`ps.p`: the resolved parameters (param_values)."""

    TOLERANCE = auto()


def init(ctx: PolicyContext, params: dict[str, float]) -> object:
    ps = new_policy_state(f_rows=len(F), f_cols=ctx.n_layers * ctx.n_experts, i_rows=len(I), i_cols=len(C),
                          params=param_values(P, params))
    ps.i[I.SCALARS, :] = -1
    return ps


@hook(MISS_SIG)
def on_miss(ps, cs, tv, i, t):
    p = cs.sc[SC.PASS]
    layer = cs.sc[SC.LAYER]
    n = cs.sc[SC.NCUR]
    if ps.i[I.SCALARS, C.PASS] != p or ps.i[I.SCALARS, C.LAYER] != layer:
        ps.i[I.SCALARS, C.PASS] = p
        ps.i[I.SCALARS, C.LAYER] = layer
        for j in range(n):
            ps.f[F.TOKENS, cs.cur_key[j]] += cs.cur_tokens[j]
    if cs.cur_tokens[i] <= 0 or cs.cur_mass[i] / cs.cur_tokens[i] > ps.p[P.TOLERANCE]:
        return encode_miss(MISS_FETCH, 0)
    n_exp = cs.cur_key.shape[0]
    base = layer * n_exp
    best = -1
    for e in range(n_exp):
        key = base + e
        if cs.status[key] != RESIDENT:
            continue
        taken = False
        for j in range(n):
            if cs.cur_key[j] == key or cs.cur_sub[j] == key:
                taken = True
                break
        if taken:
            continue
        if best < 0 or ps.f[F.TOKENS, key] > ps.f[F.TOKENS, best]:
            best = key
    if best < 0:
        return encode_miss(MISS_FETCH, 0)
    return encode_miss(MISS_SUBSTITUTE, best)


POLICY = register(Policy(
    name="substitute", kind="miss", hooks={"on_miss": on_miss}, init=init,
    params={"tolerance": Param(0.3, 0.0, 1.0, "largest mean gate weight that may be substituted")},
    doc="Use a resident expert of the same layer instead of a low-weight missing one."))
