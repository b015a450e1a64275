"""How good is the live runtime itself? The two figures of issue 6, measured on a GPU; prints a table.

1. 100% cache: decode tok/s of the offloaded OLMoE-1B-7B (fused kernel, every expert preloaded, so
   every layer runs deferred: no routing readback) against the unmodified model (transformers'
   grouped_mm experts), own routing, the two models built from one seed and run in lockstep: a decode
   step of the unmodified model before each of the offloaded one's, on the same prompt.
2. 5% cache: decode time per step against max(compute, bytes copied / bandwidth): compute is a decode
   step of the same model with every expert resident (no copies; eager experts, as the 5% run), run in
   lockstep with the 5% run (`runtime_cal.InterleavedCalibration`'s full mode), bandwidth is the
   runtime's own expert copy timed in the same process (pinned host -> slot, CUDA events).

The host's pace switches within seconds on the H100 machines, so both sides of a figure are measured
step by step in lockstep; each figure is the median over `--repeats` such runs.

    python experiments/bench_live_runtime.py [--repeats 3] [--out results.json] [--only olmoe|mixtral]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

PROMPT, DECODE = 256, 64


def _copy_bandwidth(runtime: Any, n: int = 20) -> float:
    """Bytes/s of the runtime's own expert copy (host pinned -> slot 0) on its copy stream."""
    import torch

    if not runtime.cuda:  # --smoke: plain copies
        t = time.perf_counter()
        for i in range(n):
            runtime.slot_pack[0].copy_(runtime.host_pack[0, i % runtime.n_experts])
        return n * runtime.expert_bytes / (time.perf_counter() - t)
    s = runtime.copy_stream
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    with torch.cuda.stream(s):
        start.record(s)
        for i in range(n):
            e = i % runtime.n_experts
            runtime.slot_pack[0].copy_(runtime.host_pack[0, e], non_blocking=True)
        end.record(s)
    torch.cuda.synchronize()
    return n * runtime.expert_bytes / (start.elapsed_time(end) / 1e3)


def _free() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class _Beside:
    """A second request run a step at a time between the measured run's steps (`runner.Between`): the
    unmodified model's, on the measured run's prompt, so both sample the same seconds of the host's pace
    (it switches within seconds on the H100 machines: repeats seconds apart gave 0.68-0.91x)."""

    def __init__(self, model: Any, prompt: Any, n_decode: int, device: Any) -> None:
        from live.hooks import RoutingHooks
        from live.runner import PassClock, PassPlan, RequestSteps

        self.hooks = RoutingHooks(model, record=True, speculate=True)  # as run_live records the measured one
        self.clock = PassClock(device)
        self.req = RequestSteps(model, prompt, PassPlan(prompt.shape[1], n_decode), hooks=self.hooks,
                                clock=self.clock)

    def __call__(self, step: int) -> None:
        if step == 0:
            self.req.prefill()
        self.req.decode()

    def decode_s(self) -> list[float]:
        self.hooks.remove()
        return self.clock.seconds()[1:]


def runtime_vs_unmodified(repeats: int, t0: float, smoke: bool = False) -> dict[str, Any]:
    import torch

    from experiments.live_olmoe import target
    from live.models import build_model, live_shape
    from live.offload import ExpertOffload
    from live.runner import Between, PassPlan, attention_backends, generate, run_live

    scale, dev, dtype = target(smoke)
    shape = live_shape("olmoe-1b-7b", scale)
    plan = [PassPlan(PROMPT, DECODE)]
    unmod = build_model("olmoe-1b-7b", scale, dtype=dtype, seed=0).to(dev)
    off = build_model("olmoe-1b-7b", scale, dtype=dtype, seed=0)
    assert unmod.config._experts_implementation not in (None, "eager")
    runtime = ExpertOffload(off, shape.n_layers * shape.n_experts, eviction="lru", device=dev.type, kernel="fused")
    print(f"olmoe built twice [{time.time() - t0:.0f}s]", flush=True)
    rows: dict[str, list[float]] = {"unmodified": [], "offloaded": [], "ratio": []}
    deferred = []
    for r in range(repeats):
        prompt = torch.randint(0, shape.vocab, (1, PROMPT), generator=torch.Generator().manual_seed(r)).to(dev)
        with attention_backends(dev), torch.no_grad():  # the unmodified model's warm-up and rehearsal
            generate(unmod, prompt[:, :8], PassPlan(8, 2))
            generate(unmod, prompt, PassPlan(PROMPT, DECODE))
        beside = _Beside(unmod, prompt, DECODE, dev)  # run_live draws the same prompt from seed r first
        before = runtime.deferred_layers
        res = run_live(off, plan, vocab=shape.vocab, device=dev, runtime=runtime, warmup_passes=3, rehearse=True,
                       seed=r, preload=True, between=Between(beside, 1))
        unmod_s, off_s = beside.decode_s(), list(res.decode_s)
        if tuple(beside.req.out_ids) != res.tokens[0]:
            raise AssertionError("the offloaded model generated other tokens than the unmodified one")
        deferred.append(runtime.deferred_layers - before)
        rows["unmodified"].append(len(unmod_s) / sum(unmod_s))
        rows["offloaded"].append(len(off_s) / sum(off_s))
        rows["ratio"].append(sum(unmod_s) / sum(off_s))
        print(f"  repeat {r}: unmodified {rows['unmodified'][-1]:.2f} tok/s, offloaded {rows['offloaded'][-1]:.2f} "
              f"tok/s in lockstep ({rows['ratio'][-1]:.3f}x), copies {res.stats.copies}, hit rate "
              f"{res.stats.hit_rate:.3f} [{time.time() - t0:.0f}s]", flush=True)
    del unmod, off, runtime
    _free()
    return {"unmodified_tok_s": rows["unmodified"], "offloaded_tok_s": rows["offloaded"], "ratios": rows["ratio"],
            "median_unmodified": statistics.median(rows["unmodified"]),
            "median_offloaded": statistics.median(rows["offloaded"]), "ratio": statistics.median(rows["ratio"]),
            "deferred_layers": deferred}


def copy_bound(name: str, repeats: int, t0: float, smoke: bool = False) -> dict[str, Any]:
    """The 5% run with its compute reference in lockstep: one decode step of the same model with every expert
    resident (a sibling runtime, `runtime_cal.InterleavedCalibration`'s full mode) before each of its steps."""

    from experiments.live_olmoe import target
    from live.matrix import forced_workload, reconfigure, slots_for
    from live.models import build_model
    from live.offload import ExpertOffload
    from live.runner import Between, run_live
    from live.runtime_cal import InterleavedCalibration

    scale, dev, dtype = target(smoke)
    work = forced_workload(name, scale)
    shape, force, plans, n_keys = work.shape, work.force, work.plans, work.n_keys
    model = build_model(work.preset, scale, n_layers=work.n_layers, dtype=dtype, seed=0)
    runtime = ExpertOffload(model, slots_for(0.05, n_keys), eviction="lru", device=dev.type, seed=0, kernel="eager")
    cal_rt = runtime.sibling(n_keys)
    cal_rt.preload()
    lockstep = InterleavedCalibration(model, cal_rt, vocab=shape.vocab, device=dev, prompt_len=plans[0].prompt_len,
                                      steps=plans[0].n_decode)
    print(f"{name} built [{time.time() - t0:.0f}s]", flush=True)
    out: dict[str, list[float]] = {"step_5pct_s": [], "compute_step_s": [], "bandwidth_Bps": [], "ratio": []}
    res = None
    for r in range(repeats):
        reconfigure(runtime, slots_for(0.05, n_keys), "lru", "eager")
        out["bandwidth_Bps"].append(_copy_bandwidth(runtime))
        lockstep.begin()
        res = run_live(model, plans, vocab=shape.vocab, device=dev, runtime=runtime, force=force, warmup_passes=3,
                       rehearse=True, seed=r, between=Between(lockstep, 1))
        out["step_5pct_s"].append(statistics.mean(res.decode_s))
        out["compute_step_s"].append(lockstep.result()["full_step_s"])
        bound = max(out["compute_step_s"][-1], _decode_bytes_per_step(res, runtime) / out["bandwidth_Bps"][-1])
        out["ratio"].append(out["step_5pct_s"][-1] / bound)
        print(f"  repeat {r}: 5% step {out['step_5pct_s'][-1] * 1e3:.1f} ms, compute step in lockstep "
              f"{out['compute_step_s'][-1] * 1e3:.1f} ms, bw {out['bandwidth_Bps'][-1] / 1e9:.2f} GB/s, "
              f"copies {res.stats.copies}: {out['ratio'][-1]:.3f}x [{time.time() - t0:.0f}s]", flush=True)
    assert res is not None
    per_pass = _decode_bytes_per_step(res, runtime)
    k = sorted(range(repeats), key=lambda i: out["ratio"][i])[repeats // 2]  # the repeat of median ratio
    cal_rt.close()
    del model, runtime, cal_rt, lockstep
    _free()
    return {**out, "decode_bytes_per_step": per_pass, "median_step_s": out["step_5pct_s"][k],
            "median_compute_s": out["compute_step_s"][k], "median_bandwidth_Bps": out["bandwidth_Bps"][k],
            "bound_s": max(out["compute_step_s"][k], per_pass / out["bandwidth_Bps"][k]), "ratio": out["ratio"][k]}


def _decode_bytes_per_step(res: Any, runtime: Any) -> float:
    """Bytes the decode steps copied, per step: each decode access at 5% misses, so it is accesses x bytes
    over the decode passes of the recorded trace."""
    import numpy as np

    trace = res.trace
    n = 0
    for p in range(trace.n_passes):
        if trace.pass_phase[p] == 1:
            rows = trace.experts[trace.pass_offsets[p]: trace.pass_offsets[p + 1]]
            n += sum(len(np.unique(rows[:, layer])) for layer in range(trace.n_layers))
    steps = int((trace.pass_phase == 1).sum())
    return n * runtime.expert_bytes / steps


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--only", choices=("runtime", "olmoe", "mixtral"), action="append")
    p.add_argument("--smoke", action="store_true", help="tiny models on the CPU (checks the script, measures nothing)")
    args = p.parse_args(argv)
    import torch

    if not (args.smoke or torch.cuda.is_available()):
        print("bench_live_runtime: needs a CUDA GPU", file=sys.stderr)
        return 2
    t0 = time.time()
    parts = args.only or ("runtime", "olmoe", "mixtral")
    name0 = "cpu (smoke)" if args.smoke else torch.cuda.get_device_name(0)
    results: dict[str, Any] = {"device": name0, "torch": torch.__version__}
    if "runtime" in parts:
        results["100pct"] = runtime_vs_unmodified(args.repeats, t0, args.smoke)
    for name in ("olmoe", "mixtral"):
        if name in parts:
            results[f"5pct_{name}"] = copy_bound(name, args.repeats, t0, args.smoke)
    print("\n| figure | measured | target |\n| --- | --- | --- |")
    if "100pct" in results:
        r = results["100pct"]
        print(f"| 100% cache, OLMoE decode: offloaded {r['median_offloaded']:.2f} tok/s vs unmodified "
              f"{r['median_unmodified']:.2f} tok/s | {r['ratio']:.3f}x | >= 0.9x |")
    for name in ("olmoe", "mixtral"):
        r = results.get(f"5pct_{name}")
        if r:
            copy_ms = r["decode_bytes_per_step"] / r["median_bandwidth_Bps"] * 1e3
            print(f"| 5% cache, {name} decode step {r['median_step_s'] * 1e3:.1f} ms vs max(compute "
                  f"{r['median_compute_s'] * 1e3:.1f} ms, {r['decode_bytes_per_step'] / 1e6:.0f} MB / "
                  f"{r['median_bandwidth_Bps'] / 1e9:.2f} GB/s = {copy_ms:.1f} ms) "
                  f"| {r['ratio']:.3f}x | <= 1.3x |")
    if args.out:
        args.out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"total {time.time() - t0:.0f}s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
