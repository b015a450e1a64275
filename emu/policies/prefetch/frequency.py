"""Frequency prefetch ("Expert Prefetching Strategies" study): decayed per-expert counts, a top-K set per
layer recomputed every `interval` tokens, and at layer l's gate the top-K set of the next layer
(l+1, or layer 0 of the next pass) is prefetched.

It learns online from the accesses it has seen (no look into the future). At each gate the current
layer's counts fade by `decay` and gain the tokens routed to each expert.
State: `f[F.COUNTS, key]` decayed counts; `i[I.TOP, layer * K + j]` the top-K set of each layer (-1:
empty); `i[I.SCALARS, C.TOKENS]` tokens seen, `i[I.SCALARS, C.RECOMPUTED]` tokens at the last recompute,
`i[I.SCALARS, C.PASS]` the last pass counted; `p[P.DECAY]`, `p[P.INTERVAL]`, `p[P.K]`.
Cost: O(n_experts) per gate; O(L * n_experts * K) per recompute.

With `study` 1 the policy is instead the study's Strategy D (`TopKStrategy`) as its code states it, its
constants in place of `decay`, `interval` and `k` (then unused). The lines implemented:
    self.k = k                                    # k=32 (its __init__ default; the study's K=32)
    self.update_frequency = 100                   # Recompute top-K every N tokens
    self.decay_factor = 0.999
    self.min_count_threshold = 1.0
    def predict_experts(self, routing_history, current_token):
        self._update_frequencies(routing_history)
        self.token_count += 1
        if self.token_count % self.update_frequency == 0:
            self._recompute_top_k()
        return list(self.current_top_k)
    def _update_frequencies(self, routing_history):
        self.expert_counts *= self.decay_factor
        recent_window = min(10, len(routing_history))  # Last 10 tokens
        for token_experts in routing_history[-recent_window:]:
            for expert_id in token_experts:
                self.expert_counts[expert_id] += 1.0
    def _recompute_top_k(self):
        top_k_indices = np.argsort(self.expert_counts)[-self.k:]
        (keep those with count >= min_count_threshold, then refill from np.argsort(...)[::-1] up to k)
How they are read here:
- the study's step ("token") is a pass; its expert ids are one layer's, so every layer keeps its own copy
  of the study's state (counts, token count, top-K set) over its own history: the sets of experts the
  earlier passes used at that layer. A pass of several tokens (prefill, a batch) is one step whose entry
  is the set its tokens were routed to at the layer (in the trace), each expert once.
- the call `predict_experts(history[:s], s)` of layer n for pass s runs at the gate before that layer: layer
  n-1's gate of pass s, or for layer 0 the last layer's gate of pass s-1 (pass 0's layer 0 has no gate
  before it; its call, which adds nothing, is made with pass 1's). It sees passes 0 .. s-1 only.
- each call fades all counts of the layer by 0.999 and adds 1 per expert of each of the last min(10, s)
  steps (a step is counted again at each of the 10 calls after it, as the code does); the 100th call
  (pass 99), the 200th, ... recompute the set, which is held in between: until pass 99 nothing is
  prefetched (cold start), and a change of routing shows at the next recompute only.
- the set is the top min(32, E) experts by count. The threshold filter and refill leave exactly that set
  (the filtered experts are the first ones the refill walks back in), zero counts included; ties, which
  numpy's argsort leaves to its sort, go to the lower id. The absent members are prefetched, the most
  counted first (the study returns a set; the order is this reading's).
State with `study` 1: `f[F.COUNTS, key]` the counts, `f[F.RING + j, key]` 1.0 where pass j (mod 10) used key;
`i[I.TOP, layer * K + j]` the sets (K = min(32, E)), `i[I.STEP, layer]` the next step (pass) each layer's
study has to make; `p[P.STUDY]`. Cost with `study` 1: O(10 * E) per gate, O(K * E) per recompute.
"""

from __future__ import annotations

from enum import auto

from numba import njit

from ...kernel.helpers import expert_id
from ...kernel.hooks import PREFETCH_SIG, hook
from ...kernel.layout import ABSENT, SC, Fields, new_policy_state
from ..api import Capabilities, Param, Policy, PolicyContext, param_values, register


class I(Fields):
    """Rows of `ps.i`."""

    TOP = auto()  # the top-K set of each layer at columns layer * K + j (-1: empty)
    SCALARS = auto()  # the scalars, at the columns C
    STEP = auto()  # study 1: per layer, the next step (pass) its copy of the study has to make


class C(Fields):
    """Columns of row I.SCALARS."""

    TOKENS = auto()  # tokens seen
    RECOMPUTED = auto()  # tokens seen at the last recompute
    PASS = auto()  # the last pass counted (-1: none)


class F(Fields):
    """Rows of `ps.f`."""

    COUNTS = auto()  # per key: decayed counts
    RING = auto()  # study 1: rows RING .. RING + 9: the set each of the last 10 passes used (1.0), per key


class P(Fields):
    """`ps.p`: the resolved parameters (param_values), `k` resolved against top_k."""

    DECAY = auto()
    INTERVAL = auto()
    K = auto()
    STUDY = auto()  # 1: the study's Strategy D as written


#: the study's constants (Strategy D, `TopKStrategy`): k, decay per call, calls between recomputes, window
STUDY_K = 32
STUDY_DECAY = 0.999
STUDY_INTERVAL = 100
STUDY_WINDOW = 10


def init(ctx: PolicyContext, params: dict[str, float]) -> object:
    k = int(params["k"]) or ctx.top_k
    k = min(k, ctx.n_experts)
    n = ctx.n_layers * ctx.n_experts
    study = bool(params.get("study", 0))
    f_rows = F.RING + STUDY_WINDOW if study else F.RING
    i_cols = max(ctx.n_layers * (STUDY_K if study else k), len(C), ctx.n_layers)
    ps = new_policy_state(f_rows=f_rows, f_cols=n, i_rows=len(I), i_cols=i_cols,
                          params=param_values(P, {"study": 0, **params, "k": k}))
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


@njit(cache=True, _nrt=False)
def _study_recompute(ps, target: int, n_exp: int, k: int) -> None:
    """The layer's set: its k most counted experts, zero counts included, ties to the lower id, best first."""
    base = target * n_exp
    top = ps.i[I.TOP]
    for j in range(k):
        best = -1
        for e in range(n_exp):
            taken = False
            for q in range(j):
                if top[target * k + q] == e:
                    taken = True
                    break
            if not taken and (best < 0 or ps.f[F.COUNTS, base + e] > ps.f[F.COUNTS, base + best]):
                best = e
        top[target * k + j] = best


@njit(cache=True, _nrt=False)
def _study(ps, cs, tv, p: int, layer: int) -> int:
    """Strategy D of the study, as the module docstring states it."""
    n_layers = tv.experts.shape[1]
    n_exp = cs.cur_key.shape[0]
    k = min(STUDY_K, n_exp)
    f = ps.f
    # this gate's set into the ring
    row = F.RING + p % STUDY_WINDOW
    base = layer * n_exp
    for e in range(n_exp):
        f[row, base + e] = 0.0
    for tok in range(tv.pass_offsets[p], tv.pass_offsets[p + 1]):
        for s in range(tv.experts.shape[2]):
            f[row, base + expert_id(tv, tok, layer, s)] = 1.0
    # the next layer's calls up to the pass it is predicted for (layer 0: the next pass)
    target = layer + 1
    q = p
    if target == n_layers:
        target = 0
        q = p + 1
    tb = target * n_exp
    while ps.i[I.STEP, target] <= q:
        step = ps.i[I.STEP, target]
        for e in range(n_exp):
            f[F.COUNTS, tb + e] *= STUDY_DECAY
        for j in range(max(0, step - STUDY_WINDOW), step):
            r = F.RING + j % STUDY_WINDOW
            for e in range(n_exp):
                f[F.COUNTS, tb + e] += f[r, tb + e]
        if (step + 1) % STUDY_INTERVAL == 0:
            _study_recompute(ps, target, n_exp, k)
        ps.i[I.STEP, target] = step + 1
    n = 0
    for j in range(k):
        e = ps.i[I.TOP, target * k + j]
        if e >= 0 and cs.status[tb + e] == ABSENT:
            cs.pf_buf[n] = tb + e
            n += 1
    return n


@hook(PREFETCH_SIG)
def prefetch(ps, cs, tv, p, layer, t):
    if ps.p[P.STUDY] != 0.0:
        return _study(ps, cs, tv, p, layer)
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
            "k": Param(0, 0, 4096, "experts per layer to prefetch (0: the model's top_k)", integer=True),
            "study": Param(0, 0, 1, "1: the study's Strategy D as written (K 32, decay 0.999 per token, the last "
                           "10 tokens re-counted, recomputed every 100 tokens; decay, interval, k unused)",
                           integer=True)},
    doc="Prefetch each next layer's most frequent experts (decayed counts, top-K refreshed every N tokens; "
        "study=1: the study's Strategy D as written)."))
