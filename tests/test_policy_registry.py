"""Registration by declaration: hooks checked against their kind, capabilities drive the live allow-lists, and
an installed package adds a policy through the `moe_emu.policies` entry point group without touching the repo."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from numba import njit

from emu.errors import EmuError
from emu.kernel.hooks import EVENT_SIG, HOOKS, KINDS, PREFETCH_SIG, VICTIM_SIG
from emu.policies.api import Capabilities, Policy, register
from emu.policies.registry import REGISTRY, get_policy, live_policies

ROOT = Path(__file__).resolve().parents[1]


def _init(ctx, params):
    return None


def test_every_registered_policy_declares_its_kinds_hooks():
    assert sum(len(v) for v in REGISTRY.values()) >= 29
    for kind in KINDS:
        for name, policy in REGISTRY[kind].items():
            assert policy.kind == kind and policy.name == name
            assert sorted(policy.hooks) == sorted(h for h, _s in HOOKS[kind])
            assert policy.module.startswith("emu.policies.")


def test_a_hook_with_the_wrong_name_or_signature_is_refused():
    lru = get_policy("eviction", "lru")
    with pytest.raises(ValueError, match="expected"):
        Policy(name="x", kind="eviction", hooks={"victim": lru.hooks["victim"]}, init=_init)
    with pytest.raises(ValueError, match="signature"):  # a prefetch hook where the victim hook belongs
        Policy(name="x", kind="eviction", init=_init,
               hooks={"victim": get_policy("prefetch", "none").hooks["prefetch"], "on_event": lru.hooks["on_event"]})
    with pytest.raises(ValueError, match="kind"):
        Policy(name="x", kind="cache", hooks={}, init=_init)
    assert tuple(VICTIM_SIG.args) != tuple(EVENT_SIG.args) and tuple(EVENT_SIG.args) == tuple(PREFETCH_SIG.args)


def test_a_name_taken_by_another_module_is_refused():
    lru = get_policy("eviction", "lru")
    with pytest.raises(EmuError, match="registered twice"):
        register(Policy(name="lru", kind="eviction", hooks=dict(lru.hooks), init=_init), module="elsewhere")
    assert get_policy("eviction", "lru") is lru


def test_reading_the_future_and_running_live_exclude_each_other():
    with pytest.raises(ValueError):
        Capabilities(reads_future=True, live=True)
    for kind in KINDS:
        for policy in REGISTRY[kind].values():
            assert not (policy.capabilities.reads_future and policy.capabilities.live)
    assert get_policy("prefetch", "oracle").capabilities.reads_future
    assert get_policy("eviction", "belady").capabilities.reads_future
    assert get_policy("routing", "cache-aware").needs_scores


def test_the_live_allow_lists_are_the_live_declarations():
    from live import cache_bridge
    from live.cli import _LIVE_POLICIES

    for kind in KINDS:
        assert set(live_policies(kind)) == {n for n, p in REGISTRY[kind].items() if p.capabilities.live}
        assert _LIVE_POLICIES[kind] == live_policies(kind)
    assert "lru" in cache_bridge.LIVE_EVICTION and "belady" not in cache_bridge.LIVE_EVICTION
    assert "oracle" not in cache_bridge.LIVE_PREFETCH and "next-layer" in cache_bridge.LIVE_PREFETCH
    with pytest.raises(EmuError, match="cannot run eviction policy 'belady'"):
        cache_bridge.CacheBridge(2, 4, 1, 3, eviction="belady")


_PLUGIN = '''
"""An out-of-tree eviction policy: first in, first out."""
from numba import njit

from emu.kernel.helpers import is_evictable, key_layer
from emu.kernel.hooks import EV_EVICT, EV_INSERT, EVENT_SIG, VICTIM_SIG
from emu.kernel.layout import new_policy_state
from emu.policies.api import Capabilities, Policy, register


def init(ctx, params):
    n = ctx.n_layers * ctx.n_experts
    ps = new_policy_state(i_rows=1, i_cols=n + 1)
    ps.i[0, :] = -1  # insertion stamp per key; the last column counts inserts
    ps.i[0, n] = 0
    return ps


@njit(EVENT_SIG, cache=True)
def on_event(ps, cs, tv, ev, key, t):
    n = ps.i.shape[1] - 1
    if ev == EV_INSERT:
        ps.i[0, key] = ps.i[0, n]
        ps.i[0, n] += 1
    elif ev == EV_EVICT:
        ps.i[0, key] = -1
    return 0


@njit(VICTIM_SIG, cache=True)
def victim(ps, cs, tv, incoming, t):
    in_layer = key_layer(cs, incoming)
    best = -1
    for key in range(ps.i.shape[1] - 1):
        if ps.i[0, key] >= 0 and is_evictable(cs, key, in_layer) and (best < 0 or ps.i[0, key] < ps.i[0, best]):
            best = key
    return best


POLICY = register(Policy(name="plugin-fifo", kind="eviction", hooks={"victim": victim, "on_event": on_event},
                         init=init, capabilities=Capabilities(live=True), doc="First in, first out (a plugin)."))
'''

_RUN = '''
import json, sys
import numpy as np
from emu.engines.fast.engine import run_fast
from emu.engines.setup import PolicyChoice, StackChoice, make_inputs
from emu.models import ModelSpec
from emu.profile import profile_from_dict
from emu.policies.registry import REGISTRY
from emu.trace import RoutingTrace

model = ModelSpec(name="m", n_moe_layers=1, n_experts=4, top_k=1, hidden=1, expert_intermediate=1)
profile = profile_from_dict({
    "name": "p", "copy": {"h2d_engines": 1, "latency_s": 0.0, "bw_pinned_Bps": 6.0, "bw_pageable_Bps": 1.0},
    "compute": {"expert_launch_s": 1.0, "hbm_Bps": 1.0, "flops_per_s": 1.0, "dense_layer_s": 1.0}})
seq = [0, 1, 0, 2, 0]  # 2 slots: FIFO evicts 0 at the miss on 2 (LRU would evict 1), so the last 0 misses
experts = np.array(seq, np.int16).reshape(len(seq), 1, 1)
trace = RoutingTrace(experts=experts, pass_offsets=np.arange(len(seq) + 1, dtype=np.int64),
                     pass_phase=np.ones(len(seq), np.int8), token_request=np.zeros(len(seq), np.int32),
                     token_position=np.arange(len(seq), dtype=np.int32), n_experts=4).validate()
out = {}
for name in ("plugin-fifo", "lru"):
    inputs = make_inputs(model, profile, trace, 2 * model.expert_bytes(), StackChoice(eviction=PolicyChoice(name)))
    cs, _end, _t = run_fast(inputs)
    out[name] = int(cs.stats_i[1].sum())
out["module"] = REGISTRY["eviction"]["plugin-fifo"].module
print(json.dumps(out))
'''


def test_an_installed_package_adds_a_policy_through_its_entry_point(tmp_path):
    (tmp_path / "fifo_plugin.py").write_text(_PLUGIN)
    dist = tmp_path / "fifo_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: fifo-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[moe_emu.policies]\nfifo = fifo_plugin\n")
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": f"{tmp_path}:{ROOT}"}
    out = subprocess.run([sys.executable, "-c", _RUN], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    # hits: FIFO 0 1 [0 hit] 2 (evicts 0) [0 miss] -> 1; LRU 0 1 [0 hit] 2 (evicts 1) [0 hit] -> 2
    assert got == {"plugin-fifo": 1, "lru": 2, "module": "fifo_plugin"}


def test_a_broken_entry_point_is_one_clear_error(tmp_path):
    dist = tmp_path / "broken-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[moe_emu.policies]\nbroken = no_such_module_xyz\n")
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": f"{tmp_path}:{ROOT}"}
    out = subprocess.run([sys.executable, "-m", "emu.cli", "policies"], capture_output=True, text=True, env=env,
                         cwd=tmp_path)
    assert out.returncode != 0
    assert "Traceback" not in out.stderr
    assert "could not load policy entry point 'broken'" in out.stderr


def test_compiled_hooks_are_numba_dispatchers():
    for kind in KINDS:
        for policy in REGISTRY[kind].values():
            for hook in policy.hooks.values():
                assert isinstance(hook, type(njit(lambda: 0)))


def test_only_policies_that_declare_miss_events_are_told_of_misses():
    import numpy as np

    from emu.engines.setup import PolicyChoice, StackChoice, fresh_state, make_inputs
    from emu.kernel.layout import SC
    from emu.models import ModelSpec
    from emu.profile import profile_from_dict
    from emu.trace import RoutingTrace

    model = ModelSpec(name="m", n_moe_layers=1, n_experts=4, top_k=1, hidden=1, expert_intermediate=1)
    profile = profile_from_dict({
        "name": "p", "copy": {"h2d_engines": 1, "latency_s": 0.0, "bw_pinned_Bps": 6.0, "bw_pageable_Bps": 1.0},
        "compute": {"expert_launch_s": 1.0, "hbm_Bps": 1.0, "flops_per_s": 1.0, "dense_layer_s": 1.0}})
    trace = RoutingTrace(experts=np.zeros((1, 1, 1), np.int16), pass_offsets=np.array([0, 1], np.int64),
                         pass_phase=np.ones(1, np.int8), token_request=np.zeros(1, np.int32),
                         token_position=np.zeros(1, np.int32), n_experts=4).validate()
    declared = {name for name, p in REGISTRY["eviction"].items() if p.capabilities.miss_events}
    assert "arc" in declared and "lru" not in declared
    for name in ("arc", "lru"):
        inputs = make_inputs(model, profile, trace, 2 * model.expert_bytes(), StackChoice(eviction=PolicyChoice(name)))
        cs, _stack = fresh_state(inputs)
        assert cs.sc[SC.MISS_EVENTS] == (name in declared)


def test_a_policy_that_needs_scores_refuses_a_trace_without_them():
    import numpy as np

    from emu.engines.fast.engine import run_fast
    from emu.engines.setup import PolicyChoice, StackChoice, make_inputs
    from emu.models import ModelSpec
    from emu.profile import profile_from_dict
    from emu.trace import RoutingTrace

    model = ModelSpec(name="m", n_moe_layers=1, n_experts=4, top_k=2, hidden=1, expert_intermediate=1)
    profile = profile_from_dict({
        "name": "p", "copy": {"h2d_engines": 1, "latency_s": 0.0, "bw_pinned_Bps": 6.0, "bw_pageable_Bps": 1.0},
        "compute": {"expert_launch_s": 1.0, "hbm_Bps": 1.0, "flops_per_s": 1.0, "dense_layer_s": 1.0}})
    experts = np.array([[[0, 1]], [[2, 3]]], np.int16)
    kw = {"experts": experts, "pass_offsets": np.array([0, 1, 2], np.int64), "pass_phase": np.ones(2, np.int8),
          "token_request": np.zeros(2, np.int32), "token_position": np.arange(2, dtype=np.int32), "n_experts": 4}
    stack = StackChoice(routing=PolicyChoice("cache-aware", REGISTRY["routing"]["cache-aware"].resolve_params(
        {}, "policy.routing", None)))
    bare = RoutingTrace(**kw).validate()
    with pytest.raises(EmuError, match="routing policy 'cache-aware' needs gate scores") as err:
        run_fast(make_inputs(model, profile, bare, 2 * model.expert_bytes(), stack))
    assert err.value.key == "policy.routing"
    scored = RoutingTrace(**kw, scores=np.full((2, 1, 2), 0.5, np.float16)).validate()
    run_fast(make_inputs(model, profile, scored, 2 * model.expert_bytes(), stack))


def test_compile_hooks_compiles_every_registered_hook_with_its_signature():
    from emu.policies.registry import compile_hooks

    compile_hooks()
    for kind, policies in REGISTRY.items():
        for policy in policies.values():
            for name, sig in HOOKS[kind]:
                assert tuple(sig.args) in [tuple(s) for s in policy.hooks[name].signatures], (policy.name, name)
