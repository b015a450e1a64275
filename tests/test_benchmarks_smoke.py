"""The live benchmarks' `--smoke` runs (a tiny model on the CPU): the scripts run end to end and print their
tables; they measure nothing here."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")


def test_profile_live_prefetch_smoke(capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks.profile_live_prefetch import main

    assert main(["--smoke", "--rounds", "1", "--gc-freeze"]) == 0
    out = capsys.readouterr().out
    assert "5% next-layer" in out and "gc" in out and "frozen" in out


def test_trace_live_run_smoke(capsys: pytest.CaptureFixture[str], tmp_path) -> None:
    from benchmarks.trace_live_run import main

    assert main(["--smoke", "--steps", "2", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "5% next-layer" in out and "copy_busy_ms" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "trace_100_next_layer.json.gz", "trace_5_next_layer.json.gz", "trace_5_none.json.gz"]
