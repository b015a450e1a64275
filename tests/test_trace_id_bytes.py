"""Expert ids held as one byte (uint8) where every id < 256, with a high byte only past 255: runs, fingerprints,
the generator, and trace files written as int16 all see the same ids whichever width holds them."""

from __future__ import annotations

import warnings

import attrs
import numpy as np
import pytest
from numba import njit

from emu.engines.setup import trace_view
from emu.errors import EmuWarning
from emu.kernel.helpers import expert_id, predicted_id
from emu.models import ModelSpec, get_preset
from emu.policies.api import KINDS
from emu.policies.registry import REGISTRY
from emu.trace import RoutingTrace
from emu.trace.routing_trace import compact_ids
from emu.trace.synthetic import SyntheticParams, generate

from .conftest import tiny_model
from .policy_support import cpu_profile, run
from .test_policies_engines_agree import random_trace

ALL = [(kind, name) for kind in KINDS for name in REGISTRY[kind]]
WIDE = ModelSpec(name="wide", n_moe_layers=3, n_experts=300, top_k=4, hidden=8, expert_intermediate=8)


def _narrow(trace: RoutingTrace) -> RoutingTrace:
    return attrs.evolve(trace, experts=trace.experts.astype(np.uint8),
                        predicted=None if trace.predicted is None else trace.predicted.astype(np.uint8))


def _relabel(trace: RoutingTrace, ids: list[int], n_experts: int) -> RoutingTrace:
    """The trace with expert e renamed ids[e] (experts and predictions), as int16."""
    m = np.asarray(ids, np.int16)
    return attrs.evolve(trace, experts=m[trace.experts], n_experts=n_experts,
                        predicted=None if trace.predicted is None else m[trace.predicted]).validate()


@njit(cache=False)
def _read_all(tv, out: np.ndarray, pred: np.ndarray) -> None:
    for t in range(out.shape[0]):
        for layer in range(out.shape[1]):
            for s in range(out.shape[2]):
                out[t, layer, s] = expert_id(tv, t, layer, s)
                pred[t, layer, s] = predicted_id(tv, t, layer, s)


# --- the view and its one reader --------------------------------------------------------------------------
@pytest.mark.parametrize("top", [255, 256, 511, 32767])
def test_the_view_reads_back_every_id(top):
    rng = np.random.default_rng(top)
    ids = rng.integers(0, top + 1, (50, 3, 4)).astype(np.int16)
    ids[0, 0, 0] = top
    pred = rng.integers(0, top + 1, ids.shape).astype(np.int16)
    trace = RoutingTrace(experts=ids, pass_offsets=np.array([0, 50], np.int64), pass_phase=np.ones(1, np.int8),
                         token_request=np.zeros(50, np.int32), token_position=np.arange(50, dtype=np.int32),
                         predicted=pred)
    tv = trace_view(trace)
    assert tv.experts.dtype == np.uint8 and tv.predicted.dtype == np.uint8
    assert tv.experts_hi.shape[0] == (0 if top < 256 else 50)  # high bytes only past 255
    out, got = np.zeros(ids.shape, np.int64), np.zeros(ids.shape, np.int64)
    _read_all(tv, out, got)
    assert np.array_equal(out, ids) and np.array_equal(got, pred)


def test_a_uint8_trace_is_viewed_without_a_copy():
    trace = _narrow(random_trace(1))
    assert trace_view(trace).experts.ctypes.data == trace.experts.ctypes.data


# --- runs -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("kind", "name"), ALL)
@pytest.mark.parametrize("engine", ["fast", "des"])
def test_uint8_and_int16_traces_run_the_same(kind, name, engine):
    wide = random_trace(4)
    assert wide.experts.dtype == np.int16
    kw = {kind: name}
    if kind == "eviction":
        kw["prefetch"] = "next-layer"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EmuWarning)
        a, cs_a = run(wide, 5, model=tiny_model(3, 6, 2), profile=cpu_profile(), engine=engine, **kw)
        b, cs_b = run(_narrow(wide), 5, model=tiny_model(3, 6, 2), profile=cpu_profile(), engine=engine, **kw)
    for key in a:
        if key != "timings":
            assert a[key] == b[key], key
    assert np.array_equal(cs_a.stats_i, cs_b.stats_i) and np.array_equal(cs_a.stats_f, cs_b.stats_f)


STACKS = [{"eviction": "lru"}, {"eviction": "lru", "prefetch": "next-layer"}, {"eviction": "belady"},
          {"eviction": "lfu", "prefetch": "oracle"}]


@pytest.mark.parametrize("stack", STACKS, ids=lambda s: "+".join(s.values()))
@pytest.mark.parametrize("engine", ["fast", "des"])
def test_ids_past_255_run_through_the_high_byte(stack, engine):
    # The same routing under two order-keeping namings in a 300-expert model: below 256, and across it with
    # low bytes that repeat (1 and 257, ...). A reader that dropped the high byte would merge experts.
    base = random_trace(7)  # 6 experts, recorded predictions (next-layer reads them, no seeded draws)
    low = _relabel(base, [1, 2, 3, 4, 5, 6], 300)
    high = _relabel(base, [1, 2, 3, 257, 258, 259], 300)
    assert trace_view(high).experts_hi.shape[0] == high.n_tokens and trace_view(low).experts_hi.shape[0] == 0
    model = tiny_model(3, 300, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EmuWarning)
        a, cs_a = run(low, 4, model=model, profile=cpu_profile(), engine=engine, **stack)
        b, cs_b = run(high, 4, model=model, profile=cpu_profile(), engine=engine, **stack)
    assert a["accesses"] > 0 and a["hits"] == b["hits"]
    assert np.array_equal(cs_a.stats_i, cs_b.stats_i) and np.array_equal(cs_a.stats_f, cs_b.stats_f)
    assert np.array_equal(cs_a.pass_end, cs_b.pass_end)
    # the keys the run left resident are the renamed ones
    moved = np.flatnonzero(np.asarray(cs_b.status) == 1) % 300
    assert set(moved.tolist()) <= {1, 2, 3, 257, 258, 259}


# --- fingerprints, the generator, files -------------------------------------------------------------------
def test_fingerprint_is_the_same_for_both_widths():
    trace = random_trace(3)
    assert trace.experts.dtype == np.int16 and trace.predicted is not None
    assert _narrow(trace).fingerprint() == trace.fingerprint()
    sliced = attrs.evolve(trace, experts=np.asfortranarray(trace.experts).astype(np.uint8, order="F"))
    assert sliced.fingerprint() == trace.fingerprint()  # not C-contiguous: hashed in token order all the same


def test_generator_writes_one_byte_ids_up_to_256_experts():
    params = SyntheticParams(seed=3, with_scores=True, predictor_accuracy=0.7)
    olmoe = generate(get_preset("olmoe-1b-7b"), params, n_tokens=3000)
    assert olmoe.experts.dtype == np.uint8 and olmoe.predicted.dtype == np.uint8
    assert olmoe.fingerprint() == "15df9368fc20bea4"  # as when the generator wrote int16
    wide = generate(WIDE, params, n_tokens=3000)
    assert wide.experts.dtype == np.int16 and int(wide.experts.max()) >= 256
    assert wide.fingerprint() == "54e0c6cebe1742c0"
    edge = attrs.evolve(WIDE, n_experts=256)
    assert generate(edge, params, n_tokens=200).experts.dtype == np.uint8


def test_int16_trace_files_load_as_one_byte_ids(tmp_path):
    trace = random_trace(5)
    path = tmp_path / "t.npz"
    trace.save(path)
    with np.load(path) as data:
        assert data["experts"].dtype == np.int16 and data["predicted"].dtype == np.int16  # the format on disk
    loaded = RoutingTrace.load(path)
    assert loaded.experts.dtype == np.uint8 and loaded.predicted.dtype == np.uint8
    assert np.array_equal(loaded.experts, trace.experts) and loaded.fingerprint() == trace.fingerprint()
    _narrow(trace).save(tmp_path / "u.npz")  # a one-byte trace is written as int16 too: the same arrays
    with np.load(path) as old, np.load(tmp_path / "u.npz") as new:
        assert old.files == new.files
        for key in old.files:
            assert old[key].dtype == new[key].dtype and np.array_equal(old[key], new[key]), key


def test_wide_trace_files_keep_int16(tmp_path):
    trace = _relabel(random_trace(5), [0, 1, 2, 256, 299, 5], 300)
    trace.save(tmp_path / "w.npz")
    loaded = RoutingTrace.load(tmp_path / "w.npz")
    assert loaded.experts.dtype == np.int16 and np.array_equal(loaded.experts, trace.experts)
    assert loaded.fingerprint() == trace.fingerprint()


def test_compact_ids():
    assert compact_ids(np.array([0, 255], np.int64)).dtype == np.uint8
    assert compact_ids(np.array([0, 256], np.int64)).dtype == np.int16
    assert compact_ids(np.array([-1, 3], np.int64)).dtype == np.int16  # left for validation to refuse
    u = np.array([1, 2], np.uint8)
    assert compact_ids(u) is u
