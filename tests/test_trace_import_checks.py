"""Import sanity checks (emu/trace/checks.py): each check by hand on `finish_import`, then through every
format importer, so a check that is skipped, misplaced or names the wrong place fails here."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from emu.errors import EmuError, EmuWarning
from emu.models import ModelSpec
from emu.trace.checks import MIN_DEGENERATE_TOKENS, finish_import
from emu.trace.formats import import_trace
from emu.trace.formats.route_csv import import_route_trace
from emu.trace.formats.vllm import save_vllm_npz

from .test_trace_import_formats import (
    csv_rows,
    parquet_table,
    save_sglang,
    sglang_record,
    vllm_output,
    write_onnx_json,
    write_route_csv,
)

M = ModelSpec(name="m", n_moe_layers=2, n_experts=8, top_k=2, hidden=8, expert_intermediate=8)


def located(t: int, layer: int, field: str) -> tuple[str, str]:
    return f"src.file:tok{t}", f"{field}[{layer}]"


def distinct(n_tok: int, n_layers: int = 2, k: int = 2) -> np.ndarray:
    """Routing where no two consecutive tokens agree: token t, layer l picks (t + l + j) % 8."""
    return np.array([[[(t + layer + 3 * j) % 8 for j in range(k)] for layer in range(n_layers)]
                     for t in range(n_tok)], dtype=np.int64)


def finish(experts: np.ndarray, *, phases: list[int] | None = None, offsets: list[int] | None = None,
           requests: list[int] | None = None, **kw: Any):
    n = experts.shape[0]
    offsets = offsets if offsets is not None else list(range(n + 1))  # default: one decode pass per token
    phases = phases if phases is not None else [1] * (len(offsets) - 1)
    req = np.asarray(requests if requests is not None else [0] * n)
    pos = np.zeros(n, dtype=np.int64)
    for r in np.unique(req):
        pos[req == r] = np.arange((req == r).sum())
    kw.setdefault("meta", {})
    kw.setdefault("file", "src.file")
    return finish_import(experts=experts, pass_offsets=np.asarray(offsets), pass_phase=np.asarray(phases),
                         token_request=req, token_position=pos, locate=located, **kw)


# --- each check by hand --------------------------------------------------------------------------------
def test_clean_routing_passes_and_casts():
    scores = np.full((4, 2, 2), 0.5)
    trace = finish(distinct(4), scores=scores, model=M)
    assert trace.experts.dtype == np.uint8 and trace.scores.dtype == np.float16  # ids < 256: one byte each
    assert trace.n_experts == 8 and trace.model == "m" and trace.meta == {}


@pytest.mark.parametrize(("value", "field"), [(8, "experts"), (-1, "experts"), (8, "predicted")])
def test_out_of_range_id_names_the_token_and_layer(value, field):
    experts = distinct(4)
    predicted = distinct(4)
    (predicted if field == "predicted" else experts)[2, 1, 0] = value
    with pytest.raises(EmuError) as info:
        finish(experts, predicted=predicted, model=M)
    err = info.value
    assert err.file == "src.file:tok2" and err.key == f"{field}[1]"
    what = "predicted expert" if field == "predicted" else "expert"
    assert f"{what} id {value} out of range at request 0 position 2 layer 1: expected 0..7 (model m has 8 experts)" \
        in str(err)


def test_declared_expert_count_bounds_ids_and_must_match_the_model():
    experts = distinct(3)
    experts[1, 0, 1] = 7
    with pytest.raises(EmuError, match=r"expert id 7 out of range .* expected 0\.\.6 \(the file declares 7"):
        finish(experts, declared_n_experts=7)
    with pytest.raises(EmuError, match="the file declares 16 experts per MoE layer but model m has 8") as info:
        finish(distinct(3), declared_n_experts=16, model=M)
    assert info.value.key == "n_experts"
    experts[1, 0, 1] = 2**15  # without a model or declared count: the int16 bound
    with pytest.raises(EmuError, match=r"expert id 32768 out of range .* \(int16 ids"):
        finish(experts)


@pytest.mark.parametrize("field", ["experts", "predicted"])
def test_duplicate_id_within_one_tokens_top_k(field):
    experts, predicted = distinct(5, k=3), distinct(5, k=3)
    arr = experts if field == "experts" else predicted
    arr[3, 0] = [5, 1, 5]
    arr[4, 1] = [2, 2, 0]  # a later duplicate: the first one is named
    with pytest.raises(EmuError) as info:
        finish(experts, predicted=predicted)
    err = info.value
    assert err.file == "src.file:tok3" and err.key == f"{field}[0]"
    assert "in one token's top-3 at request 0 position 3 layer 0: expected 3 distinct ids, got [5, 1, 5]" in str(err)


@pytest.mark.parametrize(("bad", "text"), [(float("nan"), "non-finite gate score nan"),
                                           (float("-inf"), "non-finite gate score -inf"),
                                           (1e6, "does not fit float16")])
def test_bad_scores(bad, text):
    scores = np.full((3, 2, 2), 0.5)
    scores[1, 1, 1] = bad
    with pytest.raises(EmuError, match=text) as info:
        finish(distinct(3), scores=scores)
    assert info.value.file == "src.file:tok1" and info.value.key == "scores[1]"


def test_layer_count_must_match_the_model():
    with pytest.raises(EmuError, match="the file has 3 MoE layers but model m has 2"):
        finish(distinct(3, n_layers=3), model=M)


def test_top_k_differing_from_the_model_warns_and_is_kept_in_meta():
    with pytest.warns(EmuWarning, match="routes top-1 but model m routes top-2"):
        trace = finish(distinct(3, k=1), model=M)
    assert trace.meta["top_k_mismatch"] == {"trace": 1, "model": 2} and trace.top_k == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        trace = finish(distinct(3, k=2), model=M)  # same k: silent, nothing in meta
    assert "top_k_mismatch" not in trace.meta


def test_degenerate_prefill_pass_threshold_and_scores():
    n = MIN_DEGENERATE_TOKENS
    experts = np.concatenate([np.repeat(distinct(1), n, axis=0), (distinct(3) + 1) % 8])
    offsets, phases = [0, n, n + 1, n + 2, n + 3], [0, 1, 1, 1]
    with pytest.raises(EmuError) as info:
        finish(experts, offsets=offsets, phases=phases)
    err = info.value
    assert f"degenerate capture: prefill pass 0 ({n} tokens from request 0 position 0) has identical routing on " \
           "every token" in str(err)
    assert "--allow-degenerate" in str(err) and err.file == "src.file:tok0"
    # one token fewer is not a range
    short = np.concatenate([np.repeat(distinct(1), n - 1, axis=0), (distinct(3) + 1) % 8])
    finish(short, offsets=[0, n - 1, n, n + 1, n + 2], phases=phases)
    # same experts but the gate scores differ: a real router can do that
    scores = np.full(experts.shape, 0.5)
    scores[1, 0, 0] = 0.25
    finish(experts, scores=scores, offsets=offsets, phases=phases)
    # identical scores too: degenerate, and the message says so
    with pytest.raises(EmuError, match="identical routing and gate scores"):
        finish(experts, scores=np.full(experts.shape, 0.5), offsets=offsets, phases=phases)


def test_degenerate_decode_every_token_of_a_request_same_expert_set():
    # request 0: prefill of 2 distinct tokens, then 4 decode tokens with one expert set in shuffled slot order
    pre = distinct(2)
    dec = np.array([[[1, 2], [3, 4]], [[2, 1], [3, 4]], [[1, 2], [4, 3]], [[2, 1], [4, 3]]])
    experts = np.concatenate([pre, dec])
    offsets, phases = [0, 2, 3, 4, 5, 6], [0, 1, 1, 1, 1]
    with pytest.raises(EmuError, match="all 4 decode tokens of request 0 route the same experts at every layer"):
        finish(experts, offsets=offsets, phases=phases)
    varied = experts.copy()
    varied[4, 1] = [4, 5]  # one decode token differs: fine
    finish(varied, offsets=offsets, phases=phases)
    # two requests interleaved in batched decode passes: request 1 varies, request 0 does not
    req = [0, 1, 0, 1, 0, 1, 0, 1]
    exp2 = np.concatenate([dec[:1], distinct(1), dec[1:2], distinct(2)[1:], dec[2:3], distinct(4)[3:],
                           dec[3:4], distinct(6)[5:]])
    with pytest.raises(EmuError, match="decode tokens of request 0 route the same experts"):
        finish(exp2, offsets=[0, 2, 4, 6, 8], phases=[1, 1, 1, 1], requests=req)


def test_allow_degenerate_warns_and_keeps_the_fact():
    experts = np.repeat(distinct(1), 4, axis=0)  # four decode passes of one request, all the same
    with pytest.warns(EmuWarning, match="degenerate capture: all 4 decode tokens of request 0"):
        trace = finish(experts, allow_degenerate=True)
    assert trace.meta["degenerate"] == {"ranges": 1, "first": [{"kind": "decode", "request": 0, "tokens": 4,
                                                                "token": 0}]}


# --- every importer runs the checks and names the source location --------------------------------------
def _cells(n_steps: int, prefill: int = 1) -> dict[tuple[int, int, int], list[list[tuple[int, float]]]]:
    out = {}
    for step in range(n_steps):
        out[(0, 0 if step < prefill else 1, step)] = [[((step + layer + 3 * j) % 8, 0.6 - 0.2 * j) for j in range(2)]
                                                      for layer in range(2)]
    return out


def test_route_csv_checks_name_the_line(tmp_path):
    rows = csv_rows(_cells(4))
    # rows are step, layer, slot; header is 5 lines (magic, model, 2 layer lines, columns): row i is line 6 + i
    bad = list(rows)
    bad[2 * 2 * 2 + 1] = (0, 1, 2, 0, 1, 8, 0.4)  # step 2 layer 0 slot 1: expert 8 of n_expert=8
    with pytest.raises(EmuError, match=r"expert id 8 out of range at request 0 position 2 layer 0: expected 0\.\.7 "
                                       r"\(the file declares 8") as info:
        import_route_trace(write_route_csv(tmp_path / "a.csv", bad))
    assert info.value.file.endswith("a.csv:14") and info.value.key == "expert"  # line of slot 0 of that cell
    dup = list(rows)
    dup[3 * 4 + 2 + 1] = (0, 1, 3, 1, 1, rows[3 * 4 + 2][5], 0.4)  # step 3 layer 1: both slots the same expert
    with pytest.raises(EmuError, match="duplicate expert id in one token's top-2 at request 0 position 3 layer 1") \
            as info:
        import_route_trace(write_route_csv(tmp_path / "b.csv", dup))
    assert info.value.file.endswith("b.csv:20")
    nan = list(rows)
    nan[5] = (*rows[5][:6], "nan")
    with pytest.raises(EmuError, match="non-finite gate score nan") as info:
        import_route_trace(write_route_csv(tmp_path / "c.csv", nan))
    assert info.value.file.endswith("c.csv:10") and info.value.key == "weight"


def test_route_csv_top_k_below_the_header_and_the_model(tmp_path):
    path = write_route_csv(tmp_path / "k.csv", csv_rows(_cells(4)), n_used=3)  # rows carry 2 of 3 slots
    model3 = ModelSpec(name="m3", n_moe_layers=2, n_experts=8, top_k=3, hidden=8, expert_intermediate=8)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trace = import_route_trace(path, model3)
    texts = [str(w.message) for w in caught]
    assert any("rows carry top-2 but the header says n_expert_used=3" in t for t in texts)
    assert any("routes top-2 but model m3 routes top-3" in t for t in texts)
    assert trace.meta["top_k"] == 2 and trace.meta["n_expert_used"] == 3
    assert trace.meta["top_k_truncated"] == {"file": 2, "n_expert_used": 3}
    assert trace.meta["top_k_mismatch"] == {"trace": 2, "model": 3}
    assert trace.meta["expert_bytes"] == [1000, 1001] and trace.meta["dense_bytes"] == [50, 51]


def test_route_csv_degenerate_decode_refused_then_allowed(tmp_path):
    cells = _cells(5, prefill=1)
    for step in range(1, 5):
        cells[(0, 1, step)] = cells[(0, 1, 1)]  # every decode step routes like the first one
    path = write_route_csv(tmp_path / "d.csv", csv_rows(cells))
    with pytest.raises(EmuError, match="degenerate capture: all 4 decode tokens of request 0 route the same") as info:
        import_trace(path)
    assert info.value.file.endswith("d.csv:10")  # the first decode row
    with pytest.warns(EmuWarning, match="degenerate capture"):
        trace = import_trace(path, allow_degenerate=True)
    assert trace.meta["degenerate"]["ranges"] == 1


def test_route_csv_structure_errors(tmp_path):
    rows = csv_rows(_cells(3))
    path = tmp_path / "x.csv"
    path.write_text("turn,phase\n")
    with pytest.raises(EmuError, match="expected '# route_trace v1' as the first line") as info:
        import_route_trace(path)
    assert info.value.file.endswith("x.csv:1")
    bad = list(rows)
    bad[4] = (0, 0, 1, 0, 0, "x", 0.5)
    with pytest.raises(EmuError, match="expected an integer, got 'x'") as info:
        import_route_trace(write_route_csv(tmp_path / "p.csv", bad))
    assert info.value.file.endswith("p.csv:10") and info.value.key == "expert"
    bad = [*rows, rows[3]]  # step 0 layer 1 slot 1 again
    with pytest.raises(EmuError, match=r"duplicate slot 1 for turn 0 step 0 layer 1 \(first at line 9\)") as info:
        import_route_trace(write_route_csv(tmp_path / "s.csv", bad))
    assert info.value.file.endswith(f"s.csv:{6 + len(rows)}")
    bad = [r for r in rows if not (r[2] == 1 and r[3] == 1)]  # decode step 1 lacks layer 1
    with pytest.raises(EmuError, match=r"request 0 position 1 lacks layers \[1\]") as info:
        import_route_trace(write_route_csv(tmp_path / "m.csv", bad))
    assert info.value.file.endswith("m.csv:10")
    bad = list(rows)
    bad[0] = (0, 0, 0, 0, 2, 1, 0.5)
    with pytest.raises(EmuError, match=r"slot 2 out of range: expected 0\.\.1 \(n_expert_used=2\)") as info:
        import_route_trace(write_route_csv(tmp_path / "k.csv", bad))
    assert info.value.file.endswith("k.csv:6") and info.value.key == "slot"


def test_onnx_genai_checks_name_the_json_path(tmp_path):
    pre = distinct(2).tolist()
    dec = distinct(5)[2:].tolist()
    dec[1][0] = [3, 3]
    with pytest.raises(EmuError, match="duplicate expert id in one token's top-2 at request 'p' position 3") as info:
        import_trace(write_onnx_json(tmp_path / "a.json", {"p": (pre, dec)}))
    assert info.value.key == "prompts.p.decode[1][0]" and info.value.file.endswith("a.json")
    dec[1][0] = [3, 9]
    with pytest.raises(EmuError, match="expert id 9 out of range") as info:
        import_trace(write_onnx_json(tmp_path / "b.json", {"p": (pre, dec)}))
    assert info.value.key == "prompts.p.decode[1][0]"
    dec[1][0] = [3]
    with pytest.raises(EmuError, match=r"expected a list of 2 ints \(top_k\)") as info:
        import_trace(write_onnx_json(tmp_path / "c.json", {"p": (pre, dec)}))
    assert info.value.key == "prompts.p.decode[1][0]"


def test_parquet_checks_name_the_row(tmp_path):
    rows = {"request": [0] * 4, "position": [0, 0, 1, 1], "phase": ["decode"] * 4, "layer": [0, 1, 0, 1],
            "experts": [[0, 1], [2, 3], [4, 5], [6, 6]], "scores": [[0.5, 0.5]] * 4,
            "predicted": [[0, 1]] * 4}
    with pytest.raises(EmuError, match="duplicate expert id") as info:
        import_trace(parquet_table(tmp_path / "a.parquet", rows))
    assert info.value.file.endswith("a.parquet:row 3") and info.value.key == "experts"
    rows["experts"][3] = [6, 7]
    rows["predicted"][1] = [0, 12]
    with pytest.raises(EmuError, match="predicted expert id 12 out of range") as info:
        import_trace(parquet_table(tmp_path / "b.parquet", rows), M)
    assert info.value.file.endswith("b.parquet:row 1") and info.value.key == "predicted"
    rows["predicted"][1] = [0, 1]
    rows["scores"][2] = [0.5, float("inf")]
    with pytest.raises(EmuError, match="non-finite gate score inf") as info:
        import_trace(parquet_table(tmp_path / "c.parquet", rows))
    assert info.value.file.endswith("c.parquet:row 2") and info.value.key == "scores"


def test_vllm_checks_name_the_request_row_and_layer(tmp_path):
    arr = np.zeros((4, 3, 2), dtype=np.int32)  # layer 0 dense (zeros), layers 1-2 MoE
    arr[:, 1:] = distinct(4)
    arr[2, 2] = [5, 5]
    path = tmp_path / "v.npz"
    save_vllm_npz(path, [vllm_output("r0", arr, 2, 3)])
    with pytest.raises(EmuError, match="duplicate expert id in one token's top-2 at request 'r0' position 2") \
            as info:
        import_trace(path)
    assert info.value.key == "r0/routed_experts[2][2]"  # the layer index in vLLM's own array


def test_sglang_checks_name_the_record(tmp_path):
    pytest.importorskip("torch")
    topk = np.stack([distinct(3)[:, 0, :], distinct(3)[:, 1, :]])  # [layers, tokens, k]
    topk[1, 2] = [4, 4]
    path = save_sglang(tmp_path / "s.pt", [sglang_record(0, 1, [0, 1, 2], topk, [3])])
    with pytest.raises(EmuError, match="duplicate expert id") as info:
        import_trace(path)
    assert info.value.key == "records[0].topk_ids_of_layer[1][2]"
    topk[1, 2] = [4, 9]
    identity = np.tile(np.arange(8), (2, 1))
    path = save_sglang(tmp_path / "t.pt", [sglang_record(0, 1, [0, 1, 2], topk, [3])], identity)
    with pytest.raises(EmuError, match=r"expert id 9 out of range .* \(the file declares 8 experts") as info:
        import_trace(path)
    assert info.value.key == "records[0].topk_ids_of_layer[1][2]"
    path = save_sglang(tmp_path / "u.pt", [sglang_record(0, 1, [0, 1, 2], topk, [3])], identity[:, ::-1].copy())
    with pytest.raises(EmuError, match=r"physical expert id 9 out of range: the map has 8") as info:
        import_trace(path)
    assert info.value.key == "records[0].topk_ids_of_layer[1][2]"


def test_every_importer_refuses_a_degenerate_capture(tmp_path):
    """The same degenerate routing (a 4-token prefill, every token alike) in every format."""
    pytest.importorskip("torch")
    same = np.repeat(distinct(1), 4, axis=0)
    dec = distinct(6)[4:]
    routing = np.concatenate([same, dec])
    files: dict[str, Path] = {}
    files["route-trace"] = write_route_csv(tmp_path / "a.csv", csv_rows({
        (0, 0 if t < 4 else 1, t): [[(int(e), 0.5) for e in routing[t, layer]] for layer in range(2)]
        for t in range(6)}))
    files["onnx-genai"] = write_onnx_json(tmp_path / "b.json", {"p": (same.tolist(), dec.tolist())})
    files["parquet"] = parquet_table(tmp_path / "c.parquet", {
        "request": [0] * 12, "position": [t for t in range(6) for _ in range(2)],
        "phase": ["prefill" if t < 4 else "decode" for t in range(6) for _ in range(2)],
        "layer": [0, 1] * 6, "experts": [routing[t, layer].tolist() for t in range(6) for layer in range(2)]})
    save_vllm_npz(tmp_path / "d.npz", [vllm_output("r", routing.astype(np.int32), 4, 3)])
    files["vllm"] = tmp_path / "d.npz"
    files["sglang"] = save_sglang(tmp_path / "e.pt", [
        sglang_record(0, 1, [0, 1, 2, 3], np.transpose(same, (1, 0, 2)), [4]),
        sglang_record(1, 2, [4], np.transpose(dec[:1], (1, 0, 2))),
        sglang_record(2, 2, [5], np.transpose(dec[1:], (1, 0, 2)))])
    for fmt, path in files.items():
        with pytest.raises(EmuError, match=r"degenerate capture: prefill pass 0 \(4 tokens") as info:
            import_trace(path, fmt=fmt)
        assert "--allow-degenerate" in str(info.value), fmt
        with pytest.warns(EmuWarning, match="degenerate capture"):
            trace = import_trace(path, fmt=fmt, allow_degenerate=True)
        assert trace.meta["degenerate"]["first"][0]["kind"] == "pass", fmt


def test_route_csv_line_numbers_stay_exact_with_blank_and_comment_lines(tmp_path):
    rows = csv_rows(_cells(3))
    rows[-1] = (*rows[-1][:5], rows[-2][5], rows[-1][6])  # step 2 layer 1: both slots the same expert
    path = write_route_csv(tmp_path / "c.csv", rows)
    lines = path.read_text().splitlines()
    lines[8:8] = ["", "# a note between rows"]  # after the 3rd data row (line 8)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(EmuError, match="duplicate expert id") as info:
        import_route_trace(path)
    assert info.value.file.endswith(f"c.csv:{6 + len(rows) - 2 + 2}")  # slot 0 of that cell, shifted by 2
