"""The kernel interface every policy implements, and the spec a policy module registers.

A policy is one small module: a `Policy` value (name, kind, parameters, `init` that builds its state) and
numba kernels with the fixed signatures below. Fixed signatures let the shared core take kernels as
first-class functions, so one compiled (and cached) core serves every policy stack, in both engines.

Kernels (all `@njit(SIG, cache=True)`):
Every kernel has the signature `(ps, cs, tv, a, b, t) -> int` (ps: its own state, cs: the cache state,
tv: the trace, t: now):
- eviction: `victim(a=in_layer) -> key | -1` chooses among keys that `core.is_evictable` accepts;
  `event(a=ev, b=key)` is told of EV_ACCESS, EV_INSERT, EV_EVICT and EV_PASS (b = pass).
- prefetch: `prefetch(a=p, b=l) -> n` writes up to n keys into `cs.pf_buf` at layer l's gate.
- miss: `miss(a=i) -> action` for entry i of the current layer (`core.encode_miss(action, arg)`).
- routing: `route(a=p, b=l) -> n` fills the current layer's entries (`cs.cur_key/tokens/mass`).
- partition: `partition(a=p, b=l)` sets `cs.layer_floor` and `cs.layer_cap` before the gate.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import attrs
import numpy as np
from numba import float64, int64
from numba.core.types import FunctionType

from ..engines.state import CS_T, PS_T, TV_T
from ..errors import EmuError

# eviction events
EV_ACCESS = 0
EV_INSERT = 1
EV_EVICT = 2
EV_PASS = 3

# miss actions: low 4 bits the action, the rest its argument (precision index or substitute key)
MISS_FETCH = 0
MISS_DROP = 1
MISS_SUBSTITUTE = 2
MISS_CPU = 3

#: One signature for every kernel, `(ps, cs, tv, a, b, t) -> int`, so a stack is one typed list of
#: first-class functions that crosses from Python to numba in microseconds:
#: victim(in_layer, -) -> key | -1; event(ev, key) -> 0; prefetch(p, l) -> n; miss(i, -) -> action;
#: route(p, l) -> n; partition(p, l) -> 0.
KERNEL_SIG = int64(PS_T, CS_T, TV_T, int64, int64, float64)
KERNEL_T = FunctionType(KERNEL_SIG)

KINDS = ("eviction", "prefetch", "miss", "routing", "partition")


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
class Policy:
    """A registered policy: its kernels, parameters and state builder."""

    name: str
    kind: str
    kernels: tuple[Any, ...]
    init: Callable[[PolicyContext, dict[str, float]], Any]
    params: dict[str, Param] = attrs.field(factory=dict)
    doc: str = ""
    needs_scores: bool = False

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
