"""Frequency prefetch ("Expert Prefetching Strategies" study): decayed per-expert counts, a top-K set per
layer recomputed every `interval` tokens, and at layer l's gate the top-K set of the next layer
(l+1, or layer 0 of the next pass) is prefetched.

It learns online from the accesses it has seen (no look into the future). At each gate the current
layer's counts fade by `decay` and gain the tokens routed to each expert.
State: `f[F.COUNTS, key]` decayed counts; `i[I.TOP, layer * K + j]` the top-K set of each layer (-1:
empty); `i[I.SCALARS, C.TOKENS]` tokens seen, `i[I.SCALARS, C.RECOMPUTED]` tokens at the last recompute,
`i[I.SCALARS, C.PASS]` the last pass counted; `p[P.DECAY]`, `p[P.INTERVAL]`, `p[P.K]`.
Cost: O(n_experts) per gate; O(L * n_experts * K) per recompute.
"""

from __future__ import annotations

from enum import auto

from numba import njit

from ...kernel.hooks import PREFETCH_SIG, hook
from ...kernel.layout import ABSENT, SC, Fields, new_policy_state
from ..api import Capabilities, Param, Policy, PolicyContext, param_values, register


class I(Fields):
    """Rows of `ps.i`."""

    TOP = auto()  # the top-K set of each layer at columns layer * K + j (-1: empty)
    SCALARS = auto()  # the scalars, at the columns C


class C(Fields):
    """Columns of row I.SCALARS."""

    TOKENS = auto()  # tokens seen
    RECOMPUTED = auto()  # tokens seen at the last recompute
    PASS = auto()  # the last pass counted (-1: none)


class F(Fields):
    """Rows of `ps.f`."""

    COUNTS = auto()  # per key: decayed counts


class P(Fields):
    """`ps.p`: the resolved parameters (param_values), `k` resolved against top_k."""

    DECAY = auto()
    INTERVAL = auto()
    K = auto()


def init(ctx: PolicyContext, params: dict[str, float]) -> object:
    k = int(params["k"]) or ctx.top_k
    k = min(k, ctx.n_experts)
    n = ctx.n_layers * ctx.n_experts
    ps = new_policy_state(f_rows=len(F), f_cols=n, i_rows=len(I), i_cols=max(ctx.n_layers * k, len(C)),
                          params=param_values(P, {**params, "k": k}))
    ps.i[I.TOP, :] = -1
    ps.i[I.SCALARS, C.PASS] = -1
    return ps


@njit(cache=True, _nrt=False)
def _recompute(ps, n_layers: int, n_exp: int, k: int) -> None:
    for layer in range(n_layers):
        base = layer * n_exp
        for j in range(k):
            best = -1
            for e in range(n_exp):
                c = ps.f[F.COUNTS, base + e]
                if c <= 0.0:
                    continue
                taken = False
                for q in range(j):
                    if ps.i[I.TOP, layer * k + q] == e:
                        taken = True
                        break
                if not taken and (best < 0 or c > ps.f[F.COUNTS, base + best]):
                    best = e
            ps.i[I.TOP, layer * k + j] = best


@hook(PREFETCH_SIG)
def prefetch(ps, cs, tv, p, layer, t):
    n_layers = tv.experts.shape[1]
    n_exp = cs.cur_key.shape[0]
    k = int(ps.p[P.K])
    if ps.i[I.SCALARS, C.PASS] != p:
        ps.i[I.SCALARS, C.PASS] = p
        ps.i[I.SCALARS, C.TOKENS] += tv.pass_offsets[p + 1] - tv.pass_offsets[p]
    base = layer * n_exp
    for e in range(n_exp):
        ps.f[F.COUNTS, base + e] *= ps.p[P.DECAY]
    for j in range(cs.sc[SC.NCUR]):
        ps.f[F.COUNTS, cs.cur_key[j]] += cs.cur_tokens[j]
    # (layer 0's first pick is -1 until the first recompute)
    if ps.i[I.SCALARS, C.TOKENS] - ps.i[I.SCALARS, C.RECOMPUTED] >= ps.p[P.INTERVAL] or ps.i[I.TOP, 0] < 0:
        ps.i[I.SCALARS, C.RECOMPUTED] = ps.i[I.SCALARS, C.TOKENS]
        _recompute(ps, n_layers, n_exp, k)
    target = (layer + 1) % n_layers
    n = 0
    for j in range(k):
        e = ps.i[I.TOP, target * k + j]
        if e >= 0 and cs.status[target * n_exp + e] == ABSENT:
            cs.pf_buf[n] = target * n_exp + e
            n += 1
    return n


POLICY = register(Policy(
    name="frequency", kind="prefetch", hooks={"prefetch": prefetch}, init=init,
    capabilities=Capabilities(live=True),
    params={"decay": Param(0.99, 0.0, 1.0, "count fade per visit of a layer"),
            "interval": Param(16, 1, 1e9, "tokens between recomputations of the top-K sets", integer=True),
            "k": Param(0, 0, 4096, "experts per layer to prefetch (0: the model's top_k)", integer=True)},
    doc="Prefetch each next layer's most frequent experts (decayed counts, top-K refreshed every N tokens)."))
