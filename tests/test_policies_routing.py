"""Cache-aware routing: which experts the biased router picks, with which weights, and its errors."""

from __future__ import annotations

import math

import numpy as np
import pytest

from emu.errors import EmuError
from emu.kernel.layout import RESIDENT, SC, SF

from .policy_support import kernel_setup, run, trace_of

F16 = float(np.float16(.6)), float(np.float16(.4))


def routed(strength: float, rerouted: list[float] | None = None) -> tuple[list[int], list[float]]:
    # one token {e0: .6, e1: .4}; e0 and e2 are resident, e1 is not
    tr = trace_of([[[[0, 1]]]], scores=[[[[.6, .4]]]])
    pol, ps, cs, tv = kernel_setup(tr, "routing", ("cache-aware", {"strength": strength}))
    cs.status[0] = RESIDENT
    cs.status[2] = RESIDENT
    n = pol.hooks["route"](ps, cs, tv, 0, 0, 0.0)
    cs.sc[SC.NCUR] = n
    if rerouted is not None:
        rerouted.append(float(cs.stats_f[SF.REROUTED_MASS, 0]))
    return [int(k) for k in cs.cur_key[:n]], [float(m) for m in cs.cur_mass[:n]]


def test_cache_aware_swaps_in_a_resident_expert_above_lambda_one():
    # delta = ln(.6/.4) = .405; e2's estimated logit ln(.4) - delta, boosted by 1.5 * delta, beats e1's
    # ln(.4): the router takes {e0, e2}; e2 is weighted by its estimated original weight .4 * exp(-delta).
    booked: list[float] = []
    keys, mass = routed(1.5, booked)
    delta = math.log(F16[0] / F16[1])
    assert keys == [0, 2]
    assert booked == [pytest.approx(F16[1])]  # e1's gate score moved off the router's choice
    assert mass == pytest.approx([F16[0], F16[1] * math.exp(-delta)], rel=1e-6)


def test_cache_aware_keeps_the_router_choice_at_small_lambda():
    assert routed(0.0) == ([0, 1], pytest.approx(list(F16)))
    booked: list[float] = []
    assert routed(1.0, booked)[0] == [0, 1]  # a tie with e1: the router's own choice stays
    assert booked == [0.0]


def test_cache_aware_needs_gate_scores():
    with pytest.raises(EmuError, match="gate scores") as err:
        run(trace_of([[[[0, 1]]]]), 2, routing="cache-aware")
    assert err.value.key == "policy.routing"


def test_cache_aware_raises_the_hit_rate():
    rng = np.random.default_rng(4)
    passes, scores = [], []
    for _ in range(60):
        ids = [list(rng.choice(8, 2, replace=False)) for _ in range(2)]
        w = sorted(rng.uniform(0.3, 0.7, 2), reverse=True)
        passes.append([ids])
        scores.append([[[w[0], 1 - w[0]]] * 2])
    tr = trace_of(passes, scores=scores, n_experts=8)
    std, _ = run(tr, 6)
    biased, _ = run(tr, 6, routing=("cache-aware", {"strength": 3.0}))
    assert biased["hit_rate"] > std["hit_rate"] + 0.1
    assert biased["accesses"] == std["accesses"]  # still top-2 per token
