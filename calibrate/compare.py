"""Spread between two calibrations of one machine: relative difference of every measured figure."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import attrs
import numpy as np

from .fit import relative_difference

SECTIONS = ("copy", "compute", "models")
#: grid coordinates, not measured figures
_COORDINATES = ("tokens", "context", "table_bytes")


@attrs.frozen
class Diff:
    path: str
    a: float
    b: float
    #: copy, compute, or models.<name>.<table> (model names may hold dots, so it is kept, not parsed)
    group: str = ""

    @property
    def rel(self) -> float:
        return relative_difference(self.a, self.b)


def numeric_leaves(data: Any, prefix: str = "") -> dict[str, float]:
    """Every number in a nested dict/list, keyed by its dotted path (list items as [i])."""
    out: dict[str, float] = {}
    if isinstance(data, dict):
        for k, v in data.items():
            out.update(numeric_leaves(v, f"{prefix}.{k}" if prefix else str(k)))
    elif isinstance(data, list):
        for i, v in enumerate(data):
            out.update(numeric_leaves(v, f"{prefix}[{i}]"))
    elif isinstance(data, int | float) and not isinstance(data, bool):
        out[prefix] = float(data)
    return out


def compare_profiles(a: dict[str, Any], b: dict[str, Any]) -> list[Diff]:
    """Figures present in both profiles' measured sections (provenance is not compared)."""
    parts: list[tuple[str, Any, Any, str]] = [(k, a[k], b[k], k) for k in ("copy", "compute") if k in a and k in b]
    for name, ma in a.get("models", {}).items():
        mb = b.get("models", {}).get(name)
        if mb is None:
            continue
        for key, va in ma.items():
            if key in mb:
                parts.append((f'models."{name}".{key}', va, mb[key], f"models.{name}.{key}"))
    out = []
    for prefix, va, vb, group in parts:
        la, lb = numeric_leaves(va, prefix), numeric_leaves(vb, prefix)
        out += [Diff(p, la[p], lb[p], group) for p in la
                if p in lb and p.split(".")[-1].split("[")[0] not in _COORDINATES]
    return out


def summarize(diffs: list[Diff]) -> dict[str, dict[str, Any]]:
    """Per group (copy, compute, models.<m>.expert, .dense, ...): median and worst relative difference."""
    groups: dict[str, list[Diff]] = {}
    for d in diffs:
        groups.setdefault(d.group or d.path.split(".")[0], []).append(d)
    out = {}
    for key, ds in groups.items():
        rels = np.array([d.rel for d in ds])
        worst = ds[int(np.argmax(rels))]
        out[key] = {"n": len(ds), "median_rel": float(np.median(rels)), "max_rel": float(rels.max()),
                    "worst": worst.path}
    return out


def main(argv: list[str] | None = None) -> int:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib

    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print("usage: python -m calibrate.compare A.toml B.toml", file=sys.stderr)
        return 2
    a, b = (tomllib.loads(Path(p).read_text()) for p in argv)
    diffs = compare_profiles(a, b)
    from emu.tables import Column, render

    render([Column("group", "left", 40), Column("n", width=4), Column("median", width=8), Column("max", width=8),
            Column("worst", "left")],
           [[key, str(s["n"]), f"{s['median_rel']:.2%}", f"{s['max_rel']:.2%}", str(s["worst"])]
            for key, s in summarize(diffs).items()], rule=False, sep=" ")
    render([Column("path", "left", 38), Column("A", width=12), Column("B", width=12), Column("relative", width=8)],
           [[d.path, f"{d.a:.4g}", f"{d.b:.4g}", f"{d.rel:.2%}"]
            for d in diffs if not d.path.startswith("models") and "table" not in d.path], header=False, indent="  ",
           sep=" ")
    return 0


if __name__ == "__main__":
    sys.exit(main())
