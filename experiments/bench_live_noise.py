"""Where does the live runtime's run-to-run spread come from? Runs one configuration many times under
different host settings, interleaved, and prints the spread of each; needs a GPU.

Decode on the H100 machines is paced by the host (Python and kernel launches), and identical runs
differed by 20-40% (OLMoE-1B-7B at 100% cache: 13.0, 13.5 and 17.5 tok/s in one lease). Modes:

- `free`: as the matrix runs (the OS places the threads);
- `pin1`: the forward thread pinned to one core (`os.sched_setaffinity` applies to the calling thread);
- `pin1-si`: pinned, and Python's GIL switch interval cut from 5 ms to 0.2 ms, for runs where a second
  Python thread (the prefetch watchdog) competes for the interpreter.

    python experiments/bench_live_noise.py [--repeats 4] [--out noise.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing


def _mode(mode: str, all_cores: set[int], core: int) -> None:
    os.sched_setaffinity(0, {core} if mode.startswith("pin1") else all_cores)
    sys.setswitchinterval(0.0002 if mode.endswith("-si") else 0.005)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=4)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("bench_live_noise: needs a CUDA GPU", file=sys.stderr)
        return 2
    from live.matrix import forced_workload, reconfigure, slots_for
    from live.models import build_model
    from live.offload import ExpertOffload
    from live.runner import run_live

    t0 = time.time()
    all_cores = os.sched_getaffinity(0)
    core = sorted(all_cores)[len(all_cores) // 2]
    dev = torch.device("cuda")
    work = forced_workload("olmoe")
    shape, force, plans, n_keys = work.shape, work.force, work.plans, work.n_keys
    model = build_model("olmoe-1b-7b", "full", dtype="bf16", seed=0)
    runtime = ExpertOffload(model, n_keys, eviction="lru", device="cuda", seed=0, kernel="eager")
    print(f"olmoe built, cores {sorted(all_cores)} [{time.time() - t0:.0f}s]", flush=True)
    rows: list[dict[str, Any]] = []
    jobs = [(cfg, mode) for _ in range(args.repeats) for cfg in ("100pct", "5pct_next_layer")
            for mode in ("free", "pin1", "pin1-si")]
    for i, (cfg, mode) in enumerate(jobs):
        _mode(mode, all_cores, core)
        if cfg == "100pct":
            reconfigure(runtime, n_keys, "lru", "eager", "none")
        else:
            reconfigure(runtime, slots_for(0.05, n_keys), "lru", "eager", "next-layer")
        res = run_live(model, plans, vocab=shape.vocab, device=dev, runtime=runtime, force=force, warmup_passes=3,
                       rehearse=i < 2, seed=i, preload=cfg == "100pct")
        row = {"config": cfg, "mode": mode, "ttft_s": res.ttft_s, "decode_tok_s": res.decode_tok_s,
               "step_median_s": statistics.median(res.decode_s), "copies": res.stats.copies}
        rows.append(row)
        print(f"  {cfg} {mode}: TTFT {res.ttft_s * 1e3:.1f} ms, decode {res.decode_tok_s:.2f} tok/s, step median "
              f"{row['step_median_s'] * 1e3:.1f} ms [{time.time() - t0:.0f}s]", flush=True)
    _mode("free", all_cores, core)
    runtime.close()
    print("\n| config | mode | runs | decode tok/s median (min-max) | spread | TTFT ms median (min-max) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for cfg in ("100pct", "5pct_next_layer"):
        for mode in ("free", "pin1", "pin1-si"):
            sel = [r for r in rows if r["config"] == cfg and r["mode"] == mode]
            d = [r["decode_tok_s"] for r in sel]
            tt = [r["ttft_s"] * 1e3 for r in sel]
            print(f"| {cfg} | {mode} | {len(sel)} | {statistics.median(d):.2f} ({min(d):.2f}-{max(d):.2f}) | "
                  f"{(max(d) - min(d)) / statistics.median(d):.1%} | {statistics.median(tt):.1f} "
                  f"({min(tt):.1f}-{max(tt):.1f}) |")
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1) + "\n")
    print(f"total {time.time() - t0:.0f}s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
