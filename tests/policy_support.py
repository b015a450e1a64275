"""Helpers for the policy tests: run a stack on a hand-built trace, or call one kernel directly."""

from __future__ import annotations

from typing import Any

import attrs
import numpy as np

from emu.engines.des.engine import run_des
from emu.engines.fast.engine import run_fast
from emu.engines.setup import PolicyChoice, StackChoice, fresh_state, make_inputs
from emu.metrics import build_result
from emu.models import ModelSpec
from emu.policies.api import PolicyContext
from emu.policies.registry import get_policy
from emu.profile import profile_from_dict
from emu.trace import RoutingTrace

from .conftest import hand_profile, make_trace, tiny_model

ENGINES = {"fast": run_fast, "des": run_des}


def cpu_profile(cpu_s: tuple[float, float] = (0.1, 4.0)) -> Any:
    """The hand profile (6-byte experts copy in 1 s, expert 0.5 s) plus a CPU expert curve: cpu_s[0]
    seconds for 1 token, cpu_s[1] for 8 tokens."""
    return profile_from_dict({
        "name": "hand-cpu", "copy": {"h2d_engines": 1, "latency_s": 0.0, "bw_pinned_Bps": 6.0,
                                     "bw_pageable_Bps": 1.0},
        "compute": {"expert_launch_s": 1.0, "hbm_Bps": 1.0, "flops_per_s": 1.0, "dense_layer_s": 1.0},
        "models": {"tiny": {
            "expert": {"bf16": {"tokens": [1, 8], "seconds": [0.5, 0.5]}},
            "cpu_expert": {"bf16": {"tokens": [1, 8], "seconds": list(cpu_s)}},
            "dense": {"tokens": [1, 1000], "context": [1, 100000], "seconds": [[0.25, 0.25], [0.25, 0.25]]},
            "pass_overhead_s": 0.0, "layer_overhead_s": 0.0}},
    }, file="hand-cpu.toml")


def trace_of(passes: list[list[list[list[int]]]], scores: list | None = None, predicted: list | None = None,
             n_experts: int = 4) -> RoutingTrace:
    """`make_trace` plus optional gate scores / speculator predictions shaped like the expert ids."""
    tr = make_trace(passes, n_experts=n_experts)
    if scores is not None:
        tr = attrs.evolve(tr, scores=np.array([t for p in scores for t in p], np.float16))
    if predicted is not None:
        tr = attrs.evolve(tr, predicted=np.array([t for p in predicted for t in p], np.int16))
    return tr.validate()


def choice(kind: str, spec: str | tuple[str, dict[str, Any]]) -> PolicyChoice:
    name, params = (spec, {}) if isinstance(spec, str) else spec
    return PolicyChoice(name, get_policy(kind, name).resolve_params(params, f"policy.{kind}", None))


def stack(**kinds: Any) -> StackChoice:
    return StackChoice(**{kind: choice(kind, spec) for kind, spec in kinds.items()})


def run(trace: RoutingTrace, slots: int, *, model: ModelSpec | None = None, profile: Any = None,
        engine: str = "fast", seed: int = 0, capacity_bytes: int | None = None,
        **kinds: Any) -> tuple[dict[str, Any], Any]:
    model = model or tiny_model(trace.n_layers, trace.n_experts, trace.top_k)
    profile = profile or hand_profile()
    cap = capacity_bytes if capacity_bytes is not None else slots * model.expert_bytes()
    inputs = make_inputs(model, profile, trace, cap, stack(**kinds), seed=seed)
    cs, end, timings = ENGINES[engine](inputs)
    return build_result(cs, end, trace, engine, timings).to_dict(), cs


def resident(cs: Any, n_experts: int) -> set[tuple[int, int]]:
    """(layer, expert) of every resident key."""
    return {(int(k) // n_experts, int(k) % n_experts) for k in np.flatnonzero(np.asarray(cs.status) == 1)}


def kernel_setup(trace: RoutingTrace, kind: str, spec: str | tuple[str, dict[str, Any]], slots: int = 4, *,
                 model: ModelSpec | None = None, profile: Any = None, seed: int = 0) -> tuple[Any, Any, Any, Any]:
    """(policy, its fresh state, a fresh cache state, the trace view) for calling one kernel by hand."""
    model = model or tiny_model(trace.n_layers, trace.n_experts, trace.top_k)
    pc = choice(kind, spec)
    inputs = make_inputs(model, profile or hand_profile(), trace, slots * model.expert_bytes(),
                         attrs.evolve(StackChoice(), **{kind: pc}), seed=seed)
    cs, _stack = fresh_state(inputs)
    prec_bytes = np.array([model.expert_bytes(p) for p in inputs.precisions], np.int64)
    ctx = PolicyContext(n_layers=model.n_moe_layers, n_experts=model.n_experts, top_k=model.top_k,
                        capacity_bytes=inputs.capacity_bytes, expert_bytes=int(prec_bytes[0]),
                        prec_bytes=prec_bytes, trace=inputs.tv, seed=seed, precisions=inputs.precisions,
                        timing=inputs.tm)
    policy = get_policy(kind, pc.name)
    return policy, policy.init(ctx, dict(pc.params)), cs, inputs.tv


def set_layer(cs: Any, layer: int, experts: list[int], tokens: list[int] | None = None,
              mass: list[float] | None = None) -> None:
    """Make `experts` the entries of the layer now at its gate (what routing would have written)."""
    from emu.kernel.layout import SC

    n_exp = cs.cur_key.shape[0]
    for j, e in enumerate(experts):
        cs.cur_key[j] = layer * n_exp + e
        cs.cur_expert[j] = e
        cs.cur_tokens[j] = 1 if tokens is None else tokens[j]
        cs.cur_mass[j] = 0.5 if mass is None else mass[j]
        cs.cur_sub[j] = -1
        cs.cur_where[j] = 0
    cs.sc[SC.NCUR] = len(experts)
    cs.sc[SC.LAYER] = layer
