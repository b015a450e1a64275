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

A run of a model the profile holds no measured expert or dense table for is emulated with the profile's
roofline estimate; a one-line warning on stderr says so, as such errors say nothing of a calibration.

`--summary DIR [DIR...]` reads out-of-sample validation datasets instead (`validation/<date>-<gpu>/`
folders holding comparisons.json, or `validation/` for all of them; see live/validation_set.py): per
dataset a Markdown table of each configuration's errors, then the summary per GPU kind and runtime
(median and max |error| of TTFT and decode, step-time KS, TOST at +-5%, equal counts). `--json` prints the
summary as JSON only; `--write-docs FILE` puts the summary table between FILE's
`<!-- validation-summary:start -->` and `<!-- validation-summary:end -->` lines. No torch needed.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from emu.errors import EmuError

if TYPE_CHECKING:
    from emu.models import ModelSpec
    from emu.profile import HardwareProfile

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
    summary = p.add_argument_group("validation datasets (instead of live runs)")
    summary.add_argument("--summary", type=Path, nargs="+", default=None, metavar="DIR",
                         help="summarize validation datasets: a dataset folder (holding comparisons.json) or a "
                              "folder of them such as validation/")
    summary.add_argument("--json", action="store_true",
                         help="with --summary: print only the summary, as a JSON list (one object per GPU kind "
                              "and runtime)")
    summary.add_argument("--write-docs", type=Path, default=None, metavar="FILE",
                         help="with --summary: write the summary table between FILE's validation-summary markers")
    proto = p.add_argument_group("the out-of-sample protocol (docs/validation.md)")
    proto.add_argument("--matrix", type=Path, default=None, metavar="MATRIX.toml",
                       help="run every configuration of the matrix live (GPU) into --out DIR, calibrating the "
                            "runtime first with --calibrate-runtime NAME on requests of its own")
    proto.add_argument("--calibrate-runtime", default=None, metavar="NAME")
    proto.add_argument("--decode", choices=("eager", "static", "graph"), default="eager",
                       help="with --matrix: the live runtime's decode mode (graph: the device-paced decode, each "
                            "pass replayed from CUDA graphs; static: its static KV cache without the graphs)")
    proto.add_argument("--compare", type=Path, default=None, metavar="DIR",
                       help="emulate every run of a dataset folder with --profile and --runtime (profiles that "
                            "never saw those runs) and write DIR/comparisons.json")
    proto.add_argument("--runtime", type=Path, default=None, metavar="R.toml", help="runtime profile for --compare")
    proto.add_argument("--gpu-kind", default=None, help="with --compare: h100, h200, ... (the rows' group)")
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
        rec = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):  # not readable, not UTF-8, not JSON, nested too deeply
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


def _refuse_hardware_keys(args: argparse.Namespace) -> None:
    """Validation compares live runs (the machine itself) with a profile file as measured: a scenario's `hardware.*`
    keys over the profile would hold for neither side, so they are refused before any live run starts."""
    from emu.scenario import load_scenario

    from .cli import refuse_hardware_keys

    for path in args.scenario or []:
        refuse_hardware_keys(load_scenario(path, args.overrides))


def load_runtime_cals(paths: list[Path]) -> dict[tuple[str, str], dict[str, Any]]:
    """Runtime calibrations by (preset, prefetch policy of the runtime measured; none when not named)."""
    cals: dict[tuple[str, str], dict[str, Any]] = {}
    for path in paths:
        try:
            cal = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError) as err:  # UnicodeDecodeError, JSONDecodeError: ValueErrors
            reason = "JSON nested too deeply" if isinstance(err, RecursionError) else err
            raise EmuError(f"cannot read a runtime calibration: {reason}", file=str(path)) from None
        if not isinstance(cal, dict) or not isinstance(cal.get("profile_model"), str):
            raise EmuError("expected a JSON object naming its model", file=str(path), key="profile_model")
        cals[(cal["profile_model"], str(cal.get("prefetch") or "none"))] = dict(cal, file=str(path))
    return cals


def roofline_warning(profile: HardwareProfile, spec: ModelSpec, profile_path: Path | str) -> str | None:
    """The warning for a model the profile has no measured expert (at the model's precision) or dense table
    for, so that the emulator falls back to the roofline estimate (`emu.profile.expert_curve`, `dense_table`);
    None when both tables are measured."""
    mc = profile.models.get(spec.name)
    missing = [name for name, ok in (("expert", mc is not None and spec.precision in mc.expert),
                                     ("dense", mc is not None and mc.dense is not None)) if not ok]
    if not missing:
        return None
    return (f"warning: no measured {'/'.join(missing)} table for {spec.name} in {profile_path}: the emulator uses "
            "the roofline estimate; errors below are not a calibration's")


def validate_dir(records: list[Path], profile_path: Path, cal_paths: list[Path], engine: str = "fast",
                 statistic: str = "auto") -> list[Any]:
    """Every run validated against the profile, with the runtime calibration of its model applied. A model
    without measured tables in the profile is named on stderr (once per model)."""
    from emu.profile import load_profile
    from emu.runtime_profile import NO_RUNTIME

    from .runtime_cal import HOST_KEYS, apply_runtime_overheads, median_key
    from .validate import kernel_priced, live_model, load_live_run, validate_paired, validate_run

    base = load_profile(profile_path)
    cals = load_runtime_cals(cal_paths)
    out = []
    warned: set[str] = set()
    for path in records:
        run_ = load_live_run(path)
        spec = live_model(run_, base)
        warning = roofline_warning(base, spec, profile_path)
        if warning is not None and spec.name not in warned:
            warned.add(spec.name)
            print(warning, file=sys.stderr)
        if statistic == "paired" or (statistic == "auto" and "runtime_cal_rounds" in run_.record):
            # the record's own calibration per round
            out.append(validate_paired(run_, base, engine))
            continue
        profile, runtime = base, NO_RUNTIME
        # the calibration of a runtime with the run's prefetch policy, else the one without prefetch
        cal = cals.get((spec.name, str(run_.record.get("prefetch") or "none"))) or cals.get((spec.name, "none"))
        if cal is not None:
            if statistic == "median" and "full_step_median_s" in cal:
                cal = dict(cal, full_step_s=cal["full_step_median_s"],
                           no_experts_step_s=cal["no_experts_step_median_s"])
                for key in HOST_KEYS:
                    if median_key(key) in cal:
                        cal[key] = cal[median_key(key)]
            profile, runtime = apply_runtime_overheads(base, spec, cal, file=cal["file"])
        if not kernel_priced(run_, runtime):
            print(f"warning: {path}: the run used the experts kernel {run_.record.get('experts_kernel')!r}, which "
                  f"this validation prices as {runtime.experts!r}: its errors are another runtime's (emulate it with "
                  f"a runtime profile of its kernel: `python -m live.protocol compare --runtime`)", file=sys.stderr)
        out.append(validate_run(run_, profile, engine, "best" if statistic == "auto" else statistic, runtime))
    return out


def run_protocol(args: argparse.Namespace) -> int:
    """`--matrix`: the protocol's live runs (GPU); `--compare`: their comparison with a calibration (no torch)."""
    from .protocol import compare, load_matrix, run_matrix

    if args.matrix is not None and args.compare is not None:
        raise EmuError("one step at a time: --matrix runs live, --compare emulates a finished dataset", key="--matrix")
    if args.matrix is not None:
        if args.out is None:
            raise EmuError("the folder the runs go to is missing", key="--out")
        matrix = load_matrix(args.matrix)
        try:
            import torch  # noqa: F401
        except ImportError:
            raise EmuError("running the matrix needs torch: pip install -e '.[live]'", key="--matrix") from None
        written = run_matrix(matrix, args.out, device=args.device, scale=args.scale,
                             calibrate_runtime=args.calibrate_runtime, decode=args.decode, kernel=args.experts)
        print(f"wrote {len(written)} run records to {args.out / 'runs'}")
        return 0
    if args.profile is None or args.gpu_kind is None:
        raise EmuError("--compare needs --profile (the device) and --gpu-kind; --runtime for the host",
                       key="--compare")
    data = compare(args.compare, args.profile, args.runtime, args.gpu_kind, engine=args.engine)
    print(f"wrote {args.compare / 'comparisons.json'} ({len(data['rows'])} configurations); "
          f"emu validate --summary {args.compare} prints them")
    return 0


def run_summary(args: argparse.Namespace) -> int:
    """`--summary`: the per-configuration tables and the summary of validation datasets (no torch)."""
    from emu.runtime_profile import HOST_DRIFT_TOLERANCE

    from .validation_set import (
        SELF_CHECK_TOLERANCE,
        find_datasets,
        format_config_table,
        format_model_table,
        format_repeats,
        format_summary_table,
        load_dataset,
        repeats,
        summarize,
        write_docs_summary,
    )

    if args.scenario or args.from_live is not None:
        raise EmuError("reads validation datasets, not live runs: drop the scenarios and --from-live",
                       key="--summary")
    files = list(dict.fromkeys(f.resolve() for d in args.summary for f in find_datasets(d)))
    datasets = [load_dataset(f) for f in files]  # every file checked before anything is printed or written
    rows = summarize(datasets)
    steady = {(r.gpu, r.runtime): r for r in summarize(datasets, steady=True)}
    table = format_summary_table(rows)
    steady_table = (f"On a steady host (the configurations whose runtime calibration saw the host's pace within "
                    f"{HOST_DRIFT_TOLERANCE:.0%}, `host_drift`):\n\n{format_summary_table(list(steady.values()))}"
                    if steady else "No configuration's runtime calibration found the host steady.")
    sound = {(r.gpu, r.runtime): r for r in summarize(datasets, sound=True)}
    if sound:  # both decided from the calibration alone, never from the validated runs
        steady_table += (f"\n\nOn a steady host with a calibration that composes its own step (the self-check within "
                         f"{SELF_CHECK_TOLERANCE:.0%} for the row's model) and prices the run's experts kernel:\n\n"
                         f"{format_summary_table(list(sound.values()))}")
    newest = {(r.gpu, r.runtime): r for r in summarize(datasets, newest=True)}
    if newest:  # which lease is newest is read from the datasets' names, never from their errors
        steady_table += ("\n\nOf those, each configuration's run from the newest dataset (by the date and lease number "
                         "in its name): what the latest calibration methods give over the matrix:\n\n"
                         f"{format_summary_table(list(newest.values()))}")
    if args.write_docs is not None:
        write_docs_summary(args.write_docs, f"{table}\n\n{steady_table}")
    if args.json:
        out = [r.to_json() for r in rows]
        for obj, r in zip(out, rows):  # the same figures over the configurations calibrated on a steady host
            obj["extra"]["steady"] = steady[(r.gpu, r.runtime)].to_json() if (r.gpu, r.runtime) in steady else None
            obj["extra"]["sound"] = sound[(r.gpu, r.runtime)].to_json() if (r.gpu, r.runtime) in sound else None
            obj["extra"]["newest"] = newest[(r.gpu, r.runtime)].to_json() if (r.gpu, r.runtime) in newest else None
        print(json.dumps(out, indent=1))
        return 0
    for ds in datasets:
        print(f"## {ds.name} ({ds.gpu})\n\n{format_config_table(ds)}\n\nBy model:\n\n{format_model_table(ds)}\n")
    print(f"## summary\n\n{table}\n\n{steady_table}")
    if len(datasets) > 1:
        print(f"\n## per dataset\n\n{format_summary_table(summarize(datasets, per_dataset=True), per_dataset=True)}")
    reps = repeats(datasets)
    if reps:
        print("\n## the same configuration measured again (max / min - 1: the measurement's own spread)\n\n"
              f"{format_repeats(reps)}")
    if args.write_docs is not None:
        print(f"wrote the summary table into {args.write_docs}", file=sys.stderr)
    return 0


def run(args: argparse.Namespace) -> int:
    if args.matrix is not None or args.compare is not None:
        return run_protocol(args)
    if args.summary is not None:
        return run_summary(args)
    for flag, value in (("--json", args.json), ("--write-docs", args.write_docs)):
        if value:
            raise EmuError("only with --summary DIR", key=flag)
    from .validate import error_summary, format_table

    _refuse_hardware_keys(args)
    records = _records(args)
    profile_path = _profile_path(args)
    cal_paths = list(args.runtime_cal)
    if args.from_live is not None and not args.no_runtime_cal and not cal_paths:
        cal_paths = sorted(args.from_live.glob("*_runtime_cal*.json"))
    validations = validate_dir(records, profile_path, cal_paths, args.engine, args.statistic)
    print(f"profile {profile_path}" + (f", runtime calibration {', '.join(map(str, cal_paths))}" if cal_paths else ""))
    used = collections.Counter(v.statistic for v in validations)
    print("statistic: " + ", ".join(f"{name} ({n} runs)" for name, n in sorted(used.items())))
    from emu.tables import format_for

    print(format_table(validations, rounds=args.rounds, fmt=format_for(sys.stdout)))
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
