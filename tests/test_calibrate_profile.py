"""Profile assembly from raw measurements, the TOML writers, round trips, and run-to-run comparison."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

from calibrate.compare import compare_profiles, numeric_leaves, summarize
from calibrate.profile_writer import SCHEMA, build_profile, raw_path_for, write_profile
from calibrate.toml_emit import dumps, dumps_toml
from emu.errors import EmuError

SIZES = [4096 * 4 ** i for i in range(9)]


def _copy_points(latency: float, bw: float) -> list[dict[str, Any]]:
    out = []
    for s in SIZES:
        t = latency + s / bw
        out.append({"bytes": s, "samples_s": [0.98 * t, t, 1.03 * t], "median_s": t,
                    "issue_s": [t, t, t], "batched_s": 0.9 * t})
    return out


def _pt(x: int, t: float, key: str = "tokens") -> dict[str, Any]:
    return {key: x, "samples_s": [0.99 * t, t, 1.02 * t], "median_s": t, "host_s": [0.5 * t] * 3,
            "device_s": [0.8 * t] * 3, "device_median_s": 0.8 * t, "held": True}


def synthetic_raw(engines: float = 1.02, overlap: float = 1.95, cuda: bool = True) -> dict[str, Any]:
    tokens = [1, 8, 64, 512]
    model = {
        "shape": {"expert_matrices": 3, "hidden": 2048, "expert_intermediate": 1024},
        "expert_bf16": [_pt(t, 5e-5 + 1e-7 * t) for t in tokens],
        "expert_bf16_bare": [_pt(t, 4e-5 + 1e-7 * t) for t in tokens],
        "cpu_expert_bf16": [_pt(t, 2e-3 * t) for t in (1, 4)],
        "cpu_expert_fp32": [_pt(t, 1e-3 * t) for t in (1, 4)],
        "dense": {"tokens": [1, 16], "context": [128, 1024], "seconds": [[1e-4, 2e-4], [3e-4, 4e-4]],
                  "samples_s": [[[1e-4, 1.1e-4], [2e-4, 2e-4]], [[3e-4, 3e-4], [4e-4, 4.4e-4]]],
                  "device_seconds": [[5e-5, 6e-5], [7e-5, 8e-5]], "held": True,
                  "attention": "lower_right"},
        "pass_overhead": {"samples_s": [2e-4, 2.1e-4], "median_s": 2.05e-4},
        "layer_overhead": {"samples_s": [3e-5, 3.1e-5], "median_s": 3.05e-5},
    }
    raw: dict[str, Any] = {
        "method_version": "calibrate/1", "date": "2026-11-22T18:00:00+00:00",
        "settings": {"device": "cuda" if cuda else "cpu", "quick": False, "repeats": 10},
        "copy_plan": {"repeats": 20},
        "device": {"device": "cuda", "gpu_name": "Test GPU", "gpu_memory_bytes": 80 * 2 ** 30, "x": None},
        "copies": {"h2d_pinned": _copy_points(1e-5, 5.5e10), "d2h_pinned": _copy_points(1.2e-5, 5.0e10),
                   "h2d_pageable": _copy_points(3e-5, 1.5e10), "d2h_pageable": _copy_points(3e-5, 1.2e10)},
        "ceilings": {"hbm_Bps": 3.0e12, "flops_per_s": 7.0e14, "copy_bytes": 2 ** 30, "matmul_n": 8192,
                     "hbm_rel_spread": 0.01, "flops_rel_spread": 0.02},
        "floors": {"expert": [_pt(1, 4e-5)], "dense": {"seconds": [[9e-5]], "attention": "lower_right"},
                   "pass_overhead": {"median_s": 6e-5}, "layer_overhead": {"median_s": 2e-5}},
        "models": {"olmoe-1b-7b": model},
    }
    if cuda:
        raw["concurrency"] = {"h2d_effective_engines": engines, "h2d_d2h_overlap_ratio": overlap,
                              "copy_bytes": 2 ** 26, "kernels": {"matmul_bf16": {"kernel_slowdown": 1.01}}}
    return raw


def test_profile_figures_come_from_the_measurements() -> None:
    p = build_profile(synthetic_raw(), "test-gpu")
    assert p["schema"] == SCHEMA and p["name"] == "test-gpu" and p["provisional"] is False
    c = p["copy"]
    assert c["latency_s"] == pytest.approx(1e-5, rel=1e-3)
    assert c["bw_pinned_Bps"] == pytest.approx(5.5e10, rel=1e-3)
    assert c["bw_pageable_Bps"] == pytest.approx(1.5e10, rel=1e-3)
    assert c["d2h_bw_pinned_Bps"] == pytest.approx(5.0e10, rel=1e-3)
    assert c["h2d_engines"] == 1 and c["h2d_d2h_overlap"] is True
    assert c["table_bytes"] == SIZES
    assert c["table_s"][0] == pytest.approx(1e-5 + 4096 / 5.5e10, rel=1e-3)
    comp = p["compute"]
    assert comp["expert_launch_s"] == pytest.approx(4e-5)
    assert comp["hbm_Bps"] == 3.0e12 and comp["flops_per_s"] == 7.0e14
    assert comp["dense_layer_s"] == pytest.approx(9e-5)
    assert comp["pass_overhead_s"] == pytest.approx(6e-5)
    assert comp["layer_overhead_s"] == pytest.approx(2e-5)
    # 2 * 3 * 2048 * 1024 flops per token over 2 ms per token
    assert comp["cpu_flops_per_s"] == pytest.approx(6 * 2048 * 1024 / 2e-3, rel=1e-3)
    m = p["models"]["olmoe-1b-7b"]
    assert m["expert"]["bf16"]["tokens"] == [1, 8, 64, 512]
    # the device held: the tables are the device's own times, the paced ones kept in provenance, and the
    # routing glue (a readback: a runtime's) left to the runtime profile
    assert m["expert"]["bf16"]["seconds"][3] == pytest.approx(0.8 * (5e-5 + 512e-7), rel=1e-3)
    assert m["dense"]["seconds"] == [[5e-5, 6e-5], [7e-5, 8e-5]]
    assert m["layer_overhead_s"] == 0.0
    assert m["cpu_expert"]["bf16"]["seconds"] == [2e-3, 8e-3]
    assert m["pass_overhead_s"] == pytest.approx(2.05e-4)
    prov = p["provenance"]
    assert prov["expert_bf16_paced"]["olmoe-1b-7b"]["seconds"][3] == pytest.approx(5e-5 + 512e-7, rel=1e-3)
    assert prov["dense_paced"]["olmoe-1b-7b"]["seconds"] == [[1e-4, 2e-4], [3e-4, 4e-4]]
    assert prov["expert_bf16_device"]["olmoe-1b-7b"]["seconds"][0] == pytest.approx(0.8 * (5e-5 + 1e-7))
    assert prov["expert_bf16_host"]["olmoe-1b-7b"]["seconds"][0] == pytest.approx(0.5 * (5e-5 + 1e-7))
    assert prov["dense_device"]["olmoe-1b-7b"]["seconds"] == [[5e-5, 6e-5], [7e-5, 8e-5]]
    spread_m = p["provenance"]["spread"]["models"]["olmoe-1b-7b"]
    assert spread_m["dense_rel"][0][0] == pytest.approx(0.1 * 0.8 / 1.05, rel=0.05)


@pytest.mark.parametrize(("engines", "overlap", "want_engines", "want_overlap"), [
    (1.02, 1.05, 1, False), (1.97, 1.9, 2, True), (1.49, 1.49, 1, False), (1.5, 1.5, 2, True)])
def test_concurrency_thresholds(engines: float, overlap: float, want_engines: int,
                                want_overlap: bool) -> None:
    c = build_profile(synthetic_raw(engines, overlap), "x")["copy"]
    assert c["h2d_engines"] == want_engines
    assert c["h2d_d2h_overlap"] is want_overlap


def test_sustained_ratio_is_the_span_over_the_median_copys_pace() -> None:
    from calibrate.transfers import sustained_ratio

    # 20 copies of 1 ms back to back, of which 2 in a slow spell take 3 ms: 24 ms for 20 median copies
    starts, ends, t = [], [], 0.0
    for i in range(20):
        d = 3e-3 if i in (7, 8) else 1e-3
        starts.append(t)
        ends.append(t + d)
        t += d
    assert sustained_ratio(starts, ends) == pytest.approx(24 / 20)
    steady = [i * 1e-3 for i in range(10)]
    assert sustained_ratio(steady, [s + 1e-3 for s in steady]) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="at least 3 copies"):
        sustained_ratio([0.0, 1.0], [1.0, 2.0])


def test_sustained_copies_set_the_profiles_ratio_and_a_plain_profile_keeps_one() -> None:
    from emu.profile import profile_from_dict

    raw = synthetic_raw()
    assert "sustained_ratio" not in build_profile(raw, "x")["copy"]
    raw["sustained"] = {"bytes": 2 ** 29, "seconds": 10.0, "copies": 1000, "median_s": 9.7e-3, "max_s": 2e-2,
                        "ratio": 1.034, "samples_s": [9.7e-3] * 3}
    p = build_profile(raw, "x")
    assert p["copy"]["sustained_ratio"] == pytest.approx(1.034)
    assert p["provenance"]["sustained_copies"]["copies"] == 1000
    assert "samples_s" not in p["provenance"]["sustained_copies"]
    plain = copy.deepcopy(p)
    del plain["copy"]["sustained_ratio"]
    a, b = profile_from_dict(p), profile_from_dict(plain)
    assert b.copy.sustained_ratio == 1.0
    for nbytes in (4096, 2 ** 20, 352e6):  # every pinned copy at the sustained pace; pageable ones untouched
        assert a.copy_seconds(nbytes) == pytest.approx(1.034 * b.copy_seconds(nbytes))
        assert a.copy_seconds(nbytes, pinned=False) == b.copy_seconds(nbytes, pinned=False)


@pytest.mark.parametrize("bad", [0, -1.0, "fast", True])
def test_a_bad_sustained_ratio_names_its_key(bad: Any) -> None:
    from emu.profile import profile_from_dict

    p = build_profile(synthetic_raw(), "x")
    p["copy"]["sustained_ratio"] = bad
    with pytest.raises(EmuError, match="sustained_ratio"):
        profile_from_dict(p, file="lease.toml")


def test_cpu_profile_has_no_overlap_claim() -> None:
    p = build_profile(synthetic_raw(cuda=False), "cpu")
    assert p["copy"]["h2d_engines"] == 1
    assert "h2d_d2h_overlap" not in p["copy"]
    assert p["provenance"]["concurrency"]["measured"] is False


def _load_profile_or_none() -> Any:
    try:
        from emu.profile import load_profile
    except ImportError:
        return None
    return load_profile


def test_profile_toml_round_trip(tmp_path: Path) -> None:
    raw = synthetic_raw()
    out = tmp_path / "gpu.toml"
    profile = write_profile(raw, out)
    assert tomllib.loads(out.read_text()) == profile
    assert json.loads(raw_path_for(out).read_text())["copies"]["h2d_pinned"][0]["bytes"] == 4096
    assert tomllib.loads(dumps(profile)) == profile  # the built-in writer, whether or not tomli_w is here
    load_profile = _load_profile_or_none()
    if load_profile is not None:
        hw = load_profile(out)
        assert hw is not None


def test_write_profile_rejects_non_toml_path(tmp_path: Path) -> None:
    with pytest.raises(EmuError):
        write_profile(synthetic_raw(), tmp_path / "gpu.json")


def test_builtin_toml_writer_matches_tomllib() -> None:
    data = {"a": 1, "b": 1e-5, "c": 3.0, "d": True, "e": "quote \" backslash \\ newline \n é",
            "f": [[1.0, 2.5], [3.0, 4.0]], "g": [1, 2, 3], "empty": [],
            "t": {"dotted.key": {"x": 1}, "plain": "y", "inline": {"tokens": [1, 2], "seconds": [0.1, 0.2]}},
            "models": {"olmoe-1b-7b": {"expert": {"bf16": {"tokens": [1], "seconds": [2e-4]}}}}}
    assert tomllib.loads(dumps(data)) == data
    assert tomllib.loads(dumps_toml(data)) == data


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), object()])
def test_builtin_toml_writer_refuses_what_toml_cannot_hold(bad: Any) -> None:
    with pytest.raises(EmuError) as info:
        dumps({"copy": {"latency_s": bad}})
    assert info.value.key == "copy.latency_s"


def test_compare_reports_the_changed_figures() -> None:
    a = build_profile(synthetic_raw(), "a")
    b = copy.deepcopy(a)
    b["copy"]["bw_pinned_Bps"] *= 1.10
    b["models"]["olmoe-1b-7b"]["expert"]["bf16"]["seconds"][2] *= 0.5
    b["provenance"]["date"] = "other"
    diffs = {d.path: d.rel for d in compare_profiles(a, b)}
    assert diffs["copy.bw_pinned_Bps"] == pytest.approx(0.10 / 1.05)
    assert diffs['models."olmoe-1b-7b".expert.bf16.seconds[2]'] == pytest.approx(0.5 / 0.75)
    assert diffs["copy.latency_s"] == 0.0
    assert not any(p.startswith("provenance") for p in diffs)
    assert not any(p.endswith("tokens[0]") or "table_bytes" in p for p in diffs)
    groups = summarize(compare_profiles(a, b))
    assert groups["copy"]["worst"] == "copy.bw_pinned_Bps"
    assert groups["models.olmoe-1b-7b.expert"]["max_rel"] == pytest.approx(0.5 / 0.75)
    # a model name with dots keeps its groups apart
    c, d = copy.deepcopy(a), copy.deepcopy(b)
    c["models"]["qwen1.5-moe-a2.7b"] = c["models"].pop("olmoe-1b-7b")
    d["models"]["qwen1.5-moe-a2.7b"] = d["models"].pop("olmoe-1b-7b")
    groups = summarize(compare_profiles(c, d))
    assert {"models.qwen1.5-moe-a2.7b.expert", "models.qwen1.5-moe-a2.7b.dense"} <= set(groups)


def test_numeric_leaves_paths() -> None:
    leaves = numeric_leaves({"a": {"b": [1, [2.5, 3]]}, "flag": True, "s": "x"})
    assert leaves == {"a.b[0]": 1.0, "a.b[1][0]": 2.5, "a.b[1][1]": 3.0}


def test_the_fused_table_is_the_devices_time_by_distinct_experts_or_a_stated_absence() -> None:
    raw = synthetic_raw()
    raw["models"]["olmoe-1b-7b"]["fused_bf16"] = [
        {"tokens": k, "median_s": 3e-4 * k, "samples_s": [3e-4 * k] * 3, "device_median_s": 1e-4 + 4e-6 * k,
         "held": True} for k in (1, 8, 32)]
    m = build_profile(raw, "x")["models"]["olmoe-1b-7b"]
    assert m["fused"]["bf16"]["experts"] == [1, 8, 32]
    assert m["fused"]["bf16"]["seconds"] == [pytest.approx(1e-4 + 4e-6 * k) for k in (1, 8, 32)]
    # a point whose hold ran out keeps its device time (the host's gaps in it, never the host's whole pace),
    # and is named
    raw["models"]["olmoe-1b-7b"]["fused_bf16"][1]["held"] = False
    p = build_profile(raw, "x")
    assert p["models"]["olmoe-1b-7b"]["fused"]["bf16"]["seconds"][2] == pytest.approx(1e-4 + 4e-6 * 32)
    assert p["provenance"]["unheld"] == ["olmoe-1b-7b fused at 8"]
    raw["models"]["olmoe-1b-7b"]["fused_bf16"][1]["held"] = True
    raw["models"]["olmoe-1b-7b"]["fused_bf16"] = []
    raw["models"]["olmoe-1b-7b"]["fused_bf16_error"] = "grouped_mm: bad shape"
    p = build_profile(raw, "x")
    assert "fused" not in p["models"]["olmoe-1b-7b"]
    assert any("grouped_mm: bad shape" in line for line in p["provenance"]["not_measured"])


def test_one_dense_point_whose_hold_ran_out_leaves_the_table_the_devices() -> None:
    from calibrate.profile_writer import unheld_check

    raw = synthetic_raw()
    d = raw["models"]["olmoe-1b-7b"]["dense"]
    d["held"], d["held_grid"] = False, [[True, True], [False, True]]
    m = build_profile(raw, "x")["models"]["olmoe-1b-7b"]
    assert m["dense"]["seconds"] == [[5e-5, 6e-5], [7e-5, 8e-5]]  # the device's, not the paced [[1e-4, ...]]
    assert m["layer_overhead_s"] == 0.0
    tokens, contexts = d["tokens"], d["context"]
    warning = unheld_check(raw, "p.toml")
    assert warning is not None and f"olmoe-1b-7b dense at {tokens[1]} tokens, context {contexts[0]}" in warning
    assert build_profile(raw, "x")["provenance"]["unheld"] == [
        f"olmoe-1b-7b dense at {tokens[1]} tokens, context {contexts[0]}"]
    d["held_grid"] = [[True, True], [True, True]]
    d["held"] = True
    assert unheld_check(raw, "p.toml") is None
