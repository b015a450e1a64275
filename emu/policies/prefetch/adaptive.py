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
With `study` 1 the policy is instead the study's Strategy E ("Intelligent Adaptive", `IntelligentStrategy`)
with the study's constants (`eta`, `decay` and `k` are then unused), one step being one gate of layer l,
predicting layer n = l+1 from what the pass used at layer l:
- four component sets: transition (every expert whose normalised row T[l, e] probability is > 0.05, for
  each e used at l; at most 12), frequency (the 8 experts of layer n with the largest counts, decayed by 0.99
  per visit), recency (the 6 experts of layer n used most recently), pattern (as transition with
  threshold 0.1, at most 8, from the third pass on);
- each expert scores the sum of the weights of the sets naming it (weights start 0.4, 0.3, 0.2, 0.1) and
  the top 32 experts of layer n (all of them when the model has 32 or fewer) are prefetched, best first;
- when layer n's gate reveals the truth, each component with a non-empty set moves its weight by
  `0.01 * (F1 - 0.5)` (F1 of its set against the experts used), then the weights are renormalised;
- cold start: in pass 0 (no history of layer n) experts 0 .. min(32, E) - 1 of layer n.
How the study's code is read where it leaves a choice: its "limit" of a transition or pattern set
(`list(set)[:12]`) keeps an unspecified 12; here the most probable ones (ties: lower id). Its
`np.argsort(scores)[-32:]` orders equal scores as numpy's sort leaves them; here ties go to the lower id,
so the zero-scored experts that fill the 32 are the lowest ids. The study adds 0.1 per transition and decays
the whole matrix and the frequencies by 0.99 per step, and stores the step number as recency; only
normalised rows and ranks are read, so per-token counts decayed per visit of the layer and the last pass
used rank the same. The study scores each prediction against the step it was made from (its
`_adapt_fusion_weights` reads `routing_history[-1]`); here against the layer it predicts. Not reproduced:
the study re-learns from its last 10 steps at every step (`_update_learning_models(routing_history[-10:])`,
so a transition is added up to 9 times and a use counted up to 10 times, weighting the latest steps more);
here each is counted once, when its gate runs.
State: in `f`, the transition table of `tables.py` (`T.TRANSITION`, a row per key), then the decayed
frequencies (a row per layer), then the rows `F`: the three signals predicted for the pending layer, the
weights (a column per signal, `S`) and a scratch row; `i[I.LAST_PASS, key]` the last pass per key,
`i[I.SCALARS, C.PENDING]` the layer a prediction is pending for (-1: none); `p[P.ETA]`, `p[P.DECAY]`,
`p[P.K]`, `p[P.STUDY]`. With `study` 1 the rows F.TRANSITION, F.FREQUENCY, F.RECENCY and F.PATTERN hold
the pending component sets (1.0: member) and row F.WEIGHTS the four weights in S4's order.
Cost: O(tokens * top_k^2 + E * |used|) per gate.
"""

from __future__ import annotations

import math
from enum import auto

import numpy as np
from numba import njit

from ...kernel.helpers import expert_id, push_top
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
    WEIGHTS = auto()  # the fusion weights, a column per signal (S; S4 with study 1)
    SCRATCH = auto()  # the truth of the layer now at its gate, then the fused score
    PATTERN = auto()  # study 1: the pending pattern set
    CAND = auto()  # study 1: scratch for a component's candidates


class S4(Fields):
    """study 1: the study's four components, columns of row F.WEIGHTS; their set rows are F.TRANSITION,
    F.FREQUENCY, F.RECENCY, F.PATTERN."""

    TRANSITION = auto()
    FREQUENCY = auto()
    RECENCY = auto()
    PATTERN = auto()


N_STUDY = len(S4)
#: the study's constants (Strategy E): initial weights, weight learning rate, decay, thresholds, set sizes
STUDY_WEIGHTS = (0.4, 0.3, 0.2, 0.1)
STUDY_WEIGHT_LR = 0.01
STUDY_DECAY = 0.99
STUDY_TRANSITION_P = 0.05
STUDY_TRANSITION_N = 12
STUDY_FREQUENCY_N = 8
STUDY_RECENCY_N = 6
STUDY_PATTERN_P = 0.1
STUDY_PATTERN_N = 8
STUDY_PICKS = 32


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
    STUDY = auto()  # 1: the study's Strategy E as written


def init(ctx: PolicyContext, params: dict[str, float]) -> object:
    n = ctx.n_layers * ctx.n_experts
    k = min(int(params["k"]) or ctx.top_k, ctx.n_experts)
    ps = new_policy_state(f_rows=n + ctx.n_layers + len(F), f_cols=max(ctx.n_experts, N_STUDY),
                          i_rows=len(I), i_cols=n, params=param_values(P, {"study": 0, **params, "k": k}))
    ps.i[I.LAST_PASS, :] = -1
    ps.i[I.SCALARS, C.PENDING] = -1
    if params.get("study", 0):
        ps.f[n + ctx.n_layers + F.WEIGHTS, :N_STUDY] = STUDY_WEIGHTS
    else:
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


@njit(cache=True, _nrt=False)
def _f1(pred, truth) -> float:
    """F1 of the set `pred` (1.0: member) against `truth`; -1.0 when `pred` is empty (no update)."""
    n_pred = 0
    n_true = 0
    inter = 0
    for e in range(truth.shape[0]):
        if pred[e] > 0.0:
            n_pred += 1
            if truth[e] > 0.0:
                inter += 1
        if truth[e] > 0.0:
            n_true += 1
    if n_pred == 0 or n_true == 0:
        return -1.0
    prec = inter / n_pred
    rec = inter / n_true
    return 2.0 * prec * rec / (prec + rec + 1e-10)


@njit(cache=True, _nrt=False)
def _top_set(values, n: int, out) -> None:
    """out[e] = 1.0 for the n experts with the largest positive values (ties: lower id), else 0.0."""
    out[:] = 0.0
    for _ in range(n):
        best = -1
        for e in range(values.shape[0]):
            if values[e] > 0.0 and out[e] == 0.0 and (best < 0 or values[e] > values[best]):
                best = e
        if best < 0:
            return
        out[best] = 1.0


@njit(cache=True, _nrt=False)
def _transition_set(f, t_row0: int, truth, threshold: float, n: int, cand, out) -> None:
    """The experts whose probability in the normalised row of some used expert exceeds `threshold`, at most
    n of them, the most probable first (a candidate keeps its largest probability)."""
    n_exp = truth.shape[0]
    cand[:] = 0.0
    for e in range(n_exp):
        if truth[e] > 0.0:
            row = f[t_row0 + e, :n_exp]
            total = row.sum()
            if total > 0.0:
                for g in range(n_exp):
                    q = row[g] / total
                    if q > threshold and q > cand[g]:
                        cand[g] = q
    _top_set(cand, n, out)


@njit(cache=True, _nrt=False, inline="always")
def _mark_routed(truth, tv, p: int, layer: int) -> None:
    """truth[e] = 1 for every expert pass p routes at `layer`, 0 elsewhere."""
    truth[:] = 0.0
    for tok in range(tv.pass_offsets[p], tv.pass_offsets[p + 1]):
        for s in range(tv.experts.shape[2]):
            truth[expert_id(tv, tok, layer, s)] = 1.0


@njit(cache=True, _nrt=False, inline="always")
def _observe(f, last_pass, tv, p: int, layer: int, t0: int, fq0: int, n_exp: int, decay: float) -> None:
    """The gate's routing into the layer's fading frequencies (`decay` per pass) and the transition tables."""
    freq = f[fq0 + layer, :n_exp]
    for e in range(n_exp):
        freq[e] *= decay
    for tok in range(tv.pass_offsets[p], tv.pass_offsets[p + 1]):
        for s in range(tv.experts.shape[2]):
            freq[expert_id(tv, tok, layer, s)] += 1.0
    update_tables(f, last_pass, tv, p, layer, t0, -1, -1)


@njit(cache=True, _nrt=False)
def _study(ps, cs, tv, p: int, layer: int) -> int:
    """Strategy E of the study, as the module docstring states it."""
    n_layers = tv.experts.shape[1]
    n_exp = cs.cur_key.shape[0]
    nk = n_layers * n_exp
    f = ps.f
    t0 = T.TRANSITION * nk
    fq0 = t0 + nk
    sig0 = fq0 + n_layers
    w = f[sig0 + F.WEIGHTS]
    truth = f[sig0 + F.SCRATCH, :n_exp]
    _mark_routed(truth, tv, p, layer)
    if ps.i[I.SCALARS, C.PENDING] == layer:
        total = 0.0
        for c in range(N_STUDY):
            row = sig0 + (F.PATTERN if c == S4.PATTERN else F.TRANSITION + c)
            f1 = _f1(f[row, :n_exp], truth)
            if f1 >= 0.0:
                w[c] += STUDY_WEIGHT_LR * (f1 - 0.5)
            total += w[c]
        if total > 0.0:
            for c in range(N_STUDY):
                w[c] /= total
    ps.i[I.SCALARS, C.PENDING] = -1
    # learn: the transitions into this layer fade once per visit, the counts of this layer too
    if layer > 0:
        for r in range(t0 + (layer - 1) * n_exp, t0 + layer * n_exp):
            for e in range(n_exp):
                f[r, e] *= STUDY_DECAY
    _observe(f, ps.i[I.LAST_PASS], tv, p, layer, t0, fq0, n_exp, STUDY_DECAY)
    target = layer + 1
    if target >= n_layers:
        return 0
    n_pick = min(STUDY_PICKS, n_exp)
    if p == 0:  # cold start: no history of layer n
        score = f[sig0 + F.CAND, :n_exp]
        for e in range(n_exp):
            score[e] = float(n_exp - e)
        return push_top(cs, score, target, n_pick, 0, 0.0)
    cand = f[sig0 + F.CAND, :n_exp]
    _transition_set(f, t0 + layer * n_exp, truth, STUDY_TRANSITION_P, STUDY_TRANSITION_N, cand,
                    f[sig0 + F.TRANSITION, :n_exp])
    _top_set(f[fq0 + target, :n_exp], STUDY_FREQUENCY_N, f[sig0 + F.FREQUENCY, :n_exp])
    tb = target * n_exp
    for e in range(n_exp):
        cand[e] = float(ps.i[I.LAST_PASS, tb + e] + 1)  # 0: never used
    _top_set(cand, STUDY_RECENCY_N, f[sig0 + F.RECENCY, :n_exp])
    pat = f[sig0 + F.PATTERN, :n_exp]
    if p >= 2:
        _transition_set(f, t0 + layer * n_exp, truth, STUDY_PATTERN_P, STUDY_PATTERN_N, cand, pat)
    else:
        pat[:] = 0.0
    score = truth  # the truth is no longer needed: reuse its row
    for e in range(n_exp):
        score[e] = (w[S4.TRANSITION] * f[sig0 + F.TRANSITION, e] + w[S4.FREQUENCY] * f[sig0 + F.FREQUENCY, e]
                    + w[S4.RECENCY] * f[sig0 + F.RECENCY, e] + w[S4.PATTERN] * pat[e])
    ps.i[I.SCALARS, C.PENDING] = target
    return push_top(cs, score, target, n_pick, 0, -np.inf)


@hook(PREFETCH_SIG)
def prefetch(ps, cs, tv, p, layer, t):
    if ps.p[P.STUDY] != 0.0:
        return _study(ps, cs, tv, p, layer)
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
    _mark_routed(truth, tv, p, layer)
    if ps.i[I.SCALARS, C.PENDING] == layer:
        total = 0.0
        for c in range(N_SIGNALS):  # signal c: weight w[c], prediction row sig0 + F.TRANSITION + c
            w[c] *= math.exp(eta * _topk_precision(f[sig0 + F.TRANSITION + c, :n_exp], truth, k))
            total += w[c]
        for c in range(N_SIGNALS):
            w[c] /= total
    ps.i[I.SCALARS, C.PENDING] = -1
    _observe(f, ps.i[I.LAST_PASS], tv, p, layer, t0, fq0, n_exp, decay)
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
            "k": Param(0, 0, 4096, "experts to prefetch (0: the model's top_k)", integer=True),
            "study": Param(0, 0, 1, "1: the study's Strategy E as written (four component sets, F1-moved "
                           "weights, top 32; eta, decay, k unused)", integer=True)},
    doc="Prefetch by transition+frequency+recency, fused with online-adapted weights (study=1: the "
        "study's Strategy E as written)."))
