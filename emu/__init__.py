"""moe-emu: a calibrated discrete-event emulator of Mixture-of-Experts expert offloading."""

from __future__ import annotations

import subprocess
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

try:
    __version__ = version("moe-emu")
except PackageNotFoundError:  # a checkout on sys.path without an install
    __version__ = "0+unknown"


@lru_cache(maxsize=1)
def git_revision() -> str | None:
    """The commit of the source tree this package runs from (a checkout or an editable install), else None."""
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
