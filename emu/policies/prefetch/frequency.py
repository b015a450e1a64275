"""Frequency prefetch ("Expert Prefetching Strategies" study): decayed per-expert counts, a top-K set per
layer recomputed every `interval` tokens, and at layer l's gate the top-K set of the next layer
(l+1, or layer 0 of the next pass) is prefetched.

It learns online from the accesses it has seen (no look into the future). At each gate the current
layer's counts fade by `decay` and gain the tokens routed to each expert.
State: `f[0, key]` decayed counts; `i[0, layer * K + j]` the top-K set of each layer (-1: empty);
`i[1, 0]` tokens seen, `i[1, 1]` tokens at the last recompute, `i[1, 2]` last pass counted.
Cost: O(n_experts) per gate; O(L * n_experts * K) per recompute.
"""

from __future__ import annotations

from numba import njit

from ...engines.state import ABSENT, SC_NCUR, new_policy_state
from ..api import KERNEL_SIG, Param, Policy, PolicyContext


def init(ctx: PolicyContext, params: dict[str, float]) -> object:
    k = int(params["k"]) or ctx.top_k
    k = min(k, ctx.n_experts)
    n = ctx.n_layers * ctx.n_experts
    ps = new_policy_state(f_rows=1, f_cols=n, i_rows=2, i_cols=max(ctx.n_layers * k, 3),
                          params=(params["decay"], params["interval"], float(k)))
    ps.i[0, :] = -1
    ps.i[1, 2] = -1
    return ps


@njit(cache=True, _nrt=False)
def _recompute(ps, n_layers: int, n_exp: int, k: int) -> None:
    for layer in range(n_layers):
        base = layer * n_exp
        for j in range(k):
            best = -1
            for e in range(n_exp):
                c = ps.f[0, base + e]
                if c <= 0.0:
                    continue
                taken = False
                for q in range(j):
                    if ps.i[0, layer * k + q] == e:
                        taken = True
                        break
                if not taken and (best < 0 or c > ps.f[0, base + best]):
                    best = e
            ps.i[0, layer * k + j] = best


@njit(KERNEL_SIG, cache=True, _nrt=False)
def prefetch(ps, cs, tv, p, layer, t):
    n_layers = tv.experts.shape[1]
    n_exp = cs.cur_key.shape[0]
    k = int(ps.p[2])
    if ps.i[1, 2] != p:
        ps.i[1, 2] = p
        ps.i[1, 0] += tv.pass_offsets[p + 1] - tv.pass_offsets[p]
    base = layer * n_exp
    for e in range(n_exp):
        ps.f[0, base + e] *= ps.p[0]
    for j in range(cs.sc[SC_NCUR]):
        ps.f[0, cs.cur_key[j]] += cs.cur_tokens[j]
    if ps.i[1, 0] - ps.i[1, 1] >= ps.p[1] or ps.i[0, 0] < 0:
        ps.i[1, 1] = ps.i[1, 0]
        _recompute(ps, n_layers, n_exp, k)
    target = (layer + 1) % n_layers
    n = 0
    for j in range(k):
        e = ps.i[0, target * k + j]
        if e >= 0 and cs.status[target * n_exp + e] == ABSENT:
            cs.pf_buf[n] = target * n_exp + e
            n += 1
    return n


POLICY = Policy(
    name="frequency", kind="prefetch", kernels=(prefetch,), init=init,
    params={"decay": Param(0.99, 0.0, 1.0, "count fade per visit of a layer"),
            "interval": Param(16, 1, 1e9, "tokens between recomputations of the top-K sets", integer=True),
            "k": Param(0, 0, 4096, "experts per layer to prefetch (0: the model's top_k)", integer=True)},
    doc="Prefetch each next layer's most frequent experts (decayed counts, top-K refreshed every N tokens).")
