"""Lookahead prefetch: speculate `depth` layers ahead within the pass, nearest layer first.

Layer l+d is predicted by the recorded speculator, or by the seeded stand-in with accuracy
`accuracy * decay**(d-1)` (farther guesses are worse). Every predicted expert is prefetched.
State: `f[F.MASS]` a per-expert mass buffer; `i[I.SCALARS, C.RNG]` the RNG state; `p[P.DEPTH]`,
`p[P.ACCURACY]`, `p[P.DECAY]`.
Cost: O(depth * tokens * top_k) per gate.
"""

from __future__ import annotations

from enum import auto

from ...kernel.helpers import predict_push, seed_state
from ...kernel.hooks import PREFETCH_SIG, hook
from ...kernel.layout import Fields, new_policy_state
from ..api import Capabilities, Param, Policy, PolicyContext, param_values, register


class I(Fields):
    """Rows of `ps.i`."""

    SCALARS = auto()  # the scalars, at the columns C


class C(Fields):
    """Columns of row I.SCALARS."""

    RNG = auto()  # splitmix64 state of the stand-in speculator


class F(Fields):
    """Rows of `ps.f`."""

    MASS = auto()  # per expert: scratch for a layer's predicted mass


class P(Fields):
    """`ps.p`: the resolved parameters (param_values)."""

    DEPTH = auto()
    ACCURACY = auto()
    DECAY = auto()


def init(ctx: PolicyContext, params: dict[str, float]) -> object:
    ps = new_policy_state(f_rows=len(F), f_cols=ctx.n_experts, i_rows=len(I), i_cols=len(C),
                          params=param_values(P, params))
    ps.i[I.SCALARS, C.RNG] = seed_state(ctx.seed, 14)
    return ps


@hook(PREFETCH_SIG)
def prefetch(ps, cs, tv, p, layer, t):
    n_layers = tv.experts.shape[1]
    n = 0
    acc = ps.p[P.ACCURACY]
    for d in range(1, int(ps.p[P.DEPTH]) + 1):
        target = layer + d
        if target >= n_layers:
            break
        n = predict_push(cs, tv, p, target, acc, ps.i[I.SCALARS], C.RNG, ps.f[F.MASS], n)
        acc *= ps.p[P.DECAY]
    return n


POLICY = register(Policy(
    name="lookahead", kind="prefetch", hooks={"prefetch": prefetch}, init=init,
    capabilities=Capabilities(reads_future=True),
    params={"depth": Param(2, 1, 64, "layers ahead to speculate", integer=True),
            "accuracy": Param(0.85, 0.0, 1.0, "stand-in accuracy one layer ahead"),
            "decay": Param(0.9, 0.0, 1.0, "accuracy factor per further layer")},
    doc="Prefetch speculated experts of the next `depth` layers."))
