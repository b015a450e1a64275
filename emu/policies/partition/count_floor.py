"""Count floor: every layer keeps at least TopK+1 experts; the rest of the cache is a shared overflow.

Eviction never takes a layer below its floor, so one hot layer cannot flush the others. When the
cache is too small for TopK+1 per layer the floor shrinks to what cannot deadlock,
`(slots - top_k) // (L - 1)`, and a warning names the layers whose guaranteed share is below TopK.
State: `i[0, 0]` = 1 once the floors are written (the first gate). Cost: O(L) once.
"""

from __future__ import annotations

from numba import njit

from ...engines.state import new_policy_state
from ..api import KERNEL_SIG, Policy, PolicyContext
from .budget import safe_floor, warn_below_top_k


def init(ctx: PolicyContext, params: dict[str, float]) -> object:
    floor = safe_floor(ctx, ctx.top_k + 1)
    warn_below_top_k(ctx, [floor] * ctx.n_layers, "count-floor", "the guaranteed share")
    return new_policy_state(i_rows=1, i_cols=1, params=(float(floor),))


@njit(KERNEL_SIG, cache=True, _nrt=False)
def partition(ps, cs, tv, p, layer, t):
    if ps.i[0, 0] == 0:
        ps.i[0, 0] = 1
        for v in range(cs.layer_floor.shape[0]):
            cs.layer_floor[v] = int(ps.p[0])
    return 0


POLICY = Policy(name="count-floor", kind="partition", kernels=(partition,), init=init,
                doc="Each layer keeps at least TopK+1 experts; the rest is shared.")
