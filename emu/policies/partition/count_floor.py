"""Count floor: every layer keeps at least TopK+1 experts; the rest of the cache is a shared overflow.

Eviction never takes a layer below its floor, so one hot layer cannot flush the others. When the
cache is too small for TopK+1 per layer the floor shrinks to what cannot deadlock,
`(slots - top_k) // (L - 1)`, and a warning names the layers whose guaranteed share is below TopK.
State: `i[I.SCALARS, C.DONE]` = 1 once the floors are written (the first gate); `p[P.FLOOR]`.
Cost: O(L) once.
"""

from __future__ import annotations

from enum import auto

from ...kernel.hooks import PARTITION_SIG, hook
from ...kernel.layout import Fields, new_policy_state
from ..api import Capabilities, Policy, PolicyContext, param_values, register
from .budget import safe_floor, warn_below_top_k


class I(Fields):
    """Rows of `ps.i`."""

    SCALARS = auto()  # the scalars, at the columns C


class C(Fields):
    """Columns of row I.SCALARS."""

    DONE = auto()  # 1 once the floors are written


class P(Fields):
    """`ps.p`: computed by init (no parameters)."""

    FLOOR = auto()  # experts every layer keeps (safe_floor)


def init(ctx: PolicyContext, params: dict[str, float]) -> object:
    floor = safe_floor(ctx, ctx.top_k + 1)
    warn_below_top_k(ctx, [floor] * ctx.n_layers, "count-floor", "the guaranteed share")
    return new_policy_state(i_rows=len(I), i_cols=len(C), params=param_values(P, {"floor": floor}))


@hook(PARTITION_SIG)
def partition(ps, cs, tv, p, layer, t):
    if ps.i[I.SCALARS, C.DONE] == 0:
        ps.i[I.SCALARS, C.DONE] = 1
        for v in range(cs.layer_floor.shape[0]):
            cs.layer_floor[v] = int(ps.p[P.FLOOR])
    return 0


POLICY = register(Policy(
    name="count-floor", kind="partition", hooks={"partition": partition}, init=init,
    capabilities=Capabilities(live=True, partition_aware=True),
    doc="Each layer keeps at least TopK+1 experts; the rest is shared."))
