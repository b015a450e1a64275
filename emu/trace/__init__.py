"""Routing traces: the schema, importers, synthetic generators and summaries.

The names below are imported on first use (PEP 562), so that `import emu.trace` (and with it the `emu`
command line's parser) does not pull in numpy and numba: `from emu.trace import RoutingTrace` works as
before and imports only what it names.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .formats import FORMATS, detect_format, import_trace
    from .inspect import TraceSummary, summarize
    from .jsonl import import_jsonl
    from .routing_trace import PHASE_DECODE, PHASE_PREFILL, RoutingTrace
    from .synthetic import SyntheticParams, generate

#: exported name -> the submodule that defines it
_EXPORTS = {
    "FORMATS": "formats", "detect_format": "formats", "import_trace": "formats",
    "TraceSummary": "inspect", "summarize": "inspect",
    "import_jsonl": "jsonl",
    "PHASE_DECODE": "routing_trace", "PHASE_PREFILL": "routing_trace", "RoutingTrace": "routing_trace",
    "SyntheticParams": "synthetic", "generate": "synthetic",
}

__all__ = ["FORMATS", "PHASE_DECODE", "PHASE_PREFILL", "RoutingTrace", "SyntheticParams", "TraceSummary",
           "detect_format", "generate", "import_jsonl", "import_trace", "summarize"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later look-ups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
