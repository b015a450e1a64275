"""FLD keeps one recency list per layer and walks the layers from the farthest: its victims must be exactly
the definition's, the evictable key of the largest layer distance, then the least recent access, then the
lower key, for both distances (cyclic and absolute).

The kernel is driven by hand through random events on five layers of six experts, with the cache-state changes
the core makes around each (statuses, protection, layer floors, the same-layer cap, the current layer), and every
victim is checked against the definition computed in Python. The clock is sometimes left unchanged between
events, so that two keys share a last access and the lower key must go first.
"""

from __future__ import annotations

import random

import pytest

from emu.kernel.hooks import EV_ACCESS, EV_EVICT, EV_INSERT
from emu.kernel.layout import ABSENT, IN_FLIGHT, RESIDENT, SC

from .policy_support import kernel_setup, trace_of

LAYERS, EXPERTS = 5, 6


def _evictable(cs, key: int, in_layer: int) -> bool:
    if cs.status[key] != RESIDENT or cs.protect[key] > 0:
        return False
    layer = key // EXPERTS
    if cs.sc[SC.SAME_LAYER] == 1 and layer != in_layer:
        return False
    return not (layer != in_layer and cs.layer_count[layer] - 1 < cs.layer_floor[layer])


@pytest.mark.parametrize("absolute", [0, 1])
@pytest.mark.parametrize("seed", range(6))
def test_victims_are_the_definitions(absolute, seed):
    trace = trace_of([[[[0]] * LAYERS]], n_experts=EXPERTS)
    pol, ps, cs, tv = kernel_setup(trace, "eviction", ("fld", {"absolute": absolute}))
    on_event, victim = pol.hooks["on_event"], pol.hooks["victim"]
    rng = random.Random(seed)
    members: set[int] = set()
    last: dict[int, int] = {}
    walks = 0

    def event(ev: int, key: int) -> None:
        if rng.random() < 0.5:  # the core moves the clock before each access and insert; here not always
            cs.sc[SC.CLOCK] += 1
        on_event(ps, cs, tv, ev, key, 0.0)
        last[key] = int(cs.sc[SC.CLOCK])

    def distance(key: int) -> int:
        cur = int(cs.sc[SC.LAYER])
        return abs(key // EXPERTS - cur) if absolute else (key // EXPERTS - cur) % LAYERS

    for _ in range(3000):
        key = rng.randrange(LAYERS * EXPERTS)
        op = rng.random()
        if op < 0.25 and cs.status[key] == ABSENT:  # a copy takes a slot
            cs.status[key] = IN_FLIGHT
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
            expected = min(candidates, key=lambda k: (-distance(k), last[k], k), default=-1)
            got = int(victim(ps, cs, tv, key, 0.0))
            assert got == expected
            walks += 1
            if got >= 0:
                cs.status[got] = ABSENT
                cs.layer_count[got // EXPERTS] -= 1
                on_event(ps, cs, tv, EV_EVICT, got, 0.0)
                members.discard(got)
    assert walks > 400
