"""A first `emu run` after an install (issue 21: the bundled scenario within 20 s on a 2-core machine): wall and CPU
seconds of fresh `python -m emu.cli run NAME` processes, each from an empty folder, with an empty numba cache
(cold) and then with the cache the cold run left (warm), beside the load average.

    python benchmarks/bench_cold_start.py [--runs 1] [--scenario olmoe-1b-7b_h100_5pct] [--smoke]

`--smoke` (the test suite's): one warm run with numba's own cache, no cold run and no verdict.

CPU seconds are user + sys of the process and of its children (a cold run compiles the fast core in a child
process while the parent compiles the stack's hooks and the trace generator). On a shared machine the wall
time depends on the other work: say the load with every figure.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET_S = 20.0


def timed_run(scenario: str, cache_dir: str) -> tuple[float, float]:
    """(wall s, CPU s) of one `emu run` in a fresh process from an empty folder, with `cache_dir` as numba's cache."""
    env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    with tempfile.TemporaryDirectory() as work:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "emu.cli", "run", scenario, "--quiet"], cwd=work, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, check=False)
        wall = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"emu run {scenario} failed ({done.returncode}): {done.stderr[-800:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=1, help="cold runs, each with its own empty cache (default 1)")
    parser.add_argument("--scenario", default="olmoe-1b-7b_h100_5pct", help="a bundled scenario's name or a path")
    parser.add_argument("--smoke", action="store_true", help="one run with numba's own cache (no cold run)")
    args = parser.parse_args(argv)
    if args.smoke:
        wall, cpu = timed_run(args.scenario, os.environ.get("NUMBA_CACHE_DIR", ""))
        print(f"warm (numba's own cache): {wall:.1f} s wall, {cpu:.1f} CPU s")
        return 0
    print(f"# emu run {args.scenario}: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at the start")
    print(f"{'run':<6} {'wall s':>7} {'CPU s':>7} {'load':>6}")
    cold = []
    for _ in range(args.runs):
        with tempfile.TemporaryDirectory() as cache:
            wall, cpu = timed_run(args.scenario, cache)
            cold.append(wall)
            print(f"{'cold':<6} {wall:7.1f} {cpu:7.1f} {os.getloadavg()[0]:6.2f}", flush=True)
            wall, cpu = timed_run(args.scenario, cache)
            print(f"{'warm':<6} {wall:7.1f} {cpu:7.1f} {os.getloadavg()[0]:6.2f}", flush=True)
    median = statistics.median(cold)
    verdict = "meets" if median <= TARGET_S else "MISSES"
    print(f"cold first run median {median:.1f} s wall {verdict} the {TARGET_S:.0f} s target "
          f"(load average {os.getloadavg()[0]:.2f}: other work on the machine adds to the wall time)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
