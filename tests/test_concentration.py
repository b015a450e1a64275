"""The concentration gate: metrics by hand, the real OLMoE counts, imatrix GGUF layout, bad input."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from emu.analysis import concentration_cli
from emu.analysis.concentration import (
    CAVEAT,
    gate_from_counts,
    gate_from_counts_json,
    gate_from_imatrix,
    layer_concentration,
    render_json,
    render_table,
    verdict,
)
from emu.analysis.expert_counts import load_counts_json, load_imatrix_counts
from emu.errors import EmuError

COUNTS_DIR = Path(__file__).resolve().parents[1] / "scenarios" / "counts"
COUNTS_FILES = sorted(COUNTS_DIR.glob("*.json"))


# ---- metrics against hand-computed values ---------------------------------------------------------------

def test_layer_metrics_by_hand() -> None:
    lc = layer_concentration([90, 5, 5, 0], layer=3)
    # top-1 share is exactly 0.9: one expert of four reaches 90% coverage
    assert lc.hot_n == 1
    assert lc.hot_frac == pytest.approx(0.25)
    # H = -(0.9 ln 0.9 + 2 * 0.05 ln 0.05) = 0.0948245 + 0.2995732 = 0.3943977; ln 4 = 1.3862944
    assert lc.concentration_score == pytest.approx(1 - 0.3943977 / 1.3862944, abs=1e-6)
    assert lc.concentration_score == pytest.approx(0.715502, abs=1e-6)
    assert lc.top_share == pytest.approx(0.9)
    assert lc.top_expert == 0
    assert lc.hot_experts == (0,)
    assert lc.layer == 3
    assert lc.selections == 100


def test_coverage_needs_more_experts_just_above_a_share() -> None:
    # shares 0.5, 0.3, 0.2: 0.8 needs two experts, 0.81 needs three, 0.5 needs one
    assert layer_concentration([3, 5, 2], coverage=0.8).hot_n == 2
    assert layer_concentration([3, 5, 2], coverage=0.81).hot_n == 3
    assert layer_concentration([3, 5, 2], coverage=0.5).hot_n == 1
    assert layer_concentration([3, 5, 2], coverage=0.8).hot_experts == (1, 0)
    # 0.55 * 100 is 55.00000000000001 in binary floating point; a share of exactly 0.55 must still count
    assert layer_concentration([55, 45], coverage=0.55).hot_n == 1


def test_uniform_and_one_hot_extremes() -> None:
    uniform = layer_concentration([7] * 10)
    assert uniform.hot_n == 9  # ceil(0.9 * 10)
    assert uniform.concentration_score == pytest.approx(0.0, abs=1e-12)
    assert uniform.top_share == pytest.approx(0.1)
    one_hot = layer_concentration([0, 0, 12, 0])
    assert (one_hot.hot_n, one_hot.top_expert) == (1, 2)
    assert one_hot.concentration_score == pytest.approx(1.0)


def test_two_equal_hot_experts_score() -> None:
    # p = (0.5, 0.5, 0, 0, 0, 0, 0, 0): H = ln 2, score = 1 - ln2/ln8 = 2/3
    lc = layer_concentration([4, 4, 0, 0, 0, 0, 0, 0])
    assert lc.concentration_score == pytest.approx(2 / 3)
    assert lc.hot_n == 2
    assert lc.hot_experts == (0, 1)  # tie broken by the lower id first


@pytest.mark.parametrize(("median", "expected"), [(0.0, "yes"), (0.2499, "yes"), (0.25, "barely"),
                                                  (0.4999, "barely"), (0.5, "no"), (1.0, "no")])
def test_verdict_thresholds(median: float, expected: str) -> None:
    assert verdict(median) == expected


def test_summary_median_and_verdict_over_layers() -> None:
    # hot_frac per layer: 1/8 (one expert with 90%), 8/8 (uniform: 7 of 8 hold only 87.5%), 2/8 (two at 45%)
    counts = np.array([
        [90, 2, 2, 2, 1, 1, 1, 1],
        [10, 10, 10, 10, 10, 10, 10, 10],
        [45, 45, 2, 2, 2, 2, 1, 1],
    ])
    report = gate_from_counts(counts, layers=[1, 3, 5], top_k=1)
    assert [lc.hot_frac for lc in report.layers] == [1 / 8, 8 / 8, 2 / 8]
    assert [lc.layer for lc in report.layers] == [1, 3, 5]
    assert report.median_hot_frac == pytest.approx(0.25)
    assert report.cache_helps == "barely"
    assert report.hot_frac_floor == pytest.approx(1 / 8)  # ceil(0.9 * top_k=1) = 1 expert
    assert report.hot_frac_uniform == pytest.approx(8 / 8)
    assert report.caveat == CAVEAT


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(0, 10_000), min_size=2, max_size=40).filter(lambda c: sum(c) > 0),
    st.floats(0.05, 1.0),
    st.randoms(use_true_random=False),
    st.integers(1, 50),
)
def test_metrics_properties(counts: list[int], coverage: float, rnd, scale: int) -> None:
    lc = layer_concentration(counts, coverage=coverage)
    total = sum(counts)
    hot = sorted(counts, reverse=True)
    # hot_n is minimal: its top-n mass reaches the coverage and the top-(n-1) mass does not
    assert sum(hot[: lc.hot_n]) >= coverage * total * (1 - 1e-9)
    assert sum(hot[: lc.hot_n - 1]) < coverage * total * (1 + 1e-9)
    assert 0.0 <= lc.concentration_score <= 1.0
    assert lc.top_share == pytest.approx(max(counts) / total)
    # invariant under relabelling the experts and under scaling the counts
    shuffled = counts[:]
    rnd.shuffle(shuffled)
    other = layer_concentration([c * scale for c in shuffled], coverage=coverage)
    assert other.hot_n == lc.hot_n
    assert other.concentration_score == pytest.approx(lc.concentration_score, abs=1e-9)
    assert other.top_share == pytest.approx(lc.top_share)


# ---- the real OLMoE counts --------------------------------------------------------------------------------

def test_counts_files_are_present() -> None:
    assert len(COUNTS_FILES) >= 1, f"no counts JSON under {COUNTS_DIR}"


@pytest.mark.parametrize("path", COUNTS_FILES, ids=lambda p: p.stem)
def test_real_counts_give_a_verdict(path: Path) -> None:
    raw = json.loads(path.read_text())
    report = gate_from_counts_json(path)
    n_experts, top_k = raw["n_experts"], raw["top_k"]
    assert report.n_experts == n_experts and report.top_k == top_k
    assert [lc.layer for lc in report.layers] == raw["layers"]
    for lc, row in zip(report.layers, raw["counts"], strict=True):
        total = sum(row)
        hot = sorted(row, reverse=True)
        # independent check in integer arithmetic: 10 * top-n >= 9 * total, and not for n - 1
        assert 10 * sum(hot[: lc.hot_n]) >= 9 * total > 10 * sum(hot[: lc.hot_n - 1])
        # top-k routing: a token picks k distinct experts, so no expert exceeds 1/top_k of the selections
        assert lc.top_share == pytest.approx(max(row) / total)
        assert lc.top_share <= 1 / top_k + 1e-12
        assert math.ceil(0.9 * top_k) / n_experts <= lc.hot_frac <= math.ceil(0.9 * n_experts) / n_experts
        entropy = -sum(c / total * math.log(c / total) for c in row if c)
        assert lc.concentration_score == pytest.approx(1 - entropy / math.log(n_experts))
    median = sorted(lc.hot_frac for lc in report.layers)[len(report.layers) // 2]
    assert report.median_hot_frac == pytest.approx(median)
    expected = "yes" if median < 0.25 else "barely" if median < 0.5 else "no"
    assert report.cache_helps == expected
    # the table shows every layer's row and the verdict; JSON round-trips the same numbers
    table = render_table(report)
    assert f"cache_helps: {expected}" in table
    layer_rows = [line for line in table.splitlines() if line.strip().split("  ")[0].isdigit()]
    assert len(layer_rows) == len(raw["layers"])
    doc = json.loads(render_json(report))
    assert doc["median_hot_frac"] == pytest.approx(report.median_hot_frac)
    assert [d["hot_n"] for d in doc["layers"]] == [lc.hot_n for lc in report.layers]


def test_coverage_moves_hot_frac_monotonically() -> None:
    path = COUNTS_FILES[0]
    fracs = [gate_from_counts_json(path, cov).median_hot_frac for cov in (0.5, 0.8, 0.9, 0.99)]
    assert fracs == sorted(fracs)
    assert fracs[0] < fracs[-1]


# ---- llama.cpp imatrix GGUF ------------------------------------------------------------------------------

def _write_imatrix(path: Path, layers: dict[int, np.ndarray], *, general_type: str = "imatrix",
                   disagree: bool = False, dense_only: bool = False) -> None:
    """An imatrix GGUF as llama.cpp writes it: W.in_sum2 [n_mat, n_cols], W.counts [n_mat, 1], W.in_sum."""
    gguf = pytest.importorskip("gguf")
    writer = gguf.GGUFWriter(str(path), arch="imatrix")
    writer.add_type(general_type)
    writer.add_array("imatrix.datasets", ["calibration.txt"])
    writer.add_uint32("imatrix.chunk_count", 4)
    writer.add_uint32("imatrix.chunk_size", 512)
    n_cols = 16

    def add(name: str, counts: np.ndarray) -> None:
        n_mat = counts.size
        writer.add_tensor(f"{name}.in_sum", np.full((n_mat, n_cols), 0.5, np.float32))
        writer.add_tensor(f"{name}.in_sum2", np.full((n_mat, n_cols), 2.0, np.float32))
        writer.add_tensor(f"{name}.counts", counts.astype(np.float32).reshape(n_mat, 1))

    # a dense first layer: one count per matrix, which must be ignored
    add("blk.0.attn_q.weight", np.array([2048.0]))
    add("blk.0.ffn_down.weight", np.array([2048.0]))
    if not dense_only:
        for layer, counts in layers.items():
            add(f"blk.{layer}.attn_q.weight", np.array([2048.0]))
            add(f"blk.{layer}.ffn_gate_inp.weight", np.array([2048.0]))
            for kind in ("ffn_gate_exps", "ffn_up_exps", "ffn_down_exps"):
                shifted = counts.copy()
                if disagree and kind == "ffn_up_exps":
                    shifted[0] += 1
                add(f"blk.{layer}.{kind}.weight", shifted)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_imatrix_counts_are_read_per_moe_layer(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    layers = {layer: rng.integers(0, 400, size=8).astype(np.float64) for layer in (1, 2, 10)}
    layers[2][5] = 0  # an expert never used must stay a zero, not vanish
    path = tmp_path / "imatrix.gguf"
    _write_imatrix(path, layers)

    table = load_imatrix_counts(path)
    assert table.layers == (1, 2, 10)
    assert table.n_experts == 8
    np.testing.assert_array_equal(table.counts, np.stack([layers[k] for k in (1, 2, 10)]))

    report = gate_from_imatrix(path, coverage=0.8)
    direct = gate_from_counts(np.stack([layers[k] for k in (1, 2, 10)]), [1, 2, 10], coverage=0.8)
    assert [lc.to_dict() for lc in report.layers] == [lc.to_dict() for lc in direct.layers]
    assert report.top_k is None and report.hot_frac_floor is None
    assert "top_k unknown" in render_table(report)


def test_imatrix_counts_that_disagree_name_the_tensor(tmp_path: Path) -> None:
    path = tmp_path / "bad.gguf"
    _write_imatrix(path, {3: np.arange(1.0, 9.0)}, disagree=True)
    with pytest.raises(EmuError) as err:
        load_imatrix_counts(path)
    assert err.value.file == str(path)
    assert err.value.key == "blk.3.ffn_up_exps.weight.counts"
    assert "disagree" in str(err.value)


def test_imatrix_without_per_expert_counts_is_refused(tmp_path: Path) -> None:
    # an imatrix converted from the legacy .dat format keeps a single count for an expert tensor
    path = tmp_path / "legacy.gguf"
    _write_imatrix(path, {2: np.array([4096.0])})
    with pytest.raises(EmuError, match="one count per expert") as err:
        load_imatrix_counts(path)
    assert (err.value.file, err.value.key) == (str(path), "blk.2.ffn_down_exps.weight.counts")


def test_imatrix_of_a_dense_model_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "dense.gguf"
    _write_imatrix(path, {}, dense_only=True)
    with pytest.raises(EmuError, match=r"_exps\.weight\.counts") as err:
        load_imatrix_counts(path)
    assert err.value.file == str(path)


def test_model_gguf_is_not_an_imatrix(tmp_path: Path) -> None:
    path = tmp_path / "model.gguf"
    _write_imatrix(path, {1: np.arange(1.0, 9.0)}, general_type="model")
    with pytest.raises(EmuError, match="imatrix") as err:
        load_imatrix_counts(path)
    assert (err.value.file, err.value.key) == (str(path), "general.type")


def test_non_gguf_file_is_refused(tmp_path: Path) -> None:
    pytest.importorskip("gguf")
    path = tmp_path / "not.gguf"
    path.write_bytes(b"this is not a gguf file at all" * 4)
    with pytest.raises(EmuError, match="GGUF") as err:
        load_imatrix_counts(path)
    assert err.value.file == str(path)


def test_missing_gguf_package_says_how_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "gguf", None)  # makes `import gguf` raise ImportError
    with pytest.raises(EmuError, match=r"pip install .moe-emu\[imatrix\]") as err:
        load_imatrix_counts(tmp_path / "x.gguf")
    assert err.value.file == str(tmp_path / "x.gguf")


# ---- bad counts JSON: the message names the file and the key ------------------------------------------

GOOD = {"model": "m", "n_experts": 4, "top_k": 2, "layers": [0, 1], "counts": [[4, 3, 2, 1], [1, 1, 2, 4]]}


def _bad(tmp_path: Path, **changes: object) -> Path:
    doc = {**GOOD, **changes}
    doc = {k: v for k, v in doc.items() if v is not _DROP}
    path = tmp_path / "counts.json"
    path.write_text(json.dumps(doc))
    return path


_DROP = object()


@pytest.mark.parametrize(
    ("changes", "key", "words"),
    [
        ({"counts": _DROP}, "counts", "missing"),
        ({"n_experts": 1}, "n_experts", ">= 2"),
        ({"n_experts": "4"}, "n_experts", "integer"),
        ({"top_k": 5}, "top_k", "n_experts=4"),
        ({"layers": [0]}, "layers", "2 layer indices"),
        ({"layers": [0, 0]}, "layers", "distinct"),
        ({"layers": [0, -1]}, "layers[1]", "non-negative"),
        ({"counts": [[4, 3, 2, 1], [1, 1, 1]]}, "counts[1]", "expected 4 counts"),
        ({"counts": [[4, 3, 2, 1], [1, -1, 1, 5]]}, "counts[1][1]", ">= 0"),
        ({"counts": [[4, 3, "x", 1], [1, 1, 1, 5]]}, "counts[0][2]", ">= 0"),
        ({"counts": [[4, 3, 2, 1], [0, 0, 0, 0]]}, "counts[1]", "no routing mass"),
        ({"counts": []}, "counts", "non-empty"),
        ({"model": 3}, "model", "string"),
        # top_k 2: expert 3 of layer 1 picked 5 times out of 8 / 2 = 4 tokens is impossible
        ({"counts": [[4, 3, 2, 1], [1, 1, 1, 5]], "top_k": 2}, "top_k", "distinct experts"),
    ],
)
def test_bad_counts_json_names_file_and_key(tmp_path: Path, changes: dict, key: str, words: str) -> None:
    path = _bad(tmp_path, **changes)
    with pytest.raises(EmuError) as err:
        load_counts_json(path)
    assert err.value.file == str(path)
    assert err.value.key == key
    assert words in str(err.value)
    assert str(path) in str(err.value) and key in str(err.value)


def test_valid_small_counts_json_loads(tmp_path: Path) -> None:
    path = _bad(tmp_path)
    report = gate_from_counts_json(path)
    assert report.model == "m" and report.top_k == 2
    # layer 0: (4+3+2)/10 = 0.9 with three experts; layer 1: (4+2+1)/8 = 0.875 < 0.9, so all four
    assert [lc.hot_n for lc in report.layers] == [3, 4]


def test_counts_json_unreadable_or_not_json(tmp_path: Path) -> None:
    missing = tmp_path / "nope.json"
    with pytest.raises(EmuError, match="cannot read") as err:
        load_counts_json(missing)
    assert err.value.file == str(missing)
    broken = tmp_path / "broken.json"
    broken.write_text('{"n_experts": 4,')
    with pytest.raises(EmuError, match="not valid JSON") as err:
        load_counts_json(broken)
    assert err.value.file == str(broken)


def test_bad_array_and_coverage() -> None:
    with pytest.raises(EmuError) as err:
        gate_from_counts(np.ones(5), source="trace.npz")
    assert (err.value.file, err.value.key) == ("trace.npz", "counts")
    with pytest.raises(EmuError) as err:
        gate_from_counts(np.ones((2, 4)), coverage=1.5)
    assert err.value.key == "coverage"
    with pytest.raises(EmuError) as err:
        gate_from_counts(np.array([[1.0, np.nan]]), source="t.npz")
    assert err.value.key == "counts[0][1]"


# ---- CLI glue ------------------------------------------------------------------------------------------

def _cli(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="emu")
    concentration_cli.add_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


def test_cli_table_and_json(capsys: pytest.CaptureFixture[str]) -> None:
    path = str(COUNTS_FILES[0])
    assert concentration_cli.run(_cli(["concentration", "--counts", path])) == 0
    table = capsys.readouterr().out
    assert "cache_helps:" in table and "Workload caveat" in table
    args = _cli(["concentration", "--counts", path, "--coverage", "0.5", "--json"])
    assert concentration_cli.run(args) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["coverage"] == 0.5
    assert doc["median_hot_frac"] == pytest.approx(gate_from_counts_json(path, 0.5).median_hot_frac)


def test_cli_trace_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from emu.trace import RoutingTrace

    # 4 tokens, 2 MoE layers, top-2 of 4 experts
    experts = np.array([
        [[0, 1], [2, 3]],
        [[0, 1], [3, 2]],
        [[0, 2], [2, 3]],
        [[1, 0], [2, 3]],
    ], dtype=np.int16)
    trace = RoutingTrace(experts=experts, pass_offsets=np.array([0, 2, 3, 4]), pass_phase=np.array([0, 1, 1]),
                         token_request=np.zeros(4, np.int32), token_position=np.array([0, 1, 2, 3], np.int32),
                         n_experts=4, model="tiny")
    path = tmp_path / "trace.npz"
    trace.save(path)
    assert concentration_cli.run(_cli(["concentration", "--trace", str(path), "--json"])) == 0
    doc = json.loads(capsys.readouterr().out)
    # layer 0 counts [4, 3, 1, 0] of 8: 0.9 * 8 = 7.2 needs three experts; layer 1 [0, 0, 4, 4]: two
    assert [d["hot_n"] for d in doc["layers"]] == [3, 2]
    assert doc["layers"][1]["concentration_score"] == pytest.approx(1 - math.log(2) / math.log(4))
    assert doc["layers"][0]["top_share"] == pytest.approx(0.5)
    assert doc["median_hot_frac"] == pytest.approx((3 / 4 + 2 / 4) / 2)
    assert doc["cache_helps"] == "no"
    assert (doc["top_k"], doc["model"], doc["source"]) == (2, "tiny", str(path))


def test_cli_trace_missing_file_names_it(tmp_path: Path) -> None:
    missing = tmp_path / "none.npz"
    with pytest.raises(EmuError) as err:
        concentration_cli.run(_cli(["concentration", "--trace", str(missing)]))
    assert err.value.file == str(missing)


def test_cli_rejects_bad_coverage_and_two_sources(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        _cli(["concentration", "--counts", "a.json", "--coverage", "0"])
    with pytest.raises(SystemExit):
        _cli(["concentration", "--counts", "a.json", "--imatrix", "b.gguf"])
    with pytest.raises(SystemExit):
        _cli(["concentration"])
    capsys.readouterr()
