"""The live benchmarks' `--smoke` runs (a tiny model on the CPU): the scripts run end to end and print their
tables; they measure nothing here."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")


def test_profile_live_prefetch_smoke(capsys: pytest.CaptureFixture[str]) -> None:
    from experiments.profile_live_prefetch import main

    assert main(["--smoke", "--rounds", "1", "--gc-freeze"]) == 0
    out = capsys.readouterr().out
    assert "5% next-layer" in out and "gc" in out and "frozen" in out


def test_trace_live_run_smoke(capsys: pytest.CaptureFixture[str], tmp_path) -> None:
    from experiments.trace_live_run import main

    assert main(["--smoke", "--steps", "2", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "5% next-layer" in out and "copy_busy_ms" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "trace_100_next_layer.json.gz", "trace_5_next_layer.json.gz", "trace_5_none.json.gz"]


def test_trace_live_run_mixtral_smoke(capsys: pytest.CaptureFixture[str], tmp_path) -> None:
    from experiments.trace_live_run import main

    args = ["--smoke", "--model", "mixtral", "--run", "25:next-layer", "--steps", "2", "--out", str(tmp_path)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "mixtral built" in out and "25% next-layer" in out
    steps = next(line for line in out.splitlines() if line.startswith("decode steps ms:")).split()[3:]
    copies = next(line for line in out.splitlines() if line.startswith("copies per step:")).split()[3:]
    assert len(steps) == 64 and len(copies) == 63 and all(int(c) >= 0 for c in copies)
    assert [p.name for p in tmp_path.iterdir()] == ["trace_25_next_layer.json.gz"]
    with pytest.raises(SystemExit):
        main(["--smoke", "--run", "x:none"])


def test_live_decisions_smoke(capsys: pytest.CaptureFixture[str], tmp_path) -> None:
    import json

    from experiments.live_decisions import main

    out = tmp_path / "log.json"
    assert main(["--smoke", "--out", str(out)]) == 0
    log = json.loads(out.read_text())
    assert len(log["passes"]) == 65  # the measured request: its prefill and 64 decode steps
    first = log["passes"][1]
    gates = [e for e in first if e[0] == "gate"]
    assert [g[2] for g in gates] == list(range(8))  # every layer's gate, in order
    copies = sum(1 for e in first if e[0] == "copy")
    issued = sum(len(e[3]) for e in first if e[0] == "prefetch")
    misses = sum(1 for g in gates for o in g[4] if o != 0)
    assert copies <= issued + misses + 16  # a pass copies its misses and its own or earlier prefetches
    assert "copies" in capsys.readouterr().out


def test_bench_stalls_smoke(capsys: pytest.CaptureFixture[str]) -> None:
    from experiments.bench_stalls import main

    assert main(["--smoke", "--host-gap-ms", "5"]) == 0
    assert "stalls over 5.0 ms" in capsys.readouterr().out


def test_bench_live_runtime_smoke(capsys: pytest.CaptureFixture[str], tmp_path) -> None:
    """Both figures in lockstep: the unmodified model's steps beside the offloaded one's (same tokens, or the
    script fails), the 5% run's beside a resident runtime's."""
    import json

    from experiments.bench_live_runtime import main

    out_json = tmp_path / "r.json"
    assert main(["--smoke", "--repeats", "1", "--only", "runtime", "--only", "olmoe", "--out", str(out_json)]) == 0
    assert "in lockstep" in capsys.readouterr().out
    r = json.loads(out_json.read_text())
    assert r["100pct"]["ratio"] == pytest.approx(sum(1 / x for x in r["100pct"]["unmodified_tok_s"])
                                                 / sum(1 / x for x in r["100pct"]["offloaded_tok_s"]))
    five = r["5pct_olmoe"]
    assert five["ratio"] == pytest.approx(five["median_step_s"] / five["bound_s"])
    assert five["bound_s"] >= five["median_compute_s"] > 0
