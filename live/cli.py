"""`emu live SCENARIO`: run the scenario's model for real with its experts offloaded, record the routing
trace and print TTFT, decode tokens/s, hit rate and bytes moved.

The scenario names the model preset, the cache capacity and the policies. A synthetic workload gives
the prompt and output lengths (the model routes by itself); a trace workload is replayed: its routing
is forced pass by pass on the (random-weight) model. Results: the recorded trace (.npz) and a JSON file
of the measurements next to it.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
from functools import cache
from pathlib import Path
from typing import Any

from emu.errors import EmuError


@cache
def _live_policies() -> dict[str, Any]:
    """What the live runtime implements (the policies declared `live`), by kind; other policies are refused,
    not silently replaced. Asked of the policy registry on first use (importing it compiles every policy's
    hooks), not when the `emu` parser is built; also importable as `_LIVE_POLICIES`."""
    from emu.kernel.hooks import KINDS
    from emu.policies.registry import live_policies

    return {kind: live_policies(kind) for kind in KINDS}


def __getattr__(name: str) -> Any:
    if name == "_LIVE_POLICIES":
        return _live_policies()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _miss_timing(scenario: Any, spec: Any) -> Any:
    """The emulator's Timing of the live model on the scenario's profile, for a miss policy that weighs a
    copy against the CPU (the same spec `emu validate` emulates the run with)."""
    if scenario.stack.miss.name != "cpu":
        return None
    from emu.engines.setup import precisions_for, timing

    from .validate import model_for_profile

    profile = scenario.profile()
    model = model_for_profile(spec.to_dict(), None, profile)
    return timing(profile, model, precisions_for(model))


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register `live` on the `emu` CLI's subparsers."""
    p = subparsers.add_parser("live", help="run a scenario on a real Hugging Face model with offloaded experts",
                              description=__doc__)
    p.add_argument("scenario", type=Path, help="scenario TOML file")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cuda")
    p.add_argument("--scale", choices=("tiny", "full"), default="full",
                   help="full: the model's real dimensions; tiny: small hidden size for CPU checks")
    p.add_argument("--layers", type=int, default=None, help="build only this many layers (a model that does not fit)")
    p.add_argument("--dtype", choices=("bf16", "fp16"), default="bf16")
    p.add_argument("--weights", type=Path, default=None, help="local model directory (default: random weights)")
    p.add_argument("--prompt-len", type=int, default=None, help="prompt tokens (default: the scenario's, or 128)")
    p.add_argument("--decode-tokens", type=int, default=None, help="decode steps per request (default: scenario's)")
    p.add_argument("--warmup", type=int, default=3, help="warm-up passes before the measured run")
    p.add_argument("--rehearse", action=argparse.BooleanOptionalAction, default=None,
                   help="run every request once untimed first (default: on for cuda)")
    p.add_argument("--experts", choices=("eager", "fused"), default=None,
                   help="eager: expert by expert, hits first while misses load (the emulator's semantics); "
                        "fused: the model's own experts kernel on the slot pool once a layer's copies landed "
                        "(default: fused unless the model runs eager experts)")
    p.add_argument("--no-offload", action="store_true", help="run the unmodified model (all experts in VRAM)")
    p.add_argument("--out", type=Path, default=None, help="trace .npz to write (default: live_<scenario>.npz)")
    p.add_argument("--logits", action="store_true",
                   help="record the routers' full logits in the trace (n_experts values per token and layer), for "
                        "cache-aware routing's history = 1")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a scenario key, e.g. --set cache.capacity=\"25%%\"")
    p.set_defaults(func=run)
    return p


def _positive(value: int | None, key: str) -> None:
    if value is not None and value < 1:
        raise EmuError(f"expected a positive integer, got {value}", key=key)


def _check_policies(scenario: Any) -> None:
    for kind, allowed in _live_policies().items():
        name = getattr(scenario.stack, kind).name
        if name not in allowed:
            raise EmuError(f"the live runtime does not implement {kind} policy {name!r} yet; expected one of "
                           f"{list(allowed)}", file=scenario.path, key=f"policy.{kind}")


def _slots(scenario: Any, spec: Any, n_keys: int) -> int:
    """The scenario's capacity applied to the model as built (a percentage stays a percentage)."""
    from emu.scenario import CacheConfig

    cache = CacheConfig.parse(scenario.raw["cache"]["capacity"], spec, scenario.path)
    return max(1, min(n_keys, math.floor(cache.capacity_bytes / spec.expert_bytes() + 1e-9)))


def first_layers(trace: Any, n_layers: int) -> Any:
    """The routing of the first `n_layers` MoE layers, for a model built with fewer layers than traced."""
    import attrs

    cut = {k: None if getattr(trace, k) is None else getattr(trace, k)[:, :n_layers]
           for k in ("experts", "scores", "predicted", "logits")}
    return attrs.evolve(trace, **cut, meta=dict(trace.meta, layers_kept=n_layers, layers_traced=trace.n_layers))


def _versions() -> dict[str, str]:
    import torch
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version()}


def import_torch(command: str) -> Any:
    """torch, or one line saying the command needs it (a live run is real PyTorch code)."""
    try:
        import torch
    except ImportError as err:
        raise EmuError(f"`emu {command}` runs a real PyTorch model and needs torch, which cannot be imported "
                       f"({err}); install the 'live' extra: pip install -e '.[live]'", key="torch") from None
    return torch


def refuse_hardware_keys(scenario: Any) -> None:
    """A live run is the machine itself: its copies and kernels are the machine's own, so a scenario's
    `hardware.*` keys (they set the emulator's profile) would change nothing there; refused, naming them."""
    if scenario.hardware_overrides:
        keys = sorted(f"hardware.{k}" for k in scenario.hardware_overrides)
        raise EmuError(f"a live run is the machine itself; its {', '.join(keys)} keys would change nothing (they set "
                       "the emulator's profile)", file=scenario.path, key=keys[0])


def run(args: argparse.Namespace) -> int:
    import attrs

    from emu.scenario import load_scenario
    from emu.trace import RoutingTrace

    for value, key in ((args.layers, "--layers"), (args.prompt_len, "--prompt-len"),
                       (args.decode_tokens, "--decode-tokens")):
        _positive(value, key)
    if args.warmup < 0:
        raise EmuError(f"expected a non-negative count, got {args.warmup}", key="--warmup")
    scenario = load_scenario(args.scenario, args.overrides)  # a bad scenario is named before torch is asked for
    refuse_hardware_keys(scenario)
    torch = import_torch("live")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise EmuError("torch sees no CUDA device; use --device cpu", key="--device")

    from .models import build_model, live_spec, shape_of
    from .offload import ExpertOffload
    from .runner import PassPlan, plans_from_trace, run_live

    out = args.out or Path(scenario.output_dir or ".") / f"live_{Path(scenario.path).stem}.npz"
    if out.suffix != ".npz":
        raise EmuError("expected a path ending in .npz", file=str(out), key="--out")
    if not args.no_offload:
        _check_policies(scenario)
    preset = scenario.model.name
    model = build_model(preset, args.scale, n_layers=args.layers, dtype=args.dtype, seed=scenario.seed,
                        path=args.weights)
    shape = shape_of(model, preset, args.scale)
    spec = live_spec(shape, args.dtype)
    device = torch.device(args.device)

    force = None
    wl = scenario.workload
    if wl.trace is not None:
        force = RoutingTrace.load(wl.trace)
        if wl.max_tokens:
            force = force.slice_tokens(wl.max_tokens)
        if args.layers is not None and force.n_layers > shape.n_layers:
            force = first_layers(force, shape.n_layers)
        force.check_fits(shape.n_layers, shape.n_experts, shape.top_k, file=wl.trace)
        plans = plans_from_trace(force, args.prompt_len or 128, args.decode_tokens)
    else:
        syn = wl.synthetic or {}
        prompt = args.prompt_len or int(syn.get("prompt_len", 128))
        decode = args.decode_tokens or int(syn.get("output_len", 64))
        plans = [PassPlan(prompt, decode)]

    runtime = None
    n_slots = None
    if args.no_offload:
        model.to(device)
    else:
        n_slots = _slots(scenario, spec, shape.n_layers * shape.n_experts)
        runtime = ExpertOffload(model, n_slots, eviction=scenario.stack.eviction.name,
                                eviction_params=scenario.stack.eviction.params, device=args.device,
                                seed=scenario.seed, kernel=args.experts, prefetch=scenario.stack.prefetch.name,
                                prefetch_params=scenario.stack.prefetch.params,
                                partition=scenario.stack.partition.name,
                                partition_params=scenario.stack.partition.params,
                                miss=scenario.stack.miss.name, miss_params=scenario.stack.miss.params,
                                timing=_miss_timing(scenario, spec))
    rehearse = args.device == "cuda" if args.rehearse is None else args.rehearse
    meta = {"scenario": scenario.path, "scale": args.scale, "device": args.device, "slots": n_slots}
    from emu.progress import Progress

    tick = Progress(len(plans), label="live", unit="requests")
    try:
        result = run_live(model, plans, vocab=shape.vocab, device=device, seed=scenario.seed, runtime=runtime,
                          force=force, warmup_passes=args.warmup, rehearse=rehearse, model_name=spec.name,
                          meta=meta, progress=tick, logits=args.logits)
    finally:
        tick.close()
        if runtime is not None:
            runtime.close()

    out.parent.mkdir(parents=True, exist_ok=True)
    result.trace.save(out)
    stats = result.stats
    record = {
        "scenario": scenario.path, "model": spec.to_dict(), "scale": args.scale, "device": args.device,
        "device_name": torch.cuda.get_device_name(device) if args.device == "cuda" else platform.processor(),
        "dtype": args.dtype, "offload": not args.no_offload, "slots": n_slots,
        "experts_kernel": runtime.kernel if runtime else model.config._experts_implementation,
        "expert_bytes": runtime.expert_bytes if runtime else spec.expert_bytes(),
        "eviction": scenario.stack.eviction.name, "eviction_params": dict(scenario.stack.eviction.params),
        "prefetch": scenario.stack.prefetch.name, "prefetch_params": dict(scenario.stack.prefetch.params),
        "partition": scenario.stack.partition.name, "partition_params": dict(scenario.stack.partition.params),
        "miss": scenario.stack.miss.name, "miss_params": dict(scenario.stack.miss.params),
        "seed": scenario.seed,  # the policies' seeded choices (random eviction), replayed by `emu validate`
        "forced_trace": wl.trace, "warmup_passes": args.warmup,
        "rehearsed": rehearse, "sdpa_backends": "flash, efficient, math (no cudnn)" if args.device == "cuda" else "cpu",
        "requests": [{"prompt_len": p.prompt_len, "ttft_s": r.ttft_s, "decode_s": list(r.decode_s)}
                     for p, r in zip(plans, result.requests)],
        "ttft_s": result.ttft_s, "decode_tok_s": result.decode_tok_s,
        "decode_host_share": result.decode_host_share, "experts_captured": result.experts_captured,
        "stats": None if stats is None else attrs.asdict(stats) | {"hit_rate": stats.hit_rate},
        "trace": str(out), "trace_fingerprint": result.trace.fingerprint(), "versions": _versions(),
    }
    json_path = out.with_suffix(".json")
    json_path.write_text(json.dumps(record, indent=2, default=list) + "\n")
    _print_summary(spec.name, args, n_slots, shape.n_layers * shape.n_experts, result, out, json_path)
    return 0


def _print_summary(name: str, args: argparse.Namespace, n_slots: int | None, n_keys: int, result: Any,
                   out: Path, json_path: Path) -> None:
    cache = "all experts resident (unmodified model)" if n_slots is None else \
        f"{n_slots} of {n_keys} expert slots ({100.0 * n_slots / n_keys:.1f}%)"
    print(f"{name} on {args.device} ({args.scale}, {args.dtype}): {cache}")
    print(f"  TTFT            {result.ttft_s * 1e3:10.2f} ms")
    print(f"  decode          {result.decode_tok_s:10.2f} tok/s over {len(result.decode_s)} steps")
    stats = result.stats
    if stats is not None:
        print(f"  hit rate        {100 * stats.hit_rate:10.2f} %  ({stats.hits} hits, {stats.misses} misses: "
              f"{stats.compulsory} compulsory, {stats.capacity} capacity, {stats.collision} collision)")
        print(f"  bytes moved     {stats.bytes_h2d / 1e6:10.2f} MB in {stats.copies} copies")
        if stats.prefetch_issued or stats.prefetch_dropped:
            print(f"  prefetch        {stats.prefetch_issued:10d} issued, {stats.prefetch_useful} useful, "
                  f"{stats.prefetch_dropped} dropped (no victim), {stats.prefetch_wasted} wasted, "
                  f"{stats.late_hits} late hits")
    print(f"  trace           {out}  ({result.trace.n_tokens} tokens, {result.trace.n_passes} passes)")
    print(f"  measurements    {json_path}")
