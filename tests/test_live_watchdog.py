"""The prefetch watchdog against a fake copy engine: submission order, waiting, promotion, stop, errors."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time

import pytest

from live.watchdog import PrefetchWatchdog, WatchdogError


class SteppedClock:
    """A clock the test moves by hand (the watchdog's `clock`): timings exact, whatever the machine's load."""

    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t

    def step(self, seconds: float) -> None:
        self.t += seconds

class FakeEngine:
    """A copy engine whose copies land only when the test says so (`land`)."""

    def __init__(self, fail_on: object = None) -> None:
        self.log: list[object] = []
        self.running: list[object] = []
        self.fail_on = fail_on
        self._cv = threading.Condition()

    def submit(self, job: object) -> None:
        if job == self.fail_on:
            raise ValueError(f"cannot copy {job}")
        with self._cv:
            self.log.append(job)
            self.running.append(job)

    def idle(self) -> bool:
        return not self.running

    def wait_idle(self) -> None:
        with self._cv:
            self._cv.wait_for(lambda: not self.running, timeout=5.0)

    def land(self) -> None:
        with self._cv:
            self.running.clear()
            self._cv.notify_all()


class SyncEngine(FakeEngine):
    """Plain synchronous copies (the CPU): idle as soon as a submit returns."""

    def submit(self, job: object) -> None:
        super().submit(job)
        self.land()


async def until(cond, timeout: float = 3.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.002)


async def settle() -> None:
    """Give the task (and its waiting thread) time to act if it were going to."""
    await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def watching(wd: PrefetchWatchdog):
    task = asyncio.create_task(wd.run())
    await asyncio.sleep(0)
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, ValueError):
            await task


@pytest.mark.asyncio
async def test_prefetches_wait_while_the_engine_is_busy_then_go_one_at_a_time_in_issue_order() -> None:
    eng = FakeEngine()
    wd = PrefetchWatchdog(eng, handover="drain")
    async with watching(wd):
        wd.demand("d0")
        wd.enqueue(1, "p1")
        wd.enqueue(2, "p2")
        await settle()
        assert eng.log == ["d0"] and len(wd) == 2  # the engine is busy: nothing more goes
        eng.land()
        await until(lambda: eng.log == ["d0", "p1"])
        await settle()
        assert eng.log == ["d0", "p1"]  # p1 is in flight: p2 waits for it
        eng.land()
        await until(lambda: eng.log == ["d0", "p1", "p2"])
        assert len(wd) == 0


@pytest.mark.asyncio
async def test_a_later_demand_copy_goes_before_queued_prefetches() -> None:
    eng = FakeEngine()
    wd = PrefetchWatchdog(eng, handover="drain")
    async with watching(wd):
        wd.demand("d0")
        wd.enqueue(1, "p1")
        wd.enqueue(2, "p2")
        wd.demand("d1")  # decided after the prefetches, submitted at once
        eng.land()
        await until(lambda: len(eng.log) == 3)
        eng.land()
        await until(lambda: len(eng.log) == 4)
        assert eng.log == ["d0", "d1", "p1", "p2"]


@pytest.mark.asyncio
async def test_a_needed_queued_prefetch_is_promoted_and_submitted_at_once() -> None:
    eng = FakeEngine()
    wd = PrefetchWatchdog(eng, handover="drain")
    async with watching(wd):
        wd.demand("d0")
        for k in (1, 2, 3):
            wd.enqueue(k, f"p{k}")
        assert wd.queued(2)
        assert wd.promote(2) is True  # while the engine is still busy
        assert eng.log == ["d0", "p2"] and not wd.queued(2)
        assert wd.promote(2) is False and wd.promote(9) is False  # not queued (any more)
        eng.land()
        await until(lambda: len(eng.log) == 3)
        eng.land()
        await until(lambda: len(eng.log) == 4)
        assert eng.log == ["d0", "p2", "p1", "p3"]


@pytest.mark.asyncio
async def test_with_synchronous_copies_the_queue_drains_in_issue_order() -> None:
    eng = SyncEngine()
    wd = PrefetchWatchdog(eng, handover="drain")
    async with watching(wd):
        for k in (5, 3, 8):
            wd.enqueue(k, k)
        await until(lambda: len(eng.log) == 3)
    assert eng.log == [5, 3, 8]
    # pump alone (the gate's call) does the same without the task
    wd2 = PrefetchWatchdog(SyncEngine(), handover="drain")
    for k in (4, 1):
        wd2.enqueue(k, k)
    assert wd2.pump() == 2 and wd2.engine.log == [4, 1]


@pytest.mark.asyncio
async def test_cancel_stops_the_task_and_clear_forgets_the_queue() -> None:
    eng = FakeEngine()
    wd = PrefetchWatchdog(eng, handover="drain")
    task = asyncio.create_task(wd.run())
    await settle()  # waiting on an empty queue
    wd.demand("d0")
    wd.enqueue(1, "p1")
    await settle()  # now waiting for the engine, in a thread
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    wd.check()  # a cancel is not a failure
    wd.clear()
    eng.land()
    assert len(wd) == 0 and eng.log == ["d0"]


@pytest.mark.asyncio
async def test_an_exception_in_a_submit_is_kept_and_raised_by_check() -> None:
    eng = FakeEngine(fail_on="bad")
    wd = PrefetchWatchdog(eng, handover="drain")
    task = asyncio.create_task(wd.run())
    wd.enqueue(1, "bad")
    with pytest.raises(ValueError, match="cannot copy bad"):
        await asyncio.wait_for(task, 3.0)
    with pytest.raises(WatchdogError, match="cannot copy bad") as info:
        wd.check()
    assert isinstance(info.value.__cause__, ValueError)


def test_the_thread_runs_beside_the_caller_and_stops_cleanly() -> None:
    eng = FakeEngine()
    wd = PrefetchWatchdog(eng, handover="drain")
    wd.start()
    try:
        assert wd.running
        wd.demand("d0")
        wd.enqueue(1, "p1")
        time.sleep(0.05)
        assert eng.log == ["d0"]
        eng.land()  # the waiting thread sees the engine idle: p1 goes without any call from here
        deadline = time.monotonic() + 3.0
        while eng.log != ["d0", "p1"] and time.monotonic() < deadline:
            time.sleep(0.002)
        assert eng.log == ["d0", "p1"]
    finally:
        eng.land()
        wd.stop()
    assert not wd.running
    wd.stop()  # twice is harmless


def test_a_failure_in_the_thread_surfaces_in_the_callers_thread() -> None:
    wd = PrefetchWatchdog(SyncEngine(fail_on="bad"), handover="drain")
    wd.start()
    wd.enqueue(1, "bad")
    deadline = time.monotonic() + 3.0
    while wd.running and time.monotonic() < deadline:
        time.sleep(0.002)
    with pytest.raises(WatchdogError, match="cannot copy bad"):
        wd.check()
    with pytest.raises(WatchdogError):
        wd.stop()
    assert not wd.running


@pytest.mark.asyncio
async def test_while_the_forward_thread_is_present_it_pumps_and_the_task_stays_asleep() -> None:
    eng = FakeEngine()
    wd = PrefetchWatchdog(eng, handover="drain")
    async with watching(wd):
        wd.present()  # the forward thread pumps at its checkpoints from here
        wd.demand("d0")
        wd.enqueue(1, "p1")
        wd.enqueue(2, "p2")
        eng.land()
        await settle()
        assert eng.log == ["d0"]  # the engine is idle, but the task leaves it to the forward thread
        assert wd.pump() == 1 and eng.log == ["d0", "p1"]  # a checkpoint: one copy, the engine is busy again
        assert wd.pump() == 0  # p1 in flight: p2 waits
        eng.land()
        wd.away()  # about to block in a device sync: the task takes over
        await until(lambda: eng.log == ["d0", "p1", "p2"])
        assert len(wd) == 0


@pytest.mark.asyncio
async def test_the_task_drains_while_away_and_stops_when_the_forward_thread_is_back() -> None:
    eng = FakeEngine()
    wd = PrefetchWatchdog(eng, handover="drain")
    async with watching(wd):
        wd.demand("d0")
        for k in (1, 2, 3):
            wd.enqueue(k, f"p{k}")  # away (the default outside a pass): the task is woken
        eng.land()
        await until(lambda: eng.log == ["d0", "p1"])
        await settle()  # the draining thread waits for p1 to land
        wd.present()
        eng.land()  # the draining thread still submits the copy it was waiting to submit ...
        await until(lambda: eng.log == ["d0", "p1", "p2"])
        eng.land()
        await settle()
        assert eng.log == ["d0", "p1", "p2"]  # ... then leaves p3 to the forward thread's next checkpoint
        assert wd.pump() == 1 and eng.log == ["d0", "p1", "p2", "p3"]


def test_pump_with_an_empty_queue_does_not_ask_the_engine() -> None:
    class Counting(SyncEngine):
        asked = 0

        def idle(self) -> bool:
            self.asked += 1
            return super().idle()

    eng = Counting()
    wd = PrefetchWatchdog(eng, handover="drain")
    assert wd.pump() == 0 and eng.asked == 0
    wd.enqueue(1, "p1")
    assert wd.pump() == 1 and eng.asked >= 1 and eng.log == ["p1"]


@pytest.mark.asyncio
async def test_bulk_handover_submits_the_whole_queue_in_issue_order_only_when_away() -> None:
    eng = FakeEngine()
    wd = PrefetchWatchdog(eng)  # handover="bulk" is the default
    async with watching(wd):
        wd.present()  # the forward thread pumps: the task must leave the queue alone
        wd.demand("d0")
        for k in (3, 1, 2):
            wd.enqueue(k, f"p{k}")
        await settle()
        assert eng.log == ["d0"] and len(wd) == 3  # the engine is busy and the forward thread is present
        wd.away()  # it leaves the runtime: everything queued goes at once, busy engine or not
        await until(lambda: len(wd) == 0)
        assert eng.log == ["d0", "p3", "p1", "p2"]
        wd.present()
        wd.enqueue(4, "p4")
        wd.demand("d1")  # the next gate's demand copy goes before the prefetch still queued
        await settle()
        assert eng.log[-1] == "d1" and len(wd) == 1
        eng.land()
        assert wd.pump() == 1 and eng.log[-1] == "p4"


def test_the_watchdog_cuts_the_switch_interval_while_it_runs_and_restores_it() -> None:
    import sys

    before = sys.getswitchinterval()
    wd = PrefetchWatchdog(SyncEngine())
    wd.start()
    try:
        assert sys.getswitchinterval() <= 1e-4 + 1e-12
    finally:
        wd.stop()
    assert sys.getswitchinterval() == before


def test_an_unknown_handover_is_refused() -> None:
    with pytest.raises(ValueError, match="handover"):
        PrefetchWatchdog(SyncEngine(), handover="later")


def test_the_next_gate_is_the_away_spans_median_after_the_same_layer() -> None:
    clock = SteppedClock()
    wd = PrefetchWatchdog(SyncEngine(), handover="bounded", clock=clock)
    assert wd.next_gate_at() is None  # nothing seen yet
    for span in (0.01, 0.08, 0.03):
        wd.away(2)
        clock.step(span)
        wd.away()  # a second call in the same span (the readback) does not restart its clock
        wd.present()
    wd.away(5)
    assert wd.next_gate_at() is None  # spans are kept per layer: none after layer 5 yet
    wd.present()
    clock.step(1.0)
    wd.away(2)
    assert wd.next_gate_at() == pytest.approx(clock() + 0.03)  # the median, 0.03 s (the mean is 0.04 s)


def test_a_submitted_jobs_landing_follows_the_engines_order_and_copy_time() -> None:
    clock = SteppedClock()
    wd = PrefetchWatchdog(FakeEngine(), handover="bounded", copy_s=0.05, clock=clock)
    assert wd.landing("d0") is None  # never submitted
    t0 = clock()
    wd.demand("d0")
    wd.enqueue(1, "p1")
    wd.pump()  # the fake engine is busy: p1 stays queued
    assert wd.landing("p1") is None
    clock.step(0.01)
    wd.promote(1)  # submitted behind d0: it lands one copy after d0, not one copy after now
    assert wd.landing("d0") == pytest.approx(t0 + 0.05) and wd.landing("p1") == pytest.approx(t0 + 0.10)


def test_the_next_gate_after_a_wait_for_copies_is_their_landing_plus_the_tail() -> None:
    """A span that waited for copies says nothing of the next one (another layer's copies): after a wait
    the estimate is the landing plus the tail after it; without one, the spans without a wait."""
    clock = SteppedClock()
    wd = PrefetchWatchdog(SyncEngine(), handover="bounded", clock=clock)
    wd.away(3)
    clock.step(0.1)  # a span without a wait
    wd.present()
    for tail in (0.01, 0.03, 0.02):
        wd.away(3, wait_until=clock() + 0.02)
        clock.step(0.02 + tail)
        wd.present()
    t0 = clock()
    wd.away(3, wait_until=t0 + 0.2)
    assert wd.next_gate_at() == pytest.approx(t0 + 0.2 + 0.02)  # the median tail, 0.02 s
    wd.present()
    t0 = clock()
    wd.away(3, wait_until=t0 - 1.0)  # copies landed before the span began: no wait
    assert wd.next_gate_at() == pytest.approx(t0 + 0.1)
    wd.present()
    t0 = clock()
    wd.away(4, wait_until=t0 + 0.05)  # no tail seen after layer 4 yet: the landing itself
    assert wd.next_gate_at() == pytest.approx(t0 + 0.05)


@pytest.mark.asyncio
async def test_bounded_handover_waits_for_the_layers_copies_not_for_a_long_old_span() -> None:
    """An old span of 0.17 s after layer 0 (a pass that waited for more copies) would let p1-p3 go; the
    layer now waits only for d0 (landing in ~0.05 s) and the tail after a wait was ~0.01 s, so only p1
    starts before the next gate; the rest wait for the drain or the gate's demand copies."""
    eng = FakeEngine()
    wd = PrefetchWatchdog(eng, handover="bounded", copy_s=0.05)
    wd.away(0)
    time.sleep(0.17)
    wd.present()
    wd.away(0, wait_until=time.perf_counter() + 0.005)
    time.sleep(0.015)  # a tail of ~0.01 s after the wait
    wd.present()
    async with watching(wd):
        wd.demand("d0")
        for k in (1, 2, 3, 4, 5):
            wd.enqueue(k, f"p{k}")
        wd.away(0, wait_until=wd.landing("d0"))
        await until(lambda: len(eng.log) == 2)
        await settle()
        assert eng.log == ["d0", "p1"] and len(wd) == 4


def test_bounded_spans_ignore_an_outlier_that_the_mean_would_follow() -> None:
    wd = PrefetchWatchdog(SyncEngine(), handover="bounded")
    for span in (0.01, 0.01, 0.2):
        wd.away(0)
        time.sleep(span)
        wd.present()
    t0 = time.perf_counter()
    wd.away(0)
    gate = wd.next_gate_at()
    assert gate is not None and gate - t0 < 0.05


@pytest.mark.asyncio
async def test_bounded_handover_submits_what_starts_before_the_next_gate_and_drains_the_rest() -> None:
    eng = FakeEngine()
    wd = PrefetchWatchdog(eng, handover="bounded", copy_s=0.05)
    wd.away(0)
    time.sleep(0.17)  # the forward thread's away span after layer 0: 0.17 s
    wd.present()
    async with watching(wd):
        wd.demand("d0")  # the engine is busy until ~0.05 s from now
        for k in (1, 2, 3, 4, 5):
            wd.enqueue(k, f"p{k}")
        wd.away(0)  # next gate expected ~0.17 s from now: p1, p2, p3 start at ~0.05, 0.10, 0.15
        await until(lambda: len(eng.log) == 4)
        await settle()
        assert eng.log == ["d0", "p1", "p2", "p3"] and len(wd) == 2  # p4 would start after the gate
        eng.land()  # the engine is idle while the forward thread is still away: one more goes
        await until(lambda: len(eng.log) == 5)
        await settle()
        assert eng.log[-1] == "p4" and len(wd) == 1
        wd.present()
        wd.demand("d1")  # the gate's demand copy goes before the prefetch still queued
        assert eng.log[-1] == "d1" and len(wd) == 1


@pytest.mark.asyncio
async def test_bounded_handover_without_an_estimate_submits_everything() -> None:
    eng = FakeEngine()
    wd = PrefetchWatchdog(eng, handover="bounded", copy_s=1.0)
    async with watching(wd):
        wd.present()
        for k in (1, 2, 3):
            wd.enqueue(k, f"p{k}")
        wd.away(7)  # no span seen after layer 7 yet: the bulk behaviour
        await until(lambda: len(wd) == 0)
        assert eng.log == ["p1", "p2", "p3"]


def test_a_negative_copy_time_is_refused() -> None:
    with pytest.raises(ValueError, match="copy_s"):
        PrefetchWatchdog(SyncEngine(), handover="bounded", copy_s=-1.0)


def test_overlapping_watchdogs_keep_the_interval_cut_until_the_last_one_stops() -> None:
    import sys

    before = sys.getswitchinterval()
    a, b = PrefetchWatchdog(SyncEngine()), PrefetchWatchdog(SyncEngine())
    a.start()
    b.start()
    try:
        a.stop()  # the first one stops while the second still runs: still cut
        assert sys.getswitchinterval() <= 1e-4 + 1e-12
    finally:
        b.stop()
    assert sys.getswitchinterval() == before


def test_inline_handover_submits_the_queue_from_the_forward_thread_without_a_task() -> None:
    eng = FakeEngine()
    wd = PrefetchWatchdog(eng, handover="inline")
    wd.start()  # no task, no thread: the forward thread submits
    assert not wd.running and wd.cpu_seconds() == 0.0
    wd.present()
    wd.demand("d0")
    for k in (3, 1, 2):
        wd.enqueue(k, f"p{k}")
    assert eng.log == ["d0"] and len(wd) == 3  # present and the engine busy: nothing more yet
    wd.away(5)  # leaving the runtime: the whole queue, in issue order, before `away` returns
    assert eng.log == ["d0", "p3", "p1", "p2"] and len(wd) == 0
    wd.enqueue(4, "p4")  # decided while away: submitted at once (no task would ever take it)
    assert eng.log[-1] == "p4" and len(wd) == 0
    wd.present()
    wd.enqueue(6, "p6")
    wd.demand("d1")  # the next gate's demand goes before the prefetch still queued, as with "bulk"
    assert eng.log[-2:] == ["p4", "d1"] and wd.queued(6)
    wd.stop()


def test_cpu_seconds_of_a_running_task_grow_while_it_works() -> None:
    eng = SyncEngine()
    wd = PrefetchWatchdog(eng)
    wd.start()
    try:
        assert wd.running
        first = wd.cpu_seconds()
        for k in range(2000):  # the task submits each while the forward thread is away
            wd.enqueue(k, k)
        wd.away()
        deadline = time.monotonic() + 5.0
        while len(wd) and time.monotonic() < deadline:
            time.sleep(0.001)
        assert len(wd) == 0 and wd.cpu_seconds() > first
    finally:
        wd.stop()
    assert wd.cpu_seconds() == 0.0  # no thread any more
