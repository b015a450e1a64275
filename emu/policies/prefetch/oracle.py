"""Oracle prefetch: perfect knowledge of the next `window` layers (crossing into later passes).

At layer l's gate it prefetches every expert the trace routes to at the next `window` positions of the
forward order (l+1, l+2, ..., wrapping to layer 0 of the next pass), nearest position first and, within
a position, by routing mass. It is an upper bound for speculative prefetch, not a real predictor.
State: `f[0]` a per-expert mass buffer.
Cost: O(window * tokens of the pass * top_k) per gate.
"""

from __future__ import annotations

from numba import njit

from ...engines.state import new_policy_state
from ..api import KERNEL_SIG, Param, Policy, PolicyContext
from ..kernel_util import push_top, true_layer_mass


def init(ctx: PolicyContext, params: dict[str, float]) -> object:
    return new_policy_state(f_rows=1, f_cols=ctx.n_experts, params=(params["window"],))


@njit(KERNEL_SIG, cache=True, _nrt=False)
def prefetch(ps, cs, tv, p, layer, t):
    n_layers = tv.experts.shape[1]
    n_passes = tv.pass_offsets.shape[0] - 1
    n_exp = cs.cur_key.shape[0]
    n = 0
    for d in range(1, int(ps.p[0]) + 1):
        pos = p * n_layers + layer + d
        tp = pos // n_layers
        tl = pos % n_layers
        if tp >= n_passes:
            break
        true_layer_mass(tv, tp, tl, ps.f[0])
        n = push_top(cs, ps.f[0], tl, n_exp, n, 0.0)
    return n


POLICY = Policy(name="oracle", kind="prefetch", kernels=(prefetch,), init=init,
                params={"window": Param(1, 1, 1024, "layers ahead known exactly (crosses passes)", integer=True)},
                doc="Prefetch exactly the experts of the next `window` layers (offline bound).")
