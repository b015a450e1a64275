"""Time and peak memory to generate a 1M-token synthetic OLMoE-1B-7B trace (16 layers x top-8).

Each variant runs in a fresh process so its peak RSS is its own; compilation (a small warm-up call,
loaded from numba's cache after the first run) is reported apart from generation.

    python benchmarks/bench_trace_gen.py [--tokens N] [--batch-size B]
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


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def one(variant: str, tokens: int, batch_size: int) -> dict:
    t0 = time.perf_counter()
    import numba

    from emu.models import get_preset
    from emu.trace.synthetic import SyntheticParams, generate

    model = get_preset("olmoe-1b-7b")
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
    return {"variant": variant, "tokens": trace.n_tokens, "entries": int(trace.experts.size),
            "passes": trace.n_passes, "import_s": t1 - t0, "compile_s": t2 - t1, "generate_s": t3 - t2, "cpu_s": cpu,
            "entries_per_s": trace.experts.size / (t3 - t2), "array_mib": arrays / 2**20,
            "rss_before_mib": rss_before, "peak_rss_mib": _rss_mib(), "threads": numba.get_num_threads()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=1_000_000)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--one", choices=sorted(VARIANTS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.one, args.tokens, args.batch_size)))
        return 0
    print(f"synthetic OLMoE-1B-7B trace, {args.tokens:,} tokens, batch {args.batch_size}, "
          f"{os.cpu_count()} CPUs")
    print(f"{'variant':<26}{'compile s':>10}{'gen s':>8}{'cpu s':>8}{'M entries/s':>13}{'arrays MiB':>12}"
          f"{'peak RSS MiB':>14}{'threads':>9}")
    for variant in VARIANTS:
        cmd = [sys.executable, __file__, "--one", variant, "--tokens", str(args.tokens),
               "--batch-size", str(args.batch_size)]
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode:
            print(out.stderr, file=sys.stderr)
            return out.returncode
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{r['variant']:<26}{r['compile_s']:>10.2f}{r['generate_s']:>8.2f}{r['cpu_s']:>8.2f}"
              f"{r['entries_per_s'] / 1e6:>13.1f}{r['array_mib']:>12.0f}{r['peak_rss_mib']:>14.0f}"
              f"{r['threads']:>9}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
