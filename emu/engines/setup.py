"""Turn specs into the flat arrays the engines run on; both engines start from the same `SimInputs`."""

from __future__ import annotations

from typing import Any

import attrs
import numpy as np

from ..errors import EmuError
from ..kernel.layout import (
    ORDER_DEMAND_FIRST,
    ORDER_SUBMISSION,
    SC,
    SCAL,
    Timing,
    TraceView,
    id_bytes,
    new_cache_state,
)
from ..kernel.stack import Stack
from ..models import PRECISION_BITS, PRECISION_ORDER, ModelSpec
from ..policies.api import PolicyContext
from ..policies.registry import get_policy, reads_logits
from ..profile import (
    HardwareProfile,
    cpu_expert_curve,
    dense_table,
    expert_curve,
    fused_curve,
    model_overhead,
)
from ..runtime_profile import NO_RUNTIME, RuntimeProfile
from ..trace import RoutingTrace


@attrs.frozen
class PolicyChoice:
    name: str
    params: dict[str, float] = attrs.field(factory=dict)


@attrs.frozen
class StackChoice:
    """The five policy dimensions, each a registered name with resolved parameters."""

    eviction: PolicyChoice = PolicyChoice("lru")
    prefetch: PolicyChoice = PolicyChoice("none")
    miss: PolicyChoice = PolicyChoice("fetch")
    routing: PolicyChoice = PolicyChoice("standard")
    partition: PolicyChoice = PolicyChoice("global")


def precisions_for(model: ModelSpec) -> tuple[str, ...]:
    """The model's precision first, then each smaller form the host stores, largest first (`PRECISION_ORDER`): the
    forms a degraded fetch may copy. Every table the engines and policies index by precision (`Timing`,
    `prec_bytes`, `PolicyContext.precisions`) is built from this tuple, so a form the model does not store
    (`model.stored_precisions`) has no index and no miss policy can choose it; without the key, every precision
    at or below the model's is stored, as it always was."""
    own = PRECISION_BITS[model.precision]
    stored = model.stored_precisions
    rest = [p for p in PRECISION_ORDER if p != model.precision and PRECISION_BITS[p] <= own
            and (stored is None or p in stored)]
    return (model.precision, *rest)


@attrs.frozen(eq=False)
class SimInputs:
    model: ModelSpec
    profile: HardwareProfile
    trace: RoutingTrace
    capacity_bytes: int
    stack: StackChoice
    seed: int
    precisions: tuple[str, ...]
    tv: Any
    tm: Any
    runtime: RuntimeProfile = NO_RUNTIME


def trace_view(trace: RoutingTrace, logits: bool = True) -> Any:
    """The engines' view of a trace; with `logits` false, without the trace's full router logits (a stack
    that reads none is spared their float32 copy: for 1M OLMoE tokens 4 GiB)."""
    shape = trace.experts.shape
    scores = (np.ascontiguousarray(trace.scores, dtype=np.float32) if trace.scores is not None
              else np.zeros((0, shape[1], shape[2]), np.float32))
    experts, experts_hi = id_bytes(trace.experts, shape)
    predicted, predicted_hi = id_bytes(trace.predicted, shape)
    has_logits = logits and trace.logits is not None
    full = (np.ascontiguousarray(trace.logits, dtype=np.float32) if has_logits
            else np.zeros((0, shape[1], max(trace.n_experts, 1)), np.float32))
    dims = np.array([int(trace.scores is not None), int(trace.predicted is not None), trace.n_experts,
                     int(has_logits)], np.int64)
    return TraceView(experts, experts_hi, scores, predicted, predicted_hi,
                     np.ascontiguousarray(trace.pass_offsets, dtype=np.int64),
                     np.ascontiguousarray(trace.pass_phase, dtype=np.int8),
                     np.ascontiguousarray(trace.token_position, dtype=np.int32),
                     np.ascontiguousarray(trace.token_request, dtype=np.int32), dims, full)


def _pad(curves: list[Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    width = max((len(c.tokens) for c in curves if c is not None), default=1)
    tok = np.ones((len(curves), width))
    sec = np.zeros((len(curves), width))
    n = np.zeros(len(curves), np.int64)
    for row, c in enumerate(curves):
        if c is None:
            continue
        n[row] = len(c.tokens)
        tok[row, : n[row]] = c.tokens
        sec[row, : n[row]] = c.seconds
        tok[row, n[row]:] = c.tokens[-1]
        sec[row, n[row]:] = c.seconds[-1]
    return tok, sec, n


def timing(profile: HardwareProfile, model: ModelSpec, precisions: tuple[str, ...],
           runtime: RuntimeProfile = NO_RUNTIME, prefetch: str = "none") -> Any:
    """The device's times from the hardware profile and the host's from the runtime profile, as arrays;
    `prefetch`: the stack's prefetch policy (other than "none", its gates cost the runtime's `prefetch_gate_s`
    for that policy more)."""
    copy_s = np.array([profile.copy_seconds(model.expert_bytes(p)) for p in precisions])
    sizes = layer_prec_bytes(model, precisions)
    times = {int(b): profile.copy_seconds(int(b)) for b in np.unique(sizes)}  # one per distinct size
    layer_copy_s = np.array([[times[int(b)] for b in row] for row in sizes], np.float64)
    exp_tok, exp_s, exp_n = _pad([expert_curve(profile, model, p) for p in precisions])
    cpu_tok, cpu_s, cpu_n = _pad([cpu_expert_curve(profile, model, p) for p in precisions])
    # a fused runtime: the full precision's grouped GEMM must be measured; an entry at a lower precision without
    # a table of its own is priced as its own kernel
    fused = [fused_curve(profile, model, p) for p in precisions] if runtime.experts == "fused" else []
    if fused and fused[0] is None:
        raise EmuError(f"the runtime {runtime.name!r} runs a layer's experts as one grouped GEMM (experts = "
                       f"\"fused\"), and the hardware profile has no fused table for {model.name} in "
                       f"{precisions[0]} (emu calibrate measures one)", file=profile.source or None,
                       key=f"models.{model.name}.fused.{precisions[0]}")
    fz_tok, fz_s, fz_n = _pad(fused or [None] * len(precisions))
    dense = dense_table(profile, model)
    scal = np.zeros(len(SCAL))
    scal[SCAL.PASS_OVERHEAD_S] = model_overhead(profile, model, "pass_overhead_s")
    scal[SCAL.LAYER_OVERHEAD_S] = model_overhead(profile, model, "layer_overhead_s")
    scal[SCAL.N_DENSE_LAYERS] = float(model.n_dense_layers)
    host = runtime.resolve(model, prefetch)
    scal[SCAL.DECODE_COPY_ISSUE_S] = host.copy_s
    scal[SCAL.DECODE_PREFETCH_ISSUE_S] = host.prefetch_s
    scal[SCAL.PREFILL_COPY_ISSUE_S] = host.prefill_copy_s
    scal[SCAL.PREFILL_PREFETCH_ISSUE_S] = host.prefill_prefetch_s
    scal[SCAL.HOST_PASS_S] = host.pass_s
    scal[SCAL.HOST_LAYER_S] = host.layer_s
    # a prefetch policy's own work at every gate, where the stack has one
    gate_pf = host.prefetch_gate_s if prefetch != "none" else 0.0
    scal[SCAL.HOST_READBACK_S] = host.readback_s + host.gate_s + gate_pf
    scal[SCAL.DECODE_EXPERT_HOST_S] = host.expert_s
    scal[SCAL.BATCH_EXPERT_HOST_S] = host.batch_expert_s
    scal[SCAL.PREFILL_EXPERT_HOST_S] = host.prefill_expert_s
    scal[SCAL.PREFILL_HOST_LAYER_S] = host.prefill_layer_s
    scal[SCAL.PREFILL_HOST_READBACK_S] = host.prefill_readback_s + host.prefill_gate_s + gate_pf
    return Timing(copy_s, layer_copy_s, exp_tok, exp_s, exp_n, cpu_tok, cpu_s, cpu_n, fz_tok, fz_s, fz_n,
                  np.asarray(dense.tokens, float), np.asarray(dense.context, float),
                  np.ascontiguousarray(np.asarray(dense.seconds, float)), scal)


def layer_prec_bytes(model: ModelSpec, precisions: tuple[str, ...]) -> np.ndarray:
    """int64 [layer, precision]: bytes of one expert of each MoE layer at each precision."""
    return np.ascontiguousarray(np.array([model.layer_bytes(p) for p in precisions], np.int64).T)


#: the last few `timing` results, by (profile, runtime) identity and (model, precisions, prefetch policy) value,
#: each with the profile and runtime it was built from: many scenarios of one `emu run` or sweep share them, and
#: the engines and policies only read a Timing
_TIMINGS: dict[tuple[Any, ...], tuple[HardwareProfile, RuntimeProfile, Any]] = {}
_TIMINGS_KEPT = 16


def shared_timing(profile: HardwareProfile, model: ModelSpec, precisions: tuple[str, ...],
                  runtime: RuntimeProfile = NO_RUNTIME, prefetch: str = "none") -> Any:
    """`timing(...)`, built once for the same profile and runtime objects and an equal model."""
    key = (id(profile), id(runtime), model, precisions, prefetch)
    try:
        hit = _TIMINGS.get(key)
    except TypeError:  # a model holding an unhashable value: built afresh
        return timing(profile, model, precisions, runtime, prefetch)
    if hit is not None and hit[0] is profile and hit[1] is runtime:
        return hit[2]
    tm = timing(profile, model, precisions, runtime, prefetch)
    if len(_TIMINGS) >= _TIMINGS_KEPT:
        _TIMINGS.clear()
    _TIMINGS[key] = (profile, runtime, tm)
    return tm


def make_inputs(model: ModelSpec, profile: HardwareProfile, trace: RoutingTrace, capacity_bytes: int,
                stack: StackChoice, seed: int = 0, runtime: RuntimeProfile = NO_RUNTIME) -> SimInputs:
    precisions = precisions_for(model)
    return SimInputs(model=model, profile=profile, trace=trace, capacity_bytes=int(capacity_bytes),
                     stack=stack, seed=seed, precisions=precisions, tv=trace_view(trace, reads_logits(stack)),
                     tm=shared_timing(profile, model, precisions, runtime, stack.prefetch.name),
                     runtime=runtime)


def fresh_state(inputs: SimInputs) -> tuple[Any, Any]:
    """A new cache state and the policy stack (every hook and a fresh state per policy)."""
    model = inputs.model
    prec_bytes = np.array([model.expert_bytes(p) for p in inputs.precisions], np.int64)
    cs = new_cache_state(model.n_moe_layers, model.n_experts, model.top_k, inputs.trace.n_passes,
                         inputs.capacity_bytes, prec_bytes, inputs.profile.copy.h2d_engines,
                         dense_rows=inputs.tm.d_tok.shape[0],
                         layer_prec_bytes=layer_prec_bytes(model, inputs.precisions))
    ctx = PolicyContext(n_layers=model.n_moe_layers, n_experts=model.n_experts, top_k=model.top_k,
                        capacity_bytes=inputs.capacity_bytes, expert_bytes=int(prec_bytes[0]),
                        prec_bytes=prec_bytes, trace=inputs.tv, seed=inputs.seed,
                        precisions=inputs.precisions, timing=inputs.tm)
    chosen = {"eviction": inputs.stack.eviction, "prefetch": inputs.stack.prefetch, "miss": inputs.stack.miss,
              "routing": inputs.stack.routing, "partition": inputs.stack.partition}
    policies = {kind: get_policy(kind, choice.name) for kind, choice in chosen.items()}
    for kind, policy in policies.items():
        if policy.capabilities.needs_scores and inputs.trace.scores is None:
            raise EmuError(f"{kind} policy {policy.name!r} needs gate scores, but the trace has none (import a "
                           "trace with scores, or choose another policy)", key=f"policy.{kind}")
    states = {kind: policies[kind].init(ctx, dict(choice.params)) for kind, choice in chosen.items()}
    cs.sc[SC.MISS_EVENTS] = int(policies["eviction"].capabilities.miss_events)
    cs.sc[SC.COPY_ORDER] = ORDER_SUBMISSION if inputs.profile.copy.order == "submission" else ORDER_DEMAND_FIRST
    hooks = {name: hook for policy in policies.values() for name, hook in policy.hooks.items()}
    return cs, Stack(hooks, states)
