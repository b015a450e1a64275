"""How long a demand copy waits behind queued prefetch copies, by the way they are put on the GPU.

The emulator's copy engine starts a demand copy before every queued (not yet started) prefetch; a single
CUDA copy stream runs copies in submission order, so a demand submitted after a bulk of prefetches waits
for all of them. This measures, on the GPU, the demand copy's latency (from its submission to its end)
when `--prefetches` copies were submitted just before it, timed from the first prefetch's start:

- `one stream`: prefetches and the demand on one stream (the live runtime's bulk hand-over);
- `two streams`: prefetches on one stream, the demand on another of the same priority;
- `two streams, demand high priority`: the demand's stream created with the highest priority.

and, for reference, the latency of the demand alone and of one copy's duration.

    python experiments/bench_copy_streams.py [--mb 12.6] [--prefetches 8] [--repeats 20]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time


def main() -> None:
    import torch

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--mb", type=float, action="append", help="copy size in MB (repeatable; default 12.6, 50)")
    p.add_argument("--prefetches", type=int, default=8)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--delay-us", type=float, default=100.0, help="host wait between the prefetches and the demand")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench_copy_streams needs a CUDA GPU")
    dev = torch.device("cuda")
    lo, hi = torch.cuda.Stream.priority_range() if hasattr(torch.cuda.Stream, "priority_range") else (0, -1)
    out = {"device": torch.cuda.get_device_name(0), "priority_range": [lo, hi], "rows": []}
    print(f"# {out['device']}, stream priorities {lo}..{hi}, {args.prefetches} prefetches then 1 demand, "
          f"host delay {args.delay_us:.0f} us, median of {args.repeats}")
    for mb in args.mb or [12.6, 50.0]:
        n = int(mb * 1e6) // 2
        srcs = [torch.empty(n, dtype=torch.bfloat16).pin_memory() for _ in range(args.prefetches + 1)]
        dsts = [torch.empty(n, dtype=torch.bfloat16, device=dev) for _ in range(args.prefetches + 1)]
        pf_stream = torch.cuda.Stream(dev)
        modes = {
            "demand alone": (None, pf_stream),
            "one stream": (pf_stream, pf_stream),
            "two streams": (pf_stream, torch.cuda.Stream(dev)),
            "two streams, demand high priority": (pf_stream, torch.cuda.Stream(dev, priority=hi)),
        }
        for name, (ps, ds) in modes.items():
            lat, pf_end = [], []
            for _ in range(args.repeats + 2):
                torch.cuda.synchronize()
                if ps is not None:
                    first = torch.cuda.Event(enable_timing=True)
                    first.record(ps)
                    with torch.cuda.stream(ps):
                        for i in range(args.prefetches):
                            dsts[i].copy_(srcs[i], non_blocking=True)
                    last = torch.cuda.Event(enable_timing=True)
                    last.record(ps)
                t0 = time.perf_counter()
                while time.perf_counter() - t0 < args.delay_us * 1e-6:
                    pass
                a = torch.cuda.Event(enable_timing=True)
                b = torch.cuda.Event(enable_timing=True)
                a.record(ds)
                with torch.cuda.stream(ds):
                    dsts[-1].copy_(srcs[-1], non_blocking=True)
                b.record(ds)
                torch.cuda.synchronize()
                # from the first prefetch's start (the demand's own stream event fires only once it runs)
                lat.append((first if ps is not None else a).elapsed_time(b) * 1e3)
                if ps is not None:
                    pf_end.append(first.elapsed_time(last) * 1e3)
            lat, pf_end = lat[2:], pf_end[2:]
            row = {"mb": mb, "mode": name, "demand_end_us": statistics.median(lat),
                   "demand_end_max_us": max(lat),
                   "prefetches_span_us": statistics.median(pf_end) if pf_end else None}
            out["rows"].append(row)
            span = f", prefetches end {row['prefetches_span_us']:.0f} us" if pf_end else ""
            print(f"{mb:6.1f} MB  {name:36s} demand ends at {row['demand_end_us']:8.0f} us "
                  f"(max {row['demand_end_max_us']:.0f}){span}", flush=True)
        del srcs, dsts
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
