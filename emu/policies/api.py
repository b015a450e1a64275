"""What a policy module declares: its hooks, parameters, state builder and capabilities; and `register`.

A policy is one module: numba hooks with its kind's signatures (emu/kernel/hooks.py), an `init` that builds
its `PolicyState` (emu/kernel/layout.py), and one `register(Policy(...))` line. The registry finds the
modules of emu/policies/<kind>/ by themselves and loads out-of-tree packages through the entry point group
`moe_emu.policies`, so adding a policy touches no other file. `emu policies`, scenario validation and the
live runtime's allow-lists all read the declarations.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import attrs
import numpy as np

from ..errors import EmuError
from ..kernel.hooks import HOOKS, KINDS
from ..kernel.layout import Fields


@attrs.frozen
class Param:
    """One numeric parameter of a policy, with its range, so scenario validation can check it."""

    default: float
    lo: float = -math.inf
    hi: float = math.inf
    doc: str = ""
    integer: bool = False

    def check(self, value: Any, where: str, file: str | None) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise EmuError(f"expected a number, got {value!r}", file=file, key=where)
        if self.integer and float(value) != int(value):
            raise EmuError(f"expected an integer, got {value!r}", file=file, key=where)
        if not (self.lo <= value <= self.hi):
            raise EmuError(f"expected a value in [{self.lo}, {self.hi}], got {value!r}", file=file, key=where)
        return float(value)


@attrs.frozen
class PolicyContext:
    """What a policy's `init` may look at: the model, the capacity and the whole trace (for oracles)."""

    n_layers: int
    n_experts: int
    top_k: int
    capacity_bytes: int
    expert_bytes: int
    prec_bytes: np.ndarray
    trace: Any  # TraceView
    seed: int
    #: precision names in the core's order (index 0 = the model's own), for degraded fetches
    precisions: tuple[str, ...] = ()
    #: the engine's Timing arrays (copy_s, expert and CPU curves), for policies that weigh time (cpu miss)
    timing: Any = None


@attrs.frozen
class Capabilities:
    """What a policy reads and where it can run. The engines run every registered policy; the live runtime
    only those whose `live` is true, which a policy reading the future (`reads_future`) can never be."""

    #: reads the trace's gate scores (a trace without them is refused)
    needs_scores: bool = False
    #: may read the trace's full router logits: the engines are given them (a float32 copy of the trace's
    #: largest array) only for a stack holding such a policy
    reads_logits: bool = False
    #: reads routing the runtime cannot know at the gate (later layers or passes): an emulator-only bound
    reads_future: bool = False
    #: the live runtime runs it (it reads only what the runtime keeps at the gate)
    live: bool = False
    #: reads or sets the per-layer floors and caps (a partition policy, or one that honours them)
    partition_aware: bool = False
    #: an eviction policy whose `on_event` is told EV_MISS (the others are spared that call on every miss)
    miss_events: bool = False

    def __attrs_post_init__(self) -> None:
        if self.live and self.reads_future:
            raise ValueError("a policy that reads the future cannot run live")


def _check_hooks(policy: Policy, attribute: Any, hooks: dict[str, Any]) -> None:
    expected = HOOKS.get(policy.kind)
    if expected is None:
        raise ValueError(f"policy {policy.name!r}: kind {policy.kind!r} is not one of {list(KINDS)}")
    names = [name for name, _sig in expected]
    if sorted(hooks) != sorted(names):
        raise ValueError(f"{policy.kind} policy {policy.name!r} declares hooks {sorted(hooks)}; expected {names}")
    for name, sig in expected:
        dispatcher = hooks[name]
        declared = getattr(dispatcher, "hook_signature", None)
        signatures = [tuple(s) for s in getattr(dispatcher, "signatures", None) or ()]
        if not (declared is not None and tuple(declared.args) == tuple(sig.args)) and tuple(sig.args) not in signatures:
            raise ValueError(f"{policy.kind} policy {policy.name!r}: hook {name!r} must be declared with "
                             f"emu.kernel.hooks' signature {sig} (`@hook(SIG)`, or compiled with it)")


@attrs.frozen
class Policy:
    """A registered policy: its hooks (by name, see `kernel.hooks.HOOKS`), parameters and state builder."""

    name: str
    kind: str
    hooks: dict[str, Any] = attrs.field(validator=_check_hooks)
    init: Callable[[PolicyContext, dict[str, float]], Any]
    params: dict[str, Param] = attrs.field(factory=dict)
    doc: str = ""
    capabilities: Capabilities = Capabilities()
    #: the module that declared it (set by `register`), so errors and listings can name it
    module: str = ""

    @property
    def needs_scores(self) -> bool:
        return self.capabilities.needs_scores

    def resolve_params(self, given: dict[str, Any], where: str, file: str | None) -> dict[str, float]:
        out = {}
        for key in given:
            if key not in self.params:
                expected = sorted(self.params) or "no parameters"
                raise EmuError(f"unknown parameter of {self.kind} policy {self.name!r}; expected {expected}",
                               file=file, key=f"{where}.{key}")
        for key, spec in self.params.items():
            out[key] = spec.check(given[key], f"{where}.{key}", file) if key in given else spec.default
        return out


#: every registered policy, by kind and name
REGISTRY: dict[str, dict[str, Policy]] = {kind: {} for kind in KINDS}


def register(policy: Policy, module: str | None = None) -> Policy:
    """Add `policy` to the registry (a policy module's last line: `POLICY = register(Policy(...))`)."""
    import inspect

    if module is None:
        frame = inspect.currentframe()
        caller = frame.f_back if frame is not None else None
        module = caller.f_globals.get("__name__", "") if caller is not None else ""
    known = REGISTRY[policy.kind].get(policy.name)
    if known is not None and known.module != module:
        raise EmuError(f"{policy.kind} policy {policy.name!r} is registered twice: by {known.module} and by {module}",
                       key="policy")
    policy = attrs.evolve(policy, module=module)
    REGISTRY[policy.kind][policy.name] = policy
    return policy


def param_values(names: type[Fields], params: dict[str, float]) -> tuple[float, ...]:
    """A policy's resolved parameters in the order of its `Fields` enum (`P.DECAY` reads `params["decay"]`),
    for `PolicyState.p`."""
    return tuple(float(params[member.name.lower()]) for member in names)
