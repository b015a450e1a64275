"""Cache-aware routing (cache-conditional experts): bias each token's router toward resident experts.

SpecMD (section 3.1.1) defines it: "Let z=G(x) represent original router logits, C denote cached expert
indices, and 1_C in {0,1}^|E| indicates cached experts. Modified logits are z' = z + lambda * Delta_avg * 1_C,
where lambda is hyperparameter used for tuning and Delta_avg is the historical average logit value. Modified
logits z' pass through softmax and top-k selection as usual." Its appendix A.1: "modified logits determine which
experts to select, but original logits determine their contribution weights"; section 5: "lambda values
between 0.1-0.5 work best". The parameter `history` picks how Delta_avg is taken.

`history` 1: SpecMD's definition, from the router's full logits (a trace that carries `logits`; one without
fails at init naming `policy.routing`). The paper does not say which statistic of the logits "the historical
average logit value" averages; an average of the raw logits would not be a scale at all (softmax ignores a
shift, and the mean logit may be negative or zero), so the tool takes the spread the boost is compared with:
Delta_avg at layer l is the running mean, over every token routed at l so far, of the token's logit range
(max_e z_e - min_e z_e over all n_experts logits). The range, the window (all tokens so far) and the per-layer
history (each router has its own logit scale) are the tool's choices: SpecMD names none of them, and the paper
it cites for the method (Skliar et al., "Mixture of cache-conditional experts") was not at hand to check. The
history takes a pass's tokens before the pass is routed, as a gate hook that sees the pass's logits would;
lambda is the paper's lambda, unscaled. All n_experts logits compete: top-k of z', ties to the router's own
choice, then the lower id. The router's own choices keep their gate scores as weights; an expert the bias
brings in gets the router's own weight for it, exp(z_e - z_r) * score_r with r the router's highest-scored
choice (the ratio of two softmax probabilities of the original logits, on the scale the trace stores its
scores in: full-softmax or renormalized top-k alike). The trace's routing is taken to be the top-k of its
logits (the live recorder's is); a router that picks by another score (a bias-corrected one) is outside it.

`history` 0 (the default, so scenarios written before the option keep their numbers): an approximation
for traces without logits. A trace records only each token's top-k gate scores, so z = log(score) for those,
delta_avg is the mean gap between consecutive sorted top-k logits of the token (1.0 at top-1), and an
expert outside the top-k is taken to sit one gap below the k-th logit (z_k - delta_avg), with
original weight score_k * exp(-delta_avg). With lambda <= 1 a resident outsider can only tie the k-th
choice, so swaps start above lambda = 1; ties keep the router's own choice, then the lower expert id.

Both: resident means resident or in flight. Each chosen expert carries its weight as its routing mass
(what the miss and eviction policies see); the router's own choices that the bias swapped out are booked
as rerouted mass (their gate scores), and the routed mass (`mass`, the denominator of `lost_mass_frac`)
stays the router's own: the replacements' weights are swapped back for the displaced scores there,
so rerouted mass never exceeds routed mass.
Needs gate scores: a trace without them fails at init naming `policy.routing`.
State: scratch rows (`f[F.LOGITS]`, `f[F.WEIGHTS]` of the candidates, `f[F.CHOSEN_W]` the chosen
experts' weights; `i[I.CHOSEN]` the chosen ids, `i[I.CAND]` the candidate ids) and, with `history`, the
per-layer sums of the logit ranges (`f[F.RANGE_SUM]`) and token counts (`i[I.SEEN]`); `p[P.STRENGTH]`,
`p[P.HISTORY]`.
Cost: O(tokens * (k^2 + E)); with `history` O(tokens * k * E).
"""

from __future__ import annotations

import math
from enum import auto

import numpy as np
from numba import njit

from ...errors import EmuError
from ...kernel.helpers import expert_id, sort_prefix
from ...kernel.hooks import ROUTE_SIG, hook
from ...kernel.layout import IN_FLIGHT, RESIDENT, SF, Fields, new_policy_state
from ..api import Capabilities, Param, Policy, PolicyContext, param_values, register


class I(Fields):
    """Rows of `ps.i` (2k columns: one token's candidates)."""

    CHOSEN = auto()  # the k chosen expert ids
    CAND = auto()  # the candidate ids (-1 once picked)
    SEEN = auto()  # history: per layer, the tokens whose logit ranges RANGE_SUM holds


class F(Fields):
    """Rows of `ps.f` (2k columns)."""

    LOGITS = auto()  # the candidates' (boosted) logits
    WEIGHTS = auto()  # the candidates' original router weights
    CHOSEN_W = auto()  # the chosen experts' original weights
    RANGE_SUM = auto()  # history: per layer, the summed logit range (max - min) of the tokens seen


class P(Fields):
    """`ps.p`: the resolved parameters (param_values)."""

    STRENGTH = auto()  # lambda
    HISTORY = auto()  # 0: delta_avg the token's own top-k gap; 1: the historical mean full-logit range


def init(ctx: PolicyContext, params: dict[str, float]) -> object:
    tv = ctx.trace
    k = tv.experts.shape[2]
    values = param_values(P, {"history": 0, **params})  # a choice without resolved parameters: the default
    if values[P.HISTORY] != 0.0:
        if tv.dims[3] == 0:
            raise EmuError("cache-aware routing with history = 1 (SpecMD's delta_avg, from the full router "
                           "logits) needs the router's logits, but the trace has no logits (record them with "
                           "the live recorder's logits option, or use history = 0)", key="policy.routing")
        if tv.logits.shape[2] != ctx.n_experts:
            raise EmuError(f"the trace has {tv.logits.shape[2]} router logits per token and layer but the model "
                           f"has {ctx.n_experts} experts", key="policy.routing")
    cols = max(2 * k, ctx.n_layers)
    return new_policy_state(f_rows=len(F), f_cols=cols, i_rows=len(I), i_cols=cols, params=values)


@njit(cache=True, _nrt=False)
def _select(ps, cs, tv, tok: int, layer: int, base: int) -> int:
    """Fill i[I.CHOSEN, :k] with the chosen experts and f[F.CHOSEN_W, :k] with their original weights;
    returns k."""
    k = tv.experts.shape[2]
    n_exp = cs.cur_key.shape[0]
    lam = ps.p[P.STRENGTH]
    z = ps.f[F.LOGITS]
    ids = ps.i[I.CAND]
    w = ps.f[F.WEIGHTS]
    # the router's own choices, sorted by logit (descending)
    for s in range(k):
        ids[s] = expert_id(tv, tok, layer, s)
        z[s] = math.log(max(np.float64(tv.scores[tok, layer, s]), 1e-12))
    for a in range(1, k):
        zi = z[a]
        ii = ids[a]
        b = a - 1
        while b >= 0 and (z[b] < zi or (z[b] == zi and ids[b] > ii)):
            z[b + 1] = z[b]
            ids[b + 1] = ids[b]
            b -= 1
        z[b + 1] = zi
        ids[b + 1] = ii
    delta = (z[0] - z[k - 1]) / (k - 1) if k > 1 else 1.0
    if delta <= 0.0:
        delta = 1.0
    z_out = z[k - 1] - delta
    w_out = math.exp(z[k - 1]) * math.exp(-delta)
    # candidates: k boosted originals plus up to k resident outsiders (they all share one logit)
    n = k
    for s in range(k):
        w[s] = math.exp(z[s])
        st = cs.status[base + ids[s]]
        if st in (RESIDENT, IN_FLIGHT):
            z[s] += lam * delta
    z_res = z_out + lam * delta
    for e in range(n_exp):
        if n >= 2 * k:
            break
        st = cs.status[base + e]
        if st != RESIDENT and st != IN_FLIGHT:
            continue
        inside = False
        for s in range(k):
            if ids[s] == e:
                inside = True
                break
        if inside:
            continue
        ids[n] = e
        z[n] = z_res
        w[n] = w_out
        n += 1
    # pick the k best: logit, then the router's own choice (index < k), then lower id
    chosen = ps.i[I.CHOSEN]
    for j in range(k):
        best = -1
        for c in range(n):
            if ids[c] < 0:
                continue
            if best < 0 or z[c] > z[best] or (z[c] == z[best] and (
                    (c < k and best >= k) or ((c < k) == (best < k) and ids[c] < ids[best]))):
                best = c
        chosen[j] = ids[best]
        ps.f[F.CHOSEN_W, j] = w[best]
        ids[best] = -1
    return k


@njit(cache=True, _nrt=False)
def _history_delta(ps, tv, p: int, layer: int) -> float:
    """Add pass p's tokens' logit ranges at `layer` to the history; returns the running mean range."""
    n_exp = tv.logits.shape[2]
    for tok in range(tv.pass_offsets[p], tv.pass_offsets[p + 1]):
        hi = np.float64(tv.logits[tok, layer, 0])
        lo = hi
        for e in range(1, n_exp):
            v = np.float64(tv.logits[tok, layer, e])
            if v > hi:
                hi = v
            if v < lo:
                lo = v
        ps.f[F.RANGE_SUM, layer] += hi - lo
        ps.i[I.SEEN, layer] += 1
    return ps.f[F.RANGE_SUM, layer] / ps.i[I.SEEN, layer]


@njit(cache=True, _nrt=False)
def _select_history(ps, cs, tv, tok: int, layer: int, base: int, boost: float) -> int:
    """`_select` from the full logits: top-k of z + boost * 1[resident or in flight] over every expert; the
    router's own choices weighted by their scores, the others by the router's own weight for them."""
    k = tv.experts.shape[2]
    n_exp = tv.logits.shape[2]
    ref = 0  # the router's highest-scored choice: the anchor of the outsiders' weights
    for s in range(1, k):
        if tv.scores[tok, layer, s] > tv.scores[tok, layer, ref]:
            ref = s
    z_ref = np.float64(tv.logits[tok, layer, expert_id(tv, tok, layer, ref)])
    s_ref = np.float64(tv.scores[tok, layer, ref])
    chosen = ps.i[I.CHOSEN]
    for j in range(k):
        best = -1
        best_z = 0.0
        best_own = -1  # the best's slot among the router's choices, -1 if an outsider
        for e in range(n_exp):
            taken = False
            for c in range(j):
                if chosen[c] == e:
                    taken = True
                    break
            if taken:
                continue
            z = np.float64(tv.logits[tok, layer, e])
            st = cs.status[base + e]
            if st in (RESIDENT, IN_FLIGHT):
                z += boost
            own = -1
            for s in range(k):
                if expert_id(tv, tok, layer, s) == e:
                    own = s
                    break
            # ties: the router's own choice, then the lower id (e ascends, so a later e never wins a full tie)
            if best < 0 or z > best_z or (z == best_z and own >= 0 and best_own < 0):
                best = e
                best_z = z
                best_own = own
        chosen[j] = best
        if best_own >= 0:
            ps.f[F.CHOSEN_W, j] = np.float64(tv.scores[tok, layer, best_own])
        else:
            ps.f[F.CHOSEN_W, j] = s_ref * math.exp(np.float64(tv.logits[tok, layer, best]) - z_ref)
    return k


@hook(ROUTE_SIG)
def route(ps, cs, tv, p, layer, t):
    n_exp = cs.cur_key.shape[0]
    base = layer * n_exp
    count = cs.gather_count
    mass = cs.gather_mass
    ids = cs.cur_expert
    n = 0
    history = ps.p[P.HISTORY] != 0.0
    boost = ps.p[P.STRENGTH] * _history_delta(ps, tv, p, layer) if history else 0.0
    for tok in range(tv.pass_offsets[p], tv.pass_offsets[p + 1]):
        k = _select_history(ps, cs, tv, tok, layer, base, boost) if history else _select(ps, cs, tv, tok, layer, base)
        moved = 0.0  # the router's own choices that the bias swapped out: their gate scores
        swapped = False
        for s in range(k):  # book them as rerouted mass
            orig = expert_id(tv, tok, layer, s)
            kept = False
            for c in range(k):
                if ps.i[I.CHOSEN, c] == orig:
                    kept = True
                    break
            if not kept:
                cs.stats_f[SF.REROUTED_MASS, layer] += np.float64(tv.scores[tok, layer, s])
                moved += np.float64(tv.scores[tok, layer, s])
                swapped = True
        outsiders = 0.0  # the weights of the resident outsiders that replaced them
        for s in range(k):
            e = ps.i[I.CHOSEN, s]
            if count[e] == 0:
                ids[n] = e
                n += 1
            count[e] += 1
            mass[e] += ps.f[F.CHOSEN_W, s]
            inside = False
            for c in range(k):
                if expert_id(tv, tok, layer, c) == e:
                    inside = True
                    break
            if not inside:
                outsiders += ps.f[F.CHOSEN_W, s]
        if swapped:
            # the routed mass stays the router's own: the core adds the chosen experts' weights, so the
            # replacements' (smaller) weights are swapped back for the scores of the choices they displaced
            cs.stats_f[SF.MASS, layer] += moved - outsiders
    sort_prefix(ids, n)
    for j in range(n):
        e = ids[j]
        cs.cur_key[j] = base + e
        cs.cur_tokens[j] = count[e]
        cs.cur_mass[j] = mass[e]
        count[e] = 0
        mass[e] = 0.0
    return n


POLICY = register(Policy(
    name="cache-aware", kind="routing", hooks={"route": route}, init=init,
    capabilities=Capabilities(needs_scores=True, reads_logits=True),
    params={"strength": Param(1.5, 0.0, 100.0, "lambda: logit boost of resident experts, in units of delta_avg "
                                                "(SpecMD's scale with history = 1, best at 0.1-0.5 there)"),
            "history": Param(0, 0, 1, "delta_avg: 0 the token's own mean top-k logit gap (needs only gate scores), "
                                      "1 SpecMD's historical average (running mean of the full router logits' "
                                      "range per layer; needs a trace with logits)", integer=True)},
    doc="Boost resident experts' logits by lambda*delta_avg; original weights weight the choice."))
