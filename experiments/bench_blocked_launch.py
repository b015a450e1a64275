"""Do kernel launches cost the host more while their stream waits for a copy? The live runtime's compute
stream waits on a copy's event for every miss (`ExpertOffload._compute`), and the forward thread goes on
launching behind that wait. This times, from Python, `--launches` expert-sized launch sequences (a decode
expert: index, two GEMMs, activation, products, as `_compute` runs them) and tiny kernel launches, with the
compute stream:

- `idle`: nothing queued anywhere;
- `copying`: a copy streams on another stream, the compute stream does not wait for it;
- `waiting`: the compute stream waits on that copy's event (its launches queue behind the wait);
- `sleeping`: the compute stream busy with a long kernel instead (launches queue behind a kernel).

Host microseconds per launch sequence (and per tiny launch), medians over `--repeats` alternating rounds.
Needs a GPU.

    python experiments/bench_blocked_launch.py [--launches 64] [--repeats 30]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--launches", type=int, default=64)
    p.add_argument("--repeats", type=int, default=30)
    args = p.parse_args(argv)
    import torch
    from torch import nn

    if not torch.cuda.is_available():
        print("bench_blocked_launch: needs a CUDA GPU", file=sys.stderr)
        return 2
    dev = torch.device("cuda")
    compute = torch.cuda.current_stream()
    copy_stream = torch.cuda.Stream()
    big = 352 * 2**20 // 2  # a Mixtral expert's bytes: ~6.5 ms of copy, outlasting each measurement
    src = torch.empty(big, dtype=torch.bfloat16, pin_memory=True)
    dst = torch.empty(big, dtype=torch.bfloat16, device=dev)
    w_gu = torch.randn(2048, 2048, dtype=torch.bfloat16, device=dev)
    w_dn = torch.randn(2048, 1024, dtype=torch.bfloat16, device=dev)
    hidden = torch.randn(1, 2048, dtype=torch.bfloat16, device=dev)
    weights = torch.rand(1, 8, dtype=torch.bfloat16, device=dev)
    rows = (torch.zeros(1, dtype=torch.int64, device=dev), torch.zeros(1, dtype=torch.int64, device=dev))
    x = torch.zeros(1, device=dev)

    def experts() -> None:
        top_k_pos, token_idx = rows
        for _ in range(args.launches):
            h = hidden[token_idx]
            gate, up = nn.functional.linear(h, w_gu).chunk(2, dim=-1)
            out = nn.functional.linear(nn.functional.silu(gate) * up, w_dn)
            _ = out * weights[token_idx, top_k_pos, None]

    def tiny() -> None:
        nonlocal x
        for _ in range(args.launches * 8):
            x = x + 1

    def timed(fn, setup: str) -> float:
        torch.cuda.synchronize()
        if setup in ("copying", "waiting"):
            with torch.cuda.stream(copy_stream):
                dst.copy_(src, non_blocking=True)
                done = torch.cuda.Event()
                done.record(copy_stream)
            if setup == "waiting":
                compute.wait_event(done)
        elif setup == "sleeping":
            torch.cuda._sleep(20_000_000)  # ~10 ms at the H100's clock
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        torch.cuda.synchronize()
        return dt

    setups = ("idle", "copying", "waiting", "sleeping")
    for fn in (experts, tiny):  # warm
        for s in setups:
            timed(fn, s)
    res: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.repeats):
        for fn in (experts, tiny):
            for s in setups:
                res.setdefault((fn.__name__, s), []).append(timed(fn, s))
    print(f"host us per launch sequence (experts: {args.launches} expert computations; tiny: "
          f"{args.launches * 8} one-kernel launches), median of {args.repeats}")
    for name, per in (("experts", args.launches), ("tiny", args.launches * 8)):
        base = statistics.median(res[(name, "idle")])
        cells = []
        for s in setups:
            m = statistics.median(res[(name, s)])
            cells.append(f"{s} {m / per * 1e6:7.2f} us ({m / base:4.2f}x)")
        print(f"{name:8s} " + "  ".join(cells))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
