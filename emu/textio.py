"""Reading text and JSON input so that a file that is not UTF-8 text, or JSON nested too deeply for Python's
parser, is one EmuError naming the file (and the line), never a UnicodeDecodeError or RecursionError."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .errors import EmuError

_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")


def _hint(head: bytes) -> str:
    if head.startswith(_UTF16_BOMS):
        return ", and the file looks like UTF-16 text: save it as UTF-8"
    if b"\x00" in head:
        return ", and the file looks like binary data"
    return ""


def not_utf8(path: str | Path, what: str, *, name: str | None = None) -> EmuError:
    """The EmuError for a file that failed to decode as UTF-8: which line, which byte, and a guess at what
    the file is (UTF-16, binary). Scans the file again, line by line; called only on the error path."""
    name = str(path) if name is None else name
    try:
        with open(path, "rb") as fh:
            head = fh.read(4096)
            fh.seek(0)
            for lineno, raw in enumerate(fh, 1):
                try:
                    raw.decode("utf-8")
                except UnicodeDecodeError as err:
                    return EmuError(f"not UTF-8 text (byte {err.start} of the line{_hint(head)}); expected "
                                    f"{what}", file=f"{name}:{lineno}")
    except OSError as err:
        return EmuError(f"cannot read the file ({err.strerror or err})", file=name)
    return EmuError(f"not UTF-8 text{_hint(head)}; expected {what}", file=name)


def read_text(path: str | Path, what: str, *, name: str | None = None) -> str:
    """The whole file as UTF-8 text."""
    name = str(path) if name is None else name
    try:
        return Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise not_utf8(path, what, name=name) from None
    except OSError as err:
        raise EmuError(f"cannot read the file ({err.strerror or err})", file=name) from None


def loads(text: str, file: str, what: str) -> Any:
    """json.loads, with a syntax error or nesting deeper than the parser can follow as one EmuError."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise EmuError(f"not valid JSON ({err.msg} at line {err.lineno} column {err.colno}); expected {what}",
                       file=file) from None
    except ValueError as err:  # an integer of more digits than int() converts
        raise EmuError(f"not valid JSON ({err}); expected {what}", file=file) from None
    except RecursionError:
        raise EmuError(f"JSON nested too deeply to parse; expected {what}", file=file) from None


def load_toml(path: str | Path, what: str, *, name: str | None = None) -> dict[str, Any]:
    """A TOML file as a dict: not UTF-8, a syntax error or a file that cannot be read is one EmuError naming it."""
    import sys

    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib

    name = str(path) if name is None else name
    text = read_text(path, what, name=name)
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise EmuError(f"not valid TOML ({err}); expected {what}", file=name) from None
    except RecursionError:
        raise EmuError(f"TOML nested too deeply to parse; expected {what}", file=name) from None
