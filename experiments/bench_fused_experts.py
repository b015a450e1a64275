"""Device time of one sparse layer's experts: the fused kernel (the model's grouped-GEMM experts module, one call)
against the eager experts (one FFN per routed expert, as the runtime's eager kernel runs them), each captured
in a CUDA graph and replayed, so the time is the device's alone, no host launch in it. Needs a GPU.

The emulator prices a layer's experts as the sum of per-expert kernels (the device profile's expert table);
this shows how far that sum is from one grouped GEMM, by distinct experts k and rows (tokens x top_k).
`--pool N` (repeatable) times the grouped GEMM again over a pool of N slots with the routing pointed at k of
them, as the runtime runs it over its slot pool (hundreds of groups, most empty), where `emu calibrate` times
one layer's experts: whether the kernel's time grows with the groups it is given.

    python experiments/bench_fused_experts.py [--model olmoe-1b-7b --model qwen3-30b-a3b] [--reps 200]
        [--pool 256 --pool 1023]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing


def _graph_seconds(fn: Any, reps: int) -> float:
    """Seconds per call of `fn` replayed from a CUDA graph (device time, events around `reps` replays)."""
    import torch

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()  # the kernels' first calls, outside the capture
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    graph.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        graph.replay()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1e3 / reps


def _time_layer(experts: Any, hidden: Any, index: Any, weights: Any, reps: int) -> tuple[float, float, int]:
    """(fused seconds, eager seconds, distinct experts) of one layer's experts on these tokens."""
    import torch

    from live.offload import _expert_ffn

    routed = index.unique().tolist()
    rows = {e: (index == e).nonzero().unbind(1) for e in routed}  # (token, top-k position) of each row

    def fused() -> Any:
        return experts(hidden, index, weights)

    def eager() -> Any:
        out = torch.zeros_like(hidden)
        for e in routed:
            token_idx, pos = rows[e]
            y = _expert_ffn(hidden[token_idx], experts.gate_up_proj[e], experts.down_proj[e], experts.act_fn)
            out.index_add_(0, token_idx, y * weights[token_idx, pos, None])
        return out

    return _graph_seconds(fused, reps), _graph_seconds(eager, reps), len(routed)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", action="append", default=None)
    p.add_argument("--reps", type=int, default=200)
    p.add_argument("--pool", type=int, action="append", default=[],
                   help="also time the fused kernel over a pool of this many slots (at most 1023)")
    args = p.parse_args(argv)
    if any(not 1 <= n <= 1023 for n in args.pool):
        print("bench_fused_experts: --pool takes 1..1023 slots (one grouped GEMM's groups)", file=sys.stderr)
        return 2
    import torch

    if not torch.cuda.is_available():
        print("bench_fused_experts: needs a CUDA GPU", file=sys.stderr)
        return 2
    from live.hooks import sparse_blocks
    from live.models import build_model, live_shape

    for preset in args.model or ("olmoe-1b-7b", "qwen1.5-moe-a2.7b", "qwen3-30b-a3b"):
        shape = live_shape(preset, "full")
        model = build_model(preset, "full", n_layers=1, dtype="bf16", seed=0).to("cuda")
        experts = sparse_blocks(model)[0].experts
        gen = torch.Generator().manual_seed(0)
        print(f"\n== {preset}: {shape.n_experts} experts, top-{shape.top_k}, hidden {shape.hidden}; "
              f"device us per layer (CUDA graph replays)", flush=True)
        print(f"{'tokens':>6} {'k':>4} {'rows':>5} {'fused':>9} {'eager sum':>10} {'eager/k':>8} {'ratio':>6}")
        for tokens in (1, 2, 4, 8):
            index = torch.stack([torch.randperm(shape.n_experts, generator=gen)[: shape.top_k]
                                 for _ in range(tokens)]).to("cuda")
            weights = torch.rand((tokens, shape.top_k), generator=gen).to("cuda", torch.bfloat16)
            hidden = torch.randn((tokens, shape.hidden), generator=gen).to("cuda", torch.bfloat16)
            f, g, k = _time_layer(experts, hidden, index, weights, args.reps)
            print(f"{tokens:6d} {k:4d} {tokens * shape.top_k:5d} {f * 1e6:9.1f} {g * 1e6:10.1f} "
                  f"{g / k * 1e6:8.1f} {g / f:6.2f}", flush=True)
        if args.pool:
            _time_pools(experts, shape, sorted(set(args.pool)), args.reps, gen)
        model = experts = None
        torch.cuda.empty_cache()
    return 0


def _time_pools(experts: Any, shape: Any, pools: list[int], reps: int, gen: Any) -> None:
    """The fused kernel over pools of slots (the layer's own weights repeated), the routing on k of them."""
    import torch

    gate_up, down = experts.gate_up_proj, experts.down_proj
    dev, k = gate_up.device, 0
    print(f"{'tokens':>6} {'k':>4} " + " ".join(f"{'pool ' + str(n):>10}" for n in pools))
    for tokens in (1, 4):
        cells = []
        for n in pools:
            if n < shape.top_k * tokens:
                cells.append(f"{'-':>10}")
                continue
            reps_of = (n + shape.n_experts - 1) // shape.n_experts
            experts.gate_up_proj = torch.nn.Parameter(gate_up.repeat(reps_of, 1, 1)[:n], requires_grad=False)
            experts.down_proj = torch.nn.Parameter(down.repeat(reps_of, 1, 1)[:n], requires_grad=False)
            experts.num_experts = n
            g = torch.Generator().manual_seed(tokens)
            index = torch.stack([torch.randperm(n, generator=g)[: shape.top_k] for _ in range(tokens)]).to(dev)
            weights = torch.rand((tokens, shape.top_k), generator=gen).to(dev, torch.bfloat16)
            hidden = torch.randn((tokens, shape.hidden), generator=gen).to(dev, torch.bfloat16)
            secs = _graph_seconds(lambda: experts(hidden, index, weights), reps)  # noqa: B023 (called here)
            cells.append(f"{secs * 1e6:10.1f}")
            k = len(index.unique())
        print(f"{tokens:6d} {k:4d} " + " ".join(cells), flush=True)
    experts.gate_up_proj, experts.down_proj, experts.num_experts = gate_up, down, shape.n_experts


if __name__ == "__main__":
    raise SystemExit(main())
