"""The prefetch watchdog: an asyncio task that feeds queued prefetch copies to the copy engine.

The cache bridge decides a prefetch at a layer's gate (the slot is taken then, as in the emulator); the
runtime hands the copy to the watchdog, which submits it only when the copy engine is idle (every
submitted copy has landed). Demand copies are submitted at once (`demand`), and a queued prefetch that a
layer needs is promoted (`promote`): taken off the queue and submitted at once. So at most one prefetch
is ever ahead of a demand copy, and the copy stream runs the emulator's one-engine order: demand before
prefetch, then issue order, no preemption (the watchdog of SpecMD).

The task runs on an event loop in a daemon thread (`start` / `stop`) beside the synchronous forward
pass. Who submits a queued prefetch depends on where the forward thread is (the GIL is shared, and every
microsecond of Python on either thread is a microsecond of a host-paced decode step):

- present (`present`): the forward thread runs the runtime's Python and pumps the queue itself at its
  checkpoints (before each gate, after launching each expert's compute, after a fused layer): a cheap
  check (queue non-empty, last copy's event done) and the submit, with no thread switch. The task sleeps.
- away (`away`, the state outside a pass too): the forward thread has left the runtime (attention, the
  router, the routing readback's device sync, the end of a pass). The task wakes once and, by
  `handover`:
  - "bulk" (default): submits every queued prefetch at once, in issue order, onto the copy stream, which
    runs them back to back: no decision can add a copy before the forward thread's next gate, and that
    gate's demand copies start after whatever of them has not started yet (the emulator's "submission"
    copy order, which a run with this hand-over is emulated with: `COPY_ORDER`). One wake per layer; the
    per-copy wake-ups of "drain" cost the forward thread ~1.7 ms per layer through the GIL on the H100
    (docs/live.md).
  - "bounded": submits at once only the queued prefetches that the engine would start before the forward
    thread's next gate, then drains the rest as "drain" does. A CUDA copy engine runs copies in
    submission order, on one stream or several, whatever their priority (`experiments/bench_copy_streams.py`:
    a demand submitted after 8 prefetches ends after all of them), so a demand copy of the next gate
    waits behind every prefetch "bulk" submitted; the emulator's engine starts it before the queued
    (not yet started) ones. When the engine frees up comes from the copies submitted and `copy_s`, the
    measured seconds per copy. When the next gate comes: where the layer just left waits for copies
    (`away(layer, wait_until=...)`: the last of them to land, by the same bookkeeping), their landing plus
    the forward thread's tail after such a wait (median of the last few, per layer); else its away span
    (median of the last few spans without a wait, per layer). An estimate too late lets a prefetch go
    before the next gate's demand copies where the emulator's engine starts it after them (the median of
    spans that had waited for other copies put Mixtral 25% next-layer's copies in another order from its
    ninth pass on, and its decisions with them: `experiments/live_decisions.py`); one too early only leaves
    the rest to the drain. With short copies (OLMoE, ~0.23 ms) nearly all go at once; with long ones
    (Mixtral, ~6.4 ms) the rest go one by one, as they should.
  - "drain": hands a worker thread (`asyncio.to_thread`) a drain: wait for the engine without the GIL,
    submit the next prefetch the moment it is idle, repeat while the forward thread is away.
  - "inline": no task at all; the forward thread itself submits the whole queue, in issue order, as it
    leaves (`away`): the copy stream sees what "bulk" gives it, one step earlier, without the task's wake.
    The wake is the cost of "bulk" on a host-paced run: the task takes the GIL from a forward thread that
    is launching the next layer's attention (docs/live.md has the figures).
  While the watchdog runs, the interpreter's switch interval is cut to `SWITCH_INTERVAL_S`, so the
  woken task gets the GIL from the forward thread within ~0.1 ms, not the default 5 ms.

One re-entrant lock guards the queue and every submission; the runtime holds it while it decides a
layer's copies, so no prefetch slips in between a gate's decision and its demand copies, and whoever
pumps, the engine sees demand before prefetch, then issue order. An exception in the task is kept and
raised in the forward thread by `check` (and `stop`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, Protocol

HANDOVERS = ("bulk", "bounded", "drain", "inline")
#: the order the copy engine starts queued copies in under each hand-over, as the emulator's `copy.order` names
#: it: "bulk" and "inline" submit every queued prefetch as the forward thread leaves, and a CUDA copy engine runs
#: what it was given in submission order, so the next gate's demand copies start after them; "bounded" and
#: "drain" hold back what would start after the next gate, so its demand copies go first
COPY_ORDER = {"bulk": "submission", "inline": "submission", "bounded": "demand-first", "drain": "demand-first"}
#: what a runtime may ask for: a hand-over, or "auto" (chosen by the copy time: `live.offload`)
HANDOVER_CHOICES = ("auto", *HANDOVERS)
#: away spans kept per layer for the bounded hand-over's estimate of the next gate (their median)
SPAN_SAMPLES = 5
#: the interpreter's switch interval while a watchdog runs (the default, 5 ms, would delay the task's wake)
SWITCH_INTERVAL_S = 1e-4


class CopyEngine(Protocol):
    """What the watchdog drives: one copy engine (a CUDA copy stream, or plain copies on the CPU)."""

    def submit(self, job: Any) -> None:
        """Start the copy (asynchronously on a GPU)."""

    def idle(self) -> bool:
        """Has every submitted copy landed?"""

    def wait_idle(self) -> None:
        """Block, without the GIL, until every submitted copy has landed."""


class WatchdogError(RuntimeError):
    """The watchdog task failed; the cause is chained."""


class PrefetchWatchdog:
    """The queue of decided prefetch copies (key -> job, issue order) and the task that submits them."""

    def __init__(self, engine: CopyEngine, handover: str = "bulk", copy_s: float = 0.0,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        if handover not in HANDOVERS:
            raise ValueError(f"expected a handover in {HANDOVERS}, got {handover!r}")
        if not copy_s >= 0.0:
            raise ValueError(f"expected copy_s >= 0 seconds, got {copy_s!r}")
        self.engine = engine
        self.handover = handover
        self.copy_s = copy_s  # seconds one copy keeps the engine busy (the bounded hand-over's estimate)
        self.clock = clock  # seconds, monotonic: every time below is on it (tests step a clock of their own)
        self._free_at = 0.0  # clock time when every copy submitted so far should have landed
        self._away_since: float | None = None  # start of the forward thread's current away span
        self._away_layer = -1  # the layer whose end started it (-1: outside a pass)
        self._wait_until: float | None = None  # when the copies that layer waits for should have landed
        # layer -> its last away spans without a wait for copies, and its last tails after such a wait (seconds)
        self._spans: dict[int, collections.deque[float]] = {}
        self._tails: dict[int, collections.deque[float]] = {}
        self._land_at: dict[Any, float] = {}  # job -> when it should land (the engine's order and `copy_s`)
        self.lock = threading.RLock()
        self._queue: dict[int, Any] = {}
        self.promoted = 0  # prefetches a layer needed while still queued
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._thread: threading.Thread | None = None
        self._away = True  # the forward thread is not pumping (blocked in a device sync, or between passes)
        self._stopping = False

    # --- the forward thread's side -------------------------------------------------------------------
    def demand(self, job: Any) -> None:
        """A demand copy goes to the engine at once."""
        with self.lock:
            self._submit(job)

    def _submit(self, job: Any) -> None:
        """Every submission goes through here, so the engine's expected free time counts them all."""
        self.engine.submit(job)
        now = self.clock()
        self._free_at = (self._free_at if self._free_at > now else now) + self.copy_s
        self._land_at[job] = self._free_at

    def landing(self, job: Any) -> float | None:
        """When the job's copy should land (clock time), by the engine's order and `copy_s`; None
        for a job never submitted."""
        return self._land_at.get(job)

    def _submit_first(self) -> None:
        """The oldest queued prefetch goes to the engine (the caller holds the lock and saw the queue non-empty)."""
        key = next(iter(self._queue))
        self._submit(self._queue.pop(key))

    def enqueue(self, key: int, job: Any) -> None:
        with self.lock:
            self._queue[key] = job
            if self._away and self.handover == "inline":  # decided outside a gate (no task to take it)
                self.submit_all()
                return
        if self._away:  # the forward thread will not pump: the task takes it
            self._notify()

    def present(self) -> None:
        """The forward thread pumps at its checkpoints from now on; the task stays asleep."""
        since = self._away_since
        if since is not None:
            now = self.clock()
            wait = self._wait_until
            if wait is not None and wait > since:  # a tail after the copies landed
                samples, sample = self._tails, now - wait
            else:
                samples, sample = self._spans, now - since
            kept = samples.get(self._away_layer)
            if kept is None:
                kept = samples[self._away_layer] = collections.deque(maxlen=SPAN_SAMPLES)
            kept.append(sample)
            self._away_since = None
        self._away = False

    def last_landing(self, jobs: Iterable[Any]) -> float | None:
        """When the last of the jobs submitted among `jobs` should land (`landing`); None where none was, and
        without reading `jobs` for a hand-over that does not estimate the next gate (all but "bounded")."""
        if self.handover != "bounded":
            return None
        return max((t for t in map(self._land_at.get, jobs) if t is not None), default=None)

    def away(self, layer: int = -1, wait_until: float | None = None) -> None:
        """The forward thread is about to block (a device sync) or leave the runtime (after `layer`'s
        experts, which wait for copies landing until `wait_until`, by `last_landing`): the task takes over
        until `present`; the first call of a span starts its clock."""
        if self._away_since is None:
            self._away_since = self.clock()
            self._away_layer = layer
            self._wait_until = wait_until
        self._away = True
        if self._queue:
            if self.handover == "inline":
                self.submit_all()
            else:
                self._notify()

    def next_gate_at(self) -> float | None:
        """When the forward thread should be back (clock time): where the layer waits for copies,
        their landing plus the median of the last tails after such a wait (the landing alone before any
        was seen); else the away span's start plus the median of the last spans without a wait after the
        same layer (None before any was seen)."""
        since, wait = self._away_since, self._wait_until
        if since is None:
            return None
        if wait is not None and wait > since:
            tails = self._tails.get(self._away_layer)
            return wait + (statistics.median(tails) if tails else 0.0)
        spans = self._spans.get(self._away_layer)
        return since + statistics.median(spans) if spans else None

    def queued(self, key: int) -> bool:
        return key in self._queue

    def promote(self, key: int) -> bool:
        """A queued prefetch is needed now: submit it as a demand copy. False if it was not queued."""
        with self.lock:
            job = self._queue.pop(key, None)
            if job is None:
                return False
            self._submit(job)
            self.promoted += 1
            return True

    def pump(self) -> int:
        """Submit queued prefetches while the engine is idle (one on a GPU, all with synchronous copies)."""
        n = 0
        if not self._queue:  # the common case at a checkpoint: no lock, no engine query
            return 0
        with self.lock:
            while self._queue and self.engine.idle():
                self._submit_first()
                n += 1
        return n

    def submit_all(self) -> int:
        """Submit every queued prefetch now, in issue order (the engine runs them back to back)."""
        with self.lock:
            n = len(self._queue)
            for job in self._queue.values():
                self._submit(job)
            self._queue.clear()
        return n

    def submit_bounded(self) -> int:
        """Submit, in issue order, the queued prefetches the engine would start before the next gate
        (`next_gate_at`; everything when there is no estimate yet); the rest stay queued."""
        with self.lock:
            gate = self.next_gate_at()
            if gate is None:
                return self.submit_all()
            n = 0
            while self._queue and max(self.clock(), self._free_at) < gate:
                self._submit_first()
                n += 1
        return n

    def clear(self) -> None:
        """Forget queued prefetches (the cache they were decided for was emptied)."""
        with self.lock:
            self._queue.clear()

    def __len__(self) -> int:
        return len(self._queue)

    def check(self) -> None:
        """Raise, in the calling thread, what made the task fail."""
        if self._error is not None:
            raise WatchdogError(f"prefetch watchdog failed: {self._error!r}") from self._error

    # --- the task ------------------------------------------------------------------------------------
    async def run(self) -> None:
        """While the forward thread is away and prefetches are queued, drain them in a worker thread as the
        engine frees up; otherwise sleep until `away` or `enqueue` (while away) wakes the task."""
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._stopping = False
        bounded_for: float | None = None  # the away span whose bounded submission is done
        try:
            while True:
                if self._away and self._queue:
                    if self.handover == "bulk":
                        self.submit_all()
                        continue
                    if self.handover == "bounded" and self._away_since != bounded_for:
                        bounded_for = self._away_since  # once per away span; then the rest drains
                        self.submit_bounded()
                        continue
                    if self.engine.idle():
                        self.pump()
                    else:
                        await asyncio.to_thread(self._drain)
                    continue
                self._wake.clear()
                if not (self._away and self._queue):  # state set before a wake that ran before the clear
                    await self._wake.wait()
        except asyncio.CancelledError:
            raise
        except BaseException as err:
            self._error = err
            raise
        finally:
            self._stopping = True  # a drain still in its worker thread (a cancel) ends after its current wait

    def _drain(self) -> None:
        """In a worker thread (the engine's wait blocks): submit each next prefetch the moment the engine is
        idle, without a round trip through the event loop, while the forward thread is away."""
        while self._away and self._queue and not self._stopping:
            self.engine.wait_idle()
            self.pump()

    def _notify(self) -> None:
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile (the task stopped)
                loop.call_soon_threadsafe(wake.set)

    # --- its thread ----------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def cpu_seconds(self) -> float:
        """CPU seconds the task's thread has used so far (0.0 without one): on a host-paced run, most of it
        is time the forward thread waited for the GIL."""
        thread = self._thread
        if thread is None or thread.ident is None or not hasattr(time, "pthread_getcpuclockid"):
            return 0.0
        with contextlib.suppress(OSError):  # the thread ended meanwhile
            return time.clock_gettime(time.pthread_getcpuclockid(thread.ident))
        return 0.0

    def start(self) -> None:
        """Run the task on a new event loop in a daemon thread ("inline" needs none)."""
        if self._thread is not None or self.handover == "inline":
            return
        started = threading.Event()

        def main() -> None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            self._task = loop.create_task(self.run())
            loop.call_soon(started.set)
            try:
                loop.run_until_complete(self._task)
            except BaseException:  # kept in self._error, or a cancel
                pass
            finally:
                loop.run_until_complete(loop.shutdown_default_executor())
                loop.close()

        _cut_switch_interval()
        self._thread = threading.Thread(target=main, name="prefetch-watchdog", daemon=True)
        self._thread.start()
        started.wait()

    def stop(self) -> None:
        """Cancel the task, join its thread, and raise here if it had failed."""
        thread, loop, task = self._thread, self._loop, self._task
        if thread is None:
            return
        self._stopping = True  # a drain in the worker thread ends after its current wait
        if loop is not None and task is not None:
            with contextlib.suppress(RuntimeError):  # already closed: the task ended by itself (an error)
                loop.call_soon_threadsafe(task.cancel)
        thread.join()
        self._thread = self._task = self._loop = self._wake = None
        _restore_switch_interval()  # cut by `start`, the only way to a thread
        self.check()


# the interpreter's switch interval is process-wide: cut while any watchdog runs (a run's and a calibration
# runtime's may overlap, and stop in either order), restored when the last one stops
_running = 0
_saved_interval = 0.0
_interval_lock = threading.Lock()


def _cut_switch_interval() -> None:
    global _running, _saved_interval
    with _interval_lock:
        if _running == 0:
            _saved_interval = sys.getswitchinterval()
            sys.setswitchinterval(min(_saved_interval, SWITCH_INTERVAL_S))
        _running += 1


def _restore_switch_interval() -> None:
    global _running
    with _interval_lock:
        _running -= 1
        if _running == 0:
            sys.setswitchinterval(_saved_interval)
