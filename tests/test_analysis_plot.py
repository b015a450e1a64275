"""emu plot writes every figure from a sweep CSV and from run JSONs (skipped without matplotlib)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from emu.errors import EmuError
from emu.plot import KINDS, filter_rows, front_2d, load_rows, make_plots
from emu.sweep import ROW_FIELDS, write_csv

pytest.importorskip("matplotlib")


def _rows() -> list[dict]:
    rows = []
    for i, (stack, cap, frac) in enumerate((s, c, f) for s in ("lru", "drop") for c, f in
                                           (("5%", 0.05), ("25%", 0.25), ("50%", 0.5))):
        rows.append({k: None for k in ROW_FIELDS} | {
            "point": i, "model": "m", "trace": "base", "bandwidth": "profile", "capacity": cap,
            "capacity_slots": frac * 64, "capacity_frac": frac, "stack": stack, "hit_rate": frac + 0.1,
            "decode_tok_s": 10 + 20 * frac + (5 if stack == "drop" else 0), "ttft_ms": 100 - 50 * frac,
            "lost_mass_frac": 0.2 - 0.2 * frac if stack == "drop" else 0.0, "misses_collision": 3,
            "collisions_per_layer": "1;2;0"})
    return rows


def test_every_plot_is_written_as_png_and_svg(tmp_path: Path) -> None:
    csv_path = write_csv(_rows(), tmp_path / "s.csv")
    written = make_plots(load_rows([csv_path]), tmp_path / "out")
    assert sorted(p.name for p in written) == sorted(f"{k}.{f}" for k in KINDS for f in ("png", "svg"))
    for path in written:
        head = path.read_bytes()[:8]
        assert head.startswith(b"\x89PNG") if path.suffix == ".png" else b"<?xml" in head or b"<svg" in head
        assert path.stat().st_size > 2000


def test_run_json_rows_and_filters(tmp_path: Path) -> None:
    record = {"scenario": {"model": {"name": "m", "n_experts": 8, "n_moe_layers": 2},
                           "cache": {"capacity": "25%", "slots": 4.0}, "workload": {"trace": None},
                           "policy": {k: {"name": "x"} for k in ("eviction", "prefetch", "miss", "routing",
                                                                  "partition")}},
              "engine": "des", "ttft_s": 0.1, "tpot_s": 0.01, "decode_tok_per_s": 100.0, "e2e_s": 1.0,
              "hit_rate": 0.5, "misses_compulsory": 1, "misses_capacity": 2, "misses_collision": 3,
              "per_layer": [{"misses_collision": 1}, {"misses_collision": 2}], "bytes_h2d": 10,
              "copy_busy_frac": 0.5, "compute_busy_frac": 0.5, "stall_s": 0.0, "quality": {"lost_mass_frac": 0.0},
              "prefetch_precision": 0.0, "prefetch_recall": 0.0}
    (tmp_path / "a.json").write_text(json.dumps(record))
    rows = load_rows([tmp_path / "a.json"])
    assert rows[0]["capacity_frac"] == 0.25 and rows[0]["collisions_per_layer"] == "1;2"
    assert len(filter_rows(_rows(), ["stack=drop", "capacity=25%"])) == 1
    with pytest.raises(EmuError):
        filter_rows(_rows(), ["nope=1"])
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(EmuError, match="not an `emu run`"):
        load_rows([tmp_path / "bad.json"])


def test_front_2d() -> None:
    # (loss, speed): (0, 10) and (5, 20) and (9, 30) are the front; (5, 15) and (10, 25) are beaten
    pts = [(5.0, 15.0), (0.0, 10.0), (5.0, 20.0), (10.0, 25.0), (9.0, 30.0)]
    assert front_2d(pts) == [1, 2, 4]
