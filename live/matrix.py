"""The validation matrix on a GPU: each model built once, its offloaded runtime re-sized between runs.

Building full-size OLMoE with random weights takes ~15-20 s and moving it to pinned host memory a few
more, so every (cache, eviction) configuration of one model reuses the same build: the slot pool is
re-allocated, the policy state and counters are reset, and each run starts cold as `emu live` does.
Each configuration writes the recorded trace (`<tag>.npz`) and the same JSON record `emu live` writes
(`<tag>.json`), which `emu validate --from-live DIR` reads.

Prefetch: each (cache, eviction) below 100% runs once per prefetch policy of `--prefetch` (default none
and next-layer); a prefetching run's tag ends in `_<policy>` (none keeps the old tags).

Rounds: the host's pace drifts by 10-50% between identical runs on the H100 machines, so every
configuration runs `--rounds` times (default 3), interleaved (each round starts at another
configuration), and every run with its own runtime calibration (`runtime_cal_rounds`, `--calibration`): right
before it, or in lockstep with it (a step of each mode before each of its decode steps) on a sibling runtime
holding every expert (the host's pace switches within a run; `calibration_for` says which).
A record keeps round 0's trace and counts (the routing is forced, so every round replays the same);
per round its TTFT (`ttft_rounds_s`, fastest cold prefill of the round) and decode rate
(`decode_tok_s_rounds`); as `ttft_s` / `decode_tok_s` the best of its rounds and beside them the medians.
`emu validate --statistic paired` emulates each round with its own calibration;
`best` and `median` compare with the model-level calibrations (`<model>_runtime_cal*.json`: the fastest
and the median of all calibrations of a prefetch policy).

Usage (on the GPU): `python -m live.matrix OUTDIR [--only olmoe|mixtral] [--prefetch none --prefetch next-layer]`.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import math
import platform
import time
from pathlib import Path
from typing import Any

import attrs
import numpy as np

from emu.models import get_preset

from .cache_bridge import LIVE_PREFETCH
from .watchdog import HANDOVER_CHOICES

#: (cache fraction, eviction) of every offloaded configuration, per model
FRACTIONS = (0.05, 0.25, 1.0)
EVICTIONS = ("lru", "least-stale")
PREFETCHES = ("none", "next-layer")
OLMOE_PROMPT, MIXTRAL_PROMPT, DECODE = 256, 256, 64
MIXTRAL_LAYERS = 8
TTFT_REPEATS = 3  # extra cold prefills per run (a prefill is one sample; the round keeps the fastest)
ROUNDS = 3
CAL_STEPS = 16  # decode steps per runtime calibration mode and run, taken before it (interleaved: DECODE steps)
CALIBRATIONS = ("auto", "interleaved", "before")
MIXTRAL_TRACE = "scenarios/traces/mixtral8x7b_gsm8k.npz"


def slots_for(fraction: float, n_keys: int) -> int:
    """The same rounding `emu live` applies to a percentage capacity."""
    return max(1, min(n_keys, math.floor(fraction * n_keys + 1e-9)))


def calibration_for(copy_s: float, prefetch: str = "none") -> str:
    """"auto": interleaved (in lockstep with the run) but for a prefetching run with long copies. A host-paced
    decode's pace switches within a run, so the calibration must sample the run's own seconds; but a
    prefetching run with long copies (Mixtral, 6.4 ms) ends a step with prefetches in flight, which would
    land during the calibration's steps instead of during the run's (Mixtral 25% next-layer: 1588 copies
    against the emulator's 1557 interleaved, 1558 with the calibration before). Without prefetch every copy
    of a step is waited for within it."""
    from .offload import AUTO_BOUNDED_COPY_S

    return "before" if copy_s >= AUTO_BOUNDED_COPY_S and prefetch != "none" else "interleaved"


def _watchdog_cpu(runtime: Any) -> float:
    """CPU seconds of the runtime's watchdog thread so far (0.0 without one)."""
    return runtime.watchdog.cpu_seconds() if runtime.watchdog is not None else 0.0


def _host_counters(runtime: Any) -> tuple[float, int, float, int]:
    return runtime.launch_ahead_s, runtime.launch_ahead_n, runtime.readback_wait_s, runtime.readback_n


def _host_spans(before: tuple[float, int, float, int], after: tuple[float, int, float, int]) -> dict[str, float]:
    """The run's own host spans (warm-up and prefill included), to set beside its calibration's: the mean
    launch-ahead span and the mean wait in a routing readback."""
    ahead, n_ahead, wait, n_wait = (a - b for a, b in zip(after, before))
    return {"launch_ahead_s": ahead / max(n_ahead, 1), "readback_wait_s": wait / max(n_wait, 1),
            "readbacks": int(n_wait)}


def reconfigure(runtime: Any, n_slots: int, eviction: str, kernel: str, prefetch: str = "none") -> None:
    """Re-size the slot pool and switch eviction policy, prefetch policy and kernel; the cache starts empty."""
    runtime.resize(n_slots)
    runtime.eviction, runtime.eviction_params, runtime.kernel = eviction, {}, kernel
    runtime.prefetch, runtime.prefetch_params = prefetch, {}
    runtime.reset()


def olmoe_trace(tokens: int) -> Any:
    """A seeded synthetic OLMoE trace (the skew of scenarios/olmoe-1b-7b_h100_25pct.toml), forced on the
    random-weight model: its own routing is too narrow (~444 of 1024 keys in a 256-token prefill)."""
    from emu.trace.synthetic import SyntheticParams, generate

    params = SyntheticParams(zipf_s=0.6, reuse_prob=0.3, cross_layer_corr=0.3, prompt_len=OLMOE_PROMPT,
                             output_len=DECODE, n_requests=1, batch_size=1, seed=0, with_scores=True)
    return generate(get_preset("olmoe-1b-7b"), params, tokens)


def mixtral_trace(n_layers: int) -> Any:
    """Request 0's first DECODE steps of the real GSM8K decode routing, first `n_layers` layers."""
    from emu.trace import RoutingTrace

    from .cli import first_layers

    trace = RoutingTrace.load(MIXTRAL_TRACE).slice_tokens(DECODE)
    return first_layers(trace, n_layers)


@attrs.frozen(eq=False)
class ForcedWorkload:
    """A matrix model's shape, the routing forced on it, and one plan per request (shared with the live
    benchmarks, so they measure what the matrix runs)."""

    name: str
    preset: str
    n_layers: int | None  # layers built (None: all)
    shape: Any
    force: Any
    plans: list[Any]

    @property
    def n_keys(self) -> int:
        return self.shape.n_layers * self.shape.n_experts


def forced_workload(name: str, scale: str = "full", n_layers: int | None = None) -> ForcedWorkload:
    """OLMoE with its seeded synthetic trace, or Mixtral (first MIXTRAL_LAYERS layers by default) with the
    real GSM8K decode routing."""
    from .cli import first_layers
    from .models import live_shape
    from .runner import plans_from_trace

    if n_layers is None and name == "mixtral":
        n_layers = MIXTRAL_LAYERS
    preset = "mixtral-8x7b" if name == "mixtral" else "olmoe-1b-7b"
    shape = live_shape(preset, scale, n_layers)
    force = mixtral_trace(shape.n_layers) if name == "mixtral" else olmoe_trace(OLMOE_PROMPT + DECODE)
    if force.n_layers > shape.n_layers:
        force = first_layers(force, shape.n_layers)
    return ForcedWorkload(name, preset, n_layers, shape, force, plans_from_trace(force, MIXTRAL_PROMPT, DECODE))


def ttft_repeats(model: Any, runtime: Any, trace: Any, prompt_len: int, *, vocab: int, device: Any, n: int,
                 seed: int) -> list[float]:
    """`n` more cold prefills replaying the recorded prefill routing: one prefill is one sample, and the
    host's pace drifts by tens of percent between seconds on the H100 machines."""
    import torch

    from .hooks import RoutingHooks
    from .runner import PassPlan, attention_backends, cold_prefill

    gen = torch.Generator().manual_seed(seed)
    out = []
    with attention_backends(device):
        for _ in range(n):
            hooks = RoutingHooks(model, record=False, speculate=True, force=trace)
            prompt = torch.randint(0, vocab, (1, prompt_len), generator=gen).to(device)
            try:
                out.append(cold_prefill(model, prompt, PassPlan(prompt_len, 0, 0), hooks=hooks, runtime=runtime,
                                        device=device))
            finally:
                hooks.remove()
    return out


def _record(tag: str, spec: Any, result: Any, *, slots: int, expert_bytes: int, eviction: str, prefetch: str,
            forced: str, plans: list[Any], out_dir: Path, extra: dict[str, Any], echo: bool = True) -> dict[str, Any]:
    """Write one configuration's trace and the JSON record `emu validate --from-live` reads."""
    import torch
    import transformers

    trace_path = out_dir / f"{tag}.npz"
    result.trace.save(trace_path)
    stats = result.stats
    rec = {
        "tag": tag, "model": spec.to_dict(), "profile_model": extra.pop("profile_model"), "scale": extra.pop("scale"),
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "device_name": torch.cuda.get_device_name(0) if torch.cuda.is_available() else platform.processor(),
        "dtype": "bf16", "offload": True, "slots": slots, "experts_kernel": "eager", "expert_bytes": expert_bytes,
        "eviction": eviction, "eviction_params": {}, "prefetch": prefetch, "prefetch_params": {},
        "forced_trace": forced, "warmup_passes": 3,
        "requests": [{"prompt_len": p.prompt_len, "ttft_s": r.ttft_s, "decode_s": list(r.decode_s)}
                     for p, r in zip(plans, result.requests)],
        "ttft_s": result.ttft_s, "decode_tok_s": result.decode_tok_s,
        "stats": None if stats is None else attrs.asdict(stats) | {"hit_rate": stats.hit_rate},
        "trace": trace_path.name, "trace_fingerprint": result.trace.fingerprint(),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "python": platform.python_version()},
    } | extra
    (out_dir / f"{tag}.json").write_text(json.dumps(rec, indent=1, default=list) + "\n")
    line = f"{tag}: TTFT {result.ttft_s * 1e3:.2f} ms, decode {result.decode_tok_s:.2f} tok/s"
    if stats is not None:
        line += (f", hit {stats.hit_rate:.3f}, copies {stats.copies}, GB {stats.bytes_h2d / 1e9:.2f}, "
                 f"waits {stats.waits}")
        if stats.prefetch_issued or stats.prefetch_dropped:
            line += (f", prefetch {stats.prefetch_issued} issued {stats.prefetch_useful} useful "
                     f"{stats.prefetch_dropped} dropped {stats.late_hits} late")
    if echo:
        print(line, flush=True)
    return rec


def _tag(name: str, frac: float, eviction: str, prefetch: str) -> str:
    tag = f"{name}_{round(frac * 100)}pct_{eviction.replace('-', '_')}"
    return tag if prefetch == "none" else tag + f"_{prefetch.replace('-', '_')}"


def run_model(name: str, out_dir: Path, t0: float, *, device: str = "cuda", scale: str = "full",
              n_layers: int | None = None, prefetches: tuple[str, ...] = PREFETCHES, rounds: int = ROUNDS,
              handover: str = "auto", calibration: str = "auto") -> None:
    import torch

    from .models import build_model, live_spec
    from .offload import AUTO_BOUNDED_COPY_S, ExpertOffload
    from .runner import Between, run_live
    from .runtime_cal import HOST_KEYS, InterleavedCalibration, host_pace, measure_runtime_overheads, median_key

    dev = torch.device(device)
    cuda = dev.type == "cuda"
    work = forced_workload(name, scale, n_layers)
    preset, shape, force, plans, n_keys = work.preset, work.shape, work.force, work.plans, work.n_keys
    spec = live_spec(shape, "bf16")
    forced = MIXTRAL_TRACE + f" (request 0, {DECODE} decode steps, first {shape.n_layers} layers)" \
        if name == "mixtral" else "synthetic olmoe zipf 0.6 reuse 0.3 cross 0.3 seed 0"
    model = build_model(preset, scale, n_layers=work.n_layers, dtype="bf16", seed=0)
    print(f"{name}: built [{time.time() - t0:.0f}s]", flush=True)
    runtime = ExpertOffload(model, n_keys, eviction="lru", device=device, seed=0, kernel="eager", handover=handover)
    print(f"{name}: offloaded [{time.time() - t0:.0f}s]", flush=True)
    configs = [c for c in itertools.product(FRACTIONS, EVICTIONS, prefetches) if c[2] == "none" or c[0] < 1.0]
    how = {c: calibration_for(runtime.copy_seconds(), c[2]) if calibration == "auto" else calibration for c in configs}
    print(f"{name}: runtime calibration " + ", ".join(f"{pf} {how[next(c for c in configs if c[2] == pf)]}"
                                                      for pf in prefetches)
          + f" (copy {runtime.copy_seconds() * 1e3:.2f} ms)", flush=True)
    # + the hand-over used and the calibration, per record
    common = {"profile_model": preset, "scale": scale, "handover": handover}
    runs: dict[tuple[float, str, str], list[Any]] = {c: [] for c in configs}
    ttfts: dict[tuple[float, str, str], list[float]] = {c: [] for c in configs}
    cals: dict[str, list[dict[str, Any]]] = {pf: [] for pf in prefetches}
    paired: dict[tuple[float, str, str], list[dict[str, Any]]] = {c: [] for c in configs}
    # CPU seconds of the watchdog task's thread during each run (GIL time the forward thread waited for)
    wd_cpu: dict[tuple[float, str, str], list[float]] = {c: [] for c in configs}
    run_host: dict[tuple[float, str, str], list[dict[str, float]]] = {c: [] for c in configs}

    def write_records(rt: Any, final: bool) -> None:
        """The records of every round run so far (called after each round: a run cut short by a time limit
        keeps what it measured)."""
        for pf, measured in cals.items():
            full, bare = [c["full_step_s"] for c in measured], [c["no_experts_step_s"] for c in measured]
            cal = dict(measured[0], full_step_s=min(full), no_experts_step_s=min(bare), statistic="best of rounds",
                       full_step_median_s=float(np.median(full)), no_experts_step_median_s=float(np.median(bare)),
                       rounds=[{k: c[k] for k in ("full_step_s", "no_experts_step_s", *HOST_KEYS) if k in c}
                               for c in measured])
            for key in HOST_KEYS:
                issue = [c[key] for c in measured if key in c]
                if issue:
                    cal.update({key: min(issue), median_key(key): float(np.median(issue))})
            suffix = "" if pf == "none" else f"_{pf.replace('-', '_')}"
            (out_dir / f"{name}_runtime_cal{suffix}.json").write_text(
                json.dumps(dict(cal, profile_model=preset, prefetch=pf), indent=1) + "\n")
        for (frac, ev, pf), results in runs.items():
            first = results[0]
            same = all(attrs.asdict(x.stats) == attrs.asdict(first.stats) for x in results)
            rates = [x.decode_tok_s for x in results]
            _record(_tag(name, frac, ev, pf), spec, first, slots=slots_for(frac, n_keys),
                    expert_bytes=rt.expert_bytes, eviction=ev, prefetch=pf, forced=forced, plans=plans,
                    out_dir=out_dir, echo=final,
                    extra=dict(common, rounds=len(results), calibration=how[(frac, ev, pf)],
                               handover_used=rt.resolved_handover() if pf != "none" else None,
                               rehearsed="once per model (round 0, first configuration)" if cuda else False,
                               ttft_samples_s=ttfts[(frac, ev, pf)],
                               ttft_rounds_s=[min(ttfts[(frac, ev, pf)][k: k + 1 + TTFT_REPEATS])
                                              for k in range(0, len(ttfts[(frac, ev, pf)]), 1 + TTFT_REPEATS)],
                               runtime_cal_rounds=paired[(frac, ev, pf)],
                               ttft_first_s=first.ttft_s, ttft_s=min(ttfts[(frac, ev, pf)]),
                               ttft_median_s=float(np.median(ttfts[(frac, ev, pf)])), statistic="best of rounds",
                               watchdog_cpu_s_rounds=wd_cpu[(frac, ev, pf)] if pf != "none" else None,
                               run_host_rounds=run_host[(frac, ev, pf)],
                               decode_tok_s_rounds=rates, decode_tok_s=max(rates),
                               decode_tok_s_median=float(np.median(rates)),
                               stats_equal_across_rounds=same,
                               stats_rounds=None if same else [attrs.asdict(x.stats) for x in results]))

    # the interleaved calibration: its own runtime (every expert in its own slot pool, beside the run's) and
    # request, the calibration request's routing recorded once
    interleaved = None
    if "interleaved" in how.values():
        cal_rt = runtime.sibling(n_keys, handover=handover)
        cal_rt.preload()
        # short copies (OLMoE): a third mode, every access copied again, gives the issue costs within the pass
        interleaved = InterleavedCalibration(model, cal_rt, vocab=shape.vocab, device=dev, prompt_len=MIXTRAL_PROMPT,
                                             steps=DECODE, copying=runtime.copy_seconds() < AUTO_BOUNDED_COPY_S)

    for r in range(rounds):
        shift = r * len(configs) // rounds  # each round starts elsewhere: drift of the host's pace hits all alike
        for i, (frac, ev, pf) in enumerate(configs[shift:] + configs[:shift]):
            lockstep = how[(frac, ev, pf)] == "interleaved"
            if lockstep:
                assert interleaved is not None
                # the runtime calibration in lockstep with the run: one step of each mode before each of the
                # run's, on the sibling runtime holding every expert: the host's pace switches within a run
                # (OLMoE steps 45-88 ms in one 4-second run), so the calibration samples the same seconds
                cal_rt = interleaved.runtime
                if cal_rt.prefetch != pf:  # the run's prefetch policy, every expert resident again
                    cal_rt.prefetch = pf
                    cal_rt.reset()
                    cal_rt.preload()
                interleaved.begin()
            else:
                # the runtime calibration right before the run it is paired with: same prefetch policy (a
                # prefetching runtime does more host work per layer), every expert resident (preloaded when
                # prefetching: the zeroed-experts replay predicts from other hidden states)
                reconfigure(runtime, n_keys, "lru", "eager", pf)
                if pf != "none":
                    runtime.preload()
                pace_cal = host_pace(dev)
                cal = measure_runtime_overheads(model, runtime, vocab=shape.vocab, device=dev,
                                                prompt_len=MIXTRAL_PROMPT, steps=CAL_STEPS)
            reconfigure(runtime, slots_for(frac, n_keys), ev, "eager", pf)
            pace0 = host_pace(dev)
            cpu0 = _watchdog_cpu(runtime)
            host0 = _host_counters(runtime)
            res = run_live(model, plans, vocab=shape.vocab, device=dev, runtime=runtime, force=force,
                           warmup_passes=3, rehearse=cuda and r == 0 and i == 0, model_name=spec.name,
                           between=Between(interleaved, 1) if lockstep else None)
            cpu1 = _watchdog_cpu(runtime)
            host1 = _host_counters(runtime)
            pace2 = host_pace(dev)
            # the host's pace around the calibration and around the run (live.runtime_cal.host_pace)
            if lockstep:
                assert interleaved is not None
                cal = dict(interleaved.result(), pace_s=(pace0 + pace2) / 2, run_pace_s=(pace0 + pace2) / 2)
            else:
                cal = dict(cal, pace_s=(pace_cal + pace0) / 2, run_pace_s=(pace0 + pace2) / 2, calibration="before")
            cals[pf].append(cal)
            paired[(frac, ev, pf)].append(cal)
            runs[(frac, ev, pf)].append(res)
            wd_cpu[(frac, ev, pf)].append(cpu1 - cpu0)
            run_host[(frac, ev, pf)].append(_host_spans(host0, host1))
            reps = ttft_repeats(model, runtime, res.trace, plans[0].prompt_len, vocab=shape.vocab, device=dev,
                                n=TTFT_REPEATS, seed=1 + r)
            ttfts[(frac, ev, pf)] += [res.ttft_s, *reps]
            print(f"  round {r} {_tag(name, frac, ev, pf)}: TTFT {res.ttft_s * 1e3:.1f} ms, decode "
                  f"{res.decode_tok_s:.2f} tok/s, hit {res.stats.hit_rate:.3f}, copies {res.stats.copies}, "
                  f"watchdog CPU {(cpu1 - cpu0) * 1e3:.0f} ms; calibration full step "
                  f"{cal['full_step_s'] * 1e3:.1f} ms [{time.time() - t0:.0f}s]", flush=True)
        write_records(runtime, final=r == rounds - 1)
    if interleaved is not None:
        interleaved.runtime.close()
    runtime.close()  # the model, runtimes and slot pools go with this frame; main() collects them


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("out", type=Path)
    p.add_argument("--only", choices=("olmoe", "mixtral"), action="append")
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--scale", choices=("full", "tiny"), default="full")
    p.add_argument("--layers", type=int, default=None)
    p.add_argument("--rounds", type=int, default=ROUNDS,
                   help="repeat every configuration this many times, interleaved; records keep best and medians")
    p.add_argument("--prefetch", choices=LIVE_PREFETCH, action="append",
                   help=f"prefetch policies to run (repeatable; default {' and '.join(PREFETCHES)})")
    p.add_argument("--calibration", choices=CALIBRATIONS, default="auto",
                   help="the runtime calibration paired with each run: interleaved (in lockstep: a step of each "
                        "mode before each of its decode steps) or all of it right before the run; auto: interleaved "
                        "but for prefetching runs with copies of 1 ms or more")
    p.add_argument("--handover", choices=HANDOVER_CHOICES, default="auto",
                   help="how queued prefetches reach the copy engine when the forward thread leaves a layer "
                        "(live/watchdog.py; auto: bounded for copies of 1 ms or more, else inline)")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    np.seterr(all="ignore")
    for name in args.only or ("olmoe", "mixtral"):
        run_model(name, args.out, t0, device=args.device, scale=args.scale, n_layers=args.layers,
                  prefetches=tuple(args.prefetch or PREFETCHES), rounds=args.rounds, handover=args.handover,
                  calibration=args.calibration)
        gc.collect()  # the model and its slot pools, before the next model is built
        if args.device == "cuda":
            import torch

            torch.cuda.empty_cache()
    print(f"total {time.time() - t0:.0f}s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
