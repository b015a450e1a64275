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
    runs them back to back as the emulator's engine would: no decision can add a copy before the forward
    thread's next gate, so the order is the emulator's unless that gate's demand copies find some of
    them not started yet. One wake per layer; the per-copy wake-ups of "drain" cost the forward thread
    ~1.7 ms per layer through the GIL on the H100 (docs/validation.md).
  - "drain": hands a worker thread (`asyncio.to_thread`) a drain: wait for the engine without the GIL,
    submit the next prefetch the moment it is idle, repeat while the forward thread is away.
  While the watchdog runs, the interpreter's switch interval is cut to `SWITCH_INTERVAL_S`, so the
  woken task gets the GIL from the forward thread within ~0.1 ms, not the default 5 ms.

One re-entrant lock guards the queue and every submission; the runtime holds it while it decides a
layer's copies, so no prefetch slips in between a gate's decision and its demand copies, and whoever
pumps, the engine sees demand before prefetch, then issue order. An exception in the task is kept and
raised in the forward thread by `check` (and `stop`).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import threading
from typing import Any, Protocol

HANDOVERS = ("bulk", "drain")
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

    def __init__(self, engine: CopyEngine, handover: str = "bulk") -> None:
        if handover not in HANDOVERS:
            raise ValueError(f"expected a handover in {HANDOVERS}, got {handover!r}")
        self.engine = engine
        self.handover = handover
        self._switch_interval: float | None = None
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
            self.engine.submit(job)

    def enqueue(self, key: int, job: Any) -> None:
        with self.lock:
            self._queue[key] = job
        if self._away:  # the forward thread will not pump: the task takes it
            self._notify()

    def present(self) -> None:
        """The forward thread pumps at its checkpoints from now on; the task stays asleep."""
        self._away = False

    def away(self) -> None:
        """The forward thread is about to block (a device sync) or leave the runtime: the task takes over."""
        self._away = True
        if self._queue:
            self._notify()

    def queued(self, key: int) -> bool:
        return key in self._queue

    def promote(self, key: int) -> bool:
        """A queued prefetch is needed now: submit it as a demand copy. False if it was not queued."""
        with self.lock:
            job = self._queue.pop(key, None)
            if job is None:
                return False
            self.engine.submit(job)
            self.promoted += 1
            return True

    def pump(self) -> int:
        """Submit queued prefetches while the engine is idle (one on a GPU, all with synchronous copies)."""
        n = 0
        if not self._queue:  # the common case at a checkpoint: no lock, no engine query
            return 0
        with self.lock:
            while self._queue and self.engine.idle():
                key = next(iter(self._queue))
                self.engine.submit(self._queue.pop(key))
                n += 1
        return n

    def submit_all(self) -> int:
        """Submit every queued prefetch now, in issue order (the engine runs them back to back)."""
        with self.lock:
            n = len(self._queue)
            for job in self._queue.values():
                self.engine.submit(job)
            self._queue.clear()
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
        try:
            while True:
                if self._away and self._queue:
                    if self.handover == "bulk":
                        self.submit_all()
                    elif self.engine.idle():
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

    def start(self) -> None:
        """Run the task on a new event loop in a daemon thread."""
        if self._thread is not None:
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

        self._switch_interval = sys.getswitchinterval()
        sys.setswitchinterval(min(self._switch_interval, SWITCH_INTERVAL_S))
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
        if self._switch_interval is not None:
            sys.setswitchinterval(self._switch_interval)
            self._switch_interval = None
        self.check()
