"""Eviction policies on hand-built traces where the right victim is known (worked out in each test).

Model: tests/conftest.tiny_model (6-byte experts); capacities are given in expert slots.
`resident` lists (layer, expert) pairs left in the cache at the end of the trace.
"""

from __future__ import annotations

import pytest

from .policy_support import resident, run, trace_of

BOTH = pytest.mark.parametrize("engine", ["fast", "des"])


def one_layer(seq: list[int], n_experts: int = 4):
    """One MoE layer, top-1, one decode token per pass using expert seq[p]."""
    return trace_of([[[[e]]] for e in seq], n_experts=n_experts)


@BOTH
def test_lfu_keeps_the_frequent_expert(engine):
    # 2 slots, accesses A A A B C. At C the cache holds A (3 uses) and B (1 use, more recent):
    # LFU evicts B, LRU evicts A.
    tr = one_layer([0, 0, 0, 1, 2])
    _, cs = run(tr, 2, eviction="lfu", engine=engine)
    assert resident(cs, 4) == {(0, 0), (0, 2)}
    _, cs = run(tr, 2, eviction="lru", engine=engine)
    assert resident(cs, 4) == {(0, 1), (0, 2)}
    # ... and so a later A hits under LFU only: hits A A (passes 1, 2) + A (pass 5) = 3 vs 2.
    tr = one_layer([0, 0, 0, 1, 2, 0])
    assert run(tr, 2, eviction="lfu", engine=engine)[0]["hits"] == 3
    assert run(tr, 2, eviction="lru", engine=engine)[0]["hits"] == 2


@BOTH
def test_fld_evicts_the_layer_just_passed(engine):
    # 4 layers, expert 0 at each, 3 slots. At layer 3 the cache holds layers 0, 1, 2; forward distance
    # (l - 3) mod 4 is 1, 2, 3: FLD evicts layer 2 (needed last), LRU evicts layer 0 (oldest).
    tr = trace_of([[[[0], [0], [0], [0]]]], n_experts=2)
    _, cs = run(tr, 3, eviction="fld", engine=engine)
    assert resident(cs, 2) == {(0, 0), (1, 0), (3, 0)}
    _, cs = run(tr, 3, eviction="lru", engine=engine)
    assert resident(cs, 2) == {(1, 0), (2, 0), (3, 0)}


@BOTH
def test_fld_absolute_distance_differs_from_cyclic(engine):
    # 4 layers, 2 experts, top-1, 3 slots. Pass 0 uses expert 0 at layers 0-3, pass 1 experts 1, 0, 0, 0.
    # Pass 0, layer 3 (c = 3) holds layers 0, 1, 2:
    #   cyclic (l - 3) mod 4 = 1, 2, 3 -> evicts (2, 0); absolute |l - 3| = 3, 2, 1 -> evicts (0, 0).
    # Pass 1, layer 0 (c = 0) needs (0, 1):
    #   cyclic holds (0,0) (1,0) (3,0), distances 0, 1, 3 -> evicts (3, 0); layer 1 hits; layer 2 misses and
    #   evicts (1, 0) (distance 3, against 2 for (0,0) and (0,1)); layer 3 misses and evicts (2, 0)
    #   (distance 3): 1 hit, ends {(0,0), (0,1), (3,0)}.
    #   absolute holds (1,0) (2,0) (3,0), distances 1, 2, 3 -> evicts (3, 0); layers 1, 2 hit; layer 3
    #   misses and evicts (0, 1) (|0 - 3| = 3): 2 hits, ends {(1,0), (2,0), (3,0)}.
    # LRU, for contrast, evicts the next layer needed at every step of pass 1: 0 hits.
    tr = trace_of([[[[0], [0], [0], [0]]], [[[1], [0], [0], [0]]]], n_experts=2)
    r, cs = run(tr, 3, eviction="fld", engine=engine)
    assert (r["hits"], resident(cs, 2)) == (1, {(0, 0), (0, 1), (3, 0)})
    r, cs = run(tr, 3, eviction=("fld", {"absolute": 1}), engine=engine)
    assert (r["hits"], resident(cs, 2)) == (2, {(1, 0), (2, 0), (3, 0)})
    assert run(tr, 3, eviction="lru", engine=engine)[0]["hits"] == 0


@BOTH
def test_score_evicts_the_lowest_accumulated_gate_score(engine):
    # 1 layer, top-2, 3 slots. Passes: {0: .9, 1: .1}, {0: .8, 1: .2}, {2: .6, 3: .4}.
    # Accumulated: e0 1.7, e1 0.3. Pass 2: e2 takes the free slot, e3 must evict: score takes e1;
    # LRU takes e0 (e0 and e1 were both used in pass 1, e0 first since entries go in expert order).
    tr = trace_of([[[[0, 1]]], [[[0, 1]]], [[[2, 3]]]],
                  scores=[[[[.9, .1]]], [[[.8, .2]]], [[[.6, .4]]]])
    _, cs = run(tr, 3, eviction="score", engine=engine)
    assert resident(cs, 4) == {(0, 0), (0, 2), (0, 3)}
    _, cs = run(tr, 3, eviction="lru", engine=engine)
    assert resident(cs, 4) == {(0, 1), (0, 2), (0, 3)}


def test_score_decay_forgets_old_importance():
    # decay 0.1 per pass: e0's 0.9 from pass 0 fades to 0.009 by pass 2 while e1 earned 0.5 in pass 1.
    # 2 slots; pass 2 needs e2: without decay e1 (0.5 < 0.9) goes, with decay e0 goes.
    tr = trace_of([[[[0, 3]]], [[[1, 3]]], [[[2, 3]]]], scores=[[[[.9, .1]]], [[[.5, .5]]], [[[.5, .5]]]])
    _, cs = run(tr, 3, eviction="score")
    assert (0, 0) in resident(cs, 4) and (0, 1) not in resident(cs, 4)
    _, cs = run(tr, 3, eviction=("score", {"decay": 0.1}))
    assert (0, 1) in resident(cs, 4) and (0, 0) not in resident(cs, 4)


@BOTH
def test_lhu_evicts_the_degraded_copy_first(engine):
    # fetch-priority (percentile 50, int4) stores the low-mass expert of each token as a 2-byte int4 copy.
    # Capacity 14 bytes = 2 full experts (6 B) + 1 int4 copy (2 B).
    # Pass 0 {0: .9, 1: .1}: e0 full, e1 int4 (8 B used). Pass 1: same, hits.
    # Pass 2 {2: .9, 3: .1}: e2 full fits (14 B), e3 int4 needs 2 B: a victim among e0, e1.
    # LHU: e0 has 2 full-precision uses, e1 none -> evict e1. LFU: both 2 uses, e1 used last -> evict e0.
    tr = trace_of([[[[0, 1]]], [[[0, 1]]], [[[2, 3]]]], scores=[[[[.9, .1]]], [[[.9, .1]]], [[[.9, .1]]]])
    r, cs = run(tr, 0, capacity_bytes=14, eviction="lhu", miss="fetch-priority", engine=engine)
    assert resident(cs, 4) == {(0, 0), (0, 2), (0, 3)}
    assert r["degraded"] == 3  # e1's int4 fetch, its hit in pass 1 (still int4), e3's int4 fetch
    _, cs = run(tr, 0, capacity_bytes=14, eviction="lfu", miss="fetch-priority", engine=engine)
    assert resident(cs, 4) == {(0, 1), (0, 2), (0, 3)}


@BOTH
def test_least_stale_hand_case(engine):
    # 4 layers, top-2, experts {0, 1} at every layer, twice; 7 slots (8 keys).
    # Pass 0, layer 3: everything is current; the lowest layer goes: (0, 0).
    # Pass 1, layer 0: (0, 0) misses (capacity); (0, 1) is protected; stale keys all lie ahead, so
    #   Least-Stale evicts the farthest, (3, 0); LRU evicts the oldest, (1, 0).
    # Least-Stale: layers 1, 2 hit; layer 3 needs (3, 0) again (collision) and evicts current (0, 0).
    # LRU: (1, 0) misses (collision) and evicts (2, 0), which misses and evicts (3, 0), which misses.
    tok = [[0, 1]] * 4
    tr = trace_of([[tok], [tok]])
    r, _ = run(tr, 7, eviction="least-stale", engine=engine)
    assert (r["misses_capacity"], r["misses_collision"]) == (1, 1)
    r, _ = run(tr, 7, eviction="lru", engine=engine)
    assert (r["misses_capacity"], r["misses_collision"]) == (1, 3)


@BOTH
def test_least_stale_layer_position_order_differs_from_passed_first(engine):
    # The trace of test_least_stale_hand_case (order 0 there: 1 capacity miss, 1 collision).
    # order 1 (SpecMD 4.2: each queue by layer position, lowest first) agrees in pass 0 (all current, the
    # lowest layer (0, 0) goes), then in pass 1 takes the stale key of the lowest layer instead of the
    # farthest one:
    #   layer 0: (0, 0) misses (capacity); stale (0, 1) is protected; the lowest stale layer is 1: (1, 0) goes;
    #   layer 1: (1, 0) misses (collision); (1, 1) hits; stale layers 2, 3 remain: (2, 0) goes;
    #   layer 2: (2, 0) misses (collision); stale (3, 0) goes;
    #   layer 3: (3, 0) misses (collision); only (3, 1) is stale and it is protected: a current key of
    #   layer 0 goes, so layers 1-3 stay resident.
    tok = [[0, 1]] * 4
    tr = trace_of([[tok], [tok]])
    r, cs = run(tr, 7, eviction=("least-stale", {"order": 1}), engine=engine)
    assert (r["misses_capacity"], r["misses_collision"], r["hits"]) == (1, 3, 4)
    assert {(layer, e) for layer in (1, 2, 3) for e in (0, 1)} <= resident(cs, 4)
    r, cs = run(tr, 7, eviction=("least-stale", {"order": 0}), engine=engine)
    assert (r["misses_capacity"], r["misses_collision"], r["hits"]) == (1, 1, 6)
    assert (2, 0) in resident(cs, 4) and (1, 0) in resident(cs, 4)


def test_least_stale_fewer_collisions_than_lru_on_layer_sequential_trace():
    # Strictly layer-sequential: 8 layers, top-1, every pass uses expert 0 at every layer (8 keys),
    # 20 passes, 6 slots: LRU's oldest key is always a layer the pass is about to reach.
    tr = trace_of([[[[0]] * 8] for _ in range(20)], n_experts=2)
    ls, _ = run(tr, 6, eviction="least-stale")
    lru, _ = run(tr, 6, eviction="lru")
    assert lru["misses_collision"] > 0
    assert ls["misses_collision"] < lru["misses_collision"]
    assert ls["hits"] >= lru["hits"]


@BOTH
def test_random_picks_only_evictable_keys(engine):
    # 1 layer, top-2, 2 slots: pass 1 needs {0, 2}; 0 is protected, so the only victim is 1, every seed.
    tr = trace_of([[[[0, 1]]], [[[0, 2]]]], n_experts=3)
    for seed in range(5):
        _, cs = run(tr, 2, eviction="random", seed=seed, engine=engine)
        assert resident(cs, 3) == {(0, 0), (0, 2)}


def test_random_is_seeded():
    # Two candidates (0, 1) when 2 arrives: each seed repeats its choice; over 20 seeds both occur.
    tr = one_layer([0, 1, 2])
    outcomes = []
    for seed in range(20):
        first = resident(run(tr, 2, eviction="random", seed=seed)[1], 4)
        assert resident(run(tr, 2, eviction="random", seed=seed)[1], 4) == first
        outcomes.append(frozenset(first))
    assert set(outcomes) == {frozenset({(0, 0), (0, 2)}), frozenset({(0, 1), (0, 2)})}


@BOTH
def test_belady_evicts_the_farthest_next_use(engine):
    # 2 slots, A B C A B. At C: A is next used at pass 3, B at pass 4 -> evict B; A then hits.
    # LRU evicts A at C and misses everything after.
    _, cs = run(one_layer([0, 1, 2]), 2, eviction="belady", engine=engine)  # no future: evict the lowest id
    tr = one_layer([0, 1, 2, 0, 1])
    r, _ = run(tr, 2, eviction="belady", engine=engine)
    assert r["hits"] == 1
    assert run(tr, 2, eviction="lru", engine=engine)[0]["hits"] == 0
    _, cs = run(one_layer([0, 1, 2, 0]), 2, eviction="belady", engine=engine)
    assert resident(cs, 4) == {(0, 0), (0, 2)}


def test_belady_across_layers_uses_forward_position():
    # 2 layers, top-1, 2 slots. Pass 0: L0 e0, L1 e0. Pass 1: L0 e1, L1 e0. At pass 1 layer 0 the victim is
    # (1, 0) (next use: this pass, layer 1) or (0, 0) (never again): Belady must evict (0, 0).
    tr = trace_of([[[[0], [0]]], [[[1], [0]]]], n_experts=2)
    r, cs = run(tr, 2, eviction="belady")
    assert resident(cs, 2) == {(0, 1), (1, 0)}
    assert r["hits"] == 1


@pytest.mark.parametrize(("order", "victim"), [(0, 3 * 2), (1, 2 * 2)])
def test_least_stale_orders_on_current_keys_prefetched_ahead(order, victim):
    # 4 layers, 2 experts (key = 2 * layer + expert). In pass 0 a prefetcher inserted (2, 0) and (3, 0);
    # at layer 1, (1, 0) needs a slot: no stale key exists and no current key of a passed layer, so the
    # victim is a current key ahead: order 0 takes the farthest, (3, 0); order 1 the lowest layer, (2, 0).
    from emu.kernel.hooks import EV_INSERT, EV_PASS
    from emu.kernel.layout import RESIDENT, SC

    from .policy_support import kernel_setup

    tr = trace_of([[[[0], [0], [0], [0]]]], n_experts=2)
    pol, ps, cs, tv = kernel_setup(tr, "eviction", ("least-stale", {"order": order}))
    pol.hooks["on_event"](ps, cs, tv, EV_PASS, 0, 0.0)
    for key in (2 * 2, 3 * 2):
        cs.status[key] = RESIDENT
        cs.layer_count[key // 2] += 1
        pol.hooks["on_event"](ps, cs, tv, EV_INSERT, key, 0.0)
    cs.sc[SC.LAYER] = 1
    assert pol.hooks["victim"](ps, cs, tv, 1 * 2, 0.0) == victim


def test_least_stale_high_bit_is_the_highest_set_bit():
    # the descending scan's layer choice: bitmaps of up to 62 layers (bits 0..62)
    import numpy as np

    from emu.policies.eviction.least_stale import _high_bit

    rng = np.random.default_rng(3)
    values = [1, 2, 3, 5, 8, 255, 256, 2**61, 2**62, 2**62 + 2**61 + 1]
    values += [int(v) for v in rng.integers(1, 2**62, 200)]
    for x in values:
        assert _high_bit(np.int64(x)) == x.bit_length() - 1, x
