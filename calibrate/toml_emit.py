"""A small TOML writer used when tomli_w is not installed (the GPU machine has no tomli_w).

Covers what a profile holds: tables, strings, booleans, integers, finite floats and (nested) arrays
of those. Output parses with tomllib to the same data.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from emu.errors import EmuError

_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def _key(key: str) -> str:
    if not isinstance(key, str):
        raise EmuError(f"TOML keys must be strings, got {key!r}", key=str(key))
    return key if _BARE_KEY.match(key) else json.dumps(key)


def _value(value: Any, path: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise EmuError(f"refusing to write non-finite number {value!r}", key=path)
        text = repr(value)
        return text if any(c in text for c in ".eE") else text + ".0"
    if isinstance(value, str):
        return json.dumps(value)  # JSON string escapes are valid TOML basic-string escapes
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_value(v, path) for v in value) + "]"
    if isinstance(value, dict):
        items = ", ".join(f"{_key(k)} = {_value(v, f'{path}.{k}')}" for k, v in value.items())
        return "{ " + items + " }" if items else "{}"
    raise EmuError(f"cannot write {type(value).__name__} to TOML", key=path)


def _emit_table(lines: list[str], table: dict[str, Any], header: list[str]) -> None:
    scalars = {k: v for k, v in table.items() if not isinstance(v, dict)}
    tables = {k: v for k, v in table.items() if isinstance(v, dict)}
    if header and (scalars or not tables):
        lines.append("")
        lines.append("[" + ".".join(_key(h) for h in header) + "]")
    path = ".".join(header)
    for k, v in scalars.items():
        lines.append(f"{_key(k)} = {_value(v, f'{path}.{k}' if path else k)}")
    for k, v in tables.items():
        _emit_table(lines, v, [*header, k])


def dumps(data: dict[str, Any]) -> str:
    lines: list[str] = []
    _emit_table(lines, data, [])
    return "\n".join(lines).lstrip("\n") + "\n"


def dumps_toml(data: dict[str, Any]) -> str:
    """tomli_w when available, else the built-in writer."""
    try:
        import tomli_w
    except ImportError:
        return dumps(data)
    return tomli_w.dumps(data)
