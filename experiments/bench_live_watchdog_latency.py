"""How long the prefetch watchdog leaves the copy engine idle: from a copy landing to the next submit.

A fake engine whose copies land when told (`land`); the caller polls with short sleeps, so the GIL is
free as it mostly is while the forward pass runs torch calls (the watchdog's drain, while the forward
thread is away). `--forward`: how much the watchdog costs a forward thread that pumps at its checkpoints
and blocks in a device sync per layer, against a clocked engine (event-loop iterations, submissions per
thread, wall time over the floor). Usage: `python experiments/bench_live_watchdog_latency.py [--forward]`.
"""

from __future__ import annotations

import asyncio.base_events
import collections
import statistics
import sys
import threading
import time

from live.watchdog import PrefetchWatchdog


class Engine:
    def __init__(self) -> None:
        self.cv = threading.Condition()
        self.busy = False
        self.submitted: list[float] = []

    def submit(self, job: object) -> None:
        with self.cv:
            self.busy = True
            self.submitted.append(time.perf_counter())

    def idle(self) -> bool:
        return not self.busy

    def wait_idle(self) -> None:
        with self.cv:
            self.cv.wait_for(lambda: not self.busy)

    def land(self) -> None:
        with self.cv:
            self.busy = False
            self.cv.notify_all()


def main(n: int = 400) -> None:
    eng = Engine()
    wd = PrefetchWatchdog(eng)
    wd.start()
    wd.demand("demand")
    for key in range(n):
        wd.enqueue(key, key)
    time.sleep(0.05)
    gaps = []
    for _ in range(n):
        before = len(eng.submitted)
        t = time.perf_counter()
        eng.land()
        while len(eng.submitted) == before:
            time.sleep(0.00002)
        gaps.append(eng.submitted[-1] - t)
        time.sleep(0.0005)
    wd.stop()
    gaps.sort()
    print(f"copy landed -> next prefetch submitted: median {statistics.median(gaps) * 1e6:.0f} us, "
          f"p90 {gaps[int(0.9 * len(gaps))] * 1e6:.0f} us, max {gaps[-1] * 1e6:.0f} us over {n} copies")


class ClockedEngine:
    """Each copy keeps the engine busy for `copy_s` after the previous one, as a copy stream would."""

    def __init__(self, copy_s: float) -> None:
        self.copy_s, self.until = copy_s, 0.0

    def submit(self, job: object) -> None:
        self.until = max(time.perf_counter(), self.until) + self.copy_s

    def idle(self) -> bool:
        return time.perf_counter() >= self.until

    def wait_idle(self) -> None:
        left = self.until - time.perf_counter()
        if left > 0:
            time.sleep(left)


def _spin(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def forward(copy_s: float, layers: int = 400, launch_s: float = 100e-6, sync_s: float = 1.5e-3) -> None:
    """Per layer: a gate (3 demand copies, 4 prefetches), 8 expert launches with a checkpoint after each,
    then a blocking readback (`away`)."""
    counts: collections.Counter[str] = collections.Counter()
    run_once = asyncio.base_events.BaseEventLoop._run_once  # type: ignore[attr-defined]

    def counted(loop: object) -> None:
        counts["loop_iterations"] += 1
        run_once(loop)

    asyncio.base_events.BaseEventLoop._run_once = counted  # type: ignore[attr-defined]
    wd = PrefetchWatchdog(ClockedEngine(copy_s))
    pump = wd.pump

    def counted_pump() -> int:
        n = pump()
        counts["submitted_by_forward" if threading.current_thread() is threading.main_thread()
               else "submitted_by_watchdog"] += n
        return n

    wd.pump = counted_pump  # type: ignore[method-assign]
    wd.start()
    key = 0
    t0 = time.perf_counter()
    for _ in range(layers):
        with wd.lock:
            wd.pump()
            for _ in range(3):
                wd.demand("demand")
            for _ in range(4):
                key += 1
                wd.enqueue(key, key)
        for _ in range(8):
            _spin(launch_s)
            wd.pump()
        wd.away()
        time.sleep(sync_s)
        wd.present()
    wall = time.perf_counter() - t0
    wd.away()
    while len(wd):
        time.sleep(0.001)
    wd.stop()
    asyncio.base_events.BaseEventLoop._run_once = run_once  # type: ignore[attr-defined]
    floor = layers * (8 * launch_s + sync_s)
    print(f"copies of {copy_s * 1e6:.0f} us: forward wall {wall * 1e3:.0f} ms, {(wall - floor) * 1e3:.0f} ms over "
          f"the floor, {key} prefetches, {dict(counts)}")


if __name__ == "__main__":
    if "--forward" in sys.argv[1:]:
        forward(300e-6)
        forward(60e-6)
    else:
        main()
