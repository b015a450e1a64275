"""Eviction kernels whose victim search is faster than a plain scan must still choose the definition's victim.

- FLD keeps one recency list per layer and walks the layers from the farthest: the evictable key of the largest
  layer distance, then the least recent access, then the lower key, for both distances (cyclic and absolute).
- LFU ranks each resident key before reading its evictability: the evictable key with the fewest counted
  accesses (an access, or a demand insert), then the least recent, then the lower key.

Each kernel is driven by hand through random events on five layers of six experts, with the cache-state changes
the core makes around each (statuses, protection, layer floors, the same-layer cap, the current layer), and every
victim is checked against the definition computed in Python. The clock is sometimes left unchanged between
events, so that two keys share a last access and the lower key must go first.
"""

from __future__ import annotations

import random

import pytest

from emu.kernel.hooks import EV_ACCESS, EV_EVICT, EV_INSERT
from emu.kernel.layout import ABSENT, DEMAND, IN_FLIGHT, PREFETCH, RESIDENT, SC

from .policy_support import kernel_setup, trace_of

LAYERS, EXPERTS = 5, 6


def _evictable(cs, key: int, in_layer: int) -> bool:
    if cs.status[key] != RESIDENT or cs.protect[key] > 0:
        return False
    layer = key // EXPERTS
    if cs.sc[SC.SAME_LAYER] == 1 and layer != in_layer:
        return False
    return not (layer != in_layer and cs.layer_count[layer] - 1 < cs.layer_floor[layer])


def _drive(spec, seed: int, rank) -> int:
    """Random events on the kernel `spec`; every victim against min(evictable members, key=rank(...))."""
    trace = trace_of([[[[0]] * LAYERS]], n_experts=EXPERTS)
    pol, ps, cs, tv = kernel_setup(trace, "eviction", spec)
    on_event, victim = pol.hooks["on_event"], pol.hooks["victim"]
    rng = random.Random(seed)
    members: set[int] = set()
    last: dict[int, int] = {}
    count: dict[int, int] = {}
    walks = 0

    def event(ev: int, key: int) -> None:
        if rng.random() < 0.5:  # the core moves the clock before each access and insert; here not always
            cs.sc[SC.CLOCK] += 1
        on_event(ps, cs, tv, ev, key, 0.0)
        last[key] = int(cs.sc[SC.CLOCK])
        counted = ev == EV_ACCESS or cs.copy_prio[key] == DEMAND
        count[key] = count.get(key, 0) + counted

    for _ in range(3000):
        key = rng.randrange(LAYERS * EXPERTS)
        op = rng.random()
        if op < 0.25 and cs.status[key] == ABSENT:  # a copy takes a slot
            cs.status[key] = IN_FLIGHT
            cs.copy_prio[key] = rng.choice((DEMAND, PREFETCH))
            cs.layer_count[key // EXPERTS] += 1
            event(EV_INSERT, key)
            members.add(key)
        elif op < 0.40 and cs.status[key] == IN_FLIGHT:  # it lands
            cs.status[key] = RESIDENT
        elif op < 0.55 and key in members:  # an access, protecting it or not
            cs.protect[key] += rng.randrange(2)
            event(EV_ACCESS, key)
        elif op < 0.62 and cs.protect[key] > 0:
            cs.protect[key] -= 1
        elif op < 0.66:
            cs.layer_floor[rng.randrange(LAYERS)] = rng.randrange(3)
        elif op < 0.69:
            cs.sc[SC.SAME_LAYER] = rng.randrange(2)
        elif op < 0.75:
            cs.sc[SC.LAYER] = rng.randrange(LAYERS)
        else:  # a victim for a copy into `key`'s layer
            in_layer = key // EXPERTS
            candidates = [k for k in members if _evictable(cs, k, in_layer)]
            expected = min(candidates, key=lambda k: rank(cs, k, last, count), default=-1)
            got = int(victim(ps, cs, tv, key, 0.0))
            assert got == expected
            walks += 1
            if got >= 0:
                cs.status[got] = ABSENT
                cs.layer_count[got // EXPERTS] -= 1
                on_event(ps, cs, tv, EV_EVICT, got, 0.0)
                members.discard(got)
    return walks


@pytest.mark.parametrize("absolute", [0, 1])
@pytest.mark.parametrize("seed", range(6))
def test_fld_victims_are_the_definitions(absolute, seed):
    def rank(cs, key, last, count):
        cur = int(cs.sc[SC.LAYER])
        distance = abs(key // EXPERTS - cur) if absolute else (key // EXPERTS - cur) % LAYERS
        return (-distance, last[key], key)

    assert _drive(("fld", {"absolute": absolute}), seed, rank) > 400


@pytest.mark.parametrize("seed", range(6))
def test_lfu_victims_are_the_definitions(seed):
    assert _drive("lfu", seed, lambda cs, key, last, count: (count[key], last[key], key)) > 400
