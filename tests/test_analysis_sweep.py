"""Sweeps: grid expansion, bandwidth profiles, serial == parallel, Pareto front, bad input."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from emu.errors import EmuError
from emu.profile import load_profile
from emu.sweep import (
    bandwidth_profile,
    grid_points,
    load_sweep,
    pareto_front,
    read_csv,
    run_sweep,
    write_csv,
)

ROOT = Path(__file__).resolve().parents[1]
BASE = ROOT / "scenarios" / "olmoe-1b-7b_h100_25pct.toml"

SWEEP = f"""
name = "tiny"
base = "{BASE}"
set = ["workload.synthetic.tokens=300", "workload.synthetic.prompt_len=32", "workload.synthetic.output_len=64"]
engine = "fast"

[grid]
capacity = ["5%", "25%"]
bandwidth = ["profile", 5e9]

[[grid.stack]]
name = "lru"
eviction = "lru"

[[grid.stack]]
name = "drop"
eviction = "lfu"
miss = {{ name = "drop", rank = 1 }}
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "sweep.toml"
    path.write_text(text)
    return path


def test_grid_expands_in_order_with_overrides(tmp_path: Path) -> None:
    spec = load_sweep(_write(tmp_path, SWEEP))
    points = grid_points(spec)
    assert len(points) == 2 * 2 * 2
    assert [(p.bandwidth, p.capacity, p.stack) for p in points[:3]] == [
        (None, "5%", "lru"), (None, "5%", "drop"), (None, "25%", "lru")]
    assert 'policy.miss={ name = "drop", rank = 1 }' in points[1].overrides
    assert 'cache.capacity="25%"' in points[2].overrides


def test_serial_and_parallel_give_the_same_table(tmp_path: Path) -> None:
    spec = load_sweep(_write(tmp_path, SWEEP))
    serial, _ = run_sweep(spec, jobs=1)
    parallel, records = run_sweep(spec, jobs=2)
    assert serial == parallel
    a, b = write_csv(serial, tmp_path / "a.csv"), write_csv(parallel, tmp_path / "b.csv")
    assert a.read_text() == b.read_text()
    assert [r["point"] for r in read_csv(a)] == list(range(8))
    # the slow link changes the result; the profile link keeps the measured table
    by = {(r["bandwidth"], r["capacity"], r["stack"]): r for r in serial}
    assert by[("5 GB/s", "5%", "lru")]["bw_pinned_GBps"] == 5.0
    assert by[("5 GB/s", "5%", "lru")]["decode_tok_s"] < by[("profile", "5%", "lru")]["decode_tok_s"]
    assert by[("profile", "25%", "drop")]["lost_mass_frac"] > 0.0
    assert by[("profile", "25%", "lru")]["lost_mass_frac"] == 0.0
    assert records[0]["sweep"]["point"] == 0
    with open(a, newline="") as fh:
        row = next(csv.DictReader(fh))
    assert len(row["collisions_per_layer"].split(";")) == 16


def test_bandwidth_profile_drops_the_table(tmp_path: Path) -> None:
    src = ROOT / "scenarios" / "profiles" / "h100-pcie5.toml"
    assert load_profile(src).copy.table_bytes
    path = bandwidth_profile(str(src), 10e9, 2e-5, str(tmp_path))
    prof = load_profile(path)
    assert prof.copy.table_bytes == () and prof.copy.bw_pinned_Bps == 10e9
    assert prof.copy_seconds(1e9) == pytest.approx(2e-5 + 0.1)


def test_bandwidth_profile_drops_the_sustained_ratio(tmp_path: Path) -> None:
    """A swept bandwidth is what copies get: a measured lease's slow-spell ratio does not shrink it."""
    src = tmp_path / "lease.toml"
    text = (ROOT / "scenarios" / "profiles" / "h100-pcie5.toml").read_text()
    src.write_text(text.replace("[copy]\n", "[copy]\nsustained_ratio = 1.25\n", 1))
    assert load_profile(src).copy.sustained_ratio == 1.25
    prof = load_profile(bandwidth_profile(str(src), 10e9, 2e-5, str(tmp_path)))
    assert prof.copy.sustained_ratio == 1.0
    assert prof.copy_seconds(1e9) == pytest.approx(2e-5 + 0.1)


def _row(point: int, tok: float, ttft: float, loss: float, cap: str = "5%") -> dict:
    return {"point": point, "model": "m", "trace": "base", "bandwidth": "profile", "capacity": cap,
            "stack": f"s{point}", "decode_tok_s": tok, "ttft_ms": ttft, "lost_mass_frac": loss}


def test_pareto_front_keeps_only_undominated_rows_per_group() -> None:
    rows = [_row(0, 10, 100, 0.0), _row(1, 20, 100, 0.1), _row(2, 9, 100, 0.0), _row(3, 20, 90, 0.1),
            _row(4, 5, 50, 0.0), _row(5, 1, 1, 1.0, cap="25%")]
    front = pareto_front(rows)
    assert [r["point"] for r in front] == [3, 0, 4, 5]  # 1 loses to 3 (TTFT), 2 to 0 (tok/s)


@pytest.mark.parametrize(("text", "key"), [
    (SWEEP.replace('capacity = ["5%", "25%"]', "capacity = []"), "grid.capacity"),
    (SWEEP.replace("5e9", "-1"), "grid.bandwidth"),
    (SWEEP + "\n[extra]\n", "extra"),
    (SWEEP.replace('eviction = "lru"', 'evict = "lru"'), "grid.stack[0].evict"),
])
def test_bad_sweep_files_name_the_key(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(EmuError) as err:
        load_sweep(_write(tmp_path, text))
    assert err.value.key == key


def test_bad_grid_point_fails_before_running(tmp_path: Path) -> None:
    spec = load_sweep(_write(tmp_path, SWEEP.replace('eviction = "lru"', 'eviction = "nope"')))
    with pytest.raises(EmuError, match="grid point 0"):
        run_sweep(spec, jobs=1)


def test_cli_writes_csv_runs_and_prints_the_front(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    from emu import sweep_cli

    sweep = _write(tmp_path, SWEEP.replace('bandwidth = ["profile", 5e9]', 'bandwidth = ["profile"]'))
    parser = argparse.ArgumentParser()
    sweep_cli.add_parser(parser.add_subparsers())
    args = parser.parse_args(["sweep", str(sweep), "--jobs", "1", "--out", str(tmp_path / "out"), "--quiet"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "Pareto front" in out and "drop" in out
    assert len(read_csv(tmp_path / "out" / "tiny.csv")) == 4
    assert len(list((tmp_path / "out" / "runs").glob("*.json"))) == 4


def test_a_process_pool_starts_after_the_kernels_are_cached(monkeypatch: pytest.MonkeyPatch) -> None:
    """Worker processes compiling the same kernels at once can corrupt numba's cache files (numba #4807):
    the parent compiles them first."""
    import emu.sweep as sweep_mod

    order: list[str] = []
    monkeypatch.setattr(sweep_mod, "warm_cache", lambda: order.append("warm"))

    class Pool:
        def __init__(self, *args: object, **kwargs: object) -> None:
            order.append("pool")

        def shutdown(self, **kwargs: object) -> None:
            pass

    monkeypatch.setattr(sweep_mod, "ProcessPoolExecutor", Pool)
    _pool, close = sweep_mod.make_executor(2, None)
    close()
    assert order == ["warm", "pool"]
    assert sweep_mod.make_executor(1, None)[0] is None and order == ["warm", "pool"]  # serial: nothing to warm


def test_an_interrupted_sweep_resumes_where_it_stopped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import emu.sweep as sweep

    profile = tmp_path / "profile.toml"  # a file of its own, to change later
    profile.write_text((ROOT / "scenarios" / "profiles" / "h100-pcie5.toml").read_text())
    own = f'"workload.synthetic.tokens=300", "hardware.profile={profile}",'
    spec = load_sweep(_write(tmp_path, SWEEP.replace('"workload.synthetic.tokens=300",', own)))
    full, _ = run_sweep(spec, jobs=1)
    real, calls = sweep.run_point, []

    class Stop(Exception):
        """The sweep's end before its last point (Ctrl-C, a crash, a machine taken back)."""

    stop = [True]

    def stopping(point):
        calls.append(point.index)
        if stop[0] and len(calls) == 4:
            stop[0] = False
            raise Stop
        return real(point)

    out = tmp_path / "out"
    monkeypatch.setattr(sweep, "run_point", stopping)
    with pytest.raises(Stop):
        run_sweep(spec, jobs=1, out=out)
    assert sorted(p.name for p in (out / "runs").iterdir()) == [
        "0000_lru.json", "0001_drop.json", "0002_lru.json"]  # written as they finished; no half file
    calls.clear()
    rows, records = run_sweep(spec, jobs=1, out=out, resume=True)
    assert calls == [3, 4, 5, 6, 7]  # only what was left
    assert rows == full and len(records) == 8
    calls.clear()
    run_sweep(spec, jobs=1, out=out, resume=True)
    assert calls == []  # nothing changed: nothing runs
    profile.write_text(profile.read_text() + "\n# edited\n")  # an input file changed: its points run again
    run_sweep(spec, jobs=1, out=out, resume=True)
    assert calls == list(range(8))


@pytest.mark.parametrize("fmt", ["json", "csv"])
def test_cli_prints_every_points_row_as_json_or_csv(tmp_path: Path, fmt: str,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from emu.cli import main

    sweep = _write(tmp_path, SWEEP.replace('bandwidth = ["profile", 5e9]', 'bandwidth = ["profile"]'))
    assert main(["sweep", str(sweep), "--jobs", "1", "--quiet", "--out", str(tmp_path / "o"), "--format", fmt]) == 0
    out = capsys.readouterr().out
    rows = json.loads(out) if fmt == "json" else list(csv.DictReader(out.splitlines()))
    assert [int(r["point"]) for r in rows] == [0, 1, 2, 3]
    on_disk = read_csv(tmp_path / "o" / "tiny.csv")
    assert [float(r["decode_tok_s"]) for r in rows] == [r["decode_tok_s"] for r in on_disk]
