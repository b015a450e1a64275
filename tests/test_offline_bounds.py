"""Offline bounds: a stack holding a policy that reads the future (belady, oracle, lookahead) is flagged in its
record, in `emu run`'s table and JSON, and in a sweep's rows and Pareto front."""

from __future__ import annotations

from pathlib import Path

from emu.cli import _row, _summary
from emu.runner import run_scenario
from emu.scenario import load_scenario
from emu.sweep import pareto_table, row_from_record

ROOT = Path(__file__).resolve().parents[1]
SHOOTOUT = ROOT / "scenarios" / "shootout"


def _record(name: str) -> dict:
    _result, rec = run_scenario(load_scenario(SHOOTOUT / f"{name}.toml"), "fast")
    return rec


def test_a_stack_that_reads_the_future_is_flagged_everywhere() -> None:
    bound, online = _record("gsm8k_05pct_belady_oracle"), _record("gsm8k_05pct_lru_next-layer")
    assert bound["bound"] == ["belady", "oracle"] and online["bound"] == []
    rows = [_summary(n, rec, Path(f"{n}.json")) for n, rec in (("b", bound), ("o", online))]
    assert rows[0]["bound"] is True and rows[1]["bound"] is False
    assert _row(rows[0])[0] == "b [bound]" and _row(rows[1])[0] == "o"
    sweep_rows = [row_from_record(rec, point=i) for i, rec in enumerate((bound, online))]
    assert [r["bound"] for r in sweep_rows] == [True, False]
    _columns, body = pareto_table(sweep_rows, by=())
    stacks = [cells[0] for cells in body]
    assert any(s.endswith("[bound]") and "belady" in s for s in stacks)
    assert any(not s.endswith("[bound]") for s in stacks)
