"""Numba cache entries keyed on the kernel interface's sources, so an edited helper never leaves a stale one.

Numba checks a cached function against its own source file only. A policy hook inlines the interface's
helpers (`helpers.is_evictable`, the state layout's enum values, ...) and the core inlines them too, so an
edit of a helper would leave every cached hook and the core compiled against the old one. Here the cache
files of every jitted function defined under a tracked folder (emu/kernel, emu/engines, emu/policies and
any out-of-tree policy package passed to `track`), or elsewhere in this project (the rest of emu/, live/ and
calibrate/: the live runtime's cache bridge inlines the decision layer), carry one digest of all tracked
sources in their names:
after any edit there, every such function looks for files that do not exist yet and compiles afresh (an
index written for other sources is never even opened, so one that names since-moved types cannot break a
run). Numba's own check of the function's file still applies. `install` puts the keyed locators before
numba's own, which stay in charge of every other function; emu/kernel/__init__.py calls it before any
jitted function of the tracked folders is defined. Files for old digests stay behind in __pycache__.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path
from typing import Any

from numba.core import caching

_EMU = Path(__file__).resolve().parents[1]
#: where jitted functions that inline the interface live; the routing trace module holds the phase codes the
#: core compares against
DEFAULT_TRACKED: tuple[Path, ...] = (_EMU / "kernel", _EMU / "engines", _EMU / "policies",
                                     _EMU / "trace" / "routing_trace.py")
#: the default folders, then the out-of-tree policy packages passed to `track`
TRACKED: list[Path] = list(DEFAULT_TRACKED)
#: this project's packages: their jitted functions may inline the interface (live's cache bridge runs the decision
#: layer), so their cache files carry the digest too; their own sources stay out of it (numba checks each
#: function's own file)
PROJECT: tuple[Path, ...] = (_EMU, _EMU.parent / "live", _EMU.parent / "calibrate")


def source_files(roots: list[Path]) -> list[Path]:
    files: list[Path] = []
    for root in roots:
        files.extend([root] if root.is_file() else sorted(root.rglob("*.py")))
    return files


def source_digest(roots: list[Path]) -> str:
    """SHA-256 over the tracked sources' relative names and contents (not their times: a fresh checkout of the
    same sources keeps its caches)."""
    h = hashlib.sha256()
    for path in source_files(roots):
        h.update(path.name.encode())
        h.update(b"\0")
        h.update(path.read_bytes())
        h.update(b"\0")
    return h.hexdigest()


@functools.cache
def _digest(roots: tuple[Path, ...]) -> str:
    return source_digest(list(roots))


def interface_digest() -> str:
    return _digest(tuple(TRACKED))


def is_keyed(py_file: str) -> bool:
    """Do the cache files of the jitted functions defined in `py_file` carry the interface digest?"""
    path = Path(py_file).resolve()
    return any(path == root or root in path.parents for root in (*TRACKED, *PROJECT))


def track(root: str | Path) -> None:
    """Key the caches of the jitted functions under `root` (an out-of-tree policy package) on the interface
    too, and add its sources to the digest. Call it before the package defines its hooks."""
    path = Path(root).resolve()
    if path not in TRACKED:
        TRACKED.append(path)


class _InterfaceKeyed:
    """Cache file names that carry the interface digest, for tracked files only."""

    def get_disambiguator(self) -> str:
        return f"{super().get_disambiguator()}-{interface_digest()[:16]}"  # type: ignore[misc]

    @classmethod
    def from_function(cls, py_func: Any, py_file: str) -> Any:
        if not is_keyed(py_file):
            return None
        return super().from_function(py_func, py_file)  # type: ignore[misc]


class UserProvidedInterfaceLocator(_InterfaceKeyed, caching.UserProvidedCacheLocator):
    pass


class InTreeInterfaceLocator(_InterfaceKeyed, caching.InTreeCacheLocator):
    pass


class UserWideInterfaceLocator(_InterfaceKeyed, caching.UserWideCacheLocator):
    pass


LOCATORS = (UserProvidedInterfaceLocator, InTreeInterfaceLocator, UserWideInterfaceLocator)


def install() -> None:
    """Consult the keyed locators first (in numba's own order: a NUMBA_CACHE_DIR, the source tree, the
    user-wide cache); idempotent."""
    classes = caching.CacheImpl._locator_classes
    if classes[: len(LOCATORS)] != list(LOCATORS):
        classes[:0] = [c for c in LOCATORS if c not in classes]
