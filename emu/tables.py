"""Every table the commands print, in one of three forms: a `rich` table fitted to the terminal's width when the
output is a terminal, plain aligned text elsewhere (pipes, files, CI, tests: stable and greppable), Markdown where
a command writes docs (`--markdown`, `--write-docs`, `emu validate --summary`).

A renderer builds its `Column`s and rows of already formatted cells once; `render` writes them to a stream in the
form the stream calls for, `table_text` returns them as text (for reports that mix tables with prose). rich is
imported only to draw a terminal table, so `emu --help` and piped output never load it.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, TextIO

Align = Literal["left", "right"]
Format = Literal["plain", "markdown", "rich"]
FORMATS: tuple[Format, ...] = ("plain", "markdown", "rich")


@dataclass(frozen=True)
class Column:
    """A column's header, its alignment, and the least width of its plain text (a layout that short values
    keep); a cell wider than that widens the column."""

    header: str
    align: Align = "right"
    width: int = 0


def is_terminal(stream: Any) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty()) if isatty is not None else False
    except ValueError:  # a closed stream
        return False


def format_for(stream: Any, markdown: bool = False) -> Format:
    """The form for output going to `stream`: Markdown when asked, rich on a terminal, plain text elsewhere."""
    if markdown:
        return "markdown"
    return "rich" if is_terminal(stream) else "plain"


def table_text(columns: Sequence[Column], rows: Sequence[Sequence[str]], fmt: str = "plain", *,
               header: bool = True, rule: bool = True, indent: str = "", sep: str = "  ",
               stream: TextIO | None = None, width: int | None = None) -> str:
    """The table as text, without a final newline.

    plain: `header` row (unless False), a `rule` of dashes under it (unless False), cells aligned and joined by
    `sep`, each line prefixed by `indent` and without trailing blanks. markdown: a header row, an alignment row,
    `|` in cells escaped (`header`, `rule`, `indent` and `sep` do not apply). rich: the table as rich draws it
    for `stream` (default stdout: its colours, and its width unless `width` is given), with the ANSI codes.
    """
    if fmt not in FORMATS:
        raise ValueError(f"expected a table format among {FORMATS}, got {fmt!r}")
    cells = [[str(c) for c in row] for row in rows]
    for row in cells:
        if len(row) != len(columns):
            raise ValueError(f"a row of {len(row)} cells for {len(columns)} columns: {row}")
    if fmt == "markdown":
        return _markdown(columns, cells)
    if fmt == "rich":
        return _rich(columns, cells, header=header, stream=stream, width=width)
    return _plain(columns, cells, header=header, rule=rule, indent=indent, sep=sep)


def render(columns: Sequence[Column], rows: Sequence[Sequence[str]], stream: TextIO | None = None,
           fmt: str | None = None, **options: Any) -> None:
    """Write the table and a newline to `stream` (default stdout) in `fmt` (default: `format_for(stream)`);
    `options` as `table_text` takes them."""
    out = sys.stdout if stream is None else stream
    text = table_text(columns, rows, format_for(out) if fmt is None else fmt, stream=out, **options)
    out.write(text + "\n")


def _plain(columns: Sequence[Column], cells: list[list[str]], *, header: bool, rule: bool, indent: str,
           sep: str) -> str:
    widths = [max(col.width, len(col.header) if header else 0, *(len(r[i]) for r in cells))
              for i, col in enumerate(columns)]

    def line(row: Sequence[str]) -> str:
        text = sep.join(c.ljust(w) if col.align == "left" else c.rjust(w)
                        for c, w, col in zip(row, widths, columns, strict=True))
        return (indent + text).rstrip()

    lines = []
    if header:
        head = line([col.header for col in columns])
        lines.append(head)
        if rule:
            lines.append(indent + "-" * (len(head) - len(indent)))
    lines += [line(r) for r in cells]
    return "\n".join(lines)


def _markdown(columns: Sequence[Column], cells: list[list[str]]) -> str:
    def line(row: Sequence[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in row) + " |"

    align = "|" + "|".join("---" if col.align == "left" else "---:" for col in columns) + "|"
    return "\n".join([line([col.header for col in columns]), align, *(line(r) for r in cells)])


#: the narrowest a text column gets on a terminal before the figures fold too
_FEW = 8


def _rich(columns: Sequence[Column], cells: list[list[str]], *, header: bool, stream: TextIO | None,
          width: int | None) -> str:
    from rich import box
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = Console(file=sys.stdout if stream is None else stream, width=width, highlight=False)
    # a narrow terminal narrows the text (left-aligned) columns first, folding a long name onto more lines rather
    # than cutting it; figures (right-aligned) keep their width while that leaves the text columns room for a
    # few characters, and fold too on a terminal narrower still (never cut: every cell stays readable)
    longest = [max([len(word) for word in col.header.split()] + [len(r[i]) for r in cells], default=0)
               for i, col in enumerate(columns)]
    figures = sum(n for n, col in zip(longest, columns, strict=True) if col.align == "right")
    texts = sum(min(_FEW, n) for n, col in zip(longest, columns, strict=True) if col.align == "left")
    keep_figures = figures + texts + 2 * (len(columns) - 1) <= console.width
    table = Table(box=box.SIMPLE_HEAD, show_header=header, show_edge=False, header_style="bold", pad_edge=False,
                  collapse_padding=True)
    for col in columns:
        table.add_column(col.header, justify=col.align, overflow="fold",
                         no_wrap=keep_figures and col.align == "right")
    for row in cells:
        table.add_row(*(Text(c) for c in row))  # Text, not markup: cells such as "[lru, opt]" stay as written
    with console.capture() as captured:
        console.print(table)
    return captured.get().rstrip("\n")
