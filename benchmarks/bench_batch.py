"""How does the fast engine's cost per access move with the decode batch?

Runs OLMoE-1B-7B synthetic decode (seed 7) at batch 1, 4, 8 and 32, LRU with next-layer prefetch and without,
the cache 25 % of the expert bytes, profile h100-provisional, on about `--accesses` accesses each (a batch's
layer counts its distinct experts once). Prints CPU seconds of the event loop (the minimum of `--repeats` runs
in one process), accesses per CPU second, and copies per access. docs/fast_engine.md ("Batches") holds a run.

    python benchmarks/bench_batch.py [--accesses 6400000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing
sys.path.insert(0, str(ROOT / "benchmarks"))

BATCHES = (1, 4, 8, 32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--accesses", type=int, default=6_400_000, help="token-slot accesses per run (before merging)")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    import bench_engines

    from emu.engines.fast.engine import run_fast, warm_up

    warm_up()
    model = bench_engines._model("olmoe-1b-7b")
    tokens = args.accesses // (model.n_moe_layers * model.top_k)
    print(f"load average {os.getloadavg()[0]:.2f}; {tokens:,} tokens a run, minimum of {args.repeats}")
    print("| batch | stack | accesses | CPU s | M accesses/s | copies / access |")
    print("|---:|---|---:|---:|---:|---:|")
    for batch in BATCHES:
        trace = bench_engines._trace(model, tokens, batch)
        for prefetch in ("next-layer", "none"):
            inputs = bench_engines._inputs_for(model, trace, 0.25, "lru", prefetch)
            best = min((bench_engines._timed(run_fast, inputs) for _ in range(args.repeats)),
                       key=lambda r: r["cpu_s"])
            print(f"| {batch} | lru+{prefetch} | {best['accesses']:,} | {best['cpu_s']:.3f} | "
                  f"{best['accesses'] / best['cpu_s'] / 1e6:.2f} | {best['copies'] / best['accesses']:.3f} |",
                  flush=True)
    print(f"load average {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main()
