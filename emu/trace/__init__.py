"""Routing traces: the schema, importers, synthetic generators and summaries."""

from .inspect import TraceSummary, summarize
from .jsonl import import_jsonl
from .routing_trace import PHASE_DECODE, PHASE_PREFILL, RoutingTrace
from .synthetic import SyntheticParams, generate

__all__ = ["PHASE_DECODE", "PHASE_PREFILL", "RoutingTrace", "SyntheticParams", "TraceSummary", "generate",
           "import_jsonl", "summarize"]
