"""The SimPy reference and the numba fast engine give the same numbers on random small scenarios.

Both engines drive the same core (`core.instant`), so any difference comes from how they keep time:
the order of same-instant events, which engine a copy lands on, when the run ends. Hypothesis draws
models, capacities (in bytes, also below top_k experts), copy and compute profiles, batch sizes,
traces and one policy of every kind from the registry (so a new policy is covered without editing
this file); a failure prints the shrunk scenario. Counters must be equal, times equal within 1e-9
relative.
"""

from __future__ import annotations

import math
from typing import Any

import attrs
import numpy as np
import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from emu.engines.des.engine import run_des
from emu.engines.fast.engine import run_fast
from emu.engines.setup import PolicyChoice, StackChoice, make_inputs
from emu.errors import EmuError
from emu.metrics import build_result
from emu.models import ModelSpec
from emu.policies.api import KINDS
from emu.policies.registry import REGISTRY
from emu.profile import profile_from_dict
from emu.runtime_profile import HostCosts, RuntimeProfile
from emu.trace.synthetic import SyntheticParams, generate

RTOL = 1e-9
_STACK_FIELD = {"eviction": "eviction", "prefetch": "prefetch", "miss": "miss", "routing": "routing",
                "partition": "partition"}


@attrs.frozen
class Scenario:
    """Everything one equivalence case needs; its repr is what a failure prints."""

    layers: int
    experts: int
    top_k: int
    hidden: int
    precision: str
    capacity_experts: float  # capacity in units of one expert's bytes (may be fractional)
    engines: int
    latency_s: float
    bw_Bps: float
    expert_s: tuple[float, float, float]  # at 1, 4 and 16 tokens
    dense_s: tuple[float, float]  # at 1 and 64 tokens
    cpu: bool
    pass_overhead_s: float
    layer_overhead_s: float
    host: tuple[tuple[str, float], ...]  # the runtime profile's host costs (emu/runtime_profile.py)
    copy_order: str  # copy.order of the hardware profile
    tokens: int
    prompt_len: int
    output_len: int
    batch_size: int
    reuse: float
    scores: bool
    predicted: bool
    seed: int
    stack: tuple[tuple[str, str, tuple[tuple[str, float], ...]], ...]
    #: the model's `stored_precisions` (None: every smaller form); `scenarios` never draws it, so the other tests'
    #: draws are as they were (tests/test_stored_precisions.py sets it)
    stored: tuple[str, ...] | None = None


def model_of(s: Scenario) -> ModelSpec:
    return ModelSpec(name="eqv", n_moe_layers=s.layers, n_experts=s.experts, top_k=s.top_k, hidden=s.hidden,
                     expert_intermediate=2, precision=s.precision, stored_precisions=s.stored)


def profile_of(s: Scenario) -> Any:
    models: dict[str, Any] = {"eqv": {
        "expert": {s.precision: {"tokens": [1, 4, 16], "seconds": list(s.expert_s)}},
        "dense": {"tokens": [1, 64], "context": [1, 4096], "seconds": [[s.dense_s[0], s.dense_s[0] * 1.5],
                                                                        [s.dense_s[1], s.dense_s[1] * 1.5]]},
        "pass_overhead_s": s.pass_overhead_s, "layer_overhead_s": s.layer_overhead_s}}
    compute: dict[str, Any] = {"expert_launch_s": s.expert_s[0], "hbm_Bps": 1e12, "flops_per_s": 1e15,
                               "dense_layer_s": s.dense_s[0]}
    if s.cpu:
        compute["cpu_flops_per_s"] = 1e6
    return profile_from_dict({
        "name": "eqv", "copy": {"h2d_engines": s.engines, "latency_s": s.latency_s, "bw_pinned_Bps": s.bw_Bps,
                                "bw_pageable_Bps": s.bw_Bps / 4, "order": s.copy_order},
        "compute": compute, "models": models}, file="eqv.toml")


def inputs_of(s: Scenario) -> Any:
    model = model_of(s)
    trace = generate(model, SyntheticParams(prompt_len=s.prompt_len, output_len=s.output_len,
                                            batch_size=s.batch_size, reuse_prob=s.reuse, seed=s.seed,
                                            with_scores=s.scores,
                                            predictor_accuracy=0.7 if s.predicted else None), s.tokens)
    stack = StackChoice(**{_STACK_FIELD[kind]: PolicyChoice(name, dict(params)) for kind, name, params in s.stack})
    capacity = max(int(s.capacity_experts * model.expert_bytes()), 1)
    return make_inputs(model, profile_of(s), trace, capacity, stack, seed=s.seed, runtime=runtime_of(s))


def runtime_of(s: Scenario) -> RuntimeProfile:
    return RuntimeProfile(name="eqv", host=HostCosts(**dict(s.host)))


#: host costs a drawn runtime may set, with the values drawn for each (None: unset, the fallback applies)
_HOST_VALUES: dict[str, list[float | None]] = {
    "pass_s": [None, 0.0, 3e-5], "layer_s": [None, 0.0, 2e-5, 1e-3], "readback_s": [None, 1e-5],
    "gate_s": [None, 4e-6], "expert_s": [None, 0.0, 5e-6, 2e-3], "copy_s": [None, 0.0, 3e-6, 1e-3],
    "prefetch_s": [None, None, 0.0, 2e-3], "prefill_expert_s": [None, None, 1e-4],
    "batch_expert_s": [None, None, 0.0, 3e-4],
    "prefill_copy_s": [None, None, 0.0, 5e-4], "prefill_prefetch_s": [None, None, 1e-4],
}


def _params(draw: Any, policy: Any) -> tuple[tuple[str, float], ...]:
    out = []
    for key, spec in sorted(policy.params.items()):
        lo = spec.lo if math.isfinite(spec.lo) else 0.0
        hi = spec.hi if math.isfinite(spec.hi) and spec.hi - lo <= 100 else lo + 4
        if spec.integer:
            value = float(draw(st.integers(math.ceil(lo), math.floor(hi))))
        else:
            value = round(draw(st.floats(lo, hi, allow_nan=False)), 3)  # values a scenario file would hold
            value = min(max(value, lo), hi)
        out.append((key, value))
    return tuple(out)


def _host(draw: Any) -> tuple[tuple[str, float], ...]:
    """No runtime (a third of the cases), else each host cost drawn from `_HOST_VALUES`."""
    if draw(st.integers(0, 2)) == 0:
        return ()
    out = []
    for key, values in _HOST_VALUES.items():
        value = draw(st.sampled_from(values))
        if value is not None:
            out.append((key, value))
    return tuple(out)


@st.composite
def scenarios(draw: Any, fixed: tuple[str, str] | None = None) -> Scenario:
    """`fixed` = (kind, name) pins one policy; the other kinds are drawn from the registry."""
    experts = draw(st.integers(2, 8))
    top_k = draw(st.integers(1, min(experts, 3)))
    stack = []
    for kind in KINDS:
        name = fixed[1] if fixed is not None and fixed[0] == kind else draw(st.sampled_from(sorted(REGISTRY[kind])))
        stack.append((kind, name, _params(draw, REGISTRY[kind][name])))
    needs_scores = any(REGISTRY[kind][name].needs_scores for kind, name, _p in stack)
    times = st.floats(1e-6, 1e-3)
    e1 = draw(times)
    return Scenario(
        layers=draw(st.integers(1, 3)), experts=experts, top_k=top_k, hidden=draw(st.integers(1, 8)),
        precision=draw(st.sampled_from(["bf16", "fp8"])),
        capacity_experts=draw(st.one_of(st.floats(1.0, float(top_k) + 0.5), st.floats(1.0, 3.0 * experts))),
        engines=draw(st.integers(1, 2)), latency_s=draw(st.sampled_from([0.0, 1e-5, 3e-4])),
        bw_Bps=draw(st.sampled_from([1e3, 2.5e4, 1e6])),
        expert_s=(e1, e1 * draw(st.floats(1.0, 3.0)), e1 * draw(st.floats(3.0, 9.0))),
        dense_s=(draw(times), draw(times)), cpu=draw(st.booleans()),
        pass_overhead_s=draw(st.sampled_from([0.0, 2e-5])), layer_overhead_s=draw(st.sampled_from([0.0, 1e-6])),
        host=_host(draw), copy_order=draw(st.sampled_from(["demand-first", "demand-first", "submission"])),
        tokens=draw(st.integers(1, 40)), prompt_len=draw(st.integers(0, 6)), output_len=draw(st.integers(1, 6)),
        batch_size=draw(st.integers(1, 3)), reuse=draw(st.sampled_from([0.0, 0.5, 0.9])),
        scores=needs_scores or draw(st.booleans()), predicted=draw(st.booleans()),
        seed=draw(st.integers(0, 2**16)), stack=tuple(stack))


def _run(run: Any, inputs: Any) -> tuple[Any, float] | str:
    try:
        cs, end, _timings = run(inputs)
    except EmuError as err:
        return f"EmuError: {err}"
    return cs, end


def assert_same(s: Scenario) -> None:
    inputs = inputs_of(s)
    note(f"trace: {inputs.trace.n_tokens} tokens, {inputs.trace.n_passes} passes; capacity "
         f"{inputs.capacity_bytes} B = {inputs.capacity_bytes / inputs.model.expert_bytes():.2f} experts")
    fast = _run(run_fast, inputs)
    des = _run(run_des, inputs)
    if isinstance(fast, str) or isinstance(des, str):
        assert fast == des, f"one engine failed: fast={fast!r} des={des!r}"
        return
    (cf, ef), (cd, ed) = fast, des
    np.testing.assert_array_equal(cf.stats_i, cd.stats_i, err_msg="integer counters differ")
    np.testing.assert_allclose(cf.stats_f, cd.stats_f, rtol=RTOL, atol=0, err_msg="float counters differ")
    np.testing.assert_allclose(cf.pass_start, cd.pass_start, rtol=RTOL, atol=0, err_msg="pass starts differ")
    np.testing.assert_allclose(cf.pass_end, cd.pass_end, rtol=RTOL, atol=0, err_msg="pass ends differ")
    np.testing.assert_allclose(cf.fc, cd.fc, rtol=RTOL, atol=0, err_msg="busy times differ")
    np.testing.assert_array_equal(cf.sc, cd.sc, err_msg="final scalar state differs")
    np.testing.assert_array_equal(cf.status, cd.status, err_msg="final residency differs")
    assert math.isclose(ef, ed, rel_tol=RTOL, abs_tol=0), f"end time fast={ef!r} des={ed!r}"
    rf = build_result(cf, ef, inputs.trace, "fast", {}).to_dict()
    rd = build_result(cd, ed, inputs.trace, "des", {}).to_dict()
    for key in ("engine", "timings"):
        rf.pop(key)
        rd.pop(key)
    _same_record(rf, rd, "result")


def _same_record(a: Any, b: Any, where: str) -> None:
    """Integers (and structure) equal, floats within RTOL."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for key in a:
            _same_record(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _same_record(x, y, f"{where}[{i}]")
    elif isinstance(a, float) or isinstance(b, float):
        assert math.isclose(a, b, rel_tol=RTOL, abs_tol=0), f"{where}: fast={a!r} des={b!r}"
    else:
        assert a == b, f"{where}: fast={a!r} des={b!r}"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_engines_agree_on_random_scenarios(s: Scenario) -> None:
    assert_same(s)


@pytest.mark.parametrize("kind,name", [(k, n) for k in KINDS for n in sorted(REGISTRY[k])])
@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_engines_agree_for_every_registered_policy(kind: str, name: str, data: Any) -> None:
    assert_same(data.draw(scenarios(fixed=(kind, name)), label="scenario"))
