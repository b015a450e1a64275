"""Working sets, LRU hit-rate curves and knee detection on hand-built traces and curves with known answers."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest

from emu.analysis.workingset import (
    analyze,
    check_capacity,
    curve_features,
    knee_point,
    slots_per_layer,
)
from emu.errors import EmuError
from emu.trace import RoutingTrace


def _trace(layers: list[list[int]], pass_sizes: list[int], n_experts: int) -> RoutingTrace:
    experts = np.array(layers, dtype=np.int16).T[:, :, None]  # [tokens, layers, top_k=1]
    n_tok = experts.shape[0]
    offsets = np.concatenate([[0], np.cumsum(pass_sizes)]).astype(np.int64)
    assert offsets[-1] == n_tok
    return RoutingTrace(experts=experts, pass_offsets=offsets, pass_phase=np.ones(len(pass_sizes), np.int8),
                        token_request=np.zeros(n_tok, np.int32), token_position=np.arange(n_tok, dtype=np.int32),
                        n_experts=n_experts, model="hand")


def test_hand_trace_working_sets_and_lru_curve() -> None:
    # passes: [t0 t1] [t2] [t3] [t4]; a pass counts each expert once, in order of first appearance
    trace = _trace([[0, 0, 1, 0, 2], [3, 2, 3, 3, 2]], [2, 1, 1, 1], n_experts=4)
    rep = analyze(trace, window=2)
    l0, l1 = rep.layers
    # layer 0 per pass {0} {1} {0} {2}: LRU 0 cold, 1 cold, 0 at depth 2, 2 cold
    assert l0.accesses == 4 and l0.cold_misses == 3
    assert l0.hit_rate == pytest.approx((0.0, 0.25, 0.25, 0.25))
    # layer 1 per pass {3,2} {3} {3} {2}: cold, cold, depth 2, depth 1, depth 2
    assert l1.accesses == 5 and l1.cold_misses == 2
    assert l1.hit_rate == pytest.approx((0.2, 0.6, 0.6, 0.6))
    # window 2, full windows from pass 1: layer 0 {0,1} {1,0} {0,2}; layer 1 {3,2} {3} {3,2}
    assert (l0.ws_mean, l0.ws_max) == (2.0, 2)
    assert l1.ws_mean == pytest.approx(5 / 3) and l1.ws_max == 2
    # target max(top_k=1, ceil(p90)) + 1
    assert l0.target == 3 and l1.target == 3
    wide = analyze(trace, window=3)  # windows from pass 2: layer 0 {0,1} {1,0,2}
    assert wide.layers[0].ws_mean == 2.5 and wide.layers[0].ws_max == 3
    short = analyze(trace, window=10)  # fewer passes than the window: one window over all passes
    assert short.layers[0].ws_max == 3 and short.layers[1].ws_max == 2


def _lru_hits(seq: list[list[int]], slots: int) -> int:
    cache: OrderedDict[int, None] = OrderedDict()
    hits = 0
    for pass_experts in seq:
        for e in pass_experts:
            if e in cache:
                hits += 1
                cache.move_to_end(e)
            else:
                cache[e] = None
                if len(cache) > slots:
                    cache.popitem(last=False)
    return hits


def test_stack_distances_match_brute_force_lru_at_every_capacity() -> None:
    rng = np.random.default_rng(7)
    n_exp, n_tok = 12, 400
    sizes = rng.integers(1, 5, 150)
    sizes = sizes[np.cumsum(sizes) <= n_tok]
    n_tok = int(sizes.sum())
    layer = (rng.zipf(1.6, n_tok) - 1) % n_exp
    trace = _trace([list(layer)], list(sizes), n_experts=n_exp)
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    seq = [list(dict.fromkeys(layer[offsets[p]:offsets[p + 1]].tolist())) for p in range(len(sizes))]
    total = sum(len(s) for s in seq)
    ly = analyze(trace).layers[0]
    assert ly.accesses == total
    for c in range(1, n_exp + 1):
        assert ly.hit_rate[c - 1] == pytest.approx(_lru_hits(seq, c) / total), c


def test_knee_of_piecewise_linear_curve() -> None:
    slots = np.arange(1, 65)
    assert knee_point(0.9 * np.minimum(slots / 10, 1.0)) == 10
    assert knee_point(0.2 + 0.7 * np.minimum(slots / 23, 1.0)) == 23


def test_knee_of_noisy_curve_stays_near_the_true_knee() -> None:
    rng = np.random.default_rng(3)
    slots = np.arange(1, 129)
    base = np.where(slots <= 40, 0.8 * slots / 40, 0.8 + 0.1 * (slots - 40) / 88)
    noisy = np.maximum.accumulate(base + rng.normal(0, 0.01, slots.size))
    assert abs(knee_point(noisy) - 40) <= 2


def test_cliff_curve_knee_thrash_and_stable() -> None:
    slots = np.arange(1, 65)
    hit = np.where(slots < 12, 0.01, 0.80 + 0.1 * (slots - 12) / 52)
    f = curve_features(hit, top_k=2)
    assert f.knee == 12
    assert f.thrash_point == 11  # h < 0.5 * h(knee) below the cliff
    assert f.stable == int(np.argmax(hit >= hit[-1] - 0.02)) + 1 == 54


def test_top_k_bounds_the_thrash_zone_and_flat_curve() -> None:
    f = curve_features(np.full(16, 0.7), top_k=4)
    assert (f.knee, f.stable, f.thrash_point) == (1, 1, 3)


def test_capacity_specs_and_thrash_check() -> None:
    assert slots_per_layer("8", 16, 64) == 8
    assert slots_per_layer("25%", 16, 64) == 16
    assert slots_per_layer("total=512", 16, 64) == 32
    assert slots_per_layer("1GB", 16, 64, expert_bytes=25_000_000) == 2
    for bad in ("lots", "0%", "total=3"):
        with pytest.raises(EmuError):
            slots_per_layer(bad, 16, 64)
    trace = _trace([[0, 1, 2, 3] * 10, [0, 0, 1, 1] * 10], [1] * 40, n_experts=4)
    rep = analyze(trace, window=4)
    # layer 0 cycles over 4 experts: LRU hits only at 4 slots, so 1..3 thrash; layer 1 hits from 2 slots
    assert rep.layers[0].features.thrash_point == 3
    check = check_capacity(rep, "3", 3)
    assert check.thrashing == (0,)
    assert check_capacity(rep, "4", 4).thrashing == ()


def test_convex_curve_knee_is_the_cliff_top() -> None:
    assert knee_point(np.array([0.0, 0.1, 0.3, 1.0])) == 4
    assert knee_point(np.array([0.0, 0.0, 0.0, 0.9])) == 4


def test_cli_json_and_capacity_check(tmp_path, capsys) -> None:
    import argparse
    import json

    from emu.analysis import workingset_cli

    trace = _trace([[0, 1, 2, 3] * 10, [0, 0, 1, 1] * 10], [1] * 40, n_experts=4)
    path = tmp_path / "t.npz"
    trace.save(path)
    parser = argparse.ArgumentParser()
    workingset_cli.add_parser(parser.add_subparsers())
    args = parser.parse_args(["workingset", str(path), "--window", "4", "--capacity", "3,total=8", "--json"])
    assert args.func(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert [c["slots_per_layer"] for c in out["capacities"]] == [3, 4]
    assert out["capacities"][0]["thrashing"] == [0]
    assert out["layers"][0]["ws_max"] == 4 and out["layers"][0]["knee"] == 4
    args = parser.parse_args(["workingset", str(path), "--window", "0"])
    with pytest.raises(EmuError, match="--window"):
        args.func(args)
