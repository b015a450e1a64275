"""Fair bytes: every layer gets the same byte budget, capacity / L, and evicts only its own experts.

No layer can starve another, at the price of idle bytes in layers that need fewer experts. Warns at
init when a layer's budget holds fewer than top_k experts; fails when it holds none.
State: `i[0, 0]` = 1 once the caps are written (the first gate). Cost: O(L) once.
"""

from __future__ import annotations

from numba import njit

from ...engines.state import new_policy_state
from ..api import KERNEL_SIG, Policy, PolicyContext
from .budget import require_one_slot, warn_below_top_k


def init(ctx: PolicyContext, params: dict[str, float]) -> object:
    per_layer = ctx.capacity_bytes // ctx.n_layers
    require_one_slot(ctx, per_layer, "fair-bytes")
    warn_below_top_k(ctx, [per_layer // ctx.expert_bytes] * ctx.n_layers, "fair-bytes", "the byte budget")
    return new_policy_state(i_rows=1, i_cols=1, params=(float(per_layer),))


@njit(KERNEL_SIG, cache=True, _nrt=False)
def partition(ps, cs, tv, p, layer, t):
    if ps.i[0, 0] == 0:
        ps.i[0, 0] = 1
        for v in range(cs.layer_cap.shape[0]):
            cs.layer_cap[v] = int(ps.p[0])
            cs.layer_floor[v] = 0
    return 0


POLICY = Policy(name="fair-bytes", kind="partition", kernels=(partition,), init=init,
                doc="Equal byte budget per layer; a layer evicts only its own experts.")
