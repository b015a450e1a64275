"""S3-FIFO: Yang et al., "FIFO queues are all you need for cache eviction", SOSP'23, Algorithm 1; thresholds
as in libCacheSim's S3FIFOv0.c (the paper's implementation; S3FIFO.c has the same defaults).

Three FIFO queues: a small queue S for new keys (a share `small_ratio` of the slots), a main queue M, and a
ghost queue G of keys evicted from S (as many keys as M's share: int((1 - small_ratio) * slots), libCacheSim's
ghost-size-ratio 0.9 for the default 0.1). Each resident key has a 2-bit frequency: an access adds one, up to
3. A key enters with frequency 0: into M if it is in G (it leaves G), else into S. To evict: from S if
|S| >= small_ratio * slots, else from M.
- S, from its oldest key: a key with frequency > 1 (libCacheSim's move-to-main-threshold 2: accessed at least
  twice while in S) moves to M's newest end with its frequency cleared (libCacheSim inserts it into M as a
  new object); the first other key is the victim and enters G on its eviction (G drops its oldest keys
  beyond its size).
- M, from its oldest key: a key with frequency > 0 goes back to M's newest end with frequency - 1 (2-bit
  CLOCK); the first key with frequency 0 is the victim (no ghost).

Sizes are counted in expert slots at the model's precision: slots = capacity_bytes // expert_bytes.

State (`ps.i` rows `I`, parameters `P`):
- `I.LINKS`: three circular doubly linked lists over keys, one per queue of `C` (S, M, G), closed by sentinel
  nodes n_keys + queue: node k's previous at `2k`, its next at `2k + 1`; a sentinel's next is the queue's
  oldest key, its previous the newest. A key is in at most one queue.
- `I.QUEUE[key]`: the queue (`C.S`, `C.M`, `C.G`) the key is in, or -1.
- `I.FREQ[key]`: the frequency, 0..3.
- `I.UNUSED[key]`: 1 while a prefetched key waits for its first access.
- `I.COUNT[C.S .. C.G]`: the queues' lengths; `I.COUNT[C.SLOTS]`: the slots; `I.COUNT[C.GHOSTS]`: G's size.
- `I.RUN[2 * C.S]`, `I.RUN[2 * C.S + 1]`: the last key of the run of in-flight keys at S's oldest end that the
  last walk of S met (S's sentinel: none), and `cs.sc[SC.LANDED]` then; the next walk starts after it while no
  copy has landed since (those keys are never evictable, and keys only leave the run).

Cost: O(1) per event; per victim O(1) plus the keys walked past: at most |S| in S (each moves or is skipped
once; the run of copies in flight at its oldest end only once between landings) and at most 7|M| + 1 steps in
M (each key is reinserted at most 3 times, as its frequency is at most 3; a key `is_evictable` refuses is
passed at most once per lap and there are at most 4 laps).

Where this departs from the paper, and why:
- The hook returns one victim per call. When keys moved from S make M exceed its share, the paper evicts from
  M inside that eviction (evictS calls evictM) and still evicts from S; here M exceeds its share until the
  next eviction, which then finds |S| below its share and takes M's victim.
- Keys that `is_evictable` refuses (protected: needed by the layer computing; in flight; or kept by the
  core's layer caps and floors) stay where they are, whatever their frequency; the walk goes on to the next
  key. If the chosen queue yields no victim the other is tried; -1 if neither does.
- A copy takes its slot (EV_INSERT) before it lands, so S and M include in-flight keys. A lower-precision
  copy counts as one key like any other.
- Prefetches are inserts without a request, which the paper does not have: a prefetched key enters like any
  other, and its first access does not count (a demand copy's missing request does not count either), so a
  correct prefetch is not taken for a reuse.
"""

from __future__ import annotations

from enum import auto

from numba import njit

from ...kernel.helpers import (
    init_lists,
    init_runs,
    is_evictable,
    ix,
    key_layer,
    list_forget_run,
    list_next,
    list_put,
    list_run_remember,
    list_run_start,
    list_sentinel,
    list_take,
)
from ...kernel.hooks import EV_ACCESS, EV_EVICT, EV_INSERT, EVENT_SIG, VICTIM_SIG, hook
from ...kernel.layout import PREFETCH, RESIDENT, Fields, new_policy_state
from ..api import Capabilities, Param, Policy, PolicyContext, param_values, register


class I(Fields):
    """Rows of `ps.i`."""

    LINKS = auto()
    QUEUE = auto()
    FREQ = auto()
    UNUSED = auto()
    COUNT = auto()
    RUN = auto()  # per queue, the run of in-flight keys at its oldest end a walk of S met, with SC.LANDED then


class C(Fields):
    """The queues (values of `I.QUEUE`, sentinel offsets) and the columns of `I.COUNT`."""

    S = auto()
    M = auto()
    G = auto()
    SLOTS = auto()
    GHOSTS = auto()


class P(Fields):
    """Parameters, `ps.p`."""

    SMALL_RATIO = auto()


_NONE = -1  # I.QUEUE of a key in no queue
_N_QUEUES = 3
_MAX_FREQ = 3
_TO_MAIN = 1  # a key in S moves to M when its frequency is above this


def init(ctx: PolicyContext, params: dict[str, float]) -> object:
    n = ctx.n_layers * ctx.n_experts
    ps = new_policy_state(i_rows=len(I), i_cols=2 * (n + _N_QUEUES), params=param_values(P, params))
    ps.i[I.QUEUE, :] = _NONE
    init_lists(ps.i[I.LINKS], _N_QUEUES)
    slots = ctx.capacity_bytes // ctx.expert_bytes
    ps.i[I.COUNT, C.SLOTS] = slots
    ps.i[I.COUNT, C.GHOSTS] = int((1.0 - params["small_ratio"]) * slots)
    init_runs(ps.i[I.RUN], ps.i[I.LINKS], _N_QUEUES)
    return ps


@njit(cache=True, inline="always")
def _sentinel(links, q: int) -> int:
    return list_sentinel(links, _N_QUEUES, q)


@njit(cache=True, inline="always")
def _remove(i, key: int) -> None:
    """Take `key` out of its queue (it is in one)."""
    q = i[I.QUEUE, ix(key)]
    list_forget_run(i[I.RUN], q, key, _sentinel(i[I.LINKS], q))
    list_take(i[I.LINKS], i[I.QUEUE], i[I.COUNT], key)


@njit(cache=True, inline="always")
def _push_newest(i, key: int, q: int) -> None:
    """Put `key` (in no queue) at the newest end of `q`."""
    list_put(i[I.LINKS], i[I.QUEUE], i[I.COUNT], key, q, _N_QUEUES)


@njit(cache=True, _nrt=False)
def _evict_small(i, cs, in_layer: int) -> int:
    """S's oldest evictable key of frequency <= 1, moving the evictable ones above it to M on the way. The walk
    starts after the run of in-flight keys at S's oldest end that the last walk met, while no copy has landed
    since (as `list_first_evictable_after_run`: those keys are never evictable, and keys only leave the run)."""
    links = i[I.LINKS]
    s = _sentinel(links, C.S)
    run = i[I.RUN]
    last = list_run_start(run, C.S, s, cs)
    in_run = True  # every key walked so far and still in S is in flight
    key = list_next(links, last)
    found = -1
    while key != s:
        nxt = list_next(links, key)
        if cs.status[ix(key)] != RESIDENT:
            if in_run:
                last = key
        elif is_evictable(cs, key, in_layer):
            if i[I.FREQ, ix(key)] <= _TO_MAIN:
                found = key
                break
            _remove(i, key)  # it leaves S: the keys walked before it stay a run
            _push_newest(i, key, C.M)
            i[I.FREQ, ix(key)] = 0
        else:
            in_run = False
        key = nxt
    list_run_remember(run, C.S, last, cs)
    return found


@njit(cache=True, _nrt=False)
def _evict_main(i, cs, in_layer: int) -> int:
    links = i[I.LINKS]
    s = _sentinel(links, C.M)
    key = list_next(links, s)
    steps = 7 * i[I.COUNT, C.M] + 1  # enough for every case (see the module docstring): a guard only
    while key != s and steps > 0:
        steps -= 1
        nxt = list_next(links, key)
        if is_evictable(cs, key, in_layer):
            f = i[I.FREQ, ix(key)]
            if f == 0:
                return key
            i[I.FREQ, ix(key)] = f - 1
            _remove(i, key)
            _push_newest(i, key, C.M)
            if nxt == s:  # the newest key went round: the next lap starts at the oldest
                nxt = list_next(links, s)
        key = nxt
    return -1


@hook(EVENT_SIG)
def on_event(ps, cs, tv, ev, key, t):
    i = ps.i
    if ev == EV_ACCESS:
        q = i[I.QUEUE, ix(key)]
        if i[I.UNUSED, ix(key)] == 1:
            i[I.UNUSED, ix(key)] = 0
        elif (q == C.S or q == C.M) and i[I.FREQ, ix(key)] < _MAX_FREQ:
            i[I.FREQ, ix(key)] += 1
    elif ev == EV_INSERT:
        if i[I.QUEUE, ix(key)] == C.G:
            _remove(i, key)
            _push_newest(i, key, C.M)
        else:
            _push_newest(i, key, C.S)
        i[I.FREQ, ix(key)] = 0
        i[I.UNUSED, ix(key)] = 1 if cs.copy_prio[ix(key)] == PREFETCH else 0
    elif ev == EV_EVICT:
        q = i[I.QUEUE, ix(key)]
        i[I.UNUSED, ix(key)] = 0
        if q == C.S:
            _remove(i, key)
            _push_newest(i, key, C.G)
            links = i[I.LINKS]
            g = _sentinel(links, C.G)
            while i[I.COUNT, C.G] > i[I.COUNT, C.GHOSTS]:
                _remove(i, list_next(links, g))
        elif q == C.M:
            _remove(i, key)
    return 0


@hook(VICTIM_SIG)
def victim(ps, cs, tv, incoming, t):
    in_layer = key_layer(cs, incoming)
    i = ps.i
    if i[I.COUNT, C.S] >= ps.p[P.SMALL_RATIO] * i[I.COUNT, C.SLOTS]:
        key = _evict_small(i, cs, in_layer)
        return key if key >= 0 else _evict_main(i, cs, in_layer)
    key = _evict_main(i, cs, in_layer)
    return key if key >= 0 else _evict_small(i, cs, in_layer)


POLICY = register(Policy(
    name="s3-fifo", kind="eviction", hooks={"victim": victim, "on_event": on_event}, init=init,
    params={"small_ratio": Param(0.1, 0.0, 1.0, doc="share of the slots for the small FIFO S (paper: 0.1)")},
    capabilities=Capabilities(live=True),
    doc="S3-FIFO (Yang et al., SOSP'23): a small FIFO filters one-hit wonders from a 2-bit-CLOCK main FIFO."))
