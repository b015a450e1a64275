"""Routing hooks on real (tiny, random-weight) transformers MoE models: recording and forcing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from emu.errors import EmuError  # noqa: E402
from emu.trace import RoutingTrace  # noqa: E402
from live.hooks import RoutingHooks, sparse_blocks  # noqa: E402
from live.models import build_model, live_shape, supported_presets  # noqa: E402
from live.runner import PassPlan, generate, plans_from_trace  # noqa: E402

from .conftest import make_trace  # noqa: E402
from .live_support import one_thread  # noqa: E402, F401


def _ids(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 512, (1, n), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("preset", supported_presets())
def test_every_preset_builds_with_its_real_routing_shape(preset):
    model = build_model(preset, "tiny", n_layers=2)
    shape = live_shape(preset, "tiny", 2)
    blocks = sparse_blocks(model)
    assert len(blocks) == 2
    assert blocks[0].gate.weight.shape == (shape.n_experts, shape.hidden)
    assert blocks[0].gate.top_k == shape.top_k
    assert blocks[0].experts.gate_up_proj.shape == (shape.n_experts, 2 * shape.expert_intermediate, shape.hidden)


def test_full_scale_shape_is_the_real_config():
    shape = live_shape("mixtral-8x7b", "full")
    assert (shape.n_layers, shape.hidden, shape.expert_intermediate, shape.n_experts, shape.top_k) == \
        (32, 4096, 14336, 8, 2)
    assert (shape.heads, shape.kv_heads, shape.vocab) == (32, 8, 32000)
    with pytest.raises(EmuError, match="--layers"):
        live_shape("olmoe-1b-7b", "full", n_layers=17)
    with pytest.raises(EmuError, match="no live model"):
        live_shape("phi-3.5-moe", "tiny")


@pytest.mark.parametrize("preset", ["olmoe-1b-7b", "mixtral-8x7b"])
def test_recorded_trace_matches_the_routers_own_top_k(preset):
    model = build_model(preset, "tiny", dtype="fp32", seed=3)
    shape = live_shape(preset, "tiny")
    ids = _ids(10)
    hooks = RoutingHooks(model)
    generate(model, ids, PassPlan(10, 3), hooks=hooks)
    hooks.remove()
    trace = hooks.trace(preset)
    assert isinstance(trace.validate(), RoutingTrace)
    assert trace.n_passes == 4 and trace.n_tokens == 13
    assert trace.pass_phase.tolist() == [0, 1, 1, 1]
    assert trace.token_position.tolist() == list(range(13))
    assert trace.n_experts == shape.n_experts and trace.top_k == shape.top_k
    # independent check: the model's own router logits for the prompt, from transformers' recorder
    with torch.no_grad():
        out = model(ids, output_router_logits=True)
    for layer, logits in enumerate(out.router_logits):
        probs = torch.softmax(logits.float(), dim=-1)
        top = torch.topk(probs, shape.top_k, dim=-1)
        for tok in range(10):
            assert sorted(trace.experts[tok, layer].tolist()) == sorted(top.indices[tok].tolist())
        # OLMoE keeps raw probabilities (norm_topk_prob false); Mixtral renormalizes the top-k
        expected = top.values / top.values.sum(-1, keepdim=True) if preset == "mixtral-8x7b" else top.values
        got = np.sort(trace.scores[:10, layer].astype(np.float32), axis=1)
        np.testing.assert_allclose(got, np.sort(expected.numpy(), axis=1), rtol=2e-3, atol=1e-4)


@pytest.mark.parametrize("preset", ["olmoe-1b-7b", "mixtral-8x7b"])
def test_recorded_logits_top_k_is_the_recorded_routing(preset, tmp_path):
    model = build_model(preset, "tiny", dtype="fp32", seed=3)
    shape = live_shape(preset, "tiny")
    ids = _ids(10)
    hooks = RoutingHooks(model, logits=True)
    generate(model, ids, PassPlan(10, 3), hooks=hooks)
    hooks.remove()
    trace = hooks.trace(preset)
    assert trace.logits is not None and trace.logits.dtype == np.float16
    assert trace.logits.shape == (trace.n_tokens, trace.n_layers, shape.n_experts)
    lg = trace.logits.astype(np.float32)
    for tok in range(trace.n_tokens):
        for layer in range(trace.n_layers):
            chosen = trace.experts[tok, layer].astype(np.int64)
            others = np.setdiff1d(np.arange(shape.n_experts), chosen)
            # a top-k of the stored logits (float16 rounding is monotone: it may tie, never reorder)
            assert lg[tok, layer, chosen].min() >= lg[tok, layer, others].max()
            # the router's own top-k by softmax of the same logits: the gate scores agree with the logits
            probs = np.exp(lg[tok, layer] - lg[tok, layer].max())
            probs /= probs.sum()
            expected = probs[chosen] / probs[chosen].sum() if preset == "mixtral-8x7b" else probs[chosen]
            np.testing.assert_allclose(trace.scores[tok, layer].astype(np.float32), expected, rtol=5e-3, atol=1e-3)
    # the prompt's logits are the model's own router logits (transformers' recorder)
    with torch.no_grad():
        out = model(ids, output_router_logits=True)
    for layer, logits in enumerate(out.router_logits):
        np.testing.assert_allclose(lg[:10, layer], logits.float().numpy(), rtol=1e-3, atol=1e-3)
    # they survive the .npz round trip, and a recording without the option has none
    trace.save(tmp_path / "t.npz")
    np.testing.assert_array_equal(RoutingTrace.load(tmp_path / "t.npz").logits, trace.logits)
    plain = RoutingHooks(model)
    generate(model, ids, PassPlan(10, 1), hooks=plain)
    plain.remove()
    assert plain.trace().logits is None


def test_layer0_prediction_is_layer0_gate_on_the_embeddings():
    model = build_model("olmoe-1b-7b", "tiny", dtype="fp32", seed=1)
    ids = _ids(6, seed=2)
    hooks = RoutingHooks(model, speculate=True)
    generate(model, ids, PassPlan(6, 0), hooks=hooks)
    trace = hooks.trace()
    gate = sparse_blocks(model)[0].gate
    with torch.no_grad():
        emb = model.model.embed_tokens(ids)[0]
        expect = torch.topk(emb @ gate.weight.T, gate.top_k, dim=-1).indices
    for tok in range(6):
        assert sorted(trace.predicted[tok, 0].tolist()) == sorted(expect[tok].tolist())
    # a speculator, not a copy of the truth: on random weights it misses some of layer 1's experts
    hit = [len(set(trace.predicted[t, 1].tolist()) & set(trace.experts[t, 1].tolist())) for t in range(6)]
    assert sum(hit) < 6 * gate.top_k


def _random_routing(n_passes_tokens: list[int], n_layers: int, n_experts: int, top_k: int, seed: int) -> RoutingTrace:
    rng = np.random.default_rng(seed)
    passes = [[[sorted(rng.choice(n_experts, top_k, replace=False).tolist()) for _ in range(n_layers)]
               for _ in range(n)] for n in n_passes_tokens]
    phases = [0] + [1] * (len(n_passes_tokens) - 1)
    return make_trace(passes, phases=phases, n_experts=n_experts)


def test_forced_routing_runs_the_given_experts():
    model = build_model("mixtral-8x7b", "tiny", dtype="fp32", experts_implementation="eager")
    forced = _random_routing([7, 1, 1], 2, 8, 2, seed=4)
    seen: list[list[int]] = []
    spies = [b.experts.register_forward_pre_hook(
        lambda _m, args: seen.append(args[1].tolist())) for b in sparse_blocks(model)]
    hooks = RoutingHooks(model, force=forced)
    plan = plans_from_trace(forced, prompt_len=99)[0]
    assert (plan.prompt_len, plan.n_decode, plan.force_prefill, plan.force_decode) == (7, 2, 0, (1, 2))
    generate(model, _ids(7), plan, hooks=hooks)
    for s in spies:
        s.remove()
    rec = hooks.trace()
    assert np.array_equal(rec.experts, forced.experts)
    # what reached the experts module is the forced routing, pass by pass and layer by layer
    expected = [forced.experts[o0:o1, layer].tolist() for o0, o1 in [(0, 7), (7, 8), (8, 9)] for layer in (0, 1)]
    assert seen == expected


def test_forced_routing_is_uploaded_once_not_per_layer(monkeypatch):
    # a per-layer upload from the router hook is a synchronous host-to-device copy: on a GPU it waits behind
    # every copy the runtime submitted before it (prefetches in flight), a wait no real serving stack has
    model = build_model("mixtral-8x7b", "tiny", dtype="fp32", experts_implementation="eager")
    forced = _random_routing([5, 1], 2, 8, 2, seed=3)
    hooks = RoutingHooks(model, force=forced)

    def no_upload(*_a, **_k):
        raise AssertionError("the forced routing was copied from the host during a pass")

    monkeypatch.setattr(torch, "from_numpy", no_upload)
    generate(model, _ids(5), plans_from_trace(forced, prompt_len=99)[0], hooks=hooks)
    monkeypatch.undo()
    assert np.array_equal(hooks.trace().experts, forced.experts)


def test_forcing_the_natural_routing_changes_nothing_and_other_routing_changes_logits():
    model = build_model("olmoe-1b-7b", "tiny", dtype="fp32", experts_implementation="eager")
    ids = _ids(9, seed=5)
    hooks = RoutingHooks(model)
    hooks.begin_pass(0, np.zeros(9), np.arange(9))
    with torch.no_grad():
        natural_logits = model(ids).logits
    hooks.end_pass()
    natural = hooks.trace()
    hooks.remove()

    def forced_logits(trace: RoutingTrace) -> torch.Tensor:
        h = RoutingHooks(model, force=trace)
        h.begin_pass(0, np.zeros(9), np.arange(9), force_pass=0)
        with torch.no_grad():
            logits = model(ids).logits
        h.end_pass()
        h.remove()
        return logits

    torch.testing.assert_close(forced_logits(natural), natural_logits, rtol=1e-5, atol=1e-5)
    other = _random_routing([9], 2, 64, 8, seed=6)
    assert (forced_logits(other) - natural_logits).abs().max() > 1e-3


def test_forcing_checks_the_trace_against_the_model_and_the_pass():
    model = build_model("mixtral-8x7b", "tiny")
    with pytest.raises(EmuError, match="MoE layers"):
        RoutingHooks(model, force=_random_routing([3], 3, 8, 2, seed=0))
    hooks = RoutingHooks(model, force=_random_routing([3], 2, 8, 2, seed=0))
    hooks.begin_pass(0, np.zeros(4), np.arange(4), force_pass=0)
    with pytest.raises(EmuError, match="3 tokens but the model routed 4"), torch.no_grad():
        model(_ids(4))


def test_plans_from_a_decode_only_capture_prefill_unforced():
    trace = RoutingTrace.load(Path(__file__).resolve().parent.parent / "scenarios/traces/mixtral8x7b_gsm8k.npz")
    plans = plans_from_trace(trace, prompt_len=32, max_decode=5)
    assert len(plans) == trace.n_requests == 2
    assert all(p.force_prefill is None and p.prompt_len == 32 and p.n_decode == 5 for p in plans)
    first_req1 = int(np.flatnonzero(trace.token_request[trace.pass_offsets[:-1]] == 1)[0])
    assert plans[1].force_decode[0] == first_req1


def test_random_weights_follow_the_transformers_init_and_the_seed_not_the_thread_count():
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        a = build_model("qwen1.5-moe-a2.7b", "tiny", dtype="fp32", seed=5)
        torch.set_num_threads(1)
        b = build_model("qwen1.5-moe-a2.7b", "tiny", dtype="fp32", seed=5)
    finally:
        torch.set_num_threads(before)
    c = build_model("qwen1.5-moe-a2.7b", "tiny", dtype="fp32", seed=6)
    for (name, pa), pb, pc in zip(a.named_parameters(), b.parameters(), c.parameters()):
        assert torch.equal(pa, pb), name
        if "norm" in name:
            assert torch.all(pa == 1.0), name
        elif pa.ndim == 1:  # Qwen2 attention biases
            assert torch.all(pa == 0.0), name
        else:
            assert not torch.equal(pa, pc), name
    experts = a.model.layers[0].mlp.experts.gate_up_proj.detach()
    assert abs(float(experts.std()) - a.config.initializer_range) < 0.001
    assert abs(float(experts.mean())) < 0.001


def test_emu_live_logits_flag_writes_them_into_the_trace(tmp_path):
    import argparse

    from live.cli import add_parser

    profile = Path(__file__).resolve().parent.parent / "scenarios/profiles/h100-provisional.toml"
    scen = tmp_path / "tiny.toml"
    scen.write_text(f'model = "olmoe-1b-7b"\nseed = 3\n[hardware]\nprofile = "{profile}"\n[cache]\ncapacity = "10%"\n'
                    '[workload.synthetic]\ntokens = 16\nprompt_len = 6\noutput_len = 3\n[policy]\neviction = "lru"\n')
    p = argparse.ArgumentParser()
    add_parser(p.add_subparsers())
    for flag, out in ((["--logits"], tmp_path / "with.npz"), ([], tmp_path / "without.npz")):
        args = p.parse_args(["live", str(scen), "--device", "cpu", "--scale", "tiny", "--warmup", "0",
                             "--out", str(out), *flag])
        assert args.func(args) == 0
    trace = RoutingTrace.load(tmp_path / "with.npz")
    assert trace.logits is not None and trace.logits.shape == (trace.n_tokens, trace.n_layers, trace.n_experts)
    lg = trace.logits.astype(np.float32)
    chosen = np.take_along_axis(lg, trace.experts.astype(np.int64), axis=2).min(axis=2)
    mask = np.ones(lg.shape, bool)
    np.put_along_axis(mask, trace.experts.astype(np.int64), False, axis=2)
    assert (chosen >= np.where(mask, lg, -np.inf).max(axis=2)).all()
    assert RoutingTrace.load(tmp_path / "without.npz").logits is None
