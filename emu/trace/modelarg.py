"""`--model` of the trace tools: a preset name, or a TOML file describing a model as scenarios do."""

from __future__ import annotations

import sys
from pathlib import Path

from ..errors import EmuError
from ..models import ModelSpec, get_preset, model_from_dict

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def load_model(value: str, *, key: str = "--model") -> ModelSpec:
    """A preset (`qwen3-30b-a3b`) or a TOML file: a scenario's `model` (a preset name or an inline table) or
    a file whose top level is that table (`name`, `n_moe_layers`, ..., or `preset` plus overrides)."""
    path = Path(value)
    if path.suffix != ".toml":
        try:
            return get_preset(value)
        except EmuError as err:
            raise EmuError(f"{err.detail}, or a model TOML file", key=key) from None
    if not path.is_file():
        raise EmuError("model file not found", file=value, key=key)
    try:
        data = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError, OSError) as err:
        raise EmuError(f"not a readable TOML file ({err})", file=value, key=key) from None
    table = data.get("model", data)
    if isinstance(table, str):
        try:
            return get_preset(table)
        except EmuError as err:
            raise EmuError(err.detail, file=value, key="model") from None
    if not isinstance(table, dict):
        raise EmuError("expected a preset name or a table", file=value, key="model")
    return model_from_dict(table, file=value)
