"""The offloaded-experts runtime on the CPU: same math, same cache decisions as the emulator."""

from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from emu.engines.fast.engine import run_fast  # noqa: E402
from emu.engines.setup import PolicyChoice, StackChoice, make_inputs  # noqa: E402
from emu.errors import EmuError  # noqa: E402
from emu.kernel.layout import ST  # noqa: E402
from emu.profile import load_profile  # noqa: E402
from live.hooks import RoutingHooks  # noqa: E402
from live.models import build_model, live_shape, live_spec  # noqa: E402
from live.offload import ExpertOffload  # noqa: E402
from live.runner import PassPlan, generate, plans_from_trace, run_live  # noqa: E402

from .conftest import make_trace  # noqa: E402
from .live_support import logits_of_generation, one_thread  # noqa: E402, F401

PROFILE = str(Path(__file__).resolve().parent.parent / "scenarios/profiles/h100-provisional.toml")




def _ids(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 512, (1, n), generator=torch.Generator().manual_seed(seed))




@pytest.mark.parametrize(("preset", "slots"), [("olmoe-1b-7b", 5), ("olmoe-1b-7b", 128), ("mixtral-8x7b", 3),
                                             ("qwen1.5-moe-a2.7b", 30)])
def test_offloaded_model_gives_the_same_logits(preset, slots):
    ref = build_model(preset, "tiny", dtype="fp32", seed=7, experts_implementation="eager")
    default = build_model(preset, "tiny", dtype="fp32", seed=7)  # transformers' default experts kernel
    off = build_model(preset, "tiny", dtype="fp32", seed=7, experts_implementation="eager")
    runtime = ExpertOffload(off, slots, eviction="lru")
    assert runtime.kernel == "eager"
    ids = _ids(12, seed=1)
    want = logits_of_generation(ref, ids, 4)
    got = logits_of_generation(off, ids, 4, runtime)
    for a, b in zip(want, got):
        assert torch.equal(a, b)  # bit for bit: the eager per-expert math and summation order
    for a, b in zip(logits_of_generation(default, ids, 4), got):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    stats = runtime.stats()
    assert stats.copies == stats.misses and stats.bytes_h2d == stats.copies * runtime.expert_bytes
    assert runtime.expert_bytes == 3 * 64 * 32 * 4
    if slots == 128:  # everything fits: only compulsory misses, never an eviction
        assert stats.evictions == 0 and stats.capacity == stats.collision == 0
    else:
        assert stats.evictions == stats.misses - slots and stats.hits + stats.misses == stats.accesses


@pytest.mark.parametrize("preset", ["olmoe-1b-7b", "qwen3-30b-a3b"])
def test_fused_kernel_is_bitwise_the_unmodified_default_model(preset):
    default = build_model(preset, "tiny", dtype="fp32", seed=9)
    off = build_model(preset, "tiny", dtype="fp32", seed=9)
    assert off.config._experts_implementation not in (None, "eager")
    shape = live_shape(preset, "tiny")
    runtime = ExpertOffload(off, shape.n_layers * shape.n_experts // 2, eviction="lru")
    assert runtime.kernel == "fused"
    ids = _ids(6, seed=3)
    for a, b in zip(logits_of_generation(default, ids, 5), logits_of_generation(off, ids, 5, runtime)):
        assert torch.equal(a, b)
    stats = runtime.stats()
    assert stats.waits == 0 and stats.misses > 0 and stats.copies == stats.misses


def test_fused_kernel_falls_back_per_expert_when_a_layer_does_not_fit():
    default = build_model("olmoe-1b-7b", "tiny", dtype="fp32", seed=9)
    off = build_model("olmoe-1b-7b", "tiny", dtype="fp32", seed=9)
    runtime = ExpertOffload(off, 6, eviction="lru", kernel="fused")
    ids = _ids(10, seed=4)
    for a, b in zip(logits_of_generation(default, ids, 2), logits_of_generation(off, ids, 2, runtime)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert runtime.stats().waits > 0
    with pytest.raises(EmuError, match="--experts"):
        ExpertOffload(build_model("olmoe-1b-7b", "tiny"), 6, kernel="grouped")


def _lru_reference(trace, n_layers: int, n_experts: int, slots: int) -> tuple[int, int]:
    """LRU over (layer, expert) keys; a layer's own experts are never victims while it runs."""
    cache: OrderedDict[int, None] = OrderedDict()
    hits = misses = 0
    for p in range(trace.n_passes):
        rows = trace.experts[trace.pass_offsets[p]:trace.pass_offsets[p + 1]]
        for layer in range(n_layers):
            keys = [layer * n_experts + int(e) for e in np.unique(rows[:, layer])]
            for k in keys:
                if k in cache:
                    hits += 1
                    cache.move_to_end(k)
                    continue
                misses += 1
                if len(cache) >= slots:
                    victim = next(v for v in cache if v not in keys)
                    del cache[victim]
                cache[k] = None
    return hits, misses


def test_runtime_hits_and_misses_equal_a_plain_lru_on_a_known_routing():
    rng = np.random.default_rng(11)
    n_layers, n_experts, top_k = 2, 8, 2
    passes = [[[sorted(rng.choice(n_experts, top_k, replace=False).tolist()) for _ in range(n_layers)]
               for _ in range(n)] for n in [3] + [1] * 30]
    trace = make_trace(passes, phases=[0] + [1] * 30, n_experts=n_experts)
    model = build_model("mixtral-8x7b", "tiny")
    runtime = ExpertOffload(model, 5, eviction="lru")
    hooks = RoutingHooks(model, force=trace)
    plan = plans_from_trace(trace, prompt_len=3)[0]
    generate(model, _ids(3), plan, hooks=hooks, runtime=runtime)
    stats = runtime.stats()
    hits, misses = _lru_reference(trace, n_layers, n_experts, 5)
    assert (stats.hits, stats.misses) == (hits, misses)
    assert 0 < hits < hits + misses  # the routing exercises both outcomes
    assert stats.copies == misses and stats.evictions == misses - 5


@pytest.mark.parametrize("eviction", ["lru", "least-stale"])
def test_live_counts_equal_the_emulators_on_the_recorded_trace(eviction):
    model = build_model("olmoe-1b-7b", "tiny", seed=2)
    shape = live_shape("olmoe-1b-7b", "tiny")
    slots = 20  # fewer than the experts a prefill layer touches: demand copies wait for victims
    runtime = ExpertOffload(model, slots, eviction=eviction)
    result = run_live(model, [PassPlan(16, 12)], vocab=shape.vocab, device=torch.device("cpu"), runtime=runtime,
                      warmup_passes=2)
    live = result.stats
    assert live.waits > 0 and live.accesses == live.hits + live.misses
    spec = live_spec(shape, "bf16")
    assert spec.expert_bytes() == runtime.expert_bytes
    inputs = make_inputs(spec, load_profile(PROFILE), result.trace, slots * spec.expert_bytes(),
                         StackChoice(eviction=PolicyChoice(eviction)))
    cs, _end, _t = run_fast(inputs)
    emu = cs.stats_i.sum(axis=1)
    assert (live.accesses, live.hits, live.compulsory, live.capacity, live.collision, live.evictions) == (
        emu[ST.ACCESSES], emu[ST.HITS], emu[ST.MISS_COMPULSORY], emu[ST.MISS_CAPACITY], emu[ST.MISS_COLLISION],
        emu[ST.EVICTIONS])
    assert live.bytes_h2d == emu[ST.BYTES_H2D]
    assert result.ttft_s > 0 and len(result.decode_s) == 12 and result.decode_tok_s > 0


def test_reset_empties_the_cache_and_the_counters():
    model = build_model("mixtral-8x7b", "tiny")
    runtime = ExpertOffload(model, 4)
    generate(model, _ids(5), PassPlan(5, 2), runtime=runtime)
    assert runtime.stats().copies > 0
    runtime.reset()
    stats = runtime.stats()
    assert stats.copies == stats.accesses == stats.bytes_h2d == 0
    generate(model, _ids(5), PassPlan(5, 0), runtime=runtime)
    assert runtime.stats().compulsory == runtime.stats().misses  # cold again


def test_an_expert_is_one_contiguous_block_copied_whole(monkeypatch):
    """One copy per expert: host and slot hold each expert's gate_up and down back to back, so `_copy`
    moves the block in one call and the slot's matrices are the expert's."""
    model = build_model("olmoe-1b-7b", "tiny")
    want_gu = [b.mlp.experts.gate_up_proj.detach().clone() for b in model.model.layers]
    want_dn = [b.mlp.experts.down_proj.detach().clone() for b in model.model.layers]
    runtime = ExpertOffload(model, 3)
    assert runtime.expert_bytes == runtime.host_pack[0, 0].numel() * runtime.host_pack.element_size()
    assert runtime.host_gu.data_ptr() == runtime.host_pack.data_ptr()
    calls = []
    real_copy = torch.Tensor.copy_

    def counted(self, src, *args, **kwargs):
        calls.append(src.numel())
        return real_copy(self, src, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "copy_", counted)
    runtime._copy(1, 5, 2)
    monkeypatch.undo()
    assert calls == [runtime.host_pack[1, 5].numel()]
    assert torch.equal(runtime.slot_gu[2], want_gu[1][5]) and torch.equal(runtime.slot_dn[2], want_dn[1][5])
    runtime.resize(5)
    assert runtime.slot_pack.shape[0] == runtime.n_slots == 5
    assert all(f.gate_up_proj is runtime.slot_gu and f.num_experts == 5 for f in runtime.fused)


def test_bad_runtime_input_is_named():
    model = build_model("mixtral-8x7b", "tiny")
    with pytest.raises(EmuError, match="expert slots"):
        ExpertOffload(model, 0)
    with pytest.raises(EmuError, match="unknown eviction policy"):
        ExpertOffload(build_model("mixtral-8x7b", "tiny"), 4, eviction="nope")


def _scenario(tmp_path, body: str):
    path = tmp_path / "s.toml"
    path.write_text(f'model = "olmoe-1b-7b"\n[hardware]\nprofile = "{PROFILE}"\n' + body)
    return path


def _cli_args(scenario, out, *extra: str):
    import argparse

    from live import cli

    parser = argparse.ArgumentParser()
    cli.add_parser(parser.add_subparsers())
    return parser.parse_args(["live", str(scenario), "--device", "cpu", "--scale", "tiny", "--out", str(out),
                              "--warmup", "1", *extra])


def test_cli_runs_a_scenario_and_writes_trace_and_measurements(tmp_path, capsys):
    scen = _scenario(tmp_path, '[cache]\ncapacity = "25%"\n[workload.synthetic]\ntokens = 64\nprompt_len = 12\n'
                               'output_len = 5\n[policy]\neviction = "least-stale"\n')
    args = _cli_args(scen, tmp_path / "run.npz", "--rehearse", "--experts", "eager")
    assert args.func(args) == 0
    text = capsys.readouterr().out
    assert "32 of 128 expert slots (25.0%)" in text and "hit rate" in text
    from emu.trace import RoutingTrace

    trace = RoutingTrace.load(tmp_path / "run.npz")
    assert trace.n_passes == 6 and trace.n_tokens == 17 and trace.predicted is not None
    rec = json.loads((tmp_path / "run.json").read_text())
    assert rec["slots"] == 32 and rec["eviction"] == "least-stale" and rec["rehearsed"] is True
    assert rec["experts_kernel"] == "eager"
    assert len(rec["requests"][0]["decode_s"]) == 5
    assert rec["stats"]["accesses"] == rec["stats"]["hits"] + rec["stats"]["misses"] > 0
    assert rec["trace_fingerprint"] == trace.fingerprint()


def test_cli_refuses_policies_the_runtime_lacks(tmp_path):
    scen = _scenario(tmp_path, '[cache]\ncapacity = "25%"\n[workload.synthetic]\ntokens = 64\n'
                               '[policy]\nprefetch = "lookahead"\n')
    args = _cli_args(scen, tmp_path / "x.npz")
    with pytest.raises(EmuError, match=r"policy\.prefetch"):
        args.func(args)


def test_fused_kernel_uses_a_window_of_slots_and_falls_back_when_too_wide(monkeypatch):
    import live.offload as offload

    default = build_model("olmoe-1b-7b", "tiny", dtype="fp32", seed=2)
    off = build_model("olmoe-1b-7b", "tiny", dtype="fp32", seed=2)
    runtime = ExpertOffload(off, 128, kernel="fused")
    calls: list[int] = []
    fused0 = runtime.fused[0]
    original = type(fused0).forward

    def spy(self, *args):
        if any(self is f for f in runtime.fused):
            calls.append(self.num_experts)
        return original(self, *args)

    monkeypatch.setattr(type(fused0), "forward", spy)
    monkeypatch.setattr(offload, "MAX_GROUPS", 50)  # a window wider than this runs expert by expert
    ids = _ids(12, seed=8)
    for a, b in zip(logits_of_generation(default, ids, 3), logits_of_generation(off, ids, 3, runtime)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert calls and max(calls) <= 50  # some decode layers fit a window; the wide prefill layers did not
    assert len(calls) < 4 * 2  # ... so some of the 4 passes x 2 layers ran expert by expert
    assert runtime.stats().accesses > 4 * 2 * 8


def test_cli_replays_a_real_trace_on_fewer_layers(tmp_path, capsys):
    from emu.trace import RoutingTrace

    root = Path(__file__).resolve().parent.parent
    scen = root / "scenarios/mixtral-8x7b_h100_gsm8k_25pct.toml"
    args = _cli_args(scen, tmp_path / "mix.npz", "--layers", "2", "--decode-tokens", "3", "--prompt-len", "4")
    assert args.func(args) == 0
    assert "mixtral-8x7b-tiny-2l" in capsys.readouterr().out
    real = RoutingTrace.load(root / "scenarios/traces/mixtral8x7b_gsm8k.npz")
    rec = RoutingTrace.load(tmp_path / "mix.npz")
    assert rec.n_layers == 2 and rec.n_passes == 2 * (1 + 3)  # per request: an unforced prefill, 3 forced steps
    decode = np.flatnonzero(rec.pass_phase == 1)
    starts = real.token_request[real.pass_offsets[:-1]]
    want = [p for req in (0, 1) for p in np.flatnonzero(starts == req)[:3]]
    for got_p, want_p in zip(decode, want):
        got = np.sort(rec.experts[rec.pass_offsets[got_p], :2], axis=-1)
        assert np.array_equal(got, np.sort(real.experts[real.pass_offsets[want_p], :2], axis=-1))
    rec_json = json.loads((tmp_path / "mix.json").read_text())
    assert rec_json["forced_trace"].endswith("mixtral8x7b_gsm8k.npz") and rec_json["slots"] == 4
    assert rec_json["experts_captured"] is False and rec_json["decode_host_share"] is None  # the eager decode


def test_cli_names_bad_arguments(tmp_path):
    scen = _scenario(tmp_path, '[cache]\ncapacity = "25%"\n[workload.synthetic]\ntokens = 64\n')
    args = _cli_args(scen, tmp_path / "x.txt")
    with pytest.raises(EmuError, match=r"\.npz"):
        args.func(args)
    args = _cli_args(scen, tmp_path / "x.npz", "--layers", "0")
    with pytest.raises(EmuError, match="--layers"):
        args.func(args)


@pytest.mark.parametrize(("preset", "slots"), [("mixtral-8x7b", 16), ("mixtral-8x7b", 11), ("olmoe-1b-7b", 128)])
def test_deferred_hits_keep_the_math_and_the_policy_decisions(preset, slots):
    """Fully resident layers (after `preload`) run without a routing readback (fused kernel) and are booked later; the
    logits stay bitwise those of the unmodified model and every count equals the synchronous eager run's,
    evictions included (booking the deferred hits late or out of order changes LRU's victims)."""
    default = build_model(preset, "tiny", dtype="fp32", seed=5)
    fused = build_model(preset, "tiny", dtype="fp32", seed=5)
    eager = build_model(preset, "tiny", dtype="fp32", seed=5, experts_implementation="eager")
    rt_fused = ExpertOffload(fused, slots, eviction="lru", kernel="fused")
    rt_eager = ExpertOffload(eager, slots, eviction="lru")
    rt_fused.preload()
    rt_eager.preload()
    assert rt_fused.stats().copies == 0 and len(rt_fused.bridge.resident()) == slots
    ids = _ids(6, seed=11)
    want = logits_of_generation(default, ids, 12)
    got = logits_of_generation(fused, ids, 12, rt_fused)
    logits_of_generation(eager, ids, 12, rt_eager)
    for a, b in zip(want, got):
        assert torch.equal(a, b)
    assert rt_fused.deferred_layers > 0
    assert rt_fused.stats() == rt_eager.stats()
    assert np.array_equal(rt_fused.bridge.resident(), rt_eager.bridge.resident())
    if slots < rt_fused.n_layers * rt_fused.n_experts:
        assert rt_fused.stats().evictions > 0
