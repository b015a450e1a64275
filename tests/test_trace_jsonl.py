"""JSONL importer: both field conventions, pass structure, the real shared captures, every bad input."""

from __future__ import annotations

import json
import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from emu.errors import EmuError, EmuWarning
from emu.models import ModelSpec, get_preset
from emu.trace import PHASE_DECODE, PHASE_PREFILL, RoutingTrace
from emu.trace.jsonl import import_jsonl

SHARED_TRACES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "traces"
TINY = ModelSpec(name="tiny", n_moe_layers=2, n_experts=4, top_k=2, hidden=8, expert_intermediate=8)


def write(tmp_path: Path, rows: list[dict | str], name: str = "t.jsonl") -> Path:
    path = tmp_path / name
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def rows_for(req, tok, experts_by_layer, *, phase=None, pas=None, scores=True, ours=True) -> list[dict]:
    out = []
    for layer, ex in enumerate(experts_by_layer):
        row = ({"request": req, "token": tok} if ours else {"problem_id": req, "token_idx": tok})
        row.update(layer=layer, experts=ex)
        if scores:
            row["scores" if ours else "gating_probs"] = [0.7, 0.3]
        if phase:
            row["phase"] = phase
        if pas is not None:
            row["pass"] = pas
        out.append(row)
    return out


# --- conventions and ordering ----------------------------------------------------------------------
def test_shared_convention_rows_shuffled_give_decode_passes_in_request_then_token_order(tmp_path):
    rows = []
    # request 1 has 2 tokens, request 0 has 3; experts encode (request, token) so placement can be checked
    for req, n in ((1, 2), (0, 3)):
        for tok in range(n):
            rows += rows_for(req, tok, [[req, 2 + tok % 2], [3 - req, tok % 2]], ours=False)
    rows.reverse()
    rows.append({"dataset": "x", "problem_id": 0, "token_idx": 9, "layer": 0, "experts": [0, 1],
                 "gating_probs": [0.5, 0.5]})
    rows.append({"dataset": "y", "problem_id": 0, "token_idx": 9, "layer": 1, "experts": [2, 1],
                 "gating_probs": [0.5, 0.5]})
    trace = import_jsonl(write(tmp_path, rows), TINY)
    assert trace.n_tokens == 6 and trace.n_passes == 6 and trace.n_requests == 2
    assert (trace.pass_phase == PHASE_DECODE).all()
    assert trace.pass_offsets.tolist() == [0, 1, 2, 3, 4, 5, 6]
    assert trace.token_request.tolist() == [0, 0, 0, 0, 1, 1]
    assert trace.token_position.tolist() == [0, 1, 2, 9, 0, 1]
    assert trace.experts[1].tolist() == [[0, 3], [3, 1]]  # request 0, token 1
    assert trace.experts[3].tolist() == [[0, 1], [2, 1]]  # request 0, token 9
    assert trace.experts[5].tolist() == [[1, 3], [2, 1]]  # request 1, token 1
    assert trace.scores is not None and trace.scores.dtype == np.float16
    assert np.allclose(trace.scores[0, 0].astype(float), [0.7, 0.3], atol=1e-3)
    assert trace.meta["fields"] == {"dataset": ["x", "y"]}


def test_prefill_rows_without_pass_form_one_pass_per_request(tmp_path):
    rows = []
    for tok in range(3):
        rows += rows_for(7, tok, [[0, 1], [2, 3]], phase="prefill", scores=False)
    for tok in (3, 4):
        rows += rows_for(7, tok, [[1, 2], [3, 0]], phase="decode", scores=False)
    for tok in range(2):
        rows += rows_for(5, tok, [[0, 3], [1, 2]], phase="prefill", scores=False)
    rows += rows_for(5, 2, [[0, 3], [1, 2]], scores=False)  # no phase: decode
    trace = import_jsonl(write(tmp_path, rows), TINY)
    # request 5: prefill(2) + 1 decode; request 7: prefill(3) + 2 decode
    assert trace.pass_offsets.tolist() == [0, 2, 3, 6, 7, 8]
    P, D = PHASE_PREFILL, PHASE_DECODE
    assert trace.pass_phase.tolist() == [P, D, P, D, D]
    assert trace.token_request.tolist() == [5, 5, 5, 7, 7, 7, 7, 7]
    assert trace.token_position.tolist() == [0, 1, 2, 0, 1, 2, 3, 4]
    assert trace.scores is None


def test_explicit_passes_batch_requests_and_order_by_request_then_token(tmp_path):
    rows = []
    rows += rows_for("b", 0, [[0, 1], [2, 3]], phase="prefill", pas=0)
    rows += rows_for("b", 1, [[0, 2], [2, 3]], phase="prefill", pas=0)
    rows += rows_for("a", 0, [[1, 2], [0, 3]], phase="prefill", pas=1)
    rows += rows_for("b", 2, [[3, 2], [1, 0]], phase="decode", pas=2)
    rows += rows_for("a", 1, [[3, 1], [1, 2]], phase="decode", pas=2)
    rows = rows[::-1]
    trace = import_jsonl(write(tmp_path, rows), TINY)
    assert trace.pass_offsets.tolist() == [0, 2, 3, 5]
    assert trace.pass_phase.tolist() == [PHASE_PREFILL, PHASE_PREFILL, PHASE_DECODE]
    assert trace.meta["request_ids"] == ["a", "b"]
    assert trace.token_request.tolist() == [1, 1, 0, 0, 1]  # decode pass: "a" before "b"
    assert trace.token_position.tolist() == [0, 1, 0, 1, 2]
    assert trace.experts[3].tolist() == [[3, 1], [1, 2]]
    assert trace.experts[4].tolist() == [[3, 2], [1, 0]]


def test_without_model_shape_comes_from_the_file(tmp_path):
    rows = rows_for(0, 0, [[5, 1], [2, 3], [0, 1]], scores=False)
    trace = import_jsonl(write(tmp_path, rows), None)
    assert (trace.n_layers, trace.top_k, trace.n_experts) == (3, 2, 6)


def test_predicted_field_is_imported(tmp_path):
    rows = rows_for(0, 0, [[0, 1], [2, 3]], scores=False)
    rows[0]["predicted"] = [0, 2]
    rows[1]["predicted"] = [3, 1]
    trace = import_jsonl(write(tmp_path, rows), TINY)
    assert trace.predicted is not None and trace.predicted[0].tolist() == [[0, 2], [3, 1]]


def test_import_save_load_round_trip(tmp_path):
    rows = []
    for tok in range(4):
        rows += rows_for(tok % 2, tok // 2, [[tok % 4, (tok + 1) % 4], [(tok + 2) % 4, (tok + 3) % 4]])
    trace = import_jsonl(write(tmp_path, rows), TINY)
    trace.save(tmp_path / "t.npz")
    back = RoutingTrace.load(tmp_path / "t.npz")
    assert back.fingerprint() == trace.fingerprint()
    assert np.array_equal(back.experts, trace.experts) and np.array_equal(back.scores, trace.scores)
    assert back.meta == trace.meta and back.model == "tiny" and back.n_experts == 4


# --- the real shared captures ----------------------------------------------------------------------
@pytest.mark.skipif(not SHARED_TRACES.is_dir(), reason="shared data not beside the repo")
@pytest.mark.parametrize("name", ["mixtral8x7b_humaneval.jsonl", "mixtral8x7b_gsm8k.jsonl"])
def test_real_mixtral_capture(name):
    path = SHARED_TRACES / name
    # independent count: tokens with rows for all 32 layers; rows of each complete token
    layers: dict[tuple[int, int], dict[int, list[int]]] = defaultdict(dict)
    for line in path.read_text().splitlines():
        row = json.loads(line)
        layers[(row["problem_id"], row["token_idx"])][row["layer"]] = row["experts"]
    complete = sorted(k for k, v in layers.items() if len(v) == 32)
    incomplete = [k for k, v in layers.items() if len(v) < 32]
    # the cut-off tokens are each request's last ones
    for req, tok in incomplete:
        assert all((req, later) not in complete for later in range(tok + 1, tok + 1000))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trace = import_jsonl(path, get_preset("mixtral-8x7b"))
    assert any(issubclass(w.category, EmuWarning) for w in caught) == bool(incomplete)
    assert trace.n_tokens == len(complete)
    assert trace.n_passes == len(complete)  # no pass field, decode: one pass per token
    assert trace.n_requests == len({r for r, _ in complete})
    assert (trace.n_layers, trace.top_k, trace.n_experts) == (32, 2, 8)
    assert sum(trace.meta["dropped_tail_tokens"].values()) == len(incomplete)
    # spot check placement: the i-th token in (request, token) order carries that token's experts
    for i in (0, len(complete) // 2, len(complete) - 1):
        req, tok = complete[i]
        assert trace.token_request[i] == req and trace.token_position[i] == tok
        assert trace.experts[i].tolist() == [layers[(req, tok)][layer] for layer in range(32)]
    assert np.allclose(trace.scores.astype(np.float32).sum(axis=2), 1.0, atol=2e-3)
    with pytest.raises(EmuError, match=r"lacks layers \[.*\]; expected rows for all 32"):
        import_jsonl(path, get_preset("mixtral-8x7b"), strict=True)


# --- bad input: each names file:line and key -------------------------------------------------------
GOOD = {"request": 0, "token": 0, "layer": 0, "experts": [0, 1]}


def bad_case(tmp_path, rows, model=TINY, **kw) -> EmuError:
    path = write(tmp_path, rows, "bad.jsonl")
    with pytest.raises(EmuError) as info:
        import_jsonl(path, model, **kw)
    return info.value


@pytest.mark.parametrize(("row", "key", "text"), [
    ({**GOOD, "experts": [0]}, "experts", "expected a list of 2 ints (model tiny routes top-2), got 1"),
    ({**GOOD, "experts": [0, "1"]}, "experts", "expected a list of 2 ints"),
    ({**GOOD, "experts": 3}, "experts", "expected a list of 2 ints"),
    ({**GOOD, "experts": [0, 4]}, "experts", "expert id 4 out of range: model tiny has 4 experts"),
    ({**GOOD, "experts": [-1, 2]}, "experts", "expert id -1 out of range"),
    ({**GOOD, "experts": [1, 1]}, "experts", "expected 2 distinct expert ids"),
    ({**GOOD, "layer": 2}, "layer", "layer 2 out of range: model tiny has 2 MoE layers"),
    ({**GOOD, "layer": "0"}, "layer", "expected a non-negative int"),
    ({k: v for k, v in GOOD.items() if k != "layer"}, "layer", "expected a non-negative int"),
    ({k: v for k, v in GOOD.items() if k != "experts"}, "experts", "missing"),
    ({k: v for k, v in GOOD.items() if k != "request"}, "request",
     "missing (expected 'request' or 'problem_id')"),
    ({k: v for k, v in GOOD.items() if k != "token"}, "token", "missing (expected 'token' or 'token_idx')"),
    ({**GOOD, "token": -1}, "token", "expected a non-negative int"),
    ({**GOOD, "request": 1.5}, "request", "expected an int or a string id"),
    ({**GOOD, "scores": [0.5]}, "scores", "expected a list of 2 finite numbers"),
    ({"problem_id": 0, "token_idx": 0, "layer": 0, "experts": [0, 1], "gating_probs": [0.5, float("nan")]},
     "gating_probs", "expected a list of 2 finite numbers"),
    ({**GOOD, "phase": "warmup"}, "phase", "expected 'prefill' or 'decode'"),
    ({**GOOD, "pass": -2}, "pass", "expected a non-negative int"),
    ({**GOOD, "predicted": [0, 9]}, "predicted", "expert id 9 out of range"),
])
def test_bad_row_names_file_line_and_key(tmp_path, row, key, text):
    valid = {"scores": [0.6, 0.4], "gating_probs": [0.6, 0.4], "pass": 0, "predicted": [0, 1]}
    extra = {k: v for k, v in valid.items() if k in row}  # earlier rows carry the same optional keys
    other = {**GOOD, "layer": 1, "experts": [2, 3], **extra}
    err = bad_case(tmp_path, [other, {**GOOD, "token": 1, "layer": 1, **extra}, row])
    assert err.file is not None and err.file.endswith("bad.jsonl:3")
    assert err.key == key
    assert text in str(err)
    assert str(err).startswith(f"{err.file}: {key}: ")


def test_not_json_and_not_object(tmp_path):
    err = bad_case(tmp_path, [json.dumps(GOOD), "{oops"])
    assert err.file.endswith("bad.jsonl:2") and "not valid JSON" in str(err)
    err = bad_case(tmp_path, [json.dumps(GOOD), "[1, 2]"])
    assert err.file.endswith("bad.jsonl:2") and "expected a JSON object" in str(err)


def test_top_k_inconsistent_without_model(tmp_path):
    err = bad_case(tmp_path, [GOOD, {**GOOD, "layer": 1, "experts": [0, 1, 2]}], model=None)
    assert err.file.endswith(":2") and err.key == "experts"
    assert "top-2 as on line 1" in str(err)


def test_scores_on_some_rows_only(tmp_path):
    err = bad_case(tmp_path, [{**GOOD, "scores": [0.6, 0.4]}, {**GOOD, "layer": 1}])
    assert err.file.endswith(":2") and err.key == "scores" and "missing" in str(err)
    err = bad_case(tmp_path, [GOOD, {**GOOD, "layer": 1, "pass": 0}])
    assert err.file.endswith(":2") and err.key == "pass" and "unexpected" in str(err)


def test_missing_layer_in_the_middle_of_a_request(tmp_path):
    rows = [GOOD, {**GOOD, "token": 1, "layer": 0}, {**GOOD, "token": 1, "layer": 1},
            {**GOOD, "token": 2, "layer": 0}, {**GOOD, "token": 2, "layer": 1}]
    err = bad_case(tmp_path, rows)
    assert err.file.endswith("bad.jsonl:1") and err.key == "layer"
    assert "request 0 token 0 lacks layers [1] and a later token of the request is complete" in str(err)


def test_cut_off_tail_is_dropped_or_refused_when_strict(tmp_path):
    rows = [GOOD, {**GOOD, "layer": 1}, {**GOOD, "token": 1, "layer": 1}]
    path = write(tmp_path, rows)
    with pytest.warns(EmuWarning, match="dropped 1 trailing token"):
        trace = import_jsonl(path, TINY)
    assert trace.n_tokens == 1 and trace.meta["dropped_tail_tokens"] == {"0": 1}
    err = bad_case(tmp_path, rows, strict=True)
    assert err.file.endswith(":3") and "request 0 token 1 lacks layers [0]" in str(err)


def test_duplicate_row(tmp_path):
    err = bad_case(tmp_path, [GOOD, {**GOOD, "layer": 1}, {**GOOD, "experts": [2, 3]}])
    assert err.file.endswith(":3") and err.key == "layer" and "first at line 1" in str(err)


def test_phase_differs_within_a_token(tmp_path):
    err = bad_case(tmp_path, [{**GOOD, "phase": "prefill"}, {**GOOD, "layer": 1, "phase": "decode"}])
    assert err.file.endswith(":2") and err.key == "phase"


def test_pass_mixing_phases_and_decode_pass_with_two_tokens_of_a_request(tmp_path):
    rows = [*rows_for(0, 0, [[0, 1], [2, 3]], phase="prefill", pas=0, scores=False),
            *rows_for(1, 0, [[0, 1], [2, 3]], phase="decode", pas=0, scores=False)]
    err = bad_case(tmp_path, rows)
    assert err.key == "phase" and "pass 0 mixes prefill and decode" in str(err) and err.file.endswith(":3")
    rows = [*rows_for(0, 0, [[0, 1], [2, 3]], pas=4, scores=False),
            *rows_for(0, 1, [[0, 1], [2, 3]], pas=4, scores=False)]
    err = bad_case(tmp_path, rows)
    assert err.key == "pass" and "decode pass 4 has two tokens of request 0" in str(err)
    assert err.file.endswith(":3")


def test_prefill_after_decode_in_a_request(tmp_path):
    rows = [*rows_for(0, 0, [[0, 1], [2, 3]], phase="decode", scores=False),
            *rows_for(0, 1, [[0, 1], [2, 3]], phase="prefill", scores=False)]
    err = bad_case(tmp_path, rows)
    assert err.key == "phase" and "prefill token 1 after a decode token" in str(err)
    assert err.file.endswith(":3")


def test_empty_and_missing_file(tmp_path):
    err = bad_case(tmp_path, [])
    assert "no rows" in str(err)
    with pytest.raises(EmuError, match="trace file not found"):
        import_jsonl(tmp_path / "nope.jsonl", TINY)


def test_100k_rows_import_quickly(tmp_path):
    import time

    rng = np.random.default_rng(0)
    path = tmp_path / "big.jsonl"
    lines = []
    n_tok, n_layers = 100_000 // 16, 16
    ex = rng.integers(0, 8, size=(n_tok, n_layers))
    for t in range(n_tok):
        for layer in range(n_layers):
            e = int(ex[t, layer])
            lines.append(json.dumps({"request": t // 500, "token": t % 500, "layer": layer,
                                     "experts": [e, (e + 1) % 8], "scores": [0.6, 0.4]}))
    path.write_text("\n".join(lines) + "\n")
    model = ModelSpec(name="m", n_moe_layers=n_layers, n_experts=8, top_k=2, hidden=8, expert_intermediate=8)
    start = time.perf_counter()
    trace = import_jsonl(path, model)
    elapsed = time.perf_counter() - start
    assert trace.n_tokens == n_tok and trace.n_requests == -(-n_tok // 500)
    assert trace.experts[:, :, 0].tolist() == ex.tolist()
    assert elapsed < 5.0, f"100k rows took {elapsed:.2f} s"


def test_mixed_int_and_string_request_ids(tmp_path):
    err = bad_case(tmp_path, [GOOD, {**GOOD, "layer": 1}, {**GOOD, "request": "x"},
                              {**GOOD, "request": "x", "layer": 1}])
    assert err.file.endswith(":3") and err.key == "request" and "mixes int and string" in str(err)


def test_without_model_ids_are_bounded(tmp_path):
    err = bad_case(tmp_path, [GOOD, {**GOOD, "layer": 1, "experts": [0, 40000]}], model=None)
    assert err.file.endswith(":2") and err.key == "experts" and "expert id 40000 out of range" in str(err)
    err = bad_case(tmp_path, [GOOD, {**GOOD, "layer": 10**6}], model=None)
    assert err.file.endswith(":2") and err.key == "layer" and "expected < 4096" in str(err)
    err = bad_case(tmp_path, [GOOD, {**GOOD, "layer": 1, "experts": [0, 10**40]}], model=None)
    assert err.file.endswith(":2") and err.key == "experts"


def test_many_missing_layers_are_listed_briefly(tmp_path):
    rows = [GOOD, {**GOOD, "layer": 63}, {**GOOD, "token": 1, "layer": 0}]
    rows += [{**GOOD, "token": 1, "layer": layer} for layer in range(1, 64)]
    err = bad_case(tmp_path, rows, model=None)
    assert "lacks layers [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12] and 50 more" in str(err)
