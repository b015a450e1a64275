"""One error type for bad input, so the CLI can print one clear line instead of a traceback."""

from __future__ import annotations


class EmuError(Exception):
    """Bad input: names where (file, key) and what was expected."""

    def __init__(self, message: str, *, file: str | None = None, key: str | None = None) -> None:
        self.file = file
        self.key = key
        self.detail = message
        where = ": ".join(part for part in (file, key) if part)
        super().__init__(f"{where}: {message}" if where else message)


class EmuWarning(UserWarning):
    """A scenario that runs but is likely not what the user meant (e.g. the thrash zone)."""
