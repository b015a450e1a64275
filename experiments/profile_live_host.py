"""Where does the forward thread's host time go in a live run? cProfile of one OLMoE-1B-7B decode at 5%
cache, prefetch none and next-layer (forced synthetic routing, as in the validation matrix); needs a GPU.

    python experiments/profile_live_host.py [--top 30] [--prefetch none --prefetch next-layer]
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--top", type=int, default=30)
    p.add_argument("--prefetch", action="append", default=None)
    args = p.parse_args(argv)
    from experiments.live_olmoe import build_olmoe
    from live.matrix import reconfigure, slots_for
    from live.runner import run_live

    t0 = time.time()
    built = build_olmoe("profile_live_host", smoke=False)
    if built is None:
        return 2
    dev, work, model, runtime = built.device, built.work, built.model, built.runtime
    shape, force, plans, n_keys = work.shape, work.force, work.plans, work.n_keys
    for i, pf in enumerate(args.prefetch or ("none", "next-layer")):
        reconfigure(runtime, slots_for(0.05, n_keys), "lru", "eager", pf)
        run_live(model, plans, vocab=shape.vocab, device=dev, runtime=runtime, force=force, warmup_passes=3,
                 rehearse=i == 0, seed=i)  # unprofiled: the same run, so the profiled one is warm
        reconfigure(runtime, slots_for(0.05, n_keys), "lru", "eager", pf)
        prof = cProfile.Profile()
        prof.enable()
        res = run_live(model, plans, vocab=shape.vocab, device=dev, runtime=runtime, force=force, warmup_passes=0,
                       seed=i)
        prof.disable()
        print(f"\n== prefetch {pf}: decode {res.decode_tok_s:.2f} tok/s (step median "
              f"{statistics.median(res.decode_s) * 1e3:.1f} ms, profiled), copies {res.stats.copies} "
              f"[{time.time() - t0:.0f}s]", flush=True)
        for key in ("tottime", "cumtime"):
            buf = io.StringIO()
            pstats.Stats(prof, stream=buf).sort_stats(key).print_stats(args.top)
            text = buf.getvalue()
            print(text[text.index("ncalls"):] if "ncalls" in text else text, flush=True)
    runtime.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
