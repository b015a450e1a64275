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
    la = numeric_leaves({k: a[k] for k in SECTIONS if k in a})
    lb = numeric_leaves({k: b[k] for k in SECTIONS if k in b})
    return [Diff(p, la[p], lb[p]) for p in la
            if p in lb and p.split(".")[-1].split("[")[0] not in _COORDINATES]


def summarize(diffs: list[Diff]) -> dict[str, dict[str, Any]]:
    """Per group (copy, compute, models.<m>.expert, .dense, ...): median and worst relative difference."""
    groups: dict[str, list[Diff]] = {}
    for d in diffs:
        parts = d.path.split(".")
        key = ".".join(parts[:3]) if parts[0] == "models" else parts[0]
        key = key.split("[")[0]
        groups.setdefault(key, []).append(d)
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
    print(f"{'group':40s} {'n':>4s} {'median':>8s} {'max':>8s}  worst")
    for key, s in summarize(diffs).items():
        print(f"{key:40s} {s['n']:4d} {s['median_rel']:8.2%} {s['max_rel']:8.2%}  {s['worst']}")
    for d in diffs:
        if not d.path.startswith("models") and "table" not in d.path:
            print(f"  {d.path:38s} {d.a:12.4g} {d.b:12.4g} {d.rel:8.2%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
