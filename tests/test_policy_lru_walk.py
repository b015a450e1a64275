"""LRU's victim walk remembers the run of in-flight keys it skipped from the head while no copy lands
(`SC.LANDED`): its victims must still be exactly the plain definition's, the first evictable key in recency order.

The kernel is driven by hand through random events on three layers of eight experts, with the cache-state
changes the core makes around each (a landing counts in `SC.LANDED`; protection, layer floors and the
same-layer cap change freely), and every victim is checked against a list kept in Python.
"""

from __future__ import annotations

import random

import pytest

from emu.engines.fast.engine import run_fast
from emu.engines.reference.engine import run_reference
from emu.engines.setup import make_inputs
from emu.kernel.hooks import EV_ACCESS, EV_EVICT, EV_INSERT
from emu.kernel.layout import ABSENT, IN_FLIGHT, RESIDENT, SC, ST

from .conftest import hand_profile, tiny_model
from .policy_support import kernel_setup, stack, trace_of

LAYERS, EXPERTS = 3, 8


def _plain_evictable(cs, key: int, in_layer: int) -> bool:
    if cs.status[key] != RESIDENT or cs.protect[key] > 0:
        return False
    layer = key // EXPERTS
    if cs.sc[SC.SAME_LAYER] == 1 and layer != in_layer:
        return False
    return not (layer != in_layer and cs.layer_count[layer] - 1 < cs.layer_floor[layer])


@pytest.mark.parametrize("seed", range(6))
def test_victims_are_the_first_evictable_keys_in_recency_order(seed):
    trace = trace_of([[[[0]] * LAYERS]], n_experts=EXPERTS)
    pol, ps, cs, tv = kernel_setup(trace, "eviction", "lru")
    on_event, victim = pol.hooks["on_event"], pol.hooks["victim"]
    rng = random.Random(seed)
    order: list[int] = []  # least recent first
    walks = 0

    def event(ev: int, key: int) -> None:
        on_event(ps, cs, tv, ev, key, 0.0)

    for _ in range(4000):
        key = rng.randrange(LAYERS * EXPERTS)
        op = rng.random()
        if op < 0.25 and cs.status[key] == ABSENT:  # a copy takes a slot
            cs.status[key] = IN_FLIGHT
            cs.layer_count[key // EXPERTS] += 1
            event(EV_INSERT, key)
            order.append(key)
        elif op < 0.45 and cs.status[key] == IN_FLIGHT:  # it lands
            cs.status[key] = RESIDENT
            cs.sc[SC.LANDED] += 1
        elif op < 0.55 and key in order:  # an access protects it
            cs.protect[key] += 1
            event(EV_ACCESS, key)
            order.remove(key)
            order.append(key)
        elif op < 0.65 and cs.protect[key] > 0:  # its entry is done
            cs.protect[key] -= 1
        elif op < 0.70 and key in order:  # a hit without protection (a prefetch's pick, a substitute)
            event(EV_ACCESS, key)
            order.remove(key)
            order.append(key)
        elif op < 0.73:
            cs.layer_floor[rng.randrange(LAYERS)] = rng.randrange(3)
        elif op < 0.76:
            cs.sc[SC.SAME_LAYER] = rng.randrange(2)
        else:  # a victim for a copy into `key`'s layer
            in_layer = key // EXPERTS
            expected = next((k for k in order if _plain_evictable(cs, k, in_layer)), -1)
            got = int(victim(ps, cs, tv, key, 0.0))
            assert got == expected
            walks += 1
            if got >= 0:
                cs.status[got] = ABSENT
                cs.layer_count[got // EXPERTS] -= 1
                event(EV_EVICT, got)
                order.remove(got)
    assert walks > 500


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
def test_the_core_counts_every_landing(engine):
    # Every copy lands by the end, so SC.LANDED ends at the copies issued; a landing not counted would let
    # LRU's walk skip a key that became evictable.
    # (The SimPy engine runs the fast engine's core; the reference engine times the same decisions itself.)
    passes = [[[[0, 1]], [[2, 3]]], [[[1, 2]], [[0, 3]]], [[[3, 0]], [[1, 2]]], [[[0, 2]], [[3, 1]]]]
    trace = trace_of(passes, n_experts=4)
    model = tiny_model(trace.n_layers, trace.n_experts, trace.top_k)
    inputs = make_inputs(model, hand_profile(), trace, 3 * model.expert_bytes(), stack(prefetch="next-layer"))
    cs, _end, _timings = engine(inputs)
    copies = int(cs.stats_i[ST.COPIES].sum())
    assert copies > 0
    assert cs.sc[SC.LANDED] == copies
