"""Traces kept within one process, so that scenarios asking for the same trace again (`emu run` on many files, a
sweep's points in one worker) reuse it instead of generating or reading it again.

A trace is named by what it is made of, not by where a scenario found it: a synthetic trace by its generator's
parameters (seed included), token count and the model shape the generator reads; a trace file by the digest of
its bytes (and, for JSONL, which the importer reads against a model, that model). The cache holds a few traces,
least recently used first out, and no more bytes than a quarter of the memory the machine has available when a
trace is added, so keeping traces never crowds out the run that needs the memory.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Hashable
from pathlib import Path
from typing import Any

from .routing_trace import RoutingTrace

#: most traces kept at once
MAX_TRACES = 8
#: most bytes kept, as a share of the memory available when a trace is added
MEMORY_SHARE = 0.25


def trace_bytes(trace: RoutingTrace) -> int:
    arrays = (trace.experts, trace.pass_offsets, trace.pass_phase, trace.token_request, trace.token_position,
              trace.scores, trace.predicted, trace.logits)
    return sum(a.nbytes for a in arrays if a is not None)


def file_digest(path: str | Path) -> str:
    """The digest of a file's bytes, read each time: a file rewritten within the file system's timestamp
    resolution keeps its size and modification time, and must not be taken for the trace it replaced."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 24), b""):
            h.update(block)
    return h.hexdigest()


class TraceCache:
    """Traces by key, least recently used first out, with each trace's summary facts computed once."""

    def __init__(self, max_traces: int = MAX_TRACES, memory_share: float = MEMORY_SHARE) -> None:
        self.max_traces = max_traces
        self.memory_share = memory_share
        self._entries: OrderedDict[Hashable, tuple[RoutingTrace, int]] = OrderedDict()
        self._facts: dict[int, dict[str, Any]] = {}  # by id() of a trace held in _entries
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: Hashable) -> RoutingTrace | None:
        entry = self._entries.get(key)
        if entry is None:
            self.misses += 1
            return None
        self.hits += 1
        self._entries.move_to_end(key)
        return entry[0]

    def put(self, key: Hashable, trace: RoutingTrace) -> None:
        from .synthetic import available_memory

        size = trace_bytes(trace)
        budget = int(self.memory_share * (available_memory()[0] + self.held_bytes()))
        if size > budget or self.max_traces < 1:
            return
        self._drop(key)
        self._entries[key] = (trace, size)
        while len(self._entries) > self.max_traces or self.held_bytes() > budget:
            self._drop(next(iter(self._entries)))

    def held_bytes(self) -> int:
        return sum(size for _trace, size in self._entries.values())

    def facts(self, trace: RoutingTrace) -> dict[str, Any]:
        """Fingerprint, tokens, passes and requests of a trace (what a run record names it by); computed once
        for a trace this cache holds."""
        held = any(t is trace for t, _size in self._entries.values())
        facts = self._facts.get(id(trace)) if held else None
        if facts is None:
            facts = {"fingerprint": trace.fingerprint(), "tokens": trace.n_tokens, "passes": trace.n_passes,
                     "requests": trace.n_requests}
            if held:
                self._facts[id(trace)] = facts
        return dict(facts)

    def clear(self) -> None:
        self._entries.clear()
        self._facts.clear()
        self.hits = self.misses = 0

    def _drop(self, key: Hashable) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._facts.pop(id(entry[0]), None)


#: the process's cache (emu.runner.load_workload)
CACHE = TraceCache()
