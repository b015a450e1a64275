"""The live runtime's cache bridge: what one `gate` call reports (hits, victims, waits, miss kinds), what
`prefetch` takes, and `finish` as `complete` + `release` key by key."""

from __future__ import annotations

import numpy as np

from live.cache_bridge import CAPACITY, COLLISION, HIT, MISS_EVICT, MISS_FREE, MISS_WAIT, CacheBridge


def _fill(b: CacheBridge, layer: int, experts: list[int]) -> None:
    out, victims, _m = b.gate(layer, np.array(experts))
    assert out.tolist() == [MISS_FREE] * len(experts) and victims.tolist() == [-1] * len(experts)
    b.finish(layer, experts)


def test_a_miss_reports_the_lru_victim_and_its_kind() -> None:
    b = CacheBridge(2, 8, 2, 3, eviction="lru")
    b.begin_pass(0)
    _fill(b, 0, [0, 1])
    _fill(b, 1, [2])
    b.begin_pass(1)
    out, victims, misses = b.gate(0, np.array([1, 5]))
    # expert 1 hits; 5 misses (compulsory) and evicts the least recent key not protected: layer 0 expert 0
    assert out.tolist() == [HIT, MISS_EVICT]
    assert victims.tolist() == [-1, 0]
    assert misses.tolist() == [1, 0, 0]
    b.finish(0, [1, 5])
    # 0 was evicted in this very pass: a collision miss; it evicts the least recent key, layer 1's expert 2
    out, victims, misses = b.gate(0, np.array([0]))
    assert out.tolist() == [MISS_EVICT] and victims.tolist() == [10]
    assert misses.tolist() == [0, 0, 1] and misses[COLLISION] == 1
    b.finish(0, [0])
    b.begin_pass(2)
    out, victims, misses = b.gate(1, np.array([2]))  # evicted in an earlier pass: a capacity miss
    assert out.tolist() == [MISS_EVICT] and misses[CAPACITY] == 1
    assert victims.tolist() == [1]


def test_a_miss_with_every_slot_protected_waits_until_a_release() -> None:
    b = CacheBridge(1, 8, 3, 2, eviction="lru")
    b.begin_pass(0)
    out, victims, _m = b.gate(0, np.array([1, 2, 3]))
    assert out.tolist() == [MISS_FREE, MISS_FREE, MISS_WAIT]
    assert victims.tolist() == [-1, -1, -1]
    assert b.retry(0, 3) == -2  # both slots still held by the layer's own entries
    b.finish(0, [1])  # lands and releases expert 1: the waiting miss may now evict it
    assert b.retry(0, 3) == 1
    assert b.resident().tolist() == [2, 3]


def test_finish_is_complete_then_release_key_by_key() -> None:
    def run(batched: bool) -> tuple[list[int], list[int]]:
        b = CacheBridge(2, 8, 3, 4, eviction="lru")
        b.begin_pass(0)
        seen = []
        for p, layer, experts in [(0, 0, [1, 2, 3]), (0, 1, [4, 0]), (1, 0, [3, 6, 1]), (1, 1, [4, 7])]:
            if layer == 0:
                b.begin_pass(p)
            out, victims, _m = b.gate(layer, np.array(experts))
            seen += out.tolist() + victims.tolist()
            if batched:
                b.finish(layer, experts)
            else:
                for e in experts:
                    b.complete(layer, e)
                    b.release(layer, e)
        return seen, b.resident().tolist()

    assert run(True) == run(False)


def test_prefetch_reports_the_keys_taken_in_issue_order_with_their_victims() -> None:
    b = CacheBridge(2, 8, 2, 3, eviction="lru", prefetch="next-layer")
    b.begin_pass(0)
    b.observe(0, np.array([[1, 2]]), np.array([[5, 6]]))
    out, _v, _m = b.gate(0, np.array([1, 2]))
    assert out.tolist() == [MISS_FREE, MISS_FREE]
    keys, victims = b.prefetch(0)
    # one slot left: the first pick takes it; the second must evict, and layer 0's experts are protected
    assert keys.tolist()[:1] in ([8 + 5], [8 + 6])
    assert len(keys) == 1 and victims.tolist() == [-1]
    b.finish(0, [1, 2])
    b.observe(1, np.array([[5, 7]]), None)
    out, victims, _m = b.gate(1, np.array([5, 7]))
    assert out[1] == MISS_EVICT and victims[1] in (1, 2)
