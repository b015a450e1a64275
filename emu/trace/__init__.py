"""Routing traces: the schema, importers, synthetic generators and summaries."""

from .formats import FORMATS, detect_format, import_trace
from .inspect import TraceSummary, summarize
from .jsonl import import_jsonl
from .routing_trace import PHASE_DECODE, PHASE_PREFILL, RoutingTrace
from .synthetic import SyntheticParams, generate

__all__ = ["FORMATS", "PHASE_DECODE", "PHASE_PREFILL", "RoutingTrace", "SyntheticParams", "TraceSummary",
           "detect_format", "generate", "import_jsonl", "import_trace", "summarize"]
