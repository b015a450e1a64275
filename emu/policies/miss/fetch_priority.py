"""Fetch by priority: important experts at full precision, the rest degraded (int8/int4/int2).

An entry is unimportant when the routing mass it carries in this layer is below the `percentile`-th
percentile of the masses of all experts the layer needs now (so at Mixtral decode, top-2 with the
default 50, the lower-weighted expert of the two is degraded). It is fetched at `int{bits}` when the
model has that precision, else at the nearest smaller-than-model precision with at least `bits` bits.
State: `p` = (percentile, precision index of the degraded copy). Cost: O(entries) per miss.
"""

from __future__ import annotations

from numba import njit

from ...engines.core import encode_miss
from ...engines.state import SC_NCUR, new_policy_state
from ...models import PRECISION_BITS
from ..api import KERNEL_SIG, MISS_FETCH, Param, Policy, PolicyContext
from ..kernel_util import percentile_inplace


def degraded_index(precisions: tuple[str, ...], bits: int) -> int:
    """Index of the precision a degraded copy uses (0 when the model has nothing smaller)."""
    name = f"int{bits}"
    if name in precisions[1:]:
        return precisions.index(name)
    fits = [i for i, p in enumerate(precisions) if i > 0 and PRECISION_BITS[p] >= bits]
    return min(fits, key=lambda i: (PRECISION_BITS[precisions[i]], i)) if fits else 0


def init(ctx: PolicyContext, params: dict[str, float]) -> object:
    return new_policy_state(f_rows=1, f_cols=ctx.n_experts,
                            params=(params["percentile"], float(degraded_index(ctx.precisions,
                                                                               int(params["bits"])))))


@njit(KERNEL_SIG, cache=True, _nrt=False)
def miss(ps, cs, tv, i, _b, t):
    n = cs.sc[SC_NCUR]
    buf = ps.f[0, :n]
    for j in range(n):
        buf[j] = cs.cur_mass[j]
    threshold = percentile_inplace(buf, n, ps.p[0])
    if cs.cur_mass[i] < threshold:
        return encode_miss(MISS_FETCH, int(ps.p[1]))
    return encode_miss(MISS_FETCH, 0)


POLICY = Policy(
    name="fetch-priority", kind="miss", kernels=(miss,), init=init,
    params={"percentile": Param(50.0, 0.0, 100.0, "entries with mass below this percentile are degraded"),
            "bits": Param(4, 2, 8, "bits of the degraded copy (8, 4 or 2)", integer=True)},
    doc="Full precision for important experts, degraded copies for those below a mass percentile.")
