"""Validation datasets (live/validation_set.py) and `emu validate --summary`: grouping, medians and maxima by
hand, the JSON keys, bad input as one error line, the docs block, and the roofline warning."""

from __future__ import annotations

import argparse
import copy
import json
import shutil
from pathlib import Path
from typing import Any

import attrs
import pytest

from emu.cli import main
from emu.errors import EmuError
from emu.models import get_preset
from emu.profile import load_profile
from live.validate_cli import add_parser, roofline_warning
from live.validation_set import (
    MARKER_END,
    MARKER_START,
    format_config_table,
    format_model_table,
    format_summary_table,
    load_dataset,
    row_errors,
    summarize,
    write_docs_summary,
)

from .live_support import LOCKSTEP, copy_files

JSON_KEYS = {"gpu", "runtime", "n_configs", "out_of_sample", "ttft_median", "ttft_max", "decode_median", "decode_max"}
GOLDEN = LOCKSTEP

#: steps of little spread (TOST passes on identical samples)
STEPS = [0.0100, 0.0101, 0.0099, 0.0100, 0.0102, 0.0098]


def row(config: str, ttft: float = 1.0, decode: float = 1.0, runtime: str = "hf-eager", oos: bool = True,
        steps: tuple[list[float], list[float]] | None = None, counts: dict[str, list[int]] | None = None,
        races: bool = False) -> dict[str, Any]:
    """One configuration; `ttft` and `decode` are the emulated / measured ratios."""
    m, e = steps or (STEPS, STEPS)
    return {"config": config, "runtime": runtime, "out_of_sample": oos,
            "calibration": {"profile": "calibration/h100.toml", "runtime_profile": f"calibration/{runtime}.toml",
                            "runs": ["cal-1", "cal-2"]},
            "model": "olmoe-1b-7b", "capacity": "25%", "eviction": "lru", "prefetch": "none", "batch": 1,
            "ttft_s": {"measured": 0.2, "emulated": 0.2 * ttft},
            "decode_tok_s": {"measured": 50.0, "emulated": 50.0 * decode},
            "steps_s": {"measured": list(m), "emulated": list(e)},
            "counts": counts or {"hits": [10, 10], "accesses": [20, 20], "copies": [10, 10],
                                 "prefetch_issued": [0, 0]},
            "prefetch_races": races}


def write(root: Path, name: str, rows: list[dict[str, Any]], kind: str = "h100",
          gpu: str = "NVIDIA H100 80GB HBM3") -> Path:
    d = root / name
    d.mkdir(parents=True)
    (d / "comparisons.json").write_text(json.dumps({"schema": "moe-emu/validation/1", "gpu": gpu,
                                                    "gpu_kind": kind, "rows": rows}))
    return d


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """validation/ with two H100 datasets (two runtimes) and one H200 dataset."""
    root = tmp_path / "validation"
    shifted = ([0.01] * 5, [0.0103] * 5)  # constant steps +3%: exact TOST pass, KS D = 1
    write(root, "2026-12-06-h100", [
        row("a", ttft=1.02, decode=1.03),
        row("b", ttft=0.95, decode=0.92, steps=shifted),
        row("c", ttft=1.10, decode=1.01, steps=(STEPS, [s * 1.2 for s in STEPS]), races=True,
            counts={"hits": [5, 5], "accesses": [9, 9], "copies": [4, 4], "prefetch_issued": [1000, 1009]}),
        row("v", ttft=1.5, decode=0.5, runtime="vllm",
            counts={"hits": [5, 6], "accesses": [9, 9], "copies": [4, 4], "prefetch_issued": [0, 0]}),
    ])
    write(root, "2026-12-07-h100", [
        row("d", ttft=0.99, decode=1.20, oos=False, races=True,
            counts={"hits": [5, 5], "accesses": [9, 9], "copies": [4, 4], "prefetch_issued": [1000, 1011]}),
    ])
    write(root, "2026-12-08-h200", [
        row("a", ttft=1.04), row("b", decode=0.97, steps=([0.01, 0.02, 0.03], [0.01, 0.02, 0.03, 0.04]),
                                 counts={"hits": [5, 5], "accesses": [9, 9], "copies": [4, 4],
                                         "prefetch_issued": [1000, 1001]}),
    ], kind="h200", gpu="NVIDIA H200")
    return root


def _datasets(root: Path) -> list:
    return [load_dataset(d) for d in sorted(root.iterdir())]


def test_row_errors(tree: Path) -> None:
    ds = load_dataset(tree / "2026-12-06-h100" / "comparisons.json")
    assert ds.name == "2026-12-06-h100" and ds.gpu_kind == "h100" and [r.config for r in ds.rows] == list("abcv")
    a, b, c, v = (row_errors(r) for r in ds.rows)
    assert a.ttft_err == pytest.approx(0.02) and a.decode_err == pytest.approx(0.03)
    assert a.ks_d == 0.0 and a.ks_p == 1.0 and a.tost.equivalent and a.counts_equal
    assert a.step_p50_err == pytest.approx(0.0, abs=1e-12) and a.step_p99_err == pytest.approx(0.0, abs=1e-12)
    assert b.ks_d == 1.0 and b.tost.equivalent and b.tost.p == 0.0  # zero variance, +3%: decided exactly
    assert b.step_p50_err == pytest.approx(0.03) and b.step_p99_err == pytest.approx(0.03)
    assert c.ks_d == 1.0 and not c.tost.equivalent and c.ks_p < 0.01
    assert c.step_p50_err == pytest.approx(0.2) and c.counts_equal  # 1009 vs 1000 issued, racing: within 1%
    assert not v.counts_equal  # hits differ
    d = row_errors(load_dataset(tree / "2026-12-07-h100").rows[0])
    assert not d.counts_equal  # 1011 vs 1000: over 1%
    hb = row_errors(load_dataset(tree / "2026-12-08-h200").rows[1])
    assert not hb.counts_equal  # 1001 vs 1000 without races: must be equal
    assert hb.ks_d == pytest.approx(0.25)  # at 0.03: 3/3 vs 3/4


def test_summary_groups_by_gpu_kind_and_runtime(tree: Path) -> None:
    rows = summarize(_datasets(tree))
    assert [(r.gpu, r.runtime, r.n_configs) for r in rows] == [("h100", "hf-eager", 4), ("h100", "vllm", 1),
                                                                 ("h200", "hf-eager", 2)]
    h, vllm, h200 = rows
    # |ttft| 0.02, 0.05, 0.10, 0.01 -> median (0.02 + 0.05) / 2; |decode| 0.03, 0.08, 0.01, 0.20
    assert h.ttft_median == pytest.approx(0.035) and h.ttft_max == pytest.approx(0.10)
    assert h.decode_median == pytest.approx(0.055) and h.decode_max == pytest.approx(0.20)
    assert h.out_of_sample is False  # d is in sample
    assert h.ks_median == pytest.approx(0.5)  # D: 0, 1, 1, 0
    assert h.tost_pass == 3  # c's steps are 20% off
    assert h.counts_equal == 3  # d's issued count differs by 1.1% (c's by 0.9%)
    assert h.datasets == ("2026-12-06-h100", "2026-12-07-h100") and h.gpu_names == ("NVIDIA H100 80GB HBM3",)
    assert vllm.ttft_median == vllm.ttft_max == pytest.approx(0.5) and vllm.decode_max == pytest.approx(0.5)
    assert vllm.out_of_sample and vllm.counts_equal == 0
    assert h200.ttft_median == pytest.approx(0.02) and h200.ttft_max == pytest.approx(0.04)
    assert h200.decode_median == pytest.approx(0.015) and h200.decode_max == pytest.approx(0.03)
    assert h200.ks_median == pytest.approx(0.125) and h200.counts_equal == 1 and h200.out_of_sample
    table = format_summary_table(rows)
    lines = table.splitlines()
    assert len(lines) == 2 + 3 and lines[0].startswith("| GPU | runtime |")
    assert "| h100 | hf-eager | 4 | no | 3.5% | 10.0% | 5.5% | 20.0% | 0.500 | 3/4 | 3/4 |" in lines
    per_config = format_config_table(load_dataset(tree / "2026-12-06-h100")).splitlines()
    assert len(per_config) == 2 + 4
    assert per_config[2].startswith("| a | hf-eager | +2.0% | +3.0% | 0.000 |")
    assert "differ: hits 5/6" in per_config[5] and "| no (p " in per_config[4]


def test_a_per_dataset_summary_keeps_each_lease_apart(tree: Path) -> None:
    rows = summarize(_datasets(tree), per_dataset=True)
    eager = [r for r in rows if (r.gpu, r.runtime) == ("h100", "hf-eager")]
    # the 4 h100 hf-eager configurations of two datasets, now a row per dataset
    assert [r.datasets for r in eager] == [("2026-12-06-h100",), ("2026-12-07-h100",)]
    assert sum(r.n_configs for r in eager) == 4 and len(rows) == 4
    table = format_summary_table(rows, per_dataset=True).splitlines()
    assert table[0].startswith("| GPU | runtime | dataset | configs |") and len(table) == 2 + 4
    assert "| h100 | hf-eager | 2026-12-06-h100 |" in table[2]


def _cli(argv: list[str]) -> int:
    p = argparse.ArgumentParser()
    add_parser(p.add_subparsers())
    args = p.parse_args(["validate", *argv])
    return args.func(args)


def test_cli_json_keys(tree: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", "--summary", str(tree), "--json"]) == 0
    out = capsys.readouterr().out
    got = json.loads(out)  # only JSON on stdout
    assert isinstance(got, list) and len(got) == 3
    for obj in got:
        assert set(obj) - {"extra"} == JSON_KEYS
        assert obj["extra"]["steady"] is None  # no row records its calibration's host drift
    assert got[0]["gpu"] == "h100" and got[0]["runtime"] == "hf-eager" and got[0]["n_configs"] == 4
    assert got[0]["ttft_median"] == pytest.approx(0.035) and got[0]["decode_max"] == pytest.approx(0.20)
    assert got[0]["out_of_sample"] is False and got[2]["out_of_sample"] is True
    assert got[0]["extra"]["tost_pass"] == 3
    # one dataset folder, and the same folder twice, count once
    one = tree / "2026-12-08-h200"
    assert main(["validate", "--summary", str(one), str(one / "comparisons.json"), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert [(o["gpu"], o["n_configs"]) for o in got] == [("h200", 2)]


def test_cli_text_prints_each_dataset_and_the_summary(tree: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _cli(["--summary", str(tree)]) == 0
    out = capsys.readouterr().out
    for name in ("2026-12-06-h100", "2026-12-07-h100", "2026-12-08-h200"):
        assert f"## {name} (" in out
    assert out.index("## 2026-12-08-h200") < out.index("## summary")
    assert format_summary_table(summarize(_datasets(tree))) in out


def _bad(tmp_path: Path, mutate: Any) -> Path:
    raw = {"schema": "moe-emu/validation/1", "gpu": "G", "gpu_kind": "h100", "rows": [row("a"), row("b")]}
    mutate(raw)
    d = tmp_path / "2026-12-06-h100"
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir()
    (d / "comparisons.json").write_text(json.dumps(raw))
    return d


@pytest.mark.parametrize(("mutate", "key"), [
    (lambda r: r["rows"][1]["ttft_s"].pop("emulated"), "rows[1].ttft_s.emulated"),
    (lambda r: r["rows"][0].pop("calibration"), "rows[0].calibration"),
    (lambda r: r["rows"][0]["calibration"].pop("runtime_profile"), "rows[0].calibration.runtime_profile"),
    (lambda r: r["rows"][0]["steps_s"].update(measured=[]), "rows[0].steps_s.measured"),
    (lambda r: r["rows"][0]["steps_s"]["emulated"].__setitem__(2, float("nan")), "rows[0].steps_s.emulated[2]"),
    (lambda r: r["rows"][0]["steps_s"]["emulated"].__setitem__(0, float("inf")), "rows[0].steps_s.emulated[0]"),
    (lambda r: r["rows"][1]["decode_tok_s"].update(measured=0), "rows[1].decode_tok_s.measured"),
    (lambda r: r["rows"][1]["ttft_s"].update(measured=-0.1), "rows[1].ttft_s.measured"),
    (lambda r: r["rows"][1]["ttft_s"].update(measured="0.1"), "rows[1].ttft_s.measured"),
    (lambda r: r["rows"][0].update(batch="1"), "rows[0].batch"),
    (lambda r: r["rows"][0].update(out_of_sample=1), "rows[0].out_of_sample"),
    (lambda r: r["rows"][0].pop("prefetch_races"), "rows[0].prefetch_races"),
    (lambda r: r["rows"][0]["calibration"].update(host_drift=-0.1), "rows[0].calibration.host_drift"),
    (lambda r: r["rows"][0]["calibration"].update(host_drift="0.1"), "rows[0].calibration.host_drift"),
    (lambda r: r["rows"][0]["calibration"].update(host_drift=True), "rows[0].calibration.host_drift"),
    (lambda r: r["rows"][0].update(host_share=-0.5), "rows[0].host_share"),
    (lambda r: r["rows"][0].update(host_share="0.9"), "rows[0].host_share"),
    (lambda r: r["rows"][0]["counts"].pop("copies"), "rows[0].counts.copies"),
    (lambda r: r["rows"][0]["counts"].update(hits=[1, 2, 3]), "rows[0].counts.hits"),
    (lambda r: r["rows"][0]["counts"].update(hits=[1, -2]), "rows[0].counts.hits"),
    (lambda r: r["rows"][1].update(config="a"), "rows[1].config"),
    (lambda r: r["rows"].__setitem__(0, "a"), "rows[0]"),
    (lambda r: r.update(rows=[]), "rows"),
    (lambda r: r.pop("gpu_kind"), "gpu_kind"),
    (lambda r: r.update(self_check=[1]), "self_check"),
    (lambda r: r.update(self_check_batch={"m": {"config": "nope", "errors": [0.1]}}), "self_check_batch.m.config"),
    (lambda r: r.update(self_check={"m": {"config": "nope", "errors": [0.1]}}), "self_check.m.config"),
    (lambda r: r.update(self_check={"m": {"config": r["rows"][0]["config"], "errors": []}}), "self_check.m.errors"),
    (lambda r: r.update(self_check={"m": {"config": r["rows"][0]["config"], "errors": [-1.5]}}),
     "self_check.m.errors"),
    (lambda r: r.update(schema="moe-emu/validation/0"), "schema"),
])
def test_bad_input_is_one_error_line_naming_file_and_key(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                         mutate: Any, key: str) -> None:
    d = _bad(tmp_path, mutate)
    with pytest.raises(EmuError) as err:
        load_dataset(d)
    assert err.value.file == str(d / "comparisons.json") and err.value.key == key
    assert main(["validate", "--summary", str(d)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"emu: error: {d / 'comparisons.json'}: {key}: ")


def test_bad_files_and_folders(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = tmp_path / "2026-12-06-h100"
    d.mkdir()
    (d / "comparisons.json").write_text("{not json")
    with pytest.raises(EmuError, match="not valid JSON") as err:
        load_dataset(d)
    assert err.value.file == str(d / "comparisons.json")
    (d / "comparisons.json").write_text("[1]")
    with pytest.raises(EmuError, match="expected an object"):
        load_dataset(d)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["validate", "--summary", str(empty)]) == 2
    assert "no dataset" in capsys.readouterr().err
    assert main(["validate", "--summary", str(tmp_path / "nope")]) == 2
    assert "nope: --summary" in capsys.readouterr().err
    with pytest.raises(EmuError, match="drop the scenarios"):
        _cli(["x.toml", "--summary", str(d)])
    with pytest.raises(EmuError, match="only with --summary"):
        _cli(["--json"])
    with pytest.raises(EmuError, match="only with --summary"):
        _cli(["--write-docs", "docs.md", "--from-live", str(tmp_path)])


def test_write_docs_replaces_only_the_marked_block(tree: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    md = tmp_path / "validation.md"
    before = "# Validation\n\nIntro | with a pipe.\n\n"
    after = "\n## Later\n\nkept text\n<!-- other -->\n"
    md.write_text(before + f"{MARKER_START}\n| old | table |\n|---|---|\nstale\n{MARKER_END}\n" + after)
    assert main(["validate", "--summary", str(tree), "--json", "--write-docs", str(md)]) == 0
    json.loads(capsys.readouterr().out)
    table = format_summary_table(summarize(_datasets(tree)))
    table += "\n\nNo configuration's runtime calibration found the host steady."  # no row records its drift
    want = before + f"{MARKER_START}\n\n{table}\n\n{MARKER_END}\n" + after
    assert md.read_text() == want
    write_docs_summary(md, table)  # idempotent
    assert md.read_text() == want
    write_docs_summary(md, "| x |\n|---|")
    assert md.read_text() == before + f"{MARKER_START}\n\n| x |\n|---|\n\n{MARKER_END}\n" + after


@pytest.mark.parametrize("text", ["# no markers\n", f"{MARKER_END}\n{MARKER_START}\n",
                                  f"{MARKER_START}\n{MARKER_START}\n{MARKER_END}\n"])
def test_write_docs_needs_the_markers(tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                      text: str) -> None:
    md = tmp_path / "validation.md"
    md.write_text(text)
    with pytest.raises(EmuError) as err:
        write_docs_summary(md, "| x |")
    assert err.value.file == str(md)
    assert main(["validate", "--summary", str(tree), "--write-docs", str(md)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and str(md) in lines[0]
    assert md.read_text() == text  # untouched
    with pytest.raises(EmuError, match="not found"):
        write_docs_summary(tmp_path / "missing.md", "| x |")


# ---- the roofline fallback is named --------------------------------------------------------------

def test_roofline_warning_names_model_and_profile() -> None:
    profile = load_profile(GOLDEN / "h100-lease.toml")
    spec = get_preset("mixtral-8x7b")
    assert roofline_warning(profile, spec, "p.toml") is None
    text = roofline_warning(attrs.evolve(profile, models={}), spec, "p.toml")
    assert text == ("warning: no measured expert/dense table for mixtral-8x7b in p.toml: the emulator uses the "
                    "roofline estimate; errors below are not a calibration's")
    no_dense = dict(profile.models, **{spec.name: attrs.evolve(profile.models[spec.name], dense=None)})
    assert "no measured dense table for mixtral-8x7b" in roofline_warning(
        attrs.evolve(profile, models=no_dense), spec, "p.toml")
    other = attrs.evolve(spec, precision="int4")  # a precision the profile measured no curve for
    assert "no measured expert table" in roofline_warning(profile, other, "p.toml")


def test_cli_warns_when_the_profile_has_no_table_for_the_model(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    d = tmp_path / "runs"
    d.mkdir()
    copy_files(GOLDEN, d, ("mixtral_5pct_lru.json", "h100-lease.toml"))
    rec = json.loads((GOLDEN / "mixtral_5pct_lru.json").read_text())
    assert _cli(["--from-live", str(d)]) == 0
    assert "roofline" not in capsys.readouterr().err  # measured tables: no warning
    renamed = copy.deepcopy(rec)
    renamed["model"]["name"] = "custom"  # the same shape under a name the profile has no table for
    renamed.pop("profile_model")
    (d / "mixtral_5pct_lru.json").write_text(json.dumps(renamed))
    assert _cli(["--from-live", str(d)]) == 0
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if "roofline" in line]
    assert lines == [f"warning: no measured expert/dense table for custom in {d / 'h100-lease.toml'}: the "
                     "emulator uses the roofline estimate; errors below are not a calibration's"]
    assert "mixtral_5pct_lru" in captured.out  # the comparison is still printed


def test_racing_prefetches_allow_one_percent_on_every_count_but_accesses(tmp_path: Path) -> None:
    from live.validation_set import counts_equal, load_dataset

    rows = [row("a", races=True, counts={"hits": [1000, 1009], "accesses": [2000, 2000], "copies": [500, 504],
                                         "prefetch_issued": [800, 807]}),
            row("b", races=True, counts={"hits": [1000, 1011], "accesses": [2000, 2000], "copies": [500, 500],
                                         "prefetch_issued": [800, 800]}),
            row("c", races=True, counts={"hits": [1000, 1000], "accesses": [2000, 2001], "copies": [500, 500],
                                         "prefetch_issued": [800, 800]}),
            row("d", counts={"hits": [1000, 1001], "accesses": [2000, 2000], "copies": [500, 500],
                             "prefetch_issued": [0, 0]})]
    ds = load_dataset(write(tmp_path, "x", rows))
    assert [counts_equal(r) for r in ds.rows] == [True, False, False, False]


def test_repeats_give_the_measurements_own_spread(tmp_path: Path) -> None:
    from live.validation_set import load_dataset, repeats

    a = load_dataset(write(tmp_path, "a", [row("x"), row("y")]))
    b_rows = [row("x"), row("z")]
    b_rows[0]["decode_tok_s"]["measured"] = 40.0  # 50 in dataset a
    b = load_dataset(write(tmp_path, "b", b_rows))
    c = load_dataset(write(tmp_path, "c", [row("x")], kind="h200"))  # another GPU kind: not a repeat of a's
    reps = repeats([a, b, c])
    assert [(r.gpu, r.config, r.decode_tok_s) for r in reps] == [("h100", "x", (50.0, 40.0))]
    assert reps[0].decode_spread == pytest.approx(0.25) and reps[0].ttft_spread == 0.0


def test_the_steady_summary_keeps_the_configurations_whose_calibration_found_the_host_steady(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from emu.runtime_profile import HOST_DRIFT_TOLERANCE

    def drifted(r: dict[str, Any], drift: float | None) -> dict[str, Any]:
        r["calibration"]["host_drift"] = drift
        return r

    root = tmp_path / "validation"
    write(root, "2026-12-06-h100", [drifted(row("calm", ttft=1.01, decode=1.02), 0.02),
                                    drifted(row("edge", ttft=1.03, decode=0.96), HOST_DRIFT_TOLERANCE),
                                    drifted(row("noisy", ttft=1.40, decode=0.60), 0.55),
                                    row("unknown", ttft=1.30, decode=1.30)])  # an older row: no drift recorded
    ds = load_dataset(root / "2026-12-06-h100")
    assert [r.calibration.steady for r in ds.rows] == [True, True, False, False]
    (every,) = summarize([ds])
    (steady,) = summarize([ds], steady=True)
    assert every.n_configs == 4 and every.decode_max == pytest.approx(0.40)
    assert steady.n_configs == 2 and steady.decode_max == pytest.approx(0.04)
    assert steady.ttft_median == pytest.approx(0.02)
    assert main(["validate", "--summary", str(root), "--json"]) == 0
    (obj,) = json.loads(capsys.readouterr().out)
    assert obj["n_configs"] == 4 and obj["extra"]["steady"]["n_configs"] == 2
    assert obj["extra"]["steady"]["decode_max"] == pytest.approx(0.04)
    assert main(["validate", "--summary", str(root)]) == 0
    out = capsys.readouterr().out
    assert "On a steady host" in out and out.count("| h100 | hf-eager | 2 | yes |") == 1



def test_the_model_table_gives_each_models_error_ranges_drift_and_counts(tmp_path: Path,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    rows = [row("a", ttft=1.02, decode=0.90), row("b", ttft=0.95, decode=1.10), row("c", ttft=1.30, decode=1.0),
            row("d", ttft=1.0, decode=1.0, runtime="hf-graph",
                counts={"hits": [5, 6], "accesses": [9, 9], "copies": [4, 4], "prefetch_issued": [0, 0]})]
    rows[2]["model"] = "mixtral-8x7b"
    for r in rows[:2]:
        r["calibration"]["host_drift"] = 0.05
    rows[2]["calibration"]["host_drift"] = 0.44
    rows[3]["host_share"] = 0.87
    ds = load_dataset(write(tmp_path / "v", "2026-12-06-h100", rows))
    table = format_model_table(ds).splitlines()
    assert table[0] == ("| model | runtime | configs | host share | host drift | step drift | TTFT err | decode err | "
                        "counts equal |")
    # grouped by model and runtime, in the dataset's order; least .. most of the signed errors
    assert table[2] == "| olmoe-1b-7b | hf-eager | 2 | - | 5.0% | - | -5.0% .. +2.0% | -10.0% .. +10.0% | 2/2 |"
    assert table[3] == "| mixtral-8x7b | hf-eager | 1 | - | 44.0% | - | +30.0% .. +30.0% | +0.0% .. +0.0% | 1/1 |"
    assert table[4] == "| olmoe-1b-7b | hf-graph | 1 | 0.87 .. 0.87 | - | - | +0.0% .. +0.0% | +0.0% .. +0.0% | 0/1 |"
    assert _cli(["--summary", str(tmp_path / "v")]) == 0
    assert "By model:\n\n" + format_model_table(ds) in capsys.readouterr().out


def test_the_sound_summary_keeps_steady_rows_whose_calibration_composes_its_own_step(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from live.validation_set import SELF_CHECK_TOLERANCE, self_consistent

    def of(r: dict[str, Any], model: str, drift: float = 0.02) -> dict[str, Any]:
        r["model"], r["calibration"]["host_drift"] = model, drift
        return r

    root = tmp_path / "validation"
    d = write(root, "2026-12-06-h100", [of(row("good", decode=1.02), "m1"), of(row("off", decode=1.30), "m2"),
                                        of(row("edge", decode=0.97), "m3"), of(row("unchecked", decode=0.5), "m4"),
                                        of(row("drifted", decode=1.02), "m1", drift=0.5)])
    raw = json.loads((d / "comparisons.json").read_text())
    # m2's step composes 8% short in two of three requests; m3 within the tolerance at the median; m4 unchecked
    raw["self_check"] = {"p1": {"config": "good", "errors": [0.01, -0.02, 0.0]},
                         "p2": {"config": "off", "errors": [-0.08, -0.08, 0.0]},
                         "p3": {"config": "edge", "errors": [SELF_CHECK_TOLERANCE, -0.2, 0.2]}}
    (d / "comparisons.json").write_text(json.dumps(raw))
    ds = load_dataset(d)
    assert [self_consistent(ds, r) for r in ds.rows] == [True, False, True, False, True]
    (sound,) = summarize([ds], sound=True)  # steady and self-consistent: "good" and "edge"
    assert sound.n_configs == 2 and sound.decode_max == pytest.approx(0.03)
    assert main(["validate", "--summary", str(root), "--json"]) == 0
    (obj,) = json.loads(capsys.readouterr().out)
    assert obj["extra"]["sound"]["n_configs"] == 2 and obj["extra"]["steady"]["n_configs"] == 4
    assert main(["validate", "--summary", str(root)]) == 0
    assert "composes its own step" in capsys.readouterr().out
    # a row emulated with another experts kernel than the run's leaves the sound set, and only it
    raw["rows"][0]["calibration"]["kernel_priced"] = False
    raw["rows"][2]["calibration"]["kernel_priced"] = True
    (d / "comparisons.json").write_text(json.dumps(raw))
    (sound,) = summarize([load_dataset(d)], sound=True)
    assert sound.n_configs == 1 and sound.decode_max == pytest.approx(0.03)
    raw["rows"][0]["calibration"]["kernel_priced"] = "no"
    (d / "comparisons.json").write_text(json.dumps(raw))
    with pytest.raises(EmuError, match=r"rows\[0\]\.calibration\.kernel_priced.*true, false or null"):
        load_dataset(d)


def test_step_drift_is_how_far_the_runs_pace_moved_against_the_emulation_within_the_run(tmp_path: Path) -> None:
    from live.validation_set import step_drift

    emulated = [0.01, 0.02] * 8  # the cache's own ups and downs: in both
    same = [1.1 * x for x in emulated]  # 10% off all through: an error, no drift
    slowed = [x * (1.0 if i < 8 else 1.5) for i, x in enumerate(emulated)]  # the host 50% slower from the middle
    write(tmp_path, "d", [row("same", steps=(same, emulated)), row("slowed", steps=(slowed, emulated)),
                          row("short", steps=(emulated[:7], emulated[:7]))])
    same_row, slowed_row, short_row = load_dataset(tmp_path / "d").rows
    assert step_drift(same_row) == pytest.approx(0.0, abs=1e-12)
    assert step_drift(slowed_row) == pytest.approx(0.5)
    assert step_drift(short_row) is None  # fewer than two steps a part
    assert "step drift" in format_config_table(load_dataset(tmp_path / "d")).splitlines()[0]
    # the model table: the least .. most of its runs' (the short run has none)
    assert "| 0.0% .. 50.0% |" in format_model_table(load_dataset(tmp_path / "d")).splitlines()[2]


def test_the_newest_summary_takes_each_configurations_run_from_the_newest_sound_dataset(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from live.validation_set import dataset_recency

    def steady(r: dict[str, Any], drift: float = 0.02) -> dict[str, Any]:
        r["calibration"]["host_drift"] = drift
        return r

    def checked(d: Path) -> None:  # the calibration composes its own step: the rows are sound
        raw = json.loads((d / "comparisons.json").read_text())
        raw["self_check"] = {"p1": {"config": raw["rows"][0]["config"], "errors": [0.01, 0.0, -0.01]}}
        (d / "comparisons.json").write_text(json.dumps(raw))

    root = tmp_path / "validation"
    checked(write(root, "2026-12-06-h100-lease9-eager", [steady(row("a", decode=1.01)), steady(row("b", decode=1.02)),
                                                         steady(row("c", decode=1.03))]))
    # lease 10 comes after lease 9 (by number, not by the letters), and its worse "a" replaces lease 9's
    checked(write(root, "2026-12-06-h100-lease10-eager", [steady(row("a", decode=1.20)),
                                                          steady(row("b", decode=1.00), drift=0.5)]))  # unsteady
    checked(write(root, "2026-12-05-h100-lease11-eager", [steady(row("c", decode=1.10))]))  # an earlier date
    assert sorted(["2026-12-06-h100-lease10", "2026-12-06-h100-lease9", "x"], key=dataset_recency) == [
        "x", "2026-12-06-h100-lease9", "2026-12-06-h100-lease10"]
    datasets = _datasets(root)
    (sound,) = summarize(datasets, sound=True)
    (newest,) = summarize(datasets, newest=True)
    assert sound.n_configs == 5
    assert newest.n_configs == 3  # a from lease 10 (+20%), b (+2%) and c (+3%, not lease 11's +10%) from lease 9
    assert newest.decode_max == pytest.approx(0.20) and newest.decode_median == pytest.approx(0.03)
    assert main(["validate", "--summary", str(root), "--json"]) == 0
    (obj,) = json.loads(capsys.readouterr().out)
    assert obj["extra"]["newest"]["n_configs"] == 3 and obj["extra"]["sound"]["n_configs"] == 5
    assert main(["validate", "--summary", str(root)]) == 0
    assert "from the newest dataset" in capsys.readouterr().out
