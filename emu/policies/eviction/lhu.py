"""Least high-precision used: for mixed-precision caches, evict what served fewest full-precision uses.

An access counts when the expert is resident (or in flight) at the model's own precision (index 0). A
degraded copy (int8/int4/...) therefore scores low and goes first, which frees room to bring important
experts back at full precision; among full-precision copies it acts as LFU.
State: lfu's rows `I` (lhu uses lfu's `victim`): the resident set (`I.MEMBERS`, `I.POS`),
`i[I.COUNT, key]` the full-precision uses and `i[I.LAST, key]` the clock of the last access (ties: least
recent).
Cost: O(1) per event, O(resident) per victim.
"""

from __future__ import annotations

from ...kernel.helpers import resident_set_state, set_add, set_remove
from ...kernel.hooks import EV_ACCESS, EV_EVICT, EV_INSERT, EVENT_SIG, hook
from ...kernel.layout import DEMAND, SC
from ..api import Capabilities, Policy, PolicyContext, register
from .lfu import I, victim  # same rows and order: fewest counted uses, then least recent, then lowest key


def init(ctx: PolicyContext, params: dict[str, float]) -> object:
    return resident_set_state(ctx.n_layers * ctx.n_experts, i_rows=len(I))


@hook(EVENT_SIG)
def on_event(ps, cs, tv, ev, key, t):
    i = ps.i
    if ev == EV_ACCESS:
        if cs.prec[key] == 0:
            i[I.COUNT, key] += 1
        i[I.LAST, key] = cs.sc[SC.CLOCK]
    elif ev == EV_INSERT:
        set_add(i[I.MEMBERS], i[I.POS], key)
        if cs.copy_prio[key] == DEMAND and cs.prec[key] == 0:
            i[I.COUNT, key] += 1
        i[I.LAST, key] = cs.sc[SC.CLOCK]
    elif ev == EV_EVICT:
        set_remove(i[I.MEMBERS], i[I.POS], key)
    return 0


POLICY = register(Policy(
    name="lhu", kind="eviction", hooks={"victim": victim, "on_event": on_event}, init=init,
    capabilities=Capabilities(live=True),
    doc="Evict the expert with the fewest full-precision uses (degraded copies first)."))
