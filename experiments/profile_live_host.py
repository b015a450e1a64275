"""Where does the forward thread's host time go in a live decode? One OLMoE-1B-7B decode per (experts kernel,
prefetch) at 5% cache (forced synthetic routing, as in the validation matrix); needs a GPU.

Experts kernels: eager, fused (captured in the decode graphs) and fused-launched (launched between them).
For each pair: one run with the host ledger on (per decode step and per layer: the routing readback, the gate's
decisions, the copies issued, the experts' launches; the step's host share in the graph decode), then the same
run under cProfile (its top functions by own time). `--ledger-ab N` instead runs N pairs of the same decode
without and with the ledger, alternated, and prints each run's median step: what the calibration's own
instrument adds to a step (the runtime calibration prices its items from requests with the ledger on).

    python experiments/profile_live_host.py [--decode graph] [--kernel eager --kernel fused-launched ...]
                                            [--prefetch none --prefetch next-layer] [--top 25]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--decode", default="graph", choices=("eager", "graph"))
    # fused: captured in the decode graphs where it can be; fused-launched: launched between them
    p.add_argument("--kernel", action="append", default=None, choices=("eager", "fused", "fused-launched"))
    p.add_argument("--prefetch", action="append", default=None)
    p.add_argument("--fraction", type=float, default=0.05)
    p.add_argument("--ledger-ab", type=int, default=0, metavar="N",
                   help="N pairs of runs without and with the ledger (no cProfile): the ledger's cost per step")
    p.add_argument("--smoke", action="store_true", help="a tiny model on the CPU (eager decode): checks the script")
    args = p.parse_args(argv)
    from experiments.live_olmoe import build_olmoe
    from live.matrix import reconfigure, slots_for
    from live.offload import HostLedger
    from live.runner import run_live

    t0 = time.time()
    built = build_olmoe("profile_live_host", smoke=args.smoke)
    if built is None:
        return 2
    dev, work, model, runtime = built.device, built.work, built.model, built.runtime
    shape, force, plans, n_keys = work.shape, work.force, work.plans, work.n_keys
    if args.smoke:
        args.decode = "eager"
    n_steps = sum(plan.n_decode * plan.batch for plan in plans)
    first = True
    for kernel in args.kernel or ("eager", "fused-launched", "fused"):
        for pf in args.prefetch or ("none", "next-layer"):
            def run(seed: int, kernel: str = kernel, pf: str = pf, **kw: object) -> Any:
                reconfigure(runtime, slots_for(args.fraction, n_keys), "lru", kernel.split("-")[0], pf)
                runtime.capture = kernel == "fused"
                return run_live(model, plans, vocab=shape.vocab, device=dev, runtime=runtime, force=force,
                                decode=args.decode, seed=seed, **kw)

            run(0, warmup_passes=3, rehearse=first)
            first = False  # unmeasured: the measured ones run warm
            if args.ledger_ab:
                _ledger_ab(run, runtime, args.ledger_ab, f"{args.decode} decode, {kernel} experts, prefetch {pf}, "
                                                         f"cache {args.fraction:.0%}")
                continue
            ledger = runtime.ledger = HostLedger()  # its warm-up pass is a prefill: not in the decode's items
            res = run(0, warmup_passes=1)
            runtime.ledger = None
            steps = res.decode_s
            layers = n_steps * runtime.n_layers
            share = "-" if res.decode_host_share is None else f"{res.decode_host_share:.2f}"
            print(f"\n== {args.decode} decode, {kernel} experts, prefetch {pf}: {res.decode_tok_s:.2f} tok/s, "
                  f"step median {statistics.median(steps) * 1e3:.2f} ms, host share {share}, "
                  f"copies {res.stats.copies} [{time.time() - t0:.0f}s]", flush=True)
            for (phase, item), seconds in sorted(ledger.seconds.items()):
                if phase == 1:
                    n = ledger.counts[(phase, item)]
                    print(f"   {item:9s} {seconds / n * 1e6:8.1f} us x {n:6d}  = {seconds / layers * 1e6:7.1f} us "
                          f"per layer, {seconds / n_steps * 1e3:6.2f} ms per step", flush=True)
            prof = cProfile.Profile()
            prof.enable()
            res = run(0, warmup_passes=1)
            prof.disable()
            print(f"   profiled: {res.decode_tok_s:.2f} tok/s", flush=True)
            buf = io.StringIO()
            pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(args.top)
            text = buf.getvalue()
            print(text[text.index("ncalls"):] if "ncalls" in text else text, flush=True)
    runtime.close()
    return 0


def _ledger_ab(run: Any, runtime: Any, pairs: int, label: str) -> None:
    """Median decode step of `pairs` runs without and with the host ledger, alternated (the machine's drift
    spread over both)."""
    from live.offload import HostLedger

    medians: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(pairs):
        for on in (False, True):
            runtime.ledger = HostLedger() if on else None
            res = run(0, warmup_passes=1)
            runtime.ledger = None
            medians[on].append(statistics.median(res.decode_s))
    off, on = statistics.median(medians[False]), statistics.median(medians[True])
    print(f"\n== {label}: median step without the ledger {off * 1e3:.3f} ms "
          f"({', '.join(f'{m * 1e3:.3f}' for m in medians[False])}), with {on * 1e3:.3f} ms "
          f"({', '.join(f'{m * 1e3:.3f}' for m in medians[True])}): {(on - off) / runtime.n_layers * 1e6:+.1f} us "
          f"a layer", flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
