"""The scenarios, profiles and traces that ship with moe-emu, and scenarios named by their stem.

In a checkout (or an editable install) they are the repository's `scenarios/` folder; a wheel carries the
same tree as package data under `emu/bundled/` (setup.py copies it at build time), so a scenario's relative
paths to its profiles and traces hold in both. `emu run NAME` runs the bundled scenario whose file stem is
NAME; `emu scenarios` lists them.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from .errors import EmuError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

_HERE = Path(__file__).resolve().parent
_GRID = re.compile(r"^\[grid\]", re.MULTILINE)
_BASE = re.compile(r"^base\s*=", re.MULTILINE)


def root() -> Path | None:
    """The bundled tree: the wheel's `emu/bundled`, else the checkout's `scenarios/`; None when neither."""
    for candidate in (_HERE / "bundled", _HERE.parent / "scenarios"):
        if (candidate / "profiles").is_dir():
            return candidate
    return None


def scenarios() -> dict[str, Path]:
    """Every bundled scenario by stem (sweep definitions excluded: they are not scenarios)."""
    base = root()
    if base is None:
        return {}
    found: dict[str, Path] = {}
    for path in sorted(base.rglob("*.toml")):
        rel = path.relative_to(base).parts
        if rel[0] in ("profiles", "sweeps", "traces", "counts") or _is_sweep(path):
            continue
        found.setdefault(path.stem, path)
    return found


def _is_sweep(path: Path) -> bool:
    """A sweep definition beside scenarios (the reproduction suites scenarios/specmd/ and scenarios/prefetch-study/):
    a file with a `[grid]` table and a top-level `base` (docs/analysis.md). Read as text, not parsed: the listing
    reads every bundled file."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return False
    return _GRID.search(text) is not None and _BASE.search(text) is not None


def describe(path: Path) -> str:
    """A scenario's `name` (its one-line description), or '' when it has none or does not parse."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return ""
    name = data.get("name")
    return name if isinstance(name, str) else ""


def resolve(arg: str) -> str:
    """A scenario argument as a path: the file itself when it exists or looks like a path, else the bundled
    scenario of that stem."""
    path = Path(arg)
    if path.exists() or path.suffix or len(path.parts) > 1:
        return arg
    known = scenarios()
    if arg in known:
        return str(known[arg])
    close = sorted(name for name in known if arg.lower() in name.lower())[:5]
    hint = f"; bundled scenarios like it: {', '.join(close)}" if close else "; `emu scenarios` lists them"
    raise EmuError(f"no scenario file {arg!r} and no bundled scenario of that name{hint}", key="scenario")
