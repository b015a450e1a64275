"""Miss policies: the action for a miss is known from the entry's mass, rank, the resident set or the
timing; end-to-end runs check the quality accounting (dropped / substituted / degraded mass)."""

from __future__ import annotations

import pytest

from emu.errors import EmuError
from emu.kernel.hooks import MISS_CPU, MISS_DROP, MISS_FETCH, MISS_SUBSTITUTE
from emu.kernel.layout import IN_FLIGHT, ON_CPU, RESIDENT
from emu.policies.miss.fetch_priority import degraded_index

from .policy_support import cpu_profile, kernel_setup, run, set_layer, trace_of

# tiny model precisions: bf16 (6 B), fp16, fp8, int8 (3 B), int4 (2 B), int2 (1 B)
INT8, INT4, INT2 = 3, 4, 5


def action(policy, ps, cs, tv, i: int) -> tuple[int, int]:
    a = int(policy.hooks["on_miss"](ps, cs, tv, i, 0.0))
    return a & 15, a >> 4


def one_token(experts: list[int], scores: list[float] | None = None):
    return trace_of([[[experts]]], scores=None if scores is None else [[[scores]]])


def test_fetch_lowest_bit_fetches_int2():
    pol, ps, cs, tv = kernel_setup(one_token([0, 1]), "miss", "fetch-lowest-bit")
    set_layer(cs, 0, [0, 1])
    assert action(pol, ps, cs, tv, 0) == (MISS_FETCH, INT2)
    r, _ = run(one_token([0, 1]), 2, miss="fetch-lowest-bit")
    assert (r["degraded"], r["bytes_h2d"]) == (2, 2)  # two 1-byte int2 copies


def test_fetch_priority_degrades_below_the_percentile():
    tr = one_token([0, 1], [.8, .2])
    pol, ps, cs, tv = kernel_setup(tr, "miss", "fetch-priority")
    set_layer(cs, 0, [0, 1], mass=[.8, .2])
    # median of {.8, .2} is .5: e1 (.2) is degraded to int4, e0 keeps full precision
    assert action(pol, ps, cs, tv, 0) == (MISS_FETCH, 0)
    assert action(pol, ps, cs, tv, 1) == (MISS_FETCH, INT4)
    pol, ps, cs, tv = kernel_setup(tr, "miss", ("fetch-priority", {"bits": 8}))
    set_layer(cs, 0, [0, 1], mass=[.8, .2])
    assert action(pol, ps, cs, tv, 1) == (MISS_FETCH, INT8)


def test_degraded_index_falls_back_to_the_nearest_precision():
    assert degraded_index(("bf16", "fp16", "fp8", "int8", "int4", "int2"), 4) == 4
    assert degraded_index(("int8", "fp8", "int4", "int2"), 8) == 1  # no smaller int8: fp8 has 8 bits
    assert degraded_index(("int4", "int2"), 8) == 0  # nothing smaller with 8 bits: no degradation


def test_fetch_priority_books_degraded_mass():
    tr = trace_of([[[[0, 1]]], [[[2, 3]]]], scores=[[[[.9, .1]]], [[[.7, .3]]]])
    r, _ = run(tr, 4, miss="fetch-priority")
    assert r["degraded"] == 2
    assert r["degraded_mass"] == pytest.approx(.1 + .3, abs=2e-3)  # fp16 scores


def test_drop_by_rank_with_scores_and_slot_order():
    # scores put e0 (.7) at rank 0 although it sits in slot 1
    tr = one_token([3, 0], [.3, .7])
    pol, ps, cs, tv = kernel_setup(tr, "miss", "drop")
    set_layer(cs, 0, [0, 3])
    assert action(pol, ps, cs, tv, 0) == (MISS_FETCH, 0)
    assert action(pol, ps, cs, tv, 1) == (MISS_DROP, 0)
    # without scores the slot order is the rank: e3 (slot 0) is fetched, e0 (slot 1) dropped
    pol, ps, cs, tv = kernel_setup(one_token([3, 0]), "miss", "drop")
    set_layer(cs, 0, [0, 3])
    assert action(pol, ps, cs, tv, 0) == (MISS_DROP, 0)
    assert action(pol, ps, cs, tv, 1) == (MISS_FETCH, 0)
    # rank 2 keeps both ranks of a top-2 model
    pol, ps, cs, tv = kernel_setup(tr, "miss", ("drop", {"rank": 2}))
    set_layer(cs, 0, [0, 3])
    assert action(pol, ps, cs, tv, 1) == (MISS_FETCH, 0)


def test_drop_uses_the_best_rank_over_the_pass_tokens():
    # e3 is rank 1 for token A but rank 0 for token B: it is fetched
    tr = trace_of([[[[0, 3]], [[3, 1]]]], scores=[[[[.6, .4]], [[.9, .1]]]])
    pol, ps, cs, tv = kernel_setup(tr, "miss", "drop")
    set_layer(cs, 0, [0, 1, 3])
    assert [action(pol, ps, cs, tv, i)[0] for i in range(3)] == [MISS_FETCH, MISS_DROP, MISS_FETCH]


def test_drop_books_dropped_mass():
    # 6 passes {e0: .7, e_x: .3} with e_x cycling 1, 2, 3: every rank-1 expert is missing -> dropped.
    passes = [[[[0, 1 + p % 3]]] for p in range(6)]
    tr = trace_of(passes, scores=[[[[.7, .3]]]] * 6)
    r, _ = run(tr, 2, miss="drop")
    assert (r["dropped"], r["hits"], r["misses_compulsory"]) == (6, 5, 1)
    assert r["dropped_mass"] == pytest.approx(6 * .3, abs=3e-3)
    assert r["quality"]["lost_mass_frac"] == pytest.approx(.3, abs=2e-3)


def test_substitute_picks_the_most_used_resident_expert():
    tr = one_token([0, 1], [.8, .2])
    pol, ps, cs, tv = kernel_setup(tr, "miss", "substitute")
    set_layer(cs, 0, [0, 1], mass=[.8, .2])
    assert action(pol, ps, cs, tv, 1) == (MISS_FETCH, 0)  # nothing resident to use
    cs.status[2] = RESIDENT
    cs.status[3] = RESIDENT
    ps.f[0, 3] = 10.0  # e3 has served more tokens than e2
    assert action(pol, ps, cs, tv, 1) == (MISS_SUBSTITUTE, 3)
    assert action(pol, ps, cs, tv, 0) == (MISS_FETCH, 0)  # .8 is above the tolerance .3


def test_substitute_books_substituted_mass():
    # 3 slots. Pass 0 {0: .6, 3: .4}: .4 > .3, both fetched. Pass 1 {0: .8, 1: .2}: e1 is missing and
    # light, e3 is resident and not needed: it runs instead; e1 is never copied.
    tr = trace_of([[[[0, 3]]], [[[0, 1]]]], scores=[[[[.6, .4]]], [[[.8, .2]]]])
    r, cs = run(tr, 3, miss="substitute")
    assert (r["substituted"], r["copies"]) == (1, 2)
    assert r["substituted_mass"] == pytest.approx(.2, abs=1e-3)
    assert cs.status[1] == 0


def test_cpu_runs_light_misses_on_the_cpu():
    # copy 1 s + GPU 0.5 s = 1.5 s. CPU: 0.8 s for 1 token, 4 s for 8 tokens.
    pol, ps, cs, tv = kernel_setup(one_token([0, 1]), "miss", "cpu", profile=cpu_profile((0.8, 4.0)))
    set_layer(cs, 0, [0, 1], tokens=[1, 8])
    assert action(pol, ps, cs, tv, 0) == (MISS_CPU, 0)  # 0.8 < 1.5
    assert action(pol, ps, cs, tv, 1) == (MISS_FETCH, 0)  # 4.0 > 1.5
    set_layer(cs, 0, [0, 1], tokens=[1, 1])
    cs.cur_where[0] = ON_CPU
    assert action(pol, ps, cs, tv, 1) == (MISS_FETCH, 0)  # behind e0 on the CPU: 1.6 > 1.5


def test_cpu_counts_the_copies_queued_ahead():
    # CPU 2.0 s for 1 token. Alone, a miss copies (1 + 0.5 = 1.5 s < 2.0). When this layer's first miss
    # is already queued for a copy, the second one would wait for it: 2 * 1 + 0.5 = 2.5 s > 2.0 -> CPU.
    pol, ps, cs, tv = kernel_setup(one_token([0, 1]), "miss", "cpu", profile=cpu_profile((2.0, 4.0)))
    set_layer(cs, 0, [0, 1])
    assert action(pol, ps, cs, tv, 0) == (MISS_FETCH, 0)
    cs.status[0] = IN_FLIGHT
    assert action(pol, ps, cs, tv, 1) == (MISS_CPU, 0)


def test_cpu_end_to_end_is_faster_than_fetch():
    tr = trace_of([[[[0, 1], [2, 3]]], [[[1, 2], [0, 3]]]])
    fetch, _ = run(tr, 2, profile=cpu_profile((0.1, 4.0)))
    cpu, _ = run(tr, 2, profile=cpu_profile((0.1, 4.0)), miss="cpu")
    assert cpu["cpu_runs"] == cpu["misses"] > 0 and cpu["copies"] == 0
    assert cpu["e2e_s"] < fetch["e2e_s"]


def test_cpu_without_cpu_timing_is_a_clear_error():
    with pytest.raises(EmuError, match="CPU expert timing") as err:
        run(one_token([0, 1]), 2, miss="cpu")
    assert err.value.key == "policy.miss"
