"""Time and peak memory to generate 1M-token synthetic traces: OLMoE-1B-7B (16 layers x 64 experts, top-8) and
a DeepSeek-V3-shaped model (58 x 256, top-8).

Each variant runs in a fresh process so its peak RSS is its own; compilation (a small warm-up call, loaded
from numba's cache after the first run) is reported apart from generation. `cpu s` sums every thread's CPU
time; `M entries/cpu s` (routed entries per CPU second, one core's rate) is the figure to compare on a shared
machine, `M entries/s` is wall-clock. `--threads 1` measures one core.

    python benchmarks/bench_trace_gen.py [--tokens N] [--batch-size B] [--threads T] [--shapes olmoe,dsv3]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

VARIANTS = {
    "experts": {},
    "experts+scores": {"with_scores": True},
    "experts+scores+predicted": {"with_scores": True, "predictor_accuracy": 0.9},
}
#: shape name -> (label, variants run for it)
SHAPES = {"olmoe": ("OLMoE-1B-7B 16x64 top-8", tuple(VARIANTS)), "dsv3": ("DeepSeek-V3 shape 58x256 top-8",
                                                                      ("experts",))}


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _model(shape: str) -> object:
    import attrs

    from emu.models import get_preset

    olmoe = get_preset("olmoe-1b-7b")
    if shape == "olmoe":
        return olmoe
    return attrs.evolve(olmoe, name="deepseek-v3-shape", n_moe_layers=58, n_experts=256, top_k=8, hidden=7168,
                        expert_intermediate=2048)


def one(shape: str, variant: str, tokens: int, batch_size: int) -> dict:
    t0 = time.perf_counter()
    import numba

    from emu.trace.synthetic import SyntheticParams, generate

    model = _model(shape)
    params = SyntheticParams(batch_size=batch_size, seed=1, **VARIANTS[variant])
    t1 = time.perf_counter()
    generate(model, params, n_tokens=64)  # compile or load from cache
    t2 = time.perf_counter()
    rss_before = _rss_mib()
    c2 = time.process_time()
    trace = generate(model, params, n_tokens=tokens)
    t3 = time.perf_counter()
    cpu = time.process_time() - c2  # all threads: less sensitive than wall time to other jobs on the box
    parts = (trace.experts, trace.scores, trace.predicted, trace.pass_offsets, trace.pass_phase,
             trace.token_request, trace.token_position)
    arrays = sum(a.nbytes for a in parts if a is not None)
    return {"shape": shape, "variant": variant, "tokens": trace.n_tokens, "entries": int(trace.experts.size),
            "passes": trace.n_passes, "import_s": t1 - t0, "compile_s": t2 - t1, "generate_s": t3 - t2,
            "cpu_s": cpu, "entries_per_s": trace.experts.size / (t3 - t2),
            "entries_per_cpu_s": trace.experts.size / cpu, "array_mib": arrays / 2**20,
            "rss_before_mib": rss_before, "peak_rss_mib": _rss_mib(), "threads": numba.get_num_threads()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=1_000_000)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=None, help="numba threads (default: numba's, all cores)")
    parser.add_argument("--shapes", default="olmoe,dsv3", help="comma-separated: " + ", ".join(SHAPES))
    parser.add_argument("--one", nargs=2, metavar=("SHAPE", "VARIANT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.one[0], args.one[1], args.tokens, args.batch_size)))
        return 0
    shapes = [s.strip() for s in args.shapes.split(",") if s.strip()]
    unknown = [s for s in shapes if s not in SHAPES]
    if unknown:
        parser.error(f"unknown shapes {unknown}; expected some of {sorted(SHAPES)}")
    env = dict(os.environ)
    if args.threads is not None:
        env["NUMBA_NUM_THREADS"] = str(args.threads)
    with open("/proc/loadavg") as f:
        load = f.read().split()[0]
    print(f"synthetic traces, {args.tokens:,} tokens, batch {args.batch_size}, {os.cpu_count()} CPUs, "
          f"load average {load} at the start")
    print(f"{'shape':<32}{'variant':<26}{'compile s':>10}{'gen s':>8}{'cpu s':>8}{'M entries/s':>13}"
          f"{'M entries/cpu s':>17}{'arrays MiB':>12}{'peak RSS MiB':>14}{'threads':>9}")
    for shape in shapes:
        label, variants = SHAPES[shape]
        for variant in variants:
            cmd = [sys.executable, __file__, "--one", shape, variant, "--tokens", str(args.tokens),
                   "--batch-size", str(args.batch_size)]
            out = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if out.returncode:
                print(out.stderr, file=sys.stderr)
                return out.returncode
            r = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"{label:<32}{r['variant']:<26}{r['compile_s']:>10.2f}{r['generate_s']:>8.2f}{r['cpu_s']:>8.2f}"
                  f"{r['entries_per_s'] / 1e6:>13.1f}{r['entries_per_cpu_s'] / 1e6:>17.1f}{r['array_mib']:>12.0f}"
                  f"{r['peak_rss_mib']:>14.0f}{r['threads']:>9}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
