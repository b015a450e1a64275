"""`emu`: one command line for the emulator, the trace tools, calibration and analysis."""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import EmuError, EmuWarning, one_line

if TYPE_CHECKING:
    from .tables import Column

#: `emu run`'s table: the summary's figures in the table's units (ms, %, GB), each column's format and least width
_TABLE_COLUMNS = (
    ("scenario", "{}", 34), ("engine", "{}", 6), ("TTFT ms", "{:.2f}", 9), ("TPOT ms", "{:.2f}", 9),
    ("tok/s", "{:.1f}", 8), ("hit %", "{:.1f}", 6), ("collis.", "{}", 8), ("GB h2d", "{:.2f}", 8),
    ("copy %", "{:.0f}", 6), ("stall s", "{:.3f}", 8), ("lost %", "{:.1f}", 6), ("degr %", "{:.1f}", 6),
)


def _row(summary: dict[str, Any]) -> list[str]:
    """A table row: the summary's figures in the table's units (ms, %, GB)."""
    u = summary
    name = u["scenario"] + (" [bound]" if u.get("bound") else "")
    vals = [name, u["engine"], u["ttft_s"] * 1e3, u["tpot_s"] * 1e3, u["decode_tok_per_s"],
            u["hit_rate"] * 100, u["misses_collision"], u["bytes_h2d"] / 1e9, u["copy_busy_frac"] * 100,
            u["stall_s"], u["lost_mass_frac"] * 100, u["degraded_mass_frac"] * 100]
    return [fmt.format(v) for (_h, fmt, _w), v in zip(_TABLE_COLUMNS, vals)]


def _table_columns() -> list[Column]:
    from .tables import Column

    return [Column(h, "left" if i == 0 else "right", w) for i, (h, _f, w) in enumerate(_TABLE_COLUMNS)]


#: `emu run --format json|csv`: the table's figures unrounded, in SI units and fractions, and the record's path
SUMMARY_KEYS = ("scenario", "bound", "engine", "ttft_s", "tpot_s", "decode_tok_per_s", "hit_rate", "misses_collision",
                "bytes_h2d", "copy_busy_frac", "stall_s", "lost_mass_frac", "degraded_mass_frac", "record")


def _summary(name: str, rec: dict[str, Any], path: Path) -> dict[str, Any]:
    quality = rec["quality"]
    out = {key: rec[key] for key in SUMMARY_KEYS[2:-3]}
    return {"scenario": name, "bound": bool(rec.get("bound")), **out, "lost_mass_frac": quality["lost_mass_frac"],
            "degraded_mass_frac": quality["degraded_mass_frac"], "record": str(path)}


def render_summaries(rows: list[dict[str, Any]], fmt: str) -> str:
    """The run's summary rows as JSON (a list of objects) or CSV (a header of `SUMMARY_KEYS`)."""
    if fmt == "json":
        import json

        return json.dumps(rows, indent=1)
    import csv
    import io

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(SUMMARY_KEYS), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue().rstrip("\n")


@contextlib.contextmanager
def compile_notice(after_s: float = 2.0) -> Iterator[None]:
    """Say on stderr that the kernels are compiling when loading them takes longer than `after_s` (a cold numba
    cache: the first run after an install or a change of the engine), and how long it took."""
    t0 = time.perf_counter()
    fired = threading.Event()

    def say() -> None:
        fired.set()
        print("emu: compiling the numba kernels (the first run after an install or a change of the engine; "
              "about 15 s on two cores)", file=sys.stderr, flush=True)

    timer = threading.Timer(after_s, say)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
        timer.join()  # no thread left behind: a worker pool forks only a process that runs none (sweep.start_method)
        if fired.is_set():
            print(f"emu: kernels compiled in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)


def cmd_run(args: argparse.Namespace) -> int:
    from .bundled import resolve
    from .scenario import from_here, load_scenario

    # validate all before running any, with their profiles
    typed = [*args.set, *(f"-{key}" for key in args.unset)]  # as the user wrote them: the results' names
    overrides = [*from_here(args.set), *(f"-{key}" for key in args.unset)]
    if args.name is not None and len(args.scenarios) != 1:
        raise EmuError("--name names the result of one scenario; several were given", key="--name")
    scenarios = [load_scenario(resolve(p), overrides) for p in args.scenarios]
    from .profile import check_item_times
    from .runtime_profile import load_runtime_profile

    for sc in scenarios:
        check_item_times(sc.profile(), sc.model)
        if sc.runtime_path is not None:
            load_runtime_profile(sc.runtime_path)
    if args.jobs is not None and args.jobs < 1:
        raise EmuError(f"expected a positive number of worker processes, got {args.jobs}", key="--jobs")
    recorder = _timeline_recorder(args, len(scenarios))
    if args.jobs is None:
        args.jobs = 1 if recorder is not None else auto_jobs(len(scenarios))
    if recorder is not None and args.jobs > 1:
        raise EmuError("--timeline records one scenario in this process; drop --jobs", key="--jobs")
    for sc in scenarios:  # a bad output place is found before the runs, not after them
        _check_out_dir(*_out_dir(args, sc))
    if recorder is not None:
        _check_out_file(args.timeline, "--timeline")
    with compile_notice():
        from .engines.fast.engine import warm_up
        from .runner import write_record

        warm_up(lambda: _compile_for(scenarios, args))
    summaries = []
    for sc, record in zip(scenarios, _records(scenarios, args, recorder)):
        out_dir, file, key = _out_dir(args, sc)
        stem = args.name or result_name(Path(sc.path).stem, typed)
        try:
            path = write_record(record, out_dir, stem)
        except OSError as err:
            raise EmuError(f"cannot write {Path(out_dir) / stem}.json: {_os_reason(err)}", file=file, key=key) from None
        summaries.append(_summary(stem, record, path))
        if not args.quiet:
            print(f"wrote {path}", file=sys.stderr)
    if recorder is not None:
        try:
            path = recorder.write(args.timeline)
        except OSError as err:
            raise EmuError(f"cannot write {args.timeline}: {_os_reason(err)}", key="--timeline") from None
        if not args.quiet:
            print(f"wrote {path} (passes {recorder.first}:{recorder.stop}, {len(recorder.events)} events)",
                  file=sys.stderr)
    if args.format == "table":
        from .tables import render

        render(_table_columns(), [_row(u) for u in summaries])
    else:
        print(render_summaries(summaries, args.format))
    return 0


def cmd_scenarios(args: argparse.Namespace) -> int:
    from .bundled import describe, root, scenarios

    found = scenarios()
    if not found:
        raise EmuError("no bundled scenarios found beside this installation")
    base = root()
    assert base is not None
    # the top-level scenarios; --all adds the policy shootout's and the reproduction suites' base scenarios
    shown = {k: v for k, v in found.items() if args.all or len(v.relative_to(base).parts) == 1}
    from .tables import Column, render

    render([Column("scenario", "left"), Column("what it is", "left")],
           [[stem, describe(path)] for stem, path in shown.items()], header=False)
    hidden = len(found) - len(shown)
    if hidden:
        print(f"({hidden} more in the policy shootout and the reproduction suites: emu scenarios --all)",
              file=sys.stderr)
    return 0


#: the fewest scenarios a worker process of `emu run` takes by default: a pool costs a fork and a copy of each
#: record back, which a few scenarios do not pay for (4 shootout files: 1.20 s serial, 1.28 s on 2 workers; all
#: 312: 5.17 s, 3.46 s)
SCENARIOS_PER_WORKER = 16


def auto_jobs(n_scenarios: int) -> int:
    """`emu run`'s worker processes by default: one per CPU, at most one per `SCENARIOS_PER_WORKER` scenarios."""
    return max(1, min(os.cpu_count() or 1, n_scenarios // SCENARIOS_PER_WORKER))


def _compile_for(scenarios: list[Any], args: argparse.Namespace) -> None:
    """While a child process compiles the fast core (a first run): the scenarios' hooks, and the first one's
    trace (kept in the process's trace cache for its run; a synthetic trace compiles the generator)."""
    from .policies.registry import compile_hooks
    from .runner import load_workload

    for sc in scenarios:
        compile_hooks(sc.stack)
    if min(args.jobs, len(scenarios)) <= 1:
        load_workload(scenarios[0], progress=not args.quiet)


def _records(scenarios: list[Any], args: argparse.Namespace, recorder: Any) -> Iterator[dict[str, Any]]:
    """Each scenario's record in order: run here one after the other, or with `--jobs N` in N worker processes."""
    from .runner import run_record, run_scenario

    jobs = min(args.jobs, len(scenarios))
    if jobs <= 1:
        for sc in scenarios:
            yield run_scenario(sc, engine=args.engine, timeline=recorder, progress=not args.quiet)[1]
        return
    from .sweep import make_executor, stop_workers

    executor, close = make_executor(jobs, None)
    try:
        for record, said in executor.map(run_record, scenarios, [args.engine] * len(scenarios)):
            for text in said:  # into this process's warnings: `_main` prints each once
                warnings.warn(text, EmuWarning, stacklevel=2)
            yield record
    except KeyboardInterrupt:  # Ctrl-C: stop the workers now, not after their scenarios
        stop_workers(executor)
        raise
    finally:
        close()


def result_name(stem: str, overrides: list[str]) -> str:
    """A run's result name: the scenario's stem, and its overrides when it has any (so that runs of one scenario
    with different `--set`s keep their own files): `stem@cache.capacity=25pct`, or a digest of them when long."""
    if not overrides:
        return stem
    tag = "+".join(re.sub(r"[^A-Za-z0-9._=-]", "_", o.replace("%", "pct")) for o in overrides)
    if len(tag) > 80:
        import hashlib

        tag = "overrides-" + hashlib.sha1("\n".join(overrides).encode()).hexdigest()[:12]
    return f"{stem}@{tag}"


def _os_reason(err: OSError) -> str:
    return err.strerror or str(err)


def _out_dir(args: argparse.Namespace, sc: Any) -> tuple[str, str | None, str]:
    """The directory a scenario's result goes to, and what named it: (dir, file, key)."""
    if args.out:
        return args.out, None, "--out"
    if sc.output_dir:
        return sc.output_dir, str(sc.path), "output.dir"
    return "runs", None, "--out"


def _check_out_dir(path: str, file: str | None, key: str) -> None:
    """The results directory exists (made here) and can be written, else one line naming the option."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise EmuError(f"expected a directory for the result files, but {path} is not a directory", file=file,
                       key=key)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise EmuError(f"cannot create directory {path}: {_os_reason(err)}", file=file, key=key) from None
    try:  # a real write, not os.access: root passes that check where the kernel still refuses (/proc)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as err:
        raise EmuError(f"cannot write in directory {path}: {_os_reason(err)}", file=file, key=key) from None


def _check_out_file(path: str, key: str) -> None:
    """A file to be written: not a directory, in a directory that exists (made here) and can be written."""
    out = Path(path)
    if out.is_dir():
        raise EmuError(f"expected a file path, but {path} is a directory", key=key)
    parent = out.parent
    if parent.exists() and not parent.is_dir():
        raise EmuError(f"cannot write {path}: {parent} is not a directory", key=key)
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise EmuError(f"cannot create directory {parent}: {_os_reason(err)}", key=key) from None
    existed = out.exists()
    try:  # open it as the write will (without truncating one that exists), then leave things as they were
        with open(out, "r+b" if existed else "xb"):
            pass
        if not existed:
            out.unlink()
    except OSError as err:
        raise EmuError(f"cannot write {path}: {_os_reason(err)}", key=key) from None


def _timeline_recorder(args: argparse.Namespace, n_scenarios: int) -> Any:
    if args.timeline is None:
        if args.timeline_passes is not None:
            raise EmuError("needs --timeline FILE.json", key="--timeline-passes")
        return None
    from .engines.des.timeline import DEFAULT_PASSES, TimelineRecorder, parse_pass_window

    if n_scenarios != 1:
        raise EmuError(f"a timeline is of one run; got {n_scenarios} scenarios", key="--timeline")
    if args.engine == "fast":
        raise EmuError("a timeline is recorded by the SimPy engine; drop --engine fast", key="--timeline")
    passes = DEFAULT_PASSES if args.timeline_passes is None else parse_pass_window(args.timeline_passes)
    return TimelineRecorder(passes)


def cmd_policies(args: argparse.Namespace) -> int:
    import json

    import attrs

    from .policies.registry import REGISTRY

    listing = {kind: {name: {"doc": p.doc, "params": {k: {"default": v.default, "min": v.lo, "max": v.hi,
                                                          "doc": v.doc} for k, v in p.params.items()},
                             "capabilities": [c for c, on in attrs.asdict(p.capabilities).items() if on],
                             "module": p.module}
                      for name, p in sorted(policies.items())} for kind, policies in REGISTRY.items()}
    if args.json:
        print(json.dumps(listing, indent=2, default=str))
        return 0
    from .tables import Column, render

    columns = [Column("policy", "left", 18), Column("what it does (parameters) [capabilities]", "left")]
    for kind, policies in listing.items():
        print(f"{kind}:")
        rows = []
        for name, info in policies.items():
            params = ", ".join(f"{k}={v['default']:g} [{v['min']:g}, {v['max']:g}]" for k, v in info["params"].items())
            caps = f"  [{', '.join(info['capabilities'])}]" if info["capabilities"] else ""
            rows.append([name, info["doc"] + (f"  ({params})" if params else "") + caps])
        render(columns, rows, header=False, indent="  ", sep=" ")
    return 0


class _VersionAction(argparse.Action):
    """`--version`: the package version, and the source revision when run from a checkout (asked of git only
    when the flag is given, not on every start)."""

    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, help="print the version and exit", **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: Any, values: Any, option: Any = None) -> None:
        from . import __version__, git_revision

        revision = git_revision()
        sys.stdout.write(f"moe-emu {__version__}" + (f" ({revision})" if revision else "") + "\n")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="emu", description="Emulate MoE expert offloading: TTFT and tokens/s "
                                     "for a model, GPU, cache size and policy stack.")
    parser.add_argument("--version", action=_VersionAction)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run scenario TOML files and print a comparison table")
    p.add_argument("scenarios", nargs="+", help="scenario TOML files, or bundled scenarios by name (emu scenarios)")
    p.add_argument("--out", help="directory for <stem>.json results (default: output.dir or ./runs)")
    p.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE",
                   help="override one scenario key, e.g. --set cache.capacity=25%%; a path is from the current "
                        "folder; workload.trace=F replaces a synthetic workload (and workload.synthetic.* a trace)")
    p.add_argument("--unset", action="append", default=[], metavar="KEY.PATH",
                   help="remove one scenario key (its default applies), e.g. --unset workload.max_tokens")
    p.add_argument("--jobs", "-j", type=int, default=None, metavar="N",
                   help="run the scenarios in N worker processes (1: one after the other, here; default: one "
                        f"per CPU, at most one per {SCENARIOS_PER_WORKER} scenarios)")
    p.add_argument("--name", help="the result's name (runs/NAME.json and the table's row) for one scenario; "
                   "default: the scenario's stem, with its overrides when there are any")
    p.add_argument("--engine", choices=["des", "fast", "reference", "auto"], help="override engine.kind")
    p.add_argument("--quiet", action="store_true", help="do not list the files written nor show progress")
    p.add_argument("--format", choices=("table", "json", "csv"), default="table",
                   help="stdout: the table (default), or its figures unrounded as JSON or CSV")
    p.add_argument("--timeline", metavar="FILE.json",
                   help="write a Chrome trace / Perfetto timeline (copy engines, GPU compute, CPU, stalls) of "
                   "one scenario; the whole trace then runs on the SimPy engine, so the events are the run's own")
    p.add_argument("--timeline-passes", metavar="A:B",
                   help="passes A..B-1 in the timeline (default 0:8; 'A:' to the end)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("scenarios", help="list the bundled scenarios (emu run NAME runs one)")
    p.add_argument("--all", action="store_true",
                   help="the policy shootout's scenarios and the reproduction suites' base scenarios too")
    p.set_defaults(func=cmd_scenarios)

    p = sub.add_parser("policies", help="list registered policies and their parameters")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_policies)

    from .trace import cli as trace_cli

    trace_cli.add_parser(sub)
    from .analysis import concentration_cli, workingset_cli

    concentration_cli.add_parser(sub)
    workingset_cli.add_parser(sub)
    from . import plot_cli, sweep_cli

    sweep_cli.add_parser(sub)
    plot_cli.add_parser(sub)
    from calibrate import cli as calibrate_cli
    from live import cli as live_cli
    from live import validate_cli

    calibrate_cli.add_parser(sub)
    live_cli.add_parser(sub)
    validate_cli.add_parser(sub)
    return parser


#: optional packages (top-level module name) and the extra of moe-emu that installs each
OPTIONAL_EXTRAS = {"torch": "live", "transformers": "live", "pynvml": "live", "matplotlib": "plot",
                   "pyarrow": "sweep", "distributed": "sweep", "dask": "sweep", "gguf": "imatrix"}
#: exit status of an interrupted command (128 + SIGINT, as a shell reports it)
EXIT_INTERRUPTED = 130
#: exit status of an error inside emu itself (EX_SOFTWARE): a bug, not bad input
EXIT_INTERNAL = 70


def main(argv: list[str] | None = None) -> int:
    """Run one `emu` command. Bad input is one `emu: error:` line and exit 2, and so is a path the file system
    refuses (named with the system's reason); a missing optional package is one line naming the extra to install
    (exit 2); Ctrl-C is one line and exit 130; a closed pipe on stdout (`emu ... | head -1`) ends quietly;
    anything else is one `emu: internal error:` line and exit 70 (EMU_TRACEBACK=1 shows the traceback instead)."""
    try:
        return _main(argv)
    except KeyboardInterrupt:
        _say("emu: interrupted")
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # e.g. `emu trace inspect F | head -1`: the reader has gone, and so do we
        _silence_stdout()
        return 0
    except OSError as err:  # the file system refused a path no reader checked (a name too long, a device...)
        where = ": ".join(str(f) for f in (err.filename, err.filename2) if f is not None)
        _say(f"emu: error: {one_line(where, 300) + ': ' if where else ''}{one_line(err.strerror or str(err))}")
        return 2
    except ImportError as err:
        name = (err.name or "").split(".")[0]
        if name not in OPTIONAL_EXTRAS:
            return _internal(err)
        _say(f"emu: error: this command needs the optional package {name!r}, which cannot be imported ({err}); "
             f"install the '{OPTIONAL_EXTRAS[name]}' extra: pip install 'moe-emu[{OPTIONAL_EXTRAS[name]}]'")
        return 2
    except Exception as err:
        return _internal(err)


def _internal(err: BaseException) -> int:
    if os.environ.get("EMU_TRACEBACK"):
        raise err
    what = "ran out of memory" if isinstance(err, MemoryError) else f"{type(err).__name__}: {err}"
    _say(f"emu: internal error: {one_line(what)} (a bug in emu: please report it with the command line; "
         "EMU_TRACEBACK=1 shows the traceback)")
    return EXIT_INTERNAL


def _say(line: str) -> None:
    """One line on stderr; nothing when stderr itself is gone."""
    with contextlib.suppress(OSError, ValueError):
        print(line, file=sys.stderr, flush=True)


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so that the interpreter's flush at exit does not fail again on the closed pipe."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def _main(argv: list[str] | None) -> int:
    try:
        parser = build_parser()  # light: the commands import what they need (numba, the policy registry) when run
    except EmuError as err:
        print(f"emu: error: {err}", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("ignore")
        warnings.simplefilter("always", EmuWarning)
        try:
            code = int(args.func(args) or 0)
        except EmuError as err:
            print(f"emu: error: {err}", file=sys.stderr)
            code = 2
    seen: set[str] = set()
    for w in caught:
        text = str(w.message)
        if issubclass(w.category, EmuWarning) and text not in seen:
            seen.add(text)
            print(f"warning: {text}", file=sys.stderr)
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
