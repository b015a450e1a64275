"""moe-emu: a calibrated discrete-event emulator of Mixture-of-Experts expert offloading."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any


def __getattr__(name: str) -> Any:
    # `__version__` is read from the installed metadata on first use: importlib.metadata costs tens of ms, and
    # every `emu` command (`emu --help` included) imports this package
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            value = version("moe-emu")
        except PackageNotFoundError:  # a checkout on sys.path without an install
            value = "0+unknown"
        globals()["__version__"] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@lru_cache(maxsize=1)
def git_revision() -> str | None:
    """The commit of the source tree this package runs from (a checkout or an editable install), else None."""
    import subprocess

    root = Path(__file__).resolve().parents[1]
    if not (root / ".git").exists():
        return None
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    rev = out.stdout.strip()
    if out.returncode != 0 or not rev:
        return None
    dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True, timeout=5, check=False).stdout.strip()
    return rev + ("-dirty" if dirty else "")
