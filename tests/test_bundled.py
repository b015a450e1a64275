"""Bundled scenarios by name: `emu run NAME` from any folder, `emu scenarios`, and a clear line for a wrong name."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from emu import bundled
from emu.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_the_checkouts_scenarios_are_the_bundled_tree():
    assert bundled.root() == ROOT / "scenarios"
    found = bundled.scenarios()
    assert found["olmoe-1b-7b_h100_5pct"] == ROOT / "scenarios" / "olmoe-1b-7b_h100_5pct.toml"
    assert "olmoe_capacity" not in found  # a sweep definition is not a scenario
    assert all(p.suffix == ".toml" and "profiles" not in p.parts for p in found.values())


def test_a_name_resolves_and_a_path_stays_a_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert bundled.resolve("olmoe-1b-7b_h100_5pct") == str(ROOT / "scenarios" / "olmoe-1b-7b_h100_5pct.toml")
    assert bundled.resolve("mine.toml") == "mine.toml"  # a path, even one that does not exist (its own error)
    (tmp_path / "olmoe-1b-7b_h100_5pct").write_text("")  # a file of that name here wins over the bundled one
    assert bundled.resolve("olmoe-1b-7b_h100_5pct") == "olmoe-1b-7b_h100_5pct"


def test_a_wrong_name_is_one_line_with_its_neighbours(capsys):
    assert main(["run", "olmoe-1b-7b_h100"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no bundled scenario" in err[0] and "olmoe-1b-7b_h100_5pct" in err[0]


def test_run_by_name_from_another_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["run", "olmoe-1b-7b_h100_5pct", "--quiet"]) == 0
    record = json.loads((tmp_path / "runs" / "olmoe-1b-7b_h100_5pct.json").read_text())
    assert record["ttft_s"] == pytest.approx(0.26879, rel=1e-4)  # the README's figure for this scenario


def test_emu_scenarios_lists_them(capsys):
    assert main(["scenarios"]) == 0
    out = capsys.readouterr()
    lines = out.out.strip().splitlines()
    assert len(lines) == 4 and any(line.startswith("olmoe-1b-7b_h100_5pct ") and "5% expert cache" in line
                                   for line in lines)
    assert "emu scenarios --all" in out.err
    assert main(["scenarios", "--all"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == len(bundled.scenarios()) > 300


@pytest.mark.parametrize("fmt", ["json", "csv"])
def test_run_prints_its_figures_unrounded_as_json_or_csv(fmt, tmp_path, monkeypatch, capsys):
    import csv
    import io

    monkeypatch.chdir(tmp_path)
    assert main(["run", "olmoe-1b-7b_h100_5pct", "olmoe-1b-7b_h100_25pct", "--quiet", "--format", fmt]) == 0
    out = capsys.readouterr().out
    rows = json.loads(out) if fmt == "json" else list(csv.DictReader(io.StringIO(out)))
    assert [r["scenario"] for r in rows] == ["olmoe-1b-7b_h100_5pct", "olmoe-1b-7b_h100_25pct"]
    for r in rows:
        record = json.loads(Path(r["record"]).read_text())
        for key in ("ttft_s", "tpot_s", "decode_tok_per_s", "hit_rate", "bytes_h2d"):
            assert float(r[key]) == record[key]  # the record's own figure, not the table's rounding
        assert float(r["lost_mass_frac"]) == record["quality"]["lost_mass_frac"]


def test_run_with_jobs_gives_the_serial_records(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    names = ["olmoe-1b-7b_h100_5pct", "olmoe-1b-7b_h100_25pct", "olmoe-1b-7b_h100_1pct"]
    assert main(["run", *names, "--quiet", "--out", "serial"]) == 0
    serial_out = capsys.readouterr().out
    assert main(["run", *names, "--quiet", "--out", "pool", "--jobs", "2"]) == 0
    assert capsys.readouterr().out == serial_out  # the same table, in the same order
    for name in names:
        a, b = (json.loads((tmp_path / d / f"{name}.json").read_text()) for d in ("serial", "pool"))
        a.pop("timings"), b.pop("timings")
        assert a == b
    assert main(["run", names[0], "--jobs", "0"]) == 2


def test_run_picks_its_workers_by_the_number_of_scenarios(monkeypatch):
    import emu.cli

    monkeypatch.setattr(emu.cli.os, "cpu_count", lambda: 8)
    per = emu.cli.SCENARIOS_PER_WORKER
    # a few scenarios run here; many take a worker per CPU at most, each worker at least `per` of them
    assert [emu.cli.auto_jobs(n) for n in (1, per - 1, per, 2 * per + 1, 100 * per)] == [1, 1, 1, 2, 8]
    monkeypatch.setattr(emu.cli.os, "cpu_count", lambda: None)
    assert emu.cli.auto_jobs(100 * per) == 1
