"""Sweeps: one TOML file names a base scenario and a grid (capacity x bandwidth x policy stack x model x
trace); every grid point is the base plus `--set`-style overrides, run in a process pool (or on a Dask
cluster through its concurrent.futures executor). Results: CSV, Parquet (with pyarrow), one run JSON per
point, and the Pareto front of speed against quality loss. Schema in docs/analysis.md.

Bandwidth points rewrite the scenario's hardware profile: the worker loads the profile TOML, sets
copy.bw_pinned_Bps (and copy.latency_s when the sweep gives one), drops the measured copy.table_* so
the latency + bytes / bandwidth fit is used, and copy.sustained_ratio so the swept bandwidth is the one
copies get, and writes it to a temporary file for that run.
"""

from __future__ import annotations

import copy
import csv
import functools
import io
import json
import math
import re
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterable
from concurrent.futures import Executor, ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import attrs

from .engines import ENGINES
from .errors import EmuError, EmuWarning
from .progress import Progress
from .tables import Column, table_text
from .textio import load_toml

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

POLICY_KINDS = ("eviction", "prefetch", "miss", "routing", "partition")
PARETO_KEYS = ("model", "trace", "bandwidth", "capacity")
_TOP_KEYS = {"name", "base", "set", "engine", "out", "copy_latency_s", "grid", "pareto"}
_GRID_KEYS = {"capacity", "bandwidth", "stack", "model", "trace"}
#: a sweep's name names its output files
_FILE_NAME = re.compile(r"^[^/\\\x00-\x1f\x7f]{1,100}$")
#: the most grid points one sweep may have (each is an emulator run and a JSON file)
MAX_POINTS = 100_000

ROW_FIELDS = (
    "point", "model", "trace", "bandwidth", "bw_pinned_GBps", "capacity", "capacity_slots", "capacity_frac",
    "stack", "bound", *POLICY_KINDS, "engine", "ttft_ms", "tpot_ms", "decode_tok_s", "e2e_s", "hit_rate",
    "misses_compulsory", "misses_capacity", "misses_collision", "collisions_per_layer", "bytes_h2d",
    "copy_busy_frac", "compute_busy_frac", "stall_s", "lost_mass_frac", "prefetch_precision",
    "prefetch_recall", "set",
)


# ---- spec ----------------------------------------------------------------------------------------

@attrs.frozen
class StackSpec:
    name: str
    policy: dict[str, Any]  # kind -> name or {name, params...}, only the kinds the stack sets


@attrs.frozen
class Point:
    """One grid point: everything a worker needs, picklable, paths absolute."""

    index: int
    model: str
    trace: str
    bandwidth: float | None  # bytes/s; None keeps the profile's copy model
    latency_s: float | None
    capacity: Any
    stack: str
    base: dict[str, Any]
    base_path: str
    overrides: tuple[str, ...]
    engine: str | None


@attrs.frozen
class SweepSpec:
    name: str
    path: str
    base: dict[str, Any]
    base_path: str
    common: tuple[str, ...]
    capacities: tuple[Any, ...]
    bandwidths: tuple[float | None, ...]
    stacks: tuple[StackSpec, ...]
    models: tuple[str | None, ...]
    traces: tuple[str | None, ...]
    engine: str | None
    latency_s: float | None
    pareto_by: tuple[str, ...]
    out: str | None


def toml_value(value: Any) -> str:
    """A TOML inline value, as `--set key=value` expects it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + " }"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise EmuError(f"cannot express {value!r} as a TOML value")


def _list(table: dict[str, Any], key: str, file: str, default: list[Any]) -> list[Any]:
    value = table.get(key, default)
    if not isinstance(value, list) or not value:
        raise EmuError("expected a non-empty list", file=file, key=f"grid.{key}")
    return value


def _bandwidth(value: Any, file: str, key: str) -> float | None:
    if value == "profile":
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise EmuError(f"expected \"profile\" or a bandwidth in bytes/s > 0 (e.g. 25e9), got {value!r}",
                       file=file, key=key)
    return float(value)


def _stack(value: Any, i: int, file: str) -> StackSpec:
    key = f"grid.stack[{i}]"
    if not isinstance(value, dict):
        raise EmuError("expected a table { name = ..., eviction = ..., prefetch = ... }", file=file, key=key)
    for k in value:
        if k not in ("name", *POLICY_KINDS):
            raise EmuError(f"unknown key; expected name or one of {list(POLICY_KINDS)}", file=file, key=f"{key}.{k}")
    policy = {k: value[k] for k in POLICY_KINDS if k in value}
    name = value.get("name") or "+".join(_policy_label(v) for v in policy.values()) or "base"
    if not isinstance(name, str):
        raise EmuError(f"expected a string, got {name!r}", file=file, key=f"{key}.name")
    return StackSpec(name=name, policy=policy)


def _policy_label(value: Any) -> str:
    if isinstance(value, dict):
        params = ",".join(f"{k}={v}" for k, v in value.items() if k != "name")
        return f"{value.get('name')}({params})" if params else str(value.get("name"))
    return str(value)


def load_sweep(path: str | Path) -> SweepSpec:
    path = Path(path)
    file = str(path)
    if not path.is_file():
        raise EmuError("sweep file not found", file=file)
    data = load_toml(path, "a sweep TOML file (docs/analysis.md)")
    for k in data:
        if k not in _TOP_KEYS:
            raise EmuError(f"unknown key; expected one of {sorted(_TOP_KEYS)}", file=file, key=k)
    base_value = data.get("base")
    if isinstance(base_value, str) and (not base_value or "\x00" in base_value):
        raise EmuError(f"expected a base scenario file path, got {base_value!r}", file=file, key="base")
    if isinstance(base_value, str):
        base_path = (path.parent / base_value).resolve()
        if not base_path.is_file():
            raise EmuError(f"base scenario not found: {base_path}", file=file, key="base")
        base = load_toml(base_path, "the sweep's base scenario TOML file")
    elif isinstance(base_value, dict):
        base, base_path = copy.deepcopy(base_value), path.resolve()
    else:
        raise EmuError("expected a base scenario file path or an inline [base] table", file=file, key="base")
    common = data.get("set", [])
    if not isinstance(common, list) or not all(isinstance(s, str) for s in common):
        raise EmuError("expected a list of \"key.path=value\" overrides", file=file, key="set")
    from .scenario import parse_override

    for i, text in enumerate(common):
        try:
            parse_override(text)
        except EmuError as err:
            raise EmuError(err.detail, file=file, key=f"set[{i}]") from None
    grid = data.get("grid")
    if not isinstance(grid, dict):
        raise EmuError("missing: the [grid] table", file=file, key="grid")
    for k in grid:
        if k not in _GRID_KEYS:
            raise EmuError(f"unknown key; expected one of {sorted(_GRID_KEYS)}", file=file, key=f"grid.{k}")
    capacities = _list(grid, "capacity", file, [None])
    bandwidths = [_bandwidth(v, file, "grid.bandwidth") for v in _list(grid, "bandwidth", file, ["profile"])]
    stacks = [_stack(v, i, file) for i, v in enumerate(_list(grid, "stack", file, [{"name": "base"}]))]
    names = [s.name for s in stacks]
    if len(set(names)) != len(names):
        raise EmuError(f"stack names must be unique, got {names}", file=file, key="grid.stack")
    models = _list(grid, "model", file, [None])
    traces = _list(grid, "trace", file, ["base"])
    for key, values in (("model", models), ("trace", traces)):
        if not all(v is None or (isinstance(v, str) and v and "\x00" not in v) for v in values):
            raise EmuError("expected a list of non-empty strings", file=file, key=f"grid.{key}")
    traces = [None if t == "base" else str((path.parent / t).resolve()) for t in traces]
    latency = data.get("copy_latency_s")
    from .profile import MAX_SECONDS

    if latency is not None and (isinstance(latency, bool) or not isinstance(latency, (int, float))
                                or not 0 <= latency <= MAX_SECONDS):
        raise EmuError(f"expected seconds in [0, {MAX_SECONDS:g}], got {latency!r}", file=file, key="copy_latency_s")
    engine = data.get("engine")
    if engine is not None and engine not in ENGINES:
        raise EmuError(f"expected one of {list(ENGINES)}, got {engine!r}", file=file, key="engine")
    pareto = data.get("pareto", {})
    by = pareto.get("by", list(PARETO_KEYS)) if isinstance(pareto, dict) else None
    if not isinstance(by, list) or not all(k in ROW_FIELDS for k in by):
        raise EmuError(f"expected a list of row fields, e.g. {list(PARETO_KEYS)}", file=file, key="pareto.by")
    out = data.get("out")
    if out is not None and (not isinstance(out, str) or not out or "\x00" in out):
        raise EmuError(f"expected a directory, got {out!r}", file=file, key="out")
    name = data.get("name", path.stem)
    if not isinstance(name, str) or not _FILE_NAME.match(name) or name in (".", ".."):
        raise EmuError(f"expected a name for the output files (1 to 100 characters, no '/', '\\' or control "
                       f"characters, not '.' or '..'), got {name!r}", file=file, key="name")
    n_points = len(capacities) * len(bandwidths) * len(stacks) * len(models) * len(traces)
    if n_points > MAX_POINTS:
        raise EmuError(f"{len(models)} models x {len(traces)} traces x {len(bandwidths)} bandwidths x "
                       f"{len(capacities)} capacities x {len(stacks)} stacks = {n_points:,} grid points; expected at "
                       f"most {MAX_POINTS:,}", file=file, key="grid")
    return SweepSpec(name=name, path=file, base=base, base_path=str(base_path),
                     common=tuple(common), capacities=tuple(capacities), bandwidths=tuple(bandwidths),
                     stacks=tuple(stacks), models=tuple(models), traces=tuple(traces), engine=engine,
                     latency_s=None if latency is None else float(latency), pareto_by=tuple(by),
                     out=None if out is None else str((path.parent / out).resolve()))


def grid_points(spec: SweepSpec) -> list[Point]:
    """Grid order: model, trace, bandwidth, capacity, stack (the stack varies fastest)."""
    points = []
    for model in spec.models:
        for trace in spec.traces:
            for bw in spec.bandwidths:
                for cap in spec.capacities:
                    for stack in spec.stacks:
                        sets = list(spec.common)
                        if model is not None:
                            sets.append(f"model={toml_value(model)}")
                        if trace is not None:
                            sets.append(f"workload.trace={toml_value(trace)}")
                        if cap is not None:
                            sets.append(f"cache.capacity={toml_value(cap)}")
                        sets += [f"policy.{k}={toml_value(v)}" for k, v in stack.policy.items()]
                        points.append(Point(
                            index=len(points), model=model or _base_model(spec.base), trace=trace or "base",
                            bandwidth=bw, latency_s=spec.latency_s, capacity=cap, stack=stack.name,
                            base=spec.base, base_path=spec.base_path, overrides=tuple(sets), engine=spec.engine))
    return points


def _base_model(base: dict[str, Any]) -> str:
    model = base.get("model")
    return model if isinstance(model, str) else str((model or {}).get("name", "inline"))


# ---- one point -----------------------------------------------------------------------------------

def _scenario_data(point: Point) -> dict[str, Any]:
    from .scenario import apply_overrides

    data = copy.deepcopy(point.base)
    if point.trace != "base":  # a trace replaces the base workload (keeps max_tokens)
        wl = data.get("workload") or {}
        data["workload"] = {k: v for k, v in wl.items() if k not in ("trace", "synthetic")}
    return apply_overrides(data, list(point.overrides))


def build_scenario(point: Point, profile_path: str | None = None) -> Any:
    from .scenario import scenario_from_dict

    data = _scenario_data(point)
    if profile_path is not None:
        data.setdefault("hardware", {})["profile"] = profile_path
    return scenario_from_dict(data, point.base_path)


def bandwidth_profile(profile_path: str, bw: float, latency_s: float | None, out_dir: str) -> str:
    """Copy of the profile with the pinned H2D copy model replaced; returns the new file's path."""
    import tomli_w

    with open(profile_path, "rb") as fh:
        data = tomllib.load(fh)
    copy_table = data.setdefault("copy", {})
    copy_table["bw_pinned_Bps"] = bw
    if latency_s is not None:
        copy_table["latency_s"] = latency_s
    copy_table.pop("table_bytes", None)
    copy_table.pop("table_s", None)
    copy_table.pop("sustained_ratio", None)  # the swept bandwidth is the sustained one
    data["name"] = f"{data.get('name', 'profile')}@{bw / 1e9:g}GBps"
    data.setdefault("provenance", {})["sweep_override"] = (
        f"copy.bw_pinned_Bps = {bw!r} (copy.table_* and sustained_ratio dropped)")
    path = Path(out_dir) / "profile.toml"
    path.write_bytes(tomli_w.dumps(data).encode())
    return str(path)


def run_point(point: Point) -> tuple[int, dict[str, Any], dict[str, Any], list[str]]:
    """Run one grid point (in a worker): (index, CSV row, run JSON record, EmuWarning messages)."""
    from .runner import run_scenario

    with warnings.catch_warnings(record=True) as caught, tempfile.TemporaryDirectory(prefix="emu-sweep-") as tmp:
        warnings.simplefilter("always", EmuWarning)
        scenario = build_scenario(point)
        if point.bandwidth is not None:
            path = bandwidth_profile(scenario.profile_path, point.bandwidth, point.latency_s, tmp)
            scenario = build_scenario(point, path)
        profile = scenario.profile()
        try:
            _result, record = run_scenario(scenario, engine=point.engine)
        except EmuError as err:  # the swept bandwidth's profile is a temporary file: name the grid point instead
            if point.bandwidth is None or err.file != scenario.profile_path:
                raise
            raise EmuError(f"grid point {point.index} (bandwidth {point.bandwidth:g} B/s): {err.detail}",
                           key="grid.bandwidth") from None
    record["sweep"] = {"point": point.index, "set": list(point.overrides), "bandwidth": point.bandwidth}
    row = row_from_record(record, point=point.index, trace=point.trace, stack=point.stack,
                          bandwidth=_bw_label(point.bandwidth), bw_pinned=profile.copy.bw_pinned_Bps,
                          overrides=point.overrides)
    messages = [str(w.message) for w in caught if issubclass(w.category, EmuWarning)]
    return point.index, row, record, messages


def _bw_label(bw: float | None) -> str:
    return "profile" if bw is None else f"{bw / 1e9:g} GB/s"


def _policy_text(p: dict[str, Any]) -> str:
    params = ",".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in p.items() if k != "name")
    return f"{p['name']}({params})" if params else str(p["name"])


def row_from_record(record: dict[str, Any], *, point: int = 0, trace: str | None = None, stack: str | None = None,
                    bandwidth: str = "profile", bw_pinned: float | None = None,
                    overrides: Iterable[str] = ()) -> dict[str, Any]:
    """One CSV row from an `emu run` / sweep JSON record (the plot reads both through this)."""
    sc = record["scenario"]
    model = sc["model"]
    slots = int(sc["cache"]["slots"])
    total = model["n_experts"] * model["n_moe_layers"]
    policies = {k: _policy_text(sc["policy"][k]) for k in POLICY_KINDS}
    if trace is None:
        trace = sc["workload"]["trace"] or "synthetic"
    sweep = record.get("sweep", {})
    return {
        "point": sweep.get("point", point), "model": model["name"], "trace": trace, "bandwidth": bandwidth,
        "bw_pinned_GBps": None if bw_pinned is None else bw_pinned / 1e9, "capacity": sc["cache"]["capacity"],
        "capacity_slots": slots, "capacity_frac": slots / total,
        "stack": stack or "+".join(policies[k] for k in ("eviction", "prefetch", "miss")),
        "bound": bool(record.get("bound")),  # holds a policy that reads the future: an offline bound
        **policies, "engine": record["engine"], "ttft_ms": record["ttft_s"] * 1e3, "tpot_ms": record["tpot_s"] * 1e3,
        "decode_tok_s": record["decode_tok_per_s"], "e2e_s": record["e2e_s"], "hit_rate": record["hit_rate"],
        "misses_compulsory": record["misses_compulsory"], "misses_capacity": record["misses_capacity"],
        "misses_collision": record["misses_collision"],
        "collisions_per_layer": ";".join(str(ly["misses_collision"]) for ly in record["per_layer"]),
        "bytes_h2d": record["bytes_h2d"], "copy_busy_frac": record["copy_busy_frac"],
        "compute_busy_frac": record["compute_busy_frac"], "stall_s": record["stall_s"],
        "lost_mass_frac": record["quality"]["lost_mass_frac"], "prefetch_precision": record["prefetch_precision"],
        "prefetch_recall": record["prefetch_recall"], "set": " ; ".join(overrides or sweep.get("set", [])),
    }


# ---- running -------------------------------------------------------------------------------------

def make_executor(jobs: int, address: str | None) -> tuple[Executor | None, Callable[[], None]]:
    """(executor, close): a spawn process pool, a Dask cluster's executor, or None for in-process serial."""
    if address:
        try:
            from distributed import Client
        except ImportError:
            raise EmuError("--executor needs dask distributed; install the 'sweep' extra: pip install "
                           "'moe-emu[sweep]'", key="--executor") from None
        try:
            client = Client(address)
        except OSError as err:
            raise EmuError(f"cannot reach the Dask scheduler ({err})", key="--executor") from None
        return client.get_executor(), client.close
    if jobs <= 1:
        return None, lambda: None
    import multiprocessing

    warm_cache()
    pool = ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context(start_method()),
                               initializer=init_worker)
    return pool, lambda: pool.shutdown(wait=True, cancel_futures=True)


def start_method() -> str:
    """How a local pool starts its workers: fork where it is safe, so that each worker starts with this process's
    modules and its compiled kernels already loaded (a spawned worker imports emu and loads the core and the hooks
    from numba's cache again, about 0.7 s of CPU each); spawn otherwise. Fork is safe on Linux while this process
    runs no other thread: not numba's thread pool (a synthetic trace generated here starts it, and a forked child
    would inherit its locks without its threads), nor any other."""
    import multiprocessing
    import threading

    import numba.np.ufunc.parallel as numba_parallel

    if sys.platform != "linux" or "fork" not in multiprocessing.get_all_start_methods():
        return "spawn"
    if getattr(numba_parallel, "_is_initialized", True) or threading.active_count() > 1:
        return "spawn"
    return "fork"


def stop_workers(executor: Executor | None) -> None:
    """End a local pool's worker processes at once (they ignore Ctrl-C: `init_worker`) and drop its queue.
    `ProcessPoolExecutor` has no public way to end running tasks before Python 3.14 (`terminate_workers`)."""
    if not isinstance(executor, ProcessPoolExecutor):
        return
    for proc in list((getattr(executor, "_processes", None) or {}).values()):
        proc.terminate()
    executor.shutdown(wait=False, cancel_futures=True)


def init_worker() -> None:
    """A worker process's start. Ctrl-C reaches every process of the terminal's group: the parent alone answers it
    (it ends the workers, says so in one line and exits 130); a worker that took it would print its own traceback.
    Python warnings stay quiet, as in `emu` itself (numba's notice that a feature is experimental, per worker)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    warnings.simplefilter("ignore")
    warnings.simplefilter("always", EmuWarning)


def warm_cache() -> None:
    """Compile every kernel into numba's cache here, before worker processes start: workers that compile the
    same functions at once can write each other's cache files half-way and crash (numba issue #4807); once the
    files exist they only read them. Every registered policy's hooks and the SimPy engine's entry too, as a run
    compiles only its own stack's hooks when it first needs them."""
    from .engines import core
    from .engines.fast.engine import warm_up
    from .kernel.hooks import compiled
    from .policies.registry import compile_hooks

    warm_up(compile_hooks)  # the hooks meanwhile when a child process compiles the core
    compile_hooks()
    compiled(core.instant, core.INSTANT_SIG)  # after the core: it calls the core's step


def validate_points(points: list[Point], file: str | None = None) -> list[Any]:
    """Resolve every point's scenario (returned in the points' order), and check the times its profile (with the
    point's bandwidth) gives its model, before running any, so a typo fails in a second, not after an hour.
    `file`: the sweep file."""
    from .profile import check_item_times

    scenarios = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EmuWarning)
        for point in points:
            where = f"grid point {point.index} ({' ; '.join(point.overrides)})"
            try:
                scenario = build_scenario(point)
                profile = scenario.profile()  # parsed once per file (load_profile's cache)
            except EmuError as err:
                raise EmuError(f"{where}: {err.detail}", file=err.file, key=err.key) from None
            scenarios.append(scenario)
            _check_swept_keys(point, scenario, file)
            if point.bandwidth is None:
                check_item_times(profile, scenario.model)
                continue
            swept = attrs.evolve(profile, copy=attrs.evolve(  # as bandwidth_profile writes it for the run
                profile.copy, bw_pinned_Bps=point.bandwidth, table_bytes=(), table_s=(),
                sustained_ratio=float(scenario.hardware_overrides.get("copy", {}).get("sustained_ratio", 1.0)),
                latency_s=profile.copy.latency_s if point.latency_s is None else point.latency_s))
            try:
                check_item_times(swept, scenario.model)
            except EmuError as err:
                raise EmuError(f"grid point {point.index} (bandwidth {point.bandwidth:g} B/s): {err.detail}",
                               file=file, key="grid.bandwidth") from None
    return scenarios


def _check_swept_keys(point: Point, scenario: Any, file: str | None) -> None:
    """A grid bandwidth (or the sweep's `copy_latency_s`) and a `hardware.copy` key of the same figure would both
    set it, and the scenario's key would silently win: refused."""
    copy_keys = scenario.hardware_overrides.get("copy", {})
    if point.bandwidth is None:  # the profile's own copy model: copy_latency_s is not applied either
        return
    for swept, key, what in ((point.bandwidth, "bw_pinned_Bps", "grid.bandwidth"),
                             (point.latency_s, "latency_s", "copy_latency_s")):
        if swept is not None and key in copy_keys:
            raise EmuError(f"grid point {point.index}: {what} and hardware.copy.{key} both set the copy's {key}; "
                           f"expected one of the two", file=file, key=what)


def run_sweep(spec: SweepSpec, jobs: int = 1, address: str | None = None, progress: Progress | None = None,
              out: str | Path | None = None, resume: bool = False
              ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(rows, records) in grid order, whatever order the workers finish in. With `out`, each point's record is
    written to `out/runs/` as it finishes (with its CSV row and `point_key`), so an interrupted sweep keeps what it
    finished; `resume` reuses such a record instead of running its point again when the key still matches."""
    points = grid_points(spec)
    scenarios = validate_points(points, spec.path)
    progress = progress or Progress(len(points), label="sweep", unit="points")
    results: dict[int, tuple[dict[str, Any], dict[str, Any]]] = {}
    seen: set[str] = set()
    runs_dir = None if out is None else Path(out) / "runs"
    keys = {}
    if runs_dir is not None:
        from . import __version__, git_revision

        build = [__version__, git_revision()]
        keys = {p.index: point_key(p, sc, build) for p, sc in zip(points, scenarios)}
    todo = list(points)
    if resume and runs_dir is not None:
        todo = []
        for point in points:
            kept = _finished(runs_dir / point_file(point), keys[point.index])
            if kept is None:
                todo.append(point)
            else:
                results[point.index] = kept
                progress.step()

    def collect(index: int, row: dict[str, Any], record: dict[str, Any], messages: list[str]) -> None:
        results[index] = (row, record)
        if runs_dir is not None:
            record["sweep"].update(key=keys[index], row=row)
            _write_atomic(runs_dir / point_file(points[index]), json.dumps(record, indent=1) + "\n")
        for m in messages:
            if m not in seen:
                seen.add(m)
                warnings.warn(m, EmuWarning, stacklevel=3)
        progress.step()

    if runs_dir is not None:
        runs_dir.mkdir(parents=True, exist_ok=True)
    executor, close = make_executor(jobs, address) if todo else (None, lambda: None)
    try:
        if executor is None:
            for point in todo:
                collect(*run_point(point))
        else:
            futures = [executor.submit(run_point, p) for p in todo]
            for fut in as_completed(futures):
                collect(*fut.result())
    except KeyboardInterrupt:  # Ctrl-C: stop now, not after the running points
        stop_workers(executor)
        raise
    finally:
        close()
    ordered = [results[i] for i in range(len(points))]
    return [r for r, _ in ordered], [rec for _, rec in ordered]


def point_file(point: Point) -> str:
    """A point's record file under the sweep's `runs/`."""
    return record_file(point.index, point.stack)


def record_file(index: int, stack: str) -> str:
    return f"{index:04d}_{_slug(stack)}.json"


def point_key(point: Point, scenario: Any, build: list[Any]) -> str:
    """What a point's result depends on: its resolved `scenario`, the bytes of every file it reads (profile,
    runtime profile, trace), its bandwidth, latency and engine, and the `build` (moe-emu's version and source
    revision)."""
    import hashlib

    digest = hashlib.sha256()
    digest.update(json.dumps([scenario.resolved(), point.bandwidth, point.latency_s, point.engine, *build],
                             sort_keys=True, default=str).encode())
    for path in (scenario.profile_path, scenario.runtime_path, scenario.workload.trace):
        if path is not None:
            st = Path(path).stat()
            digest.update(_file_digest(str(path), st.st_mtime_ns, st.st_size).encode())
    return digest.hexdigest()[:20]


@functools.lru_cache(maxsize=256)
def _file_digest(path: str, _mtime_ns: int, _size: int) -> str:
    """A file's content digest, read once per process while it is unchanged (points share their files)."""
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _finished(path: Path, key: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """A finished point's (row, record) when its record holds the same key; None to run it (again)."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    sweep = record.get("sweep") if isinstance(record, dict) else None
    if not isinstance(sweep, dict) or sweep.get("key") != key or not isinstance(sweep.get("row"), dict):
        return None
    return sweep["row"], record


def _write_atomic(path: Path, text: str) -> None:
    """Write a file whole or not at all (a sweep interrupted mid-write leaves no half record to resume from)."""
    tmp = path.with_name(path.name + ".part")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


# ---- output --------------------------------------------------------------------------------------

def write_csv(rows: list[dict[str, Any]], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(ROW_FIELDS))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in ROW_FIELDS})
    return path


def write_parquet(rows: list[dict[str, Any]], path: str | Path) -> Path | None:
    """None when pyarrow is not installed (the caller prints a note)."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        return None
    table = pa.Table.from_pylist([{k: r.get(k) for k in ROW_FIELDS} for r in rows])
    pq.write_table(table, str(path))
    return Path(path)


_NUMERIC = {"point", "bw_pinned_GBps", "capacity_slots", "capacity_frac", "ttft_ms", "tpot_ms", "decode_tok_s",
            "e2e_s", "hit_rate", "misses_compulsory", "misses_capacity", "misses_collision", "bytes_h2d",
            "copy_busy_frac", "compute_busy_frac", "stall_s", "lost_mass_frac", "prefetch_precision",
            "prefetch_recall"}
#: columns the plots read: a CSV without one is not a sweep CSV
PLOT_COLUMNS = ("point", "model", "trace", "bandwidth", "capacity", "capacity_slots", "capacity_frac", "stack",
                "hit_rate", "decode_tok_s", "ttft_ms", "lost_mass_frac", "collisions_per_layer")
#: numeric columns that are shares: in [0, 1]
_FRACTIONS = {"capacity_frac", "hit_rate", "copy_busy_frac", "compute_busy_frac", "lost_mass_frac",
              "prefetch_precision", "prefetch_recall"}
#: the longest CSV field accepted (a row of a sweep is a few hundred characters)
MAX_CSV_FIELD = 1 << 20


def check_row(row: dict[str, Any], file: str, where: str) -> dict[str, Any]:
    """A sweep row as the plots need it: numbers finite and in range (shares in [0, 1], the rest >= 0, a capacity
    share > 0), the plots' columns present, collisions per layer a list of counts. Returns the row with numbers as
    floats; an EmuError names the file, the line and the column."""
    out = dict(row)
    for k in PLOT_COLUMNS:
        if out.get(k) is None:
            raise EmuError("missing a value; expected every column of a sweep row", file=file, key=f"{where}.{k}")
    for k in _NUMERIC & out.keys():
        value = out[k]
        if value is None or value == "":
            if k in PLOT_COLUMNS:
                raise EmuError("missing a value; expected a number", file=file, key=f"{where}.{k}")
            out[k] = None
            continue
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise EmuError(f"expected a number, got {str(value)[:40]!r}", file=file, key=f"{where}.{k}") from None
        if not math.isfinite(number) or number < 0 or (k in _FRACTIONS and number > 1) or (
                k == "capacity_frac" and number == 0):
            want = ("a share in (0, 1]" if k == "capacity_frac" else "a share in [0, 1]" if k in _FRACTIONS
                    else "a finite number >= 0")
            raise EmuError(f"expected {want}, got {str(value)[:40]!r}", file=file, key=f"{where}.{k}")
        out[k] = number
    per_layer = str(out["collisions_per_layer"])
    if per_layer and not all(v.isdigit() and v.isascii() for v in per_layer.split(";")):
        raise EmuError(f"expected collision counts per layer separated by ';', got {per_layer[:40]!r}", file=file,
                       key=f"{where}.collisions_per_layer")
    return out


def read_csv(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a sweep CSV (`write_csv`), checked by `check_row`; a file that is not one is an EmuError naming
    the file, the line and the column."""
    from .textio import read_text

    path = Path(path)
    file = str(path)
    if not path.is_file():
        raise EmuError("sweep CSV not found", file=file)
    text = read_text(path, "a sweep CSV (docs/analysis.md)")
    limit = csv.field_size_limit()
    csv.field_size_limit(MAX_CSV_FIELD)
    try:
        reader = csv.reader(io.StringIO(text, newline=""))
        try:
            header = next(reader, None)
            if header is None:
                raise EmuError("empty file; expected a sweep CSV (a header row, then one row per grid point)",
                               file=file)
            missing = [k for k in PLOT_COLUMNS if k not in header]
            if missing:
                raise EmuError(f"not a sweep CSV: missing columns {missing}", file=f"{file}:1")
            twice = sorted({k for k in header if header.count(k) > 1})
            if twice:
                raise EmuError(f"columns named twice: {twice}", file=f"{file}:1")
            rows = []
            for fields in reader:
                line = reader.line_num
                if not fields:
                    continue
                if len(fields) != len(header):
                    raise EmuError(f"expected {len(header)} fields (one per column of the header), got "
                                   f"{len(fields)}", file=f"{file}:{line}")
                rows.append(check_row(dict(zip(header, fields)), file, f"line {line}"))
        except csv.Error as err:
            raise EmuError(f"not a readable CSV ({err}) at line {reader.line_num}", file=file) from None
    finally:
        csv.field_size_limit(limit)
    if not rows:
        raise EmuError("no rows after the header; expected one row per grid point", file=file)
    return rows


def pareto_front(rows: list[dict[str, Any]], by: Iterable[str] = PARETO_KEYS) -> list[dict[str, Any]]:
    """Rows no other row of the same group beats: tok/s at least as high, TTFT and lost mass at least as low,
    one strictly better. Sorted by group, then tok/s descending."""
    by = tuple(by)
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(tuple(row[k] for k in by), []).append(row)

    def beats(a: dict[str, Any], b: dict[str, Any]) -> bool:
        ge = (a["decode_tok_s"] >= b["decode_tok_s"] and a["ttft_ms"] <= b["ttft_ms"]
              and a["lost_mass_frac"] <= b["lost_mass_frac"])
        gt = (a["decode_tok_s"] > b["decode_tok_s"] or a["ttft_ms"] < b["ttft_ms"]
              or a["lost_mass_frac"] < b["lost_mass_frac"])
        return ge and gt

    front = []
    for key in sorted(groups, key=lambda k: tuple(_sort_key(v) for v in k)):
        members = groups[key]
        keep = [r for r in members if not any(beats(o, r) for o in members if o is not r)]
        front += sorted(keep, key=lambda r: (-r["decode_tok_s"], r["ttft_ms"], r["point"]))
    return front


def _sort_key(v: Any) -> tuple[int, Any]:
    if isinstance(v, (int, float)):
        return (0, v)
    text = str(v)
    if text.endswith("%"):
        try:
            return (0, float(text[:-1]))
        except ValueError:
            pass
    return (1, text)


def render_pareto(front: list[dict[str, Any]], by: Iterable[str] = PARETO_KEYS, fmt: str = "plain") -> str:
    """The Pareto front as a table (plain text unless `fmt` says otherwise, as `emu.tables.table_text`)."""
    columns, body = pareto_table(front, by)
    return table_text(columns, body, fmt)


def is_bound(row: dict[str, Any]) -> bool:
    """A row holds an offline bound (a CSV row read back holds the flag as text)."""
    return str(row.get("bound", "")).lower() in ("true", "1")


def pareto_table(front: list[dict[str, Any]], by: Iterable[str] = PARETO_KEYS) -> tuple[list[Column], list[list[str]]]:
    """The Pareto front's columns (the grouping keys and the stack left-aligned, figures right) and rows."""
    by = [k for k in by if k != "trace" or len({r["trace"] for r in front}) > 1]
    columns = [*(Column(k, "left") for k in [*by, "stack"]),
               *(Column(h) for h in ("tok/s", "TTFT ms", "lost mass %", "hit %", "collis."))]
    body = [[str(r[k]) for k in by] + [r["stack"] + (" [bound]" if is_bound(r) else ""), f"{r['decode_tok_s']:.1f}",
                                       f"{r['ttft_ms']:.1f}", f"{100 * r['lost_mass_frac']:.2f}",
                                       f"{100 * r['hit_rate']:.1f}", f"{int(r['misses_collision'])}"] for r in front]
    return columns, body


def write_outputs(spec: SweepSpec, rows: list[dict[str, Any]], out_dir: str | Path,
                  records: list[dict[str, Any]] | None = None) -> dict[str, Path | None]:
    """The sweep's CSV and Parquet tables, and `records` under `runs/` unless `run_sweep(out=...)` wrote them
    as each point finished (then pass none)."""
    out = Path(out_dir)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    for row, record in zip(rows, records or []):
        (out / "runs" / record_file(int(row["point"]), row["stack"])).write_text(json.dumps(record, indent=1) + "\n")
    return {"csv": write_csv(rows, out / f"{spec.name}.csv"),
            "parquet": write_parquet(rows, out / f"{spec.name}.parquet")}


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)[:60]


