"""`emu concentration`: the gate from an imatrix GGUF, a counts JSON or a routing trace."""

from __future__ import annotations

import argparse
import sys
from typing import Any

#: the expert share a gate must cover (the analysis imports it from here: building the parser needs no numpy)
DEFAULT_COVERAGE = 0.9


def _coverage(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text!r}") from None
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text!r}")
    return value


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "concentration",
        help="is a per-expert cache worth it? (routing concentration gate)",
        description="Per-layer routing concentration and the cache_helps verdict, from expert counts.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--imatrix", metavar="FILE.gguf", help="llama.cpp imatrix GGUF (needs gguf)")
    source.add_argument("--counts", metavar="FILE.json", help="L×E counts JSON (docs/concentration.md)")
    source.add_argument("--trace", metavar="FILE.npz", help="routing trace")
    parser.add_argument("--coverage", type=_coverage, default=DEFAULT_COVERAGE,
                        help=f"routing mass the hot experts must capture (default {DEFAULT_COVERAGE})")
    parser.add_argument("--json", action="store_true", help="print the report as JSON instead of a table")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Print the gate; bad input raises EmuError for the CLI to print as one line."""
    from ..errors import EmuError
    from .concentration import gate_from_counts_json, gate_from_imatrix, gate_from_trace, render_json, render_table

    for option, value in (("--imatrix", args.imatrix), ("--counts", args.counts), ("--trace", args.trace)):
        if value is not None and not value.strip():
            raise EmuError(f"expected a file path, got {value!r}", key=option)
    if args.imatrix is not None:
        report = gate_from_imatrix(args.imatrix, args.coverage)
    elif args.counts is not None:
        report = gate_from_counts_json(args.counts, args.coverage)
    else:
        report = gate_from_trace(args.trace, args.coverage)
    from ..tables import format_for

    print(render_json(report) if args.json else render_table(report, format_for(sys.stdout)))
    return 0
