"""Runtime profiles: loading at the edge, the fallbacks between keys, the scenario key, and the hardware
profile refusing the host keys it no longer holds."""

from __future__ import annotations

from pathlib import Path

import pytest

from emu.errors import EmuError
from emu.profile import profile_from_dict
from emu.runner import run_scenario
from emu.runtime_profile import HostCosts, RuntimeProfile, load_runtime_profile, runtime_from_dict
from emu.scenario import load_scenario

ROOT = Path(__file__).resolve().parents[1]


def test_fallbacks_and_model_entries() -> None:
    rt = runtime_from_dict({"name": "r", "host": {"copy_s": 1e-4, "expert_s": 2e-5, "prefill_copy_s": 3e-4},
                            "models": {"m": {"expert_s": 5e-5, "prefetch_s": 7e-5}}})
    other = rt.resolve("x")  # no entry: the runtime's own figures
    assert (other.copy_s, other.prefetch_s, other.expert_s) == (1e-4, 1e-4, 2e-5)
    assert (other.prefill_copy_s, other.prefill_prefetch_s, other.prefill_expert_s) == (3e-4, 3e-4, 2e-5)
    m = rt.resolve("m")  # the entry over the runtime's
    assert (m.copy_s, m.prefetch_s, m.expert_s, m.prefill_expert_s) == (1e-4, 7e-5, 5e-5, 5e-5)
    assert (other.batch_expert_s, m.batch_expert_s) == (2e-5, 5e-5)  # unset: expert_s
    batch = runtime_from_dict({"name": "b", "host": {"expert_s": 2e-5, "batch_expert_s": 9e-5}}).resolve("x")
    assert (batch.expert_s, batch.batch_expert_s, batch.prefill_expert_s) == (2e-5, 9e-5, 2e-5)
    assert m.prefill_prefetch_s == 3e-4  # prefill_copy_s where set
    assert (m.pass_s, m.layer_s, m.readback_s, m.gate_s) == (0.0, 0.0, 0.0, 0.0)
    bare = runtime_from_dict({"name": "b", "host": {"prefetch_s": 4e-5}}).resolve("x")
    assert (bare.prefill_copy_s, bare.prefill_prefetch_s) == (0.0, 4e-5)  # no prefill keys: the decode pass's


def test_round_trip(tmp_path: Path) -> None:
    import tomli_w

    rt = RuntimeProfile(name="r", host=HostCosts(pass_s=1e-3, layer_s=2e-4), models={"m": HostCosts(gate_s=3e-5)},
                        provenance={"date": "2026-12-06"}, experts="fused")
    path = tmp_path / "r.toml"
    path.write_text(tomli_w.dumps(rt.to_dict()))
    back = load_runtime_profile(path)
    assert (back.host, back.models, back.provenance, back.experts) == (rt.host, rt.models, rt.provenance, "fused")
    path.write_text('name = "r"\n')
    assert load_runtime_profile(path).experts == "per-expert"  # a profile that does not say: one kernel each


def test_a_prefetch_policys_own_gate_price_comes_before_the_generic_one(tmp_path: Path) -> None:
    import tomli_w

    rt = runtime_from_dict({"name": "r", "host": {"prefetch_gate_s": 1e-5,
                                                  "prefetch_gate_by_policy": {"topk": 2e-5, "multi-look": 6e-5}},
                            "models": {"m": {"prefetch_gate_s": 3e-5, "prefetch_gate_by_policy": {"topk": 4e-5}}}})
    assert rt.resolve("m", "topk").prefetch_gate_s == 4e-5  # the model's own price for the policy
    assert rt.resolve("m", "multi-look").prefetch_gate_s == 6e-5  # else the runtime's for the policy
    assert rt.resolve("m", "next-layer").prefetch_gate_s == 3e-5  # else the generic one, the model's
    assert rt.resolve("x", "topk").prefetch_gate_s == 2e-5 and rt.resolve("x", "next-layer").prefetch_gate_s == 1e-5
    path = tmp_path / "r.toml"
    path.write_text(tomli_w.dumps(rt.to_dict()))
    back = load_runtime_profile(path)
    assert (back.host_prefetch_gates, back.prefetch_gates) == (rt.host_prefetch_gates, rt.prefetch_gates)
    assert back.resolve("m", "topk") == rt.resolve("m", "topk")


def test_the_engine_charges_the_stacks_own_policy_at_every_gate() -> None:
    from emu.engines.setup import SCAL, precisions_for, timing
    from emu.models import PRESETS
    from emu.profile import load_profile

    profile = load_profile(ROOT / "scenarios" / "profiles" / "h100-pcie5.toml")
    model = PRESETS["olmoe-1b-7b"]
    rt = runtime_from_dict({"name": "r", "host": {"readback_s": 1e-5, "gate_s": 2e-5, "prefetch_gate_s": 3e-5,
                                                  "prefetch_gate_by_policy": {"topk": 7e-5}}})
    precisions = precisions_for(model)
    readback = {p: timing(profile, model, precisions, rt, p).scal[SCAL.HOST_READBACK_S]
                for p in ("none", "next-layer", "topk")}
    assert readback == pytest.approx({"none": 3e-5, "next-layer": 6e-5, "topk": 1e-4})


@pytest.mark.parametrize(("text", "key", "what"), [
    ('name = "r"\n[host]\ncopy_s = -1.0\n', "host.copy_s", "non-negative"),
    ('name = "r"\n[host]\ncopy_s = 2.0\n', "host.copy_s", "host seconds per item"),
    ('name = "r"\n[host]\nexpert = 1e-5\n', "host.expert", "unknown key"),
    ('name = "r"\n[models.m]\nlayer_s = "fast"\n', "models.m.layer_s", "number"),
    ('name = ""\n', "name", "non-empty"),
    ('schema = "x"\nname = "r"\n', "schema", "moe-emu/runtime/1"),
    ('name = "r"\n[host]\ncopy_s = nan\n', "host.copy_s", "finite"),
    ('name = "r"\nexperts = "grouped"\n', "experts", "per-expert"),
    ('name = "r"\n[host.prefetch_gate_by_policy]\ntopq = 1e-5\n', "host.prefetch_gate_by_policy.topq",
     "prefetch policy"),
    ('name = "r"\n[models.m.prefetch_gate_by_policy]\ntopk = -1e-5\n', "models.m.prefetch_gate_by_policy.topk",
     "non-negative"),
    ('name = "r"\n[models.m.prefetch_gate_by_policy]\ntopk = 3.0\n', "models.m.prefetch_gate_by_policy.topk",
     "host seconds per item"),
    ('name = "r"\n[host]\nprefetch_gate_by_policy = 1e-5\n', "host.prefetch_gate_by_policy", "table"),
])
def test_bad_runtime_profiles_name_file_and_key(tmp_path: Path, text: str, key: str, what: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(EmuError, match=what) as err:
        load_runtime_profile(path)
    assert err.value.key == key and err.value.file == str(path)


def test_unreadable_runtime_profiles(tmp_path: Path) -> None:
    with pytest.raises(EmuError, match="not found"):
        load_runtime_profile(tmp_path / "none.toml")
    (tmp_path / "b.toml").write_bytes(b"\xff\xfe name")
    with pytest.raises(EmuError, match="TOML"):
        load_runtime_profile(tmp_path / "b.toml")


def test_hardware_profile_refuses_host_keys() -> None:
    base = {"name": "p", "copy": {"latency_s": 0.0, "bw_pinned_Bps": 1.0, "bw_pageable_Bps": 1.0},
            "compute": {"expert_launch_s": 1.0, "hbm_Bps": 1.0, "flops_per_s": 1.0, "dense_layer_s": 1.0}}
    with pytest.raises(EmuError, match="runtime profile") as err:
        profile_from_dict({**base, "compute": {**base["compute"], "launch_ahead_s": 1e-3}}, file="p.toml")
    assert err.value.key == "compute.launch_ahead_s"
    model = {"expert": {"bf16": {"tokens": [1], "seconds": [1e-4]}}, "copy_issue_s": 1e-5}
    with pytest.raises(EmuError, match="runtime profile") as err:
        profile_from_dict({**base, "models": {"m": model}}, file="p.toml")
    assert err.value.key == "models.m.copy_issue_s"


def test_scenario_runtime_slows_the_bundled_scenario_and_is_recorded(tmp_path: Path) -> None:
    scenario = ROOT / "scenarios" / "olmoe-1b-7b_h100_25pct.toml"
    base, rec0 = run_scenario(load_scenario(scenario, ["workload.synthetic.tokens=300"]), "fast")
    runtime = tmp_path / "rt.toml"
    runtime.write_text('name = "slow-host"\n[host]\nlayer_s = 5e-3\nexpert_s = 1e-4\n')
    slow, rec = run_scenario(load_scenario(scenario, ["workload.synthetic.tokens=300",
                                                      f"hardware.runtime={str(runtime)!r}"]), "fast")
    assert "runtime" not in rec0 and rec["runtime"]["name"] == "slow-host"
    assert rec["scenario"]["hardware"]["runtime"] == str(runtime)
    # every decode pass: 16 layers launched at 5 ms each at least: the host sets the pace
    assert slow.tpot_s >= 16 * 5e-3 > base.tpot_s
    assert slow.counters["hits"] == base.counters["hits"] and slow.counters["host_wait_s"] > 0
    assert base.counters["host_wait_s"] == 0.0
    with pytest.raises(EmuError, match="file not found") as err:
        load_scenario(scenario, ["hardware.runtime='nope.toml'"])
    assert err.value.key == "hardware.runtime"


def _with_requests(steps: dict[str, list[list[float]]]) -> RuntimeProfile:
    """A profile whose provenance holds, per model, requests with these resident decode steps (seconds)."""
    models = {m: {"requests": [{"resident_request": {"decode_step_s": s}} for s in reqs]} for m, reqs in steps.items()}
    return RuntimeProfile(name="hf-graph", provenance={"models": models}, source="cal/hf-graph.toml")


def test_host_drift_is_the_spread_of_the_requests_median_resident_steps() -> None:
    from emu.runtime_profile import HOST_DRIFT_TOLERANCE, drift_fraction, host_drift, host_drift_warning

    prof = _with_requests({
        "steady": [[0.020, 0.021, 0.050], [0.0205, 0.0204, 0.0206], [0.0209, 0.9, 0.0208]],  # medians 21, 20.5, 20.9
        "drifted": [[0.020, 0.020, 0.020], [0.031, 0.030, 0.032]],
        "single": [[0.020]],  # one request: nothing to compare
    })
    drift = host_drift(prof)
    assert set(drift) == {"steady", "drifted"}
    assert drift["steady"] == (0.0205, 0.021) and drift["drifted"] == (0.020, 0.031)
    assert drift_fraction(drift["drifted"]) == pytest.approx(0.55)
    assert drift_fraction(drift["steady"]) < HOST_DRIFT_TOLERANCE
    warning = host_drift_warning(prof)
    assert warning is not None and warning.startswith("cal/hf-graph.toml: ")
    assert "drifted 20.0-31.0 ms (+55%)" in warning and "steady" not in warning.split("(", 1)[1]
    assert host_drift_warning(prof, tolerance=0.6) is None
    assert host_drift_warning(prof, models={"steady"}) is None  # only the models asked about
    assert "drifted" in (host_drift_warning(prof, models={"drifted", "single"}) or "")
    # a profile without the requests' figures (an older or hand-written one) has no drift, and no warning
    assert host_drift(RuntimeProfile(name="r")) == {} and host_drift_warning(RuntimeProfile(name="r")) is None
    bad = _with_requests({"m": [[0.02], [-1.0]]})
    assert host_drift(bad) == {}  # a malformed request is skipped, not a crash


def test_host_drift_counts_a_resident_request_slower_than_its_small_cache_one() -> None:
    """The small-cache request does at least the resident one's work per step, so its median step bounds the
    host's resident pace at its moment: a resident request slower than that is a slow spell of the host."""
    from emu.runtime_profile import drift_fraction, host_drift, host_drift_warning

    def req(resident: list[float], small: list[float] | None) -> dict:
        r: dict = {"resident_request": {"decode_step_s": resident}}
        if small is not None:
            r["decode_step_s"] = small
        return r

    models = {
        # resident steps agree (27.4-30.1 ms) but the small cache beside them ran at 20.6 ms: slowed for the
        # resident requests (lease 11's Qwen3)
        "slow-resident": {"requests": [req([0.0292] * 3, [0.0206] * 3), req([0.0274] * 3, [0.0239] * 3),
                                       req([0.0301] * 3, [0.0208] * 3)]},
        # the small cache slower than resident, as it should be: the resident steps alone decide
        "usual": {"requests": [req([0.0232] * 3, [0.0379] * 3), req([0.0227] * 3, [0.0377] * 3)]},
        # one request is enough when its resident steps ran slower than its small cache
        "one": {"requests": [req([0.030], [0.020])]},
        "one-usual": {"requests": [req([0.020], [0.030])]},
        "no-small": {"requests": [req([0.020], None)]},
    }
    prof = RuntimeProfile(name="hf-graph", provenance={"models": models}, source="cal/hf-graph.toml")
    drift = host_drift(prof)
    assert drift["slow-resident"] == (0.0206, 0.0301)
    assert drift_fraction(drift["slow-resident"]) == pytest.approx(0.0301 / 0.0206 - 1)
    assert drift["usual"] == (0.0227, 0.0232)
    assert drift["one"] == (0.020, 0.030) and drift["one-usual"] == (0.020, 0.020)
    assert "no-small" not in drift
    warning = host_drift_warning(prof) or ""
    assert "slow-resident 20.6-30.1 ms (+46%)" in warning and "one 20.0-30.0 ms" in warning
    assert "usual" not in warning.split("(", 2)[2]


def test_a_fused_runtime_needs_the_profiles_fused_table():
    from emu.engines.setup import StackChoice, make_inputs

    from .conftest import hand_profile, hand_runtime, make_trace, tiny_model

    trace = make_trace([[[[0, 1], [2, 3]]]])
    with pytest.raises(EmuError, match=r"models\.tiny\.fused") as err:
        make_inputs(tiny_model(), hand_profile(), trace, 24, StackChoice(),
                    runtime=hand_runtime(experts="fused"))
    assert "grouped GEMM" in str(err.value)
