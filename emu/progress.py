"""Progress of long work (sweeps, calibration): a rich bar with the count, elapsed time and ETA on a terminal;
elsewhere (logs, CI) one plain line each tenth of the way, with the same figures."""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO


class Progress:
    """`step(label)` after each of `total` steps; `close()` at the end (also when stopped early)."""

    def __init__(self, total: int, stream: TextIO | None = None, label: str = "", unit: str = "steps",
                 enabled: bool = True, clock: Any = time.perf_counter) -> None:
        self.total, self.done, self.label, self.unit = max(int(total), 0), 0, label, unit
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.clock = clock
        self.t0 = clock()
        self._last_tenth = -1
        self._bar: Any = None
        self._task: Any = None
        if enabled and hasattr(self.stream, "isatty") and self.stream.isatty():
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
            from rich.progress import Progress as RichProgress

            self._bar = RichProgress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                     TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                                     console=Console(file=self.stream), transient=False)
            self._bar.start()
            self._task = self._bar.add_task(label, total=self.total)

    def eta_s(self) -> float | None:
        """Seconds left at the pace so far; None before the first step."""
        if self.done == 0:
            return None
        return (self.clock() - self.t0) / self.done * max(self.total - self.done, 0)

    def step(self, label: str = "") -> None:
        self.done += 1
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(self._task, advance=1, description=f"{self.label} {label}".strip()[:50])
            if self.done >= self.total:
                self.close()
            return
        tenth = 10 * self.done // self.total if self.total else 10
        if tenth != self._last_tenth or self.done == self.total:
            self._last_tenth = tenth
            elapsed = self.clock() - self.t0
            eta = self.eta_s()
            left = f", ETA {eta:.0f} s" if eta is not None and self.done < self.total else ""
            what = f" ({label})" if label else ""
            self.stream.write(f"{self.label}: {self.done}/{self.total} {self.unit}{what}, {elapsed:.1f} s{left}\n")
            self.stream.flush()

    __call__ = step  # calibration steps call their progress with the step's label

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
