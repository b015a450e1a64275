"""Oracle prefetch: perfect knowledge of the next `window` layers (crossing into later passes).

At layer l's gate it prefetches every expert the trace routes to at the next `window` positions of the
forward order (l+1, l+2, ..., wrapping to layer 0 of the next pass), nearest position first and, within
a position, by routing mass. It is an upper bound for speculative prefetch, not a real predictor.
State: `f[F.MASS]` a per-expert mass buffer; `p[P.WINDOW]`.
Cost: O(window * tokens of the pass * top_k) per gate.
"""

from __future__ import annotations

from enum import auto

from ...kernel.helpers import push_top, true_layer_mass
from ...kernel.hooks import PREFETCH_SIG, hook
from ...kernel.layout import Fields, new_policy_state
from ..api import Capabilities, Param, Policy, PolicyContext, param_values, register


class F(Fields):
    """Rows of `ps.f`."""

    MASS = auto()  # per expert: scratch for a layer's routing mass


class P(Fields):
    """`ps.p`: the resolved parameters (param_values)."""

    WINDOW = auto()


def init(ctx: PolicyContext, params: dict[str, float]) -> object:
    return new_policy_state(f_rows=len(F), f_cols=ctx.n_experts, params=param_values(P, params))


@hook(PREFETCH_SIG)
def prefetch(ps, cs, tv, p, layer, t):
    n_layers = tv.experts.shape[1]
    n_passes = tv.pass_offsets.shape[0] - 1
    n_exp = cs.cur_key.shape[0]
    n = 0
    for d in range(1, int(ps.p[P.WINDOW]) + 1):
        pos = p * n_layers + layer + d
        tp = pos // n_layers
        tl = pos % n_layers
        if tp >= n_passes:
            break
        true_layer_mass(tv, tp, tl, ps.f[F.MASS])
        n = push_top(cs, ps.f[F.MASS], tl, n_exp, n, 0.0)
    return n


POLICY = register(Policy(
    name="oracle", kind="prefetch", hooks={"prefetch": prefetch}, init=init,
    capabilities=Capabilities(reads_future=True),
    params={"window": Param(1, 1, 1024, "layers ahead known exactly (crosses passes)", integer=True)},
    doc="Prefetch exactly the experts of the next `window` layers (offline bound)."))
