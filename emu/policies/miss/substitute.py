"""Substitute: run a resident expert of the same layer in place of a missing one when the missing
expert's mean gate score is within `tolerance`.

The trace only records the top-k gate scores, so a non-selected resident expert's own score is unknown
(it lies below the token's k-th score); the policy therefore bounds the loss by the missing expert's
mean gate weight per routed token (`mass / tokens`) and substitutes when that is <= tolerance. The
substitute is the resident (not in flight) expert of the layer, outside the experts the layer needs
now and not already substituting, that has carried the most tokens at this layer so far (ties: lower
id). The core books the missing expert's mass as `quality.substituted_mass`. No candidate: fetch.
State: `f[0, key]` tokens routed to each key, counted once per (pass, layer) at the first miss there
(layers that only hit are not counted); `i[0, 0..1]` the (pass, layer) last counted.
Cost: O(entries + n_experts) per miss.
"""

from __future__ import annotations

from numba import njit

from ...engines.core import encode_miss
from ...engines.state import RESIDENT, SC_LAYER, SC_NCUR, SC_PASS, new_policy_state
from ..api import KERNEL_SIG, MISS_FETCH, MISS_SUBSTITUTE, Param, Policy, PolicyContext


def init(ctx: PolicyContext, params: dict[str, float]) -> object:
    ps = new_policy_state(f_rows=1, f_cols=ctx.n_layers * ctx.n_experts, i_rows=1, i_cols=2,
                          params=(params["tolerance"],))
    ps.i[0, :] = -1
    return ps


@njit(KERNEL_SIG, cache=True, _nrt=False)
def miss(ps, cs, tv, i, _b, t):
    p = cs.sc[SC_PASS]
    layer = cs.sc[SC_LAYER]
    n = cs.sc[SC_NCUR]
    if ps.i[0, 0] != p or ps.i[0, 1] != layer:
        ps.i[0, 0] = p
        ps.i[0, 1] = layer
        for j in range(n):
            ps.f[0, cs.cur_key[j]] += cs.cur_tokens[j]
    if cs.cur_tokens[i] <= 0 or cs.cur_mass[i] / cs.cur_tokens[i] > ps.p[0]:
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
        if best < 0 or ps.f[0, key] > ps.f[0, best]:
            best = key
    if best < 0:
        return encode_miss(MISS_FETCH, 0)
    return encode_miss(MISS_SUBSTITUTE, best)


POLICY = Policy(name="substitute", kind="miss", kernels=(miss,), init=init,
                params={"tolerance": Param(0.3, 0.0, 1.0, "largest mean gate weight that may be substituted")},
                doc="Use a resident expert of the same layer instead of a low-weight missing one.")
