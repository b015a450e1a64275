"""The fast engine's loop stops at passes for a progress display and goes on exactly as if it had not."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pytest

from emu.engines.fast import engine as fast
from emu.engines.setup import make_inputs
from emu.metrics import build_result
from emu.runner import load_workload
from emu.scenario import load_scenario

ROOT = Path(__file__).resolve().parents[1]


def _record(inputs, **kw) -> str:
    cs, end, _timings = fast.run_fast(inputs, **kw)
    return json.dumps(build_result(cs, end, inputs.trace, "fast", {}).to_dict(), sort_keys=True)


@pytest.mark.parametrize("name", ["gsm8k_25pct_lru_next-layer", "gsm8k_05pct_least-stale_topk"])
def test_a_run_stopped_at_passes_is_the_run(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    sc = load_scenario(ROOT / "scenarios" / "shootout" / f"{name}.toml")
    inputs = make_inputs(sc.model, sc.profile(), load_workload(sc), sc.cache.capacity_bytes, sc.stack, sc.seed)
    whole = _record(inputs)
    monkeypatch.setattr(fast, "PROGRESS_PASSES", 1)
    monkeypatch.setattr("sys.stderr", io.StringIO())
    for chunks in (3, 7, inputs.trace.n_passes):  # down to a stop at every pass
        assert _record(inputs, progress=True, chunks=chunks) == whole
    assert "run: " in sys.stderr.getvalue()  # the plain progress lines off a terminal
