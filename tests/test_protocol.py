"""The out-of-sample protocol on the CPU with tiny models: the runtime calibration's host ledger, a matrix run,
the comparison rows, and the matrix file's edge."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

import attrs
import pytest

from emu.errors import EmuError
from emu.runtime_profile import load_runtime_profile
from live.protocol import compare, load_matrix, run_matrix
from live.validation_set import load_dataset, row_errors

pytest.importorskip("torch")
pytest.importorskip("transformers")

ROOT = Path(__file__).resolve().parents[1]
MATRIX = """prompt_len = 12
decode_tokens = 6
[[config]]
name = "lru-25"
model = "olmoe-1b-7b"
capacity = "25%"
[[config]]
name = "lfu-50-nl"
model = "olmoe-1b-7b"
capacity = "50%"
eviction = "lfu"
prefetch = "next-layer"
seed = 3
[[config]]
name = "lru-25-b2"
model = "olmoe-1b-7b"
capacity = "25%"
batch = 2
"""


#: what the matrix run's host-drift check was given: (the runtime profile in memory, the models asked about)
DRIFT_CHECKS: list[tuple[Any, Any]] = []


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import live.protocol

    d = tmp_path_factory.mktemp("protocol")
    (d / "m.toml").write_text(MATRIX)
    check = live.protocol.host_drift_warning

    def recorded(profile: Any, **kw: Any) -> Any:
        DRIFT_CHECKS.append((profile, kw.get("models")))
        return check(profile, **kw)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(live.protocol, "host_drift_warning", recorded)
        written = run_matrix(load_matrix(d / "m.toml"), d / "out", device="cpu", scale="tiny",
                             calibrate_runtime="hf-eager")
    assert [p.name for p in written] == ["lru-25.json", "lfu-50-nl.json", "lru-25-b2.json"]
    return d / "out"


def test_the_runtime_calibration_measures_every_host_item(dataset: Path) -> None:
    rt = load_runtime_profile(dataset / "calibration" / "hf-eager.toml")
    costs = rt.models["olmoe-1b-7b"]
    for key in ("pass_s", "layer_s", "gate_s", "expert_s", "copy_s", "prefetch_s", "prefill_expert_s",
                "prefill_layer_s", "prefill_gate_s", "batch_expert_s"):
        value = getattr(costs, key)
        assert value is not None and 0 < value < 0.1, key
    assert costs.readback_s is None  # a CPU readback has no device to wait for: nothing to split
    assert costs.prefetch_gate_s is not None and costs.prefetch_gate_s >= 0.0  # may be 0: a cheap policy, noise
    assert rt.host == costs  # one model: the median is its figures
    raw = rt.provenance["models"]["olmoe-1b-7b"]
    # three requests: before the model's first configuration, after its middle one, after its last
    requests = raw["requests"]
    assert len(requests) == 3 and raw["statistic"] == "median of 3 requests"
    for req in requests:
        assert req["steps"] == 32 and req["slots"] < req["n_keys"]  # its own request, its own cache
        decode_items = sum(s for key, (s, _n) in req["ledger"].items() if key.startswith("decode."))
        assert req["decode_work_s"] >= decode_items  # the items are parts of the steps' host work
        # the policy's gate: what it adds to the median step, per layer (its whole work is kept beside it)
        steps_pf = req["resident_prefetch_request"]["decode_step_s"]
        steps = req["resident_request"]["decode_step_s"]
        added = (statistics.median(steps_pf) - statistics.median(steps)) / raw["n_layers"]
        assert req["costs"]["prefetch_gate_s"] == pytest.approx(max(added, 0.0))
        assert "prefetch_gate_s_work" in req
        # the batch request: 4 prompts in lockstep over every key resident, its expert launches the batch price
        batch = req["resident_batch_request"]
        assert batch["batch"] == 4 and batch["copies"] == [0, 0] and len(batch["decode_step_s"]) == 32
        seconds, launched = batch["ledger"]["decode.expert"]
        one_token = req["resident_request"]["ledger"]["decode.expert"][1]
        assert launched > one_token  # four tokens a pass reach more experts than one
        distinct = batch["decode_step_distinct_experts"]  # per step and layer: the experts launched
        assert len(distinct) == 32 and sum(map(sum, distinct)) == launched
        assert all(8 <= n <= 32 for step in distinct for n in step)  # OLMoE's top-8, four tokens
        assert "decode_step_distinct_experts" not in req["resident_request"]
        assert req["costs"]["batch_expert_s"] == pytest.approx(seconds / launched)
    layer = sorted(req["costs"]["layer_s"] for req in requests)
    assert costs.layer_s == pytest.approx(layer[1]) and raw["spread"]["layer_s"] == pytest.approx([layer[0], layer[2]])
    # each live prefetch policy's gate on its own, over the same resident pool: what it adds to the median step
    # per layer; a policy that issued prefetches there (it picks beyond the request's keys) is left unpriced
    for req in requests:
        base = statistics.median(req["resident_request"]["decode_step_s"])
        others = req["resident_policy_requests"]
        assert "next-layer" not in others and "none" not in others and len(others) >= 4
        gates = req["prefetch_gate_by_policy"]
        assert gates["next-layer"] == req["costs"]["prefetch_gate_s"]
        for policy, r in others.items():
            if r["prefetches"][1]:
                assert policy not in gates
            else:
                added = (statistics.median(r["decode_step_s"]) - base) / raw["n_layers"]
                assert gates[policy] == pytest.approx(max(added, 0.0))
    for policy, price in rt.prefetch_gates["olmoe-1b-7b"].items():  # the median of the requests that price it
        assert price == pytest.approx(statistics.median(
            [q["prefetch_gate_by_policy"][policy] for q in requests if policy in q["prefetch_gate_by_policy"]]))
    assert rt.host_prefetch_gates == rt.prefetch_gates["olmoe-1b-7b"]  # one model: the runtime's are its own
    assert "topk" in rt.prefetch_gates["olmoe-1b-7b"]
    for req in requests:  # every request prices a prefetch from its prefetching run, never below the issue alone
        assert req["prefetch_request"]["prefetches"][1] > 0
        assert req["costs"]["prefetch_s"] >= req["prefetch_s_issue"] > 0


def test_compare_writes_rows_the_summary_reads(dataset: Path) -> None:
    runtime = dataset / "calibration" / "hf-eager.toml"
    data = compare(dataset, ROOT / "scenarios" / "profiles" / "h100-pcie5.toml", runtime, "cpu", "hf-eager")
    rows = {r["config"]: r for r in data["rows"]}
    assert set(rows) == {"lru-25", "lfu-50-nl", "lru-25-b2"}
    for name, row in rows.items():
        rec = json.loads((dataset / "runs" / f"{name}.json").read_text())
        # the run's prefill and three cold repeats, the counts the run's alone; the median is the measured TTFT
        samples = rec["ttft_samples_s"]
        assert len(samples) == 4 and samples[0] == rec["ttft_s"] and all(t > 0 for t in samples)
        assert row["ttft_s"]["measured"] == sorted(samples)[1] / 2 + sorted(samples)[2] / 2 == rec["ttft_median_s"]
        assert len(row["steps_s"]["measured"]) == len(row["steps_s"]["emulated"]) == 6
        assert row["counts"]["hits"][0] == row["counts"]["hits"][1]  # the emulator decides as the runtime did
        assert row["calibration"]["runtime_profile"] == "calibration/hf-eager.toml"
    assert rows["lfu-50-nl"]["prefetch_races"] and rows["lfu-50-nl"]["counts"]["prefetch_issued"][0] > 0
    batch = rows["lru-25-b2"]  # two requests in lockstep: each pass two tokens, the rate the batch's
    assert batch["batch"] == 2 and batch["counts"]["accesses"][0] == batch["counts"]["accesses"][1]
    rec = json.loads((dataset / "runs" / "lru-25-b2.json").read_text())
    assert rec["batch"] == 2 and rec["decode_tok_s"] == pytest.approx(2 * 6 / sum(rec["requests"][0]["decode_s"]))
    assert rec["experts_captured"] is False and rec["decode_host_share"] is None  # an eager decode: no graphs
    ds = load_dataset(dataset)
    assert row_errors(ds.rows[0]).counts_equal
    # each row carries the spread of its model's calibration requests (three here: before, amid and after)
    from emu.runtime_profile import drift_fraction, host_drift, load_runtime_profile

    (span,) = host_drift(load_runtime_profile(runtime)).values()
    # the run checked the model's requests once, on the profile it had just written (the same drift as the file)
    ((checked, models),) = DRIFT_CHECKS
    assert models == {"olmoe-1b-7b"} and tuple(host_drift(checked).values()) == (span,)
    assert all(r["calibration"]["host_drift"] == drift_fraction(span) for r in rows.values())
    assert ds.rows[0].calibration.host_drift == drift_fraction(span)
    # eager decode records no host share; a graph-decoded record's share is carried into its row
    assert all("host_share" not in r for r in rows.values()) and ds.rows[0].host_share is None
    path = dataset / "runs" / "lru-25.json"
    rec = json.loads(path.read_text())
    path.write_text(json.dumps(rec | {"decode_host_share": 0.83}))
    data = compare(dataset, ROOT / "scenarios" / "profiles" / "h100-pcie5.toml", runtime, "cpu", "hf-eager")
    assert {r["config"]: r.get("host_share") for r in data["rows"]} == {"lru-25": 0.83, "lfu-50-nl": None,
                                                                         "lru-25-b2": None}
    assert {r.config: r.host_share for r in load_dataset(dataset).rows}["lru-25"] == 0.83
    path.write_text(json.dumps(rec))


def test_run_refuses_a_folder_holding_an_earlier_run(dataset: Path) -> None:
    with pytest.raises(EmuError, match="empty") as err:
        run_matrix(load_matrix(dataset.parent / "m.toml"), dataset, device="cpu", scale="tiny")
    assert err.value.key == "--out"


def test_matrix_edge(tmp_path: Path) -> None:
    bad = tmp_path / "m.toml"
    for text, key in (("[[config]]\nname = 'a'\nmodel = 'olmoe-1b-7b'\n", "config[0].capacity"),
                      ("decode_tokens = 0\n[[config]]\n", "decode_tokens"),
                      ("[[config]]\nname = 'a b'\nmodel = 'm'\ncapacity = 1\n", "config[0].name"),
                      ("[[config]]\nname = 'a'\nmodel = 'm'\ncapacity = 1\nlayers = -2\n", "config[0].layers"),
                      ("[[config]]\nname = 'a'\nmodel = 'm'\ncapacity = 1\ntrace = 'x.npz'\n", "config[0].trace"),
                      ("[[config]]\nname = 'a'\nmodel = 'm'\ncapacity = 1\n[[config]]\nname = 'a'\nmodel = 'm'\n"
                       "capacity = 1\n", "config[1].name"),
                      ("colour = 1\n", "colour")):
        bad.write_text(text)
        with pytest.raises(EmuError) as err:
            load_matrix(bad)
        assert err.value.key == key and err.value.file == str(bad)


def test_the_protocol_through_emu_validate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from emu.cli import main

    (tmp_path / "m.toml").write_text(MATRIX.split("[[config]]\nname = \"lfu-50-nl\"")[0])
    out = tmp_path / "ds"
    assert main(["validate", "--matrix", str(tmp_path / "m.toml"), "--out", str(out), "--device", "cpu",
                 "--scale", "tiny", "--calibrate-runtime", "hf-eager"]) == 0
    assert [p.name for p in (out / "runs").glob("*.json")] == ["lru-25.json"]
    profile = ROOT / "scenarios" / "profiles" / "h100-pcie5.toml"
    assert main(["validate", "--compare", str(out), "--profile", str(profile), "--runtime",
                 str(out / "calibration" / "hf-eager.toml"), "--gpu-kind", "cpu"]) == 0
    assert main(["validate", "--summary", str(out), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out.split("\n", 2)[-1])
    assert rows[0]["gpu"] == "cpu" and rows[0]["runtime"] == "hf-eager" and rows[0]["n_configs"] == 1
    assert main(["validate", "--compare", str(out), "--gpu-kind", "cpu"]) == 2  # no --profile: one line


def test_compare_names_a_model_the_profile_holds_no_tables_for(dataset: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    import shutil

    copy = tmp_path / "ds"
    shutil.copytree(dataset, copy)
    bare = ROOT / "scenarios" / "profiles" / "h100-provisional.toml"  # device figures, no per-model tables
    data = compare(copy, bare, copy / "calibration" / "hf-eager.toml", "cpu", "hf-eager")
    assert all(r["roofline"] for r in data["rows"])
    err = capsys.readouterr().err
    assert err.count("no measured expert/dense table") == 1 and "roofline" in err  # once per model


def test_compare_marks_the_runs_of_a_kernel_the_runtime_profile_does_not_price(
        dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import shutil

    copy = tmp_path / "ds"
    shutil.copytree(dataset, copy)
    rec_path = copy / "runs" / "lru-25.json"
    rec = json.loads(rec_path.read_text())
    rec["experts_kernel"] = "fused"  # as a fused runtime records it; hf-eager.toml prices one kernel per expert
    rec_path.write_text(json.dumps(rec))
    data = compare(copy, ROOT / "scenarios" / "profiles" / "h100-pcie5.toml", copy / "calibration" / "hf-eager.toml",
                   "cpu", "hf-eager")
    priced = {r["config"]: r["calibration"]["kernel_priced"] for r in data["rows"]}
    assert priced == {"lru-25": False, "lfu-50-nl": True, "lru-25-b2": True}
    err = capsys.readouterr().err
    assert "1 runs (lru-25) used an experts kernel" in err and "'per-expert'" in err
    ds = load_dataset(copy)
    assert [r.calibration.kernel_priced for r in ds.rows] == [priced[r.config] for r in ds.rows]


def test_a_miss_costs_its_host_work_beyond_the_all_hit_prices() -> None:
    from emu.runtime_profile import HostCosts
    from live.host_calibration import _Request
    from live.offload import HostLedger

    ledger = HostLedger()  # 2 decode steps of a 2-layer model: 8 experts launched, 3 copies issued
    ledger.add("expert", 8e-3, 8)
    ledger.add("copy", 3e-4, 3)
    req = _Request(ledger, decode_s=[0.01, 0.01], host_s=[0.010, 0.012], prefill_s=0.02, wait_s=0.002,
                   ahead_s=0.0, ahead_n=4)
    hit = HostCosts(pass_s=1e-3, layer_s=5e-4, readback_s=1e-4, gate_s=4e-4, expert_s=6e-4)
    # work 0.020 s; at the hit prices 2 * (1e-3 + 2 * 1e-3) + 8 * 6e-4 = 0.0108 s; the rest over 3 copies
    assert req.per_copy_over(hit, n_layers=2) == pytest.approx((0.020 - 0.0108) / 3)
    assert req.work_s == pytest.approx(0.020)
    ledger2 = HostLedger()
    ledger2.add("expert", 1e-3, 2)
    assert _Request(ledger2, [0.01], [0.01], 0.0, 0.0, 0.0, 2).per_copy_over(hit, 2) is None  # no copy: nothing



def test_a_copy_priced_within_one_request_is_the_slope_of_its_steps_host_work_over_their_copies() -> None:
    from live.host_calibration import _Request
    from live.offload import HostLedger

    # four steps: 10 ms of host work plus 0.5 ms per copy, less each step's readback wait
    copies, waits = [0, 2, 4, 1], [0.001, 0.002, 0.0, 0.003]
    spans = [0.010 + 0.0005 * c + w for c, w in zip(copies, waits)]
    req = _Request(HostLedger(), decode_s=spans, host_s=spans, prefill_s=0.0, wait_s=sum(waits), ahead_s=0.0,
                   ahead_n=1, step_copies=copies, step_wait_s=waits)
    assert req.per_copy_within() == pytest.approx(0.0005)
    # a host 5 ms slower in every step (what a slower host does to the difference of two requests) leaves it
    assert attrs.evolve(req, host_s=[s + 0.005 for s in spans]).per_copy_within() == pytest.approx(0.0005)
    # and the waits are not host work: counted as work, they change it
    assert attrs.evolve(req, step_wait_s=[0.0] * 4).per_copy_within() != pytest.approx(0.0005)
    flat = attrs.evolve(req, step_copies=[2, 2, 2, 2])
    assert flat.per_copy_within() is None  # as many copies in every step: no slope
    assert attrs.evolve(req, step_copies=[]).per_copy_within() is None  # not recorded (an older request)

def test_a_prefill_miss_carries_its_gate_decision_work_beyond_the_all_hit_gates() -> None:
    from live.host_calibration import _Request
    from live.offload import HostLedger

    def prefill(gate_s: float, copies: int, issue_s: float) -> _Request:
        ledger = HostLedger()
        ledger.phase = 0
        ledger.add("gate", gate_s, 4)  # a 4-layer prefill
        if copies:
            ledger.add("copy", issue_s * copies, copies)
        return _Request(ledger, [0.01], [0.01], 0.02, 0.0, 0.0, 2)

    hit = prefill(4 * 2e-4, 0, 0.0)  # every expert resident: 0.2 ms a gate
    missing = prefill(4 * 6e-4, 40, 1.5e-5)  # 40 misses: 0.6 ms a gate, 15 us to issue each copy
    # the gates' 4 * 0.4 ms beyond the all-hit gates is the misses' decisions: 40 us a copy beside its issue
    assert missing.prefill_copy_over(hit) == pytest.approx(1.5e-5 + 4 * 4e-4 / 40)
    assert hit.prefill_copy_over(hit) is None  # no copy: nothing to price
    cheaper = prefill(4 * 1e-4, 10, 1.5e-5)  # gates cheaper than the all-hit ones (noise): the issue alone
    assert cheaper.prefill_copy_over(hit) == pytest.approx(1.5e-5)


def test_a_prefetch_costs_the_host_work_it_adds_beyond_the_same_request_without() -> None:
    from live.host_calibration import _Request
    from live.offload import HostLedger

    def request(experts: int, work: float, copies: tuple[int, int], prefetches: tuple[int, int]) -> _Request:
        ledger = HostLedger()
        ledger.add("expert", 1e-3 * experts, experts)
        return _Request(ledger, decode_s=[0.01], host_s=[work], prefill_s=0.0, wait_s=0.0, ahead_s=0.0, ahead_n=1,
                        prefill_work_s=0.05 + work, copies=copies, prefetches=prefetches)

    base = request(10, 0.020, (30, 12), (0, 0))
    # 8 prefetches of which 5 replaced demand copies (12 -> 7 demand, 15 copies in all), 2 more expert launches
    pf = request(12, 0.030, (30, 15), (0, 8))
    assert pf.per_prefetch_over(base, 1, expert_s=4e-4, copy_s=5e-4) == pytest.approx(
        (0.010 - 2 * 4e-4 - (7 - 12) * 5e-4) / 8)
    assert pf.per_prefetch_over(base, 0, expert_s=4e-4, copy_s=5e-4) is None  # no prefetch in its prefill
    assert base.per_prefetch_over(base, 1, expert_s=4e-4, copy_s=5e-4) is None
    # the policy's work at each of the 1 step x 3 layers' gates comes off first
    assert pf.per_prefetch_over(base, 1, expert_s=4e-4, copy_s=5e-4, gate_s=1e-3, n_layers=3) == pytest.approx(
        (0.010 - 2 * 4e-4 - (7 - 12) * 5e-4 - 3e-3) / 8)
    # the all-resident request with the policy (issuing nothing) beyond the one without, per gate: its host work,
    # and what it adds to the median step (here 1 of its 2 ms a step ran while the device worked)
    resident, resident_pf = request(10, 0.020, (0, 0), (0, 0)), request(10, 0.026, (0, 0), (0, 0))
    resident = attrs.evolve(resident, decode_s=[0.010, 0.030, 0.011])
    resident_pf = attrs.evolve(resident_pf, decode_s=[0.012, 0.013, 0.001])
    assert resident_pf.per_gate_over(resident, n_layers=3) == pytest.approx(0.006 / (3 * 3))  # 3 steps, 3 layers
    assert resident_pf.per_gate_step_over(resident, n_layers=3) == pytest.approx((0.012 - 0.011) / 3)
    assert pf.per_gate_over(base, n_layers=3) is None  # it issued prefetches: not a gate's price
    assert pf.per_gate_step_over(base, n_layers=3) is None


def test_a_copy_is_priced_by_its_requests_own_slope_before_the_difference_from_another() -> None:
    from live.host_calibration import copy_price

    assert copy_price(3e-5, 8e-5, 9e-4) == pytest.approx(8e-5)  # the slope, not the drifted difference
    assert copy_price(3e-5, None, 9e-4) == pytest.approx(9e-4)  # no slope (as many copies each step)
    assert copy_price(3e-5, None, -2e-3) == pytest.approx(3e-5)  # never below the issue
    assert copy_price(3e-5, 1e-5, 9e-4) == pytest.approx(3e-5)
    assert copy_price(3e-5, None, None) == pytest.approx(3e-5)  # no resident request to subtract
    assert copy_price(None, 8e-5, 9e-4) is None  # no copy issued: nothing to price


def test_a_prefetchs_host_work_within_one_request_is_the_slope_over_its_steps() -> None:
    from live.host_calibration import _Request
    from live.offload import HostLedger

    pf = [3, 8, 1, 5, 9, 2]
    demand = [2, 0, 4, 1, 3, 5]
    wait = [0.004, 0.005, 0.003, 0.006, 0.002, 0.004]
    work = [1e-3 + 5e-5 * f + 3e-5 * d for f, d in zip(pf, demand)]
    req = _Request(HostLedger(), decode_s=[0.01] * 6, host_s=[w + x for w, x in zip(work, wait)], prefill_s=0.0,
                   wait_s=sum(wait), ahead_s=0.0, ahead_n=1, step_copies=[f + d for f, d in zip(pf, demand)],
                   step_wait_s=wait, step_prefetches=pf)
    assert req.per_prefetch_within() == pytest.approx(5e-5)
    # the prefetches alone do not tell a prefetch's price: the same count every step, or steps not recorded
    assert attrs.evolve(req, step_prefetches=[4] * 6).per_prefetch_within() is None
    assert attrs.evolve(req, step_prefetches=[]).per_prefetch_within() is None


def test_the_calibration_prices_hits_on_a_resident_request(dataset: Path) -> None:
    rt = load_runtime_profile(dataset / "calibration" / "hf-eager.toml")
    for req in rt.provenance["models"]["olmoe-1b-7b"]["requests"]:
        resident = req["resident_request"]
        assert resident is not None and not any(k.startswith("decode.copy") for k in resident["ledger"])
        assert req["ledger"]["decode.copy"][1] > 0  # the small cache's request misses
        costs = req["costs"]
        price = req.get("copy_s_within", req["copy_s_per_miss"])  # the request's own slope where it has one
        assert costs["copy_s"] == pytest.approx(max(price, req["copy_s_issue"]))
        n_exp = resident["ledger"]["decode.expert"]
        assert costs["expert_s"] == pytest.approx(n_exp[0] / n_exp[1])  # a hit's launch, from the resident request


def test_the_fused_kernel_calibrates_a_read_back_layer_and_its_one_launch() -> None:
    from live.host_calibration import calibrate_model, runtime_profile

    # over a static cache (the graph mode's, without the graphs): each request's warm-up prefill runs first
    cal = calibrate_model("olmoe-1b-7b", None, device="cpu", scale="tiny", prompt_len=8, steps=4, kernel="fused",
                          decode="static")
    assert cal.raw["decode"] == "static"
    assert cal.raw["kernel"] == "fused"
    resident = cal.raw["resident_request"]
    # all experts resident, yet no layer deferred: each reads its routing back, decides and launches once
    gates = resident["ledger"]["decode.gate"]
    assert gates[1] == cal.raw["steps"] * cal.n_layers
    seconds, launched = resident["ledger"]["decode.expert"]
    assert launched >= gates[1] and cal.costs.expert_s == pytest.approx(seconds / launched)
    assert runtime_profile("hf-fused", [cal], "cpu").provenance["kernel"] == "fused"
    # each step's host span and the forward thread's own CPU seconds in it (never more than the span: the
    # thread's time, not the process's, whose torch threads run beside it)
    for req in (cal.raw, resident):
        spans, cpu = req["decode_host_span_s"], req["decode_host_cpu_s"]
        assert len(cpu) == len(spans) == cal.raw["steps"]
        assert all(0.0 < c <= s + 1e-3 for c, s in zip(cpu, spans))
        # each step's copies and readback waits: they add up to the request's
        copies, waits = req["decode_step_copies"], req["decode_step_wait_s"]
        assert len(copies) == len(waits) == cal.raw["steps"]
        assert sum(copies) == req["copies"][1]
        assert sum(waits) == pytest.approx(req["decode_readback_wait_s"])
    assert sum(resident["decode_step_copies"]) == 0  # every expert resident: no copy in any step


def test_merge_joins_a_matrix_run_in_parts(dataset: Path, tmp_path: Path) -> None:
    import shutil

    from live.protocol import merge_parts

    a, b = tmp_path / "a", tmp_path / "b"
    for part, runs in ((a, ["lru-25"]), (b, ["lfu-50-nl", "lru-25-b2"])):
        shutil.copytree(dataset / "calibration", part / "calibration")
        shutil.copytree(dataset / "traces", part / "traces")
        (part / "runs").mkdir()
        for r in runs:
            shutil.copy2(dataset / "runs" / f"{r}.json", part / "runs")
    with pytest.raises(EmuError, match="more than one part"):  # the same model calibrated in both parts
        merge_parts([a, b], tmp_path / "same")
    # part b calibrated another model instead, at other costs
    import attrs

    from live.host_calibration import write_runtime_profile

    rt_b = load_runtime_profile(dataset / "calibration" / "hf-eager.toml")
    costs_b = attrs.evolve(rt_b.models["olmoe-1b-7b"], expert_s=2e-3)
    gates_b = {"qwen3-30b-a3b": {"topk": 9e-4}}
    write_runtime_profile(attrs.evolve(rt_b, models={"qwen3-30b-a3b": costs_b}, prefetch_gates=gates_b),
                          b / "calibration" / "hf-eager.toml")
    merged = merge_parts([a, b], tmp_path / "m")
    assert sorted(p.stem for p in (merged / "runs").glob("*.json")) == ["lfu-50-nl", "lru-25", "lru-25-b2"]
    assert len(list((merged / "traces").glob("*"))) == len(list((dataset / "traces").glob("*")))
    rt = load_runtime_profile(merged / "calibration" / "hf-eager.toml")
    assert sorted(rt.models) == ["olmoe-1b-7b", "qwen3-30b-a3b"]
    assert rt.models["qwen3-30b-a3b"].expert_s == 2e-3
    own = rt.models["olmoe-1b-7b"].expert_s
    assert rt.host.expert_s == pytest.approx((own + 2e-3) / 2)  # the median of the two models
    own_topk = rt.prefetch_gates["olmoe-1b-7b"]["topk"]  # each model's gate prices, the runtime's their median
    assert rt.prefetch_gates["qwen3-30b-a3b"] == {"topk": 9e-4}
    assert rt.host_prefetch_gates["topk"] == pytest.approx((own_topk + 9e-4) / 2)
    with pytest.raises(EmuError, match="more than one part"):  # a configuration in two parts
        merge_parts([a, a], tmp_path / "twice")


def test_store_shares_traces_between_datasets(dataset: Path, tmp_path: Path) -> None:
    import shutil

    from emu.trace import RoutingTrace
    from live.protocol import main, store_traces
    from live.validate import load_live_run

    store = tmp_path / "validation" / "traces"
    a, b = tmp_path / "validation" / "a", tmp_path / "validation" / "b"
    for d in (a, b):
        shutil.copytree(dataset / "runs", d / "runs")
        shutil.copytree(dataset / "traces", d / "traces")
    n_traces = len(list((dataset / "traces").glob("*.npz")))
    assert store_traces(a, store) == n_traces
    assert store_traces(b, store) == 0  # the same fingerprints: nothing new, one file each
    assert len(list(store.glob("*.npz"))) == n_traces and not (a / "traces").exists()
    for d in (a, b):
        for path in sorted((d / "runs").glob("*.json")):
            run = load_live_run(path)
            assert json.loads(path.read_text())["trace"].startswith("../../traces/")
            assert run.trace.fingerprint() == run.record["trace_fingerprint"]
    # a store file under a trace's name that holds another trace: refused, the dataset left as it was
    c = tmp_path / "c"
    shutil.copytree(dataset / "runs", c / "runs")
    shutil.copytree(dataset / "traces", c / "traces")
    victim = sorted(store.glob("*.npz"))[0]
    other = sorted(store.glob("*.npz"))[-1] if n_traces > 1 else None
    if other is None:  # one trace only: write a different one under its name
        t = RoutingTrace.load(victim)
        t.experts[0, 0, 0] = (int(t.experts[0, 0, 0]) + 1) % t.n_experts
        t.save(victim)
    else:
        shutil.copy2(other, victim)
    before = {p.name: p.read_text() for p in (c / "runs").glob("*.json")}
    with pytest.raises(EmuError, match="holds another trace"):
        store_traces(c, store)
    assert {p.name: p.read_text() for p in (c / "runs").glob("*.json")} == before
    # a record whose trace is in neither place: one clear line from the command, nothing rewritten
    d = tmp_path / "d"
    shutil.copytree(dataset / "runs", d / "runs")
    assert main(["store", str(d), "--traces", str(tmp_path / "empty")]) == 2
    assert {p.name: p.read_text() for p in (d / "runs").glob("*.json")} == before
    (d / "runs" / "broken.json").write_text("{not json")  # a record that is not JSON: one error naming it
    with pytest.raises(EmuError, match="cannot read the run record") as err:
        store_traces(d, store)
    assert err.value.file == str(d / "runs" / "broken.json")


def test_the_self_check_sets_the_emulated_resident_step_against_each_calibration_request(dataset: Path) -> None:
    import copy

    from emu.profile import load_profile
    from live.protocol import self_check
    from live.validation_set import format_model_table, load_dataset

    runtime = load_runtime_profile(dataset / "calibration" / "hf-eager.toml")
    profile = load_profile(ROOT / "scenarios" / "profiles" / "h100-pcie5.toml")
    checks = self_check(profile, runtime)  # from the calibration alone: no run of the dataset is read
    assert list(checks) == ["olmoe-1b-7b"] and len(checks["olmoe-1b-7b"]) == 3  # each request
    errors = checks["olmoe-1b-7b"]
    # a request whose resident steps took twice as long: its emulated step is half as far off, the others unmoved
    prov = copy.deepcopy(runtime.provenance)
    resident = prov["models"]["olmoe-1b-7b"]["requests"][0]["resident_request"]
    resident["decode_step_s"] = [2 * s for s in resident["decode_step_s"]]
    again = self_check(profile, attrs.evolve(runtime, provenance=prov))["olmoe-1b-7b"]
    assert 1 + again[0] == pytest.approx((1 + errors[0]) / 2)
    assert again[1:] == pytest.approx(errors[1:])
    # a dearer host item of one request: its emulated step is longer by that much on every layer it is paid
    prov = copy.deepcopy(runtime.provenance)
    prov["models"]["olmoe-1b-7b"]["requests"][2]["costs"]["gate_s"] += 1e-3
    dearer = self_check(profile, attrs.evolve(runtime, provenance=prov))["olmoe-1b-7b"]
    assert dearer[2] > errors[2] and dearer[:2] == pytest.approx(errors[:2])
    # a hand-edited provenance: a request without steps or with a cost that is not a number is skipped
    prov = copy.deepcopy(runtime.provenance)
    reqs = prov["models"]["olmoe-1b-7b"]["requests"]
    reqs[0]["resident_request"]["decode_step_s"] = []
    reqs[1]["costs"]["gate_s"] = "fast"
    assert self_check(profile, attrs.evolve(runtime, provenance=prov))["olmoe-1b-7b"] == pytest.approx(errors[2:])
    # compare keeps it, tied to one of the model's rows, and the dataset's model table shows it
    compare(dataset, ROOT / "scenarios" / "profiles" / "h100-pcie5.toml", dataset / "calibration" / "hf-eager.toml",
            "cpu", "hf-eager")
    data = json.loads((dataset / "comparisons.json").read_text())
    assert data["self_check"]["olmoe-1b-7b"]["config"] in {"lru-25", "lfu-50-nl", "lru-25-b2"}
    ds = load_dataset(dataset)
    assert list(ds.self_check.values()) == [pytest.approx(tuple(errors))]
    assert "self-check" in format_model_table(ds).splitlines()[0]


def test_the_batch_self_check_emulates_the_calibrations_batch_request(dataset: Path) -> None:
    import copy

    import numpy as np

    from emu.profile import load_profile
    from live.protocol import _resident_run, self_check

    runtime = load_runtime_profile(dataset / "calibration" / "hf-eager.toml")
    profile = load_profile(ROOT / "scenarios" / "profiles" / "h100-pcie5.toml")
    errors = self_check(profile, runtime, batch=True)["olmoe-1b-7b"]
    assert len(errors) == 3 and all(np.isfinite(errors))
    # the emulated batch: 4 requests in lockstep, each step and layer on as many distinct experts as recorded
    distinct = [[8, 32], [20, 9]]
    run = _resident_run("olmoe-1b-7b", 2, 5, 2, batch=4, distinct=distinct)
    t = run.trace
    assert list(np.diff(t.pass_offsets)) == [20, 4, 4] and list(t.pass_phase) == [0, 1, 1]
    for step, counts in enumerate(distinct):
        rows = t.experts[20 + 4 * step: 24 + 4 * step]
        assert [len(np.unique(rows[:, layer])) for layer in range(2)] == counts
        assert all(len(set(token)) == 8 for token in rows.reshape(-1, 8).tolist())  # top-8, each distinct
    # a dearer batch launch in one request's costs lengthens its emulated batch step only
    prov = copy.deepcopy(runtime.provenance)
    prov["models"]["olmoe-1b-7b"]["requests"][1]["costs"]["batch_expert_s"] += 1e-3
    dearer = self_check(profile, attrs.evolve(runtime, provenance=prov), batch=True)["olmoe-1b-7b"]
    assert dearer[1] > errors[1] and [dearer[0], dearer[2]] == pytest.approx([errors[0], errors[2]])
    # a count outside top-k .. batch x top-k (a hand-edited provenance) skips that request
    prov = copy.deepcopy(runtime.provenance)
    prov["models"]["olmoe-1b-7b"]["requests"][0]["resident_batch_request"]["decode_step_distinct_experts"][0][0] = 3
    skipped = self_check(profile, attrs.evolve(runtime, provenance=prov), batch=True)["olmoe-1b-7b"]
    assert skipped == pytest.approx(errors[1:])
    compare(dataset, ROOT / "scenarios" / "profiles" / "h100-pcie5.toml", dataset / "calibration" / "hf-eager.toml",
            "cpu", "hf-eager")
    data = json.loads((dataset / "comparisons.json").read_text())
    assert data["self_check_batch"]["olmoe-1b-7b"]["errors"] == pytest.approx(errors)
    from live.validation_set import format_model_table, load_dataset

    ds = load_dataset(dataset)
    assert list(ds.self_check_batch.values()) == [pytest.approx(tuple(errors))]
    assert "batch self-check" in format_model_table(ds).splitlines()[0]


def test_compare_names_the_runs_whose_pace_moved_within_the_run(dataset: Path, capsys: pytest.CaptureFixture[str],
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    import live.validation_set

    args = (dataset, ROOT / "scenarios" / "profiles" / "h100-pcie5.toml", dataset / "calibration" / "hf-eager.toml",
            "cpu", "hf-eager")
    monkeypatch.setattr(live.validation_set, "DRIFT_PARTS", 3)  # the CPU runs decode 6 steps: two a part
    monkeypatch.setattr(live.validation_set, "DRIFT_WARNING", -1.0)  # every run's drift is beyond it
    compare(*args)
    err = capsys.readouterr().err
    line = next(x for x in err.splitlines() if "pace moved" in x)
    assert "within 3 runs" in line and all(c in line for c in ("lru-25 ", "lfu-50-nl ", "lru-25-b2 "))
    monkeypatch.setattr(live.validation_set, "DRIFT_WARNING", 1e9)  # none is
    compare(*args)
    assert "pace moved" not in capsys.readouterr().err
