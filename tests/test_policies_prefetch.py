"""Prefetch policies: the kernel is called at a gate by hand and the keys it writes into `cs.pf_buf`
are compared with the set worked out from the trace (stated in each test). Keys are layer * E + expert.
"""

from __future__ import annotations

import numpy as np
import pytest

from emu.kernel.layout import RESIDENT

from .conftest import tiny_model
from .policy_support import kernel_setup, run, set_layer, trace_of


def prefetch_set(policy, ps, cs, tv, p: int, layer: int) -> list[int]:
    n = policy.hooks["prefetch"](ps, cs, tv, p, layer, 0.0)
    return [int(k) for k in cs.pf_buf[:n]]


def three_layers():
    # E = 4, top-2, 2 passes. Pass 0 has 2 tokens; layer 1 uses {2, 3} and {2, 1}: masses e2 1.0, e1 .5, e3 .5.
    p0 = [[[0, 1], [2, 3], [0, 3]], [[0, 2], [2, 1], [1, 3]]]
    p1 = [[[3, 2], [0, 1], [1, 2]]]
    return trace_of([p0, p1])


def test_oracle_window_one_is_the_next_layer_by_mass():
    tr = three_layers()
    pol, ps, cs, tv = kernel_setup(tr, "prefetch", "oracle")
    # next layer (1) of pass 0: e2 (mass 1.0) first, then e1 and e3 (0.5 each, lower id first)
    assert prefetch_set(pol, ps, cs, tv, 0, 0) == [6, 5, 7]
    cs.status[6] = RESIDENT  # a resident expert is not prefetched again
    assert prefetch_set(pol, ps, cs, tv, 0, 0) == [5, 7]


def test_oracle_window_crosses_into_the_next_pass():
    tr = three_layers()
    pol, ps, cs, tv = kernel_setup(tr, "prefetch", ("oracle", {"window": 2}))
    # at pass 0 layer 2 the next two positions are pass 1 layers 0 ({3, 2}) and 1 ({0, 1})
    assert prefetch_set(pol, ps, cs, tv, 0, 2) == [2, 3, 4, 5]
    assert prefetch_set(pol, ps, cs, tv, 1, 2) == []  # nothing after the last pass


def test_next_layer_uses_recorded_predictions():
    tr = trace_of([[[[0, 1], [2, 3]]]], predicted=[[[[0, 1], [3, 0]]]])
    pol, ps, cs, tv = kernel_setup(tr, "prefetch", "next-layer")
    assert prefetch_set(pol, ps, cs, tv, 0, 0) == [4, 7]  # the speculator's {0, 3} for layer 1
    assert prefetch_set(pol, ps, cs, tv, 0, 1) == []  # no layer after the last


def test_next_layer_stand_in_accuracy_per_layer():
    # top-1, 8 experts, 3 layers, 400 one-token passes. accuracy_first (layer 1) = 1: always the true
    # expert; accuracy_last (layer 2) = 0: never (a wrong guess is drawn among the other 7).
    rng = np.random.default_rng(0)
    passes = [[[[int(e)] for e in rng.integers(0, 8, 3)]] for _ in range(400)]
    tr = trace_of(passes, n_experts=8)
    pol, ps, cs, tv = kernel_setup(tr, "prefetch", ("next-layer", {"accuracy_first": 1.0, "accuracy_last": 0.0}))
    for p in range(400):
        true1 = 8 + passes[p][0][1][0]
        true2 = 16 + passes[p][0][2][0]
        assert prefetch_set(pol, ps, cs, tv, p, 0) == [true1]
        got = prefetch_set(pol, ps, cs, tv, p, 1)
        assert len(got) == 1 and got[0] != true2 and 16 <= got[0] < 24


def test_next_layer_stand_in_hits_its_accuracy_on_average():
    rng = np.random.default_rng(1)
    passes = [[[[int(e)] for e in rng.integers(0, 8, 2)]] for _ in range(2000)]
    tr = trace_of(passes, n_experts=8)
    pol, ps, cs, tv = kernel_setup(tr, "prefetch", ("next-layer", {"accuracy_first": 0.7, "accuracy_last": 0.7}))
    right = sum(prefetch_set(pol, ps, cs, tv, p, 0) == [8 + passes[p][0][1][0]] for p in range(2000))
    assert abs(right / 2000 - 0.7) < 0.04  # binomial sd ~0.01


def test_topk_overfetch_adds_the_most_popular_other_experts():
    # E = 8, top-2. Layer 1 of pass 1 routes {5: .7, 6: .3}. History at layer 1 (pass 0's gate): e0 served
    # 5 tokens, e2 3 tokens. overfetch 1 -> the 2 predicted; overfetch 2 -> 4: predicted, then e0, e2.
    tr = trace_of([[[[0, 1], [0, 2]]], [[[0, 1], [5, 6]]]], scores=[[[[.5, .5], [.5, .5]]], [[[.5, .5], [.7, .3]]]],
                  n_experts=8)
    for overfetch, want in ((1.0, [13, 14]), (2.0, [13, 14, 8, 10])):
        pol, ps, cs, tv = kernel_setup(tr, "prefetch", ("topk", {"overfetch": overfetch, "accuracy": 1.0}))
        set_layer(cs, 1, [0, 2], tokens=[5, 3])
        prefetch_set(pol, ps, cs, tv, 0, 1)
        set_layer(cs, 0, [0, 1])
        assert prefetch_set(pol, ps, cs, tv, 1, 0) == want
    # the picks are the best scores overall: predicted experts already resident use up their places
    # instead of letting a worse guess in
    pol, ps, cs, tv = kernel_setup(tr, "prefetch", ("topk", {"accuracy": 1.0}))
    set_layer(cs, 1, [0, 2], tokens=[5, 3])
    prefetch_set(pol, ps, cs, tv, 0, 1)
    cs.status[13] = RESIDENT
    set_layer(cs, 0, [0, 1])
    assert prefetch_set(pol, ps, cs, tv, 1, 0) == [14]


def test_score_percentile_threshold():
    # top-1, 8 experts, one 10-token pass; layer 1 counts e0 5, e1 3, e2 1, e3 1 (mass 1 per token).
    # Scores [5, 3, 1, 1, 0, 0, 0, 0]: 80th percentile 2.2 -> {e0, e1}; 50th percentile 0.5 -> {e0..e3}.
    layer1 = [0] * 5 + [1] * 3 + [2, 3]
    tr = trace_of([[[[0], [e]] for e in layer1]], n_experts=8)
    pol, ps, cs, tv = kernel_setup(tr, "prefetch", ("score-percentile", {"accuracy": 1.0}))
    assert prefetch_set(pol, ps, cs, tv, 0, 0) == [8, 9]
    pol, ps, cs, tv = kernel_setup(tr, "prefetch", ("score-percentile", {"accuracy": 1.0, "percentile": 50}))
    assert prefetch_set(pol, ps, cs, tv, 0, 0) == [8, 9, 10, 11]


def test_lookahead_depth():
    tr = three_layers()
    pol, ps, cs, tv = kernel_setup(tr, "prefetch", ("lookahead", {"depth": 2, "accuracy": 1.0, "decay": 1.0}))
    # pass 1: layer 1 {0, 1}, then layer 2 {1, 2}
    assert prefetch_set(pol, ps, cs, tv, 1, 0) == [4, 5, 9, 10]
    assert prefetch_set(pol, ps, cs, tv, 1, 1) == [9, 10]  # stays within the pass


def test_frequency_top_set_refreshes_per_interval():
    # 2 layers, 4 experts, top-1, k = 2, interval 1 token (one-token passes: a refresh per pass).
    tr = trace_of([[[[0], [3]]], [[[0], [2]]], [[[0], [2]]]])
    pol, ps, cs, tv = kernel_setup(tr, "prefetch", ("frequency", {"k": 2, "interval": 1}))
    set_layer(cs, 0, [0])
    prefetch_set(pol, ps, cs, tv, 0, 0)
    set_layer(cs, 1, [3], tokens=[5])
    assert prefetch_set(pol, ps, cs, tv, 0, 1) == [0]  # the last layer wraps to layer 0: its top set {e0}
    set_layer(cs, 0, [0])
    assert prefetch_set(pol, ps, cs, tv, 1, 0) == [7]  # refreshed at pass 1: layer 1 has only e3 (5)
    set_layer(cs, 1, [2], tokens=[9])
    prefetch_set(pol, ps, cs, tv, 1, 1)
    set_layer(cs, 0, [0])
    assert prefetch_set(pol, ps, cs, tv, 2, 0) == [6, 7]  # e2 (9) then e3 (5 * 0.99)


def feed(pol, ps, cs, tv, passes: range, n_layers: int) -> None:
    for p in passes:
        for layer in range(n_layers):
            prefetch_set(pol, ps, cs, tv, p, layer)


def test_multi_look_transition_table():
    # Layer 0 e0 is always followed (same token) by layer 1 e2, and e1 by e3; the pass order is irregular.
    seq = [0, 0, 1, 0, 1, 1, 0, 1, 1, 0]
    tr = trace_of([[[[a], [a + 2]]] for a in seq])
    only_transition = {"w_transition": 1.0, "w_chain": 0.0, "w_sequence": 0.0, "w_cooccurrence": 0.0, "k": 1}
    pol, ps, cs, tv = kernel_setup(tr, "prefetch", ("multi-look", only_transition))
    feed(pol, ps, cs, tv, range(8), 2)
    assert prefetch_set(pol, ps, cs, tv, 8, 0) == [4 + 3]  # pass 8 used e1 at layer 0 -> e3
    prefetch_set(pol, ps, cs, tv, 8, 1)
    assert prefetch_set(pol, ps, cs, tv, 9, 0) == [4 + 2]


def test_multi_look_sequence_table():
    # Layer 1 alternates e2, e3 from pass to pass while layer 0 is always e0 (the transition is useless).
    tr = trace_of([[[[0], [2 + p % 2]]] for p in range(10)])
    only_sequence = {"w_transition": 0.0, "w_chain": 0.0, "w_sequence": 1.0, "w_cooccurrence": 0.0, "k": 1}
    pol, ps, cs, tv = kernel_setup(tr, "prefetch", ("multi-look", only_sequence))
    feed(pol, ps, cs, tv, range(8), 2)
    assert prefetch_set(pol, ps, cs, tv, 8, 0) == [4 + 2]  # pass 7 used e3 at layer 1 -> next is e2


def test_adaptive_shifts_weight_to_the_signal_that_predicts():
    # Layer 1 keeps one expert for 5 passes, then moves on ((p // 5) % 8); layer 0 is random, so the
    # transition signal is noise, frequency (decay 0.9) lags for several passes after each move, recency
    # is right 4 times out of 5.
    rng = np.random.default_rng(2)
    passes = [[[[int(rng.integers(0, 8))], [(p // 5) % 8]]] for p in range(120)]
    tr = trace_of(passes, n_experts=8)
    pol, ps, cs, tv = kernel_setup(tr, "prefetch", ("adaptive", {"k": 1, "decay": 0.9}))
    feed(pol, ps, cs, tv, range(120), 2)
    weights = np.asarray(ps.f)[2 * 8 + 2 + 3, :3]  # rows: L*E transition, L frequency, 3 signals, weights
    assert weights.argmax() == 2 and weights[2] > 0.9
    assert abs(weights.sum() - 1.0) < 1e-9


@pytest.mark.parametrize("name", ["oracle", "next-layer", "topk", "score-percentile", "lookahead", "frequency",
                                  "multi-look", "adaptive"])
def test_prefetch_never_evicts_what_the_layer_needs(name):
    # 2 slots, top-2: every layer's own two experts fill the cache, so a prefetch finds no victim and is
    # dropped (counted), never taking a slot from an expert the current layer is about to compute.
    rng = np.random.default_rng(3)
    passes = [[[list(rng.choice(4, 2, replace=False)) for _ in range(3)]] for _ in range(20)]
    tr = trace_of(passes)
    r, _ = run(tr, 2, prefetch=name)
    assert r["prefetch_issued"] == 0
    assert r["prefetch_dropped"] > 0  # it did try
    assert r["hits"] + r["misses"] == r["accesses"]


def test_percentile_inplace_matches_numpy():
    from emu.kernel.helpers import percentile_inplace

    rng = np.random.default_rng(6)
    for n in (1, 2, 3, 8, 64):
        for q in (0.0, 12.5, 50.0, 80.0, 100.0):
            x = rng.random(n)
            assert percentile_inplace(x.copy(), n, q) == pytest.approx(np.percentile(x, q), rel=1e-12)


def test_adaptive_study_strategy_e_on_a_hand_trace():
    # study=1: the study's Strategy E. 2 layers, E = 4 (fewer than its 32 picks, so every expert of layer 1
    # is prefetched, best first, the zero-scored ones by id). One token per pass:
    # layer 0 / layer 1 = e0/e1, e0/e2, e0/e1.
    tr = trace_of([[[[0], [1]]], [[[0], [2]]], [[[0], [1]]]])
    pol, ps, cs, tv = kernel_setup(tr, "prefetch", ("adaptive", {"study": 1}))

    def w():
        return np.asarray(ps.f)[2 * 4 + 2 + 3, :4]  # rows: L*E transition, L frequency, then F.WEIGHTS

    assert list(w()) == [0.4, 0.3, 0.2, 0.1]
    # pass 0: no history: cold start, experts 0..3 of layer 1 in id order
    assert prefetch_set(pol, ps, cs, tv, 0, 0) == [4, 5, 6, 7]
    prefetch_set(pol, ps, cs, tv, 0, 1)  # learns e0 -> e1
    # pass 1: transition {e1} (probability 1), frequency {e1}, recency {e1}, pattern none before pass 2:
    # e1 scores .4 + .3 + .2, the rest 0
    assert prefetch_set(pol, ps, cs, tv, 1, 0) == [5, 4, 6, 7]
    # layer 1 used e2: F1 0 for the three non-empty sets, each weight moves by .01 * (0 - .5); pattern
    # (empty) keeps .1; then all are divided by their sum .985
    prefetch_set(pol, ps, cs, tv, 1, 1)
    assert w() == pytest.approx(np.array([0.395, 0.295, 0.195, 0.1]) / 0.985, rel=1e-12)
    # pass 2: row T[0, e0] = e1 .99 (faded once), e2 1: probabilities .497 / .503, both above .05 and .1;
    # frequency, recency and pattern also name {e1, e2}: both score the sum of the weights, ties by id
    assert prefetch_set(pol, ps, cs, tv, 2, 0) == [5, 6, 4, 7]


def test_adaptive_study_picks_32_of_a_larger_layer():
    # E = 40: the study's fusion keeps its top 32 (np.argsort(scores)[-32:]) even when most score 0:
    # the cold start is experts 0..31; then e7 (in three sets) first, then the 31 lowest other ids.
    tr = trace_of([[[[0], [7]]], [[[0], [7]]]], n_experts=40)
    pol, ps, cs, tv = kernel_setup(tr, "prefetch", ("adaptive", {"study": 1}))
    assert prefetch_set(pol, ps, cs, tv, 0, 0) == [40 + e for e in range(32)]
    prefetch_set(pol, ps, cs, tv, 0, 1)
    assert prefetch_set(pol, ps, cs, tv, 1, 0) == [40 + 7] + [40 + e for e in range(32) if e != 7]
    # the default (Hedge) reading picks only top_k = 1 expert, and none before anything is learned
    pol, ps, cs, tv = kernel_setup(tr, "prefetch", "adaptive")
    assert prefetch_set(pol, ps, cs, tv, 0, 0) == []
    prefetch_set(pol, ps, cs, tv, 0, 1)
    assert prefetch_set(pol, ps, cs, tv, 1, 0) == [40 + 7]


@pytest.mark.parametrize("engine", ["fast", "des"])
def test_adaptive_study_issues_its_cold_start_in_both_engines(engine):
    # The trace of the hand test, 8 slots (every key fits): pass 0's cold start prefetches the 4 experts of
    # layer 1; nothing is absent afterwards, so the run issues exactly 4 prefetches.
    tr = trace_of([[[[0], [1]]], [[[0], [2]]], [[[0], [1]]]])
    r, _ = run(tr, 8, prefetch=("adaptive", {"study": 1}), engine=engine)
    assert r["prefetch_issued"] == 4


def _frequency_study_trace():
    # 2 layers, E = 4, top-1, one token per pass, 205 passes. Layer 0 always e0. Layer 1: pass 0 e3,
    # passes 1..95 e1, passes 96..204 e2.
    return trace_of([[[[0], [3 if p == 0 else 1 if p <= 95 else 2]]] for p in range(205)])


def test_frequency_study_strategy_d_on_a_hand_trace():
    # study=1: the study's TopKStrategy, one copy per layer, a step per pass. Layer 1's call for pass s runs
    # at layer 0's gate of pass s; its set is recomputed at the 100th call (pass 99), the 200th (pass 199).
    tr = _frequency_study_trace()
    pol, ps, cs, tv = kernel_setup(tr, "prefetch", ("frequency", {"study": 1}))
    for p in range(99):  # cold start: no set before the 100th call
        assert prefetch_set(pol, ps, cs, tv, p, 0) == [], p
        prefetch_set(pol, ps, cs, tv, p, 1)
    # pass 99: each call fades the counts by 0.999 and re-adds the last 10 passes, so a pass is counted at
    # the 10 calls after it. e1 (passes 1..95): 887.0; e3 (pass 0, calls 1..10): sum_{c=1..10} .999^(99-c)
    # = 9.107; e2 (passes 96..98): 3 + 2 * .999 + .999^2 = 5.996; e0: 0. E = 4 < 32: all four, most counted
    # first. (Decay 0.99 would give e3 3.909 < e2; counting each pass once, e3 .906 < e2.)
    assert prefetch_set(pol, ps, cs, tv, 99, 0) == [5, 7, 6, 4]
    prefetch_set(pol, ps, cs, tv, 99, 1)
    for p in range(100, 199):  # the set is held until the next recompute although e2 is now used
        assert prefetch_set(pol, ps, cs, tv, p, 0) == [5, 7, 6, 4], p
        prefetch_set(pol, ps, cs, tv, p, 1)
    # pass 199: e2 (passes 96..198) 938.5 > e1 821.6 > e3 8.24 > e0 0
    assert prefetch_set(pol, ps, cs, tv, 199, 0) == [6, 5, 7, 4]
    # only absent members are issued
    cs.status[6] = RESIDENT
    assert prefetch_set(pol, ps, cs, tv, 199, 0) == [5, 7, 4]


def test_frequency_study_keeps_32_of_a_larger_layer_and_wraps_to_the_next_pass():
    # One layer (the study's flat accounting), E = 40, always e35: the call for pass s runs at the gate of
    # pass s - 1. The 100th call (pass 99, at pass 98's gate) keeps 32 experts: e35, then 31 experts of
    # count 0, the lowest ids (the threshold 1.0 filters them, the refill puts them back).
    tr = trace_of([[[[35]]] for _ in range(101)], n_experts=40)
    pol, ps, cs, tv = kernel_setup(tr, "prefetch", ("frequency", {"study": 1}))
    for p in range(98):
        assert prefetch_set(pol, ps, cs, tv, p, 0) == [], p
    assert prefetch_set(pol, ps, cs, tv, 98, 0) == [35, *range(31)]
    # the default reading: top_k = 1 expert, refreshed every 16 tokens, from the first gate on
    pol, ps, cs, tv = kernel_setup(tr, "prefetch", "frequency")
    set_layer(cs, 0, [35])
    assert prefetch_set(pol, ps, cs, tv, 0, 0) == [35]


@pytest.mark.parametrize("engine", ["fast", "des"])
def test_frequency_study_issues_its_first_set_in_both_engines(engine):
    # The hand trace, 8 slots (every key fits): nothing is prefetched before the first recompute; then
    # layer 0's set (its call for pass 99, at layer 1's gate of pass 98) has e1..e3 absent (only e0 is
    # used), layer 1's (at layer 0's gate of pass 99) has e0 absent: 4 prefetches, and never another.
    r, _ = run(_frequency_study_trace(), 8, prefetch=("frequency", {"study": 1}), engine=engine)
    assert r["prefetch_issued"] == 4
    assert r["hits"] + r["misses"] == r["accesses"] == 410


def test_multi_look_study_strategy_c_on_a_hand_trace():
    # study=1: the study's MultiLookStrategy, one copy per layer, a step per pass; layer 1's call for pass s
    # runs at layer 0's gate of pass s (history: passes 0 .. s-1). Layer 0 always e0; layer 1 (period 6):
    # h = 0 1 0 2 0 3 | 0 1 0 2 0 3 | ...
    h = [[0, 1, 0, 2, 0, 3][p % 6] for p in range(24)]
    tr = trace_of([[[[0], [e]]] for e in h])
    pol, ps, cs, tv = kernel_setup(tr, "prefetch", ("multi-look", {"study": 1}))
    got = {}
    for p in range(24):
        got[p] = prefetch_set(pol, ps, cs, tv, p, 0)
        prefetch_set(pol, ps, cs, tv, p, 1)
    # passes 0-2: fewer than 3 steps (cold start). Passes 3-8: no pattern yet trusted (a pattern's window i is
    # re-added at every call, weight s - i - 3, but the last three passes' pattern first recurs at pass 9),
    # no pair counted 3 times, no temporal position reached.
    assert all(got[p] == [] for p in range(9))
    # pass 9: the last three (0, 1, 0) are window 0's, weight 9 - 0 - 3 = 6 >= 3, followed by e2 (counted
    # once, that window alone would be trusted only from a third match)
    assert got[9] == [4 + 2]
    # pass 15: (0, 1, 0) -> e2 again; the pairs 0 -> x have each been counted twice (calls 4-14): none yet
    assert got[15] == [4 + 2]
    # pass 16: (1, 0, 2) -> e0
    assert got[16] == [4 + 0]
    # pass 17: (0, 2, 0) -> e3; co-occurrence: after e0 (the last pass) e2 was counted 3 times (pairs of
    # passes 2->3, 8->9, 14->15, counted at calls 4, 10, 16), e3 and e1 twice: e2 comes along
    assert got[17] == [4 + 2, 4 + 3]
    # pass 19: (0, 3, 0) -> e1; co-occurrence: e2 and e3 (3 times each by call 18), e1 twice
    assert got[19] == [4 + 1, 4 + 2, 4 + 3]


def test_multi_look_study_temporal_positions_as_its_code_computes_them():
    # Layer 1 uses e3 in passes 0-2, then cycles e0 e1 e2. Before the history holds 10 steps the code's
    # position (len - 10 + token_idx) % 64 puts steps 0-2 at positions 57-63 and 0-2: counted 3 times at
    # positions 59-63 (calls 3-9) and 0-2 (calls 6-12), so e3 is predicted at passes 59-66 only (the
    # position is current_token % 64); sequence patterns and co-occurrence only ever name e0-e2.
    h = [3, 3, 3] + [p % 3 for p in range(97)]
    tr = trace_of([[[[0], [e]]] for e in h])
    pol, ps, cs, tv = kernel_setup(tr, "prefetch", ("multi-look", {"study": 1}))
    with_e3 = []
    for p in range(100):
        if 4 + 3 in prefetch_set(pol, ps, cs, tv, p, 0):
            with_e3.append(p)
        prefetch_set(pol, ps, cs, tv, p, 1)
    assert with_e3 == list(range(59, 67))


def test_multi_look_study_keeps_the_32_lowest_of_a_larger_set_and_wraps():
    # One layer (the study's flat accounting), E = 40, each pass's 40 tokens use all 40 experts: the call
    # for pass s runs at the gate of pass s - 1. Pass 5: every pair a -> b has been counted 3 times (calls
    # 3, 4, 5): all 40 predicted, the study keeps 32 (here the lowest ids).
    tr = trace_of([[[[e]] for e in range(40)] for _ in range(8)], n_experts=40)
    pol, ps, cs, tv = kernel_setup(tr, "prefetch", ("multi-look", {"study": 1}))
    for p in range(4):
        assert prefetch_set(pol, ps, cs, tv, p, 0) == [], p
    assert prefetch_set(pol, ps, cs, tv, 4, 0) == list(range(32))


def _random_passes(seed: int, n_passes: int, n_layers: int, n_exp: int, top_k: int) -> list:
    # skewed routing, so patterns recur; a 3-token first pass (a prefill) and 1-2 token passes after
    rng = np.random.default_rng(seed)
    pop = np.arange(n_exp, 0, -1.0) ** 3
    pop /= pop.sum()
    return [[[[int(e) for e in rng.choice(n_exp, top_k, replace=False, p=pop)] for _ in range(n_layers)]
             for _ in range(3 if p == 0 else int(rng.integers(1, 3)))] for p in range(n_passes)]


@pytest.mark.parametrize("n_exp", [6, 40, 130])
@pytest.mark.parametrize(("name", "strategy"), [("frequency", "TopKStrategy"), ("multi-look", "MultiLookStrategy")])
def test_study_modes_match_the_studys_code(name, strategy, n_exp):
    # The study's own classes (tests/study_code.py, its code copied), one per layer, against the kernel at
    # every gate of a random trace: layer n's prediction for pass s is what the kernel issues at the gate
    # before it (all keys absent here, so every prediction is issued).
    from . import study_code

    n_layers = 3
    passes = _random_passes(5, 230, n_layers, n_exp, 2)
    want = study_code.per_layer_predictions(getattr(study_code, strategy), passes, n_layers,
                                            **({"num_experts": n_exp} if name == "frequency" else {}))
    tr = trace_of(passes, n_experts=n_exp)
    pol, ps, cs, tv = kernel_setup(tr, "prefetch", (name, {"study": 1}), model=tiny_model(n_layers, n_exp, 2))
    issued = 0
    for p in range(len(passes)):
        for layer in range(n_layers):
            keys = prefetch_set(pol, ps, cs, tv, p, layer)
            target, q = (layer + 1, p) if layer + 1 < n_layers else (0, p + 1)
            if q == len(passes):
                continue
            assert sorted(k - target * n_exp for k in keys) == sorted(want[(target, q)]), (p, layer)
            issued += len(keys)
    assert issued > 100


def test_multi_look_study_is_refused_without_a_trace():
    # the study's pattern store is the whole history, sized by the trace's passes: the live runtime (no trace)
    # gets one clear error naming the key; frequency's study mode keeps 10 passes and runs there
    from emu.errors import EmuError
    from live import cache_bridge

    with pytest.raises(EmuError, match="whole routing history") as err:
        cache_bridge.CacheBridge(2, 4, 1, 3, prefetch="multi-look", prefetch_params={"study": 1})
    assert err.value.key == "policy.prefetch.study"
    cache_bridge.CacheBridge(2, 4, 1, 3, prefetch="frequency", prefetch_params={"study": 1})
