"""The hooks a policy implements, per kind: their names, what they are told and what they return.

Every hook is a numba function of its kind's signature below, declared with `@hook(SIG)`: it is compiled
(or loaded from numba's cache) with that signature when a stack first holds it (`compiled`), so a run
compiles only its own stack's hooks, and the shared core takes the stack as first-class functions: one
compiled core serves every stack. A hook compiled eagerly (`@njit(SIG, cache=True)`) is accepted too. A hook
gets its own state `ps` (a `PolicyState`), the cache state `cs`, the trace view `tv` and the time `t`.

| kind | hook | arguments | returns |
| --- | --- | --- | --- |
| eviction | `victim` | `incoming`: the key that needs room | a key that `helpers.is_evictable` accepts, or -1 |
| eviction | `on_event` | `ev` (`EV_*`), `key` (for `EV_PASS`: the pass) | 0 |
| prefetch | `prefetch` | `p`, `layer`: the gate of layer `layer` in pass p | n: keys written to `cs.pf_buf[:n]` |
| miss | `on_miss` | `entry`: index into the current layer's `cs.cur_*` | `encode_miss(MISS_*, arg)` |
| routing | `route` | `p`, `layer` | n: entries written to `cs.cur_key/cur_tokens/cur_mass` |
| partition | `partition` | `p`, `layer` | 0; sets `cs.layer_floor` / `cs.layer_cap` before the gate |

Eviction events, in the order the core raises them: `EV_PASS` at a pass start; at a gate `EV_ACCESS` for a
hit (or the substitute a miss policy chose), `EV_MISS` for a key that is neither resident nor in flight,
before the miss policy acts (only to a policy that declares `Capabilities(miss_events=True)`: the others
are spared a call on every miss); `EV_INSERT` when a copy takes a slot (`cs.copy_prio[key]` says demand or
prefetch); `EV_EVICT` when a key leaves.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from numba import float64, int64, njit
from numba.core.types import FunctionType

from .layout import CS_T, PS_T, TV_T

# eviction events
EV_ACCESS = 0
EV_INSERT = 1
EV_EVICT = 2
EV_PASS = 3
EV_MISS = 4

# miss actions: the low 4 bits the action, the rest its argument (a precision index or a substitute key)
MISS_FETCH = 0
MISS_DROP = 1
MISS_SUBSTITUTE = 2
MISS_CPU = 3

VICTIM_SIG = int64(PS_T, CS_T, TV_T, int64, float64)
EVENT_SIG = int64(PS_T, CS_T, TV_T, int64, int64, float64)
PREFETCH_SIG = int64(PS_T, CS_T, TV_T, int64, int64, float64)
MISS_SIG = int64(PS_T, CS_T, TV_T, int64, float64)
ROUTE_SIG = int64(PS_T, CS_T, TV_T, int64, int64, float64)
PARTITION_SIG = int64(PS_T, CS_T, TV_T, int64, int64, float64)

KINDS = ("eviction", "prefetch", "miss", "routing", "partition")

#: each kind's hooks, in the order the stack holds them
HOOKS: dict[str, tuple[tuple[str, object], ...]] = {
    "eviction": (("victim", VICTIM_SIG), ("on_event", EVENT_SIG)),
    "prefetch": (("prefetch", PREFETCH_SIG),),
    "miss": (("on_miss", MISS_SIG),),
    "routing": (("route", ROUTE_SIG),),
    "partition": (("partition", PARTITION_SIG),),
}


def hook_type(sig: object) -> FunctionType:
    return FunctionType(sig)


def hook(sig: object, *, nrt: bool = False) -> Callable[[Callable[..., Any]], Any]:
    """Declare a policy hook of signature `sig` (a kind's `*_SIG`), compiled when a stack first holds it.
    `nrt`: the hook allocates (numba's runtime on; the hooks of the hot path do not)."""

    def declare(fn: Callable[..., Any]) -> Any:
        dispatcher = njit(cache=True, _nrt=nrt)(fn)
        dispatcher.hook_signature = sig
        return dispatcher

    return declare


def declared_signature(dispatcher: Any) -> object | None:
    """The signature a hook was declared with (`hook`), or the one it was compiled with eagerly."""
    sig = getattr(dispatcher, "hook_signature", None)
    if sig is not None:
        return sig
    signatures = getattr(dispatcher, "signatures", None) or ()
    return signatures[0] if len(signatures) == 1 else None


def compiled(dispatcher: Any, sig: object) -> Any:
    """The hook compiled with `sig` (compiled now, or loaded from numba's cache, if it was not yet)."""
    if tuple(sig.args) not in [tuple(s) for s in dispatcher.signatures]:  # type: ignore[attr-defined]
        dispatcher.compile(sig)
    return dispatcher


@njit(cache=True, _nrt=False)
def encode_miss(action: int, arg: int) -> int:
    return action | (arg << 4)
