"""Numba's cache keyed on the kernel interface's sources (emu/kernel/cache.py): an edited helper recompiles
every cached function that uses it, where numba alone would load the stale machine code."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from emu.engines import core
from emu.kernel import cache

ROOT = Path(__file__).resolve().parents[1]


def test_engine_and_policy_caches_carry_the_interface_digest():
    from emu.policies.registry import get_policy

    digest = cache.interface_digest()[:16]
    for dispatcher in (core.instant, get_policy("eviction", "lru").hooks["victim"]):
        locator = dispatcher._cache._impl.locator
        assert isinstance(locator, cache.LOCATORS)
        assert locator.get_disambiguator().endswith(digest)


def test_functions_outside_the_tracked_folders_keep_numbas_own_cache():
    from numba import njit

    @njit(cache=True)
    def untracked(x):
        return x + 1

    assert not isinstance(untracked._cache._impl.locator, cache.LOCATORS)


def test_the_digest_follows_the_sources(tmp_path):
    (tmp_path / "a.py").write_text("X = 1\n")
    before = cache.source_digest([tmp_path])
    assert cache.source_digest([tmp_path]) == before
    (tmp_path / "a.py").write_text("X = 2\n")
    assert cache.source_digest([tmp_path]) != before


_PLUGIN_HELPER = """
from numba import njit

@njit(cache=True, inline="always")
def value():
    return {value}
"""

_PLUGIN_HOOK = """
from numba import njit
from .helper import value

@njit(cache=True)
def hook():
    return value()
"""

_RUN = """
import sys
sys.path.insert(0, {root!r})
sys.path.insert(0, {tmp!r})
from emu.kernel import cache
if {track}:
    cache.track({plugin!r})
from plugin.hook import hook
print(hook())
"""


def _run_plugin(tmp: Path, track: bool) -> int:
    code = _RUN.format(root=str(ROOT), tmp=str(tmp), plugin=str(tmp / "plugin"), track=track)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tmp,
                         env={"PATH": "/usr/bin:/bin", "NUMBA_CACHE_DIR": "", "PYTHONDONTWRITEBYTECODE": "1"})
    return int(out.stdout.strip().splitlines()[-1])


def _plugin(tmp: Path, value: int) -> None:
    pkg = tmp / "plugin"
    pkg.mkdir(exist_ok=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "helper.py").write_text(_PLUGIN_HELPER.format(value=value))
    if not (pkg / "hook.py").exists():
        (pkg / "hook.py").write_text(textwrap.dedent(_PLUGIN_HOOK))


def test_an_edited_helper_recompiles_the_hooks_that_inline_it(tmp_path):
    # numba alone: the hook's own file is unchanged, so its cached code (helper inlined: 1) is loaded again
    plain = tmp_path / "plain"
    plain.mkdir()
    _plugin(plain, 1)
    assert _run_plugin(plain, track=False) == 1
    _plugin(plain, 2)
    assert _run_plugin(plain, track=False) == 1  # stale: the reason for the keyed cache
    # tracked: the digest of the package's sources names the cache files, so the edit recompiles the hook
    keyed = tmp_path / "keyed"
    keyed.mkdir()
    _plugin(keyed, 1)
    assert _run_plugin(keyed, track=True) == 1
    _plugin(keyed, 2)
    assert _run_plugin(keyed, track=True) == 2
    assert _run_plugin(keyed, track=True) == 2  # and later runs load that entry


def test_the_live_cache_bridge_caches_carry_the_interface_digest():
    # it inlines the decision layer (emu/engines) from outside the tracked folders: an edit of the interface
    # (a field added to the cache state's scalars) must recompile it, not load its stale code
    from live import cache_bridge

    digest = cache.interface_digest()[:16]
    for dispatcher in (cache_bridge._land, cache_bridge._gate):
        locator = dispatcher._cache._impl.locator
        assert isinstance(locator, cache.LOCATORS)
        assert locator.get_disambiguator().endswith(digest)
