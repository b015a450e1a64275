"""The fast engine alone on the 1M-token OLMoE trace of `bench_engines.py` (LRU + next-layer and LRU
alone), minimum CPU seconds of `--repeats` runs in one process after a warm-up: for a second machine's
figure (e.g. the GPU host's CPU) without the SimPy slice and the cold-compile rows. `--model
deepseek-v3-shape` runs `bench_engines.py`'s DeepSeek-V3 shape instead. It ends with the process's peak RSS
against issue 22's bound at 1M tokens (400 MiB for OLMoE, 1 GiB for the DeepSeek-V3 shape).

    python benchmarks/bench_fast_1m.py [--tokens 1000000] [--repeats 2] [--model deepseek-v3-shape]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

#: issue 22's bound on a 1M-token run's peak RSS, per model
RSS_BOUND_MIB = {"olmoe-1b-7b": 400, "deepseek-v3-shape": 1024}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--tokens", type=int, default=1_000_000)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--model", choices=sorted(RSS_BOUND_MIB), default="olmoe-1b-7b")
    args = p.parse_args()
    from bench_engines import _inputs, _rss_mib

    from emu.engines.fast.engine import run_fast, warm_up
    from emu.kernel.layout import ST

    t0 = time.perf_counter()
    warm_up()
    cpu = platform.processor() or platform.machine()
    with open("/proc/cpuinfo") as f:
        model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    print(f"# {model}, {os.cpu_count()} CPUs; import + warm-up {time.perf_counter() - t0:.1f} s", flush=True)
    for prefetch in ("next-layer", "none"):
        inputs, gen_s = _inputs(args.tokens, 0.25, "lru", prefetch, args.model)
        best = float("inf")
        for _ in range(args.repeats):
            c0 = time.process_time()
            cs, _end, _timings = run_fast(inputs)
            best = min(best, time.process_time() - c0)
        accesses = int(cs.stats_i[ST.ACCESSES].sum())  # from the run: a mask over the trace would double the peak
        del cs
        print(f"fast lru+{prefetch}, {args.model}, {args.tokens:,} tokens: {best:.2f} CPU s (min of {args.repeats}), "
              f"{accesses / best / 1e6:.2f} M accesses/s, trace generation {gen_s:.1f} s", flush=True)
        del inputs  # the next trace is not generated beside this one: the peak is one run's
    rss = _rss_mib()
    bound = RSS_BOUND_MIB[args.model]
    print(f"peak RSS {rss:.0f} MiB (issue 22: <= {bound} MiB at 1,000,000 tokens"
          f"{'' if args.tokens == 1_000_000 else f'; this run {args.tokens:,}'}): "
          f"{'met' if rss <= bound else 'not met'}", flush=True)


if __name__ == "__main__":
    main()
