"""Invariants every run must keep, on random small scenarios and both engines.

Accounting: each access is a hit, a miss (compulsory, capacity or collision) or dropped. Memory:
resident and in-flight bytes never exceed the budget; the SimPy engine checks that at every instant
through its VRAM `simpy.Container` (a put beyond capacity would leave the level behind the core's count
and raise), and both engines must end with consistent byte books. Busy fractions lie in [0, 1]. The
same seed gives the same result.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from hypothesis import HealthCheck, assume, given, settings

from emu.engines.des.engine import run_des
from emu.engines.fast.engine import run_fast
from emu.errors import EmuError
from emu.kernel import layout as S
from emu.metrics import build_result

from .test_engine_equivalence import Scenario, inputs_of, scenarios

ENGINES = {"fast": run_fast, "des": run_des}


def _run(engine: str, s: Scenario) -> tuple[Any, Any, Any]:
    inputs = inputs_of(s)
    try:
        cs, end, timings = ENGINES[engine](inputs)
    except EmuError:
        assume(False)  # a deadlocked configuration (a layer cap below one expert) has no result to check
    return inputs, cs, build_result(cs, end, inputs.trace, engine, timings)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_accounting_memory_and_busy_fractions(s: Scenario) -> None:
    for engine in ENGINES:
        inputs, cs, result = _run(engine, s)
        st = cs.stats_i
        misses = st[S.ST.MISS_COMPULSORY] + st[S.ST.MISS_CAPACITY] + st[S.ST.MISS_COLLISION]
        np.testing.assert_array_equal(st[S.ST.HITS] + misses + st[S.ST.DROPPED], st[S.ST.ACCESSES],
                                      err_msg=f"{engine}: hits + misses + dropped != accesses per layer")
        assert st[S.ST.ACCESSES].sum() > 0
        assert (st[S.ST.LATE_HITS] <= st[S.ST.HITS]).all()

        cap = inputs.capacity_bytes
        used = int(cs.sc[S.SC.USED])
        held = (cs.status == S.RESIDENT) | (cs.status == S.IN_FLIGHT)
        assert used <= cap, f"{engine}: {used} bytes held, budget {cap}"
        assert used == int(cs.nbytes[held].sum()), f"{engine}: byte count disagrees with the resident set"
        assert used == int(cs.layer_bytes.sum())
        assert (cs.layer_count == held.reshape(inputs.model.n_moe_layers, -1).sum(axis=1)).all()
        assert (cs.protect == 0).all(), f"{engine}: an expert is still pinned after the run"

        for name in ("copy_busy_frac", "compute_busy_frac", "cpu_busy_frac"):
            value = getattr(result, name)
            assert 0.0 <= value <= 1.0, f"{engine}: {name} = {value}"
        assert result.e2e_s > 0.0
        assert (cs.pass_end >= cs.pass_start).all()
        assert (np.diff(cs.pass_start) >= 0).all()


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_same_seed_same_result(s: Scenario) -> None:
    for engine in ENGINES:
        first = _run(engine, s)[2].to_dict()
        second = _run(engine, s)[2].to_dict()
        first.pop("timings")
        second.pop("timings")
        assert first == second, f"{engine}: two runs of one scenario differ"
