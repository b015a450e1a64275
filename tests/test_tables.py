"""One table module for every command: a rich table on a terminal, plain aligned text elsewhere, Markdown for
docs; and the commands' tables going through it."""

from __future__ import annotations

import io
import re
from collections import Counter

import pytest

from emu.tables import Column, format_for, render, table_text

ANSI = re.compile(r"\x1b\[[0-9;]*m")

COLUMNS = [Column("scenario", "left"), Column("tok/s"), Column("caps", "left"), Column("TTFT ms", width=9)]
ROWS = [["olmoe-1b-7b_h100_5pct", "17.6", "[live, miss_events]", "268.79"],
        ["mixtral", "1234.5", "a|b", "0.01"]]


class Terminal(io.StringIO):
    """A stream that says it is a terminal, as sys.stdout does in a shell."""

    def isatty(self) -> bool:
        return True


def test_plain_text_off_a_terminal() -> None:
    out = io.StringIO()
    render(COLUMNS, ROWS, out)
    assert out.getvalue() == (
        "scenario                tok/s  caps                   TTFT ms\n"
        "-------------------------------------------------------------\n"
        "olmoe-1b-7b_h100_5pct    17.6  [live, miss_events]     268.79\n"
        "mixtral                1234.5  a|b                       0.01\n")
    assert format_for(out) == "plain" and format_for(out, markdown=True) == "markdown"


def test_plain_options_and_no_trailing_blanks() -> None:
    text = table_text([Column("name", "left", 6), Column("what", "left")], [["a", "x"], ["bb", "long text"]],
                      header=False, indent="  ", sep=" ")
    assert text == "  a      x\n  bb     long text"
    bare = table_text([Column("layer"), Column("share")], [["0", "0.5"]], rule=False)
    assert bare == "layer  share\n    0    0.5"


def test_a_rich_table_on_a_terminal_holds_every_cell() -> None:
    out = Terminal()
    assert format_for(out) == "rich"
    render(COLUMNS, ROWS, out, width=120)
    drawn = out.getvalue()
    assert "\x1b[" in drawn and "─" in drawn  # rich's styles and rule, not the plain form
    text = ANSI.sub("", drawn)
    for cell in [c.header for c in COLUMNS] + [c for row in ROWS for c in row]:
        assert cell in text, cell  # "[live, miss_events]" is text, not rich markup
    assert max(len(line) for line in text.splitlines()) <= 120


def test_a_narrow_terminal_folds_cells_and_hides_none() -> None:
    out = Terminal()
    render(COLUMNS, ROWS, out, width=40)
    lines = ANSI.sub("", out.getvalue()).splitlines()
    assert max(len(line) for line in lines) <= 40
    # a folded cell's pieces lie on several lines, between other columns' pieces: count characters instead
    drawn = Counter("".join(lines).replace(" ", "").replace("─", ""))
    cells = Counter(("".join(c.header for c in COLUMNS) + "".join(c for row in ROWS for c in row)).replace(" ", ""))
    assert drawn == cells  # every character of every cell, no ellipsis, nothing cut


def test_markdown_aligns_by_column_and_escapes_bars() -> None:
    md = table_text(COLUMNS, ROWS, "markdown")
    assert md.splitlines()[:2] == ["| scenario | tok/s | caps | TTFT ms |", "|---|---:|---|---:|"]
    assert "| mixtral | 1234.5 | a\\|b | 0.01 |" in md


def test_bad_rows_and_formats_are_refused() -> None:
    with pytest.raises(ValueError, match="2 cells for 4 columns"):
        table_text(COLUMNS, [["a", "b"]])
    with pytest.raises(ValueError, match="table format"):
        table_text(COLUMNS, ROWS, "html")  # type: ignore[arg-type]


def test_emu_run_table_plain_and_rich() -> None:
    from emu.cli import _row, _table_columns

    summary = {"scenario": "olmoe-1b-7b_h100_5pct", "engine": "fast", "ttft_s": 0.26879, "tpot_s": 0.05697,
               "decode_tok_per_s": 17.55, "hit_rate": 0.0, "misses_collision": 21277, "bytes_h2d": 1.70081e12,
               "copy_busy_frac": 0.53, "stall_s": 12.234, "lost_mass_frac": 0.0, "degraded_mass_frac": 0.0}
    plain = io.StringIO()
    render(_table_columns(), [_row(summary)], plain)
    lines = plain.getvalue().splitlines()
    assert lines[0].startswith("scenario" + " " * 26 + "  engine    TTFT ms")  # the fixed widths of the layout
    assert lines[1] == "-" * len(lines[0])
    assert lines[2].split() == ["olmoe-1b-7b_h100_5pct", "fast", "268.79", "56.97", "17.6", "0.0", "21277",
                                "1700.81", "53", "12.234", "0.0", "0.0"]
    term = Terminal()
    render(_table_columns(), [_row(summary)], term, width=160)
    text = ANSI.sub("", term.getvalue())
    assert all(cell in text for cell in _row(summary))


def test_the_pareto_table_keeps_its_layout() -> None:
    from emu.sweep import render_pareto

    front = [{"trace": "t", "capacity": "25%", "stack": "lru", "decode_tok_s": 20.0, "ttft_ms": 100.0,
              "lost_mass_frac": 0.0, "hit_rate": 0.5, "misses_collision": 3}]
    assert render_pareto(front, ("trace", "capacity")).splitlines() == [
        "capacity  stack  tok/s  TTFT ms  lost mass %  hit %  collis.",
        "-" * 60,
        "25%       lru     20.0    100.0         0.00   50.0        3"]


def test_reports_draw_their_tables_in_the_form_asked() -> None:
    from emu.trace.audit import audit
    from emu.trace.audit import render as render_audit
    from emu.trace.inspect import render as render_inspect
    from emu.trace.inspect import summarize

    from .test_trace_inspect_cli import hand_trace

    summary = summarize(hand_trace())
    plain = render_inspect(summary)
    assert "layer  top-expert share  reuse rate\n    0             0.375       0.750" in plain
    drawn = ANSI.sub("", render_inspect(summary, fmt="rich"))
    assert "─" in drawn and "top-expert share" in drawn and "0.375" in drawn and "mean" in drawn
    report = audit(hand_trace())
    md = render_audit(report, markdown=True)
    assert "| slots/layer | % of E |" in md and "|---:|---:|" in md
    assert "─" in render_audit(report, fmt="rich") and "─" not in render_audit(report)
