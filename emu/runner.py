"""Run a scenario end to end: load its trace and profile, pick an engine, return a result record."""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import numpy as np

from . import __version__, git_revision
from .engines.setup import make_inputs
from .errors import EmuError, EmuWarning
from .metrics import RunResult, build_result
from .profile import check_item_times, has_measured_tables, profile_record
from .runtime_profile import NO_RUNTIME, load_runtime_profile
from .scenario import Scenario
from .trace import RoutingTrace

if TYPE_CHECKING:
    from .engines.des.timeline import TimelineRecorder

#: traces longer than this run on the fast engine when `engine.kind = "auto"`
AUTO_FAST_TOKENS = 1_000


def load_workload(scenario: Scenario, progress: bool = False) -> RoutingTrace:
    """The scenario's trace: read from its file or generated, or the same trace again from this process's cache
    (emu.trace.cache) when an earlier scenario asked for it. `progress`: show the progress display while a large
    synthetic trace is generated."""
    from .trace.cache import CACHE

    wl = scenario.workload
    model = scenario.model
    if wl.trace is not None:
        path = wl.trace
        jsonl = path.endswith(".jsonl")
        try:
            from .trace.cache import file_digest

            source: tuple[Any, ...] = ("file", file_digest(path), model if jsonl else None)
        except OSError:  # a missing or unreadable file: the loader says which, in its own words
            source = ("unread", path)
        trace = CACHE.get(source)
        if trace is None:
            if jsonl:
                from .trace.jsonl import import_jsonl

                trace = import_jsonl(path, model)
            else:
                trace = RoutingTrace.load(path)
            if source[0] == "file":
                CACHE.put(source, trace)
        # the trace may be another scenario's: check it against this one's model, naming this scenario
        trace.check_fits(model.n_moe_layers, model.n_experts, model.top_k, file=scenario.path)
        _check_scores(trace, path, scenario.path)
        return _cut(trace, wl.max_tokens)
    from .trace.synthetic import SyntheticParams, generate

    params = dict(wl.synthetic or {})
    tokens = params.pop("tokens", None)
    params.setdefault("seed", scenario.seed)
    fields = {f.name for f in attrs.fields(SyntheticParams)}
    for key_name in params:
        if key_name not in fields:
            raise EmuError(f"unknown generator parameter; expected one of {sorted(fields | {'tokens'})}",
                           file=scenario.path, key=f"workload.synthetic.{key_name}")
    try:
        spec = SyntheticParams(**params)
        # what generate() reads of the model: its name (the trace's `model`) and shape
        key = ("synthetic", model.name, model.n_moe_layers, model.n_experts, model.top_k, spec, tokens)
        trace = CACHE.get(key)
        if trace is None:
            trace = generate(model, spec, tokens, progress=progress)
            CACHE.put(key, trace)
    except EmuError as err:
        raise EmuError(err.detail, file=scenario.path, key=f"workload.synthetic.{err.key}") from None
    if spec.output_len > 0 and not trace.pass_phase.any():
        # the metrics of a run without a decode step would read as a TPOT of 0: say why there is none
        raise EmuError(f"{trace.n_tokens} tokens end before the first decode step (the first prefills of a batch "
                       f"of {spec.batch_size} take them all); expected more tokens, or output_len = 0 for a "
                       "prefill-only run", file=scenario.path, key="workload.synthetic.tokens")
    return _cut(trace, wl.max_tokens)


def _cut(trace: RoutingTrace, max_tokens: int | None) -> RoutingTrace:
    if max_tokens is not None and trace.n_tokens > max_tokens:
        return trace.slice_tokens(max_tokens)
    return trace


def with_trace_sizes(scenario: Scenario, trace: RoutingTrace) -> Scenario:
    """A trace that states its experts' bytes per MoE layer (`meta.expert_bytes`, e.g. a route_trace header)
    sizes the model's experts, unless the scenario's model states its own (`model.layer_expert_bytes`); the
    capacity is then resolved again against those sizes (a percentage is of the real total)."""
    sizes = trace.meta.get("expert_bytes")
    if sizes is None or scenario.model.layer_expert_bytes is not None:
        return scenario
    file = scenario.workload.trace or scenario.path
    try:
        model = attrs.evolve(scenario.model, layer_expert_bytes=sizes)
    except EmuError as err:
        raise EmuError(err.detail, file=file, key="header.meta.expert_bytes") from None
    from .scenario import CacheConfig

    capacity = scenario.raw.get("cache", {}).get("capacity", scenario.cache.spec)
    return attrs.evolve(scenario, model=model, cache=CacheConfig.parse(capacity, model, scenario.path))


def _check_scores(trace: RoutingTrace, trace_path: str, file: str) -> None:
    """Gate scores are the routed mass the quality accounting sums: a negative one (a router's logit, or a damaged
    file) would make masses negative and the lost-mass share meaningless."""
    if trace.scores is None or not trace.n_tokens:
        return
    bad = np.argwhere(trace.scores < 0)
    if bad.size:
        t, layer, k = (int(v) for v in bad[0])
        raise EmuError(f"{trace_path}: gate score {float(trace.scores[t, layer, k]):g} at token {t}, layer {layer}, "
                       f"slot {k} ({bad.shape[0]:,} negative in all); expected scores >= 0 (gate weights, whose sum "
                       "is the routed mass)", file=file, key="workload.trace")


def choose_engine(kind: str, trace: RoutingTrace) -> str:
    if kind == "auto":
        return "fast" if trace.n_tokens > AUTO_FAST_TOKENS else "des"
    return kind


def run_record(scenario: Scenario, engine: str | None = None) -> tuple[dict[str, Any], list[str]]:
    """`run_scenario`'s JSON record and the EmuWarnings the run gave (what a worker process sends back to `emu run
    --jobs`: the parent says them once, in its own one-line form, instead of each worker printing its own)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", EmuWarning)
        record = run_scenario(scenario, engine=engine)[1]
    return record, [str(w.message) for w in caught if issubclass(w.category, EmuWarning)]


def run_scenario(scenario: Scenario, engine: str | None = None, timeline: TimelineRecorder | None = None,
                 progress: bool = False) -> tuple[RunResult, dict[str, Any]]:
    """Returns the result and the JSON record `emu run` writes. With a `timeline` recorder the whole trace
    runs on the SimPy engine, so the recorded events are the run's own. `progress`: show the progress display
    while a large synthetic trace is generated and while a long run runs (the fast engine)."""
    profile = scenario.profile()
    check_item_times(profile, scenario.model)
    if not has_measured_tables(profile, scenario.model):
        where = scenario.profile_path + (" with the scenario's hardware keys" if profile.dropped else "")
        warnings.warn(f"{where}: no measured compute tables for {scenario.model.name}; using the profile's roofline "
                      "estimate", EmuWarning, stacklevel=2)
    t0 = time.perf_counter()
    trace = load_workload(scenario, progress)
    scenario = with_trace_sizes(scenario, trace)
    t_trace = time.perf_counter() - t0
    kind = "des" if timeline is not None else choose_engine(engine or scenario.engine, trace)
    runtime = NO_RUNTIME if scenario.runtime_path is None else load_runtime_profile(scenario.runtime_path)
    inputs = make_inputs(scenario.model, profile, trace, scenario.cache.capacity_bytes, scenario.stack,
                         scenario.seed, runtime)
    if kind == "fast":
        from .engines.fast.engine import run_fast as run
    elif kind == "reference":
        from .engines.reference.engine import run_reference as run
    else:
        from .engines.des.engine import run_des as run
    try:
        if timeline is not None:
            cs, end, timings = run(inputs, timeline)
        elif kind == "fast":
            cs, end, timings = run(inputs, progress=progress)  # a long run shows its progress when asked
        else:
            cs, end, timings = run(inputs)
    except EmuError as err:  # a policy's init found the scenario unusable: name the scenario file
        if err.file is not None:
            raise
        raise EmuError(err.detail, file=scenario.path, key=err.key) from None
    timings["trace_s"] = t_trace
    result = build_result(cs, end, trace, kind, timings)
    record = result.to_dict()
    record["scenario"] = scenario.resolved()
    from .policies.registry import offline_policies

    # a stack that reads the future is an offline bound: every table marks it so
    record["bound"] = list(offline_policies(scenario.stack))
    from .trace.cache import CACHE

    record["trace"] = CACHE.facts(trace)
    record["profile"] = profile_record(profile)
    if scenario.runtime_path is not None:
        record["runtime"] = {"name": runtime.name, "provisional": runtime.provisional, "file": runtime.source}
    record["version"] = __version__
    record["git_revision"] = git_revision()
    return result, record


def write_record(record: dict[str, Any], out_dir: str | Path, stem: str) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{stem}.json"
    path.write_text(json.dumps(record, indent=2, sort_keys=False) + "\n")
    return path
