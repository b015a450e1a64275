"""ARC and S3-FIFO on hand-built traces where the right victims are worked out in each test, plus their
kernels driven event by event, and their bookkeeping on random traces with prefetch and degraded copies.

Model: tests/conftest.tiny_model (6-byte experts); capacities in expert slots. One layer, top-1 and one
token per pass make the cache a classic one: each pass's key is resident (a hit) or missed, a victim is
chosen before its copy takes a slot, and only the key at the gate is protected. Letters name experts
(A = 0, B = 1, ...). `resident` lists (layer, expert) pairs left in the cache at the end.
"""

from __future__ import annotations

import warnings

import attrs
import numpy as np
import pytest

from emu.errors import EmuWarning
from emu.kernel.hooks import EV_ACCESS, EV_EVICT, EV_INSERT, EV_MISS
from emu.kernel.layout import ABSENT, DEMAND, IN_FLIGHT, PREFETCH, RESIDENT
from emu.policies.eviction import arc, s3_fifo
from emu.policies.registry import REGISTRY, live_policies

from .conftest import tiny_model
from .policy_support import kernel_setup, resident, run, trace_of

BOTH = pytest.mark.parametrize("engine", ["fast", "des"])
A, B, C, D, E, F, G, H, I, J, K = range(11)  # noqa: E741 (expert I)


def one_layer(seq: list[int], n_experts: int = 16):
    """One MoE layer, top-1, one decode token per pass using expert seq[p]."""
    return trace_of([[[[e]]] for e in seq], n_experts=n_experts)


def experts(*keys: int) -> set[tuple[int, int]]:
    return {(0, k) for k in keys}


def capture_state(monkeypatch, name: str) -> list:
    """The states `name`'s init builds from now on (the engines keep theirs to themselves)."""
    policy = REGISTRY["eviction"][name]
    states = []

    def init(ctx, params):
        states.append(policy.init(ctx, params))
        return states[-1]

    monkeypatch.setitem(REGISTRY["eviction"], name, attrs.evolve(policy, init=init))
    return states


def arc_lists(ps) -> dict[str, list[int]]:
    """ARC's lists, LRU end first."""
    links = ps.i[arc.I.LINKS]
    n = links.shape[0] // 2 - 4
    out = {}
    for lst in (arc.C.T1, arc.C.T2, arc.C.B1, arc.C.B2):
        s = n + lst
        keys, k = [], links[2 * s + 1]
        while k != s:
            keys.append(int(k))
            k = links[2 * k + 1]
        out[lst.name] = keys
    return out


def test_both_are_registered_and_live():
    for name, module in (("arc", arc), ("s3-fifo", s3_fifo)):
        assert REGISTRY["eviction"][name] is module.POLICY
        assert name in live_policies("eviction")
    assert REGISTRY["eviction"]["s3-fifo"].params["small_ratio"].default == 0.1
    assert REGISTRY["eviction"]["arc"].params == {}


# ---- ARC ------------------------------------------------------------------------------------------

@BOTH
def test_arc_survives_a_scan(engine):
    # 3 slots, A A B C D E F, then A. ARC: A's second use moves it to T2; B..F enter T1 and, with p = 0,
    # REPLACE always takes T1's LRU (|T1| > p): B, C, D go, A stays -> {A, E, F}. LRU evicts A at D.
    seq = [A, A, B, C, D, E, F]
    _, cs = run(one_layer(seq), 3, eviction="arc", engine=engine)
    assert resident(cs, 16) == experts(A, E, F)
    _, cs = run(one_layer(seq), 3, eviction="lru", engine=engine)
    assert resident(cs, 16) == experts(D, E, F)
    # ... so A's return hits under ARC only: 2 hits (A at pass 1 and 7) vs 1.
    assert run(one_layer([*seq, A]), 3, eviction="arc", engine=engine)[0]["hits"] == 2
    assert run(one_layer([*seq, A]), 3, eviction="lru", engine=engine)[0]["hits"] == 1


@BOTH
def test_arc_b1_ghost_hit_grows_p(engine, monkeypatch):
    # 2 slots, A A B C B. A A: A in T2. B: T1 = [B]. C: |T1| = 1 > p = 0 -> B goes to B1; T1 = [C].
    # B misses in B1: p = min(2, 0 + max(|B2| / |B1| = 0, 1)) = 1, and REPLACE now keeps T1 (|T1| = 1 is
    # not > p = 1): T2's A goes to B2, B enters T2. Without the adaptation C would go: {A, B}.
    states = capture_state(monkeypatch, "arc")
    _, cs = run(one_layer([A, A, B, C, B]), 2, eviction="arc", engine=engine)
    ps = states[-1]
    assert ps.f[arc.F.ADAPT, arc.A.P] == 1.0
    assert resident(cs, 16) == experts(B, C)
    assert arc_lists(ps) == {"T1": [C], "T2": [B], "B1": [], "B2": [A]}


@BOTH
def test_arc_b2_ghost_hit_shrinks_p(engine, monkeypatch):
    # Continuing A A B C B (p = 1, T1 = [C], T2 = [B], B2 = [A]) with A D E:
    # A misses in B2: p = max(0, 1 - max(|B1| / |B2| = 0, 1)) = 0; |T1| = 1 > 0: C goes to B1; T2 = [B, A].
    # D: |T1| = 0: T2's LRU B goes to B2; T1 = [D]. E: |T1| = 1 > p = 0: D goes to B1 (B1 = [C, D] with
    # |T1| = 1 is over c = 2: C's ghost is dropped) -> {A, E}.
    # Had p stayed at 1, E would find |T1| = 1 not > p and take T2's A: {D, E} (as LRU does).
    states = capture_state(monkeypatch, "arc")
    seq = [A, A, B, C, B, A, D, E]
    _, cs = run(one_layer(seq), 2, eviction="arc", engine=engine)
    ps = states[-1]
    assert ps.f[arc.F.ADAPT, arc.A.P] == 0.0
    assert resident(cs, 16) == experts(A, E)
    assert arc_lists(ps) == {"T1": [E], "T2": [A], "B1": [D], "B2": [B]}
    _, cs = run(one_layer(seq), 2, eviction="lru", engine=engine)
    assert resident(cs, 16) == experts(D, E)


def arc_kernel(slots: int):
    pol, ps, cs, tv = kernel_setup(one_layer([A]), "eviction", "arc", slots=slots)
    on_event, victim = pol.hooks["on_event"], pol.hooks["victim"]

    def ev(kind: int, key: int, prio: int = DEMAND) -> None:
        if kind == EV_INSERT:
            cs.status[key] = RESIDENT
            cs.copy_prio[key] = prio
        elif kind == EV_EVICT:
            cs.status[key] = ABSENT
        on_event(ps, cs, tv, kind, key, 0.0)

    return ps, cs, ev, lambda incoming: int(victim(ps, cs, tv, incoming, 0.0))


def test_arc_adaptation_steps_are_the_ghost_ratios():
    # c = 4. Insert A B C D (T1); access A, B (T2); evict A, B (B2 = [A, B]) and C (B1 = [C]).
    # C misses in B1: p = 0 + max(|B2| / |B1| = 2, 1) = 2. Evict D, insert and evict E, F: B1 = [D, E, F].
    # A misses in B2: p = 2 - max(|B1| / |B2| = 3 / 2, 1) = 0.5 (p is real, as in the paper).
    ps, _, ev, _ = arc_kernel(4)
    for k in (A, B, C, D):
        ev(EV_INSERT, k)
    for k in (A, B):
        ev(EV_ACCESS, k)
    for k in (A, B, C):
        ev(EV_EVICT, k)
    ev(EV_MISS, C)
    assert ps.f[arc.F.ADAPT, arc.A.P] == 2.0
    for k in (D,):
        ev(EV_EVICT, k)
    for k in (E, F):
        ev(EV_INSERT, k)
        ev(EV_EVICT, k)
    assert arc_lists(ps)["B1"] == [D, E, F] and arc_lists(ps)["B2"] == [A, B]
    ev(EV_MISS, A)
    assert ps.f[arc.F.ADAPT, arc.A.P] == 0.5
    # both ghosts left their lists and enter T2 when their copies take a slot
    ev(EV_INSERT, A)
    ev(EV_INSERT, C)
    assert arc_lists(ps)["T2"] == [A, C]


def test_arc_replace_tie_goes_to_t1_only_for_a_b2_ghost():
    # T2 = [A], T1 = [B], B2 = [C], p set to 1 = |T1|: REPLACE takes T1's LRU for the B2 ghost C
    # (|T1| == p and x in B2), T2's LRU for a new key D (|T1| is not > p).
    ps, cs, ev, victim = arc_kernel(2)
    ev(EV_INSERT, C)
    ev(EV_ACCESS, C)
    ev(EV_EVICT, C)
    ev(EV_INSERT, A)
    ev(EV_ACCESS, A)
    ev(EV_INSERT, B)
    ev(EV_MISS, C)
    ps.f[arc.F.ADAPT, arc.A.P] = 1.0
    assert victim(C) == B
    assert victim(D) == A
    cs.protect[B] = 1  # T1 has no evictable key: T2's is taken; none at all: -1
    assert victim(C) == A
    cs.status[A] = IN_FLIGHT
    assert victim(C) == -1


def test_arc_prefetch_is_not_a_reference():
    # A prefetched key enters T1 and its first access is its first reference (it stays in T1); the
    # second moves it to T2. A prefetch of a B1 ghost leaves B1 without changing p.
    ps, _, ev, _ = arc_kernel(4)
    ev(EV_INSERT, A, PREFETCH)
    ev(EV_ACCESS, A)
    assert arc_lists(ps)["T1"] == [A]
    ev(EV_ACCESS, A)
    assert arc_lists(ps)["T2"] == [A]
    ev(EV_INSERT, B)
    ev(EV_EVICT, B)
    ev(EV_INSERT, B, PREFETCH)
    assert ps.f[arc.F.ADAPT, arc.A.P] == 0.0
    assert arc_lists(ps) == {"T1": [B], "T2": [A], "B1": [], "B2": []}


# ---- S3-FIFO --------------------------------------------------------------------------------------

@BOTH
def test_s3fifo_one_hit_wonders_leave_from_s(engine):
    # 10 slots, small_ratio 0.1 (S's share 1 slot). A A A, then B..J fill the cache, all in S.
    # K: |S| = 10 >= 1: evictS looks at S's oldest, A, accessed twice in S (freq 2 > 1): A moves to M;
    # B (freq 0) is the victim. L: C is. A survives the one-hit wonders -> {A, D..L}; LRU evicts A at K.
    seq = [A, A, A, B, C, D, E, F, G, H, I, J, K, K + 1]
    _, cs = run(one_layer(seq), 10, eviction="s3-fifo", engine=engine)
    assert resident(cs, 16) == experts(A, *range(D, K + 2))
    _, cs = run(one_layer(seq), 10, eviction="lru", engine=engine)
    assert resident(cs, 16) == experts(*range(C, K + 2))
    # Accessed only once in S (freq 1), A is not promoted: it is K's victim.
    _, cs = run(one_layer([A, A, B, C, D, E, F, G, H, I, J, K]), 10, eviction="s3-fifo", engine=engine)
    assert resident(cs, 16) == experts(*range(B, K + 1))


@BOTH
def test_s3fifo_ghost_hit_enters_main(engine):
    # 4 slots, small_ratio 0.5 (S's share 2, G holds int(0.5 * 4) = 2). A B C D fill S. E: A goes to G.
    # A again: B goes (to G); A is in G, so it enters M. F, G, H, I: |S| = 3 >= 2 each time, so S's oldest
    # (C, D, E, F) go and A, in M, stays -> {A, G, H, I}. Had A re-entered S behind E, I would evict it:
    # {F, G, H, I}, which is also LRU's outcome.
    seq = [A, B, C, D, E, A, F, G, H, I]
    _, cs = run(one_layer(seq), 4, eviction=("s3-fifo", {"small_ratio": 0.5}), engine=engine)
    assert resident(cs, 16) == experts(A, G, H, I)
    _, cs = run(one_layer(seq), 4, eviction="lru", engine=engine)
    assert resident(cs, 16) == experts(F, G, H, I)


@BOTH
@pytest.mark.parametrize("policy", ["arc", "s3-fifo"])
def test_protected_and_in_flight_keys_are_never_victims(engine, policy):
    # 2 slots; in each trace the last pass's two keys fill the cache, so exactly one outcome is legal.
    # A A, then {C, D}: C takes the free slot (in flight, protected); D needs a victim. ARC's REPLACE picks
    # T1 (|T1| = 1 > p = 0), whose only key is C: it must fall back to T2's A.
    tr = trace_of([[[[A]]], [[[A]]], [[[C]], [[D]]]], n_experts=4)
    _, cs = run(tr, 2, eviction=policy, engine=engine)
    assert resident(cs, 4) == experts(C, D)
    # A, B, then {A, C}: A hits and stays protected. S3-FIFO's evictS starts at S's oldest key, A (a hit
    # does not move a key in a FIFO): it must skip A and take B.
    tr = trace_of([[[[A]]], [[[B]]], [[[A]], [[C]]]], n_experts=4)
    _, cs = run(tr, 2, eviction=policy, engine=engine)
    assert resident(cs, 4) == experts(A, C)


def s3_kernel(slots: int, small_ratio: float):
    pol, ps, cs, tv = kernel_setup(one_layer([A]), "eviction", ("s3-fifo", {"small_ratio": small_ratio}),
                                   slots=slots)
    on_event, victim = pol.hooks["on_event"], pol.hooks["victim"]

    def ev(kind: int, key: int, prio: int = DEMAND) -> None:
        if kind == EV_INSERT:
            cs.status[key] = RESIDENT
            cs.copy_prio[key] = prio
        elif kind == EV_EVICT:
            cs.status[key] = ABSENT
        on_event(ps, cs, tv, kind, key, 0.0)

    return ps, cs, ev, lambda incoming: int(victim(ps, cs, tv, incoming, 0.0))


def s3_queue(ps, q) -> list[int]:
    links = ps.i[s3_fifo.I.LINKS]
    s = links.shape[0] // 2 - 3 + q
    keys, k = [], links[2 * s + 1]
    while k != s:
        keys.append(int(k))
        k = links[2 * k + 1]
    return keys


def test_s3fifo_main_is_a_two_bit_clock():
    # 4 slots, small_ratio 0.5. Insert A B C D (S); A accessed 4 times (freq capped at 3), B twice, C once.
    # victim(E): |S| = 4 >= 2 -> evictS: A (3 > 1) and B (2 > 1) move to M with freq 0; C (1) is the victim.
    ps, cs, ev, victim = s3_kernel(4, 0.5)
    for k in (A, B, C, D):
        ev(EV_INSERT, k)
    for k in (A, A, A, A, B, B, C):
        ev(EV_ACCESS, k)
    assert ps.i[s3_fifo.I.FREQ, A] == 3
    assert victim(E) == C
    assert s3_queue(ps, s3_fifo.C.M) == [A, B] and ps.i[s3_fifo.I.FREQ, [A, B]].tolist() == [0, 0]
    ev(EV_EVICT, C)
    assert s3_queue(ps, s3_fifo.C.G) == [C]
    # Now |S| = 1 < 2: evict from M. A accessed 3 times, B once: A (3 -> 2) and B (1 -> 0) go round, A
    # (2 -> 1) again, then B (0) is the victim; A is left at freq 1.
    for k in (A, A, A, B):
        ev(EV_ACCESS, k)
    assert victim(E) == B
    assert ps.i[s3_fifo.I.FREQ, A] == 1
    # A single key of freq 3 in M goes round by itself (3 -> 2 -> 1 -> 0) and is then the victim.
    ev(EV_EVICT, B)
    for k in (A, A, A):
        ev(EV_ACCESS, k)
    assert victim(E) == A
    # Nothing evictable in M: S's D is taken; nothing evictable anywhere: -1, and the walks end.
    cs.protect[A] = 1
    assert victim(E) == D
    cs.protect[D] = 1
    assert victim(E) == -1


def test_s3fifo_ghost_is_bounded_and_prefetch_is_not_a_reference():
    # 4 slots, small_ratio 0.5: G holds 2. Evicting A, B, C from S leaves G = [B, C].
    ps, _, ev, _ = s3_kernel(4, 0.5)
    for k in (A, B, C):
        ev(EV_INSERT, k)
    for k in (A, B, C):
        ev(EV_EVICT, k)
    assert s3_queue(ps, s3_fifo.C.G) == [B, C]
    # A prefetched key's first access does not count; the next ones do.
    ev(EV_INSERT, D, PREFETCH)
    ev(EV_ACCESS, D)
    assert ps.i[s3_fifo.I.FREQ, D] == 0
    ev(EV_ACCESS, D)
    assert ps.i[s3_fifo.I.FREQ, D] == 1


# ---- bookkeeping on random traces ----------------------------------------------------------------

def random_trace(seed: int):
    """4 layers x 8 experts, top-2, 1-2 tokens per pass, skewed popularity, gate scores."""
    rng = np.random.default_rng(seed)
    popular = np.array([.3, .2, .12, .1, .1, .08, .06, .04])
    passes, scores = [], []
    for _ in range(60):
        n_tok = int(rng.integers(1, 3))
        passes.append([[[int(e) for e in rng.choice(8, 2, replace=False, p=popular)] for _ in range(4)]
                       for _ in range(n_tok)])
        w = float(rng.uniform(.5, .9))
        scores.append([[[w, 1 - w]] * 4] * n_tok)
    return trace_of(passes, scores=scores, n_experts=8)


STACKS = [{"prefetch": "next-layer"}, {"miss": "fetch-priority"}, {"miss": "substitute"}]


@pytest.mark.parametrize("kw", STACKS)
@pytest.mark.parametrize("slots", [5, 12])
def test_arc_bookkeeping(monkeypatch, kw, slots):
    states = capture_state(monkeypatch, "arc")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EmuWarning)
        r, cs = run(random_trace(slots), slots, model=tiny_model(4, 8, 2), eviction="arc", **kw)
    assert r["evictions"] > 0
    ps = states[-1]
    lists = arc_lists(ps)
    where = ps.i[arc.I.LIST]
    held = set(np.flatnonzero(np.isin(np.asarray(cs.status), (RESIDENT, IN_FLIGHT))).tolist())
    assert set(lists["T1"]) | set(lists["T2"]) == held
    for name, member in (("T1", arc.C.T1), ("T2", arc.C.T2), ("B1", arc.C.B1), ("B2", arc.C.B2)):
        assert ps.i[arc.I.COUNT, member] == len(lists[name]) == int((where == member).sum())
    assert all(cs.status[k] == ABSENT for k in lists["B1"] + lists["B2"])
    c = slots
    assert 0.0 <= ps.f[arc.F.ADAPT, arc.A.P] <= c
    if kw.get("miss") != "fetch-priority":  # every copy takes one slot: the paper's directory bounds hold
        assert len(lists["T1"]) + len(lists["B1"]) <= c
        assert sum(map(len, lists.values())) <= 2 * c


@pytest.mark.parametrize("kw", STACKS)
@pytest.mark.parametrize("slots", [5, 12])
def test_s3fifo_bookkeeping(monkeypatch, kw, slots):
    states = capture_state(monkeypatch, "s3-fifo")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EmuWarning)
        r, cs = run(random_trace(slots), slots, model=tiny_model(4, 8, 2), eviction="s3-fifo", **kw)
    assert r["evictions"] > 0
    ps = states[-1]
    small, main, ghost = (s3_queue(ps, q) for q in (s3_fifo.C.S, s3_fifo.C.M, s3_fifo.C.G))
    held = set(np.flatnonzero(np.isin(np.asarray(cs.status), (RESIDENT, IN_FLIGHT))).tolist())
    assert set(small) | set(main) == held and len(small) + len(main) == len(held)
    assert all(cs.status[k] == ABSENT for k in ghost)
    assert len(ghost) <= ps.i[s3_fifo.I.COUNT, s3_fifo.C.GHOSTS] == int(0.9 * slots)
    for q, keys in ((s3_fifo.C.S, small), (s3_fifo.C.M, main), (s3_fifo.C.G, ghost)):
        assert ps.i[s3_fifo.I.COUNT, q] == len(keys) == int((ps.i[s3_fifo.I.QUEUE] == q).sum())
    freq = ps.i[s3_fifo.I.FREQ]
    assert freq.min() >= 0 and freq.max() <= 3
