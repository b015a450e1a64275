"""Print the numbers docs/specmd.md and docs/prefetch_study.md quote, from sweep outputs.

    python scripts/repro_table.py runs/sweeps/specmd_table1_olmoe [more sweep output dirs ...] [--md]

Reads each directory's runs/*.json (the full `emu run` record of every point, written by `emu sweep`) in point
order and prints one row per point: model, capacity (and slots), stack, TTFT (mean over requests, and over the requests
after the first: warm) and TPOT in ms, decode tok/s, e2e s,
on-time hit %, hit % counting late prefetch hits too, collision % of accesses, collisions as % of misses,
prefetch precision and recall %, stall s, lost and degraded routing mass %, and `[bound]` for offline bounds.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

COLUMNS = ("model", "capacity", "slots", "stack", "TTFT ms", "warm TTFT ms", "TPOT ms", "tok/s", "e2e s", "hit %",
           "hit+late %",
           "coll %acc", "coll %miss", "pf prec %", "pf rec %", "stall s", "lost %", "degr %")


def _pct(num: float, den: float) -> str:
    return f"{100.0 * num / den:.1f}" if den else "-"


def _warm(r: dict) -> str:
    """Mean TTFT of the requests after the first (the first prefill starts from an empty cache)."""
    t = r.get("per_request_ttft_s") or []
    return f"{1e3 * sum(t[1:]) / (len(t) - 1):.0f}" if len(t) > 1 else "-"


def rows(directory: Path) -> list[list[str]]:
    records = []
    for f in sorted((directory / "runs").glob("*.json")):
        r = json.loads(f.read_text())
        records.append((r["sweep"]["point"], r))
    out = []
    for _, r in sorted(records, key=lambda x: x[0]):
        row = r["sweep"]["row"]
        acc = r["accesses"]
        q = r.get("quality", {})
        stack = row["stack"] + (" [bound]" if r.get("bound") else "")
        out.append([
            row["model"], str(row["capacity"]), str(row["capacity_slots"]), stack,
            f"{1e3 * r['ttft_s']:.0f}", _warm(r), f"{1e3 * r['tpot_s']:.1f}", f"{r['decode_tok_per_s']:.2f}",
            f"{r['e2e_s']:.2f}", _pct(r["hits"], acc), _pct(r["hits"] + r["late_prefetch_hits"], acc),
            _pct(r["misses_collision"], acc), _pct(r["misses_collision"], r["misses"]),
            f"{100 * r['prefetch_precision']:.1f}" if r["prefetch_issued"] else "-",
            f"{100 * r['prefetch_recall']:.1f}" if r["prefetch_issued"] else "-",
            f"{r['stall_s']:.2f}", f"{100 * q.get('lost_mass_frac', 0.0):.1f}",
            f"{100 * q.get('degraded_mass_frac', 0.0):.1f}",
        ])
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("dirs", nargs="+", type=Path, help="sweep output directories")
    parser.add_argument("--md", action="store_true", help="a Markdown table instead of aligned text")
    args = parser.parse_args(argv)
    table = [r for d in args.dirs for r in rows(d)]
    if args.md:
        print("| " + " | ".join(COLUMNS) + " |")
        print("|" + "---|" * len(COLUMNS))
        for r in table:
            print("| " + " | ".join(r) + " |")
        return 0
    widths = [max(len(c), *(len(r[i]) for r in table)) for i, c in enumerate(COLUMNS)]
    print("  ".join(c.ljust(w) for c, w in zip(COLUMNS, widths)))
    for r in table:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
