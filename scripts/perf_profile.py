"""Where a policy stack's run goes, by numba function: the fast engine under Linux `perf`, with a perf map.

Numba's compiled code has no symbols for perf, and code loaded from numba's cache has none at all. This script
compiles afresh (it points NUMBA_CACHE_DIR at an empty folder, so run it as a script, not imported), writes
/tmp/perf-<pid>.map from every dispatcher the process holds (each function of each overload's final module at
its address, sized to the next), then runs the synthetic OLMoE trace of `benchmarks/bench_engines.py` over and
over while `perf record -p` samples it, and prints `perf report`'s top symbols.

    python scripts/perf_profile.py [--eviction lru] [--prefetch next-layer] [--batch 1] [--tokens 20000]
                                   [--seconds 12] [--top 12] [--model olmoe-1b-7b]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _write_perf_map() -> int:
    """/tmp/perf-<pid>.map for every function numba compiled in this process; returns how many."""
    import gc

    from numba.core.registry import CPUDispatcher

    entries: set[tuple[int, str]] = set()
    for obj in gc.get_objects():
        if not isinstance(obj, CPUDispatcher):
            continue
        for cres in obj.overloads.values():
            library = cres.library
            module = getattr(library, "_final_module", None)
            if module is None:
                continue
            for fn in module.functions:
                if fn.is_declaration:
                    continue
                address = library.get_pointer_to_function(fn.name)
                if address:
                    entries.add((address, fn.name))
    ordered = sorted(entries)
    with open(f"/tmp/perf-{os.getpid()}.map", "w") as f:
        for k, (address, name) in enumerate(ordered):
            size = min(ordered[k + 1][0] - address if k + 1 < len(ordered) else 4096, 1 << 20)
            f.write(f"{address:x} {size:x} {name[:150]}\n")
    return len(ordered)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--eviction", default="lru")
    p.add_argument("--prefetch", default="next-layer")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--model", default="olmoe-1b-7b", help="a preset, or deepseek-v3-shape (bench_engines' wide model)")
    p.add_argument("--tokens", type=int, default=20_000)
    p.add_argument("--seconds", type=float, default=12.0, help="how long perf samples")
    p.add_argument("--top", type=int, default=12, help="how many symbols to print")
    args = p.parse_args()
    if shutil.which("perf") is None:
        print("perf_profile: Linux `perf` is not on PATH", file=sys.stderr)
        return 2
    cache = tempfile.mkdtemp(prefix="emu-perf-nb-")
    os.environ["NUMBA_CACHE_DIR"] = cache  # before numba loads: cached code would carry no symbols
    sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

    import bench_engines

    from emu.engines.fast.engine import run_fast

    inputs, _gen_s = bench_engines._inputs(args.tokens, 0.25, args.eviction, args.prefetch, args.model,
                                           batch=args.batch)
    run_fast(inputs)  # compiles everything the run needs
    n = _write_perf_map()
    data = Path(cache) / "perf.data"
    recorder = subprocess.Popen(["perf", "record", "-q", "-F", "2000", "-p", str(os.getpid()), "-o", str(data)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.monotonic()
    runs = 0
    while time.monotonic() - t0 < args.seconds:
        run_fast(inputs)
        runs += 1
    recorder.terminate()
    recorder.wait()
    report = subprocess.run(["perf", "report", "-i", str(data), "--no-children", "--sort", "symbol", "--stdio"],
                            capture_output=True, text=True).stdout
    rows = [ln for ln in report.splitlines() if ln.strip() and not ln.startswith("#")]
    print(f"# {args.model}, {args.eviction} + {args.prefetch}, batch {args.batch}, {args.tokens:,} tokens: "
          f"{runs} runs sampled, {n} numba functions mapped")
    for row in rows[: args.top]:
        print(row.rstrip()[:140])
    shutil.rmtree(cache, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
