"""Every policy, by kind and name. Adding a policy: write its module, add one line here."""

from __future__ import annotations

from ..errors import EmuError
from .api import KINDS, Policy
from .eviction import belady, fld, least_stale, lfu, lhu, lru, score, seeded_random
from .miss import cpu, drop, fetch, fetch_lowest_bit, fetch_priority, substitute
from .partition import adaptive as adaptive_partition
from .partition import count_floor, fair_bytes, global_pool
from .prefetch import adaptive as adaptive_prefetch
from .prefetch import frequency, lookahead, multi_look, next_layer, none, oracle, score_percentile, topk
from .routing import cache_aware, standard

_ALL: tuple[Policy, ...] = (
    # eviction
    lru.POLICY,
    lfu.POLICY,
    fld.POLICY,
    score.POLICY,
    lhu.POLICY,
    least_stale.POLICY,
    seeded_random.POLICY,
    belady.POLICY,
    # prefetch
    none.POLICY,
    oracle.POLICY,
    next_layer.POLICY,
    topk.POLICY,
    score_percentile.POLICY,
    lookahead.POLICY,
    frequency.POLICY,
    multi_look.POLICY,
    adaptive_prefetch.POLICY,
    # miss
    fetch.POLICY,
    fetch_lowest_bit.POLICY,
    fetch_priority.POLICY,
    drop.POLICY,
    substitute.POLICY,
    cpu.POLICY,
    # routing
    standard.POLICY,
    cache_aware.POLICY,
    # partition
    global_pool.POLICY,
    fair_bytes.POLICY,
    count_floor.POLICY,
    adaptive_partition.POLICY,
)

REGISTRY: dict[str, dict[str, Policy]] = {kind: {} for kind in KINDS}
for _policy in _ALL:
    REGISTRY[_policy.kind][_policy.name] = _policy


def get_policy(kind: str, name: str, *, file: str | None = None) -> Policy:
    try:
        return REGISTRY[kind][name]
    except KeyError:
        raise EmuError(f"unknown {kind} policy {name!r}; expected one of {sorted(REGISTRY[kind])}",
                       file=file, key=f"policy.{kind}") from None
