"""Copy time vs size (pinned/pageable, both directions) and copy concurrency.

Every copy runs on a dedicated stream; per-copy device time comes from an event pair around it,
the host time to issue it is kept too (pageable copies block the host for their whole duration).
Successive copies start at rotating offsets in large pools, so neither the host cache nor the
GPU's L2 serves a repeat.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import attrs

from .bench import Bench
from .fit import spread

KiB = 1024
MiB = 1024 * KiB
_ALIGN = 4 * KiB


@attrs.frozen
class CopyPlan:
    sizes: tuple[int, ...]
    repeats: int
    #: a point's repeats are cut so that it moves at most this many bytes (but never below 3)
    bytes_per_point: int
    #: size of each host/device pool the copies rotate through
    pool_bytes: int
    concurrency_bytes: int
    concurrency_copies: int
    concurrency_repeats: int
    matmul_n: int
    #: seconds of back-to-back copies for the link's sustained rate (`measure_sustained`; GPU only)
    sustained_seconds: float = 0.0


def copy_plan(device: str, quick: bool, repeats: int) -> CopyPlan:
    cuda = device.startswith("cuda")
    top = ((64 if quick else 512) if cuda else (1 if quick else 64)) * MiB
    step = 4 if quick else 2
    sizes = []
    size = 4 * KiB
    while size <= top:
        sizes.append(size)
        size *= step
    if sizes[-1] != top:
        sizes.append(top)
    return CopyPlan(sizes=tuple(sizes), repeats=max(3, 2 * repeats), bytes_per_point=4 * top,
                    pool_bytes=2 * top, concurrency_bytes=16 * MiB if quick else 64 * MiB,
                    concurrency_copies=4 if quick else 8, concurrency_repeats=3 if quick else 5,
                    matmul_n=4096 if quick else 8192, sustained_seconds=(2.0 if quick else 10.0) if cuda else 0.0)


def _filled(pool: Any, chunk: int = 1 * MiB) -> Any:
    """Touch every page with random bytes (one random chunk, tiled: filling 1 GiB at random is slow)."""
    n = pool.numel()
    head = min(chunk, n)
    pool[:head].random_(0, 256)
    reps, rest = divmod(n - head, head)
    if reps:
        pool[head:head + reps * head].view(reps, head).copy_(pool[:head].expand(reps, head))
    if rest:
        pool[n - rest:].copy_(pool[:rest])
    return pool


class Pools:
    """One device pool and one pinned and one pageable host pool, all touched before timing."""

    def __init__(self, bench: Bench, nbytes: int) -> None:
        torch = bench.torch
        self.bench = bench
        self.nbytes = nbytes
        self.device = _filled(torch.empty(nbytes, dtype=torch.uint8, device=bench.device))
        self.pageable = _filled(torch.empty(nbytes, dtype=torch.uint8))
        if bench.is_cuda:
            self.pinned = _filled(torch.empty(nbytes, dtype=torch.uint8, pin_memory=True))
        else:  # no page-locked memory without CUDA: both kinds are plain host memory
            self.pinned = self.pageable

    def view(self, pool: Any, size: int, i: int) -> Any:
        span = self.nbytes - size
        stride = max(size, 1 * MiB)
        offset = (i * stride) % (span + _ALIGN) if span > 0 else 0
        return pool[offset:offset + size]


def _copy_fn(pools: Pools, kind: str, size: int) -> Callable[[int], Any]:
    direction, memory = kind.split("_")
    host = pools.pinned if memory == "pinned" else pools.pageable
    non_blocking = memory == "pinned"

    def fn(i: int) -> None:
        h = pools.view(host, size, i)
        d = pools.view(pools.device, size, i)
        if direction == "h2d":
            d.copy_(h, non_blocking=non_blocking)
        else:
            h.copy_(d, non_blocking=non_blocking)

    return fn


KINDS = ("h2d_pinned", "d2h_pinned", "h2d_pageable", "d2h_pageable")


#: rounds a copy point's samples are spread over, every size and kind in turn within each round: the link has
#: slow spells (about 0.1 s, every second or two, `measure_sustained`) that would otherwise catch every copy of
#: one size and move its median, while spread out they catch a round's worth of each and the median holds
COPY_ROUNDS = 5


def _hold_s(n: int) -> float:
    """The sleep a pinned copy's `n` copies queue behind: long enough for the host to issue them (~30 us each)."""
    return max(1e-3, 3 * n * 30e-6)


def measure_copies(bench: Bench, plan: CopyPlan, pools: Pools, tick: Callable[[str], None],
                   rounds: int = COPY_ROUNDS) -> dict[str, Any]:
    """Per kind and size: per-copy device seconds (events), host issue seconds, and for pinned copies
    the amortized seconds per copy when queued back to back.

    Pinned copies are queued behind a short sleep kernel, so the events time the copy engine alone:
    issuing a copy from Python takes longer than a small copy runs, and an idle stream would start
    the start event before the host had even issued the copy. The pace without the hold is kept
    too (`paced_s`): what a Python loop issuing small copies one by one gets. A point's copies are taken
    in `rounds` rounds, each round going through every kind and size (`COPY_ROUNDS`), so that a slow spell
    of the link moves no point's median.
    """
    stream = bench.new_stream()
    fns = {(kind, size): _copy_fn(pools, kind, size) for kind in KINDS for size in plan.sizes}
    per_round = {size: -(-max(3, min(plan.repeats, plan.bytes_per_point // size)) // rounds) for size in plan.sizes}
    samples: dict[tuple[str, int], list[float]] = {key: [] for key in fns}
    issues: dict[tuple[str, int], list[float]] = {key: [] for key in fns}
    held: dict[tuple[str, int], bool] = {key: True for key in fns}
    for fn in fns.values():
        bench.time_each(fn, 2, stream)  # warm-up
    for r in range(rounds):
        for (kind, size), fn in fns.items():
            n = per_round[size]
            hold = _hold_s(n) if kind.endswith("pinned") else 0.0
            times, issue = bench.time_each(lambda i, fn=fn, at=2 + r * n: fn(at + i), n, stream, hold_s=hold)
            samples[kind, size] += times
            issues[kind, size] += issue
            held[kind, size] = held[kind, size] and bool(bench.last_held)
        tick(f"copies, round {r + 1} of {rounds}")
    out: dict[str, Any] = {}
    for kind in KINDS:
        points = []
        for size in plan.sizes:
            fn, n, times = fns[kind, size], per_round[size], samples[kind, size]
            point: dict[str, Any] = {"bytes": size, "samples_s": times, "issue_s": issues[kind, size],
                                     "median_s": spread(times).median, "rounds": rounds}
            if kind.endswith("pinned"):
                hold = _hold_s(n)
                point["held"] = held[kind, size]
                first = 2 + rounds * n
                point["batched_s"] = bench.time_loop(lambda i, fn=fn, at=first: fn(at + i), n, stream, hold_s=hold)
                point["paced_s"] = bench.time_each(lambda i, fn=fn, at=first + n: fn(at + i), n, stream)[0]
            points.append(point)
        out[kind] = points
    return out


def sustained_ratio(starts_s: list[float], ends_s: list[float]) -> float:
    """A long stream of back-to-back copies: its whole span over its copies' count times their median copy.
    Above 1 where the link has slow spells (on the H100 machines here, spells of ~0.1 s every second or
    two where a copy takes up to twice its time); the emulator's copy time is the median copy's times this."""
    if len(starts_s) != len(ends_s) or len(starts_s) < 3:
        raise ValueError(f"expected matching start and end times of at least 3 copies, got {len(starts_s)} "
                         f"and {len(ends_s)}")
    median = _median([b - a for a, b in zip(starts_s, ends_s)])
    if not median > 0:
        raise ValueError("expected copies of positive duration")
    return (ends_s[-1] - starts_s[0]) / (len(starts_s) * median)


def stream_copies(torch: Any, stream: Any, fn: Callable[[int], Any], seconds: float
                  ) -> tuple[float, list[float], list[float]]:
    """`fn(i)` (a copy) back to back on `stream` for `seconds`, each timed by an event pair (two queued ahead
    at most, so the engine never runs dry). Returns the host's perf_counter time at the first start event
    and every copy's start and end, in seconds from that event."""
    pairs = []
    with torch.cuda.stream(stream):
        t0 = time.perf_counter()
        end = t0 + seconds
        i = 0
        while time.perf_counter() < end:
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record(stream)
            fn(i)
            b.record(stream)
            pairs.append((a, b))
            if len(pairs) > 2:
                pairs[-3][1].synchronize()
            i += 1
    stream.synchronize()
    first = pairs[0][0]
    return t0, [first.elapsed_time(a) / 1e3 for a, _ in pairs], [first.elapsed_time(b) / 1e3 for _, b in pairs]


def measure_sustained(bench: Bench, pools: Pools, size: int, seconds: float) -> dict[str, Any]:
    """Pinned host-to-device copies of `size` back to back for `seconds` (`stream_copies`): the link over
    seconds, not a few copies' median."""
    stream = bench.new_stream()
    fn = _copy_fn(pools, "h2d_pinned", size)
    bench.time_each(fn, 2, stream)  # warm-up
    _, starts, ends = stream_copies(bench.torch, stream, fn, seconds)
    durations = [b - a for a, b in zip(starts, ends)]
    return {"bytes": size, "seconds": ends[-1], "copies": len(starts), "median_s": _median(durations),
            "max_s": max(durations), "ratio": sustained_ratio(starts, ends), "samples_s": durations}


def _concurrent(bench: Bench, jobs: list[tuple[Any, Callable[[int], Any], int]]) -> list[float]:
    """Run jobs (stream, fn, calls) at once from one common start; seconds until each job's end."""
    torch = bench.torch
    bench.sync()
    start = torch.cuda.Event(enable_timing=True)
    start.record(torch.cuda.current_stream(bench.device))
    ends = []
    for stream, _, _ in jobs:
        stream.wait_event(start)
    longest = max(n for _, _, n in jobs)
    for i in range(longest):  # interleave issue so no stream gets a head start
        for stream, fn, n in jobs:
            if i < n:
                with torch.cuda.stream(stream):
                    fn(i)
    for stream, _, _ in jobs:
        end = torch.cuda.Event(enable_timing=True)
        end.record(stream)
        ends.append(end)
    bench.sync()
    return [start.elapsed_time(e) / 1e3 for e in ends]


def _median(values: list[float]) -> float:
    return spread(values).median


def measure_concurrency(bench: Bench, plan: CopyPlan, pools: Pools,
                        tick: Callable[[str], None]) -> dict[str, Any]:
    """Do two H2D streams add bandwidth? Do H2D and D2H overlap? How much do copies slow kernels?"""
    torch = bench.torch
    size, n, reps = plan.concurrency_bytes, plan.concurrency_copies, plan.concurrency_repeats
    half = pools.nbytes // 2
    streams = [bench.new_stream() for _ in range(3)]

    def copier(direction: str, part: int) -> Callable[[int], None]:
        slots = max(1, half // size)

        def fn(i: int) -> None:
            off = part * half + (i % slots) * size
            h = pools.pinned[off:off + size]
            d = pools.device[off:off + size]
            if direction == "h2d":
                d.copy_(h, non_blocking=True)
            else:
                h.copy_(d, non_blocking=True)
        return fn

    def repeat(jobs: list[tuple[Any, Callable[[int], Any], int]]) -> list[list[float]]:
        _concurrent(bench, jobs)  # warm-up
        return [_concurrent(bench, jobs) for _ in range(reps)]

    out: dict[str, Any] = {"copy_bytes": size, "copies_per_stream": n, "repeats": reps}
    one = repeat([(streams[0], copier("h2d", 0), n)])
    t_one = _median([r[0] for r in one])
    two = repeat([(streams[0], copier("h2d", 0), n), (streams[1], copier("h2d", 1), n)])
    t_two = _median([max(r) for r in two])
    bw_one, bw_two = n * size / t_one, 2 * n * size / t_two
    out["h2d_one_stream_Bps"] = bw_one
    out["h2d_two_streams_aggregate_Bps"] = bw_two
    out["h2d_effective_engines"] = bw_two / bw_one
    tick("concurrency: two H2D streams")

    d2h = repeat([(streams[1], copier("d2h", 1), n)])
    t_d2h = _median([r[0] for r in d2h])
    both = repeat([(streams[0], copier("h2d", 0), n), (streams[1], copier("d2h", 1), n)])
    t_both = _median([max(r) for r in both])
    out["d2h_one_stream_Bps"] = n * size / t_d2h
    out["h2d_d2h_serial_s"] = t_one + t_d2h
    out["h2d_d2h_concurrent_s"] = t_both
    #: 2.0 = the two directions fully overlap, 1.0 = they serialize
    out["h2d_d2h_overlap_ratio"] = (t_one + t_d2h) / t_both
    tick("concurrency: H2D + D2H")

    kernels: dict[str, tuple[Callable[[int], Any], int]] = {}
    m = plan.matmul_n
    a = bench.randn(m, m)
    b = bench.randn(m, m)
    kernels["matmul_bf16"] = (lambda i: torch.matmul(a, b), 10)
    big = 256 * MiB
    src = torch.empty(big, dtype=torch.uint8, device=bench.device).random_(0, 256)
    dst = torch.empty_like(src)
    kernels["hbm_copy_256MiB"] = (lambda i: dst.copy_(src), 40)
    out["kernels"] = {}
    for name, (kfn, k) in kernels.items():
        alone = _median([r[0] for r in repeat([(streams[2], kfn, k)])])
        first_alone = alone
        # kernel slowdown: copies outlast the kernel, so every kernel call runs beside a copy
        copies = math.ceil(1.3 * alone * bw_one / size) + 2
        # alternate alone / beside copies, so clock and power drift hits both sides alike
        pairs = [(_concurrent(bench, [(streams[2], kfn, k)])[0],
                  _concurrent(bench, [(streams[2], kfn, k), (streams[0], copier("h2d", 0), copies)])[0])
                 for _ in range(reps + 2)]
        alone = _median([x for x, _ in pairs])
        t_kernel = _median([w for _, w in pairs])
        ratios = [w / a for a, w in pairs]
        # copy slowdown: the kernel outlasts the copies, so every copy runs beside a kernel
        few = max(2, math.floor(0.6 * alone * bw_one / size))
        runs = repeat([(streams[2], kfn, k), (streams[0], copier("h2d", 0), few)])
        t_copies = _median([r[1] for r in runs])
        out["kernels"][name] = {
            "calls": k, "alone_s": alone, "with_h2d_s": t_kernel,
            "kernel_slowdown": _median(ratios), "kernel_slowdown_samples": ratios,
            "first_alone_s": first_alone,
            "h2d_Bps_during_kernel": few * size / t_copies,
            "h2d_slowdown": bw_one / (few * size / t_copies),
        }
        tick(f"concurrency: {name} vs H2D")
    return out
