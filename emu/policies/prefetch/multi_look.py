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
State: in `f`, the three tables of `tables.py` stacked in the order of `T`, then the scratch rows `F`
(scores, used experts, hop weights); `i[I.LAST_PASS, key]` the last pass per key; `p[P.W_TRANSITION]`,
`p[P.W_CHAIN]`, `p[P.W_SEQUENCE]`, `p[P.W_COOCCURRENCE]`, `p[P.K]`.
Cost: O(tokens * top_k^2) per gate to learn, O((|E(l)| + |E(l-1)| + k) * E) to predict; tables
3 * L * E^2 floats.
"""

from __future__ import annotations

from enum import auto

import numpy as np
from numba import njit

from ...kernel.helpers import push_top
from ...kernel.hooks import PREFETCH_SIG, hook
from ...kernel.layout import Fields, new_policy_state
from ..api import Capabilities, Param, Policy, PolicyContext, param_values, register
from .tables import N_TABLES, T, add_row_mix, update_tables


class F(Fields):
    """Rows of `ps.f` after the tables (N_TABLES * n_keys rows): row N_TABLES * n_keys + F.X."""

    SCORE = auto()  # the fused score of the next layer's experts
    USED = auto()  # the experts a layer used (1.0): layer l, then l-1
    HOP = auto()  # the two-hop weights of layer l's experts


class I(Fields):
    """Rows of `ps.i`."""

    LAST_PASS = auto()  # per key: the last pass that used it (-1: none)


class P(Fields):
    """`ps.p`: the resolved parameters (param_values), `k` resolved against top_k."""

    W_TRANSITION = auto()
    W_CHAIN = auto()
    W_SEQUENCE = auto()
    W_COOCCURRENCE = auto()
    K = auto()


def init(ctx: PolicyContext, params: dict[str, float]) -> object:
    n = ctx.n_layers * ctx.n_experts
    k = min(int(params["k"]) or ctx.top_k, ctx.n_experts)
    ps = new_policy_state(f_rows=N_TABLES * n + len(F), f_cols=ctx.n_experts, i_rows=len(I), i_cols=n,
                          params=param_values(P, {**params, "k": k}))
    ps.i[I.LAST_PASS, :] = -1
    return ps


@njit(cache=True, _nrt=False)
def _used(tv, p: int, layer: int, n_exp: int, out) -> None:
    out[:] = 0.0
    for tok in range(tv.pass_offsets[p], tv.pass_offsets[p + 1]):
        for s in range(tv.experts.shape[2]):
            out[np.int64(tv.experts[tok, layer, s])] = 1.0


@hook(PREFETCH_SIG)
def prefetch(ps, cs, tv, p, layer, t):
    n_layers = tv.experts.shape[1]
    n_exp = cs.cur_key.shape[0]
    nk = n_layers * n_exp
    t0, s0, c0 = T.TRANSITION * nk, T.SEQUENCE * nk, T.COOCCURRENCE * nk
    tail = N_TABLES * nk  # the rows F
    f = ps.f
    update_tables(f, ps.i[I.LAST_PASS], tv, p, layer, t0, s0, c0)
    target = layer + 1
    if target >= n_layers:
        return 0
    score = f[tail + F.SCORE]
    used = f[tail + F.USED]
    score[:] = 0.0
    _used(tv, p, layer, n_exp, used)
    for e in range(n_exp):
        if used[e] > 0.0:
            add_row_mix(f, t0 + layer * n_exp + e, ps.p[P.W_TRANSITION], score)
    if layer > 0 and ps.p[P.W_CHAIN] > 0.0:
        # two hops: layer l-1's experts -> the likeliest `k` experts at l -> layer l+1
        _used(tv, p, layer - 1, n_exp, used)
        hop = f[tail + F.HOP]
        hop[:] = 0.0
        for e in range(n_exp):
            if used[e] > 0.0:
                add_row_mix(f, t0 + (layer - 1) * n_exp + e, 1.0, hop)
        total = 0.0
        for g in range(n_exp):
            total += hop[g]
        if total > 0.0:
            for _ in range(int(ps.p[P.K])):
                g = 0
                for e in range(1, n_exp):
                    if hop[e] > hop[g]:
                        g = e
                if hop[g] <= 0.0:
                    break
                add_row_mix(f, t0 + layer * n_exp + g, ps.p[P.W_CHAIN] * hop[g] / total, score)
                hop[g] = -1.0
    for g in range(n_exp):
        if ps.i[I.LAST_PASS, target * n_exp + g] == p - 1 and p > 0:
            add_row_mix(f, s0 + target * n_exp + g, ps.p[P.W_SEQUENCE], score)
    best = 0
    for e in range(1, n_exp):
        if score[e] > score[best]:
            best = e
    if score[best] > 0.0 and ps.p[P.W_COOCCURRENCE] > 0.0:
        add_row_mix(f, c0 + target * n_exp + best, ps.p[P.W_COOCCURRENCE], score)
    return push_top(cs, score, target, int(ps.p[P.K]), 0, 0.0)


POLICY = register(Policy(
    name="multi-look", kind="prefetch", hooks={"prefetch": prefetch}, init=init,
    capabilities=Capabilities(live=True),
    params={"w_transition": Param(0.4, 0.0, 1e6, "weight of the one-hop layer transition table"),
            "w_chain": Param(0.2, 0.0, 1e6, "weight of the two-hop transition chain"),
            "w_sequence": Param(0.3, 0.0, 1e6, "weight of the previous-pass sequence pattern"),
            "w_cooccurrence": Param(0.1, 0.0, 1e6, "weight of the co-selection expansion"),
            "k": Param(0, 0, 4096, "experts to prefetch (0: the model's top_k)", integer=True)},
    doc="Prefetch by fused sequence, transition-chain and co-occurrence tables learned online."))
