"""One error type for bad input, so the CLI can print one clear line instead of a traceback."""

from __future__ import annotations


class EmuError(Exception):
    """Bad input: names where (file, key) and what was expected."""

    def __init__(self, message: str, *, file: str | None = None, key: str | None = None) -> None:
        self.file = file
        self.key = key
        self.detail = message
        where = ": ".join(one_line(part, MAX_PART) for part in (file, key) if part)
        text = one_line(message, MAX_DETAIL)
        super().__init__(f"{where}: {text}" if where else text)


#: the longest file name or key, and the longest message, an error line shows (a value the user wrote is quoted in
#: the message, and a value can be megabytes long)
MAX_PART = 300
MAX_DETAIL = 600
_CONTROL = {c: f"\\x{c:02x}" for c in [*range(32), 127]}
_CONTROL.update({ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t"})


def one_line(text: str, limit: int = MAX_DETAIL) -> str:
    """`text` on one line (control characters escaped) and at most about `limit` characters: a long one keeps its
    start and its end (where a message says what it got) around a marker of what was cut."""
    text = str(text).translate(_CONTROL)
    if len(text) <= limit:
        return text
    head, tail = limit * 2 // 3, limit // 3
    return f"{text[:head]}[... {len(text) - head - tail:,} characters ...]{text[-tail:]}"


class EmuWarning(UserWarning):
    """A scenario that runs but is likely not what the user meant (e.g. the thrash zone)."""
