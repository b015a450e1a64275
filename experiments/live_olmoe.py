"""The live benchmarks' common set-up: OLMoE-1B-7B on its forced synthetic routing, or Mixtral-8x7B's first
8 layers on the real GSM8K routing (as the validation matrix runs them), with an eager offloaded runtime
holding every expert's slot; a tiny CPU model with `smoke` (checks a script, measures nothing)."""

from __future__ import annotations

import sys
import time
from typing import Any

import attrs


@attrs.frozen
class LiveOLMoE:
    device: Any  # torch.device
    work: Any  # live.matrix.ForcedWorkload
    model: Any
    runtime: Any  # live.offload.ExpertOffload


def target(smoke: bool) -> tuple[str, Any, str]:
    """(scale, device, dtype): the full model in bf16 on the GPU, or with `smoke` a tiny one in fp32 on the CPU."""
    import torch

    return ("tiny", torch.device("cpu"), "fp32") if smoke else ("full", torch.device("cuda"), "bf16")


def build_olmoe(script: str, smoke: bool, name: str = "olmoe") -> LiveOLMoE | None:
    """The model (`name`: olmoe or mixtral, as `live.matrix` builds it) and its runtime, or None (with a
    message) where the script needs a GPU and has none."""
    import torch

    if not smoke and not torch.cuda.is_available():
        print(f"{script}: needs a CUDA GPU", file=sys.stderr)
        return None
    from live.matrix import forced_workload
    from live.models import build_model
    from live.offload import ExpertOffload

    scale, device, dtype = target(smoke)
    t0 = time.time()
    work = forced_workload(name, scale)
    model = build_model(work.preset, scale, n_layers=work.n_layers, dtype=dtype, seed=0)
    runtime = ExpertOffload(model, work.n_keys, eviction="lru", device=device.type, seed=0, kernel="eager")
    print(f"{name} built [{time.time() - t0:.0f}s]; hand-over {runtime.resolved_handover()}", flush=True)
    return LiveOLMoE(device, work, model, runtime)
