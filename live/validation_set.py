"""Out-of-sample validation datasets: reading them, per-configuration errors, and the summary per GPU and runtime.

A dataset is a folder `validation/<YYYY-MM-DD>-<gpu kind>/` holding `comparisons.json`:

    {"schema": "moe-emu/validation/1", "gpu": "NVIDIA H100 80GB HBM3", "gpu_kind": "h100", "rows": [ROW, ...]}

with one ROW per configuration run live and emulated:

    {"config": "olmoe-25pct-lru-b1", "runtime": "hf-eager", "out_of_sample": true,
     "calibration": {"profile": "...toml", "runtime_profile": "...toml", "runs": ["cal-..."], "host_drift": 0.02},
     "model": "olmoe-1b-7b", "capacity": "25%", "eviction": "lru", "prefetch": "none", "batch": 1,
     "ttft_s": {"measured": 0.1, "emulated": 0.11}, "decode_tok_s": {"measured": 20.0, "emulated": 19.0},
     "steps_s": {"measured": [...], "emulated": [...]},
     "counts": {"hits": [live, emulated], "accesses": [...], "copies": [...], "prefetch_issued": [...]},
     "prefetch_races": false}

`out_of_sample`: the configuration was not among the runs its calibration was fitted on. `host_drift` (optional,
null where unknown): how far apart the host's pace was across the runtime calibration's requests of the row's
model (`emu.runtime_profile.host_drift`); at most `HOST_DRIFT_TOLERANCE`, the row was calibrated on a steady host.
`prefetch_races`: the runtime's prefetch decisions depend on timing (a prefetch still in flight at a decision), so
its issued count may differ from the emulator's by up to 1%. Every key is required and checked when read: a bad file
gives one `EmuError` naming the file and the key (e.g. `rows[2].steps_s.measured`), never a traceback.

Errors are relative, emulated / measured - 1; the summary reports medians and maxima of their magnitudes
as fractions. Step times are compared by their distributions (two-sample KS), their means (TOST within
+-5%, see live/validation_stats.py) and their p50 / p99.
"""

from __future__ import annotations

import json
import math
import re
import statistics
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import attrs

from emu.errors import EmuError
from emu.runtime_profile import HOST_DRIFT_TOLERANCE

from .validation_stats import TostResult, ks_pvalue, ks_statistic, quantile_errors, tost_equivalent

SCHEMA = "moe-emu/validation/1"

#: how far the emulated all-resident step may be from the calibration's own resident requests (the self-check,
#: `live.protocol.self_check`, median over the requests) for the calibration to count as composing its step
SELF_CHECK_TOLERANCE = 0.05
FILENAME = "comparisons.json"
#: counts every row holds, each as [live, emulated]
COUNT_KEYS = ("hits", "accesses", "copies", "prefetch_issued")
#: the equivalence margin of the step-time means (TOST), as a fraction of the measured mean
TOST_MARGIN = 0.05
#: relative slack of the issued-prefetch count where the runtime's prefetch decisions race its copies
RACE_SLACK = 0.01
MARKER_START = "<!-- validation-summary:start -->"
MARKER_END = "<!-- validation-summary:end -->"
_DATE = re.compile(r"^(\d{4}-\d{2}-\d{2})")  # a dataset name's date (dataset_recency)
_LEASE = re.compile(r"lease(\d+)")  # and its lease number


@attrs.frozen
class Pair:
    """A figure as measured live and as emulated."""

    measured: float
    emulated: float

    @property
    def error(self) -> float:
        """emulated / measured - 1."""
        return self.emulated / self.measured - 1.0


@attrs.frozen
class Steps:
    """Per decode step seconds, live and emulated."""

    measured: tuple[float, ...]
    emulated: tuple[float, ...]


@attrs.frozen
class Calibration:
    """Which calibration the emulator used: the hardware profile, the runtime's profile, the runs fitted on."""

    profile: str
    runtime_profile: str
    runs: tuple[str, ...]
    #: slowest / fastest - 1 of the host's pace across the model's calibration requests (None: not known)
    host_drift: float | None = None
    #: whether the runtime profile prices the experts kernel the run used (None: not recorded)
    kernel_priced: bool | None = None

    @property
    def steady(self) -> bool:
        """The host kept its pace through the calibration (`emu.runtime_profile.HOST_DRIFT_TOLERANCE`)."""
        return self.host_drift is not None and self.host_drift <= HOST_DRIFT_TOLERANCE


@attrs.frozen
class Comparison:
    """One configuration of a dataset."""

    config: str
    runtime: str
    out_of_sample: bool
    calibration: Calibration
    model: str
    capacity: str
    eviction: str
    prefetch: str
    batch: int
    ttft_s: Pair
    decode_tok_s: Pair
    steps_s: Steps
    #: (name, live, emulated) per count, in the file's order
    counts: tuple[tuple[str, int, int], ...]
    prefetch_races: bool
    #: the host's busy seconds in the replayed decode passes over their device time (graph decode; None: eager)
    host_share: float | None = None


@attrs.frozen
class Dataset:
    """One validation folder's comparisons."""

    path: str
    name: str
    gpu: str
    gpu_kind: str
    rows: tuple[Comparison, ...]
    #: per row model, the emulated all-resident step's error against each calibration request's own resident
    #: request (`live.protocol.self_check`: in sample, a check of the calibration, not a validation)
    self_check: dict[str, tuple[float, ...]] = attrs.field(factory=dict)
    #: the same for each calibration request's batch request (`live.protocol.self_check(batch=True)`)
    self_check_batch: dict[str, tuple[float, ...]] = attrs.field(factory=dict)


@attrs.frozen
class RowErrors:
    """The errors of one configuration."""

    ttft_err: float
    decode_err: float
    ks_d: float
    ks_p: float
    tost: TostResult
    step_p50_err: float
    step_p99_err: float
    counts_equal: bool


@attrs.frozen
class SummaryRow:
    """One (GPU kind, runtime) group over every dataset given: |error| medians and maxima as fractions."""

    gpu: str
    runtime: str
    n_configs: int
    out_of_sample: bool
    ttft_median: float
    ttft_max: float
    decode_median: float
    decode_max: float
    ks_median: float
    tost_pass: int
    counts_equal: int
    #: the full GPU names and the dataset folders of the group
    gpu_names: tuple[str, ...] = ()
    datasets: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """The summary keys, with the step and count figures under `extra`."""
        return {"gpu": self.gpu, "runtime": self.runtime, "n_configs": self.n_configs,
                "out_of_sample": self.out_of_sample, "ttft_median": self.ttft_median, "ttft_max": self.ttft_max,
                "decode_median": self.decode_median, "decode_max": self.decode_max,
                "extra": {"ks_median": self.ks_median, "tost_pass": self.tost_pass,
                          "counts_equal": self.counts_equal, "gpu_names": list(self.gpu_names),
                          "datasets": list(self.datasets)}}


# ---- reading ----------------------------------------------------------------------------------------

class _Reader:
    """Typed access to one file's JSON, raising EmuError with the file and the dotted key."""

    def __init__(self, file: str) -> None:
        self.file = file

    def fail(self, key: str, message: str) -> EmuError:
        return EmuError(message, file=self.file, key=key)

    def get(self, obj: dict[str, Any], key: str, where: str) -> Any:
        if key not in obj:
            raise self.fail(where, "missing")
        return obj[key]

    def obj(self, value: Any, where: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(where, f"expected an object, got {type(value).__name__}")
        return value

    def str_(self, obj: dict[str, Any], key: str, where: str) -> str:
        value = self.get(obj, key, where)
        if not isinstance(value, str) or not value:
            raise self.fail(where, f"expected a non-empty string, got {value!r}")
        return value

    def bool_(self, obj: dict[str, Any], key: str, where: str) -> bool:
        value = self.get(obj, key, where)
        if not isinstance(value, bool):
            raise self.fail(where, f"expected true or false, got {value!r}")
        return value

    def bool_or_none(self, obj: dict[str, Any], key: str, where: str) -> bool | None:
        value = obj.get(key)
        if value is not None and not isinstance(value, bool):
            raise self.fail(where, f"expected true, false or null, got {value!r}")
        return value

    def int_(self, value: Any, where: str, lo: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < lo:
            raise self.fail(where, f"expected an integer >= {lo}, got {value!r}")
        return value

    def positive(self, value: Any, where: str) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                or value <= 0:
            raise self.fail(where, f"expected a finite positive number, got {value!r}")
        return float(value)

    def fraction_or_none(self, obj: dict[str, Any], key: str, where: str) -> float | None:
        """An optional key: absent or null gives None, else a finite number >= 0."""
        value = obj.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise self.fail(where, f"expected null or a fraction >= 0, got {value!r}")
        return float(value)

    def pair(self, obj: dict[str, Any], key: str, where: str) -> Pair:
        sub = self.obj(self.get(obj, key, where), where)
        return Pair(*(self.positive(self.get(sub, k, f"{where}.{k}"), f"{where}.{k}")
                      for k in ("measured", "emulated")))

    def steps(self, obj: dict[str, Any], key: str, where: str) -> Steps:
        sub = self.obj(self.get(obj, key, where), where)
        out = []
        for k in ("measured", "emulated"):
            w = f"{where}.{k}"
            values = self.get(sub, k, w)
            if not isinstance(values, list) or not values:
                raise self.fail(w, "expected a non-empty list of seconds per decode step")
            out.append(tuple(self.positive(v, f"{w}[{i}]") for i, v in enumerate(values)))
        return Steps(*out)


def _comparison(r: _Reader, raw: Any, where: str) -> Comparison:
    row = r.obj(raw, where)
    cal = r.obj(r.get(row, "calibration", f"{where}.calibration"), f"{where}.calibration")
    runs = r.get(cal, "runs", f"{where}.calibration.runs")
    if not isinstance(runs, list) or not all(isinstance(x, str) for x in runs):
        raise r.fail(f"{where}.calibration.runs", "expected a list of run names")
    calibration = Calibration(r.str_(cal, "profile", f"{where}.calibration.profile"),
                              r.str_(cal, "runtime_profile", f"{where}.calibration.runtime_profile"), tuple(runs),
                              r.fraction_or_none(cal, "host_drift", f"{where}.calibration.host_drift"),
                              r.bool_or_none(cal, "kernel_priced", f"{where}.calibration.kernel_priced"))
    counts_raw = r.obj(r.get(row, "counts", f"{where}.counts"), f"{where}.counts")
    for name in COUNT_KEYS:
        r.get(counts_raw, name, f"{where}.counts.{name}")
    counts = []
    for name, value in counts_raw.items():
        w = f"{where}.counts.{name}"
        if not isinstance(value, list) or len(value) != 2:
            raise r.fail(w, f"expected [live, emulated], got {value!r}")
        counts.append((name, r.int_(value[0], w, 0), r.int_(value[1], w, 0)))

    def text(key: str) -> str:
        return r.str_(row, key, f"{where}.{key}")

    return Comparison(
        config=text("config"), runtime=text("runtime"),
        out_of_sample=r.bool_(row, "out_of_sample", f"{where}.out_of_sample"), calibration=calibration,
        model=text("model"), capacity=text("capacity"), eviction=text("eviction"), prefetch=text("prefetch"),
        batch=r.int_(r.get(row, "batch", f"{where}.batch"), f"{where}.batch", 1),
        ttft_s=r.pair(row, "ttft_s", f"{where}.ttft_s"),
        decode_tok_s=r.pair(row, "decode_tok_s", f"{where}.decode_tok_s"),
        steps_s=r.steps(row, "steps_s", f"{where}.steps_s"), counts=tuple(counts),
        prefetch_races=r.bool_(row, "prefetch_races", f"{where}.prefetch_races"),
        host_share=r.fraction_or_none(row, "host_share", f"{where}.host_share"))


def load_dataset(path: str | Path) -> Dataset:
    """A dataset from its folder or its comparisons.json, every key checked."""
    path = Path(path)
    file = path / FILENAME if path.is_dir() else path
    try:
        raw = json.loads(file.read_text())
    except FileNotFoundError:
        raise EmuError(f"not found (a validation dataset is a folder holding {FILENAME})", file=str(file)) from None
    except OSError as err:
        raise EmuError(f"cannot read: {err.strerror}", file=str(file)) from None
    except json.JSONDecodeError as err:
        raise EmuError(f"not valid JSON: {err.msg} at line {err.lineno}", file=str(file)) from None
    except UnicodeDecodeError:
        raise EmuError("not UTF-8 text", file=str(file)) from None
    r = _Reader(str(file))
    top = r.obj(raw, "")
    schema = r.get(top, "schema", "schema")
    if schema != SCHEMA:
        raise r.fail("schema", f"expected {SCHEMA!r}, got {schema!r}")
    rows_raw = r.get(top, "rows", "rows")
    if not isinstance(rows_raw, list) or not rows_raw:
        raise r.fail("rows", "expected a non-empty list of configurations")
    rows = tuple(_comparison(r, row, f"rows[{i}]") for i, row in enumerate(rows_raw))
    seen: dict[tuple[str, str], int] = {}
    for i, row in enumerate(rows):
        j = seen.setdefault((row.config, row.runtime), i)
        if j != i:
            raise r.fail(f"rows[{i}].config", f"{row.config!r} with runtime {row.runtime!r} repeats rows[{j}]")
    return Dataset(str(file), file.parent.name, r.str_(top, "gpu", "gpu"), r.str_(top, "gpu_kind", "gpu_kind"), rows,
                   _self_check(r, top, rows), _self_check(r, top, rows, "self_check_batch"))


def _self_check(r: _Reader, top: dict[str, Any], rows: tuple[Comparison, ...],
                key: str = "self_check") -> dict[str, tuple[float, ...]]:
    """The optional `self_check` (or `self_check_batch`) object ({preset: {"config": a row's config, "errors":
    [fractions]}}), keyed by the model name of the row it names."""
    raw = top.get(key)
    if raw is None:
        return {}
    out = {}
    by_config = {row.config: row.model for row in rows}
    for preset, entry in r.obj(raw, key).items():
        where = f"{key}.{preset}"
        entry = r.obj(entry, where)
        config = r.str_(entry, "config", f"{where}.config")
        if config not in by_config:
            raise r.fail(f"{where}.config", f"expected the config of a row, got {config!r}")
        errors = r.get(entry, "errors", f"{where}.errors")
        if not isinstance(errors, list) or not errors or any(
                isinstance(e, bool) or not isinstance(e, (int, float)) or not math.isfinite(e) or e <= -1
                for e in errors):
            raise r.fail(f"{where}.errors", f"expected a non-empty list of fractions > -1, got {errors!r}")
        out[by_config[config]] = tuple(float(e) for e in errors)
    return out


def find_datasets(path: str | Path) -> list[Path]:
    """The comparisons.json files under `path`: the path itself (a file or a dataset folder), else every
    subfolder holding one (e.g. `validation/`)."""
    path = Path(path)
    if path.is_file():
        return [path]
    if (path / FILENAME).is_file():
        return [path / FILENAME]
    if not path.is_dir():
        raise EmuError("expected a validation folder", file=str(path), key="--summary")
    found = sorted(p / FILENAME for p in path.iterdir() if (p / FILENAME).is_file())
    if not found:
        raise EmuError(f"no dataset (a subfolder holding {FILENAME}) found", file=str(path), key="--summary")
    return found


# ---- errors -----------------------------------------------------------------------------------------

def counts_equal(row: Comparison) -> bool:
    """Every count of the runtime equals the emulator's; where prefetches race the gates (`prefetch_races`: whether
    a prefetch has landed, or is still in flight and not evictable, at a decision depends on real against emulated
    time), accesses stay exact and every other count may differ by up to 1% of the runtime's."""
    for name, live, emu in row.counts:
        if row.prefetch_races and name != "accesses":
            if abs(emu - live) > RACE_SLACK * live:
                return False
        elif live != emu:
            return False
    return True


def row_errors(row: Comparison) -> RowErrors:
    """TTFT and decode errors, the step times' KS distance and p, TOST at +-5%, p50/p99 errors, counts."""
    m, e = row.steps_s.measured, row.steps_s.emulated
    d = ks_statistic(m, e)
    p50, p99 = quantile_errors(m, e, (0.5, 0.99))
    return RowErrors(ttft_err=row.ttft_s.error, decode_err=row.decode_tok_s.error, ks_d=d,
                     ks_p=ks_pvalue(d, len(m), len(e)), tost=tost_equivalent(m, e, TOST_MARGIN),
                     step_p50_err=p50, step_p99_err=p99, counts_equal=counts_equal(row))


#: the parts of a run's decode steps that `step_drift` compares
DRIFT_PARTS = 4


def step_drift(row: Comparison, parts: int | None = None) -> float | None:
    """How far the run's own pace moved against the emulation's within the run: its decode steps cut into
    `parts` consecutive parts, each part's measured median step over its emulated median step (the same steps of
    the same trace: what the cache does in that part is in both), the largest of these ratios over the smallest,
    less 1. A steady host and a model right in each part give ~0 whatever the run's error; a host that slowed
    within the run (or an error that grows with the run) gives more. A diagnostic beside the errors: no set is
    chosen by it. None with fewer than two steps a part, or step lists of different lengths."""
    return steps_drift(row.steps_s.measured, row.steps_s.emulated, parts)


#: a step drift beyond which `compare` says that the host's pace moved within the run
DRIFT_WARNING = 0.10


def steps_drift(m: Sequence[float], e: Sequence[float], parts: int | None = None) -> float | None:
    """`step_drift` of measured and emulated step lists (`parts`: `DRIFT_PARTS` unless given)."""
    parts = DRIFT_PARTS if parts is None else parts
    n = len(m) // parts
    if n < 2 or len(m) != len(e):
        return None
    ratios = [statistics.median(m[i * n:(i + 1) * n]) / statistics.median(e[i * n:(i + 1) * n])
              for i in range(parts)]
    return max(ratios) / min(ratios) - 1.0


def self_consistent(dataset: Dataset, row: Comparison) -> bool:
    """Whether the row's model passed its dataset's self-check: the emulated all-resident step within
    `SELF_CHECK_TOLERANCE` of the calibration's own resident requests (their median error; decided from the
    calibration alone). False where the dataset has no self-check for the model."""
    errors = dataset.self_check.get(row.model)
    return bool(errors) and self_check_passes(errors)


def format_self_check(errors: Iterable[float]) -> str:
    """A model's self-check errors as the tables and warnings print them: "+1.0% / -2.0% / +0.5%"."""
    return " / ".join(_pct(e) for e in errors)


def self_check_passes(errors: Iterable[float]) -> bool:
    """Whether a model's self-check errors (one per calibration request) are within `SELF_CHECK_TOLERANCE` at
    their median."""
    return abs(statistics.median(errors)) <= SELF_CHECK_TOLERANCE


def dataset_recency(name: str) -> tuple[str, int, str]:
    """A dataset's place in time, from its name (`<date>-<gpu>-lease<N>-...`): its date, then its lease number,
    then the name; a name without a date or a lease number goes before those that have one."""
    date = _DATE.match(name)
    lease = _LEASE.search(name)
    return (date.group(1) if date else "", int(lease.group(1)) if lease else -1, name)


def summarize(datasets: Iterable[Dataset], per_dataset: bool = False, steady: bool = False,
              sound: bool = False, newest: bool = False) -> list[SummaryRow]:
    """One row per (GPU kind, runtime) over all datasets, sorted by both; `per_dataset`: one per dataset too
    (leases of one runtime mode may differ in how they were calibrated); `steady`: only the configurations whose
    calibration found the host steady (`Calibration.steady`, decided from the calibration requests alone);
    `sound`: only those whose calibration is steady, composes its own resident step (`self_consistent`) and prices
    the experts kernel the run used (`Calibration.kernel_priced` not false); `newest`: of the sound rows, each
    configuration's from the newest dataset (`dataset_recency`), whatever its error: what the latest
    calibration methods give over the matrix."""
    groups: dict[tuple[str, str, str], list[tuple[Dataset, Comparison, RowErrors]]] = {}
    for ds in sorted(datasets, key=lambda d: dataset_recency(d.name)) if newest else datasets:
        for row in ds.rows:
            if (steady or sound or newest) and not row.calibration.steady:
                continue
            if (sound or newest) and (not self_consistent(ds, row) or row.calibration.kernel_priced is False):
                continue
            key = (ds.gpu_kind, row.runtime, ds.name if per_dataset else "")
            groups.setdefault(key, []).append((ds, row, row_errors(row)))
    if newest:  # a later dataset's row of a configuration replaces an earlier one's
        groups = {key: list({r.config: (ds, r, e) for ds, r, e in items}.values()) for key, items in groups.items()}
    out = []
    for (kind, runtime, _name), items in sorted(groups.items()):
        ttft = [abs(err.ttft_err) for _, _, err in items]
        decode = [abs(err.decode_err) for _, _, err in items]
        out.append(SummaryRow(
            gpu=kind, runtime=runtime, n_configs=len(items), out_of_sample=all(r.out_of_sample for _, r, _ in items),
            ttft_median=statistics.median(ttft), ttft_max=max(ttft),
            decode_median=statistics.median(decode), decode_max=max(decode),
            ks_median=statistics.median(err.ks_d for _, _, err in items),
            tost_pass=sum(err.tost.equivalent for _, _, err in items),
            counts_equal=sum(err.counts_equal for _, _, err in items),
            gpu_names=tuple(sorted({ds.gpu for ds, _, _ in items})),
            datasets=tuple(dict.fromkeys(ds.name for ds, _, _ in items))))
    return out


# ---- tables -----------------------------------------------------------------------------------------

def _md_table(head: list[str], rows: list[list[str]]) -> str:
    """A Markdown table for the docs: the first column (names) left-aligned, the figures right."""
    from emu.tables import Column, table_text

    return table_text([Column(h, "left" if i == 0 else "right") for i, h in enumerate(head)], rows, "markdown")


def _pct(x: float, signed: bool = True) -> str:
    return f"{100 * x:+.1f}%" if signed else f"{100 * x:.1f}%"


def format_summary_table(rows: list[SummaryRow], per_dataset: bool = False) -> str:
    """The summary as a Markdown table (|error| medians and maxima in percent); `per_dataset`: rows of
    `summarize(..., per_dataset=True)`, each naming its dataset."""
    head = ["GPU", "runtime", *(["dataset"] if per_dataset else []), "configs", "out of sample", "TTFT median",
            "TTFT max", "decode median", "decode max", "KS D median", f"TOST ±{100 * TOST_MARGIN:.0f}%",
            "counts equal"]
    body = [[r.gpu, r.runtime, *([r.datasets[0]] if per_dataset else []), str(r.n_configs),
             "yes" if r.out_of_sample else "no",
             _pct(r.ttft_median, False), _pct(r.ttft_max, False), _pct(r.decode_median, False),
             _pct(r.decode_max, False), f"{r.ks_median:.3f}", f"{r.tost_pass}/{r.n_configs}",
             f"{r.counts_equal}/{r.n_configs}"] for r in rows]
    return _md_table(head, body)


def _counts_cell(row: Comparison, equal: bool) -> str:
    if equal:
        return "equal"
    return "differ: " + ", ".join(f"{name} {live}/{emu}" for name, live, emu in row.counts if live != emu)


def format_config_table(dataset: Dataset) -> str:
    """One Markdown row per configuration: signed errors in percent, KS D and p, TOST, step quantile errors, the
    run's step drift (`step_drift`), counts (live/emulated where they differ)."""
    head = ["config", "runtime", "TTFT err", "decode err", "KS D", "KS p", f"TOST ±{100 * TOST_MARGIN:.0f}%",
            "p50 step err", "p99 step err", "step drift", "counts"]
    body = []
    for row in dataset.rows:
        err = row_errors(row)
        drift = step_drift(row)
        body.append([row.config, row.runtime, _pct(err.ttft_err), _pct(err.decode_err), f"{err.ks_d:.3f}",
                     f"{err.ks_p:.3g}", f"{'yes' if err.tost.equivalent else 'no'} (p {err.tost.p:.3g})",
                     _pct(err.step_p50_err), _pct(err.step_p99_err),
                     "-" if drift is None else _pct(drift, signed=False), _counts_cell(row, err.counts_equal)])
    return _md_table(head, body)


def format_model_table(dataset: Dataset) -> str:
    """One Markdown row per (model, runtime) of a dataset: its configurations, the host share of a decode step
    (least .. most, where recorded), the host drift its calibration saw, its runs' step drift (least .. most,
    `step_drift`), the signed TTFT and decode errors' range
    (least .. most), how many agree on the counts and, where the dataset has it, the self-check (the emulated
    all-resident step against each calibration request's own, and its batch request's)."""
    groups: dict[tuple[str, str], list[Comparison]] = {}
    for row in dataset.rows:
        groups.setdefault((row.model, row.runtime), []).append(row)
    head = ["model", "runtime", "configs", "host share", "host drift", "step drift", "TTFT err", "decode err",
            "counts equal"]
    if dataset.self_check:
        head.append("self-check")
    if dataset.self_check_batch:
        head.append("batch self-check")
    body = []
    for (model, runtime), rows in groups.items():
        errs = [row_errors(r) for r in rows]
        shares = [r.host_share for r in rows if r.host_share is not None]
        share = f"{min(shares):.2f} .. {max(shares):.2f}" if shares else "-"
        drifts = sorted({r.calibration.host_drift for r in rows if r.calibration.host_drift is not None})
        drift = " / ".join(_pct(d, signed=False) for d in drifts) if drifts else "-"
        steps = [d for d in map(step_drift, rows) if d is not None]
        moved = f"{_pct(min(steps), signed=False)} .. {_pct(max(steps), signed=False)}" if steps else "-"
        ttft = [e.ttft_err for e in errs]
        dec = [e.decode_err for e in errs]
        body.append([model, runtime, str(len(rows)), share, drift, moved, f"{_pct(min(ttft))} .. {_pct(max(ttft))}",
                     f"{_pct(min(dec))} .. {_pct(max(dec))}", f"{sum(e.counts_equal for e in errs)}/{len(rows)}"])
        if dataset.self_check:
            body[-1].append(format_self_check(dataset.self_check.get(model, ())) or "-")
        if dataset.self_check_batch:
            body[-1].append(format_self_check(dataset.self_check_batch.get(model, ())) or "-")
    return _md_table(head, body)


@attrs.frozen
class Repeat:
    """One configuration measured in several datasets of one GPU kind and runtime: how far the measurement itself
    moves between leases (a floor under any prediction's error)."""

    gpu: str
    runtime: str
    config: str
    decode_tok_s: tuple[float, ...]
    ttft_s: tuple[float, ...]

    @property
    def decode_spread(self) -> float:
        return max(self.decode_tok_s) / min(self.decode_tok_s) - 1.0

    @property
    def ttft_spread(self) -> float:
        return max(self.ttft_s) / min(self.ttft_s) - 1.0


def repeats(datasets: Iterable[Dataset]) -> list[Repeat]:
    """The configurations measured in two or more of the datasets, per (GPU kind, runtime), in config order."""
    seen: dict[tuple[str, str, str], list[Comparison]] = {}
    for ds in datasets:
        for r in ds.rows:
            seen.setdefault((ds.gpu_kind, r.runtime, r.config), []).append(r)
    return [Repeat(gpu, runtime, config, tuple(r.decode_tok_s.measured for r in rows),
                   tuple(r.ttft_s.measured for r in rows))
            for (gpu, runtime, config), rows in sorted(seen.items()) if len(rows) >= 2]


def format_repeats(reps: list[Repeat]) -> str:
    """One Markdown row per repeated configuration: its measured figures in each dataset and their spread."""
    rows = [[r.gpu, r.runtime, r.config, str(len(r.decode_tok_s)), " / ".join(f"{x:.2f}" for x in r.decode_tok_s),
             _pct(r.decode_spread, signed=False), " / ".join(f"{1e3 * x:.1f}" for x in r.ttft_s),
             _pct(r.ttft_spread, signed=False)] for r in reps]
    return _md_table(["GPU", "runtime", "config", "runs", "decode tok/s", "spread", "TTFT ms", "spread"], rows)


def write_docs_summary(md_path: str | Path, table: str) -> None:
    """Replace what lies between the summary markers of a Markdown file with `table` (the markers stay)."""
    md_path = Path(md_path)
    try:
        lines = md_path.read_text().splitlines()
    except FileNotFoundError:
        raise EmuError("not found", file=str(md_path), key="--write-docs") from None
    except (OSError, UnicodeDecodeError) as err:
        raise EmuError(f"cannot read: {err}", file=str(md_path), key="--write-docs") from None
    starts = [i for i, line in enumerate(lines) if line.strip() == MARKER_START]
    ends = [i for i, line in enumerate(lines) if line.strip() == MARKER_END]
    if len(starts) != 1 or len(ends) != 1 or ends[0] < starts[0]:
        raise EmuError(f"expected one line {MARKER_START} followed by one line {MARKER_END} "
                       f"(found {len(starts)} and {len(ends)})", file=str(md_path), key=MARKER_START)
    new = [*lines[: starts[0] + 1], "", *table.strip("\n").splitlines(), "", *lines[ends[0]:]]
    md_path.write_text("\n".join(new) + "\n")
