"""Next-layer speculative prefetch: at layer l's gate, fetch what a speculator predicts for layer l+1.

With the trace's recorded speculator predictions (`predicted`) it uses them; otherwise a seeded
stand-in predicts each routed (token, slot) of layer l+1 right with a per-layer accuracy that goes
linearly from `accuracy_first` (layer 1) to `accuracy_last` (last layer), else a uniformly drawn wrong
expert. Every predicted expert is prefetched, most predicted mass first.
State: `f[F.MASS]` a per-expert mass buffer; `i[I.SCALARS, C.RNG]` the RNG state; `p[P.ACCURACY_FIRST]`,
`p[P.ACCURACY_LAST]`.
Cost: O(tokens of the pass * top_k) per gate.
"""

from __future__ import annotations

from enum import auto

from numba import njit

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

    ACCURACY_FIRST = auto()
    ACCURACY_LAST = auto()


def init(ctx: PolicyContext, params: dict[str, float]) -> object:
    ps = new_policy_state(f_rows=len(F), f_cols=ctx.n_experts, i_rows=len(I), i_cols=len(C),
                          params=param_values(P, params))
    ps.i[I.SCALARS, C.RNG] = seed_state(ctx.seed, 11)
    return ps


@njit(cache=True, _nrt=False)
def layer_accuracy(first: float, last: float, layer: int, n_layers: int) -> float:
    if n_layers <= 2:
        return first
    return first + (last - first) * (layer - 1) / (n_layers - 2)


@hook(PREFETCH_SIG)
def prefetch(ps, cs, tv, p, layer, t):
    n_layers = tv.experts.shape[1]
    target = layer + 1
    if target >= n_layers:
        return 0
    acc = layer_accuracy(ps.p[P.ACCURACY_FIRST], ps.p[P.ACCURACY_LAST], target, n_layers)
    return predict_push(cs, tv, p, target, acc, ps.i[I.SCALARS], C.RNG, ps.f[F.MASS], 0)


POLICY = register(Policy(
    name="next-layer", kind="prefetch", hooks={"prefetch": prefetch}, init=init,
    capabilities=Capabilities(live=True),
    params={"accuracy_first": Param(0.85, 0.0, 1.0, "stand-in speculator accuracy at layer 1"),
            "accuracy_last": Param(0.85, 0.0, 1.0, "stand-in speculator accuracy at the last layer")},
    doc="Prefetch the speculator's prediction for the next layer."))
