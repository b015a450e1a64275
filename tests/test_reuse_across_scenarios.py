"""What `emu run` on many files and a sweep's workers reuse between scenarios: the timing tables of one profile,
runtime and model, a passed time check, and worker processes forked with the parent's kernels (only where no
thread runs). Each reuse must give what building afresh gives, and never skip a check that would fail."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import attrs
import numpy as np
import pytest

from emu.engines.setup import precisions_for, shared_timing, timing
from emu.errors import EmuError
from emu.kernel.layout import Timing
from emu.models import get_preset
from emu.profile import check_item_times, load_profile

ROOT = Path(__file__).resolve().parents[1]
PROFILE = ROOT / "scenarios" / "profiles" / "h100-pcie5.toml"


def _same(a: Timing, b: Timing) -> bool:
    """Two Timing structs hold equal arrays, field by field."""
    return all(np.array_equal(x, y) for x, y in zip(a._arrays, b._arrays, strict=True))


def test_shared_timing_is_built_once_per_profile_runtime_and_model() -> None:
    profile = load_profile(PROFILE)
    model = get_preset("olmoe-1b-7b")
    precisions = precisions_for(model)
    first = shared_timing(profile, model, precisions)
    assert shared_timing(profile, model, precisions) is first
    assert shared_timing(profile, attrs.evolve(model), precisions) is first  # an equal model
    assert _same(first, timing(profile, model, precisions))  # what a fresh build gives
    prefetching = shared_timing(profile, model, precisions, prefetch="next-layer")
    assert prefetching is not first and _same(prefetching, timing(profile, model, precisions, prefetch="next-layer"))
    other = attrs.evolve(profile)  # another profile object: its own tables, never the first one's
    assert shared_timing(profile, get_preset("mixtral-8x7b"), precisions_for(get_preset("mixtral-8x7b"))) \
        is not first
    assert shared_timing(other, model, precisions) is not first


def test_a_time_check_that_fails_fails_every_time() -> None:
    model = get_preset("olmoe-1b-7b")
    good = load_profile(PROFILE)
    check_item_times(good, model)
    check_item_times(good, model)  # passed: not checked again
    slow = attrs.evolve(good, copy=attrs.evolve(good.copy, bw_pinned_Bps=1e-300, table_bytes=(), table_s=()))
    for _ in range(2):  # a failure is never remembered as a pass
        with pytest.raises(EmuError, match="copy"):
            check_item_times(slow, model)


@pytest.mark.skipif(sys.platform != "linux", reason="fork is taken on Linux only")
def test_workers_fork_only_where_no_thread_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    import numba.np.ufunc.parallel as numba_parallel

    from emu.sweep import start_method

    monkeypatch.setattr(numba_parallel, "_is_initialized", False, raising=False)
    if threading.active_count() == 1:
        assert start_method() == "fork"
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait)
    thread.start()
    try:
        assert start_method() == "spawn"  # a child would inherit a lock some thread holds
    finally:
        stop.set()
        thread.join()
    monkeypatch.setattr(numba_parallel, "_is_initialized", True)  # numba's thread pool started
    assert start_method() == "spawn"
