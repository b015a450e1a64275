"""emu trace audit: exact key-stream curves and every section of the report on hand-made traces."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from emu.cli import main as emu_main
from emu.trace import RoutingTrace
from emu.trace.audit import audit, render
from emu.trace.keystream import (
    belady_misses,
    layer_stream,
    lfu_misses,
    lru_distances,
    lru_misses,
    miss_curve,
    opt_distances,
    reuse_gaps,
)

# Silberschatz et al., Operating System Concepts, the page-replacement reference string: with 3 frames
# OPT takes 9 page faults and LRU 12
TEXTBOOK = np.array([7, 0, 1, 2, 0, 3, 0, 4, 2, 3, 0, 3, 2, 1, 2, 0, 1, 7, 0, 1], np.int64)


def test_textbook_string_opt_and_lru_at_three_frames() -> None:
    assert miss_curve(opt_distances(TEXTBOOK, 8), 8)[2] == 9
    assert miss_curve(lru_distances(TEXTBOOK, 8), 8)[2] == 12
    assert belady_misses(TEXTBOOK, 8, 3) == 9 and lru_misses(TEXTBOOK, 8, 3) == 12


def test_hand_stack_distances() -> None:
    # a b c a b: LRU depths 0 0 0 3 3; OPT keeps a and drops b for c (a's next use is sooner), so b is at depth 3
    # and a at depth 2: 2 slots -> LRU 5 misses, OPT 4
    keys = np.array([0, 1, 2, 0, 1], np.int64)
    assert lru_distances(keys, 3).tolist() == [0, 0, 0, 3, 3]
    assert opt_distances(keys, 3).tolist() == [0, 0, 0, 2, 3]
    assert miss_curve(lru_distances(keys, 3), 3).tolist() == [5, 5, 3]
    assert miss_curve(opt_distances(keys, 3), 3).tolist() == [5, 4, 3]
    # 0 1 2 repeated 4 times at 2 slots: LRU misses all 12; OPT misses the 3 first uses, then every other access
    cyc = np.tile(np.arange(3, dtype=np.int64), 4)
    assert miss_curve(lru_distances(cyc, 3), 3)[1] == 12
    assert miss_curve(opt_distances(cyc, 3), 3)[1] == 7


def test_opt_stack_equals_direct_belady_and_lru_stack_equals_direct_lru() -> None:
    rng = np.random.default_rng(5)
    for trial in range(200):
        n = int(rng.integers(1, 10))
        size = int(rng.integers(1, 80))
        keys = (rng.zipf(1.4, size) % n if trial % 2 else rng.integers(0, n, size)).astype(np.int64)
        opt = miss_curve(opt_distances(keys, n), n)
        lru = miss_curve(lru_distances(keys, n), n)
        for c in range(1, n + 1):
            assert opt[c - 1] == belady_misses(keys, n, c)
            assert lru[c - 1] == lru_misses(keys, n, c)


def test_lfu_keeps_counts_across_evictions_or_not() -> None:
    # A A A B C B C B C A at 2 slots. Kept counts: B and C climb to 3 and tie A, which is then the least
    # recent and goes, so the final A misses (8). In-cache counts restart at 1: A (3) is never the victim (7).
    a, b, c = 0, 1, 2
    keys = np.array([a, a, a, b, c, b, c, b, c, a], np.int64)
    assert lfu_misses(keys, 3, 2, True) == 8
    assert lfu_misses(keys, 3, 2, False) == 7


def _hand_trace(predicted: bool = False) -> RoutingTrace:
    # 2 requests decoding together (3 passes of 2 tokens), 2 layers x 4 experts, top-1
    #         pass 0        pass 1        pass 2
    # r0      L0 0, L1 1    L0 0, L1 1    L0 2, L1 3
    # r1      L0 2, L1 3    L0 0, L1 1    L0 2, L1 3
    layer0 = [0, 2, 0, 0, 2, 2]
    experts = np.array([[[e], [e + 1]] for e in layer0], np.int16)
    pred = None
    if predicted:  # right for the first 4 tokens at both layers, wrong for the last 2
        pred = experts.copy()
        pred[4:] = (pred[4:] + 2) % 4
    return RoutingTrace(experts=experts, pass_offsets=np.array([0, 2, 4, 6], np.int64),
                        pass_phase=np.ones(3, np.int8), token_request=np.array([0, 1, 0, 1, 0, 1], np.int32),
                        token_position=np.array([0, 0, 1, 1, 2, 2], np.int32), predicted=pred, n_experts=4,
                        model="hand")


def test_audit_hand_trace() -> None:
    trace = _hand_trace(predicted=True)
    keys, when = layer_stream(trace, 0)  # per pass the distinct experts: {0, 2} {0} {2}
    assert keys.tolist() == [0, 2, 0, 2] and when.tolist() == [0, 0, 1, 2]
    assert reuse_gaps(keys, when, 4).tolist() == [-1, -1, 1, 2]
    rep = audit(trace, slots=[1, 2])
    one, two = rep.capacities
    assert one.accesses == 8 and one.compulsory == 4
    # 1 slot: every access misses under LRU and OPT (0 2 0 2); the pinned hottest expert hits its second use
    assert (one.lru, one.opt, one.hot) == (8, 8, 6)
    # 2 slots: only first uses miss; verdict compulsory
    assert (two.lru, two.opt, two.hot) == (4, 4, 4) and two.verdict == "compulsory"
    # shared cache, keys 0 2 | 5 7 (pass 0), 0 | 5, 2 | 7: 2 slots thrash (8), 4 slots hold all (4)
    assert (one.shared_lru, two.shared_lru, two.shared_opt) == (8, 4, 4)
    assert one.shared_opt == 6  # 0 2 5 7 miss (keeping 0 and 7), then 0 hits, 5 and 2 miss, 7 hits
    # repeat: r0 (pos 1 after 0) repeats at both layers; the other 3 pairs change
    assert rep.ceilings["repeat previous token"] == pytest.approx(0.25)
    # the layer map: 0 at L0 always with 1 at L1, 2 with 3
    assert rep.ceilings["previous-layer map (in-sample)"] == pytest.approx(1.0)
    assert rep.ceilings["trace predictions"] == pytest.approx(4 / 6)
    # reuse gaps per layer: 1 and 2 passes
    assert rep.gap_shares[:2] == pytest.approx((0.5, 1.0))
    # batch union at B = 2: steps {0,2} {0} {2} at each layer -> 4/3; independent: 2 * (1 - 0.5^2); uniform
    b1, b2 = rep.batch
    assert (b1.batch, b1.union) == (1, 1.0)
    assert (b2.batch, b2.groups, b2.steps) == (2, 1, 3)
    assert b2.union == pytest.approx(4 / 3)
    assert b2.independent == pytest.approx(1.5)
    assert b2.uniform == pytest.approx(4 * (1 - 0.75 ** 2))
    # partner excess of the two layers: 0 -> 1 and 2 -> 3 always
    assert rep.layers[1].partner_excess == pytest.approx(1.0)
    text = render(rep)
    assert "compulsory" in text and "Batch union" in text
    md = render(rep, markdown=True)
    assert md.startswith("# Trace audit") and "| slots/layer |" in md


def test_verdict_policy_on_a_cyclic_stream() -> None:
    # one layer, one token per pass, experts 0 1 2 cycling 4 times, 2 slots: LRU 12, OPT 7, first uses 3
    n = 12
    experts = (np.arange(n) % 3).astype(np.int16).reshape(n, 1, 1)
    trace = RoutingTrace(experts=experts, pass_offsets=np.arange(n + 1, dtype=np.int64),
                         pass_phase=np.ones(n, np.int8), token_request=np.zeros(n, np.int32),
                         token_position=np.arange(n, dtype=np.int32), n_experts=3)
    row = audit(trace, slots=[2]).capacities[0]
    assert (row.lru, row.opt, row.compulsory) == (12, 7, 3)
    assert row.verdict == "policy"


def test_audit_cli_markdown_plots_and_bad_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "hand.npz"
    _hand_trace().save(path)
    md, plots = tmp_path / "audit.md", tmp_path / "plots"
    assert emu_main(["trace", "audit", str(path), "--capacity", "1,50%", "--markdown", str(md),
                     "--plots", str(plots)]) == 0
    out = capsys.readouterr().out
    assert "Policy or working set?" in out
    assert "| 2 |" in md.read_text()  # 50 % of 4 experts
    assert sorted(p.name for p in plots.iterdir()) == ["batch_union.png", "miss_ratio.png", "reuse_distance.png"]
    assert emu_main(["trace", "audit", str(path), "--model", "mixtral-8x7b"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--model" in err and "MoE layers" in err
