"""The speed benchmarks in a smoke mode (tiny sizes): each runs end to end and prints its figures. They measure
nothing here; the figures they print at full size are the speed targets (benchmarks/)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(script: str, *args: str) -> str:
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def test_cli_startup_smoke() -> None:
    out = _run("bench_cli_startup.py", "--runs", "2")
    assert "emu --help median" in out  # the figure the 0.3 s target is read from


def test_trace_generation_smoke() -> None:
    out = _run("bench_trace_gen.py", "--tokens", "4000", "--batch-size", "4")
    assert "M entries/cpu s" in out and "experts+scores+predicted" in out and "DeepSeek-V3 shape" in out


def test_trace_import_smoke() -> None:
    out = _run("bench_trace_import.py", "--rows", "3000", "--repeat", "1")
    assert "rows/s" in out


def test_fast_1m_smoke() -> None:
    out = _run("bench_fast_1m.py", "--tokens", "3000", "--repeats", "1", "--model", "deepseek-v3-shape")
    assert "fast lru+next-layer, deepseek-v3-shape, 3,000 tokens" in out and "M accesses/s" in out
    # the run's own peak (a few hundred MiB at most for 3,000 tokens), not the launching process's
    rss = float(out.split("peak RSS ")[1].split(" MiB")[0])
    assert 0 < rss < 600 and "<= 1024 MiB" in out


def test_cold_start_smoke() -> None:
    out = _run("bench_cold_start.py", "--smoke")
    assert "warm (numba's own cache):" in out and "CPU s" in out


def test_shapes_smoke() -> None:
    out = _run("bench_shapes.py", "--accesses", "40000", "--repeats", "1")
    rows = [ln for ln in out.splitlines() if ln.startswith("| ") and "---" not in ln][1:]
    assert len(rows) == 6 and "DeepSeek-V3), link 10x faster" in rows[-1]
    late = [float(r.split("|")[-2]) for r in rows]
    assert late[-1] < late[-2]  # the faster link leaves fewer prefetches in flight at their gates
