"""Multi-look prefetch ("Expert Prefetching Strategies" study): sequence-pattern, transition-chain and
co-occurrence tables learned online, fused with fixed weights, top-K of the next layer prefetched.

For the next layer n = l+1 at layer l's gate, with E(l) the experts the current pass used at layer l:
- transition: sum over e in E(l) of the normalised row T[l, e] (what follows e one layer down);
- chain: two hops: from the experts layer l-1 used, the `k` likeliest experts g at layer l (by
  normalised T[l-1]), then their normalised rows T[l, g] weighted by that likelihood, which catches
  patterns a single hop blurs;
- sequence: sum over g used at layer n in the previous pass of the normalised row S[n, g] (what the next
  token did after g at that layer);
- co-occurrence: the best-scored expert's normalised co-selection row C[n, best] is added last, so
  experts usually picked together with it come along.
The top `k` (default top_k) absent experts by the fused score are prefetched.
State: the tables of `tables.py` (T, S, C in `f`), then three scratch rows (scores, hop weights); `i[0]`
last pass per key.
Cost: O(tokens * top_k^2) per gate to learn, O((|E(l)| + |E(l-1)| + k) * E) to predict; tables
3 * L * E^2 floats.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ...engines.state import new_policy_state
from ..api import KERNEL_SIG, Param, Policy, PolicyContext
from ..kernel_util import push_top
from .tables import add_row_mix, update_tables


def init(ctx: PolicyContext, params: dict[str, float]) -> object:
    n = ctx.n_layers * ctx.n_experts
    k = min(int(params["k"]) or ctx.top_k, ctx.n_experts)
    ps = new_policy_state(f_rows=3 * n + 3, f_cols=ctx.n_experts, i_rows=1, i_cols=n,
                          params=(params["w_transition"], params["w_chain"], params["w_sequence"],
                                  params["w_cooccurrence"], float(k)))
    ps.i[0, :] = -1
    return ps


@njit(cache=True, _nrt=False)
def _used(tv, p: int, layer: int, n_exp: int, out) -> None:
    out[:] = 0.0
    for tok in range(tv.pass_offsets[p], tv.pass_offsets[p + 1]):
        for s in range(tv.experts.shape[2]):
            out[np.int64(tv.experts[tok, layer, s])] = 1.0


@njit(KERNEL_SIG, cache=True, _nrt=False)
def prefetch(ps, cs, tv, p, layer, t):
    n_layers = tv.experts.shape[1]
    n_exp = cs.cur_key.shape[0]
    nk = n_layers * n_exp
    t0, s0, c0 = 0, nk, 2 * nk
    f = ps.f
    update_tables(f, ps.i[0], tv, p, layer, t0, s0, c0)
    target = layer + 1
    if target >= n_layers:
        return 0
    score = f[3 * nk]
    used = f[3 * nk + 1]
    score[:] = 0.0
    _used(tv, p, layer, n_exp, used)
    for e in range(n_exp):
        if used[e] > 0.0:
            add_row_mix(f, t0 + layer * n_exp + e, ps.p[0], score)
    if layer > 0 and ps.p[1] > 0.0:
        # two hops: layer l-1's experts -> the likeliest `k` experts at l -> layer l+1
        _used(tv, p, layer - 1, n_exp, used)
        hop = f[3 * nk + 2]
        hop[:] = 0.0
        for e in range(n_exp):
            if used[e] > 0.0:
                add_row_mix(f, t0 + (layer - 1) * n_exp + e, 1.0, hop)
        total = 0.0
        for g in range(n_exp):
            total += hop[g]
        if total > 0.0:
            for _ in range(int(ps.p[4])):
                g = 0
                for e in range(1, n_exp):
                    if hop[e] > hop[g]:
                        g = e
                if hop[g] <= 0.0:
                    break
                add_row_mix(f, t0 + layer * n_exp + g, ps.p[1] * hop[g] / total, score)
                hop[g] = -1.0
    for g in range(n_exp):
        if ps.i[0, target * n_exp + g] == p - 1 and p > 0:
            add_row_mix(f, s0 + target * n_exp + g, ps.p[2], score)
    best = 0
    for e in range(1, n_exp):
        if score[e] > score[best]:
            best = e
    if score[best] > 0.0 and ps.p[3] > 0.0:
        add_row_mix(f, c0 + target * n_exp + best, ps.p[3], score)
    return push_top(cs, score, target, int(ps.p[4]), 0, 0.0)


POLICY = Policy(
    name="multi-look", kind="prefetch", kernels=(prefetch,), init=init,
    params={"w_transition": Param(0.4, 0.0, 1e6, "weight of the one-hop layer transition table"),
            "w_chain": Param(0.2, 0.0, 1e6, "weight of the two-hop transition chain"),
            "w_sequence": Param(0.3, 0.0, 1e6, "weight of the previous-pass sequence pattern"),
            "w_cooccurrence": Param(0.1, 0.0, 1e6, "weight of the co-selection expansion"),
            "k": Param(0, 0, 4096, "experts to prefetch (0: the model's top_k)", integer=True)},
    doc="Prefetch by fused sequence, transition-chain and co-occurrence tables learned online.")
