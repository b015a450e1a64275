"""Batches in the live runner: several requests in lockstep, each pass one token per request (decode) or one
prompt per request (prefill); the offloaded runtime decides on the batch's routing as the emulator does."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from emu.engines.fast.engine import run_fast  # noqa: E402
from emu.engines.setup import PolicyChoice, StackChoice, make_inputs  # noqa: E402
from emu.errors import EmuError  # noqa: E402
from emu.kernel.layout import ST  # noqa: E402
from emu.metrics import build_result  # noqa: E402
from emu.profile import load_profile  # noqa: E402
from live.models import build_model, live_shape, live_spec  # noqa: E402
from live.offload import ExpertOffload  # noqa: E402
from live.runner import PassPlan, batched_trace, plans_from_trace, run_live  # noqa: E402

from .conftest import make_trace  # noqa: E402
from .live_support import one_thread  # noqa: E402, F401

PROFILE = str(Path(__file__).resolve().parent.parent / "scenarios/profiles/h100-provisional.toml")
CPU = torch.device("cpu")




def _model(preset: str = "olmoe-1b-7b"):
    return build_model(preset, "tiny", dtype="fp32", seed=3, experts_implementation="eager")


@pytest.mark.parametrize("preset", ["olmoe-1b-7b", "qwen1.5-moe-a2.7b"])
def test_a_batch_through_the_offloaded_runtime_decodes_as_the_unmodified_model(preset):
    shape = live_shape(preset, "tiny")
    plans = [PassPlan(10, 6, batch=4)]
    ref = run_live(_model(preset), plans, vocab=shape.vocab, device=CPU, warmup_passes=0)
    off = _model(preset)
    runtime = ExpertOffload(off, shape.n_layers * shape.n_experts // 4, eviction="lru")
    got = run_live(off, plans, vocab=shape.vocab, device=CPU, runtime=runtime, warmup_passes=0)
    assert got.tokens == ref.tokens and len(got.tokens) == 4 and len(set(got.tokens)) > 1  # four requests
    assert np.array_equal(got.trace.experts, ref.trace.experts)
    assert np.array_equal(got.trace.scores, ref.trace.scores)
    trace = got.trace
    assert trace.n_passes == 7 and trace.pass_offsets[1] == 40 and np.all(np.diff(trace.pass_offsets[1:]) == 4)
    assert trace.token_request[:12].tolist() == [0] * 10 + [1] * 2  # the prompt's rows, request by request
    assert trace.token_request[40:44].tolist() == [0, 1, 2, 3]


def test_a_batchs_counts_and_rate_are_the_emulators():
    shape = live_shape("olmoe-1b-7b", "tiny")
    model = _model()
    slots = 40
    runtime = ExpertOffload(model, slots, eviction="lru")
    result = run_live(model, [PassPlan(8, 5, batch=4)], vocab=shape.vocab, device=CPU, runtime=runtime,
                      warmup_passes=1)
    live = result.stats
    spec = live_spec(shape, "bf16")
    inputs = make_inputs(spec, load_profile(PROFILE), result.trace, slots * spec.expert_bytes(),
                         StackChoice(eviction=PolicyChoice("lru")))
    cs, end, timings = run_fast(inputs)
    emu = cs.stats_i.sum(axis=1)
    assert (live.accesses, live.hits, live.evictions) == (emu[ST.ACCESSES], emu[ST.HITS], emu[ST.EVICTIONS])
    assert 0 < live.hits < live.accesses
    # four tokens per decode pass on both sides: the rate is the batch's
    assert result.decode_tok_s == pytest.approx(4 * 5 / sum(result.decode_s))
    emulated = build_result(cs, end, result.trace, "fast", timings)
    assert emulated.decode_tok_per_s == pytest.approx(4 * 5 / sum(emulated.decode_step_s))


def test_a_static_cache_batch_decodes_as_the_dynamic_one():
    shape = live_shape("olmoe-1b-7b", "tiny")
    runs, done = [], []
    for decode in ("eager", "static"):
        model = _model()
        rt = ExpertOffload(model, 64, eviction="lru")
        runs.append(run_live(model, [PassPlan(9, 4, batch=3), PassPlan(9, 4, batch=3)], vocab=shape.vocab,
                             device=CPU, runtime=rt, warmup_passes=1, decode=decode, progress=done.append))
    assert done == ["request 3", "request 6"] * 2  # after each measured request (rows so far)
    assert runs[0].tokens == runs[1].tokens and len(runs[0].tokens) == 6
    assert runs[0].stats == runs[1].stats
    assert np.array_equal(runs[0].trace.token_request, runs[1].trace.token_request)
    assert sorted(set(runs[1].trace.token_request.tolist())) == list(range(6))  # the second batch: requests 3-5


def _single_requests(n_req: int, n_layers: int, n_experts: int, top_k: int, decode: int):
    """n_req batch-1 requests, each a 5-token prefill then `decode` passes; random distinct ids."""
    rng = np.random.default_rng(9)

    def tok():
        return [rng.choice(n_experts, top_k, replace=False).tolist() for _ in range(n_layers)]

    passes, phases, requests = [], [], []
    for r in range(n_req):
        passes.append([tok() for _ in range(5)])
        phases.append(0)
        requests.append(r)
        for _ in range(decode + r):  # requests of different lengths: a group runs its shortest
            passes.append([tok()])
            phases.append(1)
            requests.append(r)
    return make_trace(passes, phases=phases, requests=requests, n_experts=n_experts)


def test_a_traced_batch_replays_each_requests_routing():
    shape = live_shape("olmoe-1b-7b", "tiny")
    single = _single_requests(4, shape.n_layers, shape.n_experts, shape.top_k, decode=4)
    batched = batched_trace(single, 2)
    assert batched.n_passes == (1 + 4) + (1 + 6)  # each group its shortest member's decode passes (4, then 6)
    assert batched.token_request[batched.pass_offsets[1]:batched.pass_offsets[2]].tolist() == [0, 1]
    plans = plans_from_trace(batched, prompt_len=99)
    assert [(p.batch, p.prompt_len, p.n_decode) for p in plans] == [(2, 5, 4), (2, 5, 6)]
    model = _model()
    rt = ExpertOffload(model, 48, eviction="lru")
    got = run_live(model, plans, vocab=shape.vocab, device=CPU, runtime=rt, force=batched, warmup_passes=0)
    assert np.array_equal(got.trace.experts, batched.experts)
    assert np.array_equal(got.trace.pass_offsets, batched.pass_offsets)


def test_batch_edges_are_named():
    single = _single_requests(3, 2, 8, 2, decode=2)
    with pytest.raises(EmuError, match="needs as many"):
        batched_trace(single, 4)
    with pytest.raises(EmuError, match="batch of at least 1"):
        PassPlan(4, 2, batch=0)
    import attrs

    batched = batched_trace(_single_requests(2, 2, 8, 2, decode=2), 2)
    req = batched.token_request.copy()
    t0 = batched.pass_offsets[1]
    req[t0:t0 + 2] = [1, 0]  # a decode pass whose rows come in another order than the prefill's
    with pytest.raises(EmuError, match="lockstep"):
        plans_from_trace(attrs.evolve(batched, token_request=req), prompt_len=4)
    shape = live_shape("olmoe-1b-7b", "tiny")
    with pytest.raises(EmuError, match="one batch size"):
        run_live(_model(), [PassPlan(4, 2, batch=2), PassPlan(4, 2, batch=3)], vocab=shape.vocab, device=CPU,
                 runtime=ExpertOffload(_model(), 64), warmup_passes=0, decode="static")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_batch_replayed_from_graphs_computes_the_eager_batch():
    shape = live_shape("olmoe-1b-7b", "tiny")
    runs = []
    for decode in ("static", "graph"):
        model = _model()
        rt = ExpertOffload(model, 64, eviction="lru", device="cuda")
        try:
            runs.append(run_live(model, [PassPlan(9, 6, batch=4), PassPlan(9, 6, batch=4)], vocab=shape.vocab,
                                 device=torch.device("cuda"), runtime=rt, warmup_passes=2, decode=decode))
        finally:
            rt.close()
    assert runs[0].tokens == runs[1].tokens
    assert np.array_equal(runs[0].trace.experts, runs[1].trace.experts)
    assert np.array_equal(runs[0].trace.scores, runs[1].trace.scores)
    assert runs[0].stats == runs[1].stats
