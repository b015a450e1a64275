"""Does the fast engine's cost per access grow with the model's width, its key count, or its experts' size?

Runs LRU + next-layer (the cache a fraction of all expert bytes) on synthetic decode traces of the same number of
accesses for several shapes: OLMoE-1B-7B's, wide and many-layered ones with OLMoE-sized experts, the DeepSeek-V3
shape (58 MoE layers x 256 experts, top-8, its 7168 x 2048 experts), and the DeepSeek-V3 shape again with the
copy link `--fast-link` times faster (the same cache work, almost no prefetch still in flight at its gate). Prints
CPU seconds of the event loop (the minimum of `--repeats` runs in one process), accesses/s, hits, copies and late
hits per access. docs/fast_engine.md ("Where the time goes") holds a run.

    python benchmarks/bench_shapes.py [--accesses 96000000] [--capacity 0.25] [--repeats 3] [--fast-link 10]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing
sys.path.insert(0, str(ROOT / "benchmarks"))

# (label, MoE layers, experts per layer, hidden, expert intermediate); top-8 throughout
SHAPES = (
    ("16 x 64 (OLMoE-1B-7B)", 16, 64, 2048, 1024),
    ("16 x 928, OLMoE-sized experts", 16, 928, 2048, 1024),
    ("64 x 256, OLMoE-sized experts", 64, 256, 2048, 1024),
    ("58 x 256, OLMoE-sized experts", 58, 256, 2048, 1024),
    ("58 x 256 (DeepSeek-V3)", 58, 256, 7168, 2048),
)


def _measure(label: str, layers: int, experts: int, hidden: int, inter: int, args: argparse.Namespace,
             link_scale: float = 1.0) -> str:
    import attrs
    import bench_engines

    import emu.profile
    from emu.engines.fast.engine import run_fast
    from emu.models import ModelSpec

    model = ModelSpec(name=f"shape-{layers}x{experts}", n_moe_layers=layers, n_experts=experts, top_k=8,
                      hidden=hidden, expert_intermediate=inter)
    load = emu.profile.load_profile

    def scaled(path: str) -> object:  # the measured copy table dropped: the link's bandwidth alone, scaled
        p = load(path)
        return attrs.evolve(p, copy=attrs.evolve(p.copy, bw_pinned_Bps=p.copy.bw_pinned_Bps * link_scale,
                                                 table_bytes=(), table_s=()))

    bench_engines._model = lambda _name: model  # type: ignore[assignment]
    if link_scale != 1.0:
        emu.profile.load_profile = scaled  # type: ignore[assignment]
    try:
        inputs, _gen_s = bench_engines._inputs(args.accesses // (layers * 8), args.capacity, "lru", "next-layer")
    finally:
        emu.profile.load_profile = load  # type: ignore[assignment]
    # every run of one input counts the same: the fastest one's counts are the row's
    best = min((bench_engines._timed(run_fast, inputs) for _ in range(args.repeats)), key=lambda r: r["cpu_s"])
    acc = best["accesses"]
    return (f"| {label} | {layers * experts:,} | {best['cpu_s']:.2f} | {acc / best['cpu_s'] / 1e6:.1f} "
            f"| {best['hit_rate']:.3f} | {best['copies'] / acc:.3f} | {best['late_hits'] / acc:.3f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--accesses", type=int, default=96_000_000, help="accesses per shape (tokens x layers x 8)")
    ap.add_argument("--capacity", type=float, default=0.25, help="cache as a fraction of all expert bytes")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--fast-link", type=float, default=10.0, help="the last row's link speed-up")
    args = ap.parse_args()
    if args.accesses < 8 * 64 or args.repeats < 1 or args.fast_link <= 0 or not 0 < args.capacity <= 1:
        ap.error("expected --accesses >= 512, --repeats >= 1, --fast-link > 0 and 0 < --capacity <= 1")
    from emu.engines.fast.engine import warm_up

    warm_up()
    print(f"# bench_shapes: LRU + next-layer, cache {args.capacity:.0%} of expert bytes, {args.accesses:,} accesses "
          f"a shape, profile h100-provisional, minimum CPU s of {args.repeats} runs, load average "
          f"{os.getloadavg()[0]:.2f}")
    print("| shape | keys | CPU s | M accesses/s | hits / access | copies / access | late hits / access |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for shape in SHAPES:
        print(_measure(*shape, args), flush=True)
    label, layers, experts, hidden, inter = SHAPES[-1]
    print(_measure(f"{label}, link {args.fast_link:g}x faster", layers, experts, hidden, inter, args,
                   link_scale=args.fast_link), flush=True)


if __name__ == "__main__":
    main()
