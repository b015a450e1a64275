"""A live run is emulated with the copy order of its prefetch hand-over (`live.validate.run_profile`)."""

from __future__ import annotations

from pathlib import Path

import attrs
import pytest

from emu.errors import EmuError
from emu.profile import load_profile
from live.validate import LiveRun, emulate_live, load_live_run, run_profile

ROOT = Path(__file__).resolve().parents[1]
LEASE = ROOT / "validation" / "2026-12-07-h100-lease17-graph-fused-matrix"


def _run(handover: str | None) -> LiveRun:
    return LiveRun("run.json", {"handover": handover}, None)  # type: ignore[arg-type]  # the trace is not read


def test_the_hand_over_sets_the_copy_order() -> None:
    profile = load_profile(ROOT / "scenarios" / "profiles" / "h100-pcie5.toml")
    assert profile.copy.order == "demand-first"
    assert run_profile(_run(None), profile) is profile  # no prefetch: the profile's own
    assert run_profile(_run("auto"), profile) is profile  # an older record: which one ran is not known
    assert run_profile(_run("inline"), profile).copy.order == "submission"
    assert run_profile(_run("bulk"), profile).copy.order == "submission"
    assert run_profile(_run("bounded"), profile).copy.order == "demand-first"
    submission = attrs.evolve(profile, copy=attrs.evolve(profile.copy, order="submission"))
    assert run_profile(_run("drain"), submission).copy.order == "demand-first"
    with pytest.raises(EmuError, match="hand-over") as err:
        run_profile(_run("eventually"), profile)
    assert err.value.key == "handover" and err.value.file == "run.json"


def test_an_inline_prefill_queues_its_demand_copies_behind_the_prefetches() -> None:
    # Qwen3-12L, 25% LRU + next-layer, the H100 of lease 17: the prefill's prefetches (a 128-token prompt predicts
    # most of the next layer) were submitted before the next gate's demand copies, which start after them
    run = load_live_run(LEASE / "runs" / "qwen3-12l-25-lru-nextlayer.json")
    assert run.record["handover"] == "inline"
    profile = load_profile(LEASE / "calibration" / "dev.toml")
    assert profile.copy.order == "demand-first"
    as_run = emulate_live(run, profile)
    forced = attrs.evolve(profile, copy=attrs.evolve(profile.copy, order="submission"))
    assert emulate_live(run, forced).ttft_s == as_run.ttft_s  # the run's order, whatever the profile says
    demand_first = run_profile(_run("bounded"), profile)
    held_back = emulate_live(LiveRun(run.path, {**run.record, "handover": "bounded"}, run.trace), demand_first)
    assert as_run.ttft_s > held_back.ttft_s * 1.05
