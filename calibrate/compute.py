"""Expert FFN time vs routed tokens (GPU and host CPU) and the device's roofline ceilings.

An expert runs the way an offloaded MoE layer in eager torch runs it (Hugging Face style): gather
its routed tokens from the layer's hidden states, the FFN as F.linear calls on weights of the
model precision (gated SwiGLU down(silu(gate(x)) * up(x)) for 3 matrices, relu FFN for 2), scale
by the routing weights and index_add the result back. The bare FFN is timed too (raw data only).
Calls cycle through enough weight copies that repeats do not run from L2.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from emu.models import ModelSpec

from .bench import Bench, rotation_count
from .fit import spread

MiB = 1024 * 1024


def token_counts(quick: bool, top: int = 4096) -> list[int]:
    if quick:
        return [t for t in (1, 8, 64) if t <= top]
    out, t = [], 1
    while t <= top:
        out.append(t)
        t *= 2
    return out


def make_expert_weights(bench: Bench, spec: ModelSpec, dtype: Any,
                        intermediate: int | None = None) -> list[Any]:
    h, i = spec.hidden, intermediate or spec.expert_intermediate
    scale = 0.02
    if spec.expert_matrices >= 3:
        return [bench.randn(i, h, dtype=dtype, scale=scale), bench.randn(i, h, dtype=dtype, scale=scale),
                bench.randn(h, i, dtype=dtype, scale=scale)]
    return [bench.randn(i, h, dtype=dtype, scale=scale), bench.randn(h, i, dtype=dtype, scale=scale)]


def ffn(torch: Any, x: Any, weights: list[Any]) -> Any:
    f = torch.nn.functional
    if len(weights) == 3:
        gate, up, down = weights
        return f.linear(f.silu(f.linear(x, gate)) * f.linear(x, up), down)
    w_in, w_out = weights
    return f.linear(f.relu(f.linear(x, w_in)), w_out)


def device_hold_s(host_per_call_s: float, calls: int) -> float:
    """A sleep long enough for the host to queue `calls` calls behind it (twice the measured pace)."""
    return min(0.05, max(5e-4, 2.0 * host_per_call_s * calls + 2e-4))


#: a device sample whose hold ran out before the host had queued its calls is taken again with a hold this many
#: times longer, up to this many times: one slow spell of the host's must not turn a point, and with it the
#: whole table, into the host's pace
HOLD_GROWTH = 4.0
HOLD_RETRIES = 2
MAX_HOLD_S = 0.5


def held_sample(bench: Bench, fn: Callable[[int], Any], calls: int) -> float:
    """The device's own seconds per call of `calls` calls queued behind a hold (`Bench.time_loop`), taken again
    with a longer hold where the host needed longer than the hold; `bench.last_held` says whether it held."""
    hold = device_hold_s(bench.last_host_s, calls)
    seconds = bench.time_loop(fn, calls, hold_s=hold)
    for _ in range(HOLD_RETRIES):
        if bench.last_held:
            break
        hold = min(MAX_HOLD_S, hold * HOLD_GROWTH)
        seconds = bench.time_loop(fn, calls, hold_s=hold)
    return seconds


def round_robin(bench: Bench, fns: list[tuple[Any, Callable[[int], Any]]], repeats: int, calls: int,
                tick: Callable[[str], None], label: str) -> dict[Any, dict[str, Any]]:
    """Samples of every point, one round over all points per repeat.

    Host launch pace drifts on a shared machine for seconds at a time; sampling in rounds spreads
    that drift over all points, instead of bending one stretch of a table. Each sample is the
    steady pace of `calls` back-to-back calls (`samples_s`); on CUDA a second sample holds the
    device while the host queues (`device_s`: the device's own time, host launch cost hidden).
    """
    out: dict[Any, dict[str, Any]] = {key: {"samples_s": [], "host_s": [], "device_s": [], "held": True}
                                      for key, _ in fns}
    dev_calls = min(calls, 8)
    for r in range(repeats):
        for key, fn in fns:
            rec = out[key]
            rec["samples_s"].append(bench.time_loop(fn, calls))
            rec["host_s"].append(bench.last_host_s)
            if bench.is_cuda:
                rec["device_s"].append(held_sample(bench, fn, dev_calls))
                rec["held"] = rec["held"] and bench.last_held
        tick(f"{label} round {r + 1}/{repeats}")
    for rec in out.values():
        rec["median_s"] = spread(rec["samples_s"]).median
        if rec["device_s"]:
            rec["device_median_s"] = spread(rec["device_s"]).median
        else:
            del rec["device_s"]
            rec["held"] = False
    return out


def _points(bench: Bench, make_call: Callable[[int], Callable[[int], Any]], tokens: list[int], repeats: int,
            calls: int, tick: Callable[[str], None], label: str, max_call_s: float | None = None,
            ) -> list[dict[str, Any]]:
    """Per token count: `repeats` samples of seconds per call, each over `calls` back-to-back calls."""
    fns = []
    for t in tokens:
        fn = make_call(t)
        warm = bench.time_loop(fn, max(2, min(calls, 3)))
        fns.append((t, fn))
        if max_call_s is not None and warm > max_call_s:
            break  # larger token counts would take too long on this device; the table says where it stops
    res = round_robin(bench, fns, repeats, calls, tick, label)
    return [{"tokens": t, **res[t]} for t, _ in fns]


def measure_expert(bench: Bench, spec: ModelSpec, tokens: list[int], repeats: int, rotate_bytes: int,
                   tick: Callable[[str], None], dtype: Any = None, routed: bool = True,
                   max_call_s: float | None = None, label: str = "expert") -> list[dict[str, Any]]:
    torch = bench.torch
    dtype = dtype or torch.bfloat16
    itemsize = torch.tensor([], dtype=dtype).element_size()
    n_rot = rotation_count(spec.expert_params * itemsize, rotate_bytes)
    experts = [make_expert_weights(bench, spec, dtype) for _ in range(n_rot)]
    hidden_all = bench.randn(max(tokens), spec.hidden, dtype=dtype)

    def make_call(t: int) -> Callable[[int], Any]:
        x = hidden_all[:t]
        idx = torch.randperm(t, device=bench.device)
        gate_w = torch.rand(t, device=bench.device, dtype=torch.float32).to(dtype)
        out = torch.zeros_like(x)

        def call_routed(i: int) -> Any:
            xs = x.index_select(0, idx)
            y = ffn(torch, xs, experts[i % n_rot]) * gate_w[:, None]
            return out.index_add_(0, idx, y)

        def call_bare(i: int) -> Any:
            return ffn(torch, x, experts[i % n_rot])

        return call_routed if routed else call_bare

    calls = max(n_rot, 4) if bench.is_cuda else n_rot
    pts = _points(bench, make_call, tokens, repeats, calls, tick, label, max_call_s)
    for p in pts:
        p["rotation"] = n_rot
    return pts


def fused_counts(quick: bool, n_experts: int, top_k: int) -> list[int]:
    """Distinct experts per layer for the fused table: a batch-1 decode's top_k, and a few below and above it."""
    base = (1, top_k, 4 * top_k) if quick else (1, 2, 4, 8, 16, 32, 64, 128, 256)
    return sorted({min(k, n_experts) for k in (*base, top_k)})


def _grouped_mm(torch: Any) -> Any:
    """torch's grouped GEMM (2D input with offsets, 3D weights), or None where this torch has none."""
    f = getattr(torch.nn.functional, "grouped_mm", None)
    return f if f is not None else getattr(torch, "_grouped_mm", None)


def measure_fused(bench: Bench, spec: ModelSpec, counts: list[int], repeats: int, rotate_bytes: int,
                  tick: Callable[[str], None], dtype: Any = None, label: str = "fused") -> list[dict[str, Any]]:
    """A layer's experts as one grouped GEMM (what a fused runtime runs; transformers' grouped_mm experts):
    per count k, k distinct experts of one layer's pool, one routed token each, sorted by expert, the gate-up
    and down projections as two grouped GEMMs, the routing weights applied and the rows added back. Empty
    where this torch has no grouped GEMM."""
    torch = bench.torch
    grouped = _grouped_mm(torch)
    if grouped is None:
        return []
    dtype = dtype or torch.bfloat16
    f = torch.nn.functional
    h, i, e = spec.hidden, spec.expert_intermediate, spec.n_experts
    gated = spec.expert_matrices >= 3
    itemsize = torch.tensor([], dtype=dtype).element_size()
    n_rot = rotation_count(e * spec.expert_params * itemsize, rotate_bytes)
    pools = [(bench.randn(e, (2 if gated else 1) * i, h, dtype=dtype, scale=0.02),
              bench.randn(e, h, i, dtype=dtype, scale=0.02)) for _ in range(n_rot)]
    hidden_all = bench.randn(max(counts), h, dtype=dtype)
    gen = torch.Generator().manual_seed(0)

    def make_call(k: int) -> Callable[[int], Any]:
        ids = torch.randperm(e, generator=gen)[:k].to(bench.device)
        x = hidden_all[:k]
        weight = torch.rand(k, generator=gen).to(bench.device, dtype)
        out = torch.zeros_like(x)
        # histc: float input on the CPU, int on CUDA (as transformers' grouped_mm experts count them)
        as_bins = (lambda v: v.int()) if bench.is_cuda else (lambda v: v.float())

        def call(n: int) -> Any:
            gate_up, down = pools[n % n_rot]
            sorted_ids, perm = torch.sort(ids)
            xs = x[perm]
            offsets = torch.cumsum(torch.histc(as_bins(sorted_ids), bins=e, min=0, max=e - 1), dim=0,
                                   dtype=torch.int32)
            mid = grouped(xs, gate_up.transpose(-2, -1), offs=offsets)
            if gated:
                g, u = mid.chunk(2, dim=-1)
                mid = f.silu(g) * u
            else:
                mid = f.relu(mid)
            y = grouped(mid, down.transpose(-2, -1), offs=offsets) * weight[perm, None]
            return out.index_add_(0, perm, y)

        return call

    calls = max(n_rot, 4) if bench.is_cuda else n_rot
    pts = _points(bench, make_call, counts, repeats, calls, tick, label)
    for p in pts:
        p["rotation"] = n_rot
    return pts


def measure_ceilings(bench: Bench, quick: bool, repeats: int) -> dict[str, Any]:
    """Achieved device memory bandwidth (big device copy, bytes read + written) and bf16 matmul rate."""
    torch = bench.torch
    if bench.is_cuda:
        nbytes, n = (256 if quick else 1024) * MiB, 4096 if quick else 8192
    else:
        nbytes, n = (16 if quick else 256) * MiB, 256 if quick else 2048
    src = torch.empty(nbytes, dtype=torch.uint8, device=bench.device).random_(0, 256)
    dst = torch.empty_like(src)
    bench.time_loop(lambda i: dst.copy_(src), 2)
    copy_s = [bench.time_loop(lambda i: dst.copy_(src), 3) for _ in range(repeats)]
    a, b = bench.randn(n, n), bench.randn(n, n)
    bench.time_loop(lambda i: torch.matmul(a, b), 2)
    mm_s = [bench.time_loop(lambda i: torch.matmul(a, b), 3) for _ in range(repeats)]
    copy_sp, mm_sp = spread(copy_s), spread(mm_s)
    return {
        "copy_bytes": nbytes, "copy_samples_s": copy_s, "hbm_Bps": 2 * nbytes / copy_sp.median,
        "hbm_rel_spread": copy_sp.rel_spread,
        "matmul_n": n, "matmul_samples_s": mm_s, "flops_per_s": 2.0 * n ** 3 / mm_sp.median,
        "flops_rel_spread": mm_sp.rel_spread,
    }
