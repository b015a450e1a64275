"""`copy.order`: queued copies start demand first (the default) or in submission order, where a CUDA copy engine
runs what was submitted to it in that order whatever the stream's priority."""

from __future__ import annotations

import numpy as np
import pytest

from emu.engines import copy_queue
from emu.errors import EmuError
from emu.kernel.layout import DEMAND, ORDER_DEMAND_FIRST, ORDER_SUBMISSION, PREFETCH, SC, new_cache_state
from emu.profile import profile_from_dict

from .conftest import make_trace

EXPERT = 6


def _queue(order: int) -> object:
    cs = new_cache_state(2, 4, 2, 1, 8 * EXPERT, np.array([EXPERT], np.int64), 1)
    cs.sc[SC.COPY_ORDER] = order
    copy_queue.push(cs, PREFETCH, 3, 5)  # a prefetch submitted first
    copy_queue.push(cs, DEMAND, 7, 1)  # then a demand copy
    copy_queue.push(cs, PREFETCH, 9, 6)
    return cs


@pytest.mark.parametrize(("order", "want"), [(ORDER_DEMAND_FIRST, [1, 5, 6]), (ORDER_SUBMISSION, [5, 1, 6])])
def test_pop_order(order: int, want: list[int]) -> None:
    cs = _queue(order)
    assert [copy_queue.entry_key(copy_queue.pop(cs)) for _ in range(3)] == want


def test_without_prefetches_the_order_changes_nothing(engines) -> None:
    import attrs

    from emu.engines.setup import StackChoice, make_inputs
    from emu.metrics import build_result

    from .conftest import hand_profile, tiny_model

    trace = make_trace([[[[0, 1], [2, 3]]], [[[0, 2], [1, 3]]], [[[3, 1], [0, 2]]]])
    base = hand_profile()
    out = {}
    for order in ("demand-first", "submission"):
        profile = attrs.evolve(base, copy=attrs.evolve(base.copy, order=order))
        cs, end, timings = engines["fast"](make_inputs(tiny_model(), profile, trace, 3 * EXPERT, StackChoice()))
        out[order] = build_result(cs, end, trace, "fast", timings).to_dict()
        out[order].pop("timings")
    assert out["demand-first"] == out["submission"]


def test_the_profile_key() -> None:
    base = {"name": "p", "copy": {"latency_s": 0.0, "bw_pinned_Bps": 1.0, "bw_pageable_Bps": 1.0},
            "compute": {"expert_launch_s": 1.0, "hbm_Bps": 1.0, "flops_per_s": 1.0, "dense_layer_s": 1.0}}
    assert profile_from_dict(base).copy.order == "demand-first"
    assert profile_from_dict({**base, "copy": {**base["copy"], "order": "submission"}}).copy.order == "submission"
    with pytest.raises(EmuError, match="demand-first") as err:
        profile_from_dict({**base, "copy": {**base["copy"], "order": "fifo"}}, file="p.toml")
    assert err.value.key == "copy.order"
