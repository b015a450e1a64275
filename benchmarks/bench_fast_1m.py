"""The fast engine alone on the 1M-token OLMoE trace of `bench_engines.py` (LRU + next-layer and LRU
alone), minimum CPU seconds of `--repeats` runs in one process after a warm-up: for a second machine's
figure (e.g. the GPU host's CPU) without the SimPy slice and the cold-compile rows.

    python benchmarks/bench_fast_1m.py [--tokens 1000000] [--repeats 2]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--tokens", type=int, default=1_000_000)
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args()
    from bench_engines import _inputs

    from emu.engines.fast.engine import run_fast, warm_up

    t0 = time.perf_counter()
    warm_up()
    cpu = platform.processor() or platform.machine()
    with open("/proc/cpuinfo") as f:
        model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    print(f"# {model}, {os.cpu_count()} CPUs; import + warm-up {time.perf_counter() - t0:.1f} s", flush=True)
    for prefetch in ("next-layer", "none"):
        inputs, _ = _inputs(args.tokens, 0.25, "lru", prefetch)
        accesses = int((inputs.trace.experts >= 0).sum())
        best = float("inf")
        for _ in range(args.repeats):
            c0 = time.process_time()
            run_fast(inputs)
            best = min(best, time.process_time() - c0)
        print(f"fast lru+{prefetch}, {args.tokens:,} tokens: {best:.2f} CPU s (min of {args.repeats}), "
              f"{accesses / best / 1e6:.2f} M accesses/s", flush=True)


if __name__ == "__main__":
    main()
