"""The counts that let a victim walk skip what it skipped before: LRU trusts `SC.LANDED` between two victims,
and the core counts every landing (`SC.LANDED`) and every released entry (`SC.RELEASED`) on both time models.
LRU's victims against the definition under random events: tests/test_policy_victim_definitions.py.
"""

from __future__ import annotations

import pytest

from emu.engines.fast.engine import run_fast
from emu.engines.reference.engine import run_reference
from emu.engines.setup import make_inputs
from emu.kernel.hooks import EV_EVICT, EV_INSERT
from emu.kernel.layout import ABSENT, IN_FLIGHT, RESIDENT, SC, ST

from .conftest import hand_profile, tiny_model
from .policy_support import kernel_setup, stack, trace_of

EXPERTS = 8


def test_the_walk_trusts_landed_between_two_victims():
    # A, B in flight, C resident: the victim is C and the walk remembers A and B. B lands; told through
    # SC.LANDED, the next victim is B; untold, the walk would still skip it.
    trace = trace_of([[[[0]]]], n_experts=EXPERTS)
    for told in (True, False):
        pol, ps, cs, tv = kernel_setup(trace, "eviction", "lru")
        on_event, victim = pol.hooks["on_event"], pol.hooks["victim"]
        a, b, c, d = 0, 1, 2, 3
        for k in (a, b, c):
            cs.status[k] = IN_FLIGHT
            on_event(ps, cs, tv, EV_INSERT, k, 0.0)
        cs.status[c] = RESIDENT
        assert victim(ps, cs, tv, d, 0.0) == c
        cs.status[c] = ABSENT
        on_event(ps, cs, tv, EV_EVICT, c, 0.0)
        cs.status[b] = RESIDENT
        if told:
            cs.sc[SC.LANDED] += 1
        assert victim(ps, cs, tv, d, 0.0) == (b if told else -1)


@pytest.mark.parametrize("engine", [run_fast, run_reference])
def test_the_core_counts_every_landing_and_every_released_entry(engine):
    # Every copy lands by the end and every access runs on the GPU (fetch on miss), so SC.LANDED ends at the
    # copies issued and SC.RELEASED at the accesses; a count missed would let a walk (LRU's) or a search
    # (Belady's) pass over a key that became evictable.
    # (The SimPy engine runs the fast engine's core; the reference engine times the same decisions itself.)
    passes = [[[[0, 1]], [[2, 3]]], [[[1, 2]], [[0, 3]]], [[[3, 0]], [[1, 2]]], [[[0, 2]], [[3, 1]]]]
    trace = trace_of(passes, n_experts=4)
    model = tiny_model(trace.n_layers, trace.n_experts, trace.top_k)
    inputs = make_inputs(model, hand_profile(), trace, 3 * model.expert_bytes(), stack(prefetch="next-layer"))
    cs, _end, _timings = engine(inputs)
    copies, accesses = int(cs.stats_i[ST.COPIES].sum()), int(cs.stats_i[ST.ACCESSES].sum())
    assert copies > 0
    assert cs.sc[SC.LANDED] == copies and cs.sc[SC.RELEASED] == accesses
