"""Lookahead prefetch: speculate `depth` layers ahead within the pass, nearest layer first.

Layer l+d is predicted by the recorded speculator, or by the seeded stand-in with accuracy
`accuracy * decay**(d-1)` (farther guesses are worse). Every predicted expert is prefetched.
State: `f[0]` a per-expert mass buffer; `i[0, 0]` RNG state.
Cost: O(depth * tokens * top_k) per gate.
"""

from __future__ import annotations

from numba import njit

from ...engines.state import new_policy_state
from ..api import KERNEL_SIG, Param, Policy, PolicyContext
from ..kernel_util import predict_push, seed_state


def init(ctx: PolicyContext, params: dict[str, float]) -> object:
    ps = new_policy_state(f_rows=1, f_cols=ctx.n_experts, i_rows=1, i_cols=1,
                          params=(params["depth"], params["accuracy"], params["decay"]))
    ps.i[0, 0] = seed_state(ctx.seed, 14)
    return ps


@njit(KERNEL_SIG, cache=True, _nrt=False)
def prefetch(ps, cs, tv, p, layer, t):
    n_layers = tv.experts.shape[1]
    n = 0
    acc = ps.p[1]
    for d in range(1, int(ps.p[0]) + 1):
        target = layer + d
        if target >= n_layers:
            break
        n = predict_push(cs, tv, p, target, acc, ps.i[0], 0, ps.f[0], n)
        acc *= ps.p[2]
    return n


POLICY = Policy(
    name="lookahead", kind="prefetch", kernels=(prefetch,), init=init,
    params={"depth": Param(2, 1, 64, "layers ahead to speculate", integer=True),
            "accuracy": Param(0.85, 0.0, 1.0, "stand-in accuracy one layer ahead"),
            "decay": Param(0.9, 0.0, 1.0, "accuracy factor per further layer")},
    doc="Prefetch speculated experts of the next `depth` layers.")
