"""Emulated vs measured: replay a live run's recorded trace through the emulator and compare.

A live run (`emu live` or `python -m live.matrix`) leaves a JSON record and the trace it recorded. The
emulator runs that trace with the same model shape, the same number of slots (capacity = slots x
expert bytes), the same eviction and prefetch policies (a record without `prefetch` ran none) and a
hardware profile, and the comparison gives the relative
error of TTFT, decode tok/s, hit rate and bytes moved. No torch needed: CI re-checks committed runs.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

import attrs

from emu.errors import EmuError
from emu.models import ModelSpec
from emu.profile import HardwareProfile
from emu.runtime_profile import NO_RUNTIME, RuntimeProfile
from emu.textio import loads, read_text
from emu.trace import RoutingTrace

#: the metrics compared, as (name, key in the live record or its stats, emulator attribute or counter)
METRICS = ("ttft_s", "decode_tok_s", "hit_rate", "bytes_h2d")
#: metrics whose error is the issue's accuracy target
TIMED = ("ttft_s", "decode_tok_s")

_REQUIRED = ("model", "slots", "eviction", "ttft_s", "decode_tok_s", "stats", "trace")


@attrs.frozen(eq=False)
class LiveRun:
    """One measured live run: its record and its recorded trace."""

    path: str
    record: dict[str, Any]
    trace: RoutingTrace

    @property
    def tag(self) -> str:
        return str(self.record.get("tag") or Path(self.path).stem)


def load_live_run(path: str | Path) -> LiveRun:
    path = Path(path)
    if not path.is_file():
        raise EmuError("live result not found", file=str(path))
    what = "the record `emu live` writes"
    record = loads(read_text(path, what), str(path), what)
    if not isinstance(record, dict):
        raise EmuError("expected a JSON object (the record `emu live` writes)", file=str(path))
    for key in _REQUIRED:
        if record.get(key) is None:
            raise EmuError("missing; expected the record of an offloaded live run (`emu live` without "
                           "--no-offload)", file=str(path), key=key)
    trace_path = Path(record["trace"])
    if not trace_path.is_absolute():  # beside the record (golden files move), or relative to it (a dataset's)
        beside = path.parent / trace_path.name
        trace_path = beside if beside.is_file() else path.parent / trace_path
    if not trace_path.is_file():
        raise EmuError(f"recorded trace {trace_path} not found", file=str(path), key="trace")
    trace = RoutingTrace.load(trace_path)
    want = record.get("trace_fingerprint")
    if want is not None and trace.fingerprint() != want:
        raise EmuError(f"trace {trace_path} has fingerprint {trace.fingerprint()}, the record expects {want}",
                       file=str(path), key="trace_fingerprint")
    return LiveRun(str(path), record, trace)


def live_model(run: LiveRun, profile: HardwareProfile) -> ModelSpec:
    """The model as built, named after the preset whose measured tables the profile holds when it has the
    preset's shape (a Mixtral cut to 8 layers has Mixtral's per-layer and per-expert times; a tiny CPU
    build keeps its own name and gets the profile's roofline estimate)."""
    return model_for_profile(run.record["model"], run.record.get("profile_model"), profile, run.path)


def model_for_profile(raw: Any, preset: str | None, profile: HardwareProfile, file: str | None = None) -> ModelSpec:
    """`live_model` for a record's model spec (a dict) and its `profile_model`, before or after the run."""
    fields = {f.name for f in attrs.fields(ModelSpec)}
    if not isinstance(raw, dict) or not set(raw) <= fields:
        raise EmuError(f"expected a model spec with keys from {sorted(fields)}", file=file, key="model")
    spec = ModelSpec(**raw)
    if preset is None and "-" in spec.name and spec.name not in profile.models:
        preset = spec.name.rsplit("-", 2)[0]  # live_spec's "<preset>-<scale>-<n>l"
    if preset in profile.models and _same_shape(spec, preset):
        spec = attrs.evolve(spec, name=preset)
    return spec


def _same_shape(spec: ModelSpec, preset: str) -> bool:
    """Per-layer and per-expert shape of the preset (only the layer count may differ)."""
    from emu.models import PRESETS

    base = PRESETS.get(preset)
    keys = ("n_experts", "top_k", "hidden", "expert_intermediate", "expert_matrices", "precision")
    return base is not None and all(getattr(base, k) == getattr(spec, k) for k in keys)


def _choice(run: LiveRun, kind: str, name: str, params: Any) -> Any:
    """The record's policy with its parameters resolved (defaults filled in) as a scenario would be."""
    from emu.engines.setup import PolicyChoice
    from emu.policies.registry import get_policy

    resolved = get_policy(kind, name, file=run.path).resolve_params(dict(params or {}), f"{kind}_params", run.path)
    return PolicyChoice(name, resolved)


def run_profile(run: LiveRun, profile: HardwareProfile) -> HardwareProfile:
    """`profile` with the copy order of the run's prefetch hand-over (`live.watchdog.COPY_ORDER`): how the
    runtime handed its copies to the copy engine is the run's, not the device's. Unchanged for a run without
    prefetch (its demand copies start in issue order either way) and for a record that says only "auto" (older
    records, written before the runtime recorded the hand-over it resolved to)."""
    from .watchdog import COPY_ORDER, HANDOVER_CHOICES

    handover = run.record.get("handover")
    if handover is None or handover == "auto":
        return profile
    if handover not in COPY_ORDER:
        raise EmuError(f"expected a prefetch hand-over in {list(HANDOVER_CHOICES)}, got {handover!r}",
                       file=run.path, key="handover")
    return attrs.evolve(profile, copy=attrs.evolve(profile.copy, order=COPY_ORDER[handover]))


def kernel_priced(run: LiveRun, runtime: RuntimeProfile) -> bool:
    """Whether `runtime` prices the experts kernel the run used (`experts_kernel` "fused": the model's grouped GEMM,
    one per layer; else one kernel per expert): a fused run emulated with per-expert times, or the reverse, is a
    prediction for another runtime."""
    fused_run = run.record.get("experts_kernel") == "fused"
    return fused_run == (runtime.experts == "fused")


def emulate_live(run: LiveRun, profile: HardwareProfile, engine: str = "fast",
                 runtime: RuntimeProfile = NO_RUNTIME) -> Any:
    """The emulator's result on the run's trace with its slots and policies, the device's times from `profile`
    (its copy order the run's hand-over's: `run_profile`) and the host's from `runtime`."""
    from emu.engines.setup import StackChoice, make_inputs
    from emu.metrics import build_result

    spec = live_model(run, profile)
    rec = run.record
    profile = run_profile(run, profile)
    slots = int(rec["slots"])
    expert_bytes = int(rec.get("expert_bytes") or spec.expert_bytes())
    if expert_bytes != spec.expert_bytes():
        raise EmuError(f"expert bytes {expert_bytes} differ from the model spec's {spec.expert_bytes()}",
                       file=run.path, key="expert_bytes")
    stack = StackChoice(eviction=_choice(run, "eviction", str(rec["eviction"]), rec.get("eviction_params")),
                        prefetch=_choice(run, "prefetch", str(rec.get("prefetch") or "none"),
                                         rec.get("prefetch_params")),
                        partition=_choice(run, "partition", str(rec.get("partition") or "global"),
                                          rec.get("partition_params")),
                        miss=_choice(run, "miss", str(rec.get("miss") or "fetch"), rec.get("miss_params")))
    run.trace.check_fits(spec.n_moe_layers, spec.n_experts, spec.top_k, file=run.path)
    inputs = make_inputs(spec, profile, run.trace, slots * expert_bytes, stack, int(rec.get("seed", 0)), runtime)
    if engine == "fast":
        from emu.engines.fast.engine import run_fast as run_engine
    elif engine == "des":
        from emu.engines.des.engine import run_des as run_engine
    else:
        raise EmuError(f"expected fast or des, got {engine!r}", key="--engine")
    cs, end, timings = run_engine(inputs)
    return build_result(cs, end, run.trace, engine, timings)


@attrs.frozen
class Metric:
    name: str
    measured: float
    emulated: float

    @property
    def error(self) -> float:
        """(emulated - measured) / measured; 0 when both are 0."""
        if self.measured == 0:
            return 0.0 if self.emulated == 0 else float("inf")
        return (self.emulated - self.measured) / self.measured


#: prefetch counters of a live record's stats and the emulator's counters they compare with
PREFETCH_COUNTS = (("prefetch_issued", "prefetch_issued"), ("prefetch_useful", "prefetch_useful"),
                   ("prefetch_dropped", "prefetch_dropped"), ("late_hits", "late_prefetch_hits"))


@attrs.frozen
class Validation:
    tag: str
    metrics: tuple[Metric, ...]
    #: (hits, accesses, copies) counted by the runtime and by the emulator
    live_counts: tuple[int, int, int]
    emu_counts: tuple[int, int, int]
    prefetch: str = "none"
    #: (issued, useful, dropped, late hits) by the runtime and the emulator; empty without prefetch.
    #: Late hits depend on timing (a prefetch still in flight at its layer's gate), so they may differ.
    live_prefetch: tuple[int, ...] = ()
    emu_prefetch: tuple[int, ...] = ()
    #: how the timed figures were compared (best, median, paired)
    statistic: str = "best"
    #: paired: each round's error per timed metric ((metric, (round 0, round 1, ...)), ...): a spread over
    #: the rounds is the host's noise, an offset shared by every round is the model's
    round_errors: tuple[tuple[str, tuple[float, ...]], ...] = ()

    def metric(self, name: str) -> Metric:
        return next(m for m in self.metrics if m.name == name)

    @property
    def counts_equal(self) -> bool:
        """Hits, accesses, copies and the prefetch decisions (issued, useful, dropped) agree."""
        return self.live_counts == self.emu_counts and self.live_prefetch[:3] == self.emu_prefetch[:3]


STATISTICS = ("best", "median", "paired")


def measured(record: dict[str, Any], key: str, statistic: str = "best") -> float:
    """A timed figure of a record: as recorded (the matrix records the best of its rounds), or the median
    of its rounds where the record has one (`ttft_median_s`, `decode_tok_s_median`)."""
    if statistic == "median":
        alt = {"ttft_s": "ttft_median_s", "decode_tok_s": "decode_tok_s_median"}[key]
        if alt in record:
            return float(record[alt])
    return float(record[key])


def validate_run(run: LiveRun, profile: HardwareProfile, engine: str = "fast",
                 statistic: str = "best", runtime: RuntimeProfile = NO_RUNTIME) -> Validation:
    result = emulate_live(run, profile, engine, runtime)
    rec, st, c = run.record, run.record["stats"], result.counters
    gate_hits = int(c["hits"]) + int(c["late_prefetch_hits"])  # the runtime's hits: at the gate, late ones too
    metrics = (
        Metric("ttft_s", measured(rec, "ttft_s", statistic), result.ttft_s),
        Metric("decode_tok_s", measured(rec, "decode_tok_s", statistic), result.decode_tok_per_s),
        Metric("hit_rate", float(st["hit_rate"]), gate_hits / max(int(c["accesses"]), 1)),
        Metric("bytes_h2d", float(st["bytes_h2d"]), float(c["bytes_h2d"])),
    )
    prefetch = str(rec.get("prefetch") or "none")
    live_pf: tuple[int, ...] = ()
    emu_pf: tuple[int, ...] = ()
    if prefetch != "none":
        live_pf = tuple(int(st.get(a, 0)) for a, _ in PREFETCH_COUNTS)
        emu_pf = tuple(int(c[b]) for _, b in PREFETCH_COUNTS)
    return Validation(run.tag, metrics, (int(st["hits"]), int(st["accesses"]), int(st["copies"])),
                      (gate_hits, int(c["accesses"]), int(c["copies"])), prefetch, live_pf, emu_pf, statistic)


def validate_paired(run: LiveRun, profile: HardwareProfile, engine: str = "fast") -> Validation:
    """Each round emulated with the runtime calibration paired with it, taken right before it or interleaved
    with it (`live.matrix` records `runtime_cal_rounds`), against that round's own TTFT and decode rate; per
    timed metric the round whose error is the median of the rounds' is reported (the other metrics and
    counts: round 0, whose trace it is)."""
    from .runtime_cal import apply_runtime_overheads

    rec = run.record
    cals, ttfts, rates = rec.get("runtime_cal_rounds"), rec.get("ttft_rounds_s"), rec.get("decode_tok_s_rounds")
    if not isinstance(cals, list) or not cals or not isinstance(ttfts, list) or not isinstance(rates, list) \
            or not len(cals) == len(ttfts) == len(rates):
        raise EmuError("a paired validation needs one runtime calibration, TTFT and decode rate per round "
                       "(records of `python -m live.matrix` since the calibration before every run)",
                       file=run.path, key="runtime_cal_rounds")
    spec = live_model(run, profile)
    rounds = []
    for cal, ttft, rate in zip(cals, ttfts, rates):
        if not isinstance(cal, dict):
            raise EmuError("expected a calibration object per round", file=run.path, key="runtime_cal_rounds")
        prof, runtime = apply_runtime_overheads(profile, spec, cal, file=run.path)
        rounds.append(validate_run(attrs.evolve(run, record=dict(rec, ttft_s=ttft, decode_tok_s=rate)), prof, engine,
                                   runtime=runtime))
    metrics = []
    for i, name in enumerate(METRICS):
        if name in TIMED:
            by_error = sorted(rounds, key=lambda v: v.metric(name).error)
            metrics.append(by_error[len(by_error) // 2].metric(name))
        else:
            metrics.append(rounds[0].metrics[i])
    errors = tuple((name, tuple(v.metric(name).error for v in rounds)) for name in TIMED)
    return attrs.evolve(rounds[0], metrics=tuple(metrics), statistic="paired", round_errors=errors)


def error_summary(validations: list[Validation]) -> dict[str, tuple[float, float]]:
    """Per metric: (median |error|, max |error|) over the runs."""
    out = {}
    for name in METRICS:
        errs = [abs(v.metric(name).error) for v in validations]
        out[name] = (statistics.median(errs), max(errs)) if errs else (0.0, 0.0)
    return out


def format_table(validations: list[Validation], rounds: bool = False, fmt: str = "plain") -> str:
    """The comparison, one run per row, in `fmt` (`emu.tables`: "plain", or "rich" for a terminal); `rounds`:
    each round's TTFT and decode error per run under the table (paired); then the errors' medians and maxima."""
    from emu.tables import Column, table_text

    columns = [Column("run", "left"), *(Column(h) for h in ("TTFT ms live", "emu", "err", "tok/s live", "emu", "err",
                                                            "hit live", "emu", "GB live", "emu", "err")),
               Column("counts", "left")]
    rows, round_lines = [], []
    for v in validations:
        t, d, h, b = (v.metric(n) for n in METRICS)
        rows.append([v.tag, f"{t.measured * 1e3:.1f}", f"{t.emulated * 1e3:.1f}", f"{100 * t.error:+.1f}%",
                     f"{d.measured:.2f}", f"{d.emulated:.2f}", f"{100 * d.error:+.1f}%", f"{h.measured:.3f}",
                     f"{h.emulated:.3f}", f"{b.measured / 1e9:.2f}", f"{b.emulated / 1e9:.2f}",
                     f"{100 * b.error:+.1f}%",
                     ("equal" if v.counts_equal else f"live {v.live_counts} emu {v.emu_counts}")
                     + (f"  prefetch {v.prefetch} issued/useful/dropped/late live {v.live_prefetch} "
                        f"emu {v.emu_prefetch}" if v.prefetch != "none" else "")])
        if rounds and v.round_errors:
            round_lines.append(f"{v.tag} rounds: " + "  ".join(
                f"{name} " + "/".join(f"{100 * e:+.1f}%" for e in errs) for name, errs in v.round_errors))
    summary = error_summary(validations)
    lines = [table_text(columns, rows, fmt), *round_lines]
    lines.append("  ".join(f"{name}: median |err| {100 * med:.1f}%, max {100 * mx:.1f}%"
                           for name, (med, mx) in summary.items() if name in TIMED))
    return "\n".join(lines)
