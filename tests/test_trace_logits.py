"""A trace may carry the router's full logits [tokens, layers, n_experts]: stored float16, checked at load
(shape, finite, within float16) with one line naming the file and `logits`, part of the fingerprint; a trace
without them loads and fingerprints as before."""

from __future__ import annotations

import zipfile
from pathlib import Path

import attrs
import numpy as np
import pytest

from emu.errors import EmuError
from emu.trace import RoutingTrace

from .conftest import make_trace


def _with_logits(n_tok: int = 3, n_layers: int = 2, n_exp: int = 4, seed: int = 0) -> RoutingTrace:
    """Top-2 routing that is the top-2 of random logits."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0.0, 2.0, (n_tok, n_layers, n_exp)).astype(np.float16)
    experts = np.argsort(-logits.astype(np.float32), axis=2, kind="stable")[:, :, :2]
    passes = [[[list(map(int, experts[t, layer])) for layer in range(n_layers)]] for t in range(n_tok)]
    return attrs.evolve(make_trace(passes, n_experts=n_exp), logits=logits).validate()


def _rewrite(path: Path, key: str, value: np.ndarray) -> None:
    """Replace one member of a saved .npz archive."""
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files}
    arrays[key] = value
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)


def test_logits_round_trip_as_float16(tmp_path):
    tr = _with_logits()
    path = tmp_path / "t.npz"
    tr.save(path)
    with zipfile.ZipFile(path) as z:
        assert "logits.npy" in z.namelist()
    back = RoutingTrace.load(path)
    assert back.logits is not None and back.logits.dtype == np.float16
    np.testing.assert_array_equal(back.logits, tr.logits)
    assert back.fingerprint() == tr.fingerprint()


def test_float32_logits_load_as_float16(tmp_path):
    tr = _with_logits()
    path = tmp_path / "t.npz"
    tr.save(path)
    assert tr.logits is not None
    _rewrite(path, "logits", tr.logits.astype(np.float32) + np.float32(1e-4))
    back = RoutingTrace.load(path)
    assert back.logits is not None and back.logits.dtype == np.float16


def test_fingerprint_covers_logits_and_a_trace_without_them_is_unchanged(tmp_path):
    tr = _with_logits()
    plain = attrs.evolve(tr, logits=None)
    assert tr.fingerprint() != plain.fingerprint()
    assert tr.logits is not None
    other = attrs.evolve(tr, logits=(tr.logits + np.float16(1)).astype(np.float16))
    assert other.fingerprint() != tr.fingerprint()
    path = tmp_path / "plain.npz"
    plain.save(path)
    with zipfile.ZipFile(path) as z:
        assert "logits.npy" not in z.namelist()
    back = RoutingTrace.load(path)
    assert back.logits is None and back.fingerprint() == plain.fingerprint()


def test_slicing_keeps_the_logits_rows():
    tr = _with_logits(n_tok=5)
    cut = tr.slice_tokens(2)
    assert cut.logits is not None and tr.logits is not None
    np.testing.assert_array_equal(cut.logits, tr.logits[:2])


@pytest.mark.parametrize(("bad", "match"), [
    (lambda lg: lg[:, :, :3], r"expected 4 logits per token and layer \(n_experts\), got 3"),
    (lambda lg: lg[:2], r"expected a \[tokens, layers, n_experts\] array with 3 tokens and 2 layers"),
    (lambda lg: lg[:, 0], r"expected a \[tokens, layers, n_experts\] array"),
    (lambda lg: np.where(np.arange(4) == 1, np.float32(np.nan), lg.astype(np.float32)), r"expected finite router "
                                                                                          "logits"),
    (lambda lg: np.where(np.arange(4) == 1, np.float32(1e6), lg.astype(np.float32)), r"does not fit float16"),
    (lambda lg: lg.astype("U8"), r"expected a numeric array"),
])
def test_bad_logits_are_refused_naming_the_file_and_key(tmp_path, bad, match):
    tr = _with_logits()
    path = tmp_path / "t.npz"
    tr.save(path)
    _rewrite(path, "logits", bad(tr.logits))
    with pytest.raises(EmuError, match=match) as err:
        RoutingTrace.load(path)
    assert (err.value.file, err.value.key) == (str(path), "logits")
    assert "\n" not in str(err.value) and str(err.value).startswith(f"{path}: logits: ")


def test_validate_refuses_non_finite_logits_in_memory():
    tr = _with_logits()
    assert tr.logits is not None
    lg = tr.logits.copy()
    lg[1, 0, 2] = np.inf
    with pytest.raises(EmuError, match=r"got inf at token 1 layer 0 expert 2") as err:
        attrs.evolve(tr, logits=lg).validate()
    assert err.value.key == "logits"


def test_inspect_reports_the_mean_logit_range():
    from emu.trace.inspect import render, summarize

    tr = _with_logits()
    assert tr.logits is not None
    lg = tr.logits.astype(np.float32)
    s = summarize(tr)
    assert s.mean_logit_range == pytest.approx(float((lg.max(axis=2) - lg.min(axis=2)).mean()))
    assert "router logits          mean range" in render(s)
    assert summarize(attrs.evolve(tr, logits=None)).mean_logit_range is None


def test_a_model_with_another_expert_count_than_the_logits_is_refused():
    tr = attrs.evolve(_with_logits(), n_experts=0)
    tr.check_fits(2, 4, 2)
    with pytest.raises(EmuError, match="4 router logits per token and layer but the model has 6") as err:
        tr.check_fits(2, 6, 2)
    assert err.value.key == "workload.trace"


def _scenario(tmp_path: Path, trace: RoutingTrace, history: int) -> Path:
    root = Path(__file__).resolve().parents[1]
    trace.save(tmp_path / "t.npz")
    path = tmp_path / f"s{history}.toml"
    path.write_text(f'''name = "logits"
seed = 0
model = "mixtral-8x7b"

[hardware]
profile = "{root / 'scenarios' / 'profiles' / 'h100-pcie5.toml'}"

[cache]
capacity = "25%"

[workload]
trace = "t.npz"

[policy]
eviction = "lru"
prefetch = "none"
miss = "fetch"
routing = {{ name = "cache-aware", strength = 0.3, history = {history} }}

[engine]
kind = "fast"
''')
    return path


def _mixtral_logit_trace(n_tok: int = 12, seed: int = 1) -> RoutingTrace:
    """Mixtral's shape (32 MoE layers, 8 experts, top-2), one token a pass, routing = top-2 of the logits."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0.0, 2.0, (n_tok, 32, 8)).astype(np.float16)
    experts = np.argsort(-logits.astype(np.float32), axis=2, kind="stable")[:, :, :2]
    probs = np.exp(logits.astype(np.float64))
    probs /= probs.sum(axis=2, keepdims=True)
    top = np.take_along_axis(probs, experts, axis=2)
    passes = [[experts[t].tolist()] for t in range(n_tok)]
    return attrs.evolve(make_trace(passes, n_experts=8), scores=(top / top.sum(axis=2, keepdims=True))
                        .astype(np.float16), logits=logits).validate()


def test_emu_run_takes_the_papers_definition_from_a_trace_with_logits(tmp_path, capsys):
    from emu.cli import main

    tr = _mixtral_logit_trace()
    assert main(["run", str(_scenario(tmp_path, tr, 1)), "--quiet"]) == 0
    capsys.readouterr()
    # the same scenario on the trace without logits: one error line naming policy.routing
    attrs.evolve(tr, logits=None).save(tmp_path / "t.npz")
    assert main(["run", str(tmp_path / "s1.toml"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "policy.routing" in err and "the trace has no logits" in err


def test_the_engines_get_the_logits_only_for_a_stack_that_reads_them():
    from emu.engines.setup import PolicyChoice, StackChoice, make_inputs

    from .conftest import tiny_model
    from .policy_support import hand_profile

    trace = _with_logits()
    model = tiny_model(trace.n_layers, trace.n_experts, trace.top_k)
    reading = attrs.evolve(StackChoice(), routing=PolicyChoice("cache-aware", {"history": 1.0}))
    for stack, expect in ((StackChoice(), False), (reading, True)):
        tv = make_inputs(model, hand_profile(), trace, 4 * model.expert_bytes(), stack).tv
        assert bool(tv.dims[3]) is expect
        assert tv.logits.shape[0] == (trace.logits.shape[0] if expect else 0)  # no float32 copy unread
