"""Does a host-paced forward pass slow down while host-to-device copies stream over PCIe?

A prefetching live run keeps the copy engine busy while the forward thread launches small kernels
(OLMoE decode: ~45-80 ms of Python launches per step against a few ms of GPU work). Kernel launches reach
the GPU over the same PCIe link the copies saturate, and so do the routing readbacks. This times, alone
and while a second stream copies pinned expert-sized chunks back to back:

- `launches`: `--launches` tiny kernels launched from Python, then a device sync (the host_pace probe);
- `readback`: a tiny tensor read back to the host (`.cpu()`, the runtime's per-layer routing readback);
- `mlp`: a decode-sized expert FFN (two bf16 GEMMs of one token) `--launches` times, then a sync.

Each figure is the median of `--repeats`; the copy stream is kept busy for the whole measurement.

    python experiments/bench_copy_interference.py [--mb 12.6] [--launches 200] [--repeats 15]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time


def main() -> None:
    import torch

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mb", type=float, default=12.6, help="size of one copy (OLMoE's expert: 12.6 MB)")
    p.add_argument("--launches", type=int, default=200)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench_copy_interference needs a CUDA GPU")
    dev = torch.device("cuda")
    n = int(args.mb * 1e6) // 2
    host = torch.empty(n, dtype=torch.bfloat16, pin_memory=True)
    slots = [torch.empty(n, dtype=torch.bfloat16, device=dev) for _ in range(2)]
    copy_stream = torch.cuda.Stream()
    x = torch.zeros(1, device=dev)
    w1 = torch.randn(2048, 1024, dtype=torch.bfloat16, device=dev)
    w2 = torch.randn(1024, 1024, dtype=torch.bfloat16, device=dev)
    h = torch.randn(1, 2048, dtype=torch.bfloat16, device=dev)
    small = torch.zeros(16, dtype=torch.int64, device=dev)

    def launches() -> None:
        nonlocal x
        for _ in range(args.launches):
            x = x + 1
        torch.cuda.current_stream().synchronize()  # this stream only: the copies go on

    def readback() -> None:
        for _ in range(args.launches // 10):
            small.add_(1)
            small.cpu()

    def mlp() -> None:
        for _ in range(args.launches // 2):
            torch.nn.functional.linear(torch.nn.functional.linear(h, w1.T), w2)
        torch.cuda.current_stream().synchronize()

    def timed(fn, busy: bool) -> float:
        samples = []
        for _ in range(args.repeats):
            if busy:  # enough copies queued to outlast the measurement
                with torch.cuda.stream(copy_stream):
                    for i in range(64):
                        slots[i % 2].copy_(host, non_blocking=True)
            else:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - t0)
            if busy:
                still = not copy_stream.query()
                copy_stream.synchronize()
                if not still:
                    print(f"  note: the copies ended before the measurement did ({fn.__name__})", flush=True)
        return statistics.median(samples)

    for fn in (launches, readback, mlp):  # warm-up
        fn()
    rows = []
    print(f"# bench_copy_interference: {torch.cuda.get_device_name(0)}, copies of {args.mb} MB pinned, "
          f"{args.launches} launches, median of {args.repeats}")
    print(f"{'work':10s} {'alone ms':>9s} {'copying ms':>11s} {'ratio':>6s}")
    for fn in (launches, readback, mlp):
        alone, busy = timed(fn, False), timed(fn, True)
        alone2 = timed(fn, False)  # again after: the host's pace drifts
        alone = min(alone, alone2)
        rows.append({"work": fn.__name__, "alone_s": alone, "copying_s": busy})
        print(f"{fn.__name__:10s} {alone * 1e3:9.3f} {busy * 1e3:11.3f} {busy / alone:6.2f}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(0), "mb": args.mb, "launches": args.launches,
                       "repeats": args.repeats, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
