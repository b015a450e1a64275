"""The reference engine (emu/engines/reference: the timing contract written again in SimPy, sharing only the
cache decisions) against the hand-computed cases and against the fast engine on random scenarios.

The fast and SimPy (`des`) engines drive one time core, so their agreement cannot catch a semantic error in
it; the reference engine never calls that core. The differential test draws scenarios with the strategy of
tests/test_engine_equivalence.py (models, capacities, copy and compute profiles, host costs, batch sizes,
traces, one registered policy of every kind) and requires every per-layer integer statistic and the final
residency to be equal, every float statistic, the busy times, pass starts and ends and the end time equal
within 1e-9 relative (1e-12 absolute); a failure prints the shrunk scenario. 2,000 random scenarios plus 20
per registered policy (that policy pinned): about 20 s on one core.

The minimal case this comparison found in the time core (a wait for the CPU that ended a layer was booked
into the next layer, and the trace's last one never) is kept as a hand case at the end, on both engines.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from emu.engines.fast.engine import run_fast
from emu.engines.reference import ReferenceEngine, run_reference
from emu.engines.setup import StackChoice, make_inputs
from emu.errors import EmuError
from emu.kernel.layout import FC, SF, ST
from emu.policies.api import KINDS
from emu.policies.registry import REGISTRY

from . import test_engine_hand_cases as hand
from .conftest import hand_profile, make_trace, tiny_model
from .test_engine_equivalence import Scenario, inputs_of, scenarios

RTOL = 1e-9
ATOL = 1e-12
BUSY = {"copy": FC.COPY_BUSY, "GPU": FC.GPU_BUSY, "CPU": FC.CPU_BUSY}

HAND_CASES = [getattr(hand, name) for name in sorted(dir(hand)) if name.startswith("test_")]


@pytest.mark.parametrize("case", HAND_CASES, ids=[case.__name__ for case in HAND_CASES])
def test_hand_case_on_the_reference_engine(case: Any) -> None:
    case({"reference": run_reference}, "reference")


class _GpuLog(ReferenceEngine):
    """The reference engine noting each GPU job it starts: (start, name, duration)."""

    def __init__(self, inputs: Any) -> None:
        super().__init__(inputs)
        self.gpu: list[tuple[float, str, float]] = []

    def _start_gpu(self, duration: float, dev: float, layer: int, done: Any) -> Any:
        entry = done.args[0] if isinstance(done, partial) else None
        name = f"dense L{layer}" if entry is None else f"expert L{layer} E{int(self.cs.cur_expert[entry])}"
        self.gpu.append((self.env.now, name, duration))
        return super()._start_gpu(duration, dev, layer, done)


def test_reference_runs_a_copy_landing_mid_run_before_higher_ids() -> None:
    # the GPU order of test_copy_landing_mid_run_goes_before_higher_ids (there read off the SimPy engine's
    # timeline): in pass 1 the copy of expert 1 lands while expert 0 runs, so 1 goes before the resident 2
    trace = make_trace([[[[0, 2], [0, 1]]], [[[0, 2], [0, 1]], [[1, 2], [0, 1]]]], phases=[1, 0])
    engine = _GpuLog(make_inputs(tiny_model(), hand_profile(copy_s=0.25), trace, 8 * hand.EXPERT, StackChoice()))
    assert engine.run() == pytest.approx(6.75, abs=1e-9)
    want = [(3.0, "dense L0", 0.25), (3.25, "expert L0 E0", 0.5), (3.75, "expert L0 E1", 0.5),
            (4.25, "expert L0 E2", 0.75), (5.0, "dense L1", 0.25), (5.25, "expert L1 E0", 0.75),
            (6.0, "expert L1 E1", 0.75)]
    gpu = [g for g in engine.gpu if g[0] >= 3.0]
    assert [g[1] for g in gpu] == [w[1] for w in want]
    for g, w in zip(gpu, want):
        assert (g[0], g[2]) == pytest.approx((w[0], w[2]), abs=1e-12)


def _outcome(run: Any, inputs: Any) -> tuple[Any, float] | str:
    try:
        cs, end, _timings = run(inputs)
    except EmuError as err:
        return f"EmuError: {err}"
    return cs, end


def _close(what: str, fast: Any, ref: Any) -> None:
    fast, ref = np.asarray(fast, float), np.asarray(ref, float)
    bad = ~np.isclose(ref, fast, rtol=RTOL, atol=ATOL)
    assert not bad.any(), (f"{what} differ at {np.argwhere(bad).tolist()}: fast={fast[bad].tolist()} "
                           f"reference={ref[bad].tolist()}")


def assert_agree(s: Scenario) -> None:
    inputs = inputs_of(s)
    note(f"trace: {inputs.trace.n_tokens} tokens, {inputs.trace.n_passes} passes; capacity "
         f"{inputs.capacity_bytes} B = {inputs.capacity_bytes / inputs.model.expert_bytes():.2f} experts")
    fast = _outcome(run_fast, inputs)
    ref = _outcome(run_reference, inputs)
    if isinstance(fast, str) or isinstance(ref, str):
        assert fast == ref, f"one engine failed: fast={fast!r} reference={ref!r}"
        return
    (cf, ef), (cr, er) = fast, ref
    for row in ST:
        assert np.array_equal(cf.stats_i[row], cr.stats_i[row]), (
            f"per-layer {row.name} differs: fast={cf.stats_i[row].tolist()} reference={cr.stats_i[row].tolist()}")
    for row in SF:
        _close(f"per-layer {row.name}", cf.stats_f[row], cr.stats_f[row])
    for name, field in BUSY.items():
        _close(f"{name} busy time", cf.fc[field], cr.fc[field])
    _close("pass starts", cf.pass_start, cr.pass_start)
    _close("pass ends", cf.pass_end, cr.pass_end)
    assert math.isclose(ef, er, rel_tol=RTOL, abs_tol=ATOL), f"end time: fast={ef!r} reference={er!r}"
    assert np.array_equal(cf.status, cr.status), (
        f"final residency differs at keys {np.flatnonzero(cf.status != cr.status).tolist()}")


@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_reference_agrees_with_fast_on_random_scenarios(s: Scenario) -> None:
    assert_agree(s)


@pytest.mark.parametrize("kind,name", [(k, n) for k in KINDS for n in sorted(REGISTRY[k])])
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_reference_agrees_with_fast_for_every_registered_policy(kind: str, name: str, data: Any) -> None:
    assert_agree(data.draw(scenarios(fixed=(kind, name)), label="scenario"))


# Two MoE layers, one decode token; each layer's one expert misses and the `cpu` miss policy runs it on the CPU
# (12 us at 1 token; a copy would take 12 ms). Dense 1 ms a layer. L0: dense [0, 1 ms], CPU [1, 1.012 ms] while
# the GPU waits; L1: dense [1.012, 2.012 ms], CPU [2.012, 2.024 ms] while the GPU waits. A stall is the GPU
# waiting inside a layer's expert phase (for a copy or for the CPU): 12 us in each layer.
CPU_WAITS = Scenario(
    layers=2, experts=2, top_k=1, hidden=1, precision="bf16", capacity_experts=1.0, engines=1, latency_s=0.0,
    bw_Bps=1e3, expert_s=(1e-3, 1e-3, 3e-3), dense_s=(1e-3, 1e-3), cpu=True, pass_overhead_s=0.0,
    layer_overhead_s=0.0, host=(), copy_order="demand-first",
    tokens=1, prompt_len=0, output_len=1, batch_size=1, reuse=0.0, scores=False, predicted=False, seed=0,
    stack=(("eviction", "lru", ()), ("prefetch", "none", ()), ("miss", "cpu", ()), ("routing", "standard", ()),
           ("partition", "global", ())))


def _stall_of(run: Any) -> tuple[list[float], float]:
    inputs = inputs_of(CPU_WAITS)
    assert inputs.trace.experts.tolist() == [[[0], [1]]]
    cs, end, _timings = run(inputs)
    assert cs.stats_i[ST.CPU_RUNS].tolist() == [1, 1]
    return cs.stats_f[SF.STALL_S].tolist(), end


def test_reference_books_each_wait_for_the_cpu_in_its_layer() -> None:
    stall, end = _stall_of(run_reference)
    assert end == pytest.approx(2.024e-3, rel=RTOL)
    assert stall == pytest.approx([12e-6, 12e-6], rel=1e-9)


def test_fast_engine_books_each_wait_for_the_cpu_in_its_layer() -> None:
    stall, end = _stall_of(run_fast)
    assert end == pytest.approx(2.024e-3, rel=RTOL)
    assert stall == pytest.approx([12e-6, 12e-6], rel=1e-9)
