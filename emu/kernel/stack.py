"""The chosen policy stack as the core sees it: every hook and every policy state in one struct.

One borrowed pointer (structs.py) instead of a typed list plus a tuple: the core reads `pk.on_event` as a
field load and calls it as a first-class function (~2 ns), where a typed-list lookup cost ~10 ns per call.
Fields come from `hooks.HOOKS` (hooks in kind order, then one state per kind), so a new hook is one line there.
"""

from __future__ import annotations

from typing import Any

from .hooks import HOOKS, KINDS, compiled, hook_type
from .layout import PS_T
from .structs import StructOwnerType, StructProxy, StructView, constructor, payload_addr

HOOK_NAMES: tuple[str, ...] = tuple(name for kind in KINDS for name, _sig in HOOKS[kind])
_HOOK_SIGS: dict[str, object] = {name: sig for kind in KINDS for name, sig in HOOKS[kind]}
STACK_FIELDS: tuple[tuple[str, Any], ...] = (
    *((name, hook_type(sig)) for kind in KINDS for name, sig in HOOKS[kind]),
    *((f"s_{kind}", PS_T) for kind in KINDS),
)
STACK_T = StructView("Stack", STACK_FIELDS)
_STACK_OWN = StructOwnerType(list(STACK_FIELDS))
_new_stack = constructor(_STACK_OWN)


class Stack(StructProxy):
    """The hooks (`HOOK_NAMES`: victim, on_event, prefetch, on_miss, route, partition) and one policy state
    per kind (`s_eviction`, ..., `s_partition`). Holds the states, so they live as long as the stack."""

    _VIEW = STACK_T

    def __init__(self, hooks: dict[str, Any], states: dict[str, Any]) -> None:
        self.hooks = {name: compiled(hooks[name], _HOOK_SIGS[name]) for name in HOOK_NAMES}
        self.states = {kind: states[kind] for kind in KINDS}
        self._owner = _new_stack(_STACK_OWN, (*self.hooks.values(), *self.states.values()))
        self._addr = int(payload_addr(self._owner))
