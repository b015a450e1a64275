"""Format importers: the two real public traces, round trips of vLLM / SGLang / Parquet files written here,
format detection and the `trace import` CLI (the sanity checks have their own file)."""

from __future__ import annotations

import csv
import json
import shutil
import warnings
from pathlib import Path
from types import SimpleNamespace as NS
from typing import Any

import numpy as np
import pytest

from emu.errors import EmuError, EmuWarning
from emu.models import ModelSpec, get_preset
from emu.trace import PHASE_DECODE, PHASE_PREFILL, RoutingTrace
from emu.trace.cli import main
from emu.trace.formats import detect_format, import_trace
from emu.trace.formats.onnx_genai import import_onnx_genai
from emu.trace.formats.parquet import import_parquet, write_parquet
from emu.trace.formats.route_csv import import_route_trace
from emu.trace.formats.sglang import import_sglang
from emu.trace.formats.vllm import import_vllm, save_vllm_npz
from emu.trace.synthetic import SyntheticParams, generate

PUBLIC = Path(__file__).resolve().parents[1] / "scenarios" / "traces" / "public"
QWEN_CSV = PUBLIC / "qwen3-30b-a3b_k6_bigmoeonedge.route.csv"
GRANITE_JSON = PUBLIC / "granite-3.0-1b-a400m_onnx-genai.json"
SMALL = ModelSpec(name="small", n_moe_layers=3, n_experts=16, top_k=2, hidden=8, expert_intermediate=8)


def quiet(fn: Any, *args: Any, **kw: Any) -> tuple[Any, list[warnings.WarningMessage]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = fn(*args, **kw)
    return out, caught


# --- writers for small files in each format (also used by test_trace_import_checks) --------------------
def write_route_csv(path: Path, rows: list[tuple], *, n_layer: int = 2, n_expert: int = 8, n_used: int = 2,
                    layer_lines: bool = True) -> Path:
    """rows: (turn, phase, step, layer, slot, expert, weight[, residency, expert_bytes])."""
    lines = ["# route_trace v1", f"# model=/x/tiny.gguf arch=tiny n_layer={n_layer} n_expert={n_expert} "
                                 f"n_expert_used={n_used}"]
    if layer_lines:
        lines += [f"# layer={i} expert_bytes={1000 + i} dense_bytes={50 + i}" for i in range(n_layer)]
    lines.append("turn,phase,step,layer,slot,expert,weight,residency,expert_bytes")
    for r in rows:
        r = (*r, 0, 1000) if len(r) == 7 else tuple(r)
        lines.append(",".join(str(v) for v in r))
    path.write_text("\n".join(lines) + "\n")
    return path


def csv_rows(routing: dict[tuple[int, int, int], list[tuple[int, float]]]) -> list[tuple]:
    """{(turn, phase, step): [[(expert, weight), ...] per layer]} -> rows in step, layer, slot order."""
    rows = []
    for (turn, phase, step), layers in routing.items():
        for layer, picks in enumerate(layers):
            for slot, (e, w) in enumerate(picks):
                rows.append((turn, phase, step, layer, slot, e, w))
    return rows


def write_onnx_json(path: Path, prompts: dict[str, tuple[list, list]], *, n_layers: int = 2, n_experts: int = 8,
                    top_k: int = 2) -> Path:
    doc = {"model": "tiny", "num_layers": n_layers, "num_experts": n_experts, "top_k": top_k,
           "prompts": {n: {"prompt_len": len(pre), "prefill": pre, "decode": dec} for n, (pre, dec) in prompts.items()}}
    path.write_text(json.dumps(doc))
    return path


def vllm_output(rid: str, routed: np.ndarray, prompt_len: int, generated: int) -> NS:
    return NS(request_id=rid, prompt_token_ids=list(range(prompt_len)),
              outputs=[NS(routed_experts=routed, token_ids=list(range(generated)))])


def sglang_record(pass_id: int, mode: int, positions: list[int], topk: np.ndarray,
                  extend_seq_lens: list[int] | None = None) -> dict[str, Any]:
    """topk: [layers, tokens, cols] ids; padded to SGLang's 8 columns with -1."""
    import torch

    layers, n_tok, cols = topk.shape
    full = -np.ones((layers, n_tok, 8), dtype=np.int32)
    full[:, :, :cols] = topk
    return {"forward_pass_id": pass_id, "rank": 0, "gatherer_key": "primary", "input_ids": [7] * n_tok,
            "positions": positions, "extend_seq_lens": extend_seq_lens, "forward_mode": mode,
            "topk_ids_of_layer": torch.tensor(full), "misc_objects": [],
            "global_physical_count": torch.zeros((layers, 8), dtype=torch.int32)}


def save_sglang(path: Path, records: list[dict[str, Any]], p2l: np.ndarray | None = None) -> Path:
    import torch

    dump: dict[str, Any] = {"records": records}
    if p2l is not None:
        dump["last_physical_to_logical_map"] = torch.tensor(p2l)
    torch.save(dump, path)
    return path


def parquet_table(path: Path, columns: dict[str, list]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table(columns), path)
    return path


# --- the real public traces ----------------------------------------------------------------------------
def test_public_files_are_in_the_repo_with_their_provenance():
    readme = (PUBLIC / "README.md").read_text()
    for f in (QWEN_CSV, GRANITE_JSON):
        assert f.is_file() and f.name in readme
    assert "Apache-2.0" in readme and "MIT" in readme
    assert "Helldez/BigMoeOnEdge @ 2d4f2b1" in readme and "justinchuby/onnx-genai @ 44604f3" in readme


def test_real_route_trace_csv_qwen3():
    # independent reading with the csv module
    header: dict[str, str] = {}
    layer_bytes: dict[int, tuple[int, int]] = {}
    rows = []
    with open(QWEN_CSV) as fh:
        for line in fh:
            if line.startswith("# layer="):
                kv = dict(p.split("=") for p in line[2:].split())
                layer_bytes[int(kv["layer"])] = (int(kv["expert_bytes"]), int(kv["dense_bytes"]))
            elif line.startswith("# model="):
                header = dict(p.split("=", 1) for p in line[2:].split())
            elif not line.startswith("#"):
                break
        rows = [r for r in csv.DictReader([line, *fh])]
    assert len(rows) == 44766
    cells: dict[tuple[int, int], dict[int, list[tuple[int, int, float]]]] = {}
    for r in rows:
        cells.setdefault((int(r["phase"]), int(r["step"])), {}).setdefault(int(r["layer"]), []).append(
            (int(r["slot"]), int(r["expert"]), float(r["weight"])))
    prefill_steps = sorted(s for p, s in cells if p == 0)
    decode_steps = sorted(s for p, s in cells if p == 1)
    assert (len(prefill_steps), len(decode_steps)) == (28, 128)

    trace, caught = quiet(import_route_trace, QWEN_CSV, get_preset("qwen3-30b-a3b"))
    assert (trace.n_tokens, trace.n_passes, trace.n_requests) == (156, 129, 1)
    assert (trace.n_layers, trace.top_k, trace.n_experts) == (48, 6, 128)
    assert trace.pass_phase.tolist() == [PHASE_PREFILL] + [PHASE_DECODE] * 128
    assert trace.pass_offsets.tolist() == [0, *range(28, 157)]
    assert trace.token_position.tolist() == prefill_steps + decode_steps == list(range(156))
    assert (trace.token_request == 0).all() and trace.model == "qwen3-30b-a3b"
    # placement: slot order kept, weights become float16 scores
    for t, (phase, step) in ((0, (0, 0)), (27, (0, 27)), (100, (1, 100)), (155, (1, 155))):
        for layer in (0, 21, 47) if t != 0 else (0, 21):  # token 0 has no layer-47 rows (see below)
            picks = sorted(cells[(phase, step)][layer])
            assert trace.experts[t, layer].tolist() == [e for _, e, _ in picks]
            assert np.allclose(trace.scores[t, layer].astype(float), [w for _, _, w in picks], atol=1e-3)
    assert trace.scores is not None and trace.predicted is None
    # llama.cpp routed the last layer for the prefill's last token only: 27 entries filled from it
    assert sorted(cells[(0, 0)]) == list(range(47)) and sorted(cells[(0, 27)]) == list(range(48))
    assert trace.meta["filled_prefill_layers"] == {"47": 27}
    assert (trace.experts[:27, 47] == trace.experts[27, 47]).all()
    # header meta: the file's k, the header's n_expert_used, per-layer bytes as lists
    meta = trace.meta
    assert meta["source"] == "route_trace" and meta["arch"] == "qwen3moe" and meta["top_k"] == 6
    assert meta["n_expert_used"] == int(header["n_expert_used"]) == 6
    assert meta["capture_model"].endswith("Qwen3-30B-A3B-Q4_K_M.gguf")
    assert meta["expert_bytes"] == [layer_bytes[i][0] for i in range(48)]
    assert meta["dense_bytes"] == [layer_bytes[i][1] for i in range(48)]
    assert meta["expert_bytes"][6] == 2654208 and meta["expert_bytes"][0] == 3059712
    assert meta["capture_residency"] == {"rows": 44766, "resident": sum(r["residency"] == "1" for r in rows)}
    # the model's native top-8: a warning, and the fact kept
    assert meta["top_k_mismatch"] == {"trace": 6, "model": 8}
    texts = [str(w.message) for w in caught if issubclass(w.category, EmuWarning)]
    assert any("top-6 but model qwen3-30b-a3b routes top-8" in t for t in texts)
    assert any("filled from that token (layer 47: 27)" in t for t in texts)


def test_real_route_trace_without_model_has_no_top_k_warning():
    trace, caught = quiet(import_route_trace, QWEN_CSV)
    assert trace.model == "" and "top_k_mismatch" not in trace.meta and trace.n_experts == 128
    assert not any("routes top" in str(w.message) for w in caught)


def test_real_onnx_genai_granite():
    doc = json.loads(GRANITE_JSON.read_text())
    names = list(doc["prompts"])
    trace, caught = quiet(import_onnx_genai, GRANITE_JSON)
    assert not caught
    plens = [doc["prompts"][n]["prompt_len"] for n in names]
    assert names == ["english_prose", "code", "math"] and plens == [39, 44, 29]
    assert (trace.n_tokens, trace.n_requests) == (sum(plens) + 3 * 64, 3) == (304, 3)
    assert trace.n_passes == 3 + 3 * 64
    assert (trace.n_layers, trace.top_k, trace.n_experts) == (24, 8, 32)
    assert trace.scores is None and trace.predicted is None
    assert trace.meta["request_ids"] == names and trace.meta["source"] == "onnx-genai"
    # per prompt: one prefill pass, then 64 one-token decode passes; positions continue after the prompt
    start = 0
    p = 0
    for r, n in enumerate(names):
        plen = plens[r]
        assert trace.pass_phase[p] == PHASE_PREFILL and trace.pass_offsets[p + 1] - trace.pass_offsets[p] == plen
        assert (trace.pass_phase[p + 1:p + 65] == PHASE_DECODE).all()
        assert (np.diff(trace.pass_offsets[p + 1:p + 66]) == 1).all()
        assert trace.token_position[start:start + plen + 64].tolist() == list(range(plen + 64))
        assert (trace.token_request[start:start + plen + 64] == r).all()
        assert trace.experts[start + 5].tolist() == doc["prompts"][n]["prefill"][5]
        assert trace.experts[start + plen + 63].tolist() == doc["prompts"][n]["decode"][63]
        start += plen + 64
        p += 65


def test_real_traces_round_trip_through_npz(tmp_path):
    for src in (QWEN_CSV, GRANITE_JSON):
        trace, _ = quiet(import_trace, src)
        trace.save(tmp_path / "t.npz")
        back = RoutingTrace.load(tmp_path / "t.npz")
        assert back.fingerprint() == trace.fingerprint() and back.meta == trace.meta


# --- Parquet ------------------------------------------------------------------------------------------
def test_parquet_round_trip_with_scores_predictions_and_batched_passes(tmp_path):
    src = generate(SMALL, SyntheticParams(prompt_len=5, output_len=4, n_requests=3, batch_size=2, with_scores=True,
                                          predictor_accuracy=0.5, seed=3))
    assert (np.diff(src.pass_offsets) == 2).any()  # a decode pass with two requests
    write_parquet(src, tmp_path / "t.parquet")
    back = import_parquet(tmp_path / "t.parquet", SMALL)
    assert back.fingerprint() == src.fingerprint()
    for key in ("experts", "scores", "predicted", "pass_offsets", "pass_phase", "token_request", "token_position"):
        assert np.array_equal(getattr(back, key), getattr(src, key)), key
    assert back.meta == {"source": "parquet", "file": "t.parquet"} and back.model == "small"


def test_parquet_without_pass_column_string_requests_and_shuffled_rows(tmp_path):
    # request "b": prompt of 2 then 1 decode token; request "a": prompt of 1 then 2 decode tokens; 2 layers
    toks = [("b", 0, "prefill"), ("b", 1, "prefill"), ("b", 2, "decode"),
            ("a", 0, "prefill"), ("a", 1, "decode"), ("a", 2, "decode")]
    rows = []
    for i, (r, pos, ph) in enumerate(toks):
        for layer in range(2):
            rows.append((r, pos, ph, layer, [i % 4, 4 + layer], [0.75, 0.25]))
    rows = rows[::-1]
    path = parquet_table(tmp_path / "t.parquet", {
        "request": [r[0] for r in rows], "position": [r[1] for r in rows], "phase": [r[2] for r in rows],
        "layer": [r[3] for r in rows], "experts": [r[4] for r in rows], "scores": [r[5] for r in rows]})
    trace = import_parquet(path)
    assert trace.meta["request_ids"] == ["a", "b"]
    assert trace.token_request.tolist() == [0, 0, 0, 1, 1, 1]
    assert trace.token_position.tolist() == [0, 1, 2, 0, 1, 2]
    assert trace.pass_offsets.tolist() == [0, 1, 2, 3, 5, 6]  # a: P D D, b: P(2) D
    assert trace.pass_phase.tolist() == [0, 1, 1, 0, 1]
    assert trace.experts[4].tolist() == [[1, 4], [1, 5]]  # ("b", 1) was token 1 of the list
    assert (trace.n_layers, trace.top_k, trace.n_experts) == (2, 2, 6)
    assert np.allclose(trace.scores.astype(float), [0.75, 0.25])


def test_parquet_bad_input_names_row_and_column(tmp_path):
    base = {"request": [0, 0], "position": [0, 0], "phase": [0, 0], "layer": [0, 1], "experts": [[0, 1], [2, 3]]}
    path = parquet_table(tmp_path / "a.parquet", {**base, "phase": ["prefill", "warmup"]})
    with pytest.raises(EmuError, match="expected 'prefill' or 'decode', got 'warmup'") as info:
        import_parquet(path)
    assert info.value.file.endswith("a.parquet:row 1") and info.value.key == "phase"
    path = parquet_table(tmp_path / "b.parquet", {**base, "experts": [[0, 1], [2]]})
    with pytest.raises(EmuError, match="expected a list of 2 values, got 1") as info:
        import_parquet(path)
    assert info.value.file.endswith("b.parquet:row 1") and info.value.key == "experts"
    path = parquet_table(tmp_path / "c.parquet", {k: v for k, v in base.items() if k != "phase"})
    with pytest.raises(EmuError, match=r"missing columns \['phase'\]"):
        import_parquet(path)
    path = parquet_table(tmp_path / "d.parquet", {**base, "layer": [0, 0]})
    with pytest.raises(EmuError, match=r"duplicate row for request 0 position 0 layer 0 \(first at .*:row 0\)"):
        import_parquet(path)


def test_parquet_without_pyarrow_is_one_clear_error(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_pyarrow(name: str, *args: Any, **kw: Any) -> Any:
        if name.startswith("pyarrow"):
            raise ImportError("no pyarrow")
        return real_import(name, *args, **kw)

    path = tmp_path / "x.parquet"
    path.write_bytes(b"PAR1....PAR1")
    monkeypatch.setattr(builtins, "__import__", no_pyarrow)
    with pytest.raises(EmuError, match=r"reading Parquet needs pyarrow \(pip install pyarrow"):
        import_parquet(path)


# --- vLLM ---------------------------------------------------------------------------------------------
def vllm_arrays(rng: np.random.Generator, rows: int, layers: int = 4, k: int = 2, dense: tuple[int, ...] = (0,),
                n_exp: int = 8) -> np.ndarray:
    arr = np.zeros((rows, layers, k), dtype=np.int32)  # vLLM's buffer is zero-filled; dense layers stay 0
    for t in range(rows):
        for layer in range(layers):
            if layer not in dense:
                arr[t, layer] = rng.choice(n_exp, k, replace=False)
    return arr


def test_vllm_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    a = vllm_arrays(rng, 4 + 3 - 1)  # prompt 4, 3 generated: the last one never ran
    b = vllm_arrays(rng, 2 + 5 - 1)
    path = tmp_path / "routes.npz"
    save_vllm_npz(path, [vllm_output("req-a", a, 4, 3), vllm_output("req-b", b, 2, 5)], num_experts=8)
    assert detect_format(path) == "vllm"
    trace = import_vllm(path)
    assert trace.meta["request_ids"] == ["req-a", "req-b"] and trace.meta["dropped_layers"] == [0]
    assert trace.meta["prompt_len"] == {"req-a": 4, "req-b": 2}
    assert (trace.n_tokens, trace.n_layers, trace.top_k, trace.n_experts) == (12, 3, 2, 8)
    assert trace.token_request.tolist() == [0] * 6 + [1] * 6
    assert trace.token_position.tolist() == list(range(6)) * 2
    # a: prefill(4) D D; b: prefill(2) D D D D
    assert trace.pass_offsets.tolist() == [0, 4, 5, 6, 8, 9, 10, 11, 12]
    assert trace.pass_phase.tolist() == [0, 1, 1, 0, 1, 1, 1, 1]
    assert np.array_equal(trace.experts[:6], a[:, 1:]) and np.array_equal(trace.experts[6:], b[:, 1:])
    assert trace.scores is None


def test_vllm_prompt_token_ids_and_bad_containers(tmp_path):
    rng = np.random.default_rng(1)
    arr = vllm_arrays(rng, 5, dense=())
    np.savez(tmp_path / "ok.npz", **{"r/routed_experts": arr, "r/prompt_token_ids": np.arange(3)})
    m4 = ModelSpec(name="m4", n_moe_layers=4, n_experts=8, top_k=2, hidden=8, expert_intermediate=8)
    trace = import_vllm(tmp_path / "ok.npz", m4)
    assert trace.pass_phase.tolist() == [0, 1, 1] and trace.n_layers == 4 and "dropped_layers" not in trace.meta
    np.savez(tmp_path / "nolen.npz", **{"r/routed_experts": arr})
    with pytest.raises(EmuError, match="expected R/prompt_len or R/prompt_token_ids") as info:
        import_vllm(tmp_path / "nolen.npz")
    assert info.value.key == "r/prompt_len"
    np.savez(tmp_path / "count.npz", **{"r/routed_experts": arr, "r/prompt_len": np.array(3),
                                       "r/token_ids": np.arange(4)})
    with pytest.raises(EmuError, match=r"expected prompt_len \+ generated - 1 = 6 rows .* got 5"):
        import_vllm(tmp_path / "count.npz")
    np.savez(tmp_path / "odd.npz", **{"r/routed_experts": arr, "r/prompt_len": np.array(3), "extra": arr})
    with pytest.raises(EmuError, match="unexpected array") as info:
        import_vllm(tmp_path / "odd.npz")
    assert info.value.key == "extra"


# --- SGLang -------------------------------------------------------------------------------------------
def test_sglang_per_token_dump_requests_phases_and_logical_ids(tmp_path):
    pytest.importorskip("torch")
    rng = np.random.default_rng(2)

    def topk(n_tok: int) -> np.ndarray:  # 3 layers, layer 1 dense (-1), top-2 of 6 physical experts
        x = -np.ones((3, n_tok, 2), dtype=np.int32)
        for t in range(n_tok):
            x[0, t] = rng.choice(6, 2, replace=False)
            x[2, t] = rng.choice(6, 2, replace=False)
        return x

    tk = [topk(5), topk(2), topk(4), topk(2)]
    records = [
        sglang_record(0, 1, [0, 1, 2, 0, 1], tk[0], [3, 2]),  # EXTEND: requests A (3 tokens), B (2)
        sglang_record(1, 2, [3, 2], tk[1]),  # DECODE: A@3, B@2
        sglang_record(2, 3, [0, 1, 2, 4], tk[2], [3, 1]),  # MIXED: new C (3 prefill) + A@4 decode
        sglang_record(3, 2, [5, 3], tk[3]),  # DECODE: A@5, B@3
    ]
    records[1], records[2] = records[2], records[1]  # the dump's order does not matter: forward_pass_id does
    # physical ids 0..5 -> logical: layer 0 identity, layer 2 reversed (a rebalanced placement)
    p2l = np.stack([np.arange(6), np.arange(6), np.arange(6)[::-1]])
    path = save_sglang(tmp_path / "expert_distribution_recorder_1_0.pt", records, p2l)
    assert detect_format(path) == "sglang"
    trace = import_sglang(path)
    assert trace.meta["request_attribution"] == "positions" and trace.meta["request_ids"] == ["0", "1", "2"]
    assert trace.meta["dropped_layers"] == [1] and trace.meta["mixed_passes_split"] == 1
    assert trace.meta["physical_to_logical"] == "last_physical_to_logical_map"
    assert (trace.n_layers, trace.top_k, trace.n_experts) == (2, 2, 6)
    # passes: P(A0-2,B0-1) D(A3,B2) P(C0-2) D(A4) D(A5,B3)
    assert trace.pass_offsets.tolist() == [0, 5, 7, 10, 11, 13]
    assert trace.pass_phase.tolist() == [0, 1, 0, 1, 1]
    assert trace.token_request.tolist() == [0, 0, 0, 1, 1, 0, 1, 2, 2, 2, 0, 0, 1]
    assert trace.token_position.tolist() == [0, 1, 2, 0, 1, 3, 2, 0, 1, 2, 4, 5, 3]
    # token A@4 is token 3 of the MIXED record; layer 2 maps physical p -> 5 - p
    assert trace.experts[10, 0].tolist() == tk[2][0, 3].tolist()
    assert trace.experts[10, 1].tolist() == (5 - tk[2][2, 3]).tolist()
    assert trace.scores is None


def test_sglang_refuses_counts_only_and_speculative_dumps(tmp_path):
    torch = pytest.importorskip("torch")
    torch.save({"rank": 0, "logical_count": torch.zeros((2, 4))}, tmp_path / "stat.pt")
    with pytest.raises(EmuError, match="'stat' mode dump"):
        import_sglang(tmp_path / "stat.pt")
    rec = sglang_record(0, 5, [0], -np.ones((2, 1, 2), dtype=np.int32))
    save_sglang(tmp_path / "spec.pt", [rec])
    with pytest.raises(EmuError, match=r"forward_mode 5 \(TARGET_VERIFY\) is not supported") as info:
        import_sglang(tmp_path / "spec.pt")
    assert info.value.key == "records[0].forward_mode"
    per_pass = {k: v for k, v in sglang_record(0, 1, [0], np.zeros((2, 1, 2), np.int32), [1]).items()
                if k != "topk_ids_of_layer"}
    save_sglang(tmp_path / "pp.pt", [per_pass])
    with pytest.raises(EmuError, match="record with --expert-distribution-recorder-mode per_token"):
        import_sglang(tmp_path / "pp.pt")


# --- detection and the CLI ----------------------------------------------------------------------------
def test_detection_by_content_and_extension(tmp_path):
    assert detect_format(QWEN_CSV) == "route-trace" and detect_format(GRANITE_JSON) == "onnx-genai"
    renamed = tmp_path / "capture.txt"
    shutil.copy(QWEN_CSV, renamed)
    assert detect_format(renamed) == "route-trace"  # content wins over the extension
    renamed = tmp_path / "trace.data"
    shutil.copy(GRANITE_JSON, renamed)
    assert detect_format(renamed) == "onnx-genai"
    jl = tmp_path / "rows.log"
    jl.write_text(json.dumps({"request": 0, "token": 0, "layer": 0, "experts": [0, 1]}) + "\n")
    assert detect_format(jl) == "jsonl"
    src = generate(SMALL, SyntheticParams(prompt_len=2, output_len=2, n_requests=1, seed=0))
    write_parquet(src, tmp_path / "p.bin")
    assert detect_format(tmp_path / "p.bin") == "parquet"
    src.save(tmp_path / "already.npz")
    with pytest.raises(EmuError, match="already a moe-emu trace"):
        detect_format(tmp_path / "already.npz")
    (tmp_path / "blob").write_bytes(bytes(range(256)) * 4)
    with pytest.raises(EmuError, match="cannot tell the trace format") as info:
        detect_format(tmp_path / "blob")
    assert info.value.key == "--format"
    with pytest.raises(EmuError, match="unknown trace format 'xml'"):
        import_trace(QWEN_CSV, fmt="xml")


def test_cli_detects_formats_and_keeps_jsonl(tmp_path, capsys):
    out = tmp_path / "q.npz"
    assert main(["trace", "import", str(QWEN_CSV), "--model", "qwen3-30b-a3b", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "156 tokens, 129 passes, 1 requests, 48 layers, top-6" in captured.out
    assert "warning:" in captured.err and "routes top-8" in captured.err
    trace = RoutingTrace.load(out)
    assert trace.meta["source"] == "route_trace" and trace.meta["top_k_mismatch"] == {"trace": 6, "model": 8}

    renamed = tmp_path / "granite.bin"
    shutil.copy(GRANITE_JSON, renamed)
    assert main(["trace", "import", str(renamed), "--format", "onnx-genai", "--out", str(tmp_path / "g.npz")]) == 0
    assert RoutingTrace.load(tmp_path / "g.npz").meta["request_ids"] == ["english_prose", "code", "math"]
    capsys.readouterr()

    jl = tmp_path / "t.jsonl"
    rows = [{"problem_id": 0, "token_idx": t, "layer": layer, "experts": [t % 8, 7 - t % 8],
             "gating_probs": [0.9, 0.1]} for t in range(3) for layer in range(32)]
    jl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["trace", "import", str(jl), "--model", "mixtral-8x7b", "--out", str(tmp_path / "j.npz")]) == 0
    assert RoutingTrace.load(tmp_path / "j.npz").meta["source"] == "jsonl"
    assert main(["trace", "import", str(QWEN_CSV), "--strict", "--out", str(tmp_path / "s.npz")]) == 2
    assert "--strict: --strict applies to JSONL input only" in capsys.readouterr().err


def test_cli_allow_degenerate(tmp_path, capsys):
    # every token of the prefill pass routes identically: a broadcast capture
    same = [[[1, 2], [3, 4]]] * 4
    path = write_onnx_json(tmp_path / "deg.json", {"p": (same, [[[0, 1], [2, 3]], [[4, 5], [6, 7]]])})
    out = tmp_path / "deg.npz"
    assert main(["trace", "import", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "degenerate capture: prefill pass 0 (4 tokens from request 'p' position 0)" in err
    assert "--allow-degenerate" in err and not out.exists()
    assert main(["trace", "import", str(path), "--out", str(out), "--allow-degenerate"]) == 0
    assert "warning:" in capsys.readouterr().err
    meta = RoutingTrace.load(out).meta
    assert meta["degenerate"]["ranges"] == 1 and meta["degenerate"]["first"][0]["kind"] == "pass"


def test_benchmark_file_generator_writes_an_importable_route_trace(tmp_path):
    from benchmarks.bench_trace_import import DECODE, N_LAYER, PROMPT, TOP_K, write_csv

    rows = write_csv(tmp_path / "b.route.csv", 1000)  # rounds up to one turn
    trace, _ = quiet(import_route_trace, tmp_path / "b.route.csv")
    assert rows == (PROMPT * (N_LAYER - 1) + 1 + DECODE * N_LAYER) * TOP_K
    assert (trace.n_tokens, trace.n_passes, trace.n_layers, trace.top_k) == (PROMPT + DECODE, 1 + DECODE, 48, 6)
    assert trace.meta["filled_prefill_layers"] == {str(N_LAYER - 1): PROMPT - 1}
