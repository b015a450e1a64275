"""Timing on one device: CUDA events on CUDA, a host clock on the CPU, behind one interface.

Device work is asynchronous, so on CUDA every figure comes from events recorded on the stream that
runs the work (device-side time), after a warm-up; host-observed figures (calls that block the host
by design, such as pageable copies or a routing readback) use `wall`, which synchronizes first.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any


def rotation_count(item_bytes: int, target_bytes: int, cap: int = 64) -> int:
    """How many copies of an operand to cycle through so repeated calls do not run from cache."""
    if item_bytes <= 0:
        return 1
    return max(1, min(cap, math.ceil(target_bytes / item_bytes)))


class Bench:
    """A device plus the timers for it."""

    def __init__(self, device: str, seed: int = 0) -> None:
        import torch

        self.torch = torch
        self.device = torch.device(device)
        self.is_cuda = self.device.type == "cuda"
        self.generator_seed = seed
        self.last_host_s = 0.0
        self.last_held = False
        self._sm_hz: float | None = None
        torch.manual_seed(seed)

    def sync(self) -> None:
        if self.is_cuda:
            self.torch.cuda.synchronize(self.device)

    def new_stream(self) -> Any:
        return self.torch.cuda.Stream(self.device) if self.is_cuda else None

    def stream_ctx(self, stream: Any) -> Any:
        if self.is_cuda and stream is not None:
            return self.torch.cuda.stream(stream)
        import contextlib

        return contextlib.nullcontext()

    def _hold(self, stream: Any, seconds: float) -> float:
        """Queue a sleep kernel on `stream` so the host can queue work behind it before the GPU starts:
        the events then time the device alone, not the host's launch pace. Returns the hold (0 if none)."""
        if not self.is_cuda or seconds <= 0:
            return 0.0
        sleep = getattr(self.torch.cuda, "_sleep", None)
        if sleep is None:
            return 0.0
        with self.torch.cuda.stream(stream):
            sleep(int(seconds * self.sm_hz))
        return seconds

    @property
    def sm_hz(self) -> float:
        """The SM clock's maximum: a sleep of n cycles lasts at least n / sm_hz seconds."""
        if getattr(self, "_sm_hz", None) is None:
            self._sm_hz = 2.0e9
            try:
                import pynvml

                pynvml.nvmlInit()
                h = pynvml.nvmlDeviceGetHandleByIndex(self.device.index or 0)
                self._sm_hz = 1e6 * pynvml.nvmlDeviceGetMaxClockInfo(h, pynvml.NVML_CLOCK_SM)
            except Exception:
                pass
        return self._sm_hz

    def time_loop(self, fn: Callable[[int], Any], n: int, stream: Any = None, hold_s: float = 0.0) -> float:
        """Seconds per call of n back-to-back calls fn(0..n-1), as the device sees them.

        Without a hold this is the steady pace of an eager loop (host launch time included where the
        host is the slower side); with `hold_s` the device is held while the host queues, so it is
        the device's own time. Sets `last_host_s` (host seconds per call to queue) and `last_held`
        (False if the host needed longer than the hold, so the figure still includes host time).
        """
        self.sync()
        if not self.is_cuda:
            t0 = time.perf_counter()
            for i in range(n):
                fn(i)
            self.last_host_s = (time.perf_counter() - t0) / n
            self.last_held = False
            return self.last_host_s
        torch = self.torch
        stream = stream or torch.cuda.current_stream(self.device)
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        held = self._hold(stream, hold_s)
        with torch.cuda.stream(stream):
            start.record(stream)
            t0 = time.perf_counter()
            for i in range(n):
                fn(i)
            host = time.perf_counter() - t0
            end.record(stream)
        end.synchronize()
        self.last_host_s = host / n
        self.last_held = held > 0 and host < 0.8 * held
        return start.elapsed_time(end) / 1e3 / n

    def time_each(self, fn: Callable[[int], Any], n: int, stream: Any = None,
                  hold_s: float = 0.0) -> tuple[list[float], list[float]]:
        """Per-call device seconds of n calls queued back to back (an event pair around each), and the
        host seconds each call took to issue. `hold_s` as in time_loop."""
        self.sync()
        issue: list[float] = []
        if not self.is_cuda:
            out = []
            for i in range(n):
                t0 = time.perf_counter()
                fn(i)
                t1 = time.perf_counter()
                out.append(t1 - t0)
                issue.append(t1 - t0)
            self.last_held = False
            return out, issue
        torch = self.torch
        stream = stream or torch.cuda.current_stream(self.device)
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                  for _ in range(n)]
        held = self._hold(stream, hold_s)
        t_all = time.perf_counter()
        with torch.cuda.stream(stream):
            for i, (a, b) in enumerate(events):
                a.record(stream)
                t0 = time.perf_counter()
                fn(i)
                issue.append(time.perf_counter() - t0)
                b.record(stream)
        self.last_held = held > 0 and time.perf_counter() - t_all < 0.8 * held
        stream.synchronize()
        return [a.elapsed_time(b) / 1e3 for a, b in events], issue

    def wall(self, fn: Callable[[int], Any], n: int, stream: Any = None) -> list[float]:
        """Host seconds of each call, synchronized before and after: what a blocking caller sees."""
        out = []
        with self.stream_ctx(stream):
            for i in range(n):
                self.sync()
                t0 = time.perf_counter()
                fn(i)
                self.sync()
                out.append(time.perf_counter() - t0)
        return out

    def randn(self, *shape: int, dtype: Any = None, scale: float = 1.0) -> Any:
        """Random operands (never zeros: they can run faster than real data)."""
        torch = self.torch
        dtype = dtype or torch.bfloat16
        x = torch.randn(*shape, device=self.device, dtype=torch.float32)
        if scale != 1.0:
            x.mul_(scale)
        return x.to(dtype)
