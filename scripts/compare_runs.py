"""Run every bundled scenario, or compare two folders of run records: counts equal, times within a tolerance.

A core change must leave every bundled scenario's numbers as they were. Record them before the change and
after it, then compare:

    python scripts/compare_runs.py record runs_before [--engine fast|des] [scenarios ...]
    python scripts/compare_runs.py compare runs_before runs_after [--rtol 1e-9]

`record` runs each scenario (default: scenarios/*.toml and scenarios/shootout/*.toml) and writes
DIR/<stem>.json. `compare` walks both records field by field: integers and strings must be equal, floats
within `rtol` relative (or 1e-15 absolute near zero); wall-clock timings and the scenario's file path are
skipped. A policy parameter echoed only in the later record (`scenario.policy.<kind>.<param>`) with its
registered default is a parameter added since, not a difference: it is counted and named in the summary.
It prints one line per difference and a summary, and exits 1 when anything differs.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
#: fields that measure this process, not the emulated run
SKIP = {"timings", "version", "git_revision"}


def record(out: Path, engine: str | None, scenarios: list[str]) -> int:
    from emu.runner import run_scenario
    from emu.scenario import load_scenario

    bundled = (*ROOT.glob("scenarios/*.toml"), *ROOT.glob("scenarios/shootout/*.toml"))
    files = scenarios or sorted(str(p) for p in bundled)
    out.mkdir(parents=True, exist_ok=True)
    for i, path in enumerate(files, 1):
        _result, rec = run_scenario(load_scenario(path), engine)
        (out / f"{Path(path).stem}.json").write_text(json.dumps(rec, indent=1, sort_keys=True))
        print(f"[{i}/{len(files)}] {path}", file=sys.stderr)
    return 0


def _walk(a: Any, b: Any, where: str, rtol: float, out: list[str]) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            if key in SKIP:
                continue
            if key not in a or key not in b:
                out.append(f"{where}.{key}: only in {'after' if key not in a else 'before'}")
                continue
            _walk(a[key], b[key], f"{where}.{key}", rtol, out)
    elif isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            out.append(f"{where}: {len(a)} items before, {len(b)} after")
            return
        for i, (x, y) in enumerate(zip(a, b)):
            _walk(x, y, f"{where}[{i}]", rtol, out)
    elif isinstance(a, float) or isinstance(b, float):
        if not isinstance(a, (int, float)) or not isinstance(b, (int, float)):
            out.append(f"{where}: {a!r} before, {b!r} after")
        elif not (a == b or math.isclose(a, b, rel_tol=rtol, abs_tol=1e-15)):
            out.append(f"{where}: {a!r} before, {b!r} after (rel {abs(a - b) / max(abs(a), abs(b)):.2e})")
    elif a != b:
        out.append(f"{where}: {a!r} before, {b!r} after")


def _drop_new_defaults(ra: dict[str, Any], rb: dict[str, Any], new: set[str]) -> None:
    """Remove from rb's scenario echo each policy parameter that ra lacks and rb holds at its registered
    default (a parameter added since `before` was recorded), adding `kind.policy.param` to `new`."""
    from emu.policies.registry import REGISTRY

    pa = ra.get("scenario", {}).get("policy", {})
    for kind, pb in rb.get("scenario", {}).get("policy", {}).items():
        old = pa.get(kind)
        if not isinstance(pb, dict) or not isinstance(old, dict) or old.get("name") != pb.get("name"):
            continue
        pol = REGISTRY.get(kind, {}).get(pb.get("name"))
        for key in [k for k in pb if k not in old and k != "name"]:
            if pol is not None and key in pol.params and pb[key] == pol.params[key].default:
                del pb[key]
                new.add(f"{kind}.{pb['name']}.{key}")


def compare(before: Path, after: Path, rtol: float) -> int:
    names = sorted({p.name for p in before.glob("*.json")} | {p.name for p in after.glob("*.json")})
    bad = 0
    new: set[str] = set()
    for name in names:
        a, b = before / name, after / name
        if not a.exists() or not b.exists():
            print(f"{name}: missing {'before' if not a.exists() else 'after'}")
            bad += 1
            continue
        diffs: list[str] = []
        ra, rb = json.loads(a.read_text()), json.loads(b.read_text())
        ra.get("scenario", {}).pop("file", None)
        rb.get("scenario", {}).pop("file", None)
        _drop_new_defaults(ra, rb, new)
        _walk(ra, rb, name, rtol, diffs)
        if diffs:
            bad += 1
            print(f"{name}: {len(diffs)} differences")
            for line in diffs[:10]:
                print(f"  {line}")
    print(f"{len(names)} records compared, {len(names) - bad} identical (counts equal, floats within {rtol:g} "
          f"relative), {bad} differ")
    if new:
        print(f"parameters added since, at their defaults (not compared): {', '.join(sorted(new))}")
    return 1 if bad else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    rec = sub.add_parser("record", help="run scenarios into DIR/<stem>.json")
    rec.add_argument("out", type=Path)
    rec.add_argument("--engine", choices=("fast", "des"), default=None)
    rec.add_argument("scenarios", nargs="*")
    cmp_ = sub.add_parser("compare", help="compare two folders of run records")
    cmp_.add_argument("before", type=Path)
    cmp_.add_argument("after", type=Path)
    cmp_.add_argument("--rtol", type=float, default=1e-9)
    args = ap.parse_args(argv)
    if args.cmd == "record":
        return record(args.out, args.engine, args.scenarios)
    return compare(args.before, args.after, args.rtol)


if __name__ == "__main__":
    sys.exit(main())
