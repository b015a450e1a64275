"""The fast engine's cost per access under each registered eviction policy, at batch 1 and 8.

OLMoE-1B-7B synthetic decode (seed 7; `--model deepseek-v3-shape` for bench_engines' wide model, 58 layers of
256 experts), the cache 25 % of the expert bytes, profile h100-provisional, next-layer prefetch and none;
`--tokens` tokens a run (a batch's layer counts its distinct experts once). Prints accesses per CPU second of the
event loop (the minimum of `--repeats` runs in one process), the time against LRU's in the same row, and copies
per access. docs/fast_engine.md ("Eviction policies") holds runs.

    python benchmarks/bench_policies.py [--tokens 20000] [--repeats 2] [--policies lru,lfu,...]
                                        [--model olmoe-1b-7b] [--batches 1,8]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing
sys.path.insert(0, str(ROOT / "benchmarks"))


def main() -> None:
    from emu.policies.registry import REGISTRY

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=20_000)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--policies", default=",".join(sorted(REGISTRY["eviction"])),
                    help="comma-separated eviction policies (default: every registered one)")
    ap.add_argument("--model", default="olmoe-1b-7b", help="a preset, or deepseek-v3-shape")
    ap.add_argument("--batches", default="1,8", help="comma-separated batch sizes")
    args = ap.parse_args()
    batches = [int(b) for b in args.batches.split(",")]

    import bench_engines

    from emu.engines.fast.engine import run_fast

    model = bench_engines._model(args.model)
    traces = {b: bench_engines._trace(model, args.tokens, b) for b in batches}

    def measure(eviction: str, batch: int, prefetch: str) -> dict:
        inputs = bench_engines._inputs_for(model, traces[batch], 0.25, eviction, prefetch)
        return min((bench_engines._timed(run_fast, inputs) for _ in range(args.repeats)), key=lambda r: r["cpu_s"])

    print(f"load average {os.getloadavg()[0]:.2f}; {args.model}, {args.tokens:,} tokens a run, minimum of "
          f"{args.repeats}")
    print("| eviction | batch | prefetch | M accesses/s | time / LRU's | copies / access |")
    print("|---|---:|---|---:|---:|---:|")
    lru = {(b, pf): measure("lru", b, pf) for b in batches for pf in ("next-layer", "none")}
    for name in args.policies.split(","):
        for batch in batches:
            for prefetch in ("next-layer", "none"):
                r = lru[batch, prefetch] if name == "lru" else measure(name, batch, prefetch)
                ratio = r["cpu_s"] / lru[batch, prefetch]["cpu_s"]
                print(f"| {name} | {batch} | {prefetch} | {r['accesses'] / r['cpu_s'] / 1e6:.2f} | {ratio:.2f}x | "
                      f"{r['copies'] / r['accesses']:.3f} |", flush=True)
    print(f"load average {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main()
