"""Shared fixtures: tiny models and profiles whose numbers are easy to compute by hand."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from emu.models import ModelSpec
from emu.profile import profile_from_dict
from emu.runtime_profile import HostCosts, RuntimeProfile
from emu.trace import RoutingTrace

warnings.filterwarnings("ignore", message=".*First-class function type feature is experimental.*")


def tiny_model(layers: int = 2, experts: int = 4, top_k: int = 2) -> ModelSpec:
    """Experts of 6 bytes: 3 matrices of 1x1 weights in bf16."""
    return ModelSpec(name="tiny", n_moe_layers=layers, n_experts=experts, top_k=top_k, hidden=1,
                     expert_intermediate=1)


def hand_profile(copy_s: float = 1.0, expert_s: tuple[float, float] = (0.5, 0.75), dense_s: float = 0.25,
                 engines: int = 1, sustained_ratio: float | None = None,
                 fused_s: tuple[float, ...] | None = None) -> object:
    """One 6-byte expert copy takes `copy_s` (times `sustained_ratio`); an expert takes expert_s[0] for 1
    token, [1] for 2 tokens; `fused_s`: a layer's experts as one grouped GEMM take fused_s[0], [1], [2] for 1,
    2, 4 distinct experts."""
    fused = {} if fused_s is None else {"fused": {"bf16": {"experts": [1, 2, 4][: len(fused_s)],
                                                             "seconds": list(fused_s)}}}
    return profile_from_dict({
        "name": "hand", "copy": {"h2d_engines": engines, "latency_s": 0.0, "bw_pinned_Bps": 6.0 / copy_s,
                                 "bw_pageable_Bps": 1.0,
                                 **({} if sustained_ratio is None else {"sustained_ratio": sustained_ratio})},
        "compute": {"expert_launch_s": 1.0, "hbm_Bps": 1.0, "flops_per_s": 1.0, "dense_layer_s": 1.0},
        "models": {"tiny": {
            "expert": {"bf16": {"tokens": [1, 2], "seconds": list(expert_s)}},
            "dense": {"tokens": [1, 1000], "context": [1, 100000], "seconds": [[dense_s, dense_s], [dense_s, dense_s]]},
            "pass_overhead_s": 0.0, "layer_overhead_s": 0.0, **fused}},
    }, file="hand.toml")


def hand_runtime(experts: str = "per-expert", **host: float) -> RuntimeProfile:
    """A runtime profile with these host costs (keys of emu.runtime_profile.HOST_KEYS), the rest unset, running
    its experts one by one or fused (`experts`)."""
    return RuntimeProfile(name="hand", host=HostCosts(**host), experts=experts)


def make_trace(passes: list[list[list[list[int]]]], phases: list[int] | None = None,
               requests: list[int] | None = None, n_experts: int = 4) -> RoutingTrace:
    """passes[p][token][layer] = expert ids of that token at that layer."""
    rows = [tok for p in passes for tok in p]
    experts = np.array(rows, dtype=np.int16)
    offsets = np.cumsum([0] + [len(p) for p in passes]).astype(np.int64)
    phases = phases if phases is not None else [1] * len(passes)
    req = np.zeros(len(rows), np.int32) if requests is None else np.repeat(
        np.array(requests, np.int32), [len(p) for p in passes])
    pos = np.zeros(len(rows), np.int32)
    seen: dict[int, int] = {}
    for i, r in enumerate(req):
        pos[i] = seen.get(int(r), 0)
        seen[int(r)] = pos[i] + 1
    return RoutingTrace(experts=experts, pass_offsets=offsets, pass_phase=np.array(phases, np.int8),
                        token_request=req, token_position=pos, n_experts=n_experts).validate()


@pytest.fixture
def engines():
    from emu.engines.des.engine import run_des
    from emu.engines.fast.engine import run_fast
    from emu.engines.reference.engine import run_reference

    return {"des": run_des, "fast": run_fast, "reference": run_reference}
