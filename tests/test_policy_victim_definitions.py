"""Eviction kernels whose victim search is faster than a plain scan must still choose the definition's victim.

- Random (without floors or a same-layer cap) marks the refused members by place instead of counting the
  evictable ones: the same draw, the r-th evictable member in the resident set's order.
- LRU remembers the run of in-flight keys its walk skipped from the head while no copy lands (`SC.LANDED`): the
  first evictable key in recency order (of the last access or insert).
- FLD keeps one recency list per layer and walks the layers from the farthest: the evictable key of the largest
  layer distance, then the least recent access, then the lower key, for both distances (cyclic and absolute).
- LFU and score (without decay) keep a heap of the resident keys, the refused ones met on top kept aside: the
  evictable key with the fewest counted accesses (an access, or a demand insert) or the least routing mass, then the
  least recent, then the lower key.
- Belady keeps the keys it set aside between victims until their copy lands (the log of landings), they are
  released or the pass moves on: the evictable key of the farthest next use, and the same victims where the log
  has been overwritten (a scan instead).
- ARC and S3-FIFO (as LRU) start their walks after the run of in-flight keys an earlier walk met while no copy
  lands: against an instance told of a landing before every victim, which walks from the oldest key each time.

Each kernel is driven by hand through random events on five layers of six experts, with the cache-state changes
the core makes around each (statuses, protection, layer floors, the same-layer cap, the current layer), and every
victim is checked against the definition computed in Python. The clock is sometimes left unchanged between
events, so that two keys share a last access and the lower key must go first.
"""

from __future__ import annotations

import itertools
import random

import pytest

from emu.engines.decisions import land
from emu.kernel.helpers import is_kept, kept_in_flight, kept_protected, rand_below
from emu.kernel.hooks import EV_ACCESS, EV_EVICT, EV_INSERT, EV_MISS
from emu.kernel.layout import ABSENT, DEMAND, IN_FLIGHT, LANDED_LOG, PREFETCH, RESIDENT, SC
from emu.policies.eviction import arc, belady, lru, s3_fifo
from emu.policies.eviction import seeded_random as random_policy

from .policy_support import kernel_setup, trace_of

LAYERS, EXPERTS = 5, 6


def _evictable(cs, key: int, in_layer: int) -> bool:
    if cs.status[key] != RESIDENT or cs.protect[key] > 0:
        return False
    layer = key // EXPERTS
    if cs.sc[SC.SAME_LAYER] == 1 and layer != in_layer:
        return False
    return not (layer != in_layer and cs.layer_count[layer] - 1 < cs.layer_floor[layer])


def _drive(spec, seed: int, rank, masses: bool = False) -> int:
    """Random events on the kernel `spec`; every victim against min(evictable members, key=rank(...)). `masses`:
    each access and insert comes with a routing mass, as the layer computing carries it (`cs.cur_mass`), and
    `count` sums the counted ones (the score policy's score) instead of counting them."""
    trace = trace_of([[[[0]] * LAYERS]], n_experts=EXPERTS)
    pol, ps, cs, tv = kernel_setup(trace, "eviction", spec)
    on_event, victim = pol.hooks["on_event"], pol.hooks["victim"]
    rng = random.Random(seed)
    members: set[int] = set()
    last: dict[int, int] = {}
    count: dict[int, float] = {}
    order: dict[int, int] = {}
    events = itertools.count()
    walks = 0

    def event(ev: int, key: int) -> None:
        if rng.random() < 0.5:  # the core moves the clock before each access and insert; here not always
            cs.sc[SC.CLOCK] += 1
        weight = 1.0
        if masses:  # the key is the layer's one entry; a mass of a few distinct values, so that scores tie
            weight = rng.choice((0.0, 0.25, 0.5, 1.0))
            cs.sc[SC.LAYER], cs.sc[SC.NCUR] = key // EXPERTS, 1
            cs.cur_key[0], cs.cur_sub[0], cs.cur_mass[0] = key, -1, weight
        on_event(ps, cs, tv, ev, key, 0.0)
        last[key] = int(cs.sc[SC.CLOCK])
        order[key] = next(events)  # the event's place in the sequence
        counted = ev == EV_ACCESS or cs.copy_prio[key] == DEMAND
        count[key] = count.get(key, 0) + counted * weight

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
            land(cs, key, 0.0)
        elif op < 0.55 and key in members:  # an access, protecting it or not
            cs.protect[key] += rng.randrange(2)
            event(EV_ACCESS, key)
        elif op < 0.62 and cs.protect[key] > 0:
            cs.protect[key] -= 1
            cs.sc[SC.RELEASED] += 1
        elif op < 0.66:
            cs.layer_floor[rng.randrange(LAYERS)] = rng.randrange(3)
        elif op < 0.69:
            cs.sc[SC.SAME_LAYER] = rng.randrange(2)
        elif op < 0.75:
            cs.sc[SC.LAYER] = rng.randrange(LAYERS)
        else:  # a victim for a copy into `key`'s layer
            in_layer = key // EXPERTS
            candidates = [k for k in members if _evictable(cs, k, in_layer)]
            expected = min(candidates, key=lambda k: rank(cs, k, last, count, order), default=-1)
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
    def rank(cs, key, last, count, order):
        cur = int(cs.sc[SC.LAYER])
        distance = abs(key // EXPERTS - cur) if absolute else (key // EXPERTS - cur) % LAYERS
        return (-distance, last[key], key)

    assert _drive(("fld", {"absolute": absolute}), seed, rank) > 400


@pytest.mark.parametrize("seed", range(6))
def test_lfu_victims_are_the_definitions(seed):
    assert _drive("lfu", seed, lambda cs, key, last, count, order: (count[key], last[key], key)) > 400


@pytest.mark.parametrize("seed", range(6))
def test_score_victims_are_the_definitions(seed):
    # without decay: the evictable key of the lowest accumulated mass, then the least recent, then the lower key
    assert _drive("score", seed, lambda cs, key, last, count, order: (count[key], last[key], key), masses=True) > 400


@pytest.mark.parametrize("seed", range(6))
def test_random_victims_are_the_definitions(seed):
    # The r-th evictable member in the resident set's order, r drawn below their count from the policy's own
    # generator. Protection comes as the core gives it: the layer computing's entries (`cs.cur_key`, a substitute in
    # `cs.cur_sub`), released one by one before the next gate; without floors or a same-layer cap the policy marks
    # the refused members (in flight, protected) instead of counting the evictable ones.
    rng = random.Random(seed)
    pol, ps, cs, tv = kernel_setup(trace_of([[[[0]] * LAYERS]], n_experts=EXPERTS), "eviction", "random")
    on_event, victim = pol.hooks["on_event"], pol.hooks["victim"]
    members: set[int] = set()
    live: list[int] = []  # the current layer's entries not yet released
    walks = fast = 0
    for _ in range(4000):
        key = rng.randrange(LAYERS * EXPERTS)
        op = rng.random()
        if op < 0.25 and cs.status[key] == ABSENT:
            _state_step(on_event, ps, cs, tv, "insert", key, rng.choice((DEMAND, PREFETCH)))
            members.add(key)
        elif op < 0.38 and cs.status[key] == IN_FLIGHT:
            _state_step(on_event, ps, cs, tv, "land", key, 0)
        elif op < 0.45 and not live:  # a gate: up to three of a layer's experts, protected
            layer = rng.randrange(LAYERS)
            keys = rng.sample(range(layer * EXPERTS, (layer + 1) * EXPERTS), rng.randrange(1, 4))
            cs.sc[SC.NCUR] = len(keys)
            for e, k in enumerate(keys):
                cs.cur_key[e], cs.cur_sub[e] = k, -1
                cs.protect[k] += 1
            live = list(range(len(keys)))
        elif op < 0.50 and live:  # an entry computes on a substitute instead (a resident member)
            e = rng.choice(live)
            subs = [k for k in members if cs.status[k] == RESIDENT]
            if cs.cur_sub[e] < 0 and subs:
                sub = rng.choice(subs)
                cs.cur_sub[e] = sub
                cs.protect[sub] += 1
                cs.protect[cs.cur_key[e]] -= 1
        elif op < 0.60 and live:  # an entry is done with its key
            e = live.pop(rng.randrange(len(live)))
            cs.protect[cs.cur_sub[e] if cs.cur_sub[e] >= 0 else cs.cur_key[e]] -= 1
            cs.sc[SC.RELEASED] += 1
        elif op < 0.63:
            cs.layer_floor[rng.randrange(LAYERS)] = rng.choice((0, 0, 0, 1))
        elif op < 0.65:
            cs.sc[SC.SAME_LAYER] = rng.choice((0, 0, 1))
        else:
            in_layer = key // EXPERTS
            order = [int(k) for k in ps.i[random_policy.I.MEMBERS][:len(members)]]
            candidates = [k for k in order if _evictable(cs, k, in_layer)]
            state = ps.i[random_policy.I.SCALARS].copy()
            expected = candidates[rand_below(state, random_policy.C.RNG, len(candidates))] if candidates else -1
            fast += cs.sc[SC.SAME_LAYER] == 0 and not cs.layer_floor.any()
            got = int(victim(ps, cs, tv, key, 0.0))
            assert got == expected
            walks += 1
            if got >= 0:
                _state_step(on_event, ps, cs, tv, "evict", got, 0)
                members.discard(got)
    assert walks > 800 and fast > 200


@pytest.mark.parametrize("seed", range(6))
def test_lru_victims_are_the_definitions(seed):
    assert _drive("lru", seed, lambda cs, key, last, count, order: order[key]) > 400


def _state_step(on_event, ps, cs, tv, op: str, key: int, value: int, miss_event: bool = False) -> None:
    """One change of the cache state, as the core makes it, on one kernel instance (an insert's `value`: its copy's
    priority; `miss_event`: the miss is told first, EV_MISS, as to a policy that declares miss events)."""
    if op == "insert":
        if miss_event:
            on_event(ps, cs, tv, EV_MISS, key, 0.0)
        cs.status[key] = IN_FLIGHT
        cs.copy_prio[key] = value
        cs.layer_count[key // EXPERTS] += 1
        cs.sc[SC.CLOCK] += 1
        on_event(ps, cs, tv, EV_INSERT, key, 0.0)
    elif op == "land":
        land(cs, key, 0.0)
    elif op == "access":
        cs.protect[key] += value
        cs.sc[SC.CLOCK] += 1
        on_event(ps, cs, tv, EV_ACCESS, key, 0.0)
    elif op == "release":
        cs.protect[key] -= 1
        cs.sc[SC.RELEASED] += 1
    elif op == "move":
        cs.sc[SC.PASS], cs.sc[SC.LAYER] = divmod(value, LAYERS)
    elif op == "floor":
        cs.layer_floor[key // EXPERTS] = value
    elif op == "evict":
        cs.status[key] = ABSENT
        cs.layer_count[key // EXPERTS] -= 1
        on_event(ps, cs, tv, EV_EVICT, key, 0.0)


@pytest.mark.parametrize("seed", range(6))
def test_belady_victims_are_the_farthest_next_use(seed):
    # Belady keeps the keys it set aside for being in flight or protected until their copy lands (told by the log
    # of landings), they are released or the pass moves on; every victim must still be the evictable member whose
    # next use is farthest, the lower key first. Random events on a random trace of 12 passes, as the core makes
    # them: the forward pass only moves on, and when it reaches a layer every member that layer's pass routes to is
    # accessed (a hit, on time or late).
    rng = random.Random(seed)
    n_passes = 12
    passes = [[[rng.sample(range(EXPERTS), 2) for _ in range(LAYERS)]] for _ in range(n_passes)]
    uses: dict[int, list[int]] = {}
    for p, (token,) in enumerate(passes):
        for layer, experts in enumerate(token):
            for e in experts:
                uses.setdefault(layer * EXPERTS + e, []).append(p * LAYERS + layer)
    pol, ps, cs, tv = kernel_setup(trace_of(passes, n_experts=EXPERTS), "eviction", "belady")
    on_event, victim = pol.hooks["on_event"], pol.hooks["victim"]
    members: set[int] = set()
    position = walks = kept_any = 0

    def next_use(k: int) -> int:
        return next((u for u in uses.get(k, ()) if u > position), 10**9)

    for _ in range(3000):
        key = rng.randrange(LAYERS * EXPERTS)
        op = rng.random()
        if op < 0.2 and cs.status[key] == ABSENT:
            _state_step(on_event, ps, cs, tv, "insert", key, 0)
            members.add(key)
        elif op < 0.3 and cs.status[key] == IN_FLIGHT:
            _state_step(on_event, ps, cs, tv, "land", key, 0)
        elif op < 0.37 and cs.protect[key] > 0:
            _state_step(on_event, ps, cs, tv, "release", key, 0)
        elif op < 0.45 and position < n_passes * LAYERS - 1:
            position += 1
            _state_step(on_event, ps, cs, tv, "move", key, position)
            for k in sorted(members):  # the layer's gate: its routed members are accessed, some protected
                if position in uses.get(k, ()):
                    _state_step(on_event, ps, cs, tv, "access", k, rng.randrange(2))
        elif op < 0.48:
            _state_step(on_event, ps, cs, tv, "floor", key, rng.randrange(3))
        else:
            candidates = [k for k in members if _evictable(cs, k, key // EXPERTS)]
            expected = max(candidates, key=lambda k: (next_use(k), -k), default=-1)
            got = int(victim(ps, cs, tv, key, 0.0))
            assert got == expected
            walks += 1
            kept = belady._kept(ps)
            kept_any += kept_in_flight(kept) + kept_protected(kept) > 0
            if got >= 0:
                _state_step(on_event, ps, cs, tv, "evict", got, 0)
                members.discard(got)
    assert walks > 800 and kept_any > 100


@pytest.mark.parametrize("seed", range(6))
def test_belady_finds_landed_keys_with_or_without_the_log(seed):
    # Two instances see the same events; before each victim the second has more landings counted than the log
    # holds, so it scans the keys it kept for being in flight instead of reading the log: the same victims.
    rng = random.Random(seed)
    n_passes = 12
    passes = [[[rng.sample(range(EXPERTS), 2) for _ in range(LAYERS)]] for _ in range(n_passes)]
    trace = trace_of(passes, n_experts=EXPERTS)
    pol, *kept = kernel_setup(trace, "eviction", "belady")
    _, *scans = kernel_setup(trace, "eviction", "belady")
    on_event, victim = pol.hooks["on_event"], pol.hooks["victim"]
    cs = kept[1]
    members: set[int] = set()
    position = walks = landed_kept = 0
    for _ in range(3000):
        key = rng.randrange(LAYERS * EXPERTS)
        op = rng.random()
        step = None
        if op < 0.2 and cs.status[key] == ABSENT:
            step, value = "insert", 0
            members.add(key)
        elif op < 0.3 and cs.status[key] == IN_FLIGHT:
            step, value = "land", 0
            landed_kept += is_kept(belady._kept(kept[0]), key)
        elif op < 0.45 and key in members:
            step, value = "access", rng.randrange(2)
        elif op < 0.52 and cs.protect[key] > 0:
            step, value = "release", 0
        elif op < 0.55:
            position = min(position + rng.randrange(3), n_passes * LAYERS - 1)
            step, value = "move", position
        elif op < 0.58:
            step, value = "floor", rng.randrange(3)
        if step is not None:
            for instance in (kept, scans):
                _state_step(on_event, *instance, step, key, value)
            continue
        scans[1].sc[SC.LANDED] += LANDED_LOG + 1  # past what the log holds: a scan of the kept keys instead
        got = int(victim(*kept, key, 0.0))
        assert got == int(victim(*scans, key, 0.0))
        walks += 1
        if got >= 0:
            for instance in (kept, scans):
                _state_step(on_event, *instance, "evict", got, 0)
            members.discard(got)
    assert walks > 800 and landed_kept > 50


def test_belady_a_kept_key_accessed_after_the_pass_moves_is_ranked_by_its_next_use():
    # One layer; expert K (0) is used in passes 1 and 3, Y (1) in pass 2, X (2) in pass 0. K in flight and Y
    # protected are set aside and kept by a victim in pass 0. In pass 1 K is accessed (a late hit) and must be
    # re-ranked by its use in pass 3; once K has landed and Y is released, K goes first (3 > 2), where the rank
    # K was kept with (its use in pass 1) would give Y.
    pol, ps, cs, tv = kernel_setup(trace_of([[[[2]]], [[[0]]], [[[1]]], [[[0]]]], n_experts=3), "eviction", "belady")
    on_event, victim = pol.hooks["on_event"], pol.hooks["victim"]
    k, y, x = 0, 1, 2
    for key in (k, y):
        cs.status[key] = IN_FLIGHT
        on_event(ps, cs, tv, EV_INSERT, key, 0.0)
    land(cs, y, 0.0)
    cs.protect[y] = 1
    assert victim(ps, cs, tv, x, 0.0) == -1
    assert (kept_in_flight(belady._kept(ps)), kept_protected(belady._kept(ps))) == (1, 1)
    cs.sc[SC.PASS] = 1
    on_event(ps, cs, tv, EV_ACCESS, k, 0.0)
    land(cs, k, 0.0)
    cs.protect[y] = 0
    cs.sc[SC.RELEASED] += 1
    assert victim(ps, cs, tv, x, 0.0) == k


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize(("name", "module"), [("arc", arc), ("s3-fifo", s3_fifo), ("lru", None)])
def test_a_remembered_run_of_keys_in_flight_changes_no_victim(name, module, seed):
    # Two instances see the same random events (copies mostly left in flight, so that runs of them build up at
    # the lists' oldest ends); the second has its remembered runs reset before every victim, so it walks from the
    # oldest key: both must choose the same victims, and (S3-FIFO) move the same keys on the way.
    rng = random.Random(seed)
    trace = trace_of([[[[0]] * LAYERS]], n_experts=EXPERTS)
    pol, *kept = kernel_setup(trace, "eviction", name)
    _, *fresh = kernel_setup(trace, "eviction", name)
    on_event, victim = pol.hooks["on_event"], pol.hooks["victim"]
    cs = kept[1]
    row = module.I.RUN if module is not None else lru.I.SKIP
    no_run = fresh[0].i[row].copy()  # as initialised: no run seen
    members: set[int] = set()
    walks = remembered = 0

    def step(op: str, key: int, value: int = 0) -> None:
        for instance in (kept, fresh):
            _state_step(on_event, *instance, op, key, value, miss_event=True)

    for _ in range(4000):
        key = rng.randrange(LAYERS * EXPERTS)
        op = rng.random()
        if op < 0.25 and cs.status[key] == ABSENT:
            step("insert", key, rng.choice((DEMAND, PREFETCH)))
            members.add(key)
        elif op < 0.31 and cs.status[key] == IN_FLIGHT:
            step("land", key)
        elif op < 0.45 and key in members:
            step("access", key, rng.randrange(2))
        elif op < 0.52 and cs.protect[key] > 0:
            step("release", key)
        elif op < 0.55:
            step("floor", key, rng.randrange(3))
        else:
            fresh[0].i[row][:] = no_run  # the second instance forgets whatever run it saw
            got = int(victim(*kept, key, 0.0))
            assert got == int(victim(*fresh, key, 0.0))
            walks += 1
            run = kept[0].i[row]
            remembered += any(run[2 * j] < LAYERS * EXPERTS for j in range(2 if module else 1))  # a key ends a run
            if got >= 0:
                step("evict", got)
                members.discard(got)
    assert walks > 1000 and remembered > 20
