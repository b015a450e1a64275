"""Where do a prefetching live run's extra milliseconds per decode step go? OLMoE-1B-7B (forced synthetic
routing, as in the validation matrix) at 25% and 5% cache, lru, prefetch none and next-layer, beside a
runtime holding every expert with next-layer (what the runtime calibration of a prefetching run sees);
each of the runtime's host-side steps timed with perf_counter on the forward thread. Needs a GPU.

    python experiments/profile_live_prefetch.py [--rounds 2]

Prints, per configuration, the mean decode step and per step: the time in each timed part (calls per
step in brackets; `gc`: the cyclic garbage collector's pauses, collections in brackets). `readback`
includes the wait for the GPU at the layer's routing readback (a device sync: what the host waits while
the GPU catches up), `outside` is everything the runtime does not see (attention, norms, router launches,
the sampling sync). `--gc-freeze` freezes every object alive after the build (`gc.freeze`).
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

#: the runtime's methods timed (ExpertOffload), and the watchdog's
RUNTIME_PARTS = ("_run_layer", "_readback", "_to_host", "_before_gate", "_issue_prefetches", "_place", "_assign",
                 "_copy", "_compute", "_poll_prefetches", "_waited")
WATCHDOG_PARTS = ("pump", "away", "promote")
#: torch's own calls, timed on their classes: a stream's wait for a copy's event, an event's record, and the
#: pass end's `int(token)` (the sampling sync: the host waits there for the GPU to finish the pass)
TORCH_PARTS = (("Stream", "wait_event", "wait_event"), ("Event", "record", "event.record"),
               ("Tensor", "__int__", "pass_end_sync"))


class Timers:
    """perf_counter totals and call counts of wrapped methods (the outermost call of a method only)."""

    def __init__(self) -> None:
        self.total: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)

    def wrap(self, owner: Any, name: str, label: str) -> Any:
        """Time `owner.name` (an object's method, or a class's for every instance; the outermost call of a
        recursion only); returns the undo."""
        fn = getattr(owner, name)
        own = vars(owner).get(name)  # what the owner itself held under the name (None: looked up elsewhere)
        depth = [0]

        def timed(*args: Any, **kwargs: Any) -> Any:
            depth[0] += 1
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                depth[0] -= 1
                if depth[0] == 0:
                    self.total[label] += time.perf_counter() - t0
                    self.calls[label] += 1

        setattr(owner, name, timed)
        return lambda: setattr(owner, name, own) if own is not None else delattr(owner, name)

    def reset(self) -> None:
        self.total.clear()
        self.calls.clear()

    def gc_callback(self, phase: str, info: dict[str, Any]) -> None:
        """`gc.callbacks`: the cyclic collector's pauses, wherever they fall (label `gc`)."""
        if phase == "start":
            self._gc_t0 = time.perf_counter()
        elif hasattr(self, "_gc_t0"):
            self.total["gc"] += time.perf_counter() - self._gc_t0
            self.calls["gc"] += 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--gc-freeze", action="store_true",
                   help="move every object alive after the build out of the collector's reach (gc.freeze)")
    p.add_argument("--smoke", action="store_true", help="a tiny model on the CPU (checks the script, measures nothing)")
    args = p.parse_args(argv)
    from experiments.live_olmoe import build_olmoe
    from live.matrix import reconfigure, slots_for
    from live.runner import Between, run_live

    t0 = time.time()
    built = build_olmoe("profile_live_prefetch", args.smoke)
    if built is None:
        return 2
    dev, work, model, runtime = built.device, built.work, built.model, built.runtime
    shape, force, plans, n_keys = work.shape, work.force, work.plans, work.n_keys
    device = dev.type
    if args.gc_freeze:
        gc.collect()
        gc.freeze()
    print(f"{len(gc.get_objects())} objects tracked, {gc.get_freeze_count()} frozen", flush=True)
    import torch

    configs = [(1.0, "none"), (1.0, "next-layer"), (0.25, "none"), (0.25, "next-layer"), (0.05, "none"),
               (0.05, "next-layer")]
    owners = {"Stream": torch.cuda.Stream, "Event": torch.cuda.Event, "Tensor": torch.Tensor}
    rows: dict[tuple[float, str], list[dict[str, Any]]] = defaultdict(list)
    for r in range(args.rounds):
        for i, (frac, pf) in enumerate(configs):
            reconfigure(runtime, slots_for(frac, n_keys), "lru", "eager", pf)
            timers = Timers()
            gc.callbacks.append(timers.gc_callback)
            undo = [timers.wrap(runtime, name, name) for name in RUNTIME_PARTS]
            if runtime.watchdog is not None:
                undo += [timers.wrap(runtime.watchdog, name, "wd." + name) for name in WATCHDOG_PARTS]
            undo += [timers.wrap(owners[cls], name, label) for cls, name, label in TORCH_PARTS]
            preload = frac == 1.0  # every expert resident from the start, as the runtime calibration has it
            res = run_live(model, plans, vocab=shape.vocab, device=dev, runtime=runtime, force=force,
                           warmup_passes=3, rehearse=device == "cuda" and r == 0 and i == 0, preload=preload,
                           between=Between(lambda step, t=timers: t.reset() if step == 1 else None, 1))
            for u in undo:
                u()
            gc.callbacks.remove(timers.gc_callback)
            timed = res.decode_s[1:]  # the timers count from decode step 1 on (warm-up, prefill, step 0 left out)
            steps = len(timed)
            row = {"step_ms": statistics.fmean(timed) * 1e3, "copies": res.stats.copies / (steps + 2),
                   "prefetches": (res.stats.prefetch_issued or 0) / (steps + 2)}
            for label, total in timers.total.items():
                row[label] = (total / steps * 1e3, timers.calls[label] / steps)
            rows[(frac, pf)].append(row)
            print(f"  round {r} {int(frac * 100)}% {pf}: step {row['step_ms']:.1f} ms [{time.time() - t0:.0f}s]",
                  flush=True)
    labels = ["_run_layer", "_readback", "_to_host", "_before_gate", "_poll_prefetches", "_issue_prefetches",
              "_place", "_assign", "_copy", "_compute", "wait_event", "event.record", "_waited", "wd.pump", "wd.away",
              "wd.promote", "pass_end_sync", "gc"]
    print("\nper decode step (ms, calls in brackets), mean of the rounds; copies and prefetches per pass; "
          "outside = step - _run_layer")
    head = f"{'config':22s} {'step':>6s} {'copies':>6s} {'pf':>5s} {'outside':>7s} " + " ".join(
        f"{x.strip('_'):>17s}" for x in labels)
    print(head)
    for (frac, pf), rs in rows.items():
        step = statistics.fmean(x["step_ms"] for x in rs)
        cells = []
        for label in labels:
            vals = [x[label] for x in rs if label in x]
            if vals:
                ms, calls = statistics.fmean(v[0] for v in vals), statistics.fmean(v[1] for v in vals)
                cells.append(f"{ms:8.2f} ({calls:5.1f})")
            else:
                cells.append(f"{'-':>17s}")
        inside = statistics.fmean(x["_run_layer"][0] for x in rs)
        print(f"{int(frac * 100):>3d}% {pf:17s} {step:6.1f} {statistics.fmean(x['copies'] for x in rs):6.1f} "
              f"{statistics.fmean(x['prefetches'] for x in rs):5.1f} {step - inside:7.2f} " + " ".join(cells))
    runtime.close()
    if args.gc_freeze:
        gc.unfreeze()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
