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


class _Unusual(Exception):
    """A value `dumps_indented`'s fast path leaves to `json.dumps` (a subclass, a non-string key, ...)."""


_encode_str = json.encoder.encode_basestring_ascii  # the C function json.dumps itself uses (ensure_ascii)
_float_repr = float.__repr__
_int_repr = int.__repr__
_FLOAT_WORDS = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}  # json's words for what repr spells so


def _scalar(o: Any) -> str | None:
    """JSON text of a str, float, int, bool or None (exact types), as json.dumps writes it; None otherwise."""
    t = type(o)
    if t is float:
        s = _float_repr(o)
        return _FLOAT_WORDS.get(s, s)
    if t is str:
        return _encode_str(o)
    if t is int:
        return _int_repr(o)
    if o is None:
        return "null"
    if o is True:
        return "true"
    if o is False:
        return "false"
    return None


_SCALARS = frozenset((str, float, int, bool, type(None)))


def _flat_encoder(inner: str) -> Any:
    """json's C encoder writing items apart by `,` and `inner` (a newline and an indent): a container whose
    items are all scalars comes out as the indented text, less the newline after its opening bracket and the
    one before its closing one. (With an indent, json.dumps itself never uses the C encoder.)"""
    return json.encoder.c_make_encoder(None, None, _encode_str, None, ": ", "," + inner, False, False, True)


def dumps_indented(obj: Any, indent: int) -> str:
    """`json.dumps(obj, indent=indent)`, the same text, faster: with an indent, Python's json encodes in pure
    Python through nested generators, which took most of the time `emu run` spends writing its records. The fast
    path takes the types a run record holds (dict with str keys, list, tuple, str, int, float, bool, None: exact
    types); anything else (a subclass, a non-string key, a cycle) goes to `json.dumps`, which gives its own text
    or its own error."""
    out: list[str] = []
    append = out.append
    flat: dict[int, Any] = {}

    def container(o: Any, level: int) -> None:
        t = type(o)
        inner = "\n" + " " * (indent * (level + 1))
        sep = "," + inner
        if t is dict:
            if not o:
                append("{}")
                return
            if json.encoder.c_make_encoder is not None and all(type(k) is str for k in o) \
                    and all(type(v) in _SCALARS for v in o.values()):
                if level not in flat:
                    flat[level] = _flat_encoder(inner)
                text = "".join(flat[level](o, 0))
                append("{" + inner + text[1:-1] + "\n" + " " * (indent * level) + "}")
                return
            lead = "{" + inner
            for key, value in o.items():
                if type(key) is not str:
                    raise _Unusual
                text = _scalar(value)
                if text is not None:
                    append(lead + _encode_str(key) + ": " + text)
                else:
                    append(lead + _encode_str(key) + ": ")
                    container(value, level + 1)
                lead = sep
            append("\n" + " " * (indent * level) + "}")
        elif t is list or t is tuple:
            if not o:
                append("[]")
                return
            if json.encoder.c_make_encoder is not None and all(type(v) in _SCALARS for v in o):
                if level not in flat:
                    flat[level] = _flat_encoder(inner)
                text = "".join(flat[level](o, 0))
                append("[" + inner + text[1:-1] + "\n" + " " * (indent * level) + "]")
                return
            lead = "[" + inner
            for value in o:
                text = _scalar(value)
                if text is not None:
                    append(lead + text)
                else:
                    append(lead)
                    container(value, level + 1)
                lead = sep
            append("\n" + " " * (indent * level) + "]")
        else:
            raise _Unusual

    try:
        text = _scalar(obj)
        if text is not None:
            return text
        container(obj, 0)
    except (_Unusual, RecursionError):
        return json.dumps(obj, indent=indent)
    return "".join(out)
