"""Which copies does the live runtime decide, and in what order does its copy engine get them? One
configuration of the validation matrix's model (OLMoE, or Mixtral-8x7B's first 8 layers on the real
routing), every cache decision of its measured request logged: each gate's hits, misses and victims, each
prefetch decision, each in-flight key found landed, and each copy in submission order (the engine's order:
one stream). `--emulate PROFILE` then replays the same trace through the SimPy engine with its timeline
and prints, pass by pass, the first copy where the two orders part. Needs a GPU (`--smoke`: the tiny
model on the CPU, where copies land at once).

    python experiments/live_decisions.py [--model mixtral] [--run 25:next-layer] [--eviction lru]
                                        [--out FILE.json] [--emulate PROFILE.toml --runtime-cal CAL.json]

Why: Mixtral 25% next-layer copies ~2% more experts live than emulated (1567-1575 against 1541) in a
lease where every other run matched the emulator within 1%; the first decision that differs says why.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import attrs

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from experiments.trace_live_run import _config  # noqa: E402


def record_decisions(log: list[list[Any]]) -> Any:
    """Log every decision of every runtime and bridge from now on (class-level wraps); returns the undo."""
    from emu.kernel.layout import IN_FLIGHT
    from live.cache_bridge import CacheBridge
    from live.offload import ExpertOffload

    saved = {(CacheBridge, n): getattr(CacheBridge, n) for n in ("gate", "prefetch", "complete", "begin_pass")}
    saved[(ExpertOffload, "_copy")] = ExpertOffload._copy
    t0 = time.perf_counter()

    def now() -> float:
        return round(time.perf_counter() - t0, 6)

    def gate(self: Any, layer: int, experts: Any, tokens: Any = None) -> Any:
        out = saved[(CacheBridge, "gate")](self, layer, experts, tokens)
        log.append(["gate", now(), layer, [int(e) for e in experts], out[0].tolist(), out[1].tolist()])
        return out

    def prefetch(self: Any, layer: int) -> Any:
        keys, victims = saved[(CacheBridge, "prefetch")](self, layer)
        log.append(["prefetch", now(), layer, keys.tolist(), victims.tolist()])
        return keys, victims

    def complete(self: Any, layer: int, expert: int) -> None:
        key = layer * self.n_experts + expert
        was = int(self.cs.status[key])
        saved[(CacheBridge, "complete")](self, layer, expert)
        if was == IN_FLIGHT:
            log.append(["landed", now(), key])

    def begin_pass(self: Any, p: int) -> None:
        log.append(["pass", now(), p])
        saved[(CacheBridge, "begin_pass")](self, p)

    def copy(self: Any, layer: int, expert: int, slot: int) -> Any:
        log.append(["copy", now(), layer * self.n_experts + expert])
        return saved[(ExpertOffload, "_copy")](self, layer, expert, slot)

    for (cls, name), fn in zip(saved, (gate, prefetch, complete, begin_pass, copy)):
        setattr(cls, name, fn)

    def undo() -> None:
        for (cls, name), fn in saved.items():
            setattr(cls, name, fn)
    return undo


def measured_passes(log: list[list[Any]], n_passes: int) -> list[list[list[Any]]]:
    """The log split at each pass start; the last `n_passes` passes (the measured request's)."""
    passes: list[list[list[Any]]] = []
    for entry in log:
        if entry[0] == "pass":
            passes.append([])
        elif passes:
            passes[-1].append(entry)
    return passes[-n_passes:]


def emulated_copies(record: Path, profile: Path, cal: dict[str, Any]) -> list[list[tuple[str, int]]]:
    """Per pass, the emulator's copies in the order its engine starts them: (demand|prefetch, key)."""
    from emu.engines.des.engine import run_des
    from emu.engines.des.timeline import TimelineRecorder
    from emu.engines.setup import StackChoice, make_inputs
    from emu.profile import load_profile
    from live.runtime_cal import apply_runtime_overheads
    from live.validate import _choice, live_model, load_live_run

    run = load_live_run(record)
    rec = run.record
    prof = load_profile(profile)
    spec = live_model(run, prof)
    prof, runtime = apply_runtime_overheads(prof, spec, cal, file=str(record))
    stack = StackChoice(eviction=_choice(run, "eviction", str(rec["eviction"]), None),
                        prefetch=_choice(run, "prefetch", str(rec.get("prefetch") or "none"), None))
    inputs = make_inputs(spec, prof, run.trace, int(rec["slots"]) * spec.expert_bytes(), stack, 0, runtime)
    recorder = TimelineRecorder((0, None))
    run_des(inputs, recorder)
    n_exp = spec.n_experts
    out: list[list[tuple[str, int]]] = [[] for _ in range(run.trace.n_passes)]
    for _tid, name, kind, _t, _dur, args in sorted(recorder.events, key=lambda e: e[3]):
        if name.startswith("copy L"):
            layer, expert = (int(x[1:]) for x in name[5:].split())
            out[args["pass"]].append((kind, layer * n_exp + expert))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=("olmoe", "mixtral"), default="mixtral")
    p.add_argument("--run", type=_config, default=(0.25, "next-layer"), metavar="PCT:PREFETCH")
    p.add_argument("--eviction", default="lru")
    p.add_argument("--out", type=Path, default=None, help="write the live log (JSON)")
    p.add_argument("--log", type=Path, default=None, help="read a live log written before (no live run)")
    p.add_argument("--emulate", type=Path, default=None, metavar="RECORD.json",
                   help="a matrix record of the same configuration: emulate its trace and compare")
    p.add_argument("--profile", type=Path, default=None, help="the record's lease profile")
    p.add_argument("--smoke", action="store_true", help="a tiny model on the CPU (checks the script)")
    args = p.parse_args(argv)
    if args.log is not None:
        data = json.loads(args.log.read_text())
    else:
        data = live_log(args)
        if data is None:
            return 2
        if args.out is not None:
            args.out.write_text(json.dumps(data))
    if args.emulate is not None:
        compare(data, args.emulate, args.profile or args.emulate.parent / "h100-lease.toml")
    return 0


def live_log(args: argparse.Namespace) -> dict[str, Any] | None:
    from experiments.live_olmoe import build_olmoe
    from live.matrix import reconfigure, slots_for
    from live.runner import run_live

    built = build_olmoe("live_decisions", args.smoke, args.model)
    if built is None:
        return None
    dev, work, model, runtime = built.device, built.work, built.model, built.runtime
    frac, pf = args.run
    reconfigure(runtime, slots_for(frac, work.n_keys), args.eviction, "eager", pf)
    log: list[list[Any]] = []
    undo = record_decisions(log)
    try:
        res = run_live(model, work.plans, vocab=work.shape.vocab, device=dev, runtime=runtime, force=work.force,
                       warmup_passes=3, rehearse=dev.type == "cuda")
    finally:
        undo()
        runtime.close()
    n_passes = 1 + len(res.decode_s)
    passes = measured_passes(log, n_passes)
    copies = [sum(1 for e in ps if e[0] == "copy") for ps in passes]
    print(f"{args.model} {int(frac * 100)}% {pf} {args.eviction}: decode {res.decode_tok_s:.2f} tok/s, "
          f"copies {res.stats.copies} (per pass: {' '.join(map(str, copies))})")
    return {"model": args.model, "fraction": frac, "prefetch": pf, "eviction": args.eviction,
            "decode_s": list(res.decode_s), "stats": attrs.asdict(res.stats) if res.stats is not None else None,
            "passes": passes}


def compare(data: dict[str, Any], record: Path, profile: Path) -> None:
    rec = json.loads(record.read_text())
    emu = emulated_copies(record, profile, rec["runtime_cal_rounds"][0])
    live = data["passes"]
    shown = 0
    for p, (lp, ep) in enumerate(zip(live, emu)):
        lk = [e[2] for e in lp if e[0] == "copy"]
        ek = [k for _, k in ep]
        if lk == ek:
            continue
        i = next((j for j, (a, b) in enumerate(zip(lk, ek)) if a != b), min(len(lk), len(ek)))
        print(f"pass {p}: live {len(lk)} copies, emu {len(ek)}; first difference at copy {i}: "
              f"live {lk[i:i + 6]} emu {ep[i:i + 6]}")
        shown += 1
        if shown == 1:
            for e in lp:
                print("   live", e)
        if shown >= 5:
            break
    if shown == 0:
        print("the live and emulated copy orders are the same in every pass")


if __name__ == "__main__":
    raise SystemExit(main())
