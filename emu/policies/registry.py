"""Every policy, by kind and name. Adding a policy: write its module, add one line here."""

from __future__ import annotations

from ..errors import EmuError
from .api import KINDS, Policy
from .eviction import lru
from .miss import fetch
from .partition import global_pool
from .prefetch import none
from .routing import standard

_ALL: tuple[Policy, ...] = (
    lru.POLICY,
    fetch.POLICY,
    none.POLICY,
    standard.POLICY,
    global_pool.POLICY,
)

REGISTRY: dict[str, dict[str, Policy]] = {kind: {} for kind in KINDS}
for _policy in _ALL:
    REGISTRY[_policy.kind][_policy.name] = _policy


def get_policy(kind: str, name: str, *, file: str | None = None) -> Policy:
    try:
        return REGISTRY[kind][name]
    except KeyError:
        raise EmuError(f"unknown {kind} policy {name!r}; expected one of {sorted(REGISTRY[kind])}",
                       file=file, key=f"policy.{'eviction' if kind == 'eviction' else kind}") from None
