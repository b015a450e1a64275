"""The device's own time under a hold: a sample whose hold ran out is taken again with a longer hold."""

from __future__ import annotations

from typing import Any

from calibrate.compute import HOLD_GROWTH, HOLD_RETRIES, MAX_HOLD_S, device_hold_s, round_robin


class HostStalls:
    """A bench whose host needs `stall_s` to queue each held loop for its first `stalls` held loops; a loop is held
    when its hold outlasts the host's queuing (as `Bench.time_loop` decides), and its device seconds per call
    are the device's own time when held, the host's pace when not."""

    is_cuda = True

    def __init__(self, stalls: int, stall_s: float, device_s: float = 1e-4, host_s: float = 5e-4) -> None:
        self.stalls, self.stall_s, self.device_s, self.host_s = stalls, stall_s, device_s, host_s
        self.last_host_s = host_s
        self.last_held = False
        self.holds: list[float] = []

    def time_loop(self, fn: Any, n: int, stream: Any = None, hold_s: float = 0.0) -> float:
        if hold_s <= 0:  # the eager loop: the host's pace
            self.last_host_s, self.last_held = self.host_s, False
            return self.host_s
        self.holds.append(hold_s)
        queued = self.stall_s if self.stalls > 0 else self.host_s * n
        self.stalls -= 1
        self.last_held = queued < 0.8 * hold_s
        return self.device_s if self.last_held else max(self.device_s, queued / n)


def test_a_sample_whose_hold_ran_out_is_taken_again_with_a_longer_hold() -> None:
    bench = HostStalls(stalls=1, stall_s=0.02)  # one host stall of 20 ms: longer than the first hold
    out = round_robin(bench, [("p", lambda i: None)], repeats=3, calls=8, tick=lambda _: None, label="t")
    first = device_hold_s(5e-4, 8)
    assert bench.holds[:2] == [first, first * HOLD_GROWTH]
    assert len(bench.holds) == 4  # one retry, then the two other repeats at the first hold
    assert out["p"]["held"] and out["p"]["device_s"] == [1e-4] * 3


def test_a_host_that_stays_slow_leaves_the_point_unheld() -> None:
    bench = HostStalls(stalls=100, stall_s=10.0)  # longer than the longest hold
    out = round_robin(bench, [("p", lambda i: None)], repeats=2, calls=8, tick=lambda _: None, label="t")
    assert len(bench.holds) == 2 * (1 + HOLD_RETRIES) and max(bench.holds) <= MAX_HOLD_S
    assert not out["p"]["held"]
