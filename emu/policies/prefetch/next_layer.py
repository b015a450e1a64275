"""Next-layer speculative prefetch: at layer l's gate, fetch what a speculator predicts for layer l+1.

With the trace's recorded speculator predictions (`predicted`) it uses them; otherwise a seeded
stand-in predicts each routed (token, slot) of layer l+1 right with a per-layer accuracy that goes
linearly from `accuracy_first` (layer 1) to `accuracy_last` (last layer), else a uniformly drawn wrong
expert. Every predicted expert is prefetched, most predicted mass first.
State: `f[0]` a per-expert mass buffer; `i[0, 0]` the RNG state.
Cost: O(tokens of the pass * top_k) per gate.
"""

from __future__ import annotations

from numba import njit

from ...engines.state import new_policy_state
from ..api import KERNEL_SIG, Param, Policy, PolicyContext
from ..kernel_util import predict_push, seed_state


def init(ctx: PolicyContext, params: dict[str, float]) -> object:
    ps = new_policy_state(f_rows=1, f_cols=ctx.n_experts, i_rows=1, i_cols=1,
                          params=(params["accuracy_first"], params["accuracy_last"]))
    ps.i[0, 0] = seed_state(ctx.seed, 11)
    return ps


@njit(cache=True, _nrt=False)
def layer_accuracy(first: float, last: float, layer: int, n_layers: int) -> float:
    if n_layers <= 2:
        return first
    return first + (last - first) * (layer - 1) / (n_layers - 2)


@njit(KERNEL_SIG, cache=True, _nrt=False)
def prefetch(ps, cs, tv, p, layer, t):
    n_layers = tv.experts.shape[1]
    target = layer + 1
    if target >= n_layers:
        return 0
    acc = layer_accuracy(ps.p[0], ps.p[1], target, n_layers)
    return predict_push(cs, tv, p, target, acc, ps.i[0], 0, ps.f[0], 0)


POLICY = Policy(
    name="next-layer", kind="prefetch", kernels=(prefetch,), init=init,
    params={"accuracy_first": Param(0.85, 0.0, 1.0, "stand-in speculator accuracy at layer 1"),
            "accuracy_last": Param(0.85, 0.0, 1.0, "stand-in speculator accuracy at the last layer")},
    doc="Prefetch the speculator's prediction for the next layer.")
