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
State: `f[0:L*E]` transition table (row per key), `f[L*E + layer]` decayed frequencies of that layer,
then three rows with the signals predicted for the pending layer, one row with the weights and one
scratch row; `i[0]` last pass per key, `i[1, 0]` the layer a prediction is pending for (-1: none).
Cost: O(tokens * top_k^2 + E * |used|) per gate.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from ...engines.state import new_policy_state
from ..api import KERNEL_SIG, Param, Policy, PolicyContext
from ..kernel_util import push_top
from .tables import add_row_mix, update_tables

N_SIGNALS = 3


def init(ctx: PolicyContext, params: dict[str, float]) -> object:
    n = ctx.n_layers * ctx.n_experts
    k = min(int(params["k"]) or ctx.top_k, ctx.n_experts)
    ps = new_policy_state(f_rows=n + ctx.n_layers + 5, f_cols=max(ctx.n_experts, N_SIGNALS), i_rows=2,
                          i_cols=n, params=(params["eta"], params["decay"], float(k)))
    ps.i[0, :] = -1
    ps.i[1, 0] = -1
    ps.f[n + ctx.n_layers + 3, :N_SIGNALS] = 1.0 / N_SIGNALS
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


@njit(KERNEL_SIG, cache=True, _nrt=False)
def prefetch(ps, cs, tv, p, layer, t):
    n_layers = tv.experts.shape[1]
    n_exp = cs.cur_key.shape[0]
    nk = n_layers * n_exp
    f = ps.f
    k = int(ps.p[2])
    eta = ps.p[0]
    decay = ps.p[1]
    sig0 = nk + n_layers
    w = f[sig0 + 3]
    truth = f[sig0 + 4, :n_exp]
    # 1. learn: the truth of this layer scores the signals predicted for it
    truth[:] = 0.0
    for tok in range(tv.pass_offsets[p], tv.pass_offsets[p + 1]):
        for s in range(tv.experts.shape[2]):
            truth[np.int64(tv.experts[tok, layer, s])] = 1.0
    if ps.i[1, 0] == layer:
        total = 0.0
        for c in range(N_SIGNALS):
            w[c] *= math.exp(eta * _topk_precision(f[sig0 + c, :n_exp], truth, k))
            total += w[c]
        for c in range(N_SIGNALS):
            w[c] /= total
    ps.i[1, 0] = -1
    freq = f[nk + layer, :n_exp]
    for e in range(n_exp):
        freq[e] *= decay
    for tok in range(tv.pass_offsets[p], tv.pass_offsets[p + 1]):
        for s in range(tv.experts.shape[2]):
            freq[np.int64(tv.experts[tok, layer, s])] += 1.0
    update_tables(f, ps.i[0], tv, p, layer, 0, -1, -1)
    # 2. predict the next layer
    target = layer + 1
    if target >= n_layers:
        return 0
    trans = f[sig0, :n_exp]
    fr = f[sig0 + 1, :n_exp]
    rec = f[sig0 + 2, :n_exp]
    trans[:] = 0.0
    for e in range(n_exp):
        if truth[e] > 0.0:
            add_row_mix(f, layer * n_exp + e, 1.0, trans)
    tb = target * n_exp
    fr[:] = 0.0
    add_row_mix(f, nk + target, 1.0, fr)
    rec[:] = 0.0
    total = 0.0
    for e in range(n_exp):
        last = ps.i[0, tb + e]
        if last >= 0:
            rec[e] = decay ** (p - last)
            total += rec[e]
    if total > 0.0:
        for e in range(n_exp):
            rec[e] /= total
    score = truth  # the truth is no longer needed: reuse its row
    for e in range(n_exp):
        score[e] = w[0] * trans[e] + w[1] * fr[e] + w[2] * rec[e]
    ps.i[1, 0] = target
    return push_top(cs, score, target, k, 0, 0.0)


POLICY = Policy(
    name="adaptive", kind="prefetch", kernels=(prefetch,), init=init,
    params={"eta": Param(0.5, 0.0, 100.0, "learning rate of the fusion weights (Hedge)"),
            "decay": Param(0.95, 0.0, 1.0, "fade of frequency counts per visit and of recency per pass"),
            "k": Param(0, 0, 4096, "experts to prefetch (0: the model's top_k)", integer=True)},
    doc="Prefetch by transition+frequency+recency, fused with online-adapted weights.")
