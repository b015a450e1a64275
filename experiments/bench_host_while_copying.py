"""Is the live runtime's host-paced decode step slower while host-to-device copies stream? OLMoE-1B-7B with
every expert resident (no copy of its own), decode steps alternating: with a flood of expert-sized pinned
copies on another stream (queued before the step, long enough to outlast it), and without (the flood of
the step before drained first). Needs a GPU.

    python experiments/bench_host_while_copying.py [--steps 64] [--mb 12.6]

Prints both step times (median, mean) and their ratio: the host's slowdown while the copy engine is busy,
which `bench_copy_interference.py` (tight loops of tiny launches) does not see.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=64)
    p.add_argument("--mb", type=float, default=12.6)
    p.add_argument("--flood-ms", type=float, default=150.0, help="copy time queued before a flooded step")
    args = p.parse_args(argv)
    import torch

    from experiments.live_olmoe import build_olmoe
    from live.runner import PassPlan, RequestSteps, attention_backends

    built = build_olmoe("bench_host_while_copying", smoke=False)
    if built is None:
        return 2
    dev, shape, model, runtime = built.device, built.work.shape, built.model, built.runtime
    runtime.preload()
    n = int(args.mb * 1e6) // 2
    src = torch.empty(n, dtype=torch.bfloat16, pin_memory=True)
    dst = torch.empty(n, dtype=torch.bfloat16, device=dev)
    stream = torch.cuda.Stream()
    copies = max(1, int(args.flood_ms / 1e3 * 55e9 / (2 * n)))
    print(f"a flood is {copies} copies of {args.mb} MB", flush=True)
    prompt = torch.randint(0, shape.vocab, (1, 256), generator=torch.Generator().manual_seed(0)).to(dev)
    times: dict[bool, list[float]] = {True: [], False: []}
    with attention_backends(dev), torch.no_grad():
        req = RequestSteps(model, prompt, PassPlan(256, args.steps + 4), runtime=runtime)
        req.prefill()
        for _ in range(4):  # warm
            req.decode()
        for step in range(args.steps):
            flood = step % 2 == 0
            stream.synchronize()
            torch.cuda.synchronize()
            if flood:
                with torch.cuda.stream(stream):
                    for _ in range(copies):
                        dst.copy_(src, non_blocking=True)
            t = time.perf_counter()
            req.decode()  # ends on the sampled token's read back: a sync of the compute stream only
            times[flood].append(time.perf_counter() - t)
        busy = not stream.query()
    stream.synchronize()
    on, off = times[True], times[False]
    print(f"\ndecode step with copies streaming: median {statistics.median(on) * 1e3:.2f} ms, mean "
          f"{statistics.fmean(on) * 1e3:.2f} ms ({len(on)} steps; the flood outlasted the last: {busy})")
    print(f"decode step without:              median {statistics.median(off) * 1e3:.2f} ms, mean "
          f"{statistics.fmean(off) * 1e3:.2f} ms ({len(off)} steps)")
    pairs = [a / b for a, b in zip(on, off)]
    print(f"ratio with / without: median of medians {statistics.median(on) / statistics.median(off):.3f}, "
          f"median of step pairs {statistics.median(pairs):.3f}")
    runtime.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
