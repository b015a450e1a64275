"""What do the copy engine and the compute stream do during a live run's decode steps? OLMoE-1B-7B (forced
synthetic routing, as in the validation matrix) or Mixtral-8x7B's first 8 layers (real routing), lru, at
the given cache fractions and prefetch policies, a few decode steps under torch.profiler (CUDA activity
from CUPTI). Needs a GPU.

    python experiments/trace_live_run.py [--model olmoe|mixtral] [--steps 8] [--run 5:none --run 25:next-layer]
                                        [--out DIR]

Prints per configuration and decode step: the step's wall time, the host-to-device copies (count, mean
duration, the copy engine's busy time and its idle gaps inside the step), the compute stream's busy time,
and the host's time blocked in device syncs (routing readbacks, the sampling sync). With `--out`, writes
each configuration's chrome trace (gzipped) for a closer look.
"""

from __future__ import annotations

import argparse
import gzip
import itertools
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing


def _union(spans: list[tuple[float, float]]) -> float:
    total, end = 0.0, -1e300
    for a, b in sorted(spans):
        if b <= end:
            continue
        total += b - max(a, end)
        end = b
    return total


def summarize(events: list[dict[str, Any]], steps: list[tuple[float, float]]) -> list[dict[str, float]]:
    """Per step window (us, as the trace's clock): copies, copy engine busy and gaps, compute busy, syncs."""
    h2d = [(e["ts"], e["ts"] + e["dur"]) for e in events
           if e.get("cat") == "gpu_memcpy" and "HtoD" in e.get("name", "")]
    kernels = [(e["ts"], e["ts"] + e["dur"]) for e in events if e.get("cat") == "kernel"]
    syncs = [(e["ts"], e["ts"] + e["dur"]) for e in events if e.get("cat") == "cuda_runtime"
             and e.get("name", "") in ("cudaStreamSynchronize", "cudaMemcpyAsync", "cudaDeviceSynchronize",
                                        "cudaEventSynchronize") and e.get("dur", 0) > 20]
    launches = [e["dur"] for e in events if e.get("cat") == "cuda_runtime" and e.get("name") == "cudaLaunchKernel"]
    out = []
    for a, b in steps:
        cs = sorted((x, y) for x, y in h2d if a <= x < b)
        gaps = [cs[i + 1][0] - cs[i][1] for i in range(len(cs) - 1) if cs[i + 1][0] > cs[i][1]]
        out.append({
            "step_ms": (b - a) / 1e3, "copies": len(cs),
            "copy_mean_us": statistics.fmean(y - x for x, y in cs) if cs else 0.0,
            "copy_busy_ms": _union(cs) / 1e3,
            "copy_max_ms": max((y - x for x, y in cs), default=0.0) / 1e3,
            "copy_gaps_ms": sum(gaps) / 1e3, "copy_gaps_over_50us": sum(1 for g in gaps if g > 50),
            "gap_max_ms": max(gaps, default=0.0) / 1e3,
            "first_copy_ms": (cs[0][0] - a) / 1e3 if cs else 0.0,
            "after_last_copy_ms": (b - cs[-1][1]) / 1e3 if cs else 0.0,
            "compute_busy_ms": _union([(x, y) for x, y in kernels if a <= x < b]) / 1e3,
            "host_sync_ms": sum(min(y, b) - x for x, y in syncs if a <= x < b) / 1e3,
        })
    out_launch = statistics.fmean(launches) if launches else 0.0
    for row in out:
        row["launch_mean_us"] = out_launch
    return out


def _config(text: str) -> tuple[float, str]:
    pct, _, prefetch = text.partition(":")
    try:
        return float(pct) / 100, prefetch or "none"
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected PCT:PREFETCH (5:none), got {text!r}") from None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=("olmoe", "mixtral"), default="olmoe")
    p.add_argument("--steps", type=int, default=8, help="decode steps traced per configuration")
    p.add_argument("--run", action="append", type=_config, default=None, metavar="PCT:PREFETCH",
                   help="a cache percentage and prefetch policy (repeatable; default 5:none 5:next-layer "
                        "100:next-layer)")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--smoke", action="store_true", help="a tiny model on the CPU (checks the script, measures nothing)")
    args = p.parse_args(argv)
    import torch
    from torch.profiler import ProfilerActivity, profile

    from experiments.live_olmoe import build_olmoe
    from live.matrix import reconfigure, slots_for
    from live.runner import Between, run_live

    t0 = time.time()
    built = build_olmoe("trace_live_run", args.smoke, args.model)
    if built is None:
        return 2
    dev, work, model, runtime = built.device, built.work, built.model, built.runtime
    device = dev.type
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    first = 10 if not args.smoke else 1
    for frac, pf in args.run or ((0.05, "none"), (0.05, "next-layer"), (1.0, "next-layer")):
        reconfigure(runtime, slots_for(frac, work.n_keys), "lru", "eager", pf)
        prof = profile(activities=activities)
        marks: list[float] = []

        copied: list[int] = []  # the runtime's copies so far, before each step

        def between(step: int, prof: Any = prof, marks: list[float] = marks, copied: list[int] = copied) -> None:
            if device == "cuda":
                torch.cuda.synchronize()
            copied.append(runtime.stats().copies)
            if step == first:
                prof.start()
            if first <= step <= first + args.steps:
                with torch.profiler.record_function(f"emu_step_{step}"):  # a marker on the trace's own clock
                    marks.append(time.perf_counter())
            if step == first + args.steps:
                prof.stop()

        res = run_live(model, work.plans, vocab=work.shape.vocab, device=dev, runtime=runtime, force=work.force,
                       warmup_passes=3, rehearse=device == "cuda", preload=frac == 1.0, between=Between(between, 1))
        path = Path("/tmp") / f"trace_{int(frac * 100)}_{pf}.json"
        prof.export_chrome_trace(str(path))
        trace = json.loads(path.read_text())
        events = [e for e in trace.get("traceEvents", []) if e.get("ph") == "X"]
        # the step windows on the trace's clock, between the markers `between` left (after a device sync)
        ts = sorted(e["ts"] for e in events if str(e.get("name", "")).startswith("emu_step_"))
        steps = list(itertools.pairwise(ts))
        rows = summarize(events, steps)
        print(f"\n{int(frac * 100)}% {pf}: decode {res.decode_tok_s:.2f} tok/s, copies {res.stats.copies} "
              f"[{time.time() - t0:.0f}s]")
        print("decode steps ms: " + " ".join(f"{t * 1e3:.1f}" for t in res.decode_s))
        print("traced steps start (host monotonic clock, s): " + " ".join(f"{t:.3f}" for t in marks))
        print("copies per step: " + " ".join(str(b - a) for a, b in itertools.pairwise(copied)))
        keys = list(rows[0]) if rows else []
        print(" ".join(f"{k:>18s}" for k in keys))
        for row in rows:
            print(" ".join(f"{row[k]:18.3f}" for k in keys))
        if rows:
            print("mean " + " ".join(f"{k}={statistics.fmean(r[k] for r in rows):.3f}" for k in keys))
        if args.out is not None:
            args.out.mkdir(parents=True, exist_ok=True)
            with gzip.open(args.out / f"trace_{int(frac * 100)}_{pf.replace('-', '_')}.json.gz", "wt") as f:
                json.dump({"traceEvents": events, "steps_us": steps}, f)
    runtime.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
