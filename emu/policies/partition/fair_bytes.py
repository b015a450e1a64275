"""Fair bytes: every layer gets the same byte budget, capacity / L, and evicts only its own experts.

No layer can starve another, at the price of idle bytes in layers that need fewer experts. Warns at
init when a layer's budget holds fewer than top_k experts; fails when it holds none.
State: `i[I.SCALARS, C.DONE]` = 1 once the caps are written (the first gate); `p[P.LAYER_BYTES]`.
Cost: O(L) once.
"""

from __future__ import annotations

from enum import auto

from ...kernel.hooks import PARTITION_SIG, hook
from ...kernel.layout import Fields, new_policy_state
from ..api import Capabilities, Policy, PolicyContext, param_values, register
from .budget import require_one_slot, warn_below_top_k


class I(Fields):
    """Rows of `ps.i`."""

    SCALARS = auto()  # the scalars, at the columns C


class C(Fields):
    """Columns of row I.SCALARS."""

    DONE = auto()  # 1 once the caps are written


class P(Fields):
    """`ps.p`: computed by init (no parameters)."""

    LAYER_BYTES = auto()  # each layer's byte budget, capacity / L


def init(ctx: PolicyContext, params: dict[str, float]) -> object:
    per_layer = ctx.capacity_bytes // ctx.n_layers
    require_one_slot(ctx, per_layer, "fair-bytes")
    warn_below_top_k(ctx, [per_layer // ctx.expert_bytes] * ctx.n_layers, "fair-bytes", "the byte budget")
    return new_policy_state(i_rows=len(I), i_cols=len(C), params=param_values(P, {"layer_bytes": per_layer}))


@hook(PARTITION_SIG)
def partition(ps, cs, tv, p, layer, t):
    if ps.i[I.SCALARS, C.DONE] == 0:
        ps.i[I.SCALARS, C.DONE] = 1
        for v in range(cs.layer_cap.shape[0]):
            cs.layer_cap[v] = int(ps.p[P.LAYER_BYTES])
            cs.layer_floor[v] = 0
    return 0


POLICY = register(Policy(
    name="fair-bytes", kind="partition", hooks={"partition": partition}, init=init,
    capabilities=Capabilities(live=True, partition_aware=True),
    doc="Equal byte budget per layer; a layer evicts only its own experts."))
