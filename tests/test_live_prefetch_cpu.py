"""Prefetch in the live runtime on the CPU: the emulator's decisions, unchanged math, promotion, validate."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import attrs
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from emu.errors import EmuError  # noqa: E402
from emu.profile import load_profile  # noqa: E402
from live.cache_bridge import LIVE_PREFETCH  # noqa: E402
from live.models import build_model, live_shape, live_spec  # noqa: E402
from live.offload import ExpertOffload  # noqa: E402
from live.runner import PassPlan, run_live  # noqa: E402
from live.validate import LiveRun, validate_run  # noqa: E402

from .live_support import logits_of_generation, one_thread  # noqa: E402, F401

PROFILE = str(Path(__file__).resolve().parent.parent / "scenarios/profiles/h100-provisional.toml")
CPU = torch.device("cpu")
LAYERS = 4




def _live(eviction: str, prefetch: str, slots: int, plan: PassPlan, **kw):
    """A tiny OLMoE (64 experts, top-8, LAYERS layers) run live; returns the runtime, result and record."""
    shape = live_shape("olmoe-1b-7b", "tiny", LAYERS)
    model = build_model("olmoe-1b-7b", "tiny", n_layers=LAYERS, dtype="fp32", seed=5)
    rt = ExpertOffload(model, slots, eviction=eviction, prefetch=prefetch, kernel="eager", **kw)
    try:
        res = run_live(model, [plan], vocab=shape.vocab, device=CPU, runtime=rt, warmup_passes=1)
    finally:
        rt.close()
    st = res.stats
    rec = {"model": live_spec(shape, "bf16").to_dict(), "slots": slots, "eviction": eviction, "prefetch": prefetch,
           "ttft_s": res.ttft_s, "decode_tok_s": res.decode_tok_s,
           "stats": attrs.asdict(st) | {"hit_rate": st.hit_rate}, "trace": "t.npz", "expert_bytes": None}
    return rt, res, rec


@pytest.mark.parametrize("eviction", ["lru", "least-stale", "lfu"])  # lfu: prefetch inserts are no access
@pytest.mark.parametrize("slots", [24, 96])
def test_next_layer_prefetch_decides_as_the_emulator_does(eviction: str, slots: int) -> None:
    rt, res, rec = _live(eviction, "next-layer", slots, PassPlan(10, 10))
    v = validate_run(LiveRun("mem", rec, res.trace), load_profile(PROFILE))
    st = res.stats
    assert v.live_counts == v.emu_counts  # hits, accesses, copies
    assert v.live_prefetch[:3] == v.emu_prefetch[:3]  # issued, useful, dropped
    assert v.counts_equal
    assert st.prefetch_issued > 0 and 0 < st.prefetch_useful <= st.prefetch_issued
    assert st.copies == st.misses + st.prefetch_issued  # every prefetch was copied once, promoted or not
    assert st.bytes_h2d == st.copies * rt.expert_bytes
    if slots == 24:  # a small cache: prefetches find no victim and misses wait for one
        assert st.prefetch_dropped > 0 and st.waits > 0
    # the runtime's speculator is the recorded one: the last pass's predictions of layers 1.. agree
    t0 = int(res.trace.pass_offsets[-2])
    assert np.array_equal(rt.bridge.tv.predicted[:, 1:], res.trace.predicted[t0:, 1:])


@pytest.mark.parametrize("prefetch", [p for p in LIVE_PREFETCH if p not in ("none", "next-layer")])
def test_every_live_prefetch_policy_decides_as_the_emulator_does(prefetch: str) -> None:
    _rt, res, rec = _live("lru", prefetch, 40, PassPlan(8, 8))
    v = validate_run(LiveRun("mem", rec, res.trace), load_profile(PROFILE))
    assert v.counts_equal, (v.live_counts, v.emu_counts, v.live_prefetch, v.emu_prefetch)
    assert res.stats.prefetch_issued > 0


def test_prefetch_makes_hits_that_fetch_on_miss_does_not() -> None:
    _rt, with_pf, _ = _live("lru", "next-layer", 96, PassPlan(10, 10))
    _rt, without, _ = _live("lru", "none", 96, PassPlan(10, 10))
    assert with_pf.trace.fingerprint() == without.trace.fingerprint()  # same model, same routing
    assert with_pf.stats.hits > without.stats.hits
    assert without.stats.prefetch_issued == 0




class _NeverIdle:
    """Stands in for a copy engine that is always busy: the watchdog never submits, every needed prefetch
    is promoted at its gate (a late hit) and demand copies must land queued prefetches to find victims."""

    @staticmethod
    def idle() -> bool:
        return False

    @staticmethod
    def wait_idle() -> None:
        time.sleep(0.005)


@pytest.mark.parametrize(("kernel", "slots", "stall"), [("eager", 20, False), ("eager", 20, True),
                                                         ("fused", 200, False), ("fused", 200, True)])
def test_prefetch_leaves_the_logits_bit_for_bit(kernel: str, slots: int, stall: bool) -> None:
    impl = "eager" if kernel == "eager" else None
    ref = build_model("olmoe-1b-7b", "tiny", n_layers=LAYERS, dtype="fp32", seed=8, experts_implementation=impl)
    off = build_model("olmoe-1b-7b", "tiny", n_layers=LAYERS, dtype="fp32", seed=8, experts_implementation=impl)
    # stalled: the "drain" handover submits only to an idle engine ("bulk" submits at every hand-over)
    rt = ExpertOffload(off, slots, eviction="lru", prefetch="next-layer", kernel=kernel,
                       handover="drain" if stall else "bulk")
    if stall:
        rt.watchdog.engine.idle = _NeverIdle.idle
        rt.watchdog.engine.wait_idle = _NeverIdle.wait_idle
    ids = torch.randint(0, 512, (1, 9), generator=torch.Generator().manual_seed(4))
    try:
        got = logits_of_generation(off, ids, 5, rt)
        st = rt.stats()
    finally:
        rt.close()
    for a, b in zip(logits_of_generation(ref, ids, 5), got):
        assert torch.equal(a, b)
    assert st.prefetch_issued > 0 and st.prefetch_useful > 0
    if stall:
        assert st.late_hits == st.prefetch_useful == st.prefetch_promoted  # all still queued at their gate
    else:
        assert st.late_hits == st.prefetch_promoted == 0  # synchronous copies: all landed before the next gate


def test_policies_the_runtime_cannot_run_are_refused() -> None:
    model = build_model("olmoe-1b-7b", "tiny", n_layers=2)
    with pytest.raises(EmuError, match="cannot run prefetch policy 'lookahead'"):
        ExpertOffload(model, 8, prefetch="lookahead")
    with pytest.raises(EmuError, match="cannot run eviction policy 'score'"):  # reads gate-score mass
        ExpertOffload(build_model("olmoe-1b-7b", "tiny", n_layers=2), 8, eviction="score")


def _validate(argv: list[str]) -> int:
    from live.validate_cli import add_parser

    p = argparse.ArgumentParser()
    add_parser(p.add_subparsers())
    args = p.parse_args(["validate", *argv])
    return args.func(args)


def test_emu_validate_runs_a_prefetching_scenario_with_equal_counts(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    scen = tmp_path / "pf.toml"
    scen.write_text(f'model = "olmoe-1b-7b"\nseed = 3\n[hardware]\nprofile = "{PROFILE}"\n[cache]\ncapacity = "25%"\n'
                    f'[workload.synthetic]\ntokens = 64\nprompt_len = 8\noutput_len = 6\n'
                    f'[policy]\neviction = "lru"\nprefetch = "next-layer"\n')
    out = tmp_path / "val.json"
    argv = [str(scen), "--device", "cpu", "--scale", "tiny", "--live-dir", str(tmp_path / "live"), "--out", str(out)]
    assert _validate(argv) == 0
    assert "prefetch next-layer" in capsys.readouterr().out
    row = json.loads(out.read_text())["runs"][0]
    assert row["counts_equal"] is True and row["prefetch"] == "next-layer"
    assert row["live_prefetch"][:3] == row["emu_prefetch"][:3] and row["live_prefetch"][0] > 0
    rec = json.loads((tmp_path / "live" / "live_pf.json").read_text())
    assert rec["prefetch"] == "next-layer" and rec["stats"]["prefetch_issued"] == row["live_prefetch"][0]


def test_the_matrix_switches_prefetch_on_and_off_on_one_built_runtime() -> None:
    from live.matrix import reconfigure

    shape = live_shape("olmoe-1b-7b", "tiny", 2)
    model = build_model("olmoe-1b-7b", "tiny", n_layers=2, dtype="fp32", seed=0)
    rt = ExpertOffload(model, 6, eviction="lru", kernel="eager", handover="bulk")  # a hand-over with a task thread
    assert rt.watchdog is None
    try:
        for slots, eviction in ((40, "least-stale"), (20, "lru")):
            reconfigure(rt, slots, eviction, "eager", "next-layer")
            assert rt.watchdog is not None and rt.watchdog.running
            res = run_live(model, [PassPlan(10, 6)], vocab=shape.vocab, device=CPU, runtime=rt, warmup_passes=1)
            st = res.stats
            rec = {"model": live_spec(shape, "bf16").to_dict(), "slots": slots, "eviction": eviction,
                   "prefetch": "next-layer", "ttft_s": res.ttft_s, "decode_tok_s": res.decode_tok_s,
                   "stats": attrs.asdict(st) | {"hit_rate": st.hit_rate}, "trace": "t.npz", "expert_bytes": None}
            v = validate_run(LiveRun("mem", rec, res.trace), load_profile(PROFILE))
            assert v.counts_equal and st.prefetch_issued > 0 and st.compulsory > 0  # cold after each switch
        watchdog = rt.watchdog
        reconfigure(rt, 20, "lru", "eager")  # prefetch none again: the watchdog's thread is stopped
        assert rt.watchdog is None and not watchdog.running
        res = run_live(model, [PassPlan(10, 2)], vocab=shape.vocab, device=CPU, runtime=rt, warmup_passes=1)
        assert res.stats.prefetch_issued == 0 and res.stats.copies == res.stats.misses
    finally:
        rt.close()


def test_a_prefetching_runtime_calibrates_and_its_calibration_is_picked_for_prefetching_runs(tmp_path: Path) -> None:
    from live.matrix import reconfigure
    from live.runtime_cal import measure_runtime_overheads
    from live.validate_cli import load_runtime_cals

    shape = live_shape("olmoe-1b-7b", "tiny", 2)
    model = build_model("olmoe-1b-7b", "tiny", n_layers=2, dtype="fp32", seed=0)
    n_keys = shape.n_layers * shape.n_experts
    rt = ExpertOffload(model, n_keys, eviction="lru", kernel="eager")
    try:
        reconfigure(rt, n_keys, "lru", "eager", "next-layer")
        rt.preload()  # as the matrix does: the zeroed-experts replay predicts other experts, all resident
        cal = measure_runtime_overheads(model, rt, vocab=shape.vocab, device=CPU, prompt_len=12, steps=4)
        assert rt.stats().prefetch_issued == 0 and cal["full_step_s"] > 0
    finally:
        rt.close()
    for pf, step in (("none", 0.01), ("next-layer", 0.02)):
        (tmp_path / f"{pf}.json").write_text(json.dumps(dict(cal, full_step_s=step, profile_model="x", prefetch=pf)))
    (tmp_path / "old.json").write_text(json.dumps(dict(cal, profile_model="y")))  # written before prefetch
    cals = load_runtime_cals(sorted(tmp_path.glob("*.json")))
    assert cals[("x", "next-layer")]["full_step_s"] == 0.02 and cals[("x", "none")]["full_step_s"] == 0.01
    assert ("y", "none") in cals


@pytest.mark.parametrize("handover", ["auto", "bounded", "inline"])
def test_auto_bounded_and_inline_handovers_decide_as_the_emulator_does(handover: str) -> None:
    rt, res, rec = _live("lru", "next-layer", 24, PassPlan(10, 6), handover=handover)
    v = validate_run(LiveRun("mem", rec, res.trace), load_profile(PROFILE))
    assert v.counts_equal and res.stats.prefetch_issued > 0
    # on the CPU copies are synchronous (0 s of engine time): "auto" takes the inline hand-over
    assert rt.copy_seconds() == 0.0
    assert rt.resolved_handover() == ("inline" if handover == "auto" else handover)


def test_an_unknown_handover_is_refused_naming_the_key() -> None:
    model = build_model("olmoe-1b-7b", "tiny", n_layers=2, dtype="fp32", seed=5)
    with pytest.raises(EmuError, match="hand-over") as err:
        ExpertOffload(model, 8, prefetch="next-layer", handover="soon")
    assert err.value.key == "handover"


@pytest.mark.parametrize("handover", ["inline", "bulk"])
def test_prefetch_issue_calibration_runs_the_prefetch_path_and_leaves_the_cache_as_it_was(handover: str) -> None:
    from live.matrix import reconfigure
    from live.runtime_cal import measure_prefetch_issue

    shape = live_shape("olmoe-1b-7b", "tiny", 2)
    model = build_model("olmoe-1b-7b", "tiny", n_layers=2, dtype="fp32", seed=0)
    n_keys = shape.n_layers * shape.n_experts
    rt = ExpertOffload(model, n_keys, eviction="lru", kernel="eager", handover=handover)
    try:
        reconfigure(rt, n_keys, "lru", "eager", "next-layer")
        rt.preload()
        slots, host_gu = rt.slot_of.copy(), rt.slot_gu.clone()
        before = (rt.copies, rt.bytes_h2d, rt.evictions, rt.bridge.resident().tolist())
        calls = []
        real_copy = rt._copy
        rt._copy = lambda *job: calls.append(job) or real_copy(*job)  # type: ignore[method-assign]
        got = measure_prefetch_issue(rt, prefetches=20, batch=8, repeats=2)
        rt.__dict__.pop("_copy")
        if handover == "bulk":  # through the watchdog task: not the forward thread's cost, not measured
            assert got is None and calls == []
            return
        assert got is not None and got > 0
        assert len(calls) == 2 * 24  # 3 batches of 8 per repeat, each one copy through the runtime's path
        assert all(slots[layer * rt.n_experts + expert] == slot for layer, expert, slot in calls)
        assert np.array_equal(rt.slot_of, slots) and torch.equal(rt.slot_gu, host_gu)
        assert (rt.copies, rt.bytes_h2d, rt.evictions, rt.bridge.resident().tolist()) == before
        assert not rt.inflight_pf and len(rt.watchdog) == 0
    finally:
        rt.close()


def test_the_measured_prompts_and_predictions_do_not_depend_on_warm_up_or_rehearsal() -> None:
    """The speculator's predictions follow the hidden states, so a rehearsal that drew its prompts before
    the measured ones changed the recorded trace (and the prefetch decisions) of a matrix's first run."""
    shape = live_shape("olmoe-1b-7b", "tiny", LAYERS)
    model = build_model("olmoe-1b-7b", "tiny", n_layers=LAYERS, dtype="fp32", seed=5)
    rt = ExpertOffload(model, 24, eviction="lru", prefetch="next-layer", kernel="eager")
    try:
        runs = [run_live(model, [PassPlan(10, 4)], vocab=shape.vocab, device=CPU, runtime=rt, warmup_passes=w,
                         rehearse=r, seed=3) for w, r in ((1, False), (3, True), (0, True))]
    finally:
        rt.close()
    first = runs[0]
    for other in runs[1:]:
        assert other.tokens == first.tokens and other.trace.fingerprint() == first.trace.fingerprint()
        assert other.stats == first.stats
    assert first.trace.predicted is not None
