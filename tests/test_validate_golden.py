"""The emulator against committed H100 measurements (tests/golden/live, and pump/: a later lease; docs/validation.md).

Twenty live runs (OLMoE-1B-7B full size and Mixtral-8x7B at 8 layers; cache 5/25/100%; lru and
least-stale; prefetch none, and next-layer below 100%; eager expert kernel; 3 interleaved rounds each)
recorded their trace and timings; the profile and the runtime calibrations were measured in the same
lease. CI replays every trace through the fast engine.

Tolerances are what the emulator achieves on these files (best of the rounds, see live/matrix.py), not
the issue's target (median <= 5%, max <= 10%). Without prefetch: TTFT meets it (1.6% / 3.3%), decode
does not (8.1% / 18.4%: the 100% runs differ by up to 50% between rounds). With next-layer prefetch,
Mixtral (copy-bound) is within 2.3%; OLMoE decodes 1.4-2x slower live than emulated: the prefetching
runtime's host cost per prefetch copy (watchdog thread, GIL, ~118 copies per step) is not in the model.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
from pathlib import Path

import attrs
import pytest

from emu.errors import EmuError
from emu.models import get_preset
from emu.profile import expert_curve, load_profile
from live.runtime_cal import apply_runtime_overheads, derived_overheads
from live.validate import Validation, error_summary, load_live_run, validate_paired, validate_run
from live.validate_cli import add_parser, is_run_record, validate_dir

GOLDEN = Path(__file__).parent / "golden" / "live"
PROFILE = GOLDEN / "h100-lease.toml"
CALS = sorted(GOLDEN.glob("*_runtime_cal*.json"))

#: (median, max) |relative error| allowed per timed metric, runs without prefetch; measured 1.6/3.3%, 8.1/18.4%
TOLERANCE = {"ttft_s": (0.05, 0.05), "decode_tok_s": (0.10, 0.20)}
#: Mixtral (copy-bound at 5% and 25%) with or without prefetch, decode; measured median 4.1%, max 9.1% below 100%
MIXTRAL_BELOW_100 = 0.10
#: OLMoE with next-layer prefetch: the emulator is too fast by this much (measured +43% to +98%); a known gap
OLMOE_PREFETCH_GAP = (0.30, 1.10)


def golden_records() -> list[Path]:
    return [p for p in sorted(GOLDEN.glob("*.json")) if is_run_record(p)]


@pytest.fixture(scope="module")
def validations() -> list:
    return validate_dir(golden_records(), PROFILE, CALS)


def test_matrix_is_complete() -> None:
    tags = {p.stem for p in golden_records()}
    want = {f"{m}_{f}pct_{e}" for m in ("olmoe", "mixtral") for f in (5, 25, 100) for e in ("lru", "least_stale")}
    want |= {f"{m}_{f}pct_{e}_next_layer" for m in ("olmoe", "mixtral") for f in (5, 25)
             for e in ("lru", "least_stale")}
    assert tags == want
    for p in golden_records():
        rec = json.loads(p.read_text())
        assert rec["rounds"] == 3 and rec["prefetch"] == ("next-layer" if p.stem.endswith("next_layer") else "none")


def test_counts_match_the_runtime_exactly(validations: list) -> None:
    """Without prefetch every count is exact; with next-layer the decisions (issued, useful, dropped) are
    exact at 5%, and at 25% within a few copies: whether an unneeded prefetch is still in flight (so not
    evictable) at a decision depends on real against emulated timing."""
    for v in validations:
        if v.prefetch == "none" or "_5pct_" in v.tag:
            assert v.counts_equal, v.tag
            assert v.metric("bytes_h2d").error == 0.0, v.tag
            assert v.metric("hit_rate").error == 0.0, v.tag
        else:
            assert abs(v.metric("bytes_h2d").error) <= 0.005, v.tag
            assert abs(v.metric("hit_rate").error) <= 0.005, v.tag


def test_timing_errors_within_tolerance(validations: list) -> None:
    summary = error_summary([v for v in validations if v.prefetch == "none"])
    for name, (med_tol, max_tol) in TOLERANCE.items():
        med, mx = summary[name]
        assert med <= med_tol, f"{name}: median |error| {med:.3f} > {med_tol}"
        assert mx <= max_tol, f"{name}: max |error| {mx:.3f} > {max_tol}"


def test_copy_bound_mixtral_within_ten_percent(validations: list) -> None:
    for v in validations:
        if v.tag.startswith("mixtral") and "_100pct_" not in v.tag:
            for name in ("ttft_s", "decode_tok_s"):
                err = v.metric(name).error
                assert abs(err) <= MIXTRAL_BELOW_100, f"{v.tag} {name}: error {err:+.3f}"


def test_olmoe_prefetch_gap_is_what_the_docs_say(validations: list) -> None:
    """The known gap stays known: if the runtime or the model changes it, docs/validation.md must too."""
    lo, hi = OLMOE_PREFETCH_GAP
    for v in validations:
        if v.tag.startswith("olmoe") and v.prefetch != "none":
            assert lo <= v.metric("decode_tok_s").error <= hi, v.tag


def test_the_median_statistic_is_worse_and_recorded(validations: list) -> None:
    """Every record keeps the median of its rounds beside the best; compared by medians, TTFT misses
    (the shared host's slow pace in some rounds), which is why the matrix compares best rounds."""
    med = validate_dir(golden_records(), PROFILE, CALS, statistic="median")
    none = [v for v in med if v.prefetch == "none"]
    assert error_summary(none)["ttft_s"][1] > TOLERANCE["ttft_s"][1]
    for p in golden_records():
        rec = json.loads(p.read_text())
        assert rec["decode_tok_s"] == max(rec["decode_tok_s_rounds"])
        assert rec["decode_tok_s_median"] == pytest.approx(statistics.median(rec["decode_tok_s_rounds"]))
        assert rec["ttft_s"] == min(rec["ttft_samples_s"])


def test_runtime_calibration_is_what_closes_the_decode_gap() -> None:
    """Without the live runtime's measured host cost the emulator is far too fast on decode (median
    error 27% here, against 8.1% with it): the guard that a change dropping the calibration is caught."""
    plain = validate_dir(golden_records(), PROFILE, [])
    med, _ = error_summary([v for v in plain if v.prefetch == "none"])["decode_tok_s"]
    assert med > 0.2


def test_runtime_overheads_derivation() -> None:
    profile = load_profile(PROFILE)
    cal = json.loads((GOLDEN / "olmoe_runtime_cal.json").read_text())
    spec = get_preset("olmoe-1b-7b")
    layer, floor = derived_overheads(profile, spec, cal)
    per_expert = (cal["full_step_s"] - cal["no_experts_step_s"]) / (cal["n_layers"] * cal["top_k"])
    assert floor == pytest.approx(per_expert)
    assert 0 < layer < cal["no_experts_step_s"] / cal["n_layers"]
    applied = apply_runtime_overheads(profile, spec, cal)
    assert applied.models[spec.name].layer_overhead_s == pytest.approx(layer)
    curve = expert_curve(applied, spec, "bf16")
    # the device-only curve the calibration measured, raised to the runtime's floor (not the calibration's
    # back-to-back pace, its own harness's launch cost)
    device = profile.provenance["expert_bf16_device"][spec.name]
    assert curve.tokens == tuple(float(t) for t in device["tokens"])
    assert curve.seconds == tuple(max(float(s), floor) for s in device["seconds"])
    assert min(curve.seconds) == floor
    no_device = attrs.evolve(profile, provenance={})
    assert expert_curve(apply_runtime_overheads(no_device, spec, cal), spec, "bf16").seconds == tuple(
        max(s, floor) for s in expert_curve(profile, spec, "bf16").seconds)
    with pytest.raises(EmuError, match="positive number"):
        derived_overheads(profile, spec, dict(cal, full_step_s=-1.0), file="cal.json")


def test_copy_issue_cost_from_the_runtime_calibration_slows_copying_runs_only(tmp_path: Path) -> None:
    """`copy_issue_s` reaches the emulator through the runtime calibration: a run that copies (OLMoE
    25%, ~80 copies per step, host-paced) decodes slower; at 100% the few copies are compulsory misses the
    compute waits for anyway, so the decode does not change; a bad value names the key."""
    cal = json.loads((GOLDEN / "olmoe_runtime_cal.json").read_text())
    assert "copy_issue_s" not in cal  # written before the figure existed: the profile's value (0) stands
    profile = load_profile(PROFILE)
    spec = get_preset("olmoe-1b-7b")
    assert apply_runtime_overheads(profile, spec, cal).models[spec.name].copy_issue_s is None
    assert apply_runtime_overheads(profile, spec, dict(cal, copy_issue_s=1e-4)).models[spec.name].copy_issue_s == 1e-4
    with pytest.raises(EmuError, match="copy_issue_s"):
        apply_runtime_overheads(profile, spec, dict(cal, copy_issue_s=-1.0), file="cal.json")
    both = apply_runtime_overheads(profile, spec, dict(cal, copy_issue_s=4e-5, prefetch_issue_s=7e-5))
    assert (both.models[spec.name].copy_issue_s, both.models[spec.name].prefetch_issue_s) == (4e-5, 7e-5)
    with pytest.raises(EmuError, match="prefetch_issue_s"):
        apply_runtime_overheads(profile, spec, dict(cal, prefetch_issue_s="fast"), file="cal.json")
    assert apply_runtime_overheads(profile, spec, cal).models[spec.name].launch_ahead_s is None
    ahead = apply_runtime_overheads(profile, spec, dict(cal, launch_ahead_s=1.5e-3))
    assert ahead.models[spec.name].launch_ahead_s == 1.5e-3
    with pytest.raises(EmuError, match="launch_ahead_s"):
        apply_runtime_overheads(profile, spec, dict(cal, launch_ahead_s=-1.0), file="cal.json")
    runs = [GOLDEN / "olmoe_25pct_lru.json", GOLDEN / "olmoe_100pct_lru.json"]
    cal_path = GOLDEN / "olmoe_runtime_cal.json"
    base = {v.tag: v for v in validate_dir(runs, PROFILE, [cal_path])}
    issue_path = tmp_path / "olmoe_runtime_cal.json"
    issue_path.write_text(json.dumps(dict(cal, copy_issue_s=1e-4)))
    slow = {v.tag: v for v in validate_dir(runs, PROFILE, [issue_path])}
    b25, s25 = base["olmoe_25pct_lru"], slow["olmoe_25pct_lru"]
    assert s25.metric("decode_tok_s").emulated < 0.95 * b25.metric("decode_tok_s").emulated
    assert s25.emu_counts == b25.emu_counts
    assert slow["olmoe_100pct_lru"].metric("decode_tok_s").emulated == pytest.approx(
        base["olmoe_100pct_lru"].metric("decode_tok_s").emulated, rel=1e-9)


def test_load_live_run_rejects_bad_records(tmp_path: Path) -> None:
    src = GOLDEN / "mixtral_5pct_lru.json"
    rec = json.loads(src.read_text())
    shutil.copy(GOLDEN / rec["trace"], tmp_path / rec["trace"])
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({k: v for k, v in rec.items() if k != "slots"}))
    with pytest.raises(EmuError, match="slots"):
        load_live_run(bad)
    bad.write_text(json.dumps(dict(rec, trace_fingerprint="0000")))
    with pytest.raises(EmuError, match="fingerprint"):
        load_live_run(bad)
    bad.write_text(json.dumps(dict(rec, trace="missing.npz")))
    with pytest.raises(EmuError, match="not found"):
        load_live_run(bad)
    bad.write_text("[1, 2]")
    with pytest.raises(EmuError, match="JSON object"):
        load_live_run(bad)


def _cli(argv: list[str]) -> int:
    p = argparse.ArgumentParser()
    add_parser(p.add_subparsers())
    args = p.parse_args(["validate", *argv])
    return args.func(args)


def test_cli_from_live_writes_the_comparison(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = tmp_path / "runs"
    d.mkdir()
    for name in ("mixtral_5pct_lru.json", "mixtral_5pct_lru.npz", "mixtral_runtime_cal.json", "h100-lease.toml"):
        shutil.copy(GOLDEN / name, d / name)
    out = tmp_path / "val.json"
    assert _cli(["--from-live", str(d), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "mixtral_5pct_lru" in text and "runtime calibration" in text and "statistic: best (1 runs)" in text
    got = json.loads(out.read_text())
    row = got["runs"][0]
    assert row["counts_equal"] is True and row["statistic"] == "best"
    rec = json.loads((d / "mixtral_5pct_lru.json").read_text())
    assert row["decode_tok_s"]["measured"] == rec["decode_tok_s"]
    assert abs(row["decode_tok_s"]["error"]) <= MIXTRAL_BELOW_100 and "round_errors" not in row


def test_cli_shows_each_rounds_error_of_paired_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = tmp_path / "runs"
    d.mkdir()
    src = GOLDEN / "lockstep_mixtral"
    for name in ("mixtral_25pct_lru.json", "mixtral_25pct_lru.npz", "h100-lease.toml"):
        shutil.copy(src / name, d / name)
    out = tmp_path / "val.json"
    assert _cli(["--from-live", str(d), "--rounds", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    row = json.loads(out.read_text())["runs"][0]
    errs = row["round_errors"]["decode_tok_s"]
    assert len(errs) == 2 and len(row["round_errors"]["ttft_s"]) == 2
    assert row["decode_tok_s"]["error"] in errs  # paired: the round of median error (the upper of two)
    assert "rounds: ttft_s " in text and "/".join(f"{100 * e:+.1f}%" for e in errs) in text
    assert _cli(["--from-live", str(d)]) == 0
    assert "rounds:" not in capsys.readouterr().out  # only when asked


def test_cli_bad_input(tmp_path: Path) -> None:
    with pytest.raises(EmuError, match="directory"):
        _cli(["--from-live", str(tmp_path / "nope")])
    with pytest.raises(EmuError, match="no offloaded live run"):
        _cli(["--from-live", str(tmp_path)])
    with pytest.raises(EmuError, match="at least one scenario"):
        _cli([])
    (tmp_path / "x.json").write_text(json.dumps({"offload": True, "stats": {}, "trace": "t.npz"}))
    with pytest.raises(EmuError, match="profiles"):
        _cli(["--from-live", str(tmp_path)])


# --- the same OLMoE matrix after the runtime's prefetch rework (tests/golden/live/pump, another lease) ---
PUMP = GOLDEN / "pump"


@pytest.fixture(scope="module")
def pump_validations() -> list:
    records = [p for p in sorted(PUMP.glob("*.json")) if is_run_record(p)]
    return validate_dir(records, PUMP / "h100-lease.toml", sorted(PUMP.glob("*_runtime_cal*.json")))


def test_pump_runtime_narrows_the_olmoe_prefetch_gap(pump_validations: list, validations: list) -> None:
    """With the forward thread submitting prefetches at its checkpoints (no second Python thread per copy),
    OLMoE with next-layer is within 45% of the emulator (+11.5% to +43.8% since the expert curve is the
    calibration's device-only one raised to the runtime floor; +10% to +38% with its back-to-back pace),
    median 18%, against +43% to +98% before, median 72%; without prefetch the runs stay exact in counts."""
    assert len(pump_validations) == 10
    before = [v.metric("decode_tok_s").error for v in validations if v.tag.startswith("olmoe") and v.prefetch != "none"]
    after = [v.metric("decode_tok_s").error for v in pump_validations if v.prefetch != "none"]
    assert max(after) <= 0.45 and statistics.median(after) < statistics.median(before) / 2
    none = [v for v in pump_validations if v.prefetch == "none"]
    assert all(v.counts_equal for v in none)
    summary = error_summary(none)
    assert summary["ttft_s"][1] <= 0.16 and summary["decode_tok_s"][1] <= 0.23


def test_pump_runtime_decides_as_the_emulator_at_25pct_not_at_5pct(pump_validations: list) -> None:
    """Later prefetch submission (nobody submits while the forward thread runs attention) leaves prefetches in
    flight, hence not evictable, for longer: at 25% the decisions still equal the emulator's; at 5% (51 slots)
    the live runtime drops thousands of prefetches the emulator issues (a timing-dependent decision)."""
    by = {v.tag: v for v in pump_validations}
    for ev in ("lru", "least_stale"):
        assert by[f"olmoe_25pct_{ev}_next_layer"].counts_equal
        v = by[f"olmoe_5pct_{ev}_next_layer"]
        assert not v.counts_equal and v.live_prefetch[2] > 5 * max(v.emu_prefetch[2], 1)


# --- the current runtime: the watchdog task also drains during attention (tests/golden/live/drain) ---
DRAIN = GOLDEN / "drain"


def test_drain_runtime_decides_as_the_emulator_everywhere_at_a_host_cost() -> None:
    """Draining the queue from the end of each layer's experts to the next readback keeps the copy engine
    as busy as the emulator's, so every count and prefetch decision is equal again, 5% included; the
    watchdog's thread then competes with attention for the GIL: next-layer decode +41% to +64% (measured)."""
    records = [p for p in sorted(DRAIN.glob("*.json")) if is_run_record(p)]
    vals = validate_dir(records, DRAIN / "h100-lease.toml", sorted(DRAIN.glob("*_runtime_cal*.json")))
    assert len(vals) == 10 and all(v.counts_equal for v in vals)
    for v in vals:
        if v.prefetch != "none":
            assert v.live_prefetch[:3] == v.emu_prefetch[:3] and 0.35 <= v.metric("decode_tok_s").error <= 0.70
    summary = error_summary([v for v in vals if v.prefetch == "none"])
    assert summary["ttft_s"][1] <= 0.16 and summary["decode_tok_s"][1] <= 0.23


# --- bulk hand-over + host cost per copy (tests/golden/live/bulk, lease of commit 2e6c88f) ----------
BULK = GOLDEN / "bulk"


def _lease(d: Path, statistic: str = "best") -> list:
    records = [p for p in sorted(d.glob("*.json")) if is_run_record(p)]
    return validate_dir(records, d / "h100-lease.toml", sorted(d.glob("*_runtime_cal*.json")), statistic=statistic)


def test_bulk_handover_closes_most_of_the_prefetch_gap() -> None:
    """The watchdog task submits the whole queue once per hand-over (not one wake per copy) and the
    emulator charges the measured host time per copy issued (~30-56 us): OLMoE next-layer decode is
    +1.0% to +15.3% (measured; +41% to +64% with the per-copy drain, tests/golden/live/drain), every
    count and prefetch decision equal to the emulator's."""
    vals = _lease(BULK)
    assert len(vals) == 10 and all(v.counts_equal for v in vals)
    for p in BULK.glob("olmoe_*pct*.json"):
        assert json.loads(p.read_text())["handover"] == "bulk"
    gaps = [v.metric("decode_tok_s").error for v in vals if v.prefetch != "none"]
    assert len(gaps) == 4 and all(-0.05 <= g <= 0.20 for g in gaps)
    summary = error_summary(vals)
    assert summary["ttft_s"][0] <= 0.05 and summary["ttft_s"][1] <= 0.06  # measured 2.9% / 5.1%
    assert summary["decode_tok_s"][0] <= 0.10 and summary["decode_tok_s"][1] <= 0.20  # measured 8.5% / 17.6%
    cal = json.loads((BULK / "olmoe_runtime_cal_next_layer.json").read_text())
    assert 1e-5 < cal["copy_issue_s"] < 1e-4  # measured on the GPU, min of the rounds


# --- a calibration before every run, compared pairwise (tests/golden/live/paired, commit aa14289) ---
PAIRED = GOLDEN / "paired"


def test_paired_statistic_reports_the_round_of_median_error() -> None:
    vals = {v.tag: v for v in _lease(PAIRED, "paired")}
    assert len(vals) == 10 and all(v.counts_equal for v in vals.values())
    run = load_live_run(PAIRED / "olmoe_25pct_lru_next_layer.json")
    profile = load_profile(PAIRED / "h100-lease.toml")
    spec = get_preset("olmoe-1b-7b")
    rec = run.record
    errors = []
    for cal, rate in zip(rec["runtime_cal_rounds"], rec["decode_tok_s_rounds"]):
        emulated = validate_run(run, apply_runtime_overheads(profile, spec, cal)).metric("decode_tok_s").emulated
        errors.append((emulated - rate) / rate)
    got = vals["olmoe_25pct_lru_next_layer"].metric("decode_tok_s")
    assert got.measured in rec["decode_tok_s_rounds"]
    assert got.error == pytest.approx(sorted(errors)[1], rel=1e-9)
    rounds = dict(vals["olmoe_25pct_lru_next_layer"].round_errors)
    assert rounds["decode_tok_s"] == pytest.approx(errors, rel=1e-9) and len(rounds["ttft_s"]) == 3
    # this lease was noisy (100% calibration steps 47-78 ms): paired TTFT 8.1% / 20.5%, decode 10.1% / 46.4%
    # (9.2% median with the calibration's back-to-back expert pace instead of its device-only curve)
    summary = error_summary(list(vals.values()))
    assert summary["ttft_s"][0] <= 0.10 and summary["decode_tok_s"][0] <= 0.11


def test_paired_needs_a_calibration_per_round() -> None:
    with pytest.raises(EmuError, match="one runtime calibration") as err:
        validate_paired(load_live_run(BULK / "olmoe_5pct_lru.json"), load_profile(BULK / "h100-lease.toml"))
    assert "runtime_cal_rounds" in str(err.value)


# --- the current runtime, both models, paired (paired_pace/: OLMoE, paired_pace_mixtral/: Mixtral-8L,
# --- each its own lease and profile; a host_pace probe around every calibration and run) ------------
def test_current_runtime_matrix_paired() -> None:
    """20 configurations, each round emulated with the calibration taken right before it. Measured:
    TTFT median 2.7%, max 17.4%; decode median 3.1%, max 25.5% (without prefetch 2.7% / 10.5%). The
    medians meet the issue's 5%; the maxima do not (single runs of host-paced decode vary by +-25%)."""
    olmoe = _lease(GOLDEN / "paired_pace", "paired")
    mixtral = _lease(GOLDEN / "paired_pace_mixtral", "paired")
    assert _lease(GOLDEN / "paired_pace", "auto") == olmoe  # the default picks paired for such records
    vals = olmoe + mixtral
    assert len(olmoe) == len(mixtral) == 10
    summary = error_summary(vals)
    assert summary["ttft_s"][0] <= 0.05 and summary["decode_tok_s"][0] <= 0.05
    assert summary["ttft_s"][1] <= 0.20 and summary["decode_tok_s"][1] <= 0.30
    assert error_summary([v for v in vals if v.prefetch == "none"])["decode_tok_s"][1] <= 0.12
    # bulk hand-over in a copy-bound regime (Mixtral 25%, 6.4 ms per copy): prefetches submitted at the
    # hand-over are still on the stream at the next gate, whose demand copies the emulator puts first
    differ = sorted(v.tag for v in vals if not v.counts_equal)
    assert differ == ["mixtral_25pct_least_stale_next_layer", "mixtral_25pct_lru_next_layer"]
    for rec in (GOLDEN / "paired_pace").glob("olmoe_*pct*.json"):
        cals = json.loads(rec.read_text())["runtime_cal_rounds"]
        assert all(c["pace_s"] > 0 and c["run_pace_s"] > 0 for c in cals)


# --- the "auto" hand-over (bounded for Mixtral's 6.4 ms copies, bulk for OLMoE's 0.23 ms), the runtime
# --- calibration's mean step, 4 cold prefills per round (auto_mixtral/, auto_olmoe/: one lease each) -------
def test_auto_handover_mixtral_meets_the_targets_and_decides_as_the_emulator() -> None:
    """Mixtral-8L, 10 configurations, paired: TTFT 1.8% / 3.5%, decode 4.1% / 7.1% (median / max). With
    the bulk hand-over (paired_pace_mixtral/) 25% next-layer made 1759 copies against the emulator's 1557."""
    vals = _lease(GOLDEN / "auto_mixtral", "paired")
    assert len(vals) == 10
    summary = error_summary(vals)
    assert summary["ttft_s"][0] <= 0.05 and summary["ttft_s"][1] <= 0.10
    assert summary["decode_tok_s"][0] <= 0.05 and summary["decode_tok_s"][1] <= 0.10
    for v in vals:
        rec = json.loads((GOLDEN / "auto_mixtral" / f"{v.tag}.json").read_text())
        assert rec["handover"] == "auto" and rec["handover_used"] == (None if v.prefetch == "none" else "bounded")
        live_hits, live_acc, live_copies = v.live_counts
        emu_hits, emu_acc, emu_copies = v.emu_counts
        assert live_hits == emu_hits and live_acc == emu_acc  # every hit and miss equal
        assert abs(live_copies - emu_copies) <= 1  # one prefetch decided on a copy that landed a moment apart
        if v.prefetch != "none":
            assert all(abs(a - b) <= 1 for a, b in zip(v.live_prefetch, v.emu_prefetch))


def test_auto_handover_olmoe_counts_equal_timing_host_paced() -> None:
    """OLMoE (bulk under "auto"), paired: TTFT 5.3% / 19.7%, decode 8.4% / 18.2%; every count and
    prefetch decision equal. A noisy lease: the calibrations' own 15 steps spread by up to 40%."""
    vals = _lease(GOLDEN / "auto_olmoe", "paired")
    assert len(vals) == 10 and all(v.counts_equal for v in vals)
    summary = error_summary(vals)
    assert summary["ttft_s"][1] <= 0.25 and summary["decode_tok_s"][1] <= 0.25
    for rec in (GOLDEN / "auto_olmoe").glob("olmoe_*pct*next_layer.json"):
        assert json.loads(rec.read_text())["handover_used"] == "bulk"


def test_bounded_handover_costs_olmoe_its_short_copies() -> None:
    """Why "auto" keeps bulk for OLMoE: the bounded hand-over (bounded_olmoe/, its own lease) drains the
    copies it holds back one wake each, and with 0.23 ms copies the engine idles between them: every
    next-layer run decoded 11.6% to 36.3% slower than emulated (counts still equal)."""
    vals = _lease(GOLDEN / "bounded_olmoe", "paired")
    assert len(vals) == 10 and all(v.counts_equal for v in vals)
    nl = [v for v in vals if v.prefetch != "none"]
    assert len(nl) == 4 and all(v.metric("decode_tok_s").error > 0.10 for v in nl)


# --- the current runtime (session 4): "auto" hand-over and "auto" calibration. OLMoE (0.23 ms copies: bulk,
# --- calibration interleaved with the run, interleaved_olmoe/), Mixtral-8L (6.4 ms: bounded, before: auto_mixtral/)
def _matrix(olmoe_dir: str, mixtral_dir: str) -> tuple[list, list, dict]:
    """Both models' 10 paired validations, each from its own lease, and their summary over the 20."""
    olmoe = _lease(GOLDEN / olmoe_dir, "paired")
    mixtral = _lease(GOLDEN / mixtral_dir, "paired")
    assert len(olmoe) == len(mixtral) == 10
    return olmoe, mixtral, error_summary(olmoe + mixtral)


def _current_matrix(olmoe_dir: str, mixtral_dir: str, ttft_max: float, decode_max: float) -> tuple[list, list]:
    """A matrix of the runtime with the inline (OLMoE) and bounded (Mixtral) hand-overs: medians within 5%,
    maxima within the given bounds, every OLMoE count equal, and Mixtral's counts equal but for 25%
    next-layer (the bounded hand-over's decisions follow when copies land)."""
    olmoe, mixtral, summary = _matrix(olmoe_dir, mixtral_dir)
    assert summary["ttft_s"][0] <= 0.05 and summary["ttft_s"][1] <= ttft_max
    assert summary["decode_tok_s"][0] <= 0.05 and summary["decode_tok_s"][1] <= decode_max
    assert all(v.counts_equal for v in olmoe)
    assert sorted(v.tag for v in mixtral if not v.counts_equal) == [
        "mixtral_25pct_least_stale_next_layer", "mixtral_25pct_lru_next_layer"]
    return olmoe, mixtral


def test_current_runtime_matrix() -> None:
    """20 configurations, paired. Measured: TTFT median 3.2%, max 25.8%; decode median 4.7%, max 24.1%;
    without prefetch decode 3.9% / 7.6% (the interleaved calibration took OLMoE's from +-15% to within 7.6%).
    Left: OLMoE next-layer decode +11.5% to +24.1% (host work per prefetch the runtime calibration, with every
    expert resident, never sees) and OLMoE TTFT (a prefill is one host-paced sample: -25.8% to +7.0%)."""
    olmoe, mixtral, summary = _matrix("interleaved_olmoe", "auto_mixtral")
    vals = olmoe + mixtral
    assert summary["ttft_s"][0] <= 0.05 and summary["decode_tok_s"][0] <= 0.05
    assert error_summary([v for v in vals if v.prefetch == "none"])["decode_tok_s"][1] <= 0.10
    assert all(v.counts_equal for v in olmoe)
    nl = [v for v in olmoe if v.prefetch != "none"]
    assert all(0.10 < v.metric("decode_tok_s").error < 0.30 for v in nl)  # the emulator too fast: a missing cost
    for rec in (GOLDEN / "interleaved_olmoe").glob("olmoe_*pct*.json"):
        r = json.loads(rec.read_text())
        assert r["calibration"] == "interleaved"
        assert all(c["calibration"] == "interleaved" and len(c["parts"]) == 4 for c in r["runtime_cal_rounds"])


def test_interleaved_calibration_disturbs_long_copies() -> None:
    """Why "auto" calibrates Mixtral before the run: interleaved (interleaved_mixtral/, one round), the copies in
    flight at a calibration part land during it, and 25% next-layer decides on other landings (copies 1588 and
    1566 against the emulator's 1557 and 1546; 1558 and 1547 with the calibration before, auto_mixtral/)."""
    vals = {v.tag: v for v in _lease(GOLDEN / "interleaved_mixtral", "paired")}
    assert len(vals) == 10
    for tag in ("mixtral_25pct_lru_next_layer", "mixtral_25pct_least_stale_next_layer"):
        assert not vals[tag].counts_equal and abs(vals[tag].live_counts[2] - vals[tag].emu_counts[2]) >= 15
    assert all(v.counts_equal for t, v in vals.items() if "25pct" not in t or "next_layer" not in t)


# --- session 5: the "inline" hand-over (OLMoE), decode rows without an upload, prefetch_issue_s, and the runtime
# --- calibration in lockstep with the run. Each directory its own lease and profile ------------------------
def _round_errors(d: Path, tag: str) -> tuple[float, ...]:
    """Decode-rate error of each round of one run, emulated with that round's own calibration."""
    v = validate_paired(load_live_run(d / f"{tag}.json"), load_profile(d / "h100-lease.toml"))
    return dict(v.round_errors)["decode_tok_s"]


def test_inline_handover_spares_olmoe_the_watchdog_wake() -> None:
    """OLMoE next-layer, one lease, bulk then inline (nextlayer_bulk/, nextlayer_inline/, 3 rounds each): the
    bulk task's thread used 0.21-1.3 s of CPU per 4-6 s run (the GIL the forward thread waited for); inline
    uses none. Decode error, paired: bulk median 11.3% / max 13.9%, inline 11.0% / 17.6% (with the
    calibration's back-to-back expert pace, before its device-only curve: 11.0% / 12.9% and 7.1% / 15.7%);
    every count equal."""
    bulk = _lease(GOLDEN / "nextlayer_bulk", "paired")
    inline = _lease(GOLDEN / "nextlayer_inline", "paired")
    assert len(bulk) == len(inline) == 4 and all(v.counts_equal for v in bulk + inline)
    for d, used in (("nextlayer_bulk", "bulk"), ("nextlayer_inline", "inline")):
        for p in (GOLDEN / d).glob("olmoe_*pct*.json"):
            rec = json.loads(p.read_text())
            assert rec["handover_used"] == used
            cpu = rec["watchdog_cpu_s_rounds"]
            assert all(c > 0.15 for c in cpu) if used == "bulk" else all(c == 0.0 for c in cpu)
    med = {name: error_summary(vals)["decode_tok_s"][0] for name, vals in (("bulk", bulk), ("inline", inline))}
    assert med["inline"] < med["bulk"]


def test_lockstep_calibration_takes_the_host_pace_out_of_the_rounds() -> None:
    """The same runtime (inline, prefetch_issue_s), calibrated in 4 parts between chunks of the run
    (chunked_olmoe/) and in lockstep, one step per mode before each of the run's (lockstep_olmoe/): the
    spread of a run's decode error over its 3 rounds went from up to 23.7 points to at most 5.3."""
    spread = {}
    for d in ("chunked_olmoe", "lockstep_olmoe"):
        tags = [p.stem for p in sorted((GOLDEN / d).glob("olmoe_*pct*.json"))]
        assert len(tags) == 10
        spread[d] = max(max(e) - min(e) for e in (_round_errors(GOLDEN / d, t) for t in tags))
    assert spread["lockstep_olmoe"] < 0.07 and spread["chunked_olmoe"] > 0.20
    for p in (GOLDEN / "lockstep_olmoe").glob("olmoe_*pct*.json"):
        for c in json.loads(p.read_text())["runtime_cal_rounds"]:
            assert c["calibration"] == "interleaved" and len(c["full_steps_s"]) == 64 and "parts" not in c
            if "next_layer" in p.stem:
                assert 1e-5 < c["copy_issue_s"] < 1e-4 and 1e-5 < c["prefetch_issue_s"] < 1e-4  # measured, both


def test_current_runtime_matrix_session5() -> None:
    """20 configurations, paired (lockstep_olmoe/ + lockstep_mixtral/). Measured: TTFT median 1.9%, max 7.9%;
    decode median 3.7%, max 10.8%. Left (both systematic now that the rounds agree): OLMoE next-layer decode
    +7.3..+10.8% (the emulator too fast, ~5 ms per step at 5% and 25% alike), and runs that wait for demand
    copies -4..-8% (the emulator too slow: it puts the host's launch time of the next layer after the copy,
    where the live host launches it while the GPU waits)."""
    # Mixtral's bounded hand-over decides on landings: round 0 of 25% next-layer 341/347 hits vs 349/352
    olmoe, mixtral = _current_matrix("lockstep_olmoe", "lockstep_mixtral", ttft_max=0.10, decode_max=0.11)
    for v in olmoe:
        err = v.metric("decode_tok_s").error
        assert (0.05 < err < 0.12) if v.prefetch != "none" else abs(err) < 0.07
    for v in mixtral:  # copy-bound without prefetch: the emulator too slow (the host's launches overlap copies)
        if v.prefetch == "none" and "100pct" not in v.tag:
            assert -0.10 < v.metric("decode_tok_s").error < -0.04
    for p in (GOLDEN / "lockstep_mixtral").glob("mixtral_*pct*.json"):
        rec = json.loads(p.read_text())
        assert rec["calibration"] == ("before" if rec["prefetch"] != "none" else "interleaved")


def test_before_calibration_leaves_host_paced_mixtral_at_the_hosts_mercy() -> None:
    """Mixtral's 100% runs are host-paced (20 ms steps): calibrated before the run (before_mixtral/) their two
    rounds erred +14.0% and -17.3% (least-stale); in lockstep (lockstep_mixtral/) +0.5% and -3.0%."""
    before = _round_errors(GOLDEN / "before_mixtral", "mixtral_100pct_least_stale")
    lockstep = _round_errors(GOLDEN / "lockstep_mixtral", "mixtral_100pct_least_stale")
    assert max(before) - min(before) > 0.25 and max(lockstep) - min(lockstep) < 0.05


# --- session 6: the forced routing uploaded once, the launch-ahead credit, the device-only expert curve -------

def _without_launch_ahead(d: Path, tag: str) -> float:
    """A run's paired decode error with `launch_ahead_s` taken out of its calibrations (no credit)."""
    run = load_live_run(d / f"{tag}.json")
    rec = dict(run.record, runtime_cal_rounds=[{k: v for k, v in c.items() if k != "launch_ahead_s"}
                                               for c in run.record["runtime_cal_rounds"]])
    return validate_paired(attrs.evolve(run, record=rec), load_profile(d / "h100-lease.toml")).metric(
        "decode_tok_s").error


def test_current_runtime_matrix_session6() -> None:
    """20 configurations, paired (ahead_olmoe/ + ahead_mixtral/, each its own lease and profile). Measured:
    TTFT median 1.6%, max 6.4%; decode median 4.3%, max 13.1% (OLMoE 5% lru next-layer). Mixtral decode
    within -0.1..+5.3%, OLMoE without prefetch +0.3..+7.6%, OLMoE next-layer +5.5..+13.1% (the emulator
    too fast: the one bias left)."""
    # Mixtral's bounded hand-over decides on landings: 25% next-layer's copies 1534/1542 vs 1533/1541
    olmoe, mixtral = _current_matrix("ahead_olmoe", "ahead_mixtral", ttft_max=0.07, decode_max=0.14)
    assert all(abs(v.metric("decode_tok_s").error) <= 0.06 for v in mixtral)
    for v in olmoe:
        err = v.metric("decode_tok_s").error
        assert (0.05 < err < 0.14) if v.prefetch != "none" else abs(err) < 0.08
    for p in (GOLDEN / "ahead_olmoe").glob("olmoe_*pct*.json"):
        for c in json.loads(p.read_text())["runtime_cal_rounds"]:
            assert c["calibration"] == "interleaved" and 8e-4 < c["launch_ahead_s"] < 2e-3  # measured per round


def test_launch_ahead_takes_the_copy_waits_off_the_next_dense_job() -> None:
    """Runs that wait for demand copies: the host launches the next layer's attention, norms and router while
    the GPU waits, so the wait comes off the next dense job, up to `launch_ahead_s`. Without that credit
    Mixtral 25%/5% without prefetch were emulated 6.0-7.4% too slow (as in every earlier lease); with it
    +1.7..+3.0%."""
    d = GOLDEN / "ahead_mixtral"
    vals = {v.tag: v for v in _lease(d, "paired")}
    for tag in ("mixtral_25pct_lru", "mixtral_25pct_least_stale", "mixtral_5pct_lru", "mixtral_5pct_least_stale"):
        without = _without_launch_ahead(d, tag)
        assert -0.08 < without < -0.055
        assert 0.0 < vals[tag].metric("decode_tok_s").error < 0.035
    # the 100% runs wait for no copy after the prefill: the credit changes their decode nothing
    assert _without_launch_ahead(d, "mixtral_100pct_lru") == pytest.approx(
        vals["mixtral_100pct_lru"].metric("decode_tok_s").error, abs=1e-9)


def test_prefetch_issue_with_the_layers_checkpoints_session6() -> None:
    """OLMoE next-layer again in a third lease (ahead_olmoe_nl/), its prefetch issue calibration paying the
    layer's pump checkpoints while the prefetches are queued: 52-76 us per prefetch (31-62 us without them,
    ahead_olmoe/). Decode +6.8..+9.8% (every round +4.8..+10.2%), counts equal. This lease's prefills were
    slow against their calibration (a prefill is not in lockstep with one): 5% TTFT -27.0/-29.2%."""
    vals = _lease(GOLDEN / "ahead_olmoe_nl", "paired")
    assert len(vals) == 4 and all(v.counts_equal for v in vals)
    assert all(0.05 < v.metric("decode_tok_s").error < 0.10 for v in vals)
    issue = [c["prefetch_issue_s"] for p in (GOLDEN / "ahead_olmoe_nl").glob("olmoe_*pct*.json")
             for c in json.loads(p.read_text())["runtime_cal_rounds"]]
    assert min(issue) > 5e-5 and max(issue) < 8e-5


def test_current_runtime_olmoe_again_session6() -> None:
    """The whole OLMoE matrix once more on the final code of session 6 (ahead_olmoe_final/, a fourth lease;
    with ahead_mixtral/: TTFT median 1.5%, max 24.2%; decode 4.0% / 13.0%). Decode without prefetch
    +0.9..+4.9%, next-layer +8.0..+13.0% (the bias left); TTFT -1.2..-24.2%, every run's emulated prefill
    faster than its live one: the prefill is one host-paced sample, and its calibration (the decode steps')
    is not of its moment."""
    vals = _lease(GOLDEN / "ahead_olmoe_final", "paired")
    assert len(vals) == 10 and all(v.counts_equal for v in vals)
    for v in vals:
        err = v.metric("decode_tok_s").error
        assert (0.07 < err < 0.14) if v.prefetch != "none" else 0.0 < err < 0.06
        assert -0.26 < v.metric("ttft_s").error < 0.0
    summary = error_summary(vals)
    assert summary["decode_tok_s"][0] <= 0.05


# --- session 7: one copy per expert, the issue costs taken in the pass (the copying mode) -----------------------

def _issue_from_loops(d: Path, tag: str) -> Validation:
    """A run's paired validation with its copying mode's figures replaced by the loops' (`prefill_*`: what
    the calibration measured before the copying mode), for decode and prefill alike."""
    run = load_live_run(d / f"{tag}.json")
    cals = []
    for c in run.record["runtime_cal_rounds"]:
        c = dict(c, copy_issue_s=c["prefill_copy_issue_s"])
        if "prefill_prefetch_issue_s" in c:
            c["prefetch_issue_s"] = c["prefill_prefetch_issue_s"]
        cals.append(c)
    return validate_paired(attrs.evolve(run, record=dict(run.record, runtime_cal_rounds=cals)),
                           load_profile(d / "h100-lease.toml"))


def test_current_runtime_matrix_session7() -> None:
    """20 configurations, paired (insitu_olmoe/: 3 rounds, insitu_mixtral/: 2 rounds, each its own lease and
    profile). OLMoE: TTFT median 1.1%, max 1.5%; decode 2.5% / 5.6%; every count equal. Mixtral: TTFT 1.6% /
    1.9%, decode 4.9% / 16.1%: its 25% next-layer runs (+12.4%, +16.1%) made other decisions round by round
    (the bounded hand-over decides on landings: 1578 and 1633 copies against the emulator's 1541)."""
    olmoe, mixtral, summary = _matrix("insitu_olmoe", "insitu_mixtral")
    assert summary["ttft_s"][0] <= 0.02 and summary["ttft_s"][1] <= 0.02
    assert summary["decode_tok_s"][0] <= 0.05
    assert all(v.counts_equal for v in olmoe)
    assert all(abs(v.metric("decode_tok_s").error) <= 0.06 for v in olmoe)
    off = sorted(v.tag for v in mixtral if abs(v.metric("decode_tok_s").error) > 0.10)
    assert off == ["mixtral_25pct_least_stale_next_layer", "mixtral_25pct_lru_next_layer"]
    assert sorted(v.tag for v in mixtral if not v.counts_equal) == off
    cals = [c for p in (GOLDEN / "insitu_olmoe").glob("olmoe_*pct*.json")
            for c in json.loads(p.read_text())["runtime_cal_rounds"]]
    assert len(cals) == 30 and all(c["issue_from"] == "copying mode" for c in cals)
    # in the pass, with copies streaming, a copy costs the host about twice what the loop measures (22-77 us
    # against 16-48 us; the ratio 0.8-3.5 round by round, median 2.0)
    ratio = statistics.median(c["copy_issue_s"] / c["prefill_copy_issue_s"] for c in cals)
    assert 1.6 < ratio < 2.4


def test_issue_costs_from_the_loops_leave_olmoe_too_fast_session7() -> None:
    """What the copying mode fixed: with the loops' issue costs (hot code, no copies streaming) in decode as
    in prefill, the same OLMoE records decode 4-13% faster in the emulator than live where copies are many."""
    d = GOLDEN / "insitu_olmoe"
    for tag in ("olmoe_5pct_lru_next_layer", "olmoe_25pct_lru_next_layer", "olmoe_5pct_least_stale_next_layer"):
        now = validate_paired(load_live_run(d / f"{tag}.json"), load_profile(d / "h100-lease.toml"))
        loops = _issue_from_loops(d, tag)
        assert loops.metric("decode_tok_s").error > now.metric("decode_tok_s").error + 0.03
        assert loops.metric("ttft_s").error == pytest.approx(now.metric("ttft_s").error, abs=0.005)


def _session8() -> tuple[list, list, list]:
    """OLMoE from session 7's lease (insitu_olmoe/); Mixtral from this session's: the six runs without
    next-layer prefetch from s8_mixtral/ and the four with it from s8_mixtral_nl/ (the bounded hand-over's
    landing-based estimate of the next gate), each lease its own profile and calibrations, 3 rounds each."""
    olmoe = _lease(GOLDEN / "insitu_olmoe", "paired")
    plain = [v for v in _lease(GOLDEN / "s8_mixtral", "paired") if not v.tag.endswith("_next_layer")]
    nl = _lease(GOLDEN / "s8_mixtral_nl", "paired")
    assert (len(olmoe), len(plain), len(nl)) == (10, 6, 4)
    return olmoe, plain, nl


def test_current_runtime_matrix_session8() -> None:
    """The 20 configurations, paired: TTFT median 0.8%, max 2.3%; decode median 1.4%, max 5.6%; every count
    equal but Mixtral 25% next-layer's (hits 357 and 356 live against 357, copies 1543 and 1535 against 1541
    and 1533). Mixtral alone: TTFT 0.6% / 2.3%, decode 0.6% / 4.1%."""
    olmoe, plain, nl = _session8()
    summary = error_summary(olmoe + plain + nl)
    assert summary["ttft_s"][0] <= 0.02 and summary["ttft_s"][1] <= 0.03
    assert summary["decode_tok_s"][0] <= 0.03 and summary["decode_tok_s"][1] <= 0.06
    mixtral = error_summary(plain + nl)
    assert mixtral["decode_tok_s"][0] <= 0.015 and mixtral["decode_tok_s"][1] <= 0.045
    assert all(v.counts_equal for v in olmoe + plain) and all(v.counts_equal for v in nl if "_5pct" in v.tag)
    for v in nl:
        if "25pct" in v.tag:  # within two copies and one hit of the emulator's
            (lh, la, lc), (eh, ea, ec) = v.live_counts, v.emu_counts
            assert la == ea and abs(lh - eh) <= 1 and abs(lc - ec) <= 2


def test_the_old_next_gate_estimate_made_other_decisions_session8() -> None:
    """The same lease's 25% next-layer runs before the bounded hand-over estimated the next gate from the
    copies' landing (s8_mixtral/, the median away span alone): 27-38 copies more than the emulator in every
    round, 12-20 hits fewer; with it (s8_mixtral_nl/) rounds 0 and 2 within 2 copies."""
    old = {v.tag: v for v in _lease(GOLDEN / "s8_mixtral", "paired") if "25pct" in v.tag and "next" in v.tag}
    for tag in ("mixtral_25pct_lru_next_layer", "mixtral_25pct_least_stale_next_layer"):
        rec = json.loads((GOLDEN / "s8_mixtral" / f"{tag}.json").read_text())
        emu_copies = old[tag].emu_counts[2]
        assert all(s["copies"] - emu_copies >= 25 for s in rec["stats_rounds"])
        new = json.loads((GOLDEN / "s8_mixtral_nl" / f"{tag}.json").read_text())
        assert sorted(abs(s["copies"] - emu_copies) <= 14 for s in new["stats_rounds"]) == [False, True, True]


def test_a_lease_without_slow_copy_spells_puts_mixtral_within_three_percent_session8() -> None:
    """s8_mixtral/: the sustained copies measured no slow spell (ratio 1.0); every Mixtral round's decode
    error within 2.8% and TTFT within 1.8%, against up to 5% in session 7's lease, whose copy-bound steps
    met slow spells (insitu_mixtral/: steps 20-55 ms slower, 2-3% of the decode)."""
    prof = load_profile(GOLDEN / "s8_mixtral" / "h100-lease.toml")
    assert prof.copy.sustained_ratio == 1.0
    assert load_profile(GOLDEN / "insitu_mixtral" / "h100-lease.toml").copy.sustained_ratio == 1.0  # not measured
    for v in _lease(GOLDEN / "s8_mixtral", "paired"):
        errs = dict(v.round_errors)
        assert max(abs(e) for e in errs["decode_tok_s"]) <= 0.03
        assert max(abs(e) for e in errs["ttft_s"]) <= 0.02
