"""Per-layer expert sizes (mixed quantization): copies take each layer's own bytes and time, room is counted
in those bytes, on every engine (des, fast and the reference); a trace that states its sizes drives a
scenario with them."""

from __future__ import annotations

from pathlib import Path

import attrs
import pytest

from emu.engines.setup import StackChoice, make_inputs
from emu.errors import EmuError
from emu.metrics import build_result
from emu.models import ModelSpec
from emu.runner import load_workload, run_scenario, with_trace_sizes
from emu.scenario import load_scenario
from emu.trace import RoutingTrace

from .conftest import hand_profile, hand_runtime, make_trace, tiny_model


def mixed_model() -> ModelSpec:
    # layer 0: the 6-byte experts of the hand cases (1 s per copy at 6 B/s); layer 1: 12 bytes (2 s)
    return attrs.evolve(tiny_model(), layer_expert_bytes=(6, 12))


def run(engine, model, trace, capacity_bytes: int):
    inputs = make_inputs(model, hand_profile(), trace, capacity_bytes, StackChoice(), runtime=hand_runtime())
    cs, end, timings = engine(inputs)
    return build_result(cs, end, trace, "x", timings).to_dict()


@pytest.mark.parametrize("engine_name", ["des", "fast", "reference"])
def test_cold_pass_copies_each_layers_bytes(engines, engine_name):
    # One decode token: layer 0 needs {0, 1}, layer 1 {2, 3}; room for everything (36 bytes).
    # L0: dense [0, .25]; copies 0 [.25, 1.25], 1 [1.25, 2.25]; compute 0 [1.25, 1.75], 1 [2.25, 2.75].
    # L1: dense [2.75, 3]; 12-byte copies of 2 s: 2 [3, 5], 3 [5, 7]; compute 2 [5, 5.5], 3 [7, 7.5].
    # Stall: L0 .25->1.25 and 1.75->2.25 (1.5 s); L1 3->5 and 5.5->7 (3.5 s).
    trace = make_trace([[[[0, 1], [2, 3]]]])
    r = run(engines[engine_name], mixed_model(), trace, 36)
    assert r["e2e_s"] == pytest.approx(7.5, abs=1e-9)
    assert r["bytes_h2d"] == 2 * 6 + 2 * 12
    assert r["per_layer"][0]["stall_s"] == pytest.approx(1.5, abs=1e-9)
    assert r["per_layer"][1]["stall_s"] == pytest.approx(3.5, abs=1e-9)
    assert r["copy_busy_frac"] == pytest.approx(6.0 / 7.5, abs=1e-12)
    assert r["evictions"] == 0


@pytest.mark.parametrize("engine_name", ["des", "fast", "reference"])
def test_room_is_counted_in_each_layers_bytes(engines, engine_name):
    # 24 bytes (4 slots of the nominal 6-byte expert). After layer 0, 12 bytes are used; expert 2 (12 bytes)
    # fits (24); expert 3 needs 12 more: LRU evicts 0 (6 bytes, 30 used > 24 still) and then 1 (24).
    # Times are those of the cold pass (the evicted experts are done), 7.5 s.
    trace = make_trace([[[[0, 1], [2, 3]]]])
    r = run(engines[engine_name], mixed_model(), trace, 24)
    assert r["evictions"] == 2
    assert r["e2e_s"] == pytest.approx(7.5, abs=1e-9)
    # the same capacity with uniform 6-byte experts holds all four
    assert run(engines[engine_name], tiny_model(), trace, 24)["evictions"] == 0


def test_model_sizes_per_layer_and_precision():
    m = mixed_model()
    assert m.layer_bytes() == [6, 12]
    assert m.expert_bytes() == 12  # a slot must hold the largest
    assert m.total_expert_bytes == 4 * (6 + 12)
    assert m.layer_bytes("int8") == [3, 6]  # half of bf16's bytes per weight
    assert "layer_expert_bytes" not in tiny_model().to_dict()  # a uniform model's record is unchanged
    assert m.to_dict()["layer_expert_bytes"] == [6, 12]
    with pytest.raises(EmuError, match="2 positive integers"):
        attrs.evolve(tiny_model(), layer_expert_bytes=(6,))


def _scenario(tmp_path: Path, trace: RoutingTrace, model_table: str) -> Path:
    trace.save(tmp_path / "t.npz")
    profile = Path(__file__).resolve().parents[1] / "scenarios" / "profiles" / "h100-pcie5.toml"
    path = tmp_path / "s.toml"
    path.write_text(f'name = "mixed"\n{model_table}\n[hardware]\nprofile = "{profile}"\n[cache]\n'
                    'capacity = "50%"\n[workload]\ntrace = "t.npz"\n[engine]\nkind = "fast"\n')
    return path


def test_a_trace_that_states_its_sizes_drives_the_run(tmp_path):
    trace = make_trace([[[[0, 1], [2, 3]]], [[[0, 2], [1, 3]]]])
    model = '[model]\npreset = "mixtral-8x7b"\nn_moe_layers = 2\nn_experts = 4\n'
    sized = attrs.evolve(trace, meta={**trace.meta, "expert_bytes": [3_000_000, 5_000_000]})
    sc = load_scenario(_scenario(tmp_path, sized, model))
    assert sc.model.layer_expert_bytes is None
    run_sc = with_trace_sizes(sc, load_workload(sc))
    assert run_sc.model.layer_expert_bytes == (3_000_000, 5_000_000)
    assert run_sc.cache.capacity_bytes == 4 * 8_000_000 // 2  # 50 % of the trace's total, not the preset's
    _result, record = run_scenario(sc, "fast")
    assert record["scenario"]["model"]["layer_expert_bytes"] == [3_000_000, 5_000_000]
    # pass 0 copies experts 0, 1 of layer 0 and 2, 3 of layer 1 at least: each copy is its layer's size
    assert record["per_layer"][0]["bytes_h2d"] >= 2 * 3_000_000
    assert record["per_layer"][0]["bytes_h2d"] % 3_000_000 == 0
    assert record["per_layer"][1]["bytes_h2d"] % 5_000_000 == 0
    # a model that states its own sizes wins over the trace's
    own = model + "layer_expert_bytes = [1_000_000, 2_000_000]\n"
    sc2 = load_scenario(_scenario(tmp_path, sized, own))
    assert with_trace_sizes(sc2, load_workload(sc2)).model.layer_expert_bytes == (1_000_000, 2_000_000)
    # sizes of the wrong length name the trace and the key
    bad = attrs.evolve(trace, meta={**trace.meta, "expert_bytes": [1, 2, 3]})
    sc3 = load_scenario(_scenario(tmp_path, bad, model))
    with pytest.raises(EmuError, match=r"meta\.expert_bytes"):
        with_trace_sizes(sc3, load_workload(sc3))
