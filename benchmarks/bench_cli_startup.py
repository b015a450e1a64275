"""Start-up time of the `emu` command line (issue 21: `emu --help` under 0.3 s): the median wall time of N fresh
`python -m emu.cli --help` processes (and of the other commands given with --command), beside `python -c pass`
for the interpreter's own start.

    python benchmarks/bench_cli_startup.py [--runs 10] [--command "trace --help"] [--command "live --help"]

What keeps it fast (no numba, matplotlib, torch or policy registry imported to build the parser) is checked by
tests/test_cli_startup.py; the time itself is only measured here.
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET_S = 0.3


def wall_times(argv: list[str], runs: int) -> list[float]:
    """Wall time of `runs` fresh processes running argv (one untimed run first, so .pyc files are written)."""
    subprocess.run(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        done = subprocess.run(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False)
        times.append(time.perf_counter() - t0)
        if done.returncode != 0:
            raise SystemExit(f"{shlex.join(argv)} failed ({done.returncode}): {done.stderr.decode()[-500:]}")
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10, help="fresh processes per command (default %(default)s)")
    parser.add_argument("--command", action="append", default=[], metavar="ARGS",
                        help="also time `emu ARGS` (repeatable; default: --help only)")
    args = parser.parse_args(argv)
    commands = [("python -c pass", [sys.executable, "-c", "pass"]),
                ("emu --help", [sys.executable, "-m", "emu.cli", "--help"])]
    commands += [(f"emu {c}", [sys.executable, "-m", "emu.cli", *shlex.split(c)]) for c in args.command]
    print(f"{'command':<28} {'median s':>9} {'min s':>7} {'max s':>7}  ({args.runs} runs each)")
    medians = {}
    for label, cmd in commands:
        times = wall_times(cmd, args.runs)
        medians[label] = statistics.median(times)
        print(f"{label:<28} {medians[label]:9.3f} {min(times):7.3f} {max(times):7.3f}")
    verdict = "meets" if medians["emu --help"] < TARGET_S else "MISSES"
    print(f"emu --help median {medians['emu --help']:.3f} s {verdict} the {TARGET_S} s target")
    return 0


if __name__ == "__main__":
    sys.exit(main())
