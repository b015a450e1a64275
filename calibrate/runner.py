"""The calibration pipeline: every measurement, in order, into one raw-measurements dict."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

import attrs

from emu.progress import Progress

from . import METHOD_VERSION
from .shapes import CalibModel, floor_probe
from .transfers import COPY_ROUNDS

MiB = 1024 * 1024


@attrs.frozen
class Settings:
    models: tuple[CalibModel, ...]
    device: str = "cuda"
    quick: bool = False
    repeats: int = 10
    #: skip the rest of a CPU-expert sweep once one call takes longer than this
    cpu_max_call_s: float = 0.5

    @property
    def cuda(self) -> bool:
        return self.device.startswith("cuda")

    @property
    def rotate_bytes(self) -> int:
        """Operand bytes cycled through between repeats: several times the GPU's 50 MB L2."""
        if self.cuda:
            return (128 if self.quick else 256) * MiB
        return (4 if self.quick else 64) * MiB


def _count_steps(s: Settings, n_sizes: int, cpu_repeats: int) -> int:
    copies = COPY_ROUNDS
    concurrency = 5 if s.cuda else 0  # 4 concurrency figures and the sustained copies
    per_model = 3 * s.repeats + 2 * cpu_repeats + 2
    return copies + concurrency + 2 + len(s.models) * per_model + 1


def run_calibration(s: Settings, progress: bool = True) -> dict[str, Any]:
    """Measure everything; returns the raw measurements (the profile is derived from them)."""
    from .bench import Bench
    from .compute import fused_counts, measure_ceilings, measure_expert, measure_fused, token_counts
    from .dense import (
        context_lengths,
        dense_token_counts,
        measure_dense,
        measure_layer_overhead,
        measure_pass_overhead,
    )
    from .device import clocks, device_facts
    from .transfers import Pools, copy_plan, measure_concurrency, measure_copies, measure_sustained

    started = time.perf_counter()
    bench = Bench(s.device)
    cpu = bench if not s.cuda else Bench("cpu")
    torch = bench.torch
    plan = copy_plan(s.device, s.quick, s.repeats)
    tokens = token_counts(s.quick)
    dense_tokens, contexts = dense_token_counts(s.quick), context_lengths(s.quick)
    cpu_tokens = [1, 8] if s.quick else [1, 4, 16, 64]
    cpu_reps = min(3, s.repeats)
    tick = Progress(_count_steps(s, len(plan.sizes), cpu_reps), label="calibrate", enabled=progress)

    raw: dict[str, Any] = {
        "method_version": METHOD_VERSION,
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "settings": {"device": s.device, "quick": s.quick, "repeats": s.repeats,
                     "rotate_bytes": s.rotate_bytes, "models": [m.name for m in s.models],
                     "cpu_max_call_s": s.cpu_max_call_s},
        "device": device_facts(s.device),
        "models": {},
    }
    if s.cuda:
        raw["clocks_start"] = clocks(bench.device.index or 0)

    pools = Pools(bench, plan.pool_bytes)
    raw["copy_plan"] = attrs.asdict(plan)
    raw["copies"] = measure_copies(bench, plan, pools, tick)
    if s.cuda:
        raw["concurrency"] = measure_concurrency(bench, plan, pools, tick)
        raw["sustained"] = measure_sustained(bench, pools, plan.sizes[-1], plan.sustained_seconds)
        tick("sustained copies")
    del pools
    _free(torch, s.cuda)

    raw["ceilings"] = measure_ceilings(bench, s.quick, max(3, s.repeats // 2))
    tick("ceilings")
    probe = floor_probe()
    raw["floors"] = {
        "expert": measure_expert(bench, probe.spec, [1], s.repeats, s.rotate_bytes, lambda _: None),
        "dense": measure_dense(bench, probe, [1], [128], s.repeats, s.rotate_bytes, lambda _: None),
        "layer_overhead": measure_layer_overhead(bench, probe, s.repeats),
        "pass_overhead": measure_pass_overhead(bench, probe, s.repeats, s.rotate_bytes),
    }
    tick("floors")

    for model in s.models:
        name = model.name
        m: dict[str, Any] = {"shape": {**model.spec.to_dict(), **attrs.asdict(model.attention)}}
        m["expert_bf16"] = measure_expert(bench, model.spec, tokens, s.repeats, s.rotate_bytes, tick,
                                          label=f"expert {name}")
        m["expert_bf16_bare"] = measure_expert(bench, model.spec, tokens, s.repeats, s.rotate_bytes, tick,
                                               routed=False, label=f"bare expert {name}")
        _free(torch, s.cuda)
        try:  # an optional table: a torch whose grouped GEMM refuses this shape leaves it out, with the reason
            m["fused_bf16"] = measure_fused(bench, model.spec, fused_counts(s.quick, model.spec.n_experts,
                                                                            model.spec.top_k),
                                            s.repeats, s.rotate_bytes, tick, label=f"fused {name}")
        except RuntimeError as err:
            m["fused_bf16"], m["fused_bf16_error"] = [], str(err).splitlines()[0][:300]
        _free(torch, s.cuda)
        m["dense"] = measure_dense(bench, model, dense_tokens, contexts, s.repeats, s.rotate_bytes, tick)
        _free(torch, s.cuda)
        m["layer_overhead"] = measure_layer_overhead(bench, model, s.repeats)
        m["pass_overhead"] = measure_pass_overhead(bench, model, s.repeats, s.rotate_bytes)
        tick(f"overheads {name}")
        _free(torch, s.cuda)
        cpu_rot = (4 if s.quick else 64) * MiB
        for prec, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
            m[f"cpu_expert_{prec}"] = measure_expert(cpu, model.spec, cpu_tokens, cpu_reps, cpu_rot, tick,
                                                     dtype=dtype, max_call_s=s.cpu_max_call_s,
                                                     label=f"cpu {prec} expert {name}")
        tick(f"cpu experts {name}")
        if s.cuda:
            m["clocks_after"] = clocks(bench.device.index or 0)
        raw["models"][name] = m
    if s.cuda:
        raw["clocks_end"] = clocks(bench.device.index or 0)
    raw["elapsed_s"] = time.perf_counter() - started
    tick("done")
    tick.close()
    return raw


def _free(torch: Any, cuda: bool) -> None:
    import gc

    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
