"""`emu plot`: knee curves, per-layer collisions, speed vs capacity and the Pareto scatter as PNG/SVG."""

from __future__ import annotations

import argparse
import sys
from typing import Any

#: the plot kinds and file formats (emu.plot imports them from here: building the parser needs no matplotlib)
KINDS = ("knee", "collisions", "speed", "pareto")
FORMATS = ("png", "svg")


def _csv_list(choices: tuple[str, ...]) -> Any:
    def parse(text: str) -> list[str]:
        values = [v.strip() for v in text.split(",") if v.strip()]
        bad = [v for v in values if v not in choices]
        if bad or not values:
            raise argparse.ArgumentTypeError(f"expected a comma-separated subset of {','.join(choices)}, got {text!r}")
        return values
    return parse


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "plot", help="plots from a sweep CSV or run JSONs (needs matplotlib)",
        description="Hit rate vs capacity per stack with knees, collision misses per layer, tok/s and TTFT vs "
                    "capacity, and the speed/quality Pareto scatter, as PNG and SVG.")
    parser.add_argument("sources", nargs="+", metavar="SOURCE",
                        help="sweep .csv, run .json files, or a sweep output directory")
    parser.add_argument("--out", default="plots", help="output directory (default %(default)s)")
    parser.add_argument("--kind", type=_csv_list(KINDS), default=list(KINDS),
                        help=f"which plots (default {','.join(KINDS)})")
    parser.add_argument("--format", type=_csv_list(FORMATS), default=list(FORMATS),
                        help="png, svg or both (default both)")
    parser.add_argument("--where", action="append", default=[], metavar="COLUMN=VALUE",
                        help="keep only rows with this CSV column value, e.g. --where bandwidth=profile")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from .errors import EmuError
    from .plot import filter_rows, load_rows, make_plots

    if not args.out.strip():
        raise EmuError("expected a directory path, got an empty one", key="--out")
    rows = filter_rows(load_rows(args.sources), args.where)
    for path in make_plots(rows, args.out, args.kind, args.format):
        print(f"wrote {path}", file=sys.stderr)
    return 0
