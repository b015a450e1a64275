"""The precision cascade (`fetch-cascade`), Drop Priority Cascade (`drop-priority-cascade`) and score-percentile
prefetch's per-layer mass share (`mass` 1), as SpecMD defines them: hand-computed actions on small inputs, the
quality accounting end to end, bad parameters named by key, and both engines agreeing."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from emu.errors import EmuError
from emu.kernel.hooks import MISS_DROP, MISS_FETCH
from emu.policies.miss.fetch_cascade import cascade_levels
from emu.runner import run_scenario
from emu.scenario import load_scenario

from .policy_support import kernel_setup, run, set_layer, trace_of
from .test_engine_equivalence import assert_same, scenarios
from .test_engine_reference import assert_agree

# tiny model precisions: bf16 (6 B), fp16, fp8, int8 (3 B), int4 (2 B), int2 (1 B)
INT8, INT4, INT2 = 3, 4, 5
BF16 = ("bf16", "fp16", "fp8", "int8", "int4", "int2")
ROOT = Path(__file__).resolve().parents[1]
SCN = ROOT / "scenarios" / "olmoe-1b-7b_h100_5pct.toml"


def action(policy, ps, cs, tv, i: int) -> tuple[int, int]:
    a = int(policy.hooks["on_miss"](ps, cs, tv, i, 0.0))
    return a & 15, a >> 4


def four_experts(scores: list[float] | None = None):
    """One token, one layer routed to e0..e3 (top-4 of 4), gate scores `scores`."""
    return trace_of([[[[0, 1, 2, 3]]]], scores=None if scores is None else [[[scores]]])


MASSES = [.4, .3, .2, .1]


# ---- fetch-cascade --------------------------------------------------------------------------------------------

def test_fetch_cascade_levels_by_mass_percentile():
    # masses .4 .3 .2 .1: the 60th percentile is .28 (position 1.8 of the sorted four), the 30th .19 (0.9):
    # .4 and .3 full precision, .2 int4, .1 int2
    pol, ps, cs, tv = kernel_setup(four_experts(), "miss", "fetch-cascade")
    set_layer(cs, 0, [0, 1, 2, 3], mass=MASSES)
    assert [action(pol, ps, cs, tv, i) for i in range(4)] == [
        (MISS_FETCH, 0), (MISS_FETCH, 0), (MISS_FETCH, INT4), (MISS_FETCH, INT2)]
    # levels int8 -> int4
    pol, ps, cs, tv = kernel_setup(four_experts(), "miss", ("fetch-cascade", {"bits": 8, "lowest_bits": 4}))
    set_layer(cs, 0, [0, 1, 2, 3], mass=MASSES)
    assert [action(pol, ps, cs, tv, i)[1] for i in range(4)] == [0, 0, INT8, INT4]
    # lowest_bits = bits: two levels; the bottom 60% all at int4
    pol, ps, cs, tv = kernel_setup(four_experts(), "miss", ("fetch-cascade", {"lowest_bits": 4}))
    set_layer(cs, 0, [0, 1, 2, 3], mass=MASSES)
    assert [action(pol, ps, cs, tv, i)[1] for i in range(4)] == [0, 0, INT4, INT4]
    # "below" is strict: the 0th percentile is the smallest mass, so nothing is below it
    pol, ps, cs, tv = kernel_setup(four_experts(), "miss", ("fetch-cascade", {"lowest_percentile": 0}))
    set_layer(cs, 0, [0, 1, 2, 3], mass=MASSES)
    assert [action(pol, ps, cs, tv, i)[1] for i in range(4)] == [0, 0, INT4, INT4]
    # percentile 100 and lowest 75 (position 2.25: .325): .4 is the only one not degraded to int2 or int4
    pol, ps, cs, tv = kernel_setup(four_experts(), "miss",
                                   ("fetch-cascade", {"percentile": 100, "lowest_percentile": 75}))
    set_layer(cs, 0, [0, 1, 2, 3], mass=MASSES)
    assert [action(pol, ps, cs, tv, i)[1] for i in range(4)] == [0, INT2, INT2, INT2]


@pytest.mark.parametrize("engine", ["fast", "des"])
def test_fetch_cascade_books_degraded_mass_and_bytes(engine):
    # a cold cache of 4 slots: all four miss; e2 is copied at int4 (2 B), e3 at int2 (1 B), e0 and e1 at bf16 (6 B)
    r, cs = run(four_experts(MASSES), 4, miss="fetch-cascade", engine=engine)
    assert (r["misses"], r["degraded"], r["bytes_h2d"]) == (4, 2, 6 + 6 + 2 + 1)
    assert r["degraded_mass"] == pytest.approx(.2 + .1, abs=1e-3)  # fp16 scores
    assert [int(cs.prec[k]) for k in range(4)] == [0, 0, INT4, INT2]


def test_cascade_levels_must_be_stored_below_the_model():
    defaults = {"percentile": 60.0, "lowest_percentile": 30.0, "bits": 4, "lowest_bits": 2}
    assert cascade_levels(BF16, defaults, "p") == (INT4, INT2)
    assert cascade_levels(("int8", "fp8", "int4", "int2"), defaults, "p") == (2, 3)
    cases = [
        (("int4", "int2"), {}, "policy.miss.bits", "int4 is not a stored precision below the model's int4"),
        (BF16, {"bits": 3}, "policy.miss.bits", "int3 is not a stored precision"),
        (BF16, {"lowest_bits": 8}, "policy.miss.lowest_bits", "lowest_bits = 8 is above bits = 4"),
        (("int4", "int2"), {"bits": 2, "lowest_bits": 4}, "policy.miss.lowest_bits", "int4 is not a stored"),
        (BF16, {"lowest_percentile": 70}, "policy.miss.lowest_percentile", "lowest_percentile = 70 is above"),
    ]
    for precisions, changed, key, message in cases:
        with pytest.raises(EmuError, match=message) as err:
            cascade_levels(precisions, {**defaults, **changed}, "p")
        assert err.value.key == key
        assert "\n" not in str(err.value)
    # an int4 model has a two-level cascade int4 -> int2
    assert cascade_levels(("int4", "int2"), {**defaults, "bits": 2}, "p") == (1, 1)


def test_a_cascade_level_the_model_lacks_is_one_error_line_naming_the_key():
    sc = load_scenario(SCN, ["workload.max_tokens=8", "model.precision=int4", 'policy.miss="fetch-cascade"'])
    with pytest.raises(EmuError) as err:
        run_scenario(sc, "fast")
    assert err.value.key == "policy.miss.bits" and "int4" in err.value.detail and "int2" in err.value.detail
    sc = load_scenario(SCN, ["workload.max_tokens=8", "model.precision=int4",
                             'policy.miss={ name = "drop-priority-cascade", bits = 2 }'])
    run_scenario(sc, "fast")  # int4 -> int2 is stored


# ---- drop-priority-cascade ------------------------------------------------------------------------------------

def test_drop_priority_cascade_drops_low_ranks_and_cascades_the_kept():
    tr = four_experts(MASSES)
    # rank 2 (default): e2, e3 (ranks 2, 3) dropped; kept masses .4 .3: 60th percentile .36, 30th .33 -> e1 int2
    pol, ps, cs, tv = kernel_setup(tr, "miss", "drop-priority-cascade")
    set_layer(cs, 0, [0, 1, 2, 3], mass=MASSES)
    assert [action(pol, ps, cs, tv, i) for i in range(4)] == [
        (MISS_FETCH, 0), (MISS_FETCH, INT2), (MISS_DROP, 0), (MISS_DROP, 0)]
    # rank 3: kept .4 .3 .2: 60th percentile .32, 30th .26 -> e1 int4, e2 int2; e3 dropped
    pol, ps, cs, tv = kernel_setup(tr, "miss", ("drop-priority-cascade", {"rank": 3}))
    set_layer(cs, 0, [0, 1, 2, 3], mass=MASSES)
    assert [action(pol, ps, cs, tv, i) for i in range(4)] == [
        (MISS_FETCH, 0), (MISS_FETCH, INT4), (MISS_FETCH, INT2), (MISS_DROP, 0)]
    # rank 4 drops nothing of a top-4 model: fetch-cascade's levels
    pol, ps, cs, tv = kernel_setup(tr, "miss", ("drop-priority-cascade", {"rank": 4}))
    set_layer(cs, 0, [0, 1, 2, 3], mass=MASSES)
    assert [action(pol, ps, cs, tv, i)[1] for i in range(4)] == [0, 0, INT4, INT2]
    # rank 1 keeps the top-1 alone: it is the heaviest kept, never degraded (plain drop)
    pol, ps, cs, tv = kernel_setup(tr, "miss", ("drop-priority-cascade", {"rank": 1}))
    set_layer(cs, 0, [0, 1, 2, 3], mass=MASSES)
    assert [action(pol, ps, cs, tv, i)[0] for i in range(4)] == [MISS_FETCH, MISS_DROP, MISS_DROP, MISS_DROP]
    assert action(pol, ps, cs, tv, 0)[1] == 0


def test_drop_priority_cascade_ranks_by_score_not_slot_and_per_layer():
    # layer 0 as above; layer 1 routes the same token in the reverse order of scores: e3 rank 0, e2 rank 1
    tr = trace_of([[[[0, 1, 2, 3], [0, 1, 2, 3]]]], scores=[[[MASSES, MASSES[::-1]]]])
    pol, ps, cs, tv = kernel_setup(tr, "miss", "drop-priority-cascade")
    set_layer(cs, 0, [0, 1, 2, 3], mass=MASSES)
    assert [action(pol, ps, cs, tv, i)[0] for i in range(4)] == [MISS_FETCH, MISS_FETCH, MISS_DROP, MISS_DROP]
    set_layer(cs, 1, [0, 1, 2, 3], mass=MASSES[::-1])  # the next layer's ranks and thresholds, not layer 0's
    assert [action(pol, ps, cs, tv, i) for i in range(4)] == [
        (MISS_DROP, 0), (MISS_DROP, 0), (MISS_FETCH, INT2), (MISS_FETCH, 0)]
    # without scores the slot order is the rank
    pol, ps, cs, tv = kernel_setup(trace_of([[[[3, 2, 1, 0]]]]), "miss", "drop-priority-cascade")
    set_layer(cs, 0, [0, 1, 2, 3], mass=[.25] * 4)
    assert [action(pol, ps, cs, tv, i)[0] for i in range(4)] == [MISS_DROP, MISS_DROP, MISS_FETCH, MISS_FETCH]


@pytest.mark.parametrize("engine", ["fast", "des"])
def test_drop_priority_cascade_books_dropped_and_degraded_mass(engine):
    r, cs = run(four_experts(MASSES), 4, miss=("drop-priority-cascade", {"rank": 3}), engine=engine)
    assert (r["dropped"], r["degraded"], r["copies"], r["bytes_h2d"]) == (1, 2, 3, 6 + 2 + 1)
    assert r["dropped_mass"] == pytest.approx(.1, abs=1e-3)
    assert r["degraded_mass"] == pytest.approx(.3 + .2, abs=1e-3)
    assert r["quality"]["lost_mass_frac"] == pytest.approx(.1, abs=1e-3)
    assert [int(cs.prec[k]) for k in range(3)] == [0, INT4, INT2] and cs.status[3] == 0


# ---- score-percentile, mass share -----------------------------------------------------------------------------

def prefetch_set(policy, ps, cs, tv, p: int, layer: int) -> list[int]:
    n = policy.hooks["prefetch"](ps, cs, tv, p, layer, 0.0)
    return [int(k) for k in cs.pf_buf[:n]]


def ten_tokens(layer1: list[int]):
    """One 10-token pass, top-1, 8 experts; layer 0 all e0, layer 1 as given (mass 1 per token)."""
    return trace_of([[[[0], [e]] for e in layer1]], n_experts=8)


@pytest.mark.parametrize(("percentile", "want"), [
    (80, [8, 9]),  # scores 5 3 1 1 (total 10): 5 < 8, 5 + 3 reaches 8
    (50, [8]),  # 5 reaches 5
    (90, [8, 9, 10]),  # 9 needs e2 too; e2 before e3 (equal scores: the lower id)
    (100, [8, 9, 10, 11]),  # every expert with a score
    (0, []),
])
def test_score_percentile_mass_share_hand_cases(percentile, want):
    tr = ten_tokens([0] * 5 + [1] * 3 + [2, 3])
    spec = ("score-percentile", {"accuracy": 1.0, "mass": 1, "percentile": percentile})
    pol, ps, cs, tv = kernel_setup(tr, "prefetch", spec)
    assert prefetch_set(pol, ps, cs, tv, 0, 0) == want


def test_score_percentile_mass_share_adapts_the_count_to_the_distribution():
    # 80% of a peaked layer (9 of 10 tokens on e0) is one expert; of a flat one (2 tokens each on e0..e4), four.
    # The experts' percentile (mass 0) reads the 8 scores' 80th percentile: .6 in the peaked layer (e0 and e1
    # are above it), 2 in the flat one (no expert is above it: nothing is fetched)
    peaked, flat = ten_tokens([0] * 9 + [1]), ten_tokens([0, 0, 1, 1, 2, 2, 3, 3, 4, 4])
    got = {}
    for name, tr in (("peaked", peaked), ("flat", flat)):
        for mass in (0, 1):
            pol, ps, cs, tv = kernel_setup(tr, "prefetch", ("score-percentile", {"accuracy": 1.0, "mass": mass}))
            got[name, mass] = prefetch_set(pol, ps, cs, tv, 0, 0)
    assert got["peaked", 1] == [8] and got["flat", 1] == [8, 9, 10, 11]
    assert got["peaked", 0] == [8, 9] and got["flat", 0] == []


def test_score_percentile_default_is_unchanged():
    tr = ten_tokens([0] * 5 + [1] * 3 + [2, 3])
    for spec in (("score-percentile", {"accuracy": 1.0}), ("score-percentile", {"accuracy": 1.0, "mass": 0})):
        pol, ps, cs, tv = kernel_setup(tr, "prefetch", spec)
        assert prefetch_set(pol, ps, cs, tv, 0, 0) == [8, 9]  # scores above the 80th percentile, 2.2


# ---- both engines agree ---------------------------------------------------------------------------------------

VALID_CASCADES = st.fixed_dictionaries({
    "bits": st.sampled_from([4.0, 8.0]), "lowest_bits": st.sampled_from([2.0, 4.0]),
    "percentile": st.sampled_from([0.0, 35.5, 60.0, 100.0]), "lowest_percentile": st.sampled_from([0.0, 30.0]),
})


def _with(s: Any, kind: str, name: str, params: dict[str, float]) -> Any:
    """Scenario `s` with policy `kind` replaced by `name` and `params` (the others drawn as usual)."""
    stack = tuple((k, name, tuple(sorted(params.items()))) if k == kind else (k, n, p) for k, n, p in s.stack)
    return attrs.evolve(s, stack=stack)


@pytest.mark.parametrize("name", ["fetch-cascade", "drop-priority-cascade"])
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_engines_agree_on_valid_cascades(name: str, data: Any) -> None:
    params = data.draw(VALID_CASCADES, label="cascade")
    params["lowest_percentile"] = min(params["lowest_percentile"], params["percentile"])
    if name == "drop-priority-cascade":
        params["rank"] = float(data.draw(st.integers(1, 3), label="rank"))
    s = _with(data.draw(scenarios(fixed=("miss", name)), label="scenario"), "miss", name, params)
    assert_same(s)  # fast and SimPy (des)
    assert_agree(s)  # fast and the reference engine


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_engines_agree_on_score_percentile_mass_share(data: Any) -> None:
    params = {"mass": 1.0, "accuracy": data.draw(st.sampled_from([0.5, 0.85, 1.0]), label="accuracy"),
              "percentile": data.draw(st.sampled_from([0.0, 50.0, 80.0, 99.9, 100.0]), label="percentile")}
    s = _with(data.draw(scenarios(fixed=("prefetch", "score-percentile")), label="scenario"), "prefetch",
              "score-percentile", params)
    assert_same(s)
    assert_agree(s)


def test_a_cascade_run_is_identical_on_both_engines_end_to_end():
    passes = [[[[p % 4, (p + 1) % 4], [(p + 2) % 4, p % 4]]] for p in range(12)]
    scores = [[[[.7, .3], [.55, .45]]]] * 12
    tr = trace_of(passes, scores=scores)
    for miss in ("fetch-cascade", ("drop-priority-cascade", {"rank": 1})):
        fast, _ = run(tr, 3, miss=miss, engine="fast")
        des, _ = run(tr, 3, miss=miss, engine="des")
        for rec in (fast, des):
            rec.pop("engine")
            rec.pop("timings")
        assert _close(fast, des)
        assert fast["misses"] > 0 and (fast["degraded"] > 0 or fast["dropped"] > 0)


def _close(a: Any, b: Any) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b))
    if isinstance(a, float) or isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    return a == b
