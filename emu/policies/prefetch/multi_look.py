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

With `study` 1 the policy is instead the study's Strategy C (`MultiLookStrategy`) as its code states it
(the weights and `k` are then unused): pattern_length 3, min_pattern_frequency 3, at most 32 predictions.
The lines implemented, per call `predict_experts(routing_history, current_token)`:
    if len(routing_history) < self.pattern_length: return []
    self._update_patterns(routing_history)
    # sequence patterns: every call re-adds every window of the whole history
    for i in range(len(routing_history) - self.pattern_length):
        pattern = tuple(tuple(sorted(experts)) for experts in routing_history[i:i+self.pattern_length])
        self.sequence_patterns[pattern]['frequency'] += 1
        ...['next_experts'][expert] += 1  for expert in routing_history[i + self.pattern_length]
    # co-occurrence: the last two steps only
    for curr_expert in routing_history[-2]: for next_expert in routing_history[-1]: [curr][next] += 1
    # temporal: the last 10 steps
    for token_idx, experts in enumerate(routing_history[-10:]):
        position = (len(routing_history) - 10 + token_idx) % 64;  [position][expert] += 1
    predicted = sequence | co-occurrence | temporal | chains;  return list(predicted)[:32]
    sequence: the last 3 steps' pattern, if its 'frequency' >= 3: its next experts with count >= 3 * 0.3
    co-occurrence: for each expert of routing_history[-1], the experts counted >= 3 after it
    temporal: at position current_token % 64, the experts counted >= 3
    chains: for chain lengths 2 .. min(4, len) - 1, the chain of the last steps, if 'frequency' >= 3
How they are read here:
- as `frequency`'s study mode: the study's step ("token") is a pass, each layer keeps its own copy of the
  study's state over the sets of experts the earlier passes used at that layer (a pass of several tokens:
  the set its tokens were routed to, each expert once), and the call for layer n and pass s (history: passes
  0 .. s-1, `current_token` s) runs at the gate before that layer (layer n-1's of pass s; layer 0's at the
  last layer's gate of pass s-1). The calls before pass 3 predict nothing and learn nothing (cold start).
- sequence patterns: a window i (passes i .. i+2, then i+3) is re-added at every call from pass i+4 on,
  so at pass s its 'frequency' and next-expert counts are sums of s - i - 3 over the windows with that
  pattern: a pattern seen once is trusted from 3 passes after its end (frequency 3), and every expert that
  ever followed it passes `>= 0.9` (integer counts). Computed here by scanning the stored windows.
- co-occurrence is what the code counts: the experts of one pass followed by those of the next pass at the
  same layer (pass j-1 -> j, counted at the call of pass j+1: the pair of passes 0 -> 1 is never counted,
  the call of pass 2 returning before it learns).
- temporal: `position` is the step's index once the history holds 10 steps; before that the code's
  `len - 10 + token_idx` shifts the steps 0 .. 8 to positions 57 .. 63 and 0 .. 7 (implemented as written).
  A step is added at each of the 10 calls after it, so the experts of pass s - 64 always pass the threshold
  at pass s.
- chains: the code never writes `transition_chains` (`_update_patterns` fills the other three tables), so
  the chain component never predicts; implemented as such. `lookahead_steps` (4) is set and never read;
  `multi_step_prediction` (a separate listing, calling `_predict_single_step`, whose body the study does not
  give, and sampling with `random.random()`) is not called by `predict_experts` and is not implemented.
- `list(predicted_experts)[:32]` keeps an unspecified 32 (a set's order); here the 32 lowest ids, issued
  lowest first, the absent ones only.
Not for the live runtime: the study keeps the whole history, sized here by the trace's passes (a clear error
where there is no trace). State with `study` 1: in `i`, rows I.MASK + layer * W + w: the set each pass used
(W = ceil(E / 64) words, a column per pass), `i[I.STEP, layer]` the next call to make; in `f`, rows
layer * E + a the co-occurrence counts, then rows L * E + layer * 64 + position the temporal counts, then
the scratch rows F; `p[P.STUDY]`. Cost: O(passes * W) per gate (the window scan), O(10 * E + E^2) to learn.
"""

from __future__ import annotations

from enum import auto

import numpy as np
from numba import njit

from ...errors import EmuError
from ...kernel.helpers import expert_id, push_top
from ...kernel.hooks import PREFETCH_SIG, hook
from ...kernel.layout import ABSENT, Fields, new_policy_state
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
    STEP = auto()  # study 1: per layer, the next call (pass) its copy of the study has to make
    MASK = auto()  # study 1: first of the L * W rows of the sets each pass used


class P(Fields):
    """`ps.p`: the resolved parameters (param_values), `k` resolved against top_k."""

    W_TRANSITION = auto()
    W_CHAIN = auto()
    W_SEQUENCE = auto()
    W_COOCCURRENCE = auto()
    K = auto()
    STUDY = auto()  # 1: the study's Strategy C as written


#: the study's constants (Strategy C, `MultiLookStrategy`)
STUDY_PATTERN = 3  # pattern_length
STUDY_MIN_FREQ = 3  # min_pattern_frequency
STUDY_NEXT_MIN = STUDY_MIN_FREQ * 0.3  # a next expert's count threshold
STUDY_WINDOW = 10  # temporal patterns: the last 10 steps
STUDY_PERIOD = 64  # temporal positions
STUDY_PICKS = 32


def init(ctx: PolicyContext, params: dict[str, float]) -> object:
    n = ctx.n_layers * ctx.n_experts
    k = min(int(params["k"]) or ctx.top_k, ctx.n_experts)
    values = param_values(P, {"study": 0, **params, "k": k})
    if params.get("study", 0):
        n_passes = int(ctx.trace.pass_offsets.shape[0]) - 1
        if n_passes <= 0:
            raise EmuError("multi-look study=1 keeps the whole routing history of a trace (the study's pattern "
                           "store); there is no trace here (the live runtime); use study = 0",
                           key="policy.prefetch.study")
        words = (ctx.n_experts + 63) // 64
        ps = new_policy_state(f_rows=ctx.n_layers * (ctx.n_experts + STUDY_PERIOD) + len(F), f_cols=ctx.n_experts,
                              i_rows=I.MASK + ctx.n_layers * words, i_cols=max(n, n_passes + 1), params=values)
        ps.i[I.LAST_PASS, :] = -1
        return ps
    ps = new_policy_state(f_rows=N_TABLES * n + len(F), f_cols=ctx.n_experts, i_rows=len(I), i_cols=n,
                          params=values)
    ps.i[I.LAST_PASS, :] = -1
    return ps


@njit(cache=True, _nrt=False)
def _used(tv, p: int, layer: int, n_exp: int, out) -> None:
    out[:] = 0.0
    for tok in range(tv.pass_offsets[p], tv.pass_offsets[p + 1]):
        for s in range(tv.experts.shape[2]):
            out[expert_id(tv, tok, layer, s)] = 1.0


@njit(cache=True, _nrt=False, inline="always")
def _has(ps, row: int, col: int, e: int) -> bool:
    """Whether the set at (mask row of word 0, column) holds expert e."""
    return (ps.i[row + e // 64, col] >> np.int64(e % 64)) & np.int64(1) == np.int64(1)


@njit(cache=True, _nrt=False)
def _same_window(ps, row: int, words: int, i: int, j: int) -> bool:
    """Whether the 3 sets from column i equal the 3 from column j."""
    for d in range(STUDY_PATTERN):
        for w in range(words):
            if ps.i[row + w, i + d] != ps.i[row + w, j + d]:
                return False
    return True


@njit(cache=True, _nrt=False)
def _study_learn(ps, row: int, n_exp: int, co0: int, tm0: int, s: int) -> None:
    """The study's `_update_patterns` at call s, co-occurrence and temporal parts (the sequence patterns are
    read from the stored sets when predicting)."""
    f = ps.f
    for a in range(n_exp):
        if _has(ps, row, s - 2, a):
            for b in range(n_exp):
                if _has(ps, row, s - 1, b):
                    f[co0 + a, b] += 1.0
    first = max(0, s - STUDY_WINDOW)
    for idx in range(first, s):
        position = (s - STUDY_WINDOW + idx - first) % STUDY_PERIOD
        for e in range(n_exp):
            if _has(ps, row, idx, e):
                f[tm0 + position, e] += 1.0


@njit(cache=True, _nrt=False)
def _study(ps, cs, tv, p: int, layer: int) -> int:
    """Strategy C of the study, as the module docstring states it."""
    n_layers = tv.experts.shape[1]
    n_exp = cs.cur_key.shape[0]
    words = (n_exp + 63) // 64
    f = ps.f
    cap = ps.i.shape[1]
    # this gate's set
    row = I.MASK + layer * words
    if p < cap:
        for w in range(words):
            ps.i[row + w, p] = 0
        for tok in range(tv.pass_offsets[p], tv.pass_offsets[p + 1]):
            for s in range(tv.experts.shape[2]):
                e = expert_id(tv, tok, layer, s)
                ps.i[row + e // 64, p] |= np.int64(1) << np.int64(e % 64)
    # the next layer's calls up to the pass it is predicted for (layer 0: the next pass)
    target = layer + 1
    q = p
    if target == n_layers:
        target = 0
        q = p + 1
    if q >= cap:
        return 0
    row = I.MASK + target * words
    co0 = target * n_exp
    tm0 = n_layers * n_exp + target * STUDY_PERIOD
    while ps.i[I.STEP, target] <= q:
        step = ps.i[I.STEP, target]
        if step >= STUDY_PATTERN:
            _study_learn(ps, row, n_exp, co0, tm0, step)
        ps.i[I.STEP, target] = step + 1
    if q < STUDY_PATTERN:  # cold start
        return 0
    pred = f[n_layers * (n_exp + STUDY_PERIOD) + F.SCORE, :n_exp]
    pred[:] = 0.0
    # 1. the sequence pattern of the last 3 passes, from the windows counted so far (weight q - i - 3)
    union = f[n_layers * (n_exp + STUDY_PERIOD) + F.USED, :n_exp]
    union[:] = 0.0
    freq = 0
    for i in range(q - STUDY_PATTERN):
        if _same_window(ps, row, words, i, q - STUDY_PATTERN):
            freq += q - i - STUDY_PATTERN
            for e in range(n_exp):
                if _has(ps, row, i + STUDY_PATTERN, e):
                    union[e] += q - i - STUDY_PATTERN
    if freq >= STUDY_MIN_FREQ:
        for e in range(n_exp):
            if union[e] >= STUDY_NEXT_MIN:
                pred[e] = 1.0
    # 2. co-occurrence: what followed the last pass's experts at least 3 times
    for a in range(n_exp):
        if _has(ps, row, q - 1, a):
            for b in range(n_exp):
                if f[co0 + a, b] >= STUDY_MIN_FREQ:
                    pred[b] = 1.0
    # 3. temporal: position current_token % 64
    position = q % STUDY_PERIOD
    for e in range(n_exp):
        if f[tm0 + position, e] >= STUDY_MIN_FREQ:
            pred[e] = 1.0
    # 4. chains: never learned by the study's code, nothing predicted
    n = 0
    picks = 0
    tb = target * n_exp
    for e in range(n_exp):
        if pred[e] > 0.0:
            if picks == STUDY_PICKS:
                break
            picks += 1
            if cs.status[tb + e] == ABSENT:
                cs.pf_buf[n] = tb + e
                n += 1
    return n


@hook(PREFETCH_SIG)
def prefetch(ps, cs, tv, p, layer, t):
    if ps.p[P.STUDY] != 0.0:
        return _study(ps, cs, tv, p, layer)
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
            "k": Param(0, 0, 4096, "experts to prefetch (0: the model's top_k)", integer=True),
            "study": Param(0, 0, 1, "1: the study's Strategy C as written (sequence patterns of 3 tokens, "
                           "co-occurrence, 64 temporal positions, each trusted at 3; at most 32; weights and k "
                           "unused; not live)", integer=True)},
    doc="Prefetch by fused sequence, transition-chain and co-occurrence tables learned online (study=1: the "
        "study's Strategy C as written)."))
