"""Least high-precision used: for mixed-precision caches, evict what served fewest full-precision uses.

An access counts when the expert is resident (or in flight) at the model's own precision (index 0). A
degraded copy (int8/int4/...) therefore scores low and goes first, which frees room to bring important
experts back at full precision; among full-precision copies it acts as LFU.
State: lfu's rows and heap (lhu uses lfu's `init`, `victim` and `touch`): `f[F.COUNT, key]` the full-precision uses
and `i[I.LAST, key]` the clock of the last access (ties: least recent, then the lower key).
Cost: as lfu's.
"""

from __future__ import annotations

from ...kernel.hooks import EV_ACCESS, EV_EVICT, EV_INSERT, EVENT_SIG, hook
from ...kernel.layout import DEMAND
from ..api import Capabilities, Policy, register
from .lfu import init, touch, victim  # same rows and order: fewest counted uses, then least recent, then lowest key


@hook(EVENT_SIG)
def on_event(ps, cs, tv, ev, key, t):
    if ev == EV_ACCESS:
        touch(ps, cs, ev, key, cs.prec[key] == 0)
    elif ev == EV_INSERT:
        touch(ps, cs, ev, key, cs.copy_prio[key] == DEMAND and cs.prec[key] == 0)
    elif ev == EV_EVICT:
        touch(ps, cs, ev, key, False)
    return 0


POLICY = register(Policy(
    name="lhu", kind="eviction", hooks={"victim": victim, "on_event": on_event}, init=init,
    capabilities=Capabilities(live=True),
    doc="Evict the expert with the fewest full-precision uses (degraded copies first)."))
