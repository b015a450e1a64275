"""Experts captured in the decode graphs (`ExpertOffload.place_layer`, `captured_experts`, `launched_layer`), in
the order `graphed.GraphedDecode.replay` runs them, on the CPU without CUDA graphs: the same logits and the same
cache decisions as the fused kernel launched layer by layer. tests/test_live_graph.py replays them on a GPU."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from emu.errors import EmuError  # noqa: E402
from live.models import build_model, live_shape  # noqa: E402
from live.offload import ExpertOffload, HostLedger  # noqa: E402

from .live_support import logits_of_generation, one_thread  # noqa: E402, F401


class _Replay:
    """At each decode pass's experts call: the layer placed (decisions, copies), its experts computed by the
    kernel a segment captures, then booked: a replay's order, one layer at a time. Prefill passes run eager,
    as in the graph decode."""

    def __init__(self, runtime: ExpertOffload) -> None:
        self.runtime = runtime
        self.calls = 0
        self.deferred = 0

    def split(self, layer: int, act_fn: Any, hidden: Any, top_k_index: Any, top_k_weights: Any) -> Any:
        rt = self.runtime
        if hidden.shape[0] > 1:  # a prefill pass
            return rt.run_layer(layer, act_fn, hidden, top_k_index, top_k_weights)
        placed = rt.place_layer(layer, hidden, top_k_index)
        out = rt.captured_experts(layer, hidden, top_k_index, top_k_weights)
        rt.launched_layer(placed)
        self.calls += 1
        self.deferred += placed.experts is None
        return out


def _generate(preset: str, slots: int, captured: bool, preload: bool = False,
              eviction: str = "lru") -> tuple[list[Any], ExpertOffload, _Replay | None]:
    model = build_model(preset, "tiny", dtype="bf16", seed=4)  # the dtype whose grouped GEMM a graph holds
    runtime = ExpertOffload(model, slots, eviction=eviction, kernel="fused")
    if preload:
        runtime.preload()
    replay = None
    if captured:
        assert runtime.graph_experts()
        replay = _Replay(runtime)
        for m in runtime.modules:
            m.splitter = replay
    ids = torch.randint(0, 512, (1, 10), generator=torch.Generator().manual_seed(6))
    return logits_of_generation(model, ids, 6, runtime), runtime, replay


@pytest.mark.parametrize(("preset", "fraction", "eviction"), [("olmoe-1b-7b", 0.25, "lru"),
                                                             ("olmoe-1b-7b", 0.5, "lfu"),
                                                             ("qwen3-30b-a3b", 0.25, "lru")])
def test_captured_experts_give_the_logits_and_decisions_of_the_launched_kernel(preset, fraction, eviction):
    shape = live_shape(preset, "tiny")
    slots = int(fraction * shape.n_layers * shape.n_experts)
    want, rt_want, _ = _generate(preset, slots, captured=False, eviction=eviction)
    got, rt_got, replay = _generate(preset, slots, captured=True, eviction=eviction)
    for a, b in zip(want, got):
        assert torch.equal(a, b)  # the same kernel over the whole pool as over a window of it
    assert replay is not None and replay.calls == 6 * shape.n_layers
    s_want, s_got = rt_want.stats(), rt_got.stats()
    assert s_got == s_want and s_got.misses > 0 and s_got.evictions > 0
    assert np.array_equal(rt_got.bridge.resident(), rt_want.bridge.resident())
    # the slot table the captured kernel reads names each resident key's slot
    keys = np.flatnonzero(rt_got.slot_of >= 0)
    table = rt_got.slot_table.reshape(-1).numpy()
    assert np.array_equal(table[keys], rt_got.slot_of[keys])


def test_captured_experts_of_a_resident_layer_read_no_routing():
    shape = live_shape("olmoe-1b-7b", "tiny")
    slots = shape.n_layers * shape.n_experts
    want, rt_want, _ = _generate("olmoe-1b-7b", slots, captured=False, preload=True)
    got, rt_got, replay = _generate("olmoe-1b-7b", slots, captured=True, preload=True)
    for a, b in zip(want, got):
        assert torch.equal(a, b)
    assert replay is not None and replay.deferred == replay.calls > 0
    assert rt_got.readback_n == 0 and rt_got.stats() == rt_want.stats()
    assert rt_got.stats().hits == rt_got.stats().accesses > 0


def test_the_slot_table_survives_a_reset_in_place():
    """A captured graph reads the table's storage: `reset` zeroes it, never replaces it."""
    model = build_model("olmoe-1b-7b", "tiny", dtype="fp32", seed=4)
    runtime = ExpertOffload(model, 20, kernel="fused")
    table = runtime.slot_table
    runtime.slot_table.fill_(3)
    runtime.reset()
    assert runtime.slot_table is table and int(table.abs().sum()) == 0
    sibling = runtime.sibling(8)
    sibling.reset()
    assert sibling.slot_table is not table


def test_which_runtimes_capture_their_experts():
    def runtime(dtype: str = "bf16", **kw: Any) -> ExpertOffload:
        return ExpertOffload(build_model("olmoe-1b-7b", "tiny", dtype=dtype, seed=4), 20, **kw)

    assert runtime(kernel="fused").graph_experts()
    assert not runtime(kernel="eager").graph_experts()
    assert not runtime(kernel="fused", miss="drop").graph_experts()
    assert not runtime("fp32", kernel="fused").graph_experts()  # its grouped GEMM loops on the host
    rt = runtime(kernel="fused")
    rt.capture = False
    assert not rt.graph_experts()


def test_a_layer_with_no_slot_left_for_its_experts_is_one_clear_error():
    """Captured experts run after the whole layer is placed, so a layer's own experts cannot free slots
    for each other: a cache smaller than a layer's experts is refused, not hung."""
    shape = live_shape("olmoe-1b-7b", "tiny")
    with pytest.raises(EmuError, match="captured experts need more than 3 slots"):
        _generate("olmoe-1b-7b", 3, captured=True)
    assert shape.top_k > 3


def test_preload_of_given_keys_holds_those_alone():
    model = build_model("olmoe-1b-7b", "tiny", dtype="bf16", seed=4)
    runtime = ExpertOffload(model, 10, kernel="fused")
    keys = np.array([3, 1, 17, 40, 41], np.int64)
    runtime.preload(keys)
    assert sorted(np.flatnonzero(runtime.slot_of >= 0).tolist()) == sorted(keys.tolist())
    assert runtime.stats().copies == 0  # a preload's copies are not counted
    table = runtime.slot_table.reshape(-1).numpy()
    assert np.array_equal(table[keys], runtime.slot_of[keys])


def test_the_resident_calibration_request_holds_the_routed_keys_where_a_full_pool_is_not_captured(monkeypatch):
    """A runtime that captures its experts over at most MAX_GROUPS slots prices its hits on a pool of the keys
    the small-cache request routed to, so its resident requests run the captured experts as the runs do."""
    import live.offload as offload
    from live.host_calibration import _Request, _resident_keys, _timed_request
    from live.runner import PassPlan

    shape = live_shape("olmoe-1b-7b", "tiny")
    n_keys = shape.n_layers * shape.n_experts
    model = build_model("olmoe-1b-7b", "tiny", dtype="bf16", seed=4)
    runtime = ExpertOffload(model, 16, kernel="fused")
    prompt = torch.randint(0, shape.vocab, (1, 6), generator=torch.Generator().manual_seed(2))
    missing = _timed_request(model, runtime, PassPlan(6, 3), prompt, torch.device("cpu"), "static", preload=False)
    assert missing.keys is not None and 0 < len(missing.keys) <= n_keys
    routed = missing.keys
    assert np.array_equal(routed, np.unique(routed)) and routed.max() < n_keys
    monkeypatch.setattr(offload, "MAX_GROUPS", len(routed))  # every key would not fit one grouped GEMM
    assert _resident_keys(runtime, missing, n_keys, "graph") is routed
    assert _resident_keys(runtime, missing, n_keys, "eager") is None  # nothing captured: every key
    runtime.capture = False
    assert _resident_keys(runtime, missing, n_keys, "graph") is None
    runtime.capture = True
    monkeypatch.setattr(offload, "MAX_GROUPS", len(routed) - 1)  # the routed keys do not fit either
    assert _resident_keys(runtime, missing, n_keys, "graph") is None
    # the same prompt on a pool of just those keys: every access a hit, and a prefetch policy finds nothing to
    # fetch (its picks are the speculator's predictions, which the keys hold too)
    runtime.resize(len(routed))
    resident = _timed_request(model, runtime, PassPlan(6, 3), prompt, torch.device("cpu"), "static", preload=True,
                              keys=routed)
    assert resident.copies == (0, 0) and np.array_equal(resident.keys, routed)
    assert isinstance(resident, _Request)
    runtime.prefetch = "next-layer"
    try:
        resident_pf = _timed_request(model, runtime, PassPlan(6, 3), prompt, torch.device("cpu"), "static",
                                     preload=True, keys=routed)
    finally:
        runtime.close()
        runtime.prefetch = "none"
    assert resident_pf.prefetches[1] == 0 and resident_pf.copies == (0, 0)


def test_the_touched_keys_are_the_routed_and_the_predicted_ones():
    from live.host_calibration import _touched_keys

    from .conftest import make_trace

    trace = make_trace([[[[0, 1], [2, 3]]]])
    assert _touched_keys(trace, 4).tolist() == [0, 1, 6, 7]  # layer 1's experts 2 and 3 are keys 6 and 7
    predicted = np.array([[[0, 2], [1, 3]]], np.int16)
    import attrs

    with_pred = attrs.evolve(trace, predicted=predicted)
    assert _touched_keys(with_pred, 4).tolist() == [0, 1, 2, 5, 6, 7]


def test_the_ledger_keeps_a_captured_layers_placement_and_booking_apart_within_its_expert_item():
    model = build_model("olmoe-1b-7b", "tiny", dtype="bf16", seed=4)
    runtime = ExpertOffload(model, 40, kernel="fused")
    assert runtime.graph_experts()
    replay = _Replay(runtime)
    for m in runtime.modules:
        m.splitter = replay
    ledger = runtime.ledger = HostLedger()
    ids = torch.randint(0, 512, (1, 10), generator=torch.Generator().manual_seed(6))
    logits_of_generation(model, ids, 4, runtime)
    runtime.ledger = None
    booking, place = ledger.parts[(1, "booking")], ledger.parts[(1, "place")]
    assert booking > 0.0 and place >= 0.0
    # both are parts of the experts' item (its copies' issue aside), never more than it
    assert booking + place <= ledger.seconds[(1, "expert")] + ledger.seconds.get((1, "copy"), 0.0) + 1e-9
    assert (1, "replay") not in ledger.parts  # no graph here: the replay's launch is the decode's (GraphedDecode)
