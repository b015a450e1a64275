"""`emu run --timeline`: the Chrome trace loads, and its events are the run's own.

Over the whole trace the recorded durations must add up to the result's busy times (copy engines,
GPU, CPU) and stall time, each track's spans must not overlap (one copy per engine, one job on the
GPU, and the GPU never busy while it stalls), and the counts must match the counters. A window keeps
exactly the events of its passes.
"""

from __future__ import annotations

import itertools
import json
import warnings
from pathlib import Path
from typing import Any

import pytest

from emu.cli import main
from emu.engines.des.engine import run_des
from emu.engines.des.timeline import DEFAULT_PASSES, TimelineRecorder, parse_pass_window
from emu.engines.setup import PolicyChoice, StackChoice, make_inputs
from emu.errors import EmuError, EmuWarning
from emu.metrics import build_result
from emu.models import ModelSpec
from emu.policies.registry import get_policy
from emu.profile import profile_from_dict
from emu.trace.synthetic import SyntheticParams, generate

from .conftest import hand_profile, make_trace, tiny_model

RTOL = 1e-9
ROOT = Path(__file__).resolve().parents[1]

MODEL = ModelSpec(name="tl", n_moe_layers=3, n_experts=8, top_k=2, hidden=4, expert_intermediate=2)


def _profile(engines: int) -> Any:
    return profile_from_dict({
        "name": "tl", "copy": {"h2d_engines": engines, "latency_s": 1e-5, "bw_pinned_Bps": 2.5e4,
                               "bw_pageable_Bps": 1e4},
        "compute": {"expert_launch_s": 1e-4, "hbm_Bps": 1e12, "flops_per_s": 1e15, "dense_layer_s": 2e-4,
                    "cpu_flops_per_s": 2e4},
        "models": {"tl": {"expert": {"bf16": {"tokens": [1, 4, 16], "seconds": [1e-4, 2e-4, 6e-4]}},
                          "dense": {"tokens": [1, 64], "context": [1, 4096],
                                    "seconds": [[2e-4, 3e-4], [8e-4, 1.2e-3]]},
                          "pass_overhead_s": 3e-5, "layer_overhead_s": 1e-6}},
    }, file="tl.toml")


def _choice(kind: str, name: str, **params: float) -> PolicyChoice:
    return PolicyChoice(name, get_policy(kind, name).resolve_params(params, kind, None))


# name: (stack, copy engines, cache slots)
STACKS = {
    "oracle-prefetch-2-engines": (StackChoice(prefetch=_choice("prefetch", "oracle")), 2, 5),
    "cpu-misses": (StackChoice(miss=_choice("miss", "cpu")), 1, 5),
    "substitute-next-layer": (StackChoice(prefetch=_choice("prefetch", "next-layer"),
                                          miss=_choice("miss", "substitute", tolerance=0.5)), 1, 12),
    "drop-4-engines": (StackChoice(miss=_choice("miss", "drop")), 4, 5),
}


def _run(stack: StackChoice, engines: int, slots: int,
         passes: tuple[int, int | None] | None) -> tuple[dict[str, Any], Any]:
    trace = generate(MODEL, SyntheticParams(prompt_len=6, output_len=8, batch_size=2, reuse_prob=0.3, seed=3,
                                            with_scores=True), 60)
    inputs = make_inputs(MODEL, _profile(engines), trace, slots * MODEL.expert_bytes(), stack, seed=1)
    recorder = TimelineRecorder(passes) if passes is not None else None
    cs, end, timings = run_des(inputs, recorder)
    result = build_result(cs, end, trace, "des", timings).to_dict()
    result["n_passes"] = trace.n_passes
    return result, recorder


def _spans(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return [e for e in doc["traceEvents"] if e["ph"] == "X"]


def _track_ids(doc: dict[str, Any]) -> dict[str, int]:
    return {e["args"]["name"]: e["tid"] for e in doc["traceEvents"] if e["name"] == "thread_name"}


def _no_overlap(spans: list[dict[str, Any]]) -> None:
    spans = sorted(spans, key=lambda e: e["ts"])
    for a, b in itertools.pairwise(spans):
        assert b["ts"] >= a["ts"] + a["dur"] - 1e-9 * max(1.0, a["ts"]), (a, b)


@pytest.mark.parametrize("name", sorted(STACKS))
def test_whole_trace_events_add_up_to_the_runs_busy_times(tmp_path: Path, name: str) -> None:
    stack, engines, slots = STACKS[name]
    r, recorder = _run(stack, engines, slots, (0, None))
    doc = json.loads(recorder.write(tmp_path / "t.json").read_text())

    events = doc["traceEvents"]
    for e in events:
        assert {"name", "ph", "pid", "tid"} <= e.keys() and isinstance(e["name"], str)
        assert e["ph"] in {"M", "X", "i"}
        if e["ph"] == "M":
            assert e["name"] in {"process_name", "thread_name", "thread_sort_index"} and "args" in e
        else:
            assert isinstance(e["ts"], float) and e["ts"] >= 0.0
        if e["ph"] == "X":
            assert e["dur"] > 0.0 and isinstance(e["cat"], str)
    tracks = _track_ids(doc)
    assert {"GPU compute", "CPU", "stall", "passes"} <= tracks.keys()
    assert {f"copy engine {i}" for i in range(engines)} <= tracks.keys()
    assert f"copy engine {engines}" not in tracks

    spans = _spans(doc)
    by_track = {n: [e for e in spans if e["tid"] == tid] for n, tid in tracks.items()}
    copies = [e for n, es in by_track.items() if n.startswith("copy engine") for e in es]
    e2e = r["e2e_s"]
    assert r["copy_busy_frac"] < 1.0  # not clipped, so the product below is the booked copy time
    assert sum(e["dur"] for e in copies) / 1e6 == pytest.approx(r["copy_busy_frac"] * e2e * engines, rel=RTOL)
    gpu = by_track["GPU compute"]
    assert sum(e["dur"] for e in gpu) / 1e6 == pytest.approx(r["compute_busy_frac"] * e2e, rel=RTOL)
    stall = by_track["stall"]
    assert r["stall_s"] > 0.0
    assert sum(e["dur"] for e in stall) / 1e6 == pytest.approx(r["stall_s"], rel=RTOL)
    cpu = by_track["CPU"]
    assert sum(e["dur"] for e in cpu) / 1e6 == pytest.approx(r["cpu_busy_frac"] * e2e, rel=RTOL, abs=0.0)

    # counts: every copy, every GPU expert run, every CPU run, one pre-pass and one dense job per layer
    assert len(copies) == r["copies"]
    assert len(cpu) == r["cpu_runs"]
    experts = [e for e in gpu if e["cat"] == "expert"]
    assert len(experts) == r["accesses"] - r["dropped"] - r["cpu_runs"]
    assert sum(e["cat"] == "dense" for e in gpu) == r["n_passes"] * MODEL.n_moe_layers
    assert sum(e["cat"] == "pre" for e in gpu) == r["n_passes"]
    assert sum("substitute" in e["args"] for e in experts) == r["substituted"]
    # a stall with nothing left to copy waits for the CPU
    assert any(not e["args"]["waiting_for"] for e in stall) == (r["cpu_runs"] > 0)
    assert all(e["args"]["cpu_busy"] for e in stall if not e["args"]["waiting_for"])
    kinds = {e["args"]["kind"] for e in copies}
    assert kinds == ({"demand", "prefetch"} if stack.prefetch.name != "none" else {"demand"})
    assert all(e["cat"] == e["args"]["kind"] for e in copies)

    # one copy per engine at a time, one job on the GPU, and no GPU job inside a stall
    for n, es in by_track.items():
        if n.startswith("copy engine") or n == "CPU":
            _no_overlap(es)
    _no_overlap(gpu + stall)
    if engines > 1:
        assert all(by_track[f"copy engine {i}"] for i in range(engines))
    instants = [e for e in events if e["ph"] == "i"]
    assert len(instants) == 2 * r["n_passes"]
    assert max(e["ts"] for e in instants) == pytest.approx(e2e * 1e6, rel=RTOL)


def test_hand_case_timeline() -> None:
    # tests/test_engine_hand_cases.py::test_cold_decode_pass, event by event
    trace = make_trace([[[[0, 1], [2, 3]]]])
    recorder = TimelineRecorder((0, None))
    run_des(make_inputs(tiny_model(), hand_profile(), trace, 4 * 6, StackChoice()), recorder)
    got = sorted((e["tid"], e["name"], e["ts"] / 1e6, e["dur"] / 1e6) for e in _spans(recorder.chrome_trace()))
    gpu, stall, copy = 1, 2, 10
    want = sorted([
        (gpu, "dense L0", 0.0, 0.25), (copy, "copy L0 E0", 0.25, 1.0), (stall, "stall L0", 0.25, 1.0),
        (copy, "copy L0 E1", 1.25, 1.0), (gpu, "expert L0 E0", 1.25, 0.5), (stall, "stall L0", 1.75, 0.5),
        (gpu, "expert L0 E1", 2.25, 0.5), (gpu, "dense L1", 2.75, 0.25), (copy, "copy L1 E2", 3.0, 1.0),
        (stall, "stall L1", 3.0, 1.0), (copy, "copy L1 E3", 4.0, 1.0), (gpu, "expert L1 E2", 4.0, 0.5),
        (stall, "stall L1", 4.5, 0.5), (gpu, "expert L1 E3", 5.0, 0.5)])
    assert [g[:2] for g in got] == [w[:2] for w in want]
    for g, w in zip(got, want):
        assert g[2:] == pytest.approx(w[2:], abs=1e-12)
    stalls = [e["args"] for e in _spans(recorder.chrome_trace()) if e["tid"] == stall]
    assert [a["waiting_for"] for a in stalls] == [[0, 1], [1], [2, 3], [3]]
    assert not any(a["cpu_busy"] for a in stalls)


def test_window_keeps_exactly_its_passes() -> None:
    case = STACKS["oracle-prefetch-2-engines"]
    full_r, full = _run(*case, (0, None))
    part_r, part = _run(*case, (2, 5))
    plain_r, _ = _run(*case, None)
    for r in (full_r, part_r):  # recording changes nothing in the run
        assert {k: v for k, v in r.items() if k != "timings"} == {k: v for k, v in plain_r.items()
                                                                   if k != "timings"}
    doc = part.chrome_trace()
    assert doc["otherData"]["passes"] == [2, 5]
    spans = _spans(doc)
    assert spans and {e["args"]["pass"] for e in spans} == {2, 3, 4}
    assert _spans(doc) == [e for e in _spans(full.chrome_trace()) if 2 <= e["args"]["pass"] < 5]
    instants = [e for e in doc["traceEvents"] if e["ph"] == "i"]
    assert sorted(e["args"]["pass"] for e in instants) == [2, 2, 3, 3, 4, 4]
    # the default window is the first 8 passes
    assert full_r["n_passes"] > 8
    _r, default = _run(*case, DEFAULT_PASSES)
    assert {e["args"]["pass"] for e in _spans(default.chrome_trace())} == set(range(8))


def test_long_trace_warns(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("emu.engines.des.timeline.SLOW_PASSES", 20)
    with pytest.warns(EmuWarning, match="all 21 passes on the SimPy engine"):
        _run(*STACKS["cpu-misses"], DEFAULT_PASSES)
    monkeypatch.setattr("emu.engines.des.timeline.SLOW_PASSES", 21)
    with warnings.catch_warnings():
        warnings.simplefilter("error", EmuWarning)
        _run(*STACKS["cpu-misses"], DEFAULT_PASSES)


@pytest.mark.parametrize(("text", "want"), [("0:8", (0, 8)), ("3:", (3, None)), (":5", (0, 5)), (" 2 : 4", (2, 4))])
def test_parse_pass_window(text: str, want: tuple[int, int | None]) -> None:
    assert parse_pass_window(text) == want


@pytest.mark.parametrize("text", ["8", "a:b", "5:3", "4:4", "-1:3", ""])
def test_parse_pass_window_rejects(text: str) -> None:
    with pytest.raises(EmuError, match="--timeline-passes"):
        parse_pass_window(text)


SCENARIO = str(ROOT / "scenarios" / "olmoe-1b-7b_h100_5pct.toml")
SMALL = ["--set", "workload.synthetic.tokens=40", "--set", "workload.synthetic.prompt_len=8"]


def test_cli_writes_the_timeline(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "tl" / "run.json"
    code = main(["run", SCENARIO, *SMALL, "--engine", "auto", "--out", str(tmp_path), "--timeline", str(out),
                 "--timeline-passes", "1:4"])
    assert code == 0
    doc = json.loads(out.read_text())
    written = sorted(tmp_path.glob("olmoe-1b-7b_h100_5pct@*.json"))  # named with its overrides
    assert len(written) == 1
    record = json.loads(written[0].read_text())
    assert record["engine"] == "des"
    spans = _spans(doc)
    assert {e["args"]["pass"] for e in spans} == {1, 2, 3}
    assert "wrote" in capsys.readouterr().err


@pytest.mark.parametrize(("extra", "message"), [
    (["--timeline-passes", "0:2"], "needs --timeline"),
    (["--timeline", "X.json", "--engine", "fast"], "SimPy engine"),
    (["--timeline", "X.json", "--timeline-passes", "500:"], "the trace has"),
    (["--timeline", "X.json", "--timeline-passes", "3"], "expected A:B"),
])
def test_cli_timeline_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str],
                                message: str) -> None:
    args = [a.replace("X.json", str(tmp_path / "x.json")) for a in extra]
    assert main(["run", SCENARIO, *SMALL, "--out", str(tmp_path), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "x.json").exists()


def test_cli_timeline_is_of_one_scenario(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", SCENARIO, SCENARIO, *SMALL, "--timeline", str(tmp_path / "x.json")]) == 2
    assert "one run" in capsys.readouterr().err
