"""Hardware profiles: how long copies and kernels take on one machine (schema in docs/profiles.md)."""

from __future__ import annotations

import functools
import itertools
import json
import math
from collections.abc import Callable
from copy import deepcopy
from pathlib import Path
from typing import Any, TypeVar

import attrs
import numpy as np

from .errors import EmuError
from .models import PRECISION_BITS, ModelSpec
from .textio import load_toml

SCHEMA = "moe-emu/profile/1"
T = TypeVar("T")
#: `copy.order`: the order queued copies start in
COPY_ORDERS = ("demand-first", "submission")
#: `copy.h2d_engines`: a GPU has a handful of copy engines; the engines keep one lane per engine
MAX_H2D_ENGINES = 64
#: the most points one measured table (copy table, compute curve, dense axis) may hold
MAX_TABLE_POINTS = 4096
#: the longest time a profile may give one item (a copy, a kernel, a table entry): a measurement longer than an hour
#: is a unit mistake, and bounding every item keeps the engines' times finite (a bandwidth of 1e-300 B/s made copies
#: infinite: NaN in the record, or a fast-engine loop that never ended)
MAX_SECONDS = 3600.0
#: the longest time a compute curve may give a kernel of its largest token count (a CPU expert run of 65,536 tokens
#: takes hours; a billion seconds is no measurement)
MAX_CURVE_SECONDS = 1e9
MAX_AXIS = 1e15
MAX_SUSTAINED_RATIO = 100.0


def value_range(key: str) -> tuple[float, float, str] | None:
    """(lo, hi, what) for a profile key: seconds, table axes, ratios; None: no bound here (rates: any positive
    finite number, since a hand profile of a 6-byte expert has rates of a few bytes/s; the times they give a model
    are checked by `check_item_times`)."""
    name = key.rsplit(".", 1)[-1].split("[", 1)[0]
    if name.endswith(("_per_s", "_Bps")):
        return None
    if name.endswith("_s") or name in ("seconds", "row"):
        return 0.0, MAX_SECONDS, "seconds: at most an hour"
    if name in ("tokens", "context", "table_bytes"):
        return 0.0, MAX_AXIS, "a table axis"
    if name == "sustained_ratio":
        return 0.0, MAX_SUSTAINED_RATIO, "a ratio"
    return None


@attrs.frozen
class Curve:
    """Seconds as a function of routed tokens, measured at a few points."""

    tokens: tuple[float, ...]
    seconds: tuple[float, ...]


@attrs.frozen
class DenseTable:
    """Dense part of one layer (attention, norms, gate): seconds[tokens][context]."""

    tokens: tuple[float, ...]
    context: tuple[float, ...]
    seconds: tuple[tuple[float, ...], ...]


@attrs.frozen
class ModelCompute:
    """Measured compute tables for one model's shapes."""

    expert: dict[str, Curve]
    dense: DenseTable | None = None
    cpu_expert: dict[str, Curve] = attrs.field(factory=dict)
    #: a layer's experts as one grouped GEMM (a fused runtime's kernel): seconds per layer by its distinct
    #: experts, per precision (`Curve.tokens` holds the expert counts)
    fused: dict[str, Curve] = attrs.field(factory=dict)
    pass_overhead_s: float | None = None
    layer_overhead_s: float | None = None


@attrs.frozen
class CopySpec:
    h2d_engines: int
    latency_s: float
    bw_pinned_Bps: float
    bw_pageable_Bps: float
    d2h_bw_pinned_Bps: float | None = None
    h2d_d2h_overlap: bool = True
    table_bytes: tuple[float, ...] = ()
    table_s: tuple[float, ...] = ()
    #: a long stream of pinned copies against its median copy (`emu calibrate`: ~10 s back to back): the
    #: link's slow spells, which a few copies' median misses, spread over every copy (1: none measured)
    sustained_ratio: float = 1.0
    #: the order queued copies start in: "demand-first" (demand before prefetch, then issue order: a runtime
    #: that holds prefetches back until the engine is idle) or "submission" (issue order alone: a CUDA copy
    #: engine given every copy as it is issued runs them in submission order, whatever the stream's priority)
    order: str = "demand-first"


@attrs.frozen
class RooflineSpec:
    """Fallback for shapes the profile has no measured table for: a model, not a measurement."""

    expert_launch_s: float
    hbm_Bps: float
    flops_per_s: float
    dense_layer_s: float
    pass_overhead_s: float = 0.0
    layer_overhead_s: float = 0.0
    cpu_flops_per_s: float | None = None


@attrs.frozen
class HardwareProfile:
    name: str
    copy: CopySpec
    compute: RooflineSpec
    models: dict[str, ModelCompute] = attrs.field(factory=dict)
    provisional: bool = False
    provenance: dict[str, Any] = attrs.field(factory=dict)
    source: str = ""
    #: a scenario's keys over the file's (`hardware.copy.bw_pinned_Bps = 5e9`), dotted key -> value; empty: the
    #: file as it is
    overrides: dict[str, Any] = attrs.field(factory=dict)
    #: the file's keys those overrides invalidated and dropped (a measured copy table at another bandwidth)
    dropped: tuple[str, ...] = ()
    #: the scenario file that set the overrides (errors about the times they give name it)
    override_file: str = ""

    def copy_seconds(self, nbytes: float, pinned: bool = True) -> float:
        """Time of one host-to-device copy of `nbytes`: a pinned one at the link's sustained rate."""
        c = self.copy
        if pinned and c.table_bytes:
            return c.sustained_ratio * float(interp_extrap(np.asarray(c.table_bytes), np.asarray(c.table_s), nbytes))
        if pinned:
            return c.sustained_ratio * (c.latency_s + nbytes / c.bw_pinned_Bps)
        return c.latency_s + nbytes / c.bw_pageable_Bps


def interp_extrap(xs: np.ndarray, ys: np.ndarray, x: float) -> float:
    """Piecewise linear; clamped below the first point, linear extension past the last (never decreasing)."""
    if x <= xs[0]:
        return float(ys[0])
    if x <= xs[-1]:
        return float(np.interp(x, xs, ys))
    if xs.size < 2:
        return float(ys[-1])
    slope = max((ys[-1] - ys[-2]) / (xs[-1] - xs[-2]), 0.0)
    return float(ys[-1] + slope * (x - xs[-1]))


# ---- loading -------------------------------------------------------------------------------------

#: how much slower than a calibration's sustained run (thousands of copies of one size, `copy.sustained_ratio`)
#: its copy table's point of the same size (a few copies) may be before the calibration is named untrustworthy
TABLE_SUSTAINED_TOLERANCE = 0.05


def copy_table_warning(points: list[tuple[int, float]], sustained: dict[str, Any] | None, where: str) -> str | None:
    """A warning when the pinned copy table's point (bytes, seconds) at the sustained run's size is slower than
    that run's median copy by more than `TABLE_SUSTAINED_TOLERANCE`: a slow spell of the link caught the point's
    copies, and every copy near that size is priced too slow. None when they agree or either is missing."""
    if not sustained or not sustained.get("median_s") or not sustained.get("bytes"):
        return None
    table = dict(points)
    seconds = table.get(int(sustained["bytes"]))
    if seconds is None:
        return None
    excess = seconds / float(sustained["median_s"]) - 1.0
    if excess <= TABLE_SUSTAINED_TOLERANCE:
        return None
    return (f"{where}: the pinned copy table's {int(sustained['bytes']) / 2**20:g} MiB point ({seconds * 1e3:.3f} ms) "
            f"is {excess:.1%} slower than the sustained run's median copy of that size "
            f"({float(sustained['median_s']) * 1e3:.3f} ms): the link's slow spells caught the table's copies, "
            "and copies near that size are priced too slow; calibrate again")


def profile_copy_warning(profile: HardwareProfile) -> str | None:
    """`copy_table_warning` of a calibrated profile (its table and its provenance's sustained run)."""
    c = profile.copy
    if not c.table_bytes:
        return None
    return copy_table_warning(list(zip((int(b) for b in c.table_bytes), (float(t) for t in c.table_s))),
                              profile.provenance.get("sustained_copies"), profile.source or profile.name)


class _Reader:
    """Typed access to one TOML table that reports the file and dotted key on every mistake."""

    def __init__(self, table: dict[str, Any], file: str, prefix: str) -> None:
        self.table, self.file, self.prefix = table, file, prefix
        self.used: set[str] = set()

    def _key(self, key: str) -> str:
        return f"{self.prefix}.{key}" if self.prefix else key

    def err(self, key: str, msg: str) -> EmuError:
        return EmuError(msg, file=self.file, key=self._key(key))

    def has(self, key: str) -> bool:
        return key in self.table

    def raw(self, key: str, default: Any = ...) -> Any:
        self.used.add(key)
        if key not in self.table:
            if default is ...:
                raise self.err(key, "missing; see docs/profiles.md")
            return default
        return self.table[key]

    def number(self, key: str, default: Any = ..., *, positive: bool = False) -> float:
        value = self.raw(key, default)
        if value is None:
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.err(key, f"expected a number, got {value!r}")
        value = float(value)
        if not math.isfinite(value):
            raise self.err(key, f"expected a finite number, got {value!r}")
        if value < 0 or (positive and value == 0):
            raise self.err(key, f"expected a {'positive' if positive else 'non-negative'} number, got {value!r}")
        bounds = value_range(key)
        if bounds is not None and not bounds[0] <= value <= bounds[1]:
            lo, hi, what = bounds
            raise self.err(key, f"expected a number in [{lo:g}, {hi:g}] ({what}), got {value!r}")
        return value

    def integer(self, key: str, default: Any = ..., *, hi: int | None = None) -> int:
        value = self.raw(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise self.err(key, f"expected a positive integer, got {value!r}")
        if hi is not None and value > hi:
            raise self.err(key, f"expected an integer in 1..{hi}, got {value!r}")
        return value

    def boolean(self, key: str, default: Any = ...) -> bool:
        value = self.raw(key, default)
        if not isinstance(value, bool):
            raise self.err(key, f"expected true or false, got {value!r}")
        return value

    def numbers(self, key: str, default: Any = ..., *, increasing: bool = False) -> tuple[float, ...]:
        value = self.raw(key, default)
        if not isinstance(value, list) or not value:
            raise self.err(key, f"expected a non-empty list of numbers, got {value!r}")
        if len(value) > MAX_TABLE_POINTS:
            raise self.err(key, f"expected at most {MAX_TABLE_POINTS} values, got {len(value)}")
        out = []
        for i, v in enumerate(value):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(float(v)) or v < 0:
                raise self.err(f"{key}[{i}]", f"expected a finite non-negative number, got {v!r}")
            bounds = value_range(key)
            if bounds is not None and not bounds[0] <= v <= bounds[1]:
                lo, hi, what = bounds
                raise self.err(f"{key}[{i}]", f"expected a number in [{lo:g}, {hi:g}] ({what}), got {v!r}")
            out.append(float(v))
        if increasing and any(b <= a for a, b in itertools.pairwise(out)):
            raise self.err(key, "expected strictly increasing values")
        return tuple(out)

    def sub(self, key: str, default: Any = ...) -> _Reader | None:
        value = self.raw(key, default)
        if value is None:
            return None
        if not isinstance(value, dict):
            raise self.err(key, f"expected a table, got {value!r}")
        return _Reader(value, self.file, self._key(key))

    def tables(self, key: str, read: Callable[[_Reader], T]) -> dict[str, T]:
        """Each table of the table `key` (empty when absent), read by `read`, by name."""
        m = self.sub(key, {})
        assert m is not None
        out = {}
        for name in list(m.table):
            sub = m.sub(name)
            assert sub is not None
            out[name] = read(sub)
        m.done()
        return out

    def done(self) -> None:
        extra = sorted(set(self.table) - self.used)
        if extra:
            raise self.err(extra[0], f"unknown key; expected one of {sorted(self.used)}")


#: host costs of a runtime, which a hardware profile held before runtime profiles existed
_HOST_KEYS = ("copy_issue_s", "prefetch_issue_s", "launch_ahead_s", "prefill_copy_issue_s",
              "prefill_prefetch_issue_s")


def _refuse_host_keys(r: _Reader) -> None:
    for key in _HOST_KEYS:
        if r.has(key):
            raise r.err(key, "a runtime's host cost belongs in a runtime profile (scenario key hardware.runtime, "
                        "docs/profiles.md), not in the hardware profile")


def _curve(r: _Reader, key: str, axis: str = "tokens") -> Curve:
    sub = r.sub(key)
    assert sub is not None
    tokens = sub.numbers(axis, increasing=True)
    seconds = sub.numbers("seconds")
    what = "token count" if axis == "tokens" else "expert count"
    if len(seconds) != len(tokens):
        raise sub.err("seconds", f"expected {len(tokens)} values (one per {what}), got {len(seconds)}")
    if axis == "experts" and tokens[0] < 1:
        raise sub.err(axis, f"expected expert counts of at least 1, got {tokens[0]!r}")
    sub.done()
    return Curve(tokens, seconds)


def _precision_curves(r: _Reader, key: str, axis: str = "tokens") -> dict[str, Curve]:
    sub = r.sub(key, None)
    if sub is None:
        return {}
    curves = {}
    for prec in list(sub.table):
        if prec not in PRECISION_BITS:
            raise sub.err(prec, f"unknown precision; expected one of {sorted(PRECISION_BITS)}")
        curves[prec] = _curve(sub, prec, axis)
    sub.done()
    return curves


def _model_compute(r: _Reader) -> ModelCompute:
    expert = _precision_curves(r, "expert")
    if not expert:
        raise r.err("expert", "expected at least one precision table, e.g. bf16 = { tokens = [...], seconds = [...] }")
    dense = None
    d = r.sub("dense", None)
    if d is not None:
        tokens = d.numbers("tokens", increasing=True)
        context = d.numbers("context", increasing=True)
        rows = d.raw("seconds")
        if not isinstance(rows, list) or len(rows) != len(tokens):
            raise d.err("seconds", f"expected {len(tokens)} rows (one per token count)")
        table = []
        for i, row in enumerate(rows):
            rr = _Reader({"row": row}, d.file, f"{d.prefix}.seconds[{i}]")
            vals = rr.numbers("row")
            if len(vals) != len(context):
                raise d.err(f"seconds[{i}]", f"expected {len(context)} values (one per context length)")
            table.append(vals)
        d.done()
        dense = DenseTable(tokens, context, tuple(table))
    mc = ModelCompute(
        expert=expert, dense=dense, cpu_expert=_precision_curves(r, "cpu_expert"),
        fused=_precision_curves(r, "fused", axis="experts"),
        pass_overhead_s=r.number("pass_overhead_s", None), layer_overhead_s=r.number("layer_overhead_s", None))
    _refuse_host_keys(r)
    r.done()
    return mc


def load_profile(path: str | Path) -> HardwareProfile:
    """The profile at `path`, read once per process while the file is unchanged (many scenarios of one run or
    sweep share a profile whose measurements take most of a small run's time to parse)."""
    path = Path(path)
    file = str(path)
    try:
        st = path.stat()
    except OSError:
        st = None
    if st is None or not path.is_file():
        raise EmuError("hardware profile not found", file=file)
    return _load_profile(file, st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=32)
def _load_profile(file: str, _mtime_ns: int, _size: int) -> HardwareProfile:
    return profile_from_dict(_profile_data(file, _mtime_ns, _size), file=file)


def read_header(top: _Reader, schema: str) -> tuple[str, bool, dict[str, Any]]:
    """A profile file's `schema` (checked), `name`, `provisional` and `provenance` (hardware and runtime alike)."""
    got = top.raw("schema", schema)
    if got != schema:
        raise top.err("schema", f"expected {schema!r}, got {got!r}")
    name = top.raw("name")
    if not isinstance(name, str) or not name:
        raise top.err("name", "expected a non-empty string")
    provisional = top.boolean("provisional", False)
    prov = top.raw("provenance", {})
    if not isinstance(prov, dict):
        raise top.err("provenance", "expected a table")
    return name, provisional, prov


def profile_from_dict(data: dict[str, Any], *, file: str = "<profile>") -> HardwareProfile:
    top = _Reader(data, file, "")
    name, provisional, prov = read_header(top, SCHEMA)

    c = top.sub("copy")
    assert c is not None
    table_bytes = c.numbers("table_bytes", [1.0], increasing=True) if c.has("table_bytes") else ()
    table_s = c.numbers("table_s", [1.0]) if c.has("table_s") else ()
    if len(table_bytes) != len(table_s):
        raise c.err("table_s", f"expected {len(table_bytes)} values, one per entry of table_bytes")
    copy = CopySpec(
        h2d_engines=c.integer("h2d_engines", 1, hi=MAX_H2D_ENGINES), latency_s=c.number("latency_s"),
        bw_pinned_Bps=c.number("bw_pinned_Bps", positive=True),
        bw_pageable_Bps=c.number("bw_pageable_Bps", positive=True),
        d2h_bw_pinned_Bps=c.number("d2h_bw_pinned_Bps", None, positive=True),
        h2d_d2h_overlap=c.boolean("h2d_d2h_overlap", True), table_bytes=table_bytes, table_s=table_s,
        sustained_ratio=c.number("sustained_ratio", 1.0, positive=True), order=c.raw("order", "demand-first"))
    if copy.order not in COPY_ORDERS:
        raise c.err("order", f"expected one of {list(COPY_ORDERS)}, got {copy.order!r}")
    c.done()

    k = top.sub("compute")
    assert k is not None
    compute = RooflineSpec(
        expert_launch_s=k.number("expert_launch_s"), hbm_Bps=k.number("hbm_Bps", positive=True),
        flops_per_s=k.number("flops_per_s", positive=True), dense_layer_s=k.number("dense_layer_s"),
        pass_overhead_s=k.number("pass_overhead_s", 0.0), layer_overhead_s=k.number("layer_overhead_s", 0.0),
        cpu_flops_per_s=k.number("cpu_flops_per_s", None, positive=True))
    _refuse_host_keys(k)
    k.done()

    models = top.tables("models", _model_compute)
    top.done()
    return HardwareProfile(name=name, copy=copy, compute=compute, models=models, provisional=provisional,
                           provenance=prov, source=file)


# ---- a scenario's keys over a profile's -----------------------------------------------------------

#: the profile's tables a scenario may set keys of (`hardware.<section>.<key>`)
PROFILE_SECTIONS = ("copy", "compute", "models")
#: each section's keys (`models` holds one table per model name, read by the profile's own reader)
SECTION_KEYS: dict[str, tuple[str, ...]] = {
    "copy": tuple(f.name for f in attrs.fields(CopySpec)),
    "compute": tuple(f.name for f in attrs.fields(RooflineSpec)),
}
#: what a key's new value makes wrong in the file: measurements taken under the old value. A measured copy table
#: is the old link's size -> time curve (it would win over a new bandwidth or latency); `sustained_ratio` is the old
#: link's slow spells (a stated bandwidth is the sustained one); the measured kernel tables of `models` are the old
#: GPU's (they win over any roofline rate); a model's own overhead wins over `[compute]`'s. `*`: every model.
INVALIDATES: dict[str, tuple[str, ...]] = {
    "copy.bw_pinned_Bps": ("copy.table_bytes", "copy.table_s", "copy.sustained_ratio"),
    "copy.latency_s": ("copy.table_bytes", "copy.table_s"),
    "compute.expert_launch_s": ("models",),
    "compute.hbm_Bps": ("models",),
    "compute.flops_per_s": ("models",),
    "compute.dense_layer_s": ("models",),
    "compute.cpu_flops_per_s": ("models.*.cpu_expert",),
    "compute.pass_overhead_s": ("models.*.pass_overhead_s",),
    "compute.layer_overhead_s": ("models.*.layer_overhead_s",),
}


def flat_keys(table: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Dotted key -> value of every leaf of a nested table (a list is a leaf: a table's points)."""
    out: dict[str, Any] = {}
    for key, value in table.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and value:
            out.update(flat_keys(value, dotted))
        else:
            out[dotted] = value
    return out


def check_overrides(tables: dict[str, Any], file: str) -> dict[str, Any]:
    """A scenario's `hardware.copy` / `.compute` / `.models` tables, their key names checked (values are checked
    with the profile's, when it is read): an unknown key is an error naming the valid ones."""
    for section, table in tables.items():
        if not isinstance(table, dict):
            raise EmuError(f"expected a table of hardware-profile keys (docs/profiles.md), got {table!r}",
                           file=file, key=f"hardware.{section}")
        valid = SECTION_KEYS.get(section)
        if valid is None:  # models: a table per model name
            for model, sub in table.items():
                if not isinstance(sub, dict):
                    raise EmuError(f"expected a table of one model's measured keys (docs/profiles.md), got {sub!r}",
                                   file=file, key=f"hardware.models.{model}")
            continue
        for key in table:
            if key not in valid:
                raise EmuError(f"unknown hardware-profile key; expected one of {list(valid)}", file=file,
                               key=f"hardware.{section}.{key}")
    return tables


def _merge(base: dict[str, Any], over: dict[str, Any]) -> None:
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value


def _drop(data: dict[str, Any], key: str, keep: set[str]) -> list[str]:
    """Remove `key` (`models.*.x`: from every model) from the profile's `data` unless the scenario sets it itself
    (`keep`, or a key under it); the dotted keys removed."""
    parts = key.split(".")
    nodes: list[tuple[str, dict[str, Any]]] = [("", data)]
    for part in parts[:-1]:
        nxt = []
        for where, node in nodes:
            names = list(node) if part == "*" else [part]
            for name in names:
                child = node.get(name)
                if isinstance(child, dict):
                    nxt.append((f"{where}.{name}" if where else name, child))
        nodes = nxt
    out = []
    for where, node in nodes:
        dotted = f"{where}.{parts[-1]}" if where else parts[-1]
        if parts[-1] in node and not any(k == dotted or k.startswith(dotted + ".") for k in keep):
            del node[parts[-1]]
            out.append(dotted)
    return out


def effective_profile(path: str, overrides: dict[str, Any], *, file: str) -> HardwareProfile:
    """The profile at `path` with a scenario's keys (`overrides`, nested as the profile's tables) over it. A key that
    invalidates others (`INVALIDATES`) drops them from the file's unless the scenario sets them too; what was
    dropped is said in one warning. The file is checked as it is first (its own mistakes name it); a bad value set
    by the scenario is an error naming the scenario `file` and its `hardware.` key."""
    base = load_profile(path)
    if not overrides:
        return base
    st = Path(path).stat()
    key = (base.source, st.st_mtime_ns, st.st_size, file, json.dumps(overrides, sort_keys=True, default=repr))
    profile = _OVERRIDDEN.get(key)
    if profile is None:  # many scenarios of a sweep share one profile and its overrides: parse them once
        if len(_OVERRIDDEN) >= 32:
            _OVERRIDDEN.clear()
        profile = _OVERRIDDEN[key] = _overridden(base.source, st.st_mtime_ns, st.st_size, overrides, file)
    if profile.dropped:
        import warnings

        from .errors import EmuWarning

        causes = sorted(k for k in profile.overrides if k in INVALIDATES)
        # `models` is every measured table: name the models whose kernels now come from the roofline
        dropped = [f"models ({', '.join(base.models)})" if k == "models" else k for k in profile.dropped]
        warnings.warn(f"{file}: hardware.{', hardware.'.join(causes)} over profile {profile.name!r} dropped its "
                      f"{', '.join(dropped)} (measured under the old value, they would win over the new one)",
                      EmuWarning, stacklevel=2)
    return profile


def profile_record(profile: HardwareProfile) -> dict[str, Any]:
    """The run record's `profile`: name, provisional, file; with a scenario's keys over it, those keys
    (`overrides`), what they dropped (`dropped`), and the copy and roofline values the run used (`copy`,
    `compute`)."""
    out: dict[str, Any] = {"name": profile.name, "provisional": profile.provisional, "file": profile.source}
    if profile.overrides:
        copy_values = attrs.asdict(profile.copy)
        copy_values["table_bytes"], copy_values["table_s"] = list(profile.copy.table_bytes), list(profile.copy.table_s)
        out.update(overrides=dict(profile.overrides), dropped=list(profile.dropped), copy=copy_values,
                   compute=attrs.asdict(profile.compute), measured_models=sorted(profile.models))
    return out


#: effective profiles by (file, its mtime and size, the scenario file, its overrides as JSON): a TOML value such as
#: a date has no JSON form, so the key holds its repr and the values themselves go to `_overridden`
_OVERRIDDEN: dict[tuple[str, int, int, str, str], HardwareProfile] = {}


def _overridden(path: str, mtime_ns: int, size: int, overrides: dict[str, Any], file: str) -> HardwareProfile:
    data = deepcopy(_profile_data(path, mtime_ns, size))
    flat = flat_keys(overrides)
    keep = set(flat)
    dropped: list[str] = []
    for key in flat:
        for victim in INVALIDATES.get(key, ()):
            dropped += _drop(data, victim, keep)
    _merge(data, overrides)
    try:
        profile = profile_from_dict(data, file=path)
    except EmuError as err:
        where = ", ".join(f"hardware.{k}" for k in flat)
        raise EmuError(f"{err.detail} (profile {path} with {where} set)", file=file,
                       key=f"hardware.{err.key}" if err.key else "hardware") from None
    return attrs.evolve(profile, overrides=flat, dropped=tuple(dropped), override_file=file)


@functools.lru_cache(maxsize=32)
def _profile_data(file: str, _mtime_ns: int, _size: int) -> dict[str, Any]:
    return load_toml(Path(file), "a hardware profile TOML file (docs/profiles.md)")


# ---- compute curves for one model ----------------------------------------------------------------

_ROOFLINE_TOKENS = tuple(float(2**i) for i in range(0, 17))


def model_overhead(profile: HardwareProfile, model: ModelSpec, key: str) -> float:
    """`pass_overhead_s` or `layer_overhead_s` of the model's entry where it sets one, else the profile's
    `[compute]` value."""
    mc = profile.models.get(model.name)
    value = getattr(mc, key) if mc is not None else None
    return float(getattr(profile.compute, key) if value is None else value)


def expert_curve(profile: HardwareProfile, model: ModelSpec, precision: str) -> Curve:
    """Expert FFN time vs tokens: measured when the profile has it, else the roofline estimate."""
    mc = profile.models.get(model.name)
    if mc is not None and precision in mc.expert:
        return mc.expert[precision]
    r = profile.compute
    nbytes = model.expert_bytes(precision)
    secs = tuple(max(r.expert_launch_s, nbytes / r.hbm_Bps, model.expert_flops(int(t)) / r.flops_per_s)
                 for t in _ROOFLINE_TOKENS)
    return Curve(_ROOFLINE_TOKENS, secs)


def fused_curve(profile: HardwareProfile, model: ModelSpec, precision: str) -> Curve | None:
    """A layer's experts as one grouped GEMM: seconds per layer by distinct experts, where measured (None
    else: there is no roofline for a kernel the profile has not timed)."""
    mc = profile.models.get(model.name)
    return mc.fused.get(precision) if mc is not None else None


def cpu_expert_curve(profile: HardwareProfile, model: ModelSpec, precision: str) -> Curve | None:
    mc = profile.models.get(model.name)
    if mc is not None and precision in mc.cpu_expert:
        return mc.cpu_expert[precision]
    rate = profile.compute.cpu_flops_per_s
    if rate is None:
        return None
    return Curve(_ROOFLINE_TOKENS, tuple(model.expert_flops(int(t)) / rate for t in _ROOFLINE_TOKENS))


def dense_table(profile: HardwareProfile, model: ModelSpec) -> DenseTable:
    mc = profile.models.get(model.name)
    if mc is not None and mc.dense is not None:
        return mc.dense
    r = profile.compute
    # Roofline: attention + router weights read once, 2 flops per weight per token.
    per_layer_params = max(model.non_expert_params // max(model.n_moe_layers + model.n_dense_layers, 1), 1)
    nbytes = per_layer_params * 2
    ctx = (1.0, 65536.0)
    rows = tuple(
        tuple(max(r.dense_layer_s, nbytes / r.hbm_Bps, 2.0 * per_layer_params * t / r.flops_per_s)
              for _c in ctx)
        for t in _ROOFLINE_TOKENS)
    return DenseTable(_ROOFLINE_TOKENS, ctx, rows)


def has_measured_tables(profile: HardwareProfile, model: ModelSpec) -> bool:
    return model.name in profile.models


#: (profile, model) pairs `check_item_times` passed, by the profile's identity (each with the profile, so the id
#: stays its own) and the model's value: `emu run` checks every scenario before the runs and again in each, and
#: the scenarios of a run or a sweep mostly share one profile and model. The outcome depends on these two alone.
_PASSED: dict[tuple[int, ModelSpec], HardwareProfile] = {}


def check_item_times(profile: HardwareProfile, model: ModelSpec, *, file: str | None = None) -> None:
    """Every time this profile gives one of the model's items, at every precision, is finite and at most
    `MAX_SECONDS`: one expert's copy (pinned and pageable), its kernel and CPU run for one token, a layer's dense
    part for one token; and at every token count of the curves, finite and at most `MAX_CURVE_SECONDS` (a CPU run of
    65,536 tokens may well take hours). Rates are free on their own (any positive number); this finds the
    combination of a rate and a model that no machine has (a 1e-300 B/s link, 1e-300 flop/s) before the engines
    see it."""
    key: tuple[int, ModelSpec] | None = (id(profile), model)
    try:
        if _PASSED.get(key) is profile:  # type: ignore[arg-type]
            return
    except TypeError:  # a model holding an unhashable value: checked every time
        key = None
    file = file or profile.override_file or profile.source or None
    # a profile a scenario set keys of: the times are the scenario's doing, and its keys are `hardware.*`
    prefix = "hardware." if profile.overrides else ""

    def check(seconds: float, what: str, key: str, limit: float = MAX_SECONDS) -> None:
        if not math.isfinite(seconds) or seconds > limit:
            raise EmuError(f"{what} of {model.name} takes {seconds:g} s by this profile; expected at most "
                           f"{limit:g} s (is a rate in the wrong unit?)", file=file, key=prefix + key)

    for precision in PRECISION_BITS:
        nbytes = model.expert_bytes(precision)
        check(profile.copy_seconds(nbytes, pinned=True), f"one pinned copy of a {precision} expert", "copy")
        check(profile.copy_seconds(nbytes, pinned=False), f"one pageable copy of a {precision} expert",
              "copy.bw_pageable_Bps")
        for name, curve in (("expert", expert_curve(profile, model, precision)),
                            ("cpu_expert", cpu_expert_curve(profile, model, precision))):
            if curve is None:
                continue
            key = "compute" if name == "expert" else "compute.cpu_flops_per_s"
            what = f"one {name.replace('_', ' ')} kernel ({precision}"
            check(curve.seconds[0], f"{what}, {curve.tokens[0]:g} tokens)", key)
            check(max(curve.seconds), f"{what}, up to {curve.tokens[-1]:g} tokens)", key, MAX_CURVE_SECONDS)
        fused = fused_curve(profile, model, precision)
        if fused is not None:
            check(max(fused.seconds), f"one layer's grouped GEMM ({precision}, up to {fused.tokens[-1]:g} experts)",
                  f"models.{model.name}.fused.{precision}", MAX_CURVE_SECONDS)
    dense = dense_table(profile, model)
    check(dense.seconds[0][0], "one layer's dense part", "compute")
    check(max(max(row) for row in dense.seconds), "one layer's dense part (at most)", "compute", MAX_CURVE_SECONDS)
    if key is not None:
        if len(_PASSED) >= 32:
            _PASSED.clear()
        _PASSED[key] = profile
