"""The committed validation datasets (validation/): every comparison recomputed by the current emulator equals the
committed one, and the summary stays within validation/bounds.toml's current acceptance bounds."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from live.protocol import compare
from live.validation_set import find_datasets, load_dataset, row_errors, summarize

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
VALIDATION = ROOT / "validation"


def _recomputed(tmp_path: Path) -> list:
    out = []
    (tmp_path / "traces").symlink_to(VALIDATION / "traces")  # the store the copied records point at
    for path in find_datasets(VALIDATION):
        folder = path.parent
        committed = json.loads(path.read_text())
        copy = tmp_path / folder.name
        shutil.copytree(folder, copy)
        runtime = committed["rows"][0]["calibration"]["runtime_profile"]
        compare(copy, copy / committed["rows"][0]["calibration"]["profile"], copy / runtime, committed["gpu_kind"],
                committed["rows"][0]["runtime"])
        again = json.loads((copy / "comparisons.json").read_text())
        for old, new in zip(committed["rows"], again["rows"], strict=True):
            for key in ("ttft_s", "decode_tok_s"):
                assert new[key]["emulated"] == pytest.approx(old[key]["emulated"], rel=1e-9), (
                    f"{folder.name} {old['config']} {key}: the emulator's prediction changed; regenerate with "
                    f"python -m live.protocol compare {folder.relative_to(ROOT)} (docs/validation.md)")
            assert new["counts"] == old["counts"], (folder.name, old["config"])
            assert new["calibration"].get("host_drift") == old["calibration"].get("host_drift"), (
                folder.name, old["config"], "the calibration's host drift changed")
            assert not new["roofline"], f"{folder.name} {old['config']}: the device profile has no tables for its model"
        out.append(load_dataset(copy))
    return out


def test_the_datasets_meet_the_current_bounds(tmp_path: Path) -> None:
    bounds = tomllib.loads((VALIDATION / "bounds.toml").read_text())["current"]
    datasets = _recomputed(tmp_path)
    assert datasets, "no validation dataset committed"
    summary = summarize(datasets)
    checked = 0
    for s in summary:
        b = bounds.get(s.gpu, {}).get(s.runtime)
        if b is None:
            continue
        checked += 1
        assert s.out_of_sample, f"{s.gpu}/{s.runtime}: a row was predicted by a calibration that saw it"
        for key in ("ttft_median", "ttft_max", "decode_median", "decode_max"):
            assert getattr(s, key) <= b[key], f"{s.gpu}/{s.runtime} {key} {getattr(s, key):.3f} > {b[key]}"
        rows = [r for ds in datasets if ds.gpu_kind == s.gpu for r in ds.rows if r.runtime == s.runtime]
        agree = sum(row_errors(r).counts_equal for r in rows) / len(rows)
        assert agree >= b["counts_agree"], f"{s.gpu}/{s.runtime}: counts agree in {agree:.0%}"
    assert checked == len(bounds_pairs(bounds)), "a GPU kind and runtime of bounds.toml has no dataset"
    # the configurations whose runtime calibration found the host steady (its requests agreeing), and of the sound
    # ones each configuration's newest run (what the latest calibration methods give)
    for subset, rows in (("steady", summarize(datasets, steady=True)), ("newest", summarize(datasets, newest=True))):
        by_pair = {(s.gpu, s.runtime): s for s in rows}
        for gpu, runtime in bounds_pairs(bounds):
            b = bounds[gpu][runtime].get(subset)
            if b is None:
                continue
            s = by_pair.get((gpu, runtime))
            assert s is not None and s.n_configs >= b["n_configs"], f"{gpu}/{runtime}: fewer {subset} configurations"
            for key in ("ttft_median", "ttft_max", "decode_median", "decode_max"):
                assert getattr(s, key) <= b[key], f"{gpu}/{runtime} {subset} {key} {getattr(s, key):.3f} > {b[key]}"


def bounds_pairs(bounds: dict) -> list[tuple[str, str]]:
    return [(gpu, rt) for gpu, runtimes in bounds.items() for rt in runtimes]
