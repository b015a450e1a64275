"""The out-of-sample validation protocol: live runs that no calibration saw, compared with the emulator.

Two steps, so the GPU lease is spent on measurements only:

    python -m live.protocol run MATRIX.toml --out DIR [--calibrate-runtime NAME]      (on the GPU)
    python -m live.protocol compare DIR --profile P.toml --runtime R.toml [--gpu-kind K] (anywhere, no torch)
    python -m live.protocol merge PART PART... --out DIR                              (a run in parts)
    python -m live.protocol store DIR --traces STORE                                 (traces shared by datasets)

`run` builds each model of the matrix once (random weights), optionally calibrates the runtime first on
calibration requests of its own (`host_calibration`: other prompts and seeds, another cache, thrown away),
then runs every configuration (warm-up, an untimed rehearsal, the measured request) and writes the live
record to DIR/runs/<config>.json and its trace once, by fingerprint, to DIR/traces/<fingerprint>.npz.
`merge` joins the folders of one lease's matrix run in parts (`--only`: one command has a time limit) into one
dataset: the runs, the traces (by fingerprint) and each runtime profile (its models from the parts, `[host]`
their median again). `store` moves a dataset's traces into a store shared by every dataset (the committed
`validation/traces/`: one file per fingerprint however many leases replayed it) and points its records there.
`compare` replays every record through the emulator with the hardware profile (device
and links) and the runtime profile (host) it is given, and writes DIR/comparisons.json (schema of `validation_set`): per
configuration the measured and emulated TTFT, decode rate, per-step latencies and counts, and which
calibration predicted it. The hardware and runtime profiles must come from runs other than DIR/runs.

The matrix file:

    prompt_len = 128          # optional (128), the prompt of every configuration
    decode_tokens = 64        # optional (64)
    ttft_repeats = 3          # optional (3): more cold prefills per configuration; its TTFT is their median
    [[config]]
    name = "olmoe-25-lru"     # unique; the record's file name
    model = "olmoe-1b-7b"     # a preset; `layers = 8` cuts it to its first MoE layers
    capacity = "25%"          # a share of the experts, or a slot count
    eviction = "lru"          # a live eviction policy; prefetch = "next-layer" etc. likewise
    seed = 1                  # the request's prompt (and seeded policies)
    trace = "t.npz"           # optional: forced routing (its first request), relative to the matrix file
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import statistics
import sys
from pathlib import Path
from typing import Any

import attrs

from emu.errors import EmuError
from emu.runtime_profile import (
    NO_RUNTIME,
    HostCosts,
    RuntimeProfile,
    drift_fraction,
    host_drift,
    host_drift_warning,
    load_runtime_profile,
    median_step_s,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

_CONFIG_KEYS = {"name", "model", "layers", "capacity", "eviction", "prefetch", "seed", "trace", "batch"}


@attrs.frozen
class Config:
    name: str
    model: str
    capacity: str | int
    eviction: str = "lru"
    prefetch: str = "none"
    seed: int = 1
    layers: int | None = None
    trace: str | None = None
    batch: int = 1  # requests decoded in lockstep


@attrs.frozen
class Matrix:
    path: str
    configs: tuple[Config, ...]
    prompt_len: int = 128
    decode_tokens: int = 64
    ttft_repeats: int = 3


def load_matrix(path: str | Path) -> Matrix:
    path = Path(path)
    file = str(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise EmuError("matrix file not found", file=file) from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise EmuError(f"not valid TOML ({err})", file=file) from None
    extra = set(data) - {"prompt_len", "decode_tokens", "ttft_repeats", "config"}
    if extra:
        raise EmuError("unknown key; expected prompt_len, decode_tokens, ttft_repeats, config", file=file,
                       key=sorted(extra)[0])
    sizes = {}
    for key, default, least in (("prompt_len", 128, 1), ("decode_tokens", 64, 1), ("ttft_repeats", 3, 0)):
        v = data.get(key, default)
        if isinstance(v, bool) or not isinstance(v, int) or v < least:
            raise EmuError(f"expected {'a positive' if least else 'a non-negative'} integer, got {v!r}", file=file,
                           key=key)
        sizes[key] = v
    raw = data.get("config")
    if not isinstance(raw, list) or not raw:
        raise EmuError("expected one or more [[config]] tables", file=file, key="config")
    configs, names = [], set()
    for i, c in enumerate(raw):
        where = f"config[{i}]"
        if not isinstance(c, dict):
            raise EmuError("expected a table", file=file, key=where)
        bad = set(c) - _CONFIG_KEYS
        if bad:
            raise EmuError(f"unknown key; expected one of {sorted(_CONFIG_KEYS)}", file=file,
                           key=f"{where}.{sorted(bad)[0]}")
        for key in ("name", "model", "capacity"):
            if key not in c:
                raise EmuError("missing", file=file, key=f"{where}.{key}")
        name = c["name"]
        if not isinstance(name, str) or not name or not all(ch.isalnum() or ch in "-_." for ch in name):
            raise EmuError(f"expected a name of letters, digits, '-', '_', '.', got {name!r}", file=file,
                           key=f"{where}.name")
        if name in names:
            raise EmuError(f"repeated configuration name {name!r}", file=file, key=f"{where}.name")
        names.add(name)
        for key in ("model", "eviction", "prefetch", "trace"):
            if key in c and (not isinstance(c[key], str) or not c[key]):
                raise EmuError(f"expected a string, got {c[key]!r}", file=file, key=f"{where}.{key}")
        for key in ("layers", "seed", "batch"):
            v = c.get(key)
            positive = key != "seed"
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < (1 if positive else 0)):
                raise EmuError(f"expected a {'positive' if positive else 'non-negative'} integer, got {v!r}",
                               file=file, key=f"{where}.{key}")
        trace = c.get("trace")
        if trace is not None:
            tp = Path(trace) if Path(trace).is_absolute() else path.parent / trace
            if not tp.is_file():
                raise EmuError(f"trace not found: {tp}", file=file, key=f"{where}.trace")
            trace = str(tp)
        configs.append(Config(name=name, model=c["model"], capacity=c["capacity"], eviction=c.get("eviction", "lru"),
                              prefetch=c.get("prefetch", "none"), seed=c.get("seed", 1), layers=c.get("layers"),
                              trace=trace, batch=c.get("batch", 1)))
    return Matrix(path=file, configs=tuple(configs), **sizes)


def _slots(capacity: str | int, spec: Any, n_keys: int, file: str, key: str) -> int:
    from emu.scenario import CacheConfig

    cache = CacheConfig.parse(capacity, spec, file)
    if cache.capacity_bytes < spec.expert_bytes():
        raise EmuError("the cache must hold one expert", file=file, key=key)
    return max(1, min(n_keys, math.floor(cache.capacity_bytes / spec.expert_bytes() + 1e-9)))


def run_matrix(matrix: Matrix, out: Path, *, device: str = "cuda", calibrate_runtime: str | None = None,
               only: set[str] | None = None, scale: str = "full", decode: str = "eager",
               kernel: str = "eager") -> list[Path]:
    """Every configuration live (grouped by model, each model built once); returns the records written.
    `decode`: the runner's decode mode (`runner.DECODE_MODES`) of the runs and the runtime's calibration;
    `kernel`: the runtime's experts kernel ("eager" expert by expert, "fused" the model's own grouped GEMM)."""
    import torch

    from emu.progress import Progress
    from emu.trace import RoutingTrace

    from .cli import _versions, first_layers
    from .host_calibration import merge
    from .models import build_model, live_spec, shape_of
    from .offload import ExpertOffload
    from .runner import PassPlan, batched_trace, plans_from_trace, run_live

    if out.exists() and any(out.iterdir()):  # a lease's records must not mix with an earlier one's
        raise EmuError("expected an empty or new output folder", file=str(out), key="--out")
    (out / "runs").mkdir(parents=True, exist_ok=True)
    (out / "traces").mkdir(exist_ok=True)
    groups: dict[tuple[str, int | None], list[Config]] = {}
    for c in matrix.configs:
        if only is None or c.name in only:
            groups.setdefault((c.model, c.layers), []).append(c)
    dev = torch.device(device)
    written, cals = [], []
    n_cal = 3 * len(groups) if calibrate_runtime is not None else 0  # three calibration requests per model
    tick = Progress(sum(map(len, groups.values())) + n_cal, label="matrix", unit="runs")
    try:
        for (preset, layers), configs in groups.items():
            model = build_model(preset, scale, n_layers=layers, dtype="bf16", seed=0)
            shape = shape_of(model, preset, scale)
            spec = live_spec(shape, "bf16")
            n_keys = shape.n_layers * shape.n_experts
            runtime = ExpertOffload(model, shape.top_k, eviction="lru", device=device, kernel=kernel)
            try:
                # the runtime's calibration: requests of its own before the model's first configuration, after its
                # middle one and after its last (the host's pace drifts for minutes: their median is the profile's)
                requests: list[Any] = []
                at = [0, len(configs) // 2, len(configs)] if calibrate_runtime is not None else []
                for i, c in enumerate(configs):
                    for _ in range(at.count(i)):
                        calibrated = _calibrate(model, runtime, shape, preset, requests, out, calibrate_runtime,
                                                cals, dev, decode)
                        tick.step(f"calibration {preset}")
                    slots = _slots(c.capacity, spec, n_keys, matrix.path, f"{c.name}.capacity")
                    runtime.close()  # the last configuration's prefetch watchdog may still submit to the old pool
                    runtime.resize(slots)
                    runtime.eviction, runtime.eviction_params, runtime.seed = c.eviction, {}, c.seed
                    runtime.prefetch, runtime.prefetch_params = c.prefetch, {}
                    runtime.reset()
                    runtime.attach()
                    force = None
                    plans = [PassPlan(matrix.prompt_len, matrix.decode_tokens, batch=c.batch)]
                    if c.trace is not None:
                        force = RoutingTrace.load(c.trace)
                        if force.n_layers > shape.n_layers:
                            force = first_layers(force, shape.n_layers)
                        force.check_fits(shape.n_layers, shape.n_experts, shape.top_k, file=c.trace)
                        force = batched_trace(force, c.batch)  # the trace's first requests, c.batch at a time
                        plans = plans_from_trace(force, matrix.prompt_len, matrix.decode_tokens)[:1]
                    result = run_live(model, plans, vocab=shape.vocab, device=dev, seed=c.seed, runtime=runtime,
                                      force=force, warmup_passes=3, rehearse=True, model_name=spec.name,
                                      meta={"config": c.name, "slots": slots}, decode=decode,
                                      ttft_repeats=matrix.ttft_repeats)
                    written.append(_write_record(out, c, spec, shape, slots, runtime, result, plans, dev, _versions(),
                                                 decode))
                    share = "" if result.decode_host_share is None else f", host share {result.decode_host_share:.2f}"
                    print(f"{c.name}: TTFT {result.ttft_s * 1e3:.2f} ms, decode {result.decode_tok_s:.2f} tok/s{share}",
                          file=sys.stderr, flush=True)
                    tick.step(c.name)
                for _ in range(at.count(len(configs))):
                    calibrated = _calibrate(model, runtime, shape, preset, requests, out, calibrate_runtime,
                                            cals, dev, decode)
                    tick.step(f"calibration {preset}")
                if requests:
                    cals.append(merge(requests))
                    # say at once when the model's requests disagree: the host's pace changed during its runs
                    unsteady = host_drift_warning(calibrated, models={preset})
                    if unsteady is not None:
                        print(f"warning: {unsteady}", file=sys.stderr, flush=True)
            finally:
                runtime.close()
                del runtime, model
                gc.collect()
                if device == "cuda":
                    torch.cuda.empty_cache()
    finally:
        tick.close()
    return written


def _calibrate(model: Any, runtime: Any, shape: Any, preset: str, requests: list[Any], out: Path, name: Any,
               cals: list[Any], dev: Any, decode: str) -> RuntimeProfile:
    """One more calibration request of the model's runtime (appended to `requests`); the runtime profile so far
    written at once, so that it is kept whatever happens to the runs after it."""
    from .host_calibration import SEED, calibrate_built, merge

    requests.append(calibrate_built(model, runtime, shape, preset, again=bool(requests), seed=SEED + len(requests),
                                    decode=decode))
    print(f"calibrated the runtime on {preset} ({len(requests)}): {requests[-1].costs}", file=sys.stderr, flush=True)
    return _write_runtime(out, name, [*cals, merge(requests)], dev)


def _write_runtime(out: Path, name: str, cals: list[Any], dev: Any) -> RuntimeProfile:
    """The runtime profile of the calibrations so far, written to out/calibration/<name>.toml."""
    from .host_calibration import device_name, runtime_profile, write_runtime_profile

    profile = runtime_profile(name, cals, device_name(dev))
    write_runtime_profile(profile, out / "calibration" / f"{name}.toml")
    return profile


def _write_record(out: Path, c: Config, spec: Any, shape: Any, slots: int, runtime: Any, result: Any,
                  plans: list[Any], dev: Any, versions: dict[str, str], decode: str = "eager") -> Path:
    from .host_calibration import device_name

    fp = result.trace.fingerprint()
    trace_path = out / "traces" / f"{fp}.npz"
    if not trace_path.exists():
        result.trace.save(trace_path)
    stats = result.stats
    record = {
        "config": c.name, "model": spec.to_dict(), "profile_model": shape.preset, "scale": shape.scale,
        "device": dev.type, "device_name": device_name(dev),
        "dtype": "bf16", "offload": True, "slots": slots, "experts_kernel": runtime.kernel,
        "expert_bytes": runtime.expert_bytes, "eviction": c.eviction, "eviction_params": {},
        "prefetch": c.prefetch, "prefetch_params": {}, "partition": "global", "partition_params": {},
        "miss": "fetch", "miss_params": {}, "seed": c.seed, "capacity": str(c.capacity),
        "forced_trace": c.trace, "rehearsed": True, "warmup_passes": 3, "decode": decode, "batch": c.batch,
        "decode_host_share": result.decode_host_share, "experts_captured": result.experts_captured,
        "handover": runtime.resolved_handover() if c.prefetch != "none" else None,
        "requests": [{"prompt_len": p.prompt_len, "batch": p.batch, "ttft_s": r.ttft_s, "decode_s": list(r.decode_s)}
                     for p, r in zip(plans, result.requests)],
        "ttft_s": result.ttft_s, "decode_tok_s": result.decode_tok_s,
        # the run's prefill and its cold repeats: the measured TTFT is their median
        "ttft_samples_s": list(result.ttft_samples_s), "ttft_median_s": statistics.median(result.ttft_samples_s),
        "stats": attrs.asdict(stats) | {"hit_rate": stats.hit_rate},
        "trace": f"../traces/{fp}.npz", "trace_fingerprint": fp, "versions": versions,
    }
    path = out / "runs" / f"{c.name}.json"
    path.write_text(json.dumps(record, indent=1, default=list) + "\n")
    return path


def compare(folder: Path, profile_path: Path, runtime_path: Path | None, gpu_kind: str,
            runtime_name: str | None = None, engine: str = "fast") -> dict[str, Any]:
    """Every run record in folder/runs emulated with the given calibration; writes folder/comparisons.json. The
    rows' runtime mode is `runtime_name`, else the runtime profile's name, else "device-only"."""
    from emu.profile import load_profile, profile_copy_warning

    from .validate import emulate_live, kernel_priced, live_model, load_live_run
    from .validate_cli import roofline_warning
    from .validation_set import (
        DRIFT_WARNING,
        SELF_CHECK_TOLERANCE,
        format_self_check,
        self_check_passes,
        steps_drift,
    )

    profile = load_profile(profile_path)
    untrusted = profile_copy_warning(profile)
    if untrusted is not None:  # the rows are compared all the same: the warning says what priced them
        print(f"warning: {untrusted}", file=sys.stderr)
    runtime = NO_RUNTIME if runtime_path is None else load_runtime_profile(runtime_path)
    runtime_name = runtime_name or (runtime.name if runtime_path is not None else "device-only")
    unsteady = host_drift_warning(runtime)
    if unsteady is not None:  # compared all the same: each row carries its model's drift (`host_drift`)
        print(f"warning: {unsteady}", file=sys.stderr)
    drift = {m: drift_fraction(span) for m, span in host_drift(runtime).items()}
    records = sorted((folder / "runs").glob("*.json"))
    if not records:
        raise EmuError("no run record (runs/*.json)", file=str(folder))
    rows, gpu = [], None
    warned: set[str] = set()
    row_of: dict[Any, Any] = {}  # per preset, one of its rows: the self-check's link to the summary's model tables
    other_kernel: list[str] = []  # the runs whose experts kernel the runtime profile does not price
    for path in records:
        run = load_live_run(path)
        rec = run.record
        row_of.setdefault(rec.get("profile_model"), rec.get("config"))
        gpu = gpu or rec.get("device_name")
        spec = live_model(run, profile)
        roofline = roofline_warning(profile, spec, profile_path)
        if roofline is not None and spec.name not in warned:  # such a row's error is not the calibration's
            warned.add(spec.name)
            print(roofline, file=sys.stderr)
        priced = kernel_priced(run, runtime)
        if not priced:
            other_kernel.append(str(rec.get("config", path.stem)))
        result = emulate_live(run, profile, engine, runtime)
        st, c = rec["stats"], result.counters
        measured_steps = [float(s) for r in rec["requests"] for s in r["decode_s"]]
        cal_runs = runtime.provenance.get("models", {}) if runtime_path is not None else {}
        rows.append({
            "config": rec.get("config", path.stem), "runtime": runtime_name,
            "out_of_sample": True,
            "calibration": {"profile": _rel(profile_path, folder), "profile_name": profile.name,
                            "runtime_profile": None if runtime_path is None else _rel(runtime_path, folder),
                            "runtime_name": runtime.name,
                            "runs": sorted(f"calibration request of {m}" for m in cal_runs),
                            # slowest / fastest - 1 of the host's pace across the model's calibration requests
                            "host_drift": drift.get(spec.name, drift.get(str(rec.get("profile_model")))),
                            # the runtime profile prices the experts kernel the run used
                            "kernel_priced": priced},
            "model": rec["model"]["name"], "capacity": rec.get("capacity", str(rec["slots"])),
            "eviction": rec["eviction"], "prefetch": rec.get("prefetch") or "none", "batch": int(rec.get("batch", 1)),
            "ttft_s": {"measured": float(rec.get("ttft_median_s", rec["ttft_s"])), "emulated": float(result.ttft_s)},
            "decode_tok_s": {"measured": float(rec["decode_tok_s"]), "emulated": float(result.decode_tok_per_s)},
            "steps_s": {"measured": measured_steps, "emulated": result.decode_step_s.tolist()},
            # the runtime counts a hit at the gate, its copy landed or not: the emulator's on-time and late hits
            "counts": {"hits": [int(st["hits"]), int(c["hits"]) + int(c["late_prefetch_hits"])],
                       "accesses": [int(st["accesses"]), int(c["accesses"])],
                       "copies": [int(st["copies"]), int(c["copies"])],
                       "prefetch_issued": [int(st.get("prefetch_issued", 0)), int(c["prefetch_issued"])]},
            "prefetch_races": (rec.get("prefetch") or "none") != "none",
            "host_wait_s": float(c["host_wait_s"]),
            "roofline": roofline is not None,
        })
        share = rec.get("decode_host_share")
        if share is not None:  # the device-paced decode's: the host's busy seconds over the passes' device time
            rows[-1]["host_share"] = float(share)
    drifted = {r["config"]: d for r in rows
               if (d := steps_drift(r["steps_s"]["measured"], r["steps_s"]["emulated"])) is not None
               and d > DRIFT_WARNING}
    if drifted:  # no calibration predicts a host that changes its pace within a run: said per run
        print(f"warning: {folder}: the host's pace moved within {len(drifted)} runs (step drift, the measured over "
              f"the emulated median step across the run's quarters, beyond {DRIFT_WARNING:.0%}: " + ", ".join(
                  f"{c} {d:.0%}" for c, d in drifted.items()) + "): their errors include that movement",
              file=sys.stderr)
    if other_kernel:  # compared all the same: each row says so (`calibration.kernel_priced`)
        print(f"warning: {folder}: {len(other_kernel)} runs ({', '.join(other_kernel)}) used an experts kernel that "
              f"the runtime profile {runtime_name!r} does not price (its `experts` is {runtime.experts!r}): their "
              f"rows predict another runtime", file=sys.stderr)
    data = {"schema": "moe-emu/validation/1", "gpu": gpu or "unknown", "gpu_kind": gpu_kind, "rows": rows}
    for key, batch, which in SELF_CHECKS:
        checks = {m: {"config": row_of[m], "errors": errs}
                  for m, errs in self_check(profile, runtime, engine, batch=batch).items() if m in row_of}
        if not checks:
            continue
        data[key] = checks
        off = {m: c["errors"] for m, c in checks.items() if not self_check_passes(c["errors"])}
        if off:
            print(f"warning: {folder}: the emulator does not reproduce its calibration's own {which} requests "
                  f"within {SELF_CHECK_TOLERANCE:.0%} (" + "; ".join(
                      f"{m} {format_self_check(errs)}" for m, errs in off.items()) +
                  "): the device profile or the runtime profile misprices a part of the step", file=sys.stderr)
    (folder / "comparisons.json").write_text(json.dumps(data, indent=1) + "\n")
    return data


#: the self-checks of a runtime calibration: (comparisons.json key, `self_check`'s `batch`, the requests it checks)
SELF_CHECKS = (("self_check", False, "all-resident"), ("self_check_batch", True, "batch"))


def self_check(profile: Any, runtime: RuntimeProfile, engine: str = "fast",
               batch: bool = False) -> dict[str, list[float]]:
    """Per model of the runtime profile (a preset the emulator knows), the emulated all-resident decode step
    against each of its calibration requests' own all-resident request (the median step): that request's costs,
    the device profile, and a request of the calibration's prompt and steps routing every token of every layer to
    the same `top_k` experts over a slot for every expert (at batch 1 which experts a layer runs does not change
    its time). In sample by design, and from the calibration alone: it checks that the parts add up to the step
    they were measured from; an error here is a mispriced part (a device table at the host's pace, a host cost the
    device does not wait for). Models without a checkable request are left out.

    `batch`: the calibration's batch request instead (`host_calibration.BATCH` prompts decoded in lockstep, every
    expert resident, `batch_expert_s`): a batch whose every step and layer runs as many distinct experts as the
    request's did (`decode_step_distinct_experts`), its tokens spread over them as evenly as top-k allows (the
    request's own split is not recorded; an expert's time barely moves between one and four tokens)."""
    import numpy as np

    from emu.models import PRESETS

    from .validate import emulate_live

    out: dict[str, list[float]] = {}
    for model, prov in sorted(runtime.provenance.get("models", {}).items()):
        layers = prov.get("n_layers") if isinstance(prov, dict) else None
        if model not in PRESETS or not isinstance(layers, int) or isinstance(layers, bool) or layers < 1:
            continue
        spec = PRESETS[model]
        errors = []
        for q in prov.get("requests") or [prov]:
            if not _checkable(q):
                continue
            prompt_len = int(q.get("prompt_len") or 1)
            if batch:
                timed = q.get("resident_batch_request")
                if not _batch_of(timed, layers, spec.top_k, spec.n_experts):
                    continue
                run = _resident_run(model, layers, prompt_len, len(timed["decode_step_s"]), batch=timed["batch"],
                                    distinct=timed["decode_step_distinct_experts"])
            else:
                timed = q["resident_request"]
                run = _resident_run(model, layers, prompt_len, len(timed["decode_step_s"]))
            costs = HostCosts(**{k: v for k, v in q["costs"].items() if k in attrs.fields_dict(HostCosts)})
            own = attrs.evolve(runtime, models=dict(runtime.models) | {model: costs})
            emulated = float(np.median(emulate_live(run, profile, engine, own).decode_step_s))
            errors.append(emulated / median_step_s(timed) - 1)
        if errors:
            out[model] = errors
    return out


def _batch_of(request: Any, n_layers: int, top_k: int, n_experts: int) -> bool:
    """Whether a batch request's provenance holds what `self_check(batch=True)` reads: a batch above one, its decode
    steps (positive seconds) and per step and layer a distinct-expert count from top-k to min(batch x top-k,
    the model's experts). A provenance is free-form: anything else is skipped."""
    if not isinstance(request, dict) or median_step_s(request) is None:
        return False
    batch, distinct = request.get("batch"), request.get("decode_step_distinct_experts")
    if not (isinstance(batch, int) and not isinstance(batch, bool) and batch > 1 and isinstance(distinct, list)):
        return False
    most = min(batch * top_k, n_experts)
    return len(distinct) == len(request["decode_step_s"]) and all(
        isinstance(step, list) and len(step) == n_layers
        and all(isinstance(n, int) and not isinstance(n, bool) and top_k <= n <= most for n in step)
        for step in distinct)


def _resident_run(preset: str, n_layers: int, prompt_len: int, steps: int, batch: int = 1,
                  distinct: list[list[int]] | None = None) -> Any:
    """A request of `preset` cut to `n_layers` MoE layers (or `batch` of them in lockstep): a prompt of
    `prompt_len` tokens each, in one prefill pass, then `steps` decode steps, a slot for every expert. Every token
    of every layer routes to experts 0 .. top_k - 1, or in decode step s at layer l to `distinct[s][l]` experts
    (token t to (t * top_k + j) mod that count, j < top_k: each expert gets as even a share as top-k allows)."""
    import numpy as np

    from emu.models import PRESETS
    from emu.trace import RoutingTrace

    from .validate import LiveRun

    spec = attrs.evolve(PRESETS[preset], n_moe_layers=n_layers)
    k = spec.top_k
    prefill = np.tile(np.arange(k, dtype=np.int16), (batch * prompt_len, n_layers, 1))
    decode = np.tile(np.arange(k, dtype=np.int16), (batch * steps, n_layers, 1))
    if distinct is not None:  # each count from top_k to min(batch * top_k, n_experts) (`_batch_of`)
        picks = np.arange(batch)[:, None] * k + np.arange(k)[None, :]  # [token, j]
        for step, counts in enumerate(distinct):
            for layer, count in enumerate(counts):
                decode[step * batch:(step + 1) * batch, layer] = picks % count
    experts = np.concatenate([prefill, decode])
    offsets = [0, batch * prompt_len, *(batch * (prompt_len + i) for i in range(1, steps + 1))]
    request = np.concatenate([np.repeat(np.arange(batch, dtype=np.int32), prompt_len),
                              np.tile(np.arange(batch, dtype=np.int32), steps)])
    position = np.concatenate([np.tile(np.arange(prompt_len, dtype=np.int32), batch),
                               np.repeat(np.arange(prompt_len, prompt_len + steps, dtype=np.int32), batch)])
    trace = RoutingTrace(experts=experts, pass_offsets=np.array(offsets, np.int64),
                         pass_phase=np.array([0] + [1] * steps, np.int8), token_request=request,
                         token_position=position, n_experts=spec.n_experts)
    record = {"model": attrs.asdict(spec), "profile_model": preset, "slots": n_layers * spec.n_experts,
              "eviction": "lru", "prefetch": "none", "seed": 0, "batch": batch, "config": "self-check"}
    return LiveRun("<self-check>", record, trace)


def _checkable(request: Any) -> bool:
    """Whether a calibration request's provenance holds what the self-check reads: its costs (finite, >= 0) and
    its resident request's decode steps (positive seconds). A provenance is free-form: anything else is skipped."""
    if not isinstance(request, dict) or not isinstance(request.get("costs"), dict):
        return False
    if median_step_s(request.get("resident_request")) is None:
        return False
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0
               for k, v in request["costs"].items() if k in attrs.fields_dict(HostCosts))


def merge_parts(parts: list[Path], out: Path) -> Path:
    """One dataset from the folders of one lease's matrix run in parts: runs (a configuration in two parts is
    refused), traces (one per fingerprint), each runtime profile's models from every part (a model calibrated
    in two parts is refused: it would have two calibrations) with `[host]` their median, and every other
    calibration file (a name in several parts gets the part's folder name before its suffix)."""
    import shutil

    from .host_calibration import _median_costs, median_gates, write_runtime_profile

    if len(parts) < 2:
        raise EmuError("expected two or more part folders", key="parts")
    if out.exists() and any(out.iterdir()):
        raise EmuError("expected an empty or new output folder", file=str(out), key="--out")
    for part in parts:
        if not (part / "runs").is_dir():
            raise EmuError("not a matrix run's folder (no runs/)", file=str(part))
    (out / "runs").mkdir(parents=True, exist_ok=True)
    (out / "traces").mkdir(exist_ok=True)
    (out / "calibration").mkdir(exist_ok=True)
    for part in parts:
        for run in sorted((part / "runs").glob("*.json")):
            if (out / "runs" / run.name).exists():
                raise EmuError(f"configuration {run.stem!r} is in more than one part", file=str(run))
            shutil.copy2(run, out / "runs" / run.name)
        for trace in sorted((part / "traces").glob("*")):
            if not (out / "traces" / trace.name).exists():  # named by fingerprint: the same name, the same trace
                shutil.copy2(trace, out / "traces" / trace.name)
    profiles: dict[str, list[Any]] = {}
    others: dict[str, list[Path]] = {}
    for part in parts:
        for f in sorted((part / "calibration").glob("*")):
            if not f.is_file():
                continue
            if f.suffix == ".toml" and "moe-emu/runtime/" in f.read_text(encoding="utf-8", errors="replace")[:200]:
                profiles.setdefault(f.name, []).append(load_runtime_profile(f))
            else:
                others.setdefault(f.name, []).append(f)
    for name, files in others.items():
        for f in files:
            target = name if len(files) == 1 else f"{f.stem}.{f.parent.parent.name}{f.suffix}"
            shutil.copy2(f, out / "calibration" / target)
    for name, rts in profiles.items():
        models: dict[str, Any] = {}
        gates: dict[str, dict[str, float]] = {}
        cal_models: dict[str, Any] = {}
        for rt in rts:
            for model, costs in rt.models.items():
                if model in models:
                    raise EmuError(f"runtime profile {name}: model {model!r} calibrated in more than one part",
                                   key="parts")
                models[model] = costs
            gates.update(rt.prefetch_gates)
            cal_models.update(rt.provenance.get("models", {}))
        devices = {rt.provenance.get("device") for rt in rts}
        if len(devices) > 1:
            raise EmuError(f"runtime profile {name}: calibrated on different devices {sorted(map(str, devices))}; "
                           "the parts are not one lease's", key="parts")
        host, _spread = _median_costs(list(models.values()))
        prov = dict(rts[0].provenance) | {"models": cal_models, "parts": [str(p) for p in parts]}
        write_runtime_profile(attrs.evolve(rts[0], host=host, models=models, provenance=prov, prefetch_gates=gates,
                                           host_prefetch_gates=median_gates(list(gates.values()))),
                              out / "calibration" / name)
    return out


def store_traces(folder: Path, store: Path) -> int:
    """Move `folder/traces/*.npz` into `store` (one file per fingerprint: a name already there must hold the
    same trace) and point each record of `folder/runs` at the stored file; returns how many files were new
    to the store. Records are rewritten only once every trace they name is in the store."""
    import os
    import shutil

    from emu.trace import RoutingTrace

    runs, own = folder / "runs", folder / "traces"
    if not runs.is_dir():
        raise EmuError("not a matrix run's folder (no runs/)", file=str(folder))
    store.mkdir(parents=True, exist_ok=True)
    added = 0
    for trace in sorted(own.glob("*.npz")) if own.is_dir() else []:
        fp = RoutingTrace.load(trace).fingerprint()
        if trace.stem != fp:
            raise EmuError(f"expected a file named by its fingerprint ({fp}.npz)", file=str(trace))
        kept = store / trace.name
        if kept.exists():
            if RoutingTrace.load(kept).fingerprint() != fp:
                raise EmuError(f"the store's {kept.name} holds another trace", file=str(kept))
        else:
            shutil.copy2(trace, kept)
            added += 1
    relative = Path(os.path.relpath(store.resolve(), runs.resolve()))
    records = []
    for path in sorted(runs.glob("*.json")):
        try:
            rec = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise EmuError(f"cannot read the run record: {err}", file=str(path)) from None
        if not isinstance(rec, dict):
            raise EmuError("expected a JSON object (a run record)", file=str(path))
        fp = rec.get("trace_fingerprint")
        if not isinstance(fp, str) or not (store / f"{fp}.npz").is_file():
            raise EmuError(f"the trace of this record ({fp}) is in neither the folder nor the store",
                           file=str(path), key="trace_fingerprint")
        records.append((path, rec | {"trace": str(relative / f"{fp}.npz")}))
    for path, rec in records:
        path.write_text(json.dumps(rec, indent=1) + "\n")
    if own.is_dir():
        shutil.rmtree(own)
    return added


def _rel(path: Path, folder: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(folder.resolve()))
    except ValueError:
        return str(path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m live.protocol", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run the matrix live (GPU)")
    r.add_argument("matrix", type=Path)
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    r.add_argument("--scale", choices=("full", "tiny"), default="full", help="tiny: small models (tests)")
    r.add_argument("--calibrate-runtime", metavar="NAME", default=None,
                   help="first calibrate the runtime on each model (its own requests) into OUT/calibration/NAME.toml")
    r.add_argument("--only", action="append", default=None, metavar="CONFIG", help="run only these configurations")
    r.add_argument("--decode", choices=("eager", "static", "graph"), default="eager")
    r.add_argument("--experts", choices=("eager", "fused"), default="eager")
    m = sub.add_parser("merge", help="join the folders of a matrix run in parts into one dataset")
    m.add_argument("parts", type=Path, nargs="+")
    m.add_argument("--out", type=Path, required=True)
    s = sub.add_parser("store", help="move a dataset's traces into a store shared by datasets")
    s.add_argument("folder", type=Path)
    s.add_argument("--traces", type=Path, required=True, metavar="STORE", help="the shared folder (validation/traces)")
    c = sub.add_parser("compare", help="emulate every run of a dataset folder with a calibration")
    c.add_argument("folder", type=Path)
    c.add_argument("--profile", type=Path, required=True)
    c.add_argument("--runtime", type=Path, default=None, help="runtime profile (none: the device alone)")
    c.add_argument("--runtime-name", default=None, help="the runtime mode's name in the rows (default: the profile's)")
    c.add_argument("--gpu-kind", required=True, help="h100 or h200: the group the rows belong to")
    args = p.parse_args(argv)
    try:
        if args.cmd == "run":
            run_matrix(load_matrix(args.matrix), args.out, device=args.device, scale=args.scale,
                       calibrate_runtime=args.calibrate_runtime, only=set(args.only) if args.only else None,
                       decode=args.decode, kernel=args.experts)
        elif args.cmd == "merge":
            merge_parts(args.parts, args.out)
        elif args.cmd == "store":
            print(f"{store_traces(args.folder, args.traces)} new trace(s) in {args.traces}")
        else:
            compare(args.folder, args.profile, args.runtime, args.gpu_kind, args.runtime_name)
    except EmuError as err:
        print(f"python -m live.protocol: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
