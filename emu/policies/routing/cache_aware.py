"""Cache-aware routing (cache-conditional experts): bias each token's router toward resident experts.

Modified logits z' = z + lambda * delta_avg * 1[resident] select the experts; the original router
weights weight them. A trace records only each token's top-k gate scores, so z = log(score) for those,
delta_avg is the mean gap between consecutive sorted top-k logits of the token (1.0 at top-1), and an
expert outside the top-k is taken to sit one gap below the k-th logit (z_k - delta_avg), with
original weight score_k * exp(-delta_avg). Resident means resident or in flight. With lambda <= 1 a
resident outsider can only tie the k-th choice, so swaps start above lambda = 1; ties keep the
router's own choice, then the lower expert id. Each chosen expert carries its weight as its routing mass
(what the miss and eviction policies see); the router's own choices that the bias swapped out are booked
as rerouted mass (their gate scores), and the routed mass (`mass`, the denominator of `lost_mass_frac`)
stays the router's own: the replacements' smaller weights are swapped back for the displaced scores there,
so rerouted mass never exceeds routed mass.
Needs gate scores: a trace without them fails at init naming `policy.routing`.
State: scratch rows only (`f[F.LOGITS]`, `f[F.WEIGHTS]` of the candidates, `f[F.CHOSEN_W]` the chosen
experts' weights; `i[I.CHOSEN]` the chosen ids, `i[I.CAND]` the candidate ids); `p[P.STRENGTH]`.
Cost: O(tokens * (k^2 + E)).
"""

from __future__ import annotations

import math
from enum import auto

import numpy as np
from numba import njit

from ...kernel.helpers import sort_prefix
from ...kernel.hooks import ROUTE_SIG, hook
from ...kernel.layout import IN_FLIGHT, RESIDENT, SF, Fields, new_policy_state
from ..api import Capabilities, Param, Policy, PolicyContext, param_values, register


class I(Fields):
    """Rows of `ps.i` (2k columns: one token's candidates)."""

    CHOSEN = auto()  # the k chosen expert ids
    CAND = auto()  # the candidate ids (-1 once picked)


class F(Fields):
    """Rows of `ps.f` (2k columns)."""

    LOGITS = auto()  # the candidates' (boosted) logits
    WEIGHTS = auto()  # the candidates' original router weights
    CHOSEN_W = auto()  # the chosen experts' original weights


class P(Fields):
    """`ps.p`: the resolved parameters (param_values)."""

    STRENGTH = auto()  # lambda


def init(ctx: PolicyContext, params: dict[str, float]) -> object:
    k = ctx.trace.experts.shape[2]
    return new_policy_state(f_rows=len(F), f_cols=2 * k, i_rows=len(I), i_cols=2 * k, params=param_values(P, params))


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
        ids[s] = np.int64(tv.experts[tok, layer, s])
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


@hook(ROUTE_SIG)
def route(ps, cs, tv, p, layer, t):
    n_exp = cs.cur_key.shape[0]
    base = layer * n_exp
    count = cs.gather_count
    mass = cs.gather_mass
    ids = cs.cur_expert
    n = 0
    for tok in range(tv.pass_offsets[p], tv.pass_offsets[p + 1]):
        k = _select(ps, cs, tv, tok, layer, base)
        moved = 0.0  # the router's own choices that the bias swapped out: their gate scores
        swapped = False
        for s in range(k):  # book them as rerouted mass
            orig = np.int64(tv.experts[tok, layer, s])
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
                if np.int64(tv.experts[tok, layer, c]) == e:
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
    capabilities=Capabilities(needs_scores=True),
    params={"strength": Param(1.5, 0.0, 100.0, "lambda: logit boost of resident experts, in "
                                                "units of the token's mean top-k logit gap")},
    doc="Boost resident experts' logits by lambda*delta_avg; original weights weight the choice."))
