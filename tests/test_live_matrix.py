"""The matrix helpers on the CPU: re-sizing a built runtime, repeated cold prefills, runtime calibration."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from emu.errors import EmuError  # noqa: E402
from emu.profile import load_profile  # noqa: E402
from live.matrix import reconfigure, slots_for, ttft_repeats  # noqa: E402
from live.models import build_model, live_shape  # noqa: E402
from live.offload import ExpertOffload  # noqa: E402
from live.runner import PassPlan, run_live  # noqa: E402
from live.runtime_cal import measure_runtime_overheads  # noqa: E402
from live.validate import LiveRun, validate_run  # noqa: E402

PROFILE = str(Path(__file__).resolve().parent.parent / "scenarios/profiles/h100-provisional.toml")
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def built():
    shape = live_shape("olmoe-1b-7b", "tiny", 2)
    model = build_model("olmoe-1b-7b", "tiny", n_layers=2, dtype="fp32", seed=0)
    return shape, model, ExpertOffload(model, 6, eviction="lru", device="cpu", kernel="eager")


def _record(rt, res) -> dict:
    import attrs

    from live.models import live_spec

    spec = live_spec(live_shape("olmoe-1b-7b", "tiny", 2), "bf16")
    st = res.stats
    return {"model": spec.to_dict(), "slots": rt.n_slots, "eviction": rt.eviction, "ttft_s": res.ttft_s,
            "decode_tok_s": res.decode_tok_s, "stats": attrs.asdict(st) | {"hit_rate": st.hit_rate},
            "trace": "t.npz", "expert_bytes": None}


def test_slots_for_rounds_like_emu_live() -> None:
    assert slots_for(0.05, 1024) == 51 and slots_for(0.05, 64) == 3 and slots_for(1.0, 64) == 64
    assert slots_for(0.001, 64) == 1


def test_reconfigure_gives_a_cold_cache_that_the_emulator_matches(built) -> None:
    shape, model, rt = built
    plan = [PassPlan(12, 5)]
    run_live(model, plan, vocab=shape.vocab, device=CPU, runtime=rt, warmup_passes=1)
    reconfigure(rt, 40, "least-stale", "eager")
    assert rt.n_slots == 40 and rt.slot_gu.shape[0] == 40 and rt.eviction == "least-stale"
    res = run_live(model, plan, vocab=shape.vocab, device=CPU, runtime=rt, warmup_passes=1)
    assert res.stats.accesses == res.stats.hits + res.stats.misses > 0
    assert res.stats.compulsory > 0  # cold after the re-size
    v = validate_run(LiveRun("mem", _record(rt, res), res.trace), load_profile(PROFILE))
    assert v.counts_equal, (v.live_counts, v.emu_counts)


def test_ttft_repeats_replay_the_recorded_prefill_cold(built) -> None:
    shape, model, rt = built
    reconfigure(rt, 6, "lru", "eager")
    res = run_live(model, [PassPlan(12, 2)], vocab=shape.vocab, device=CPU, runtime=rt, warmup_passes=1)
    first = res.trace.pass_offsets[1]
    times = ttft_repeats(model, rt, res.trace, 12, vocab=shape.vocab, device=CPU, n=2, seed=1)
    assert len(times) == 2 and all(t > 0 for t in times)
    # the last repeat started cold and ran exactly the recorded prefill's accesses
    per_layer = [len(set(res.trace.experts[:first, layer].ravel().tolist())) for layer in range(2)]
    assert rt.stats().accesses == sum(per_layer) and rt.stats().compulsory == rt.stats().misses > 0


def test_runtime_calibration_needs_every_expert_resident(built) -> None:
    shape, model, rt = built
    reconfigure(rt, 2 * 64, "lru", "eager")
    cal = measure_runtime_overheads(model, rt, vocab=shape.vocab, device=CPU, prompt_len=12, steps=4)
    assert cal["full_step_s"] > 0 and cal["no_experts_step_s"] > 0 and cal["n_layers"] == 2 and cal["top_k"] == 8
    # the mean of every decode step kept (the prefill left out), the statistic of a run's decode rate
    assert cal["step_statistic"] == "mean" and len(cal["full_steps_s"]) == len(cal["no_experts_steps_s"]) == 4
    assert cal["full_step_s"] == pytest.approx(sum(cal["full_steps_s"]) / 4, rel=1e-12)
    assert cal["no_experts_step_s"] == pytest.approx(sum(cal["no_experts_steps_s"]) / 4, rel=1e-12)
    # the host's launches between a layer and the next one's readback: a part of each of its layers
    assert 0 < cal["launch_ahead_s"] < cal["full_step_s"]
    # each mode's prefill beside its steps, with the experts per layer that prefill computed
    assert cal["full_prefill_s"] > 0 and cal["no_experts_prefill_s"] > 0
    assert 8 <= cal["prefill_experts"] <= 64  # 12 tokens x top 8 over 64 experts
    reconfigure(rt, 6, "lru", "eager")
    with pytest.raises(EmuError, match="resident"):
        measure_runtime_overheads(model, rt, vocab=shape.vocab, device=CPU, prompt_len=12, steps=4)


def test_launch_ahead_spans_run_from_a_layer_to_the_next_layers_readback_within_a_pass(built) -> None:
    shape, model, rt = built
    reconfigure(rt, 6, "lru", "eager")
    plan = PassPlan(5, 3)
    s0, n0 = rt.launch_ahead_s, rt.launch_ahead_n
    res = run_live(model, [plan], vocab=shape.vocab, device=CPU, runtime=rt, warmup_passes=0, seed=1)
    # 2 layers: one span per pass (layer 0 -> 1), none from a pass's last layer to the next pass's first
    assert rt.launch_ahead_n - n0 == 1 + plan.n_decode
    spans = rt.launch_ahead_s - s0
    assert 0 < spans < res.ttft_s + sum(res.decode_s)


def test_the_matrix_runs_rounds_and_records_medians(tmp_path, monkeypatch) -> None:
    """Every configuration runs once per round; a record holds the best decode rate of its rounds and the
    fastest of all its cold prefills, with the medians beside them; the runtime calibration likewise."""
    import json
    import time

    import live.matrix as matrix

    monkeypatch.setattr(matrix, "DECODE", 3)
    monkeypatch.setattr(matrix, "MIXTRAL_PROMPT", 8)
    monkeypatch.setattr(matrix, "CAL_STEPS", 2)
    monkeypatch.setattr(matrix, "FRACTIONS", (0.25, 1.0))
    monkeypatch.setattr(matrix, "EVICTIONS", ("lru",))
    # as for long copies on a GPU: prefetching runs calibrated before, the others in lockstep
    monkeypatch.setattr(matrix, "calibration_for", lambda copy_s, pf: "before" if pf != "none" else "interleaved")
    matrix.run_model("mixtral", tmp_path, time.time(), device="cpu", scale="tiny", n_layers=2,
                     prefetches=("none", "next-layer"), rounds=3)
    tags = sorted(p.stem for p in tmp_path.glob("mixtral_*pct*.json"))
    assert tags == ["mixtral_100pct_lru", "mixtral_25pct_lru", "mixtral_25pct_lru_next_layer"]
    for tag in tags:
        rec = json.loads((tmp_path / f"{tag}.json").read_text())
        assert rec["rounds"] == 3 and len(rec["decode_tok_s_rounds"]) == 3
        assert rec["decode_tok_s"] == max(rec["decode_tok_s_rounds"])
        assert rec["decode_tok_s_median"] == sorted(rec["decode_tok_s_rounds"])[1]
        assert len(rec["ttft_samples_s"]) == 3 * (1 + matrix.TTFT_REPEATS)
        assert rec["ttft_s"] == min(rec["ttft_samples_s"])
        assert rec["ttft_median_s"] == float(np.median(rec["ttft_samples_s"]))
        assert rec["stats_equal_across_rounds"] is True  # forced routing: every round replays the same
        assert rec["slots"] == matrix.slots_for(0.25 if "25pct" in tag else 1.0, 16)  # the run's, not the last's
        assert rec["prefetch"] == ("next-layer" if tag.endswith("next_layer") else "none")
        # paired: one runtime calibration per run, taken right before it, and each round's own TTFT
        assert len(rec["runtime_cal_rounds"]) == 3 and all(c["full_step_s"] > 0 for c in rec["runtime_cal_rounds"])
        assert all(c["pace_s"] > 0 and c["run_pace_s"] > 0 for c in rec["runtime_cal_rounds"])  # host_pace probes
        per = 1 + matrix.TTFT_REPEATS
        assert rec["ttft_rounds_s"] == [min(rec["ttft_samples_s"][k * per: (k + 1) * per]) for k in range(3)]
        # interleaved: one step per mode before each of the run's DECODE decode steps; before: CAL_STEPS steps
        how, steps = ("before", 2) if rec["prefetch"] != "none" else ("interleaved", 3)
        assert rec["calibration"] == how
        for c in rec["runtime_cal_rounds"]:
            assert c["calibration"] == how and c["steps"] == steps
            assert len(c["full_steps_s"]) == len(c["no_experts_steps_s"]) == steps
            assert c["full_step_s"] == pytest.approx(float(np.mean(c["full_steps_s"])), rel=1e-12)
        # the run's own host spans per round: a readback per layer of every pass (3 warm-up, prefill, decode)
        assert len(rec["run_host_rounds"]) == 3
        for h in rec["run_host_rounds"]:
            assert h["readbacks"] == 2 * (3 + 1 + 3) and h["readback_wait_s"] > 0 and h["launch_ahead_s"] > 0
    for suffix, runs in (("", 2), ("_next_layer", 1)):  # model level: every calibration of the policy
        cal = json.loads((tmp_path / f"mixtral_runtime_cal{suffix}.json").read_text())
        assert len(cal["rounds"]) == 3 * runs
        assert cal["full_step_s"] == min(r["full_step_s"] for r in cal["rounds"])
        assert cal["full_step_median_s"] == float(np.median([r["full_step_s"] for r in cal["rounds"]]))


def test_a_calibration_in_lockstep_with_a_run_leaves_the_run_as_it_was(built) -> None:
    """A sibling runtime (every expert, its own slots) calibrated one step per mode before each of the run's
    decode steps: the run's tokens, counts and recorded routing are those of the same run alone; each mode
    replays the calibration request's own routing, step after step, as a calibration taken alone does (the
    blocks are routed back to the run's runtime after each)."""
    from live.hooks import RoutingHooks
    from live.runner import Between, generate
    from live.runtime_cal import InterleavedCalibration

    shape, model, rt = built
    reconfigure(rt, 6, "lru", "eager")
    cal_rt = rt.sibling(rt.n_layers * rt.n_experts)
    cal_rt.preload()
    plan = PassPlan(6, 5)
    alone = run_live(model, [plan], vocab=shape.vocab, device=CPU, runtime=rt, warmup_passes=1, seed=3)
    lockstep = InterleavedCalibration(model, cal_rt, vocab=shape.vocab, device=CPU, prompt_len=5, steps=4)
    with pytest.raises(EmuError, match="begin"):
        lockstep(0)
    lockstep.begin()
    seen: list[int] = []
    mixed = run_live(model, [plan], vocab=shape.vocab, device=CPU, runtime=rt, warmup_passes=1, seed=3,
                     between=Between(lambda step: (seen.append(step), lockstep(step)), 1))
    assert mixed.tokens == alone.tokens and mixed.stats == alone.stats
    assert mixed.trace.fingerprint() == alone.trace.fingerprint()
    assert seen == [0, 1, 2, 3, 4]  # before the prefill, then before each later decode step
    assert all(m._runtime[0] is rt for m in rt.modules)  # the model is the run's again
    cal = lockstep.result()
    assert cal_rt.copies == 0  # every expert resident: no copy in any mode
    assert cal["launch_ahead_s"] > 0  # measured on the full mode's decode steps
    assert cal["steps"] == 4 and len(cal["full_steps_s"]) == len(cal["no_experts_steps_s"]) == 4  # 4 recorded
    assert cal["full_step_s"] == pytest.approx(sum(cal["full_steps_s"]) / 4, rel=1e-12)
    # the modes' prefills (run at the run's step 0), and the experts per layer of the calibration's prefill
    assert cal["full_prefill_s"] > 0 and cal["no_experts_prefill_s"] > 0
    first = lockstep.routing.experts[: lockstep.routing.pass_offsets[1]]
    assert cal["prefill_experts"] == pytest.approx(np.mean([len(set(first[:, li].ravel().tolist())) for li in (0, 1)]))
    # the full mode's request decoded what the calibration request decodes alone, on the forced routing
    rec = RoutingHooks(model, record=True, speculate=True, force=lockstep.routing)
    try:
        want = generate(model, lockstep.prompt, PassPlan(5, 4, 0, (1, 2, 3, 4)), hooks=rec, runtime=cal_rt)
    finally:
        rec.remove()
    assert lockstep._requests["full"].out_ids == want
    cal_rt.close()


def test_auto_calibration_interleaves_but_for_prefetching_runs_with_long_copies() -> None:
    from live.matrix import calibration_for

    assert calibration_for(0.23e-3, "next-layer") == "interleaved"  # OLMoE's copies on the H100
    # Mixtral's: a prefetching run ends its steps with copies in flight, which would land meanwhile
    assert calibration_for(6.4e-3, "next-layer") == "before"
    assert calibration_for(6.4e-3, "none") == "interleaved"  # every copy is waited for within its step
    assert calibration_for(0.0, "next-layer") == "interleaved"  # the CPU's synchronous copies


@pytest.mark.parametrize("prefetch", ["none", "next-layer"])
def test_the_copying_mode_copies_every_access_again_and_leaves_the_run_and_counters_alone(built, prefetch) -> None:
    """The lockstep calibration's third mode: each decode step copies every access of its request again onto
    its own slot (and, prefetching, each key the speculator predicts for the next layer), so its step carries
    a run's copies without a miss; the issue costs come from its added host work, split by the loops' ratio."""
    from live.runner import Between
    from live.runtime_cal import COPYING, InterleavedCalibration

    shape, model, rt = built
    reconfigure(rt, 6, "lru", "eager", prefetch)
    cal_rt = rt.sibling(rt.n_layers * rt.n_experts, prefetch=prefetch)
    cal_rt.preload()
    plan = PassPlan(6, 4)
    alone = run_live(model, [plan], vocab=shape.vocab, device=CPU, runtime=rt, warmup_passes=1, seed=3)
    lockstep = InterleavedCalibration(model, cal_rt, vocab=shape.vocab, device=CPU, prompt_len=5, steps=4,
                                      copying=True)
    assert lockstep.modes[-1] == COPYING
    lockstep.begin()
    mixed = run_live(model, [plan], vocab=shape.vocab, device=CPU, runtime=rt, warmup_passes=1, seed=3,
                     between=Between(lockstep, 1))
    assert mixed.tokens == alone.tokens and mixed.stats == alone.stats  # the run is untouched
    cal = lockstep.result()
    assert cal_rt.copies == cal_rt.evictions == 0 and cal_rt.stats().misses == 0  # counters as they were
    demand, pf = cal["copying_copies"]
    # 2 layers x 8 experts per decode step; prefetching: layer 1's 8 predicted keys, the useful ones not again
    if prefetch == "none":
        assert (demand, pf) == (16, 0) and "prefetch_issue_s" not in cal
    else:
        assert pf == 8 and 8 <= demand < 16 and cal["prefetch_issue_s"] == cal["copy_issue_s"]  # CPU: no loops
    assert cal["issue_from"] == "copying mode" and len(cal["full_steps_s"]) == 4
    assert cal["copy_issue_s"] == pytest.approx(max(cal["copying_added_s"], 0.0) / (demand + pf))
    cal_rt.close()
