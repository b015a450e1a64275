"""`emu sweep SWEEP.toml`: run a grid of scenarios in parallel, write CSV/Parquet, print the Pareto front."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any


def default_jobs() -> int:
    """Worker processes of a sweep by default: one per CPU (here so that building the parser does not import
    the engines)."""
    return max(1, (os.cpu_count() or 1))


def _jobs(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "sweep", help="run a grid of scenarios (capacity x bandwidth x stacks x models x traces)",
        description="Run every point of a sweep file's grid in parallel; write <name>.csv, <name>.parquet "
                    "(with pyarrow) and runs/*.json; print the Pareto front of speed against quality loss "
                    "(schema: docs/analysis.md).")
    parser.add_argument("sweep", metavar="SWEEP.toml", help="sweep file")
    parser.add_argument("--jobs", "-j", type=_jobs, default=default_jobs(),
                        help="worker processes (default: CPU count %(default)s; 1 runs in this process)")
    parser.add_argument("--executor", metavar="tcp://HOST:PORT",
                        help="Dask distributed scheduler to run on instead of local processes (needs dask "
                             "distributed and the same files on every worker)")
    parser.add_argument("--out", help="output directory (default: the sweep's `out`, else runs/sweeps/<name>)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar, no list of files written")
    parser.add_argument("--format", choices=("table", "json", "csv"), default="table",
                        help="stdout: the Pareto front (default), or every point's row as JSON or CSV")
    parser.add_argument("--resume", action="store_true",
                        help="reuse the points already finished under the output folder (each record is written as "
                             "its point finishes) whose inputs, files and moe-emu version are unchanged")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    import io

    from .cli import _check_out_dir, _os_reason
    from .errors import EmuError
    from .sweep import (
        ROW_FIELDS,
        Progress,
        grid_points,
        load_sweep,
        pareto_front,
        pareto_table,
        run_sweep,
        write_outputs,
    )
    from .tables import render

    if args.out is not None and not args.out.strip():
        raise EmuError("expected a directory path, got an empty one", key="--out")
    spec = load_sweep(args.sweep)
    n = len(grid_points(spec))
    out = Path(args.out or spec.out or Path("runs") / "sweeps" / spec.name)
    file, key = (None, "--out") if args.out else (spec.path, "out") if spec.out else (None, "--out")
    _check_out_dir(str(out), file, key)  # a bad output place is found before the runs, not after them
    _check_out_dir(str(out / "runs"), file, key)
    progress = Progress(n, stream=io.StringIO() if args.quiet else sys.stderr, label="sweep", unit="points")
    try:
        rows, records = run_sweep(spec, jobs=args.jobs, address=args.executor, progress=progress, out=out,
                                  resume=args.resume)
    finally:
        progress.close()
    try:
        written = write_outputs(spec, rows, out)  # the records went to out/runs as their points finished
    except OSError as err:
        raise EmuError(f"cannot write the sweep's results under {out}: {_os_reason(err)}", file=file,
                       key=key) from None
    if not args.quiet:
        print(f"wrote {written['csv']} and {len(records)} run JSONs under {out / 'runs'}", file=sys.stderr)
        if written["parquet"] is None:
            print("note: pyarrow is not installed; skipped Parquet (install the 'sweep' extra: pip install "
                  "'moe-emu[sweep]')", file=sys.stderr)
        else:
            print(f"wrote {written['parquet']}", file=sys.stderr)
    if args.format == "json":
        print(json.dumps([{k: r.get(k) for k in ROW_FIELDS} for r in rows], indent=1))
    elif args.format == "csv":
        sys.stdout.write(written["csv"].read_text())
    else:
        print(f"Pareto front (decode tok/s up, TTFT down, lost routing mass down) per "
              f"{', '.join(spec.pareto_by)}:")
        render(*pareto_table(pareto_front(rows, spec.pareto_by), spec.pareto_by))
    return 0
