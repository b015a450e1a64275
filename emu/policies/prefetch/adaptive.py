"""Adaptive prefetch ("Expert Prefetching Strategies" study): transition matrix + frequency + recency,
fused with weights that adapt online to which signal has been predicting well.

For the next layer n = l+1 at layer l's gate the three signals (each normalised to sum 1) are:
- transition: rows T[l, e] for the experts e the pass used at layer l (learned online, per token);
- frequency: decayed counts of each expert at layer n (fade `decay` per visit);
- recency: `decay ** (passes since the expert was last used at layer n)`.
The fused score `sum_c w_c * signal_c` picks the top `k` (default top_k) absent experts. When layer n's
gate reveals the truth, each signal's own top-k precision h_c updates its weight multiplicatively,
`w_c *= exp(eta * h_c)`, then the weights are renormalised (Hedge), so a trace whose routing is
recency-driven shifts weight to recency.
State: in `f`, the transition table of `tables.py` (`T.TRANSITION`, a row per key), then the decayed
frequencies (a row per layer), then the rows `F`: the three signals predicted for the pending layer, the
weights (a column per signal, `S`) and a scratch row; `i[I.LAST_PASS, key]` the last pass per key,
`i[I.SCALARS, C.PENDING]` the layer a prediction is pending for (-1: none); `p[P.ETA]`, `p[P.DECAY]`,
`p[P.K]`.
Cost: O(tokens * top_k^2 + E * |used|) per gate.
"""

from __future__ import annotations

import math
from enum import auto

import numpy as np
from numba import njit

from ...kernel.helpers import push_top
from ...kernel.hooks import PREFETCH_SIG, hook
from ...kernel.layout import Fields, new_policy_state
from ..api import Capabilities, Param, Policy, PolicyContext, param_values, register
from .tables import T, add_row_mix, update_tables


class S(Fields):
    """The signals: columns of row F.WEIGHTS, and their rows' order from F.TRANSITION."""

    TRANSITION = auto()
    FREQUENCY = auto()
    RECENCY = auto()


N_SIGNALS = len(S)


class F(Fields):
    """Rows of `ps.f` after the tables (n_keys transition rows, n_layers frequency rows): row n_keys +
    n_layers + F.X."""

    TRANSITION = auto()  # the signals predicted for the pending layer, in S's order
    FREQUENCY = auto()
    RECENCY = auto()
    WEIGHTS = auto()  # the fusion weights, a column per signal (S)
    SCRATCH = auto()  # the truth of the layer now at its gate, then the fused score


class I(Fields):
    """Rows of `ps.i`."""

    LAST_PASS = auto()  # per key: the last pass that used it (-1: none)
    SCALARS = auto()  # the scalars, at the columns C


class C(Fields):
    """Columns of row I.SCALARS."""

    PENDING = auto()  # the layer a prediction is pending for (-1: none)


class P(Fields):
    """`ps.p`: the resolved parameters (param_values), `k` resolved against top_k."""

    ETA = auto()
    DECAY = auto()
    K = auto()


def init(ctx: PolicyContext, params: dict[str, float]) -> object:
    n = ctx.n_layers * ctx.n_experts
    k = min(int(params["k"]) or ctx.top_k, ctx.n_experts)
    ps = new_policy_state(f_rows=n + ctx.n_layers + len(F), f_cols=max(ctx.n_experts, N_SIGNALS),
                          i_rows=len(I), i_cols=n, params=param_values(P, {**params, "k": k}))
    ps.i[I.LAST_PASS, :] = -1
    ps.i[I.SCALARS, C.PENDING] = -1
    ps.f[n + ctx.n_layers + F.WEIGHTS, :N_SIGNALS] = 1.0 / N_SIGNALS
    return ps


@njit(cache=True, _nrt=False)
def _topk_precision(sig, truth, k: int) -> float:
    """Share of the signal's top-k experts that the layer really used (destroys `sig`)."""
    n_exp = truth.shape[0]
    hit = 0
    picked = 0
    for _ in range(k):
        best = -1
        for e in range(n_exp):
            if sig[e] > 0.0 and (best < 0 or sig[e] > sig[best]):
                best = e
        if best < 0:
            break
        sig[best] = -1.0
        picked += 1
        if truth[best] > 0.0:
            hit += 1
    return hit / picked if picked else 0.0


@hook(PREFETCH_SIG)
def prefetch(ps, cs, tv, p, layer, t):
    n_layers = tv.experts.shape[1]
    n_exp = cs.cur_key.shape[0]
    nk = n_layers * n_exp
    f = ps.f
    k = int(ps.p[P.K])
    eta = ps.p[P.ETA]
    decay = ps.p[P.DECAY]
    t0 = T.TRANSITION * nk  # the transition table: rows t0 + key
    fq0 = t0 + nk  # the decayed frequencies: rows fq0 + layer
    sig0 = fq0 + n_layers  # the rows F: sig0 + F.X
    w = f[sig0 + F.WEIGHTS]
    truth = f[sig0 + F.SCRATCH, :n_exp]
    # 1. learn: the truth of this layer scores the signals predicted for it
    truth[:] = 0.0
    for tok in range(tv.pass_offsets[p], tv.pass_offsets[p + 1]):
        for s in range(tv.experts.shape[2]):
            truth[np.int64(tv.experts[tok, layer, s])] = 1.0
    if ps.i[I.SCALARS, C.PENDING] == layer:
        total = 0.0
        for c in range(N_SIGNALS):  # signal c: weight w[c], prediction row sig0 + F.TRANSITION + c
            w[c] *= math.exp(eta * _topk_precision(f[sig0 + F.TRANSITION + c, :n_exp], truth, k))
            total += w[c]
        for c in range(N_SIGNALS):
            w[c] /= total
    ps.i[I.SCALARS, C.PENDING] = -1
    freq = f[fq0 + layer, :n_exp]
    for e in range(n_exp):
        freq[e] *= decay
    for tok in range(tv.pass_offsets[p], tv.pass_offsets[p + 1]):
        for s in range(tv.experts.shape[2]):
            freq[np.int64(tv.experts[tok, layer, s])] += 1.0
    update_tables(f, ps.i[I.LAST_PASS], tv, p, layer, t0, -1, -1)
    # 2. predict the next layer
    target = layer + 1
    if target >= n_layers:
        return 0
    trans = f[sig0 + F.TRANSITION, :n_exp]
    fr = f[sig0 + F.FREQUENCY, :n_exp]
    rec = f[sig0 + F.RECENCY, :n_exp]
    trans[:] = 0.0
    for e in range(n_exp):
        if truth[e] > 0.0:
            add_row_mix(f, t0 + layer * n_exp + e, 1.0, trans)
    tb = target * n_exp
    fr[:] = 0.0
    add_row_mix(f, fq0 + target, 1.0, fr)
    rec[:] = 0.0
    total = 0.0
    for e in range(n_exp):
        last = ps.i[I.LAST_PASS, tb + e]
        if last >= 0:
            rec[e] = decay ** (p - last)
            total += rec[e]
    if total > 0.0:
        for e in range(n_exp):
            rec[e] /= total
    score = truth  # the truth is no longer needed: reuse its row
    for e in range(n_exp):
        score[e] = w[S.TRANSITION] * trans[e] + w[S.FREQUENCY] * fr[e] + w[S.RECENCY] * rec[e]
    ps.i[I.SCALARS, C.PENDING] = target
    return push_top(cs, score, target, k, 0, 0.0)


POLICY = register(Policy(
    name="adaptive", kind="prefetch", hooks={"prefetch": prefetch}, init=init,
    capabilities=Capabilities(live=True),
    params={"eta": Param(0.5, 0.0, 100.0, "learning rate of the fusion weights (Hedge)"),
            "decay": Param(0.95, 0.0, 1.0, "fade of frequency counts per visit and of recency per pass"),
            "k": Param(0, 0, 4096, "experts to prefetch (0: the model's top_k)", integer=True)},
    doc="Prefetch by transition+frequency+recency, fused with online-adapted weights."))
