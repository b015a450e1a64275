"""Cache-aware routing: which experts the biased router picks, with which weights, and its errors."""

from __future__ import annotations

import math
from typing import Any

import attrs
import numpy as np
import pytest

from emu.errors import EmuError
from emu.kernel.layout import RESIDENT, SC, SF

from .conftest import make_trace, tiny_model
from .policy_support import cpu_profile, kernel_setup, run, trace_of

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


# --- history = 1: SpecMD's delta_avg, the historical mean of the full router logits' range --------------------

def with_logits(passes: list, logits: list, n_experts: int = 4) -> Any:
    """A trace with routing `passes` (passes[p][token][layer] = ids), the router's full `logits` (same nesting,
    n_experts values) and as gate scores the full softmax of the logits at the chosen experts."""
    lg = np.array([t for p in logits for t in p], np.float16)
    ex = np.array([t for p in passes for t in p], np.int64)
    probs = np.exp(lg.astype(np.float64))
    probs /= probs.sum(axis=2, keepdims=True)
    scores = np.take_along_axis(probs, ex, axis=2).astype(np.float16)
    return attrs.evolve(make_trace(passes, n_experts=n_experts), scores=scores, logits=lg).validate()


# one token, one layer, top-2 of 4 experts: logits (2, 1, 0, -2), the router picks {0, 1}; range 4
ONE = with_logits([[[[0, 1]]]], [[[[2.0, 1.0, 0.0, -2.0]]]])


def routed_history(tr: Any, strength: float, resident: tuple[int, ...], passes: int = 1
                   ) -> list[tuple[list[int], list[float], float]]:
    """(chosen keys, their mass, rerouted mass so far) of each pass at layer 0, `resident` kept resident."""
    pol, ps, cs, tv = kernel_setup(tr, "routing", ("cache-aware", {"strength": strength, "history": 1}))
    for e in resident:
        cs.status[e] = RESIDENT
    out = []
    for p in range(passes):
        n = pol.hooks["route"](ps, cs, tv, p, 0, 0.0)
        out.append(([int(k) for k in cs.cur_key[:n]], [float(m) for m in cs.cur_mass[:n]],
                    float(cs.stats_f[SF.REROUTED_MASS, 0])))
    return out


def test_history_swaps_at_the_papers_small_lambda():
    # delta_avg = 4 (the one token's range); lambda .3 boosts resident e2 to 0 + 1.2 > 1 (e1's logit): the
    # router takes {0, 2}, e2 weighted by the router's own weight for it, score_0 * exp(0 - 2); e1's score
    # is the rerouted mass
    assert ONE.scores is not None
    s0, s1 = float(ONE.scores[0, 0, 0]), float(ONE.scores[0, 0, 1])
    [(keys, mass, rerouted)] = routed_history(ONE, 0.3, resident=(0, 2))
    assert keys == [0, 2]
    assert mass == pytest.approx([s0, s0 * math.exp(-2.0)], rel=1e-12)
    assert rerouted == pytest.approx(s1, rel=1e-12)


def test_history_ties_keep_the_routers_choice_and_small_lambda_changes_nothing():
    assert ONE.scores is not None
    own = [float(ONE.scores[0, 0, 0]), float(ONE.scores[0, 0, 1])]
    assert routed_history(ONE, 0.25, resident=(2,)) == [([0, 1], pytest.approx(own), 0.0)]  # 0 + 1.0 ties e1
    assert routed_history(ONE, 0.1, resident=(2,)) == [([0, 1], pytest.approx(own), 0.0)]
    assert routed_history(ONE, 0.0, resident=(2, 3)) == [([0, 1], pytest.approx(own), 0.0)]


def test_history_boost_moves_a_resident_expert_up_past_several():
    # lambda 1: boost 4; resident e3 (-2 + 4 = 2) ties e0 (the router's own: first), e1 is displaced
    assert ONE.scores is not None
    s0 = float(ONE.scores[0, 0, 0])
    [(keys, mass, rerouted)] = routed_history(ONE, 1.0, resident=(3,))
    assert keys == [0, 3]
    assert mass == pytest.approx([s0, s0 * math.exp(-4.0)], rel=1e-12)
    assert rerouted == pytest.approx(float(ONE.scores[0, 0, 1]), rel=1e-12)
    # both of the router's choices resident and boosted: nothing moves
    assert routed_history(ONE, 5.0, resident=(0, 1))[0][2] == 0.0


def test_history_averages_the_ranges_of_earlier_passes():
    # lambda .2. Pass 0: range 4, boost .8: e2 at 0 + .8 < 1, no swap. Pass 1: logits (1, .5, .25, 0), range 1;
    # its own range would give boost .2 (e2 at .45 < .5, no swap), the history's mean (4 + 1) / 2 = 2.5 gives
    # boost .5: e2 at .75 > .5 swaps in
    tr = with_logits([[[[0, 1]]], [[[0, 1]]]], [[[[2.0, 1.0, 0.0, -2.0]]], [[[1.0, 0.5, 0.25, 0.0]]]])
    assert tr.scores is not None
    (k0, _, r0), (k1, m1, r1) = routed_history(tr, 0.2, resident=(2,), passes=2)
    assert k0 == [0, 1] and r0 == 0.0
    assert k1 == [0, 2]
    s0 = float(tr.scores[1, 0, 0])
    assert m1 == pytest.approx([s0, s0 * math.exp(0.25 - 1.0)], rel=1e-12)
    assert r1 == pytest.approx(float(tr.scores[1, 0, 1]), rel=1e-12)


def test_history_needs_logits_naming_policy_routing():
    tr = trace_of([[[[0, 1]]]], scores=[[[[.6, .4]]]])
    with pytest.raises(EmuError, match="the trace has no logits") as err:
        run(tr, 2, routing=("cache-aware", {"strength": 0.3, "history": 1}))
    assert err.value.key == "policy.routing"
    assert "\n" not in str(err.value)


def test_history_default_is_the_topk_gap_definition():
    # history 0 (the default) ignores the logits: the same choice as the trace without them
    plain = attrs.evolve(ONE, logits=None)
    for strength in (0.3, 1.5, 3.0):
        a, _ = run(ONE, 2, routing=("cache-aware", {"strength": strength}))
        b, _ = run(plain, 2, routing=("cache-aware", {"strength": strength}))
        for key in ("hits", "misses", "mass", "rerouted_mass"):
            assert a[key] == b[key], key


def random_logit_trace(seed: int, n_layers: int = 3, n_exp: int = 6, k: int = 2, n_passes: int = 14) -> Any:
    """Routing = top-k of random logits (a 4-token prefill, then 1-2 token decode passes)."""
    rng = np.random.default_rng(seed)
    bias = rng.normal(0.0, 1.0, (n_layers, n_exp))
    passes, logits = [], []
    for p in range(n_passes):
        n_tok = 4 if p == 0 else int(rng.integers(1, 3))
        lg = (bias + rng.normal(0.0, 1.5, (n_tok, n_layers, n_exp))).astype(np.float16)
        ids = np.argsort(-lg.astype(np.float64), axis=2, kind="stable")[:, :, :k]
        passes.append(ids.tolist())
        logits.append(lg.astype(np.float64).tolist())
    return with_logits(passes, logits, n_experts=n_exp)


@pytest.mark.parametrize("prefetch", ["none", "next-layer"])
@pytest.mark.parametrize("slots", [6, 9])  # of 18 keys: some of a layer's experts resident at its gate
def test_history_fast_and_des_agree(prefetch, slots):
    tr = random_logit_trace(slots)
    kw = {"routing": ("cache-aware", {"strength": 0.5, "history": 1}), "prefetch": prefetch}
    model = tiny_model(3, 6, 2)
    fast, _ = run(tr, slots, model=model, profile=cpu_profile(), **kw)
    des, _ = run(tr, slots, model=model, profile=cpu_profile(), engine="des", **kw)
    for key in fast:
        if key not in ("engine", "timings"):
            assert fast[key] == des[key], key
    assert fast["rerouted_mass"] > 0.0  # the bias moved something
    std, _ = run(tr, slots, model=model, profile=cpu_profile(), prefetch=prefetch)
    assert fast["hit_rate"] >= std["hit_rate"]
    assert fast["rerouted_mass"] <= fast["mass"]
