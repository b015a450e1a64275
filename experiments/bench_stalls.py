"""Does the machine stall? For `--seconds`, back-to-back expert-sized host-to-device copies on one stream,
each timed by CUDA events, while a second process spins on the host clock and notes every gap over
`--host-gap-ms`. Prints the copies' duration and gap distribution, the slow copies and wide gaps with their
time, and the host stalls with theirs, on one clock (the host's monotonic clock; the copies' times are
anchored to it at their first event: `calibrate.transfers.stream_copies`, the loop `emu calibrate` times the
link's sustained rate with). Needs a GPU (`--smoke`: the host side only).

    python experiments/bench_stalls.py [--seconds 20] [--mb 352] [--host-gap-ms 1]

Why: the Mixtral validation runs are copy-bound and match the emulator step by step except for a few
steps 20-60 ms slower, at other steps in every run; this says whether such stalls are the copy engine's,
the host's, or neither's.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing


def spin(seconds: float, gap_s: float, out: mp.Queue) -> None:  # type: ignore[type-arg]
    """Spin on the monotonic clock; every gap wider than `gap_s` is a stall (the process was not running)."""
    stalls = []
    end = time.perf_counter() + seconds
    last = time.perf_counter()
    n = 0
    while last < end:
        now = time.perf_counter()
        if now - last > gap_s:
            stalls.append((last, now - last))
        last = now
        n += 1
    out.put((stalls, n))


def copies(seconds: float, nbytes: int) -> list[tuple[float, float, float]]:
    """(start on the host clock, duration, gap before it) of each copy, in seconds."""
    import torch

    from calibrate.transfers import stream_copies

    host = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
    dev = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    stream = torch.cuda.Stream()
    dev.copy_(host)  # warm
    torch.cuda.synchronize()
    t0, starts, ends = stream_copies(torch, stream, lambda i: dev.copy_(host, non_blocking=True), seconds)
    gaps = [0.0] + [b - a for a, b in zip(ends, starts[1:])]
    return [(t0 + a, b - a, g) for a, b, g in zip(starts, ends, gaps)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--mb", type=float, default=352.3, help="bytes per copy, in MB (Mixtral's expert: 352.3)")
    p.add_argument("--host-gap-ms", type=float, default=1.0)
    p.add_argument("--smoke", action="store_true", help="the host side only, briefly (no GPU needed)")
    p.add_argument("--host-only", action="store_true",
                   help="only the spinning process, its stalls on the absolute clock (beside another benchmark)")
    args = p.parse_args(argv)
    seconds = 0.5 if args.smoke else args.seconds
    if args.host_only:
        q0: mp.Queue = mp.Queue()  # type: ignore[type-arg]
        spin(seconds, args.host_gap_ms / 1e3, q0)
        stalls, spins = q0.get()
        print(f"host: {spins} clock reads, {len(stalls)} stalls over {args.host_gap_ms} ms")
        for at, s in stalls:
            print(f"  host stall at {at:.3f} s (monotonic clock): {s * 1e3:7.2f} ms")
        return 0
    q: mp.Queue = mp.get_context("spawn").Queue()  # type: ignore[type-arg]
    proc = mp.get_context("spawn").Process(target=spin, args=(seconds + 0.5, args.host_gap_ms / 1e3, q))
    proc.start()
    time.sleep(0.25)
    rows: list[tuple[float, float, float]] = []
    if not args.smoke:
        import torch

        if not torch.cuda.is_available():
            print("bench_stalls: needs a CUDA GPU (or --smoke)", file=sys.stderr)
            proc.terminate()
            return 2
        rows = copies(seconds, int(args.mb * 1e6))
    stalls, spins = q.get()
    proc.join()
    t0 = rows[0][0] if rows else (stalls[0][0] if stalls else 0.0)
    print(f"host: {spins} clock reads, {len(stalls)} stalls over {args.host_gap_ms} ms, "
          f"{sum(s for _, s in stalls) * 1e3:.1f} ms in all")
    for at, s in stalls:
        print(f"  host stall at {at - t0:8.3f} s: {s * 1e3:7.2f} ms")
    if rows:
        dur = [d for _, d, _ in rows]
        gaps = [g for _, _, g in rows[1:]]
        med = statistics.median(dur)
        print(f"copies: {len(rows)} of {args.mb:.1f} MB; duration median {med * 1e3:.3f} ms "
              f"({args.mb / 1e3 / med:.2f} GB/s), p99 {sorted(dur)[int(0.99 * len(dur))] * 1e3:.3f} ms, "
              f"max {max(dur) * 1e3:.3f} ms; gap median {statistics.median(gaps) * 1e6:.1f} us, "
              f"max {max(gaps) * 1e3:.3f} ms")
        slow = [(at, d, g) for at, d, g in rows if d > 1.1 * med or g > 0.1 * med]
        print(f"  slow copies or wide gaps (>10% of a copy): {len(slow)}, "
              f"{sum(max(d - med, 0) + g for _, d, g in slow) * 1e3:.1f} ms lost in {seconds:.0f} s")
        for at, d, g in slow[:40]:
            print(f"  copy at {at - t0:8.3f} s: {d * 1e3:7.3f} ms, gap before {g * 1e3:7.3f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
