"""The device-paced decode (`live.graphed`): a static KV cache on the CPU, CUDA-graph replay on a GPU.

Each replayed pass must compute what the same pass run eagerly over the same static cache computes: the same
tokens, the same routing (ids, router weights and the speculator's predictions, recorded from the graphs'
tensors) and the same cache decisions.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from emu.errors import EmuError  # noqa: E402
from live.models import build_model, live_shape  # noqa: E402
from live.offload import ExpertOffload  # noqa: E402
from live.runner import PassPlan, plans_from_trace, run_live  # noqa: E402

from .conftest import make_trace  # noqa: E402
from .live_support import one_thread  # noqa: E402, F401

PRESETS = ["olmoe-1b-7b", "mixtral-8x7b", "qwen1.5-moe-a2.7b", "qwen3-30b-a3b"]
gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")




def _run(preset: str, decode: str, device: str, *, prefetch: str = "none", kernel: str = "eager",
         force: bool = False, quarter: bool = True, capture: bool = True, dtype: str = "fp32"):
    shape = live_shape(preset, "tiny")
    impl = "eager" if kernel == "eager" else None
    model = build_model(preset, "tiny", dtype=dtype, seed=2, experts_implementation=impl)
    n_keys = shape.n_layers * shape.n_experts
    runtime = ExpertOffload(model, n_keys // 4 if quarter else n_keys, eviction="lru", prefetch=prefetch,
                            kernel=kernel, device=device)
    runtime.capture = capture
    plans, trace = [PassPlan(16, 10), PassPlan(9, 6)], None
    if force:
        trace = _forced_trace(shape.n_layers, shape.n_experts, shape.top_k)
        plans = plans_from_trace(trace, 16, 10)
    try:
        return run_live(model, plans, vocab=shape.vocab, device=torch.device(device), runtime=runtime,
                        force=trace, warmup_passes=2, decode=decode)
    finally:
        runtime.close()


def _forced_trace(n_layers: int, n_experts: int, top_k: int):
    """One request: a 16-token prefill, then 10 decode passes; distinct random experts per token and layer."""
    rng = np.random.default_rng(5)

    def token() -> list[list[int]]:
        return [rng.choice(n_experts, top_k, replace=False).tolist() for _ in range(n_layers)]

    passes = [[token() for _ in range(16)]] + [[token()] for _ in range(10)]
    return make_trace(passes, phases=[0] + [1] * 10, n_experts=n_experts)


def _same_run(a, b, *, counts: bool = True) -> None:
    assert a.tokens == b.tokens
    assert np.array_equal(a.trace.experts, b.trace.experts)
    assert np.array_equal(a.trace.scores, b.trace.scores)
    assert np.array_equal(a.trace.predicted, b.trace.predicted)
    if counts:
        assert a.stats == b.stats


@pytest.mark.parametrize("preset", PRESETS)
def test_a_static_cache_decodes_as_the_dynamic_one_on_the_cpu(preset):
    eager, static = _run(preset, "eager", "cpu"), _run(preset, "static", "cpu")
    _same_run(eager, static)
    assert static.stats.misses > 0 and static.stats.hits > 0
    assert eager.decode_host_share is None and static.decode_host_share is None  # nothing was replayed


def test_forced_routing_through_the_static_hooks_is_the_traces():
    eager, static = _run("olmoe-1b-7b", "eager", "cpu", force=True), _run("olmoe-1b-7b", "static", "cpu", force=True)
    _same_run(eager, static)
    shape = live_shape("olmoe-1b-7b", "tiny")
    forced = _forced_trace(shape.n_layers, shape.n_experts, shape.top_k)  # what _run forced
    assert np.array_equal(static.trace.experts, forced.experts)


def test_graphs_need_a_gpu():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(EmuError, match="CUDA"):
        _run("olmoe-1b-7b", "graph", "cpu")


def test_an_unknown_decode_mode_is_named():
    with pytest.raises(EmuError, match="decode mode"):
        _run("olmoe-1b-7b", "graphs", "cpu")


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize(("kernel", "capture"), [("eager", False), ("fused", False), ("fused", True)])
def test_replayed_passes_compute_the_eager_passes(preset, kernel, capture, monkeypatch):
    dtype = "bf16" if capture else "fp32"  # experts are captured in bf16 alone (`graph_experts`)
    placed: list[int] = []
    launched = ExpertOffload.launched_layer

    def spy(self, p):
        placed.append(p.layer)
        return launched(self, p)

    monkeypatch.setattr(ExpertOffload, "launched_layer", spy)
    static = _run(preset, "static", "cuda", kernel=kernel, capture=capture, dtype=dtype)
    graph = _run(preset, "graph", "cuda", kernel=kernel, capture=capture, dtype=dtype)
    _same_run(static, graph)
    assert 0.0 < graph.decode_host_share <= 1.0
    n_layers = live_shape(preset, "tiny").n_layers
    assert graph.experts_captured == capture and not static.experts_captured
    if capture:  # every replayed decode pass (16) placed each layer before the replay that computes its experts
        assert len(placed) == 16 * n_layers and placed[:n_layers] == list(range(n_layers))
    else:
        assert not placed


@gpu
@pytest.mark.gpu
def test_replayed_passes_force_each_passes_own_routing():
    _same_run(_run("olmoe-1b-7b", "static", "cuda", force=True), _run("olmoe-1b-7b", "graph", "cuda", force=True))


@gpu
@pytest.mark.gpu
def test_replayed_passes_force_a_batchs_routing():
    from live.runner import batched_trace

    from .test_live_batch import _single_requests

    shape = live_shape("olmoe-1b-7b", "tiny")
    trace = batched_trace(_single_requests(2, shape.n_layers, shape.n_experts, shape.top_k, decode=6), 2)
    runs = []
    for decode in ("static", "graph"):
        model = build_model("olmoe-1b-7b", "tiny", dtype="fp32", seed=2, experts_implementation="eager")
        runtime = ExpertOffload(model, shape.n_layers * shape.n_experts // 4, eviction="lru", device="cuda")
        try:
            runs.append(run_live(model, plans_from_trace(trace, 5, 6)[:1], vocab=shape.vocab,
                                 device=torch.device("cuda"), runtime=runtime, force=trace, warmup_passes=2,
                                 decode=decode))
        finally:
            runtime.close()
    _same_run(*runs)
    assert np.array_equal(runs[1].trace.experts, trace.experts)


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("kernel", ["eager", "fused"])
def test_replayed_passes_with_prefetch_keep_the_routing(kernel):
    # prefetch copies race the gates on a GPU: the routing and tokens must agree, the counts may not
    dtype = "bf16" if kernel == "fused" else "fp32"  # fused: the experts captured
    static = _run("olmoe-1b-7b", "static", "cuda", prefetch="next-layer", kernel=kernel, dtype=dtype)
    graph = _run("olmoe-1b-7b", "graph", "cuda", prefetch="next-layer", kernel=kernel, dtype=dtype)
    _same_run(static, graph, counts=False)
    assert graph.stats.accesses == static.stats.accesses


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])  # bf16: the experts captured too
def test_every_expert_resident_runs_deferred_under_the_graphs(dtype):
    static = _run("olmoe-1b-7b", "static", "cuda", kernel="fused", quarter=False, dtype=dtype)
    graph = _run("olmoe-1b-7b", "graph", "cuda", kernel="fused", quarter=False, dtype=dtype)
    _same_run(static, graph)


def test_a_graph_decode_without_a_warm_up_pass_is_refused():
    with pytest.raises(EmuError, match="warmup_passes"):
        shape = live_shape("olmoe-1b-7b", "tiny")
        model = build_model("olmoe-1b-7b", "tiny", dtype="fp32", seed=2)
        runtime = ExpertOffload(model, 8, device="cpu")
        run_live(model, [PassPlan(4, 2)], vocab=shape.vocab, device=torch.device("cpu"), runtime=runtime,
                 warmup_passes=0, decode="graph")
