"""Fetch by priority: important experts at full precision, the rest degraded (int8/int4/int2).

An entry is unimportant when the routing mass it carries in this layer is below the `percentile`-th
percentile of the masses of all experts the layer needs now (so at Mixtral decode, top-2 with the
default 50, the lower-weighted expert of the two is degraded). It is fetched at `int{bits}` when the
model stores that precision, else at the nearest stored smaller-than-model precision with at least `bits` bits
(never below what `bits` asks: `bits = 2` with only int4 stored copies int4); when there is none (`bits = 4` on an
int4 model, or `bits = 8` with `model.stored_precisions = ["bf16", "int4"]`) no miss is degraded, the policy is
plain `fetch`, and `init` says so in a warning that names the stored forms.
State: `f[F.MASS]` scratch; `p[P.PERCENTILE]`, `p[P.DEGRADED]` the precision index of the degraded copy.
Cost: O(entries) per miss.
"""

from __future__ import annotations

import warnings
from enum import auto

from ...errors import EmuWarning
from ...kernel.helpers import percentile_inplace
from ...kernel.hooks import MISS_FETCH, MISS_SIG, encode_miss, hook
from ...kernel.layout import SC, Fields, new_policy_state
from ...models import PRECISION_BITS
from ..api import Param, Policy, PolicyContext, param_values, register


class F(Fields):
    """Rows of `ps.f`."""

    MASS = auto()  # scratch: the masses of the layer's entries, sorted for the percentile


class P(Fields):
    """`ps.p`: the resolved parameters (param_values), `bits` turned into the precision index DEGRADED."""

    PERCENTILE = auto()
    DEGRADED = auto()  # index of the precision a degraded copy uses (degraded_index)


def degraded_index(precisions: tuple[str, ...], bits: int) -> int:
    """Index of the precision a degraded copy uses (0 when the model stores nothing smaller of at least `bits` bits);
    `precisions` holds only the stored forms (`precisions_for`), so the choice is always a stored one."""
    name = f"int{bits}"
    if name in precisions[1:]:
        return precisions.index(name)
    fits = [i for i, p in enumerate(precisions) if i > 0 and PRECISION_BITS[p] >= bits]
    return min(fits, key=lambda i: (PRECISION_BITS[precisions[i]], i)) if fits else 0


def init(ctx: PolicyContext, params: dict[str, float]) -> object:
    bits = int(params["bits"])
    degraded = degraded_index(ctx.precisions, bits)
    if degraded == 0:  # nothing to degrade to: every miss fetches at full precision, which is plain `fetch`
        own = ctx.precisions[0]
        warnings.warn(f"miss policy 'fetch-priority': bits = {bits} on a model stored at {own} has no smaller "
                      f"precision of at least {bits} bits to degrade to, so it runs as plain 'fetch' (stored below "
                      f"{own}, model.stored_precisions: {', '.join(ctx.precisions[1:]) or 'none'})", EmuWarning,
                      stacklevel=2)
    return new_policy_state(f_rows=len(F), f_cols=ctx.n_experts,
                            params=param_values(P, {**params, "degraded": degraded}))


@hook(MISS_SIG)
def on_miss(ps, cs, tv, i, t):
    n = cs.sc[SC.NCUR]
    buf = ps.f[F.MASS, :n]
    for j in range(n):
        buf[j] = cs.cur_mass[j]
    threshold = percentile_inplace(buf, n, ps.p[P.PERCENTILE])
    if cs.cur_mass[i] < threshold:
        return encode_miss(MISS_FETCH, int(ps.p[P.DEGRADED]))
    return encode_miss(MISS_FETCH, 0)


POLICY = register(Policy(
    name="fetch-priority", kind="miss", hooks={"on_miss": on_miss}, init=init,
    params={"percentile": Param(50.0, 0.0, 100.0, "entries with mass below this percentile are degraded"),
            "bits": Param(4, 2, 8, "bits of the degraded copy (8, 4 or 2)", integer=True)},
    doc="Full precision for important experts, degraded copies for those below a mass percentile."))
