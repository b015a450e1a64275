"""Miss policies in the live runtime on the CPU: `cpu` runs a missing expert from its host weights (the same
math, so the logits stay bit for bit), `drop` skips it; both decided by the emulator's decision layer."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from emu.engines.setup import precisions_for, timing  # noqa: E402
from emu.profile import profile_from_dict  # noqa: E402
from live.models import build_model, live_shape, live_spec  # noqa: E402
from live.offload import ExpertOffload  # noqa: E402

from .live_support import logits_of_generation  # noqa: E402


def _ids(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 100, (1, n), generator=g)


def _host_favoured_timing(preset: str):
    """A machine whose link is slow and whose CPU is fast: the cpu policy sends decode misses to the host."""
    shape = live_shape(preset, "tiny")
    spec = live_spec(shape, "bf16")
    profile = profile_from_dict({
        "name": "slow-link", "copy": {"h2d_engines": 1, "latency_s": 1e-3, "bw_pinned_Bps": 1e6,
                                      "bw_pageable_Bps": 1e6},
        "compute": {"expert_launch_s": 1e-5, "hbm_Bps": 1e12, "flops_per_s": 1e14, "dense_layer_s": 1e-4,
                    "cpu_flops_per_s": 1e12}})
    return timing(profile, spec, precisions_for(spec))


def test_cpu_misses_run_on_the_host_and_keep_the_logits_bit_for_bit():
    ref = build_model("olmoe-1b-7b", "tiny", dtype="fp32", seed=7, experts_implementation="eager")
    off = build_model("olmoe-1b-7b", "tiny", dtype="fp32", seed=7, experts_implementation="eager")
    runtime = ExpertOffload(off, 5, eviction="lru", miss="cpu", timing=_host_favoured_timing("olmoe-1b-7b"))
    ids = _ids(12, seed=1)
    want = logits_of_generation(ref, ids, 4)
    got = logits_of_generation(off, ids, 4, runtime)
    for a, b in zip(want, got):
        assert torch.equal(a, b)  # the host runs the same eager math on the same weights
    stats = runtime.stats()
    assert stats.cpu_runs > 0 and stats.dropped == 0
    assert stats.copies == stats.misses - stats.cpu_runs  # a miss run on the host copies nothing
    assert stats.accesses == stats.hits + stats.misses


def test_dropped_misses_are_not_computed():
    ref = build_model("olmoe-1b-7b", "tiny", dtype="fp32", seed=7, experts_implementation="eager")
    off = build_model("olmoe-1b-7b", "tiny", dtype="fp32", seed=7, experts_implementation="eager")
    runtime = ExpertOffload(off, 5, eviction="lru", miss="drop", miss_params={"rank": 2})
    ids = _ids(12, seed=1)
    want = logits_of_generation(ref, ids, 4)
    got = logits_of_generation(off, ids, 4, runtime)
    stats = runtime.stats()
    assert stats.dropped > 0 and stats.cpu_runs == 0
    assert stats.accesses == stats.hits + stats.misses + stats.dropped
    assert stats.copies == stats.misses  # only the misses that were not dropped are fetched
    assert any(not torch.equal(a, b) for a, b in zip(want, got))  # a dropped expert's share is missing


def test_a_miss_policy_the_runtime_cannot_run_is_refused():
    from emu.errors import EmuError

    off = build_model("olmoe-1b-7b", "tiny", dtype="fp32", seed=7, experts_implementation="eager")
    with pytest.raises(EmuError, match="cannot run miss policy 'substitute'"):
        ExpertOffload(off, 5, eviction="lru", miss="substitute")
