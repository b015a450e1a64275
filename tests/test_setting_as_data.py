"""The papers' setting written as data (issue 18, item 3): hardware-profile keys set by a scenario or `--set`
(`hardware.copy.bw_pinned_Bps=5e9`, dropping what they invalidate), capacity as a share of the model at a stated
precision ("5% of bf16"), one reading of GB (1e9) and GiB (2**30), `model.<key>` on a preset, `fetch-priority` with
nothing to degrade to, and the derived A100 profile of SpecMD's machine."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import attrs
import pytest

from emu.cli import main
from emu.errors import EmuError, EmuWarning
from emu.models import get_preset
from emu.profile import SECTION_KEYS, expert_curve, load_profile
from emu.runner import run_scenario
from emu.scenario import load_scenario, parse_size
from emu.sweep import load_sweep, run_sweep

ROOT = Path(__file__).resolve().parents[1]
SCN = ROOT / "scenarios" / "olmoe-1b-7b_h100_5pct.toml"  # on h100-pcie5: a measured copy table, measured kernels
PCIE5 = ROOT / "scenarios" / "profiles" / "h100-pcie5.toml"
A100 = ROOT / "scenarios" / "profiles" / "a100-80gb-5gbps.toml"
SHORT = "workload.max_tokens=48"
#: OLMoE's routed experts at bf16, by hand: 16 layers x 64 experts x 3 matrices x 2048 x 1024 weights x 2 bytes
OLMOE_BF16_EXPERTS = 16 * 64 * 3 * 2048 * 1024 * 2
#: one OLMoE expert at int4, by hand: half a byte per weight plus one fp16 scale per 128 weights
OLMOE_INT4_EXPERT = math.ceil(3 * 2048 * 1024 * (0.5 + 2 / 128))


def _quiet_load(path: Path, overrides: list[str]) -> tuple[object, list[str]]:
    """The scenario's effective profile and the EmuWarnings building it gave."""
    sc = load_scenario(path, overrides)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", EmuWarning)
        profile = sc.profile()
    return profile, [str(w.message) for w in caught if issubclass(w.category, EmuWarning)]


# ---- hardware.<section>.<key> ----------------------------------------------------------------------------------

def test_a_set_bandwidth_gives_latency_plus_bytes_over_it_and_drops_the_measured_table():
    assert load_profile(PCIE5).copy.table_bytes  # the file's copies come from its measured table
    profile, said = _quiet_load(SCN, ["hardware.copy.bw_pinned_Bps=5e9"])
    nbytes = get_preset("olmoe-1b-7b").expert_bytes()
    assert profile.copy.table_bytes == () and profile.copy.table_s == ()
    assert profile.copy_seconds(nbytes) == profile.copy.latency_s + nbytes / 5e9
    assert profile.copy.latency_s == load_profile(PCIE5).copy.latency_s  # the rest of [copy] stays the file's
    assert profile.dropped == ("copy.table_bytes", "copy.table_s")
    assert len(said) == 1 and "copy.table_bytes, copy.table_s" in said[0] and "\n" not in said[0]


@pytest.mark.parametrize("engine", ["fast", "des"])
def test_a_run_with_a_set_bandwidth_spends_copies_times_latency_plus_bytes_over_it_copying(engine):
    sc = load_scenario(SCN, ["hardware.copy.bw_pinned_Bps=5e9", SHORT])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EmuWarning)
        _result, rec = run_scenario(sc, engine)
    per_copy = load_profile(PCIE5).copy.latency_s + sc.model.expert_bytes() / 5e9
    assert rec["copies"] > 0
    assert rec["copy_busy_frac"] * rec["e2e_s"] == pytest.approx(rec["copies"] * per_copy, rel=1e-9)
    prof = rec["profile"]  # the record shows the override and the values the run used
    assert prof["overrides"] == {"copy.bw_pinned_Bps": 5e9}
    assert prof["dropped"] == ["copy.table_bytes", "copy.table_s"]
    assert prof["copy"]["bw_pinned_Bps"] == 5e9 and prof["copy"]["table_bytes"] == []
    assert rec["scenario"]["hardware"]["copy"] == {"bw_pinned_Bps": 5e9}


def test_a_run_without_overrides_keeps_its_record():
    _result, rec = run_scenario(load_scenario(SCN, [SHORT]), "fast")
    assert set(rec["profile"]) == {"name", "provisional", "file"}
    assert set(rec["scenario"]["hardware"]) == {"profile"}


def test_a_set_bandwidth_drops_the_sustained_ratio_and_a_set_latency_keeps_it(tmp_path):
    profile_file = tmp_path / "lease.toml"
    profile_file.write_text(PCIE5.read_text().replace("[copy]\n", "[copy]\nsustained_ratio = 1.25\n", 1))
    scn = tmp_path / "s.toml"
    scn.write_text(SCN.read_text().replace('"profiles/h100-pcie5.toml"', json.dumps(str(profile_file))))
    bw, said = _quiet_load(scn, ["hardware.copy.bw_pinned_Bps=5e9"])
    assert bw.copy.sustained_ratio == 1.0 and "copy.sustained_ratio" in bw.dropped and len(said) == 1
    lat, _ = _quiet_load(scn, ["hardware.copy.latency_s=2e-5"])
    assert lat.copy.sustained_ratio == 1.25 and lat.copy.table_bytes == ()
    assert lat.copy_seconds(1e9) == pytest.approx(1.25 * (2e-5 + 1e9 / lat.copy.bw_pinned_Bps))


def test_keys_the_scenario_sets_itself_are_not_dropped():
    profile, said = _quiet_load(SCN, ["hardware.copy.bw_pinned_Bps=5e9", "hardware.copy.table_bytes=[1000, 2000]",
                                      "hardware.copy.table_s=[1e-5, 2e-5]"])
    assert profile.copy.table_bytes == (1000.0, 2000.0) and profile.dropped == () and said == []


def test_a_key_that_invalidates_nothing_drops_nothing():
    profile, said = _quiet_load(SCN, ["hardware.copy.h2d_engines=2", "hardware.copy.order=submission"])
    assert profile.copy.h2d_engines == 2 and profile.copy.order == "submission"
    assert profile.copy.table_bytes == load_profile(PCIE5).copy.table_bytes and said == []


def test_a_roofline_rate_drops_the_measured_kernels_it_would_lose_to():
    model = get_preset("olmoe-1b-7b")
    assert "olmoe-1b-7b" in load_profile(PCIE5).models
    profile, said = _quiet_load(SCN, ["hardware.compute.hbm_Bps=1e12", "hardware.compute.flops_per_s=1e14"])
    assert profile.models == {} and profile.dropped == ("models",) and len(said) == 1
    assert "models (olmoe-1b-7b, mixtral-8x7b, qwen1.5-moe-a2.7b)" in said[0]
    curve = expert_curve(profile, model, "bf16")  # the roofline of the set rates, not the measured table
    assert curve.seconds[0] == max(profile.compute.expert_launch_s, model.expert_bytes() / 1e12,
                                   model.expert_flops(1) / 1e14)


def test_a_model_overhead_key_drops_only_the_models_own():
    profile, _ = _quiet_load(SCN, ["hardware.compute.pass_overhead_s=1e-3"])
    assert profile.compute.pass_overhead_s == 1e-3
    assert all(m.pass_overhead_s is None for m in profile.models.values())
    assert profile.models["olmoe-1b-7b"].expert  # the measured kernels stay
    assert "models.olmoe-1b-7b.pass_overhead_s" in profile.dropped


def test_a_models_own_key_is_set_and_drops_nothing():
    profile, said = _quiet_load(SCN, ["hardware.models.olmoe-1b-7b.pass_overhead_s=1e-3"])
    assert profile.models["olmoe-1b-7b"].pass_overhead_s == 1e-3 and profile.dropped == () and said == []
    assert profile.models["olmoe-1b-7b"].expert == load_profile(PCIE5).models["olmoe-1b-7b"].expert


def test_hardware_keys_in_a_scenario_file_are_the_same_as_set(tmp_path):
    scn = tmp_path / "s.toml"
    scn.write_text(SCN.read_text().replace('[hardware]\n', '[hardware.copy]\nbw_pinned_Bps = 5e9\n[hardware]\n', 1)
                   .replace('"profiles/h100-pcie5.toml"', json.dumps(str(PCIE5))))
    from_file, _ = _quiet_load(scn, [])
    from_set, _ = _quiet_load(SCN, ["hardware.copy.bw_pinned_Bps=5e9"])
    assert from_file.copy == from_set.copy


@pytest.mark.parametrize(("override", "words"), [
    ("hardware.copy.bw_pinnd_Bps=5e9", ["hardware.copy.bw_pinnd_Bps", "unknown", "bw_pinned_Bps", "latency_s"]),
    ("hardware.gpu.x=1", ["hardware.gpu", "['compute', 'copy', 'models', 'profile', 'runtime']"]),
    ("hardware.copy=5", ["hardware.copy", "expected a table"]),
    ("hardware.copy.bw_pinned_Bps=-1", ["hardware.copy.bw_pinned_Bps", "positive"]),
    ("hardware.copy.bw_pinned_Bps=fast", ["hardware.copy.bw_pinned_Bps", "expected a number"]),
    ("hardware.copy.order=sideways", ["hardware.copy.order", "demand-first"]),
    ("hardware.copy.table_bytes=[1, 2, 3]", ["hardware.copy.table_s", "expected 3 values"]),
    ("hardware.copy.bw_pinned_Bps=1e-300", ["hardware.copy", "expected at most 3600 s"]),
    ("hardware.models.olmoe-1b-7b.expert_s=1", ["hardware.models.olmoe-1b-7b.expert_s", "unknown key"]),
])
def test_a_bad_hardware_key_is_one_line_naming_the_scenario_and_the_key(override, words, capsys):
    assert main(["run", str(SCN), "--quiet", "--set", override, "--set", SHORT]) == 2
    err = capsys.readouterr().err
    (line,) = [ln for ln in err.splitlines() if ln.startswith("emu: error:")]
    assert "Traceback" not in err and str(SCN) in line
    for word in words:
        assert word in line


def test_a_broken_profile_file_is_still_named_itself(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text(PCIE5.read_text().replace("h2d_engines = 1", "h2d_engines = 0", 1))
    with pytest.raises(EmuError) as info:
        load_scenario(SCN, [f"hardware.profile={json.dumps(str(bad))}", "hardware.copy.bw_pinned_Bps=5e9"]).profile()
    assert info.value.file == str(bad) and info.value.key == "copy.h2d_engines"


def test_the_cli_says_what_it_dropped_in_one_line_and_records_it(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["run", str(SCN), "--quiet", "--set", "hardware.copy.bw_pinned_Bps=5e9", "--set", SHORT]) == 0
    warned = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("warning:")]
    assert len(warned) == 1 and "hardware.copy.bw_pinned_Bps" in warned[0] and "copy.table_s" in warned[0]
    (written,) = (tmp_path / "runs").iterdir()
    assert json.loads(written.read_text())["profile"]["copy"]["bw_pinned_Bps"] == 5e9


def test_worker_processes_warnings_are_said_once_by_the_parent(tmp_path, monkeypatch, capfd):
    monkeypatch.chdir(tmp_path)
    one_pct = ROOT / "scenarios" / "olmoe-1b-7b_h100_1pct.toml"
    assert main(["run", str(SCN), str(one_pct), "--jobs", "2", "--quiet", "--set", "hardware.copy.bw_pinned_Bps=5e9",
                 "--set", SHORT]) == 0
    err = capfd.readouterr().err
    assert "EmuWarning" not in err  # a worker's own print would be Python's two-line form
    warned = [ln for ln in err.splitlines() if "dropped its" in ln]
    assert sorted(warned) == sorted(f"warning: {p}: hardware.copy.bw_pinned_Bps over profile 'h100-pcie5' dropped its "
                                    "copy.table_bytes, copy.table_s (measured under the old value, they would win "
                                    "over the new one)" for p in (SCN, one_pct))


@pytest.mark.parametrize("command", ["live", "validate"])
def test_live_runs_refuse_hardware_keys_before_starting(command, tmp_path, monkeypatch, capsys):
    """A live run is the machine itself: a key over the emulator's profile would change nothing there."""
    monkeypatch.chdir(tmp_path)
    assert main([command, str(SCN), "--device", "cpu", "--set", "hardware.copy.bw_pinned_Bps=5e9"]) == 2
    (line,) = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("emu: error:")]
    assert str(SCN) in line and "hardware.copy" in line
    assert not list(tmp_path.iterdir())  # refused before any run wrote anything


SWEEP = f"""
name = "hw"
base = "{SCN}"
set = ["{SHORT}", "hardware.copy.bw_pinned_Bps=5e9"]
engine = "fast"
[grid]
capacity = ["5%", "5% of bf16"]
"""


def test_a_sweeps_set_takes_hardware_keys_and_refuses_them_beside_a_swept_bandwidth(tmp_path):
    path = tmp_path / "sw.toml"
    path.write_text(SWEEP)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EmuWarning)
        rows, records = run_sweep(load_sweep(path))
    assert [r["bw_pinned_GBps"] for r in rows] == [5.0, 5.0]
    assert all(rec["profile"]["overrides"] == {"copy.bw_pinned_Bps": 5e9} for rec in records)
    assert rows[0]["capacity_slots"] == rows[1]["capacity_slots"]  # bf16 is the model's own precision
    path.write_text(SWEEP + "bandwidth = [10e9]\n")
    with pytest.raises(EmuError, match=r"grid\.bandwidth and hardware\.copy\.bw_pinned_Bps"):
        run_sweep(load_sweep(path))


# ---- capacity: "P% of PRECISION", GB and GiB ------------------------------------------------------------------

def test_five_percent_of_bf16_on_an_int4_model_is_five_percent_of_the_bf16_experts():
    sc = load_scenario(SCN, ["model.precision=int4", "cache.capacity=5% of bf16"])
    assert sc.model.expert_bytes() == OLMOE_INT4_EXPERT == 3_244_032
    assert sc.cache.capacity_bytes == int(OLMOE_BF16_EXPERTS * 5 / 100) == 644_245_094  # SpecMD's 0.6 GB: 0.6 GiB
    assert sc.cache.slots == 644_245_094 // OLMOE_INT4_EXPERT == 198  # whole experts of the int4 size
    own = load_scenario(SCN, ["model.precision=int4", "cache.capacity=5%"])  # "5%" stays of the model's own bytes
    assert own.cache.capacity_bytes == int(16 * 64 * OLMOE_INT4_EXPERT * 5 / 100)
    same = load_scenario(SCN, ["cache.capacity=5% of bf16"])  # of a bf16 model: the same as "5%"
    assert same.cache.capacity_bytes == load_scenario(SCN).cache.capacity_bytes


def test_a_share_of_a_precision_scales_per_layer_sizes():
    sc = load_scenario(SCN, ['model={ preset = "olmoe-1b-7b", n_moe_layers = 2, precision = "int8", '
                             'layer_expert_bytes = [1000, 2000] }', "cache.capacity=50% of bf16"])
    assert sc.cache.capacity_bytes == 64 * (2000 + 4000) // 2  # bf16 is 2 bytes a weight to int8's 1


def test_a_share_above_the_model_is_capped_at_all_its_experts():
    sc = load_scenario(SCN, ["model.precision=int4", "cache.capacity=100% of bf16"])
    assert sc.cache.capacity_bytes == sc.model.total_expert_bytes


@pytest.mark.parametrize(("value", "words"), [
    ("5% of bf17", ["unknown precision 'bf17'", "int4"]), ("0% of bf16", ["(0, 100]"]),
    ("101% of bf16", ["(0, 100]"]), ("5% of", ["5% of bf16"]),
])
def test_a_bad_share_names_the_key(value, words):
    with pytest.raises(EmuError) as info:
        load_scenario(SCN, [f"cache.capacity={value}"])
    assert info.value.key == "cache.capacity"
    for word in words:
        assert word in info.value.detail


def test_gb_is_1e9_and_gib_2_to_the_30_everywhere():
    assert parse_size("0.6GB") == 0.6e9 and parse_size("0.6GiB") == 0.6 * 2**30
    assert parse_size("512MiB") == 2**29 and parse_size("1kB") == 1000 and parse_size("5%") is None
    assert load_scenario(SCN, ["cache.capacity=0.6GB"]).cache.capacity_bytes == 600_000_000
    assert load_scenario(SCN, ["cache.capacity=0.6GiB"]).cache.capacity_bytes == int(0.6 * 2**30)
    from emu.analysis.workingset import slots_per_layer

    expert = get_preset("olmoe-1b-7b").expert_bytes()
    assert slots_per_layer("1GiB", 16, 64, expert) == int(2**30 // expert) // 16
    assert slots_per_layer("1GB", 16, 64, expert) == int(1e9 // expert) // 16


# ---- model.<key> on a preset -----------------------------------------------------------------------------------

def test_precision_is_settable_on_a_preset():
    sc = load_scenario(SCN, ["model.precision=int4"])
    assert sc.model == attrs.evolve(get_preset("olmoe-1b-7b"), precision="int4")
    assert load_scenario(SCN, ["model.top_k=4"]).model.top_k == 4
    with pytest.raises(EmuError) as info:
        load_scenario(SCN, ["model.precision=int3"])
    assert info.value.key == "model.precision" and "int4" in info.value.detail


# ---- fetch-priority with nothing to degrade to ------------------------------------------------------------------

def _miss_warnings(overrides: list[str]) -> list[str]:
    sc = load_scenario(SCN, [SHORT, 'policy.miss={ name = "fetch-priority", bits = 4 }', *overrides])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", EmuWarning)
        run_scenario(sc, "fast")
    return [str(w.message) for w in caught if "fetch-priority" in str(w.message)]


def test_fetch_priority_bits_4_on_an_int4_model_says_it_is_plain_fetch():
    (said,) = _miss_warnings(["model.precision=int4"])
    assert "bits = 4" in said and "int4" in said and "plain 'fetch'" in said and "\n" not in said
    assert _miss_warnings([]) == []  # bf16: degrades to int4
    assert _miss_warnings(["model.precision=int4", "policy.miss.bits=2"]) == []  # int4: degrades to int2


# ---- the derived A100 profile -----------------------------------------------------------------------------------

def test_the_a100_profile_is_the_papers_link_and_marked_derived():
    profile = load_profile(A100)
    assert profile.provisional and profile.provenance["derived"] is True
    assert profile.models == {}  # nothing measured: every model on the roofline
    assert profile.copy.bw_pinned_Bps == 5e9 and profile.copy.table_bytes == ()
    assert profile.copy_seconds(OLMOE_INT4_EXPERT) == profile.copy.latency_s + OLMOE_INT4_EXPERT / 5e9
    sources = profile.provenance["keys"]
    for section, keys in SECTION_KEYS.items():  # every value it sets says where it comes from
        spec = getattr(profile, section)
        defaults = {f.name: f.default for f in attrs.fields(type(spec))}
        for key in keys:
            if getattr(spec, key) != defaults[key] or key in ("latency_s", "bw_pinned_Bps"):
                assert f"{section}.{key}" in sources, key
    assert not any("measured" in text and "calibrated" not in text for text in sources.values())
    assert sources["copy.bw_pinned_Bps"].startswith("paper")
