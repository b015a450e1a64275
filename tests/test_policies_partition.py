"""Partition policies: caps and floors they set, the guarantees they give, and their warnings."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from emu.errors import EmuError, EmuWarning

from .conftest import tiny_model
from .policy_support import kernel_setup, run, trace_of


def call(pol, ps, cs, tv, p: int, layer: int) -> None:
    pol.hooks["partition"](ps, cs, tv, p, layer, 0.0)


def test_fair_bytes_caps_every_layer_at_capacity_over_layers():
    tr = trace_of([[[[0], [0], [0], [0]]]], n_experts=2)
    pol, ps, cs, tv = kernel_setup(tr, "partition", "fair-bytes", slots=8, model=tiny_model(4, 2, 1))
    call(pol, ps, cs, tv, 0, 0)
    assert list(cs.layer_cap) == [12] * 4  # 8 slots * 6 B / 4 layers


def test_fair_bytes_protects_a_layer_from_another():
    # 2 layers, top-1, 4 slots. Each pass has 4 tokens needing 4 new experts at layer 0 and e0 at layer 1.
    # Globally layer 0's fourth miss can only evict layer 1's e0; with fair bytes (2 slots per layer) layer 0
    # waits for its own finished experts instead and layer 1 hits every pass after the first.
    tr = trace_of([[[[(4 * p + t) % 8], [0]] for t in range(4)] for p in range(12)], n_experts=8)
    fair, _ = run(tr, 4, partition="fair-bytes")
    glob, _ = run(tr, 4)
    assert fair["per_layer"][1]["hits"] == 11
    assert glob["per_layer"][1]["hits"] < 11


def test_fair_bytes_warns_and_fails_on_small_budgets():
    tr = trace_of([[[[0, 1]] * 4]])
    with pytest.warns(EmuWarning, match=r"layers 0-3 is below top_k = 2"):
        run(tr, 4, partition="fair-bytes")  # 1 slot per layer
    with pytest.raises(EmuError, match="less than one expert") as err:
        run(tr, 3, partition="fair-bytes")
    assert err.value.key == "policy.partition"


def test_count_floor_floors_and_shrinking():
    tr = trace_of([[[[0], [0]]]], n_experts=8)
    pol, ps, cs, tv = kernel_setup(tr, "partition", "count-floor", slots=8, model=tiny_model(2, 8, 1))
    call(pol, ps, cs, tv, 0, 0)
    assert list(cs.layer_floor) == [2, 2]  # TopK + 1
    tr4 = trace_of([[[[0, 1]] * 4]], n_experts=4)
    with pytest.warns(EmuWarning, match=r"layers 0-3"):
        pol, ps, cs, tv = kernel_setup(tr4, "partition", "count-floor", slots=5)
    call(pol, ps, cs, tv, 0, 0)
    assert list(cs.layer_floor) == [1] * 4  # (5 - 2) // 3: the floors can never starve the layer at work


def test_count_floor_keeps_a_layer_that_global_lru_flushes():
    # 2 layers, top-1, 3 slots (floor 2). Layer 0 always e0; layer 1 has 3 tokens needing 3 new experts
    # per pass. Globally the third one must evict layer 0's e0; with the floor it waits for a finished
    # expert of layer 1 instead, and layer 0 hits every pass after the first.
    passes = [[[[0], [3 * p % 8]], [[0], [(3 * p + 1) % 8]], [[0], [(3 * p + 2) % 8]]] for p in range(8)]
    tr = trace_of(passes, n_experts=8)
    floor, _ = run(tr, 3, partition="count-floor")
    glob, _ = run(tr, 3)
    assert floor["per_layer"][0]["hits"] == 7  # one access per pass: the 3 tokens share e0
    assert glob["per_layer"][0]["hits"] < 7


def test_adaptive_floor_follows_the_working_set():
    # Layer 0 cycles e0..e3 (working set 4), layer 1 always e0 (1); top-1, 8 slots -> budget 7.
    tr = trace_of([[[[p % 4], [0]]] for p in range(10)], n_experts=8)
    model = tiny_model(2, 8, 1)
    for window, slots, want in ((8, 8, [5, 2]), (2, 8, [3, 2]), (8, 5, [2, 1])):
        # slots 5: budget 4 < 5 + 2, both scaled by 4/7 -> [2, 1]
        pol, ps, cs, tv = kernel_setup(tr, "partition", ("adaptive", {"window": window}), slots=slots, model=model)
        for p in range(10):
            call(pol, ps, cs, tv, p, 0)
            call(pol, ps, cs, tv, p, 1)
        assert list(cs.layer_floor) == want, (window, slots)


def test_adaptive_warns_when_topk_cannot_be_guaranteed():
    tr = trace_of([[[[0, 1]] * 4]])
    with pytest.warns(EmuWarning, match="'adaptive'"):
        r, _ = run(tr, 5, partition="adaptive")
    assert r["accesses"] == 8


def test_partitions_never_deadlock_on_random_traces():
    # Floors are sized so the layer at work always finds a victim: no run may end in a deadlock error,
    # and both engines agree.
    rng = np.random.default_rng(5)
    passes = [[[list(rng.choice(6, 2, replace=False)) for _ in range(3)] for _ in range(int(rng.integers(1, 4)))]
              for _ in range(15)]
    tr = trace_of(passes, n_experts=6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EmuWarning)
        for name in ("fair-bytes", "count-floor", "adaptive"):
            for slots in (3, 6, 9, 18):
                r, _ = run(tr, slots, partition=name)
                assert r["hits"] + r["misses"] == r["accesses"]
                assert run(tr, slots, partition=name, engine="des")[0]["e2e_s"] == r["e2e_s"]
