"""How long the prefetch watchdog leaves the copy engine idle: from a copy landing to the next submit.

A fake engine whose copies land when told (`land`); the caller polls with short sleeps, so the GIL is
free as it mostly is while the forward pass runs torch calls. Usage: `python benchmarks/bench_live_watchdog_latency.py`.
"""

from __future__ import annotations

import statistics
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


if __name__ == "__main__":
    main()
