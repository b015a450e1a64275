"""`emu workingset TRACE.npz`: per-layer working sets, LRU knees and thrash zones."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..errors import EmuError

#: passes per working-set window (the analysis imports it from here: building the parser needs no numpy or numba)
DEFAULT_WINDOW = 8


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "workingset", help="per-layer working sets, hit-rate knees and thrash zones of a trace",
        description="Per layer: distinct experts over a window of passes, the isolated-LRU hit rate at "
                    "1..E slots with its knee, stable region and thrash point, and the recommended target "
                    "max(TopK, p90 working set) + 1 (definitions: docs/analysis.md).")
    parser.add_argument("trace", metavar="TRACE.npz", help="routing trace")
    parser.add_argument("--window", type=int, default=DEFAULT_WINDOW,
                        help="passes per working-set window (default %(default)s, as the adaptive partition)")
    parser.add_argument("--capacity", action="append", default=[], metavar="CAP",
                        help="say which layers thrash at this capacity: slots per layer (8), a share of all "
                             "experts (25%%), total=N slots or a size (0.6GB, needs --model); totals are "
                             "split evenly over layers; repeat or comma-separate")
    parser.add_argument("--model", help="model preset, for sizes in --capacity (default: the trace's model)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.set_defaults(func=run)
    return parser


def _expert_bytes(name: str | None) -> int | None:
    if not name:
        return None
    from ..models import get_preset

    try:
        return get_preset(name).expert_bytes()
    except EmuError:
        return None


def run(args: argparse.Namespace) -> int:
    from ..trace import RoutingTrace
    from .workingset import analyze, check_capacity, render_json, render_table, slots_per_layer

    trace = RoutingTrace.load(args.trace)
    report = analyze(trace, args.window, source=str(args.trace))
    if args.model:
        from ..models import get_preset

        expert_bytes: int | None = get_preset(args.model).expert_bytes()
    else:
        expert_bytes = _expert_bytes(trace.model)
    specs = [s for text in args.capacity for s in text.split(",") if s.strip()]
    checks = tuple(check_capacity(report, s.strip(), slots_per_layer(s, trace.n_layers, report.n_experts,
                                                                       expert_bytes)) for s in specs)
    import attrs

    report = attrs.evolve(report, capacities=checks)
    from ..tables import format_for

    print(render_json(report) if args.json else render_table(report, format_for(sys.stdout)))
    return 0
