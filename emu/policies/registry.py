"""Every policy, by kind and name: the modules of emu/policies/<kind>/ register themselves when imported,
and installed packages add theirs through the entry point group `moe_emu.policies` (an entry point names a
module that calls `register`, or a `Policy` value)."""

from __future__ import annotations

import importlib
import pkgutil
from importlib.metadata import entry_points
from typing import Any

from ..errors import EmuError
from .api import REGISTRY, Capabilities, Policy, register

ENTRY_POINT_GROUP = "moe_emu.policies"

__all__ = ["ENTRY_POINT_GROUP", "REGISTRY", "Capabilities", "Policy", "compile_hooks", "get_policy", "live_policies",
           "register"]


def _load_builtin() -> None:
    from . import eviction, miss, partition, prefetch, routing

    for package in (eviction, prefetch, miss, routing, partition):
        for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
            importlib.import_module(f"{package.__name__}.{info.name}")


def _load_entry_points() -> None:
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            loaded = ep.load()
        except Exception as err:  # an out-of-tree package's bug: name it, do not take the tool down
            raise EmuError(f"could not load policy entry point {ep.name!r} ({ep.value}): {err}",
                           key=ENTRY_POINT_GROUP) from None
        if isinstance(loaded, Policy):
            register(loaded, module=ep.value)


_load_builtin()
_load_entry_points()


def get_policy(kind: str, name: str, *, file: str | None = None) -> Policy:
    try:
        return REGISTRY[kind][name]
    except KeyError:
        raise EmuError(f"unknown {kind} policy {name!r}; expected one of {sorted(REGISTRY[kind])}",
                       file=file, key=f"policy.{kind}") from None


def compile_hooks(stack: Any = None) -> None:
    """Compile (or load from numba's cache) every registered policy's hooks now, or those of one stack (a
    `StackChoice`), rather than when a stack first holds them (`kernel.hooks.hook`): for a parent process before
    its workers start, so that no two processes compile one function at once."""
    from ..kernel.hooks import HOOKS, KINDS, compiled

    if stack is None:
        chosen = [(kind, policy) for kind, policies in REGISTRY.items() for policy in policies.values()]
    else:
        chosen = [(kind, get_policy(kind, getattr(stack, kind).name)) for kind in KINDS]
    for kind, policy in chosen:
        for name, sig in HOOKS[kind]:
            compiled(policy.hooks[name], sig)


def _stack_policies(stack: Any) -> list[Policy]:
    """A stack's registered policies (a `StackChoice`: a named choice per kind), in kind order."""
    from ..kernel.hooks import KINDS

    names = ((kind, getattr(stack, kind).name) for kind in KINDS)
    return [REGISTRY[kind][name] for kind, name in names if name in REGISTRY.get(kind, {})]


def offline_policies(stack: Any) -> tuple[str, ...]:
    """Of a stack's policies, those that read routing no runtime knows at the gate (later layers or passes): a
    run holding one is an offline bound, not a schedule a server could follow."""
    return tuple(p.name for p in _stack_policies(stack) if p.capabilities.reads_future)


def reads_logits(stack: Any) -> bool:
    """Whether a stack holds a policy that may read the trace's full router logits."""
    return any(p.capabilities.reads_logits for p in _stack_policies(stack))


def live_policies(kind: str) -> tuple[str, ...]:
    """The policies of `kind` the live runtime can run (their declarations say `live`), by name."""
    return tuple(sorted(name for name, p in REGISTRY[kind].items() if p.capabilities.live))
