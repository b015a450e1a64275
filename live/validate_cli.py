"""`emu validate`: run a scenario live (or read a finished live run), replay its recorded trace through
the emulator with a hardware profile, and print emulated vs measured TTFT, decode tok/s, hit rate and
bytes moved with the error of each.

Profile: a live run must be compared with a profile measured on the same start of the machine (the
H100's host-bound figures moved by up to 2x between starts), so `--profile` should name the profile
`emu calibrate` wrote in the same lease; without it the scenario's profile is used, or with
`--from-live DIR` the one profile (*.toml) in DIR. A runtime calibration (`*_runtime_cal*.json`, written
by `python -m live.matrix`, one per model and prefetch policy) adds the live runtime's own host cost per
layer and per expert; a run takes the calibration of a runtime with its prefetch policy, else the one
without prefetch. With `--from-live DIR` the ones in DIR are used unless `--no-runtime-cal`.
"""

from __future__ import annotations

import argparse
import collections
import json
from pathlib import Path
from typing import Any

from emu.errors import EmuError

_LIVE_FLAGS = ("device", "scale", "layers", "prompt_len", "decode_tokens", "experts")


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register `validate` on the `emu` CLI's subparsers."""
    p = subparsers.add_parser("validate", help="emulated vs measured: live runs replayed through the emulator",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("scenario", type=Path, nargs="*", help="scenario TOML files (optional with --from-live)")
    p.add_argument("--from-live", type=Path, default=None, metavar="DIR",
                   help="read finished live runs (JSON record + trace) from DIR instead of running them: "
                        "live_<scenario stem>.json per scenario, or every run record in DIR")
    p.add_argument("--profile", type=Path, default=None, help="hardware profile TOML (see above)")
    p.add_argument("--runtime-cal", type=Path, action="append", default=[], metavar="FILE",
                   help="runtime calibration JSON (repeatable; one per model)")
    p.add_argument("--no-runtime-cal", action="store_true", help="ignore runtime calibrations found in DIR")
    p.add_argument("--engine", choices=("fast", "des"), default="fast")
    p.add_argument("--statistic", choices=("auto", "best", "median", "paired"), default="auto",
                   help="which of a record's repeated measurements to compare: the best round (as recorded) or the "
                        "median of its rounds, with the runtime calibration's matching steps; or paired: each round "
                        "emulated with the calibration taken right before it, the round of median error shown; "
                        "auto (default): paired for records that hold a calibration per round, else best")
    p.add_argument("--rounds", action="store_true",
                   help="paired: show each round's TTFT and decode error under its run (a spread is the host's "
                        "noise, an offset shared by the rounds the model's)")
    p.add_argument("--out", type=Path, default=None, help="write the comparison as JSON here")
    live = p.add_argument_group("live run (without --from-live)")
    live.add_argument("--device", choices=("cpu", "cuda"), default="cuda")
    live.add_argument("--scale", choices=("tiny", "full"), default="full")
    live.add_argument("--layers", type=int, default=None)
    live.add_argument("--prompt-len", type=int, default=None)
    live.add_argument("--decode-tokens", type=int, default=None)
    live.add_argument("--experts", choices=("eager", "fused"), default="eager",
                      help="eager (default here): expert by expert, the emulator's semantics")
    live.add_argument("--live-dir", type=Path, default=Path("out/live"), help="where live runs are written")
    live.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.set_defaults(func=run)
    return p


def is_run_record(path: Path) -> bool:
    try:
        rec = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return isinstance(rec, dict) and rec.get("offload") is True and "stats" in rec and "trace" in rec


def _run_live(scenario: Path, args: argparse.Namespace) -> Path:
    """`emu live` on the scenario with the validate options; returns the JSON record's path."""
    from . import cli as live_cli

    parser = argparse.ArgumentParser(prog="emu")
    live_cli.add_parser(parser.add_subparsers())
    argv = ["live", str(scenario), "--out", str(args.live_dir / f"live_{scenario.stem}.npz")]
    for flag in _LIVE_FLAGS:
        value = getattr(args, flag)
        if value is not None:
            argv += [f"--{flag.replace('_', '-')}", str(value)]
    for item in args.overrides:
        argv += ["--set", item]
    live_args = parser.parse_args(argv)
    live_cli.run(live_args)
    return args.live_dir / f"live_{scenario.stem}.json"


def _records(args: argparse.Namespace) -> list[Path]:
    if args.from_live is None:
        if not args.scenario:
            raise EmuError("expected at least one scenario, or --from-live DIR", key="scenario")
        return [_run_live(s, args) for s in args.scenario]
    d = args.from_live
    if not d.is_dir():
        raise EmuError("expected a directory of live runs", file=str(d), key="--from-live")
    if args.scenario:
        paths = [d / f"live_{s.stem}.json" for s in args.scenario]
        for path in paths:
            if not path.is_file():
                raise EmuError("no live run for this scenario (expected the record `emu live` writes)",
                               file=str(path), key="--from-live")
        return paths
    paths = [p for p in sorted(d.glob("*.json")) if is_run_record(p)]
    if not paths:
        raise EmuError("no offloaded live run records (*.json) found", file=str(d), key="--from-live")
    return paths


def _profile_path(args: argparse.Namespace) -> Path:
    if args.profile is not None:
        return args.profile
    if args.from_live is not None:
        found = sorted(args.from_live.glob("*.toml"))
        if len(found) == 1:
            return found[0]
        raise EmuError(f"found {len(found)} profiles (*.toml); name one with --profile", file=str(args.from_live),
                       key="--profile")
    from emu.scenario import load_scenario

    return Path(load_scenario(args.scenario[0], args.overrides).profile_path)


def load_runtime_cals(paths: list[Path]) -> dict[tuple[str, str], dict[str, Any]]:
    """Runtime calibrations by (preset, prefetch policy of the runtime measured; none when not named)."""
    cals: dict[tuple[str, str], dict[str, Any]] = {}
    for path in paths:
        try:
            cal = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise EmuError(f"cannot read a runtime calibration: {err}", file=str(path)) from None
        if not isinstance(cal, dict) or not isinstance(cal.get("profile_model"), str):
            raise EmuError("expected a JSON object naming its model", file=str(path), key="profile_model")
        cals[(cal["profile_model"], str(cal.get("prefetch") or "none"))] = dict(cal, file=str(path))
    return cals


def validate_dir(records: list[Path], profile_path: Path, cal_paths: list[Path], engine: str = "fast",
                 statistic: str = "auto") -> list[Any]:
    """Every run validated against the profile, with the runtime calibration of its model applied."""
    from emu.profile import load_profile

    from .runtime_cal import HOST_KEYS, apply_runtime_overheads, median_key
    from .validate import live_model, load_live_run, validate_paired, validate_run

    base = load_profile(profile_path)
    cals = load_runtime_cals(cal_paths)
    out = []
    for path in records:
        run_ = load_live_run(path)
        if statistic == "paired" or (statistic == "auto" and "runtime_cal_rounds" in run_.record):
            # the record's own calibration per round
            out.append(validate_paired(run_, base, engine))
            continue
        spec = live_model(run_, base)
        profile = base
        # the calibration of a runtime with the run's prefetch policy, else the one without prefetch
        cal = cals.get((spec.name, str(run_.record.get("prefetch") or "none"))) or cals.get((spec.name, "none"))
        if cal is not None:
            if statistic == "median" and "full_step_median_s" in cal:
                cal = dict(cal, full_step_s=cal["full_step_median_s"],
                           no_experts_step_s=cal["no_experts_step_median_s"])
                for key in HOST_KEYS:
                    if median_key(key) in cal:
                        cal[key] = cal[median_key(key)]
            profile = apply_runtime_overheads(base, spec, cal, file=cal["file"])
        out.append(validate_run(run_, profile, engine, "best" if statistic == "auto" else statistic))
    return out


def run(args: argparse.Namespace) -> int:
    from .validate import error_summary, format_table

    records = _records(args)
    profile_path = _profile_path(args)
    cal_paths = list(args.runtime_cal)
    if args.from_live is not None and not args.no_runtime_cal and not cal_paths:
        cal_paths = sorted(args.from_live.glob("*_runtime_cal*.json"))
    validations = validate_dir(records, profile_path, cal_paths, args.engine, args.statistic)
    print(f"profile {profile_path}" + (f", runtime calibration {', '.join(map(str, cal_paths))}" if cal_paths else ""))
    used = collections.Counter(v.statistic for v in validations)
    print("statistic: " + ", ".join(f"{name} ({n} runs)" for name, n in sorted(used.items())))
    print(format_table(validations, rounds=args.rounds))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        rows = [{"run": v.tag, "statistic": v.statistic, "counts_equal": v.counts_equal,
                 "live_counts": v.live_counts, "emu_counts": v.emu_counts,
                 "prefetch": v.prefetch, "live_prefetch": v.live_prefetch, "emu_prefetch": v.emu_prefetch,
                 **{m.name: {"measured": m.measured, "emulated": m.emulated, "error": m.error} for m in v.metrics},
                 **({"round_errors": dict(v.round_errors)} if v.round_errors else {})}
                for v in validations]
        summary = {k: {"median_abs_error": a, "max_abs_error": b} for k, (a, b) in error_summary(validations).items()}
        args.out.write_text(json.dumps({"profile": str(profile_path), "runtime_cal": [str(p) for p in cal_paths],
                                        "runs": rows, "summary": summary}, indent=1) + "\n")
    return 0
