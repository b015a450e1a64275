"""emu trace fit with any model and its quality report: hand-computed measures, a trace the generator makes
(near the noise floor) and one it cannot (far above it), the CLI with a model TOML and a prefill trace."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from emu.errors import EmuError, EmuWarning
from emu.models import ModelSpec
from emu.trace import RoutingTrace
from emu.trace.cli import main as trace_main
from emu.trace.fit import fit, fit_model
from emu.trace.fit_report import ks_statistic, popularity_tv, quality, ranked_shares
from emu.trace.modelarg import load_model
from emu.trace.synthetic import SyntheticParams, generate

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

MODEL = ModelSpec(name="fr-test", n_moe_layers=3, n_experts=16, top_k=2, hidden=8, expert_intermediate=8)


def test_ks_statistic_hand_cases() -> None:
    assert ks_statistic(np.array([1, 2, 3]), np.array([3, 2, 1])) == 0.0
    assert ks_statistic(np.array([1, 1]), np.array([2, 2])) == 1.0
    # F_a(2) = 0.5 while F_b(2) = 0; at 4 both are 1 and 0.5
    assert ks_statistic(np.array([1, 2, 3, 4]), np.array([3, 4, 5, 6])) == pytest.approx(0.5)


def test_ranked_shares_and_total_variation() -> None:
    # one layer, top-1, 4 experts: counts 3 of expert 2, 1 of expert 0 -> ranked shares 0.75 0.25 0 0
    experts = np.array([2, 2, 0, 2], np.int16).reshape(4, 1, 1)
    trace = RoutingTrace(experts=experts, pass_offsets=np.arange(5, dtype=np.int64), pass_phase=np.ones(4, np.int8),
                         token_request=np.zeros(4, np.int32), token_position=np.arange(4, dtype=np.int32),
                         n_experts=4)
    shares = ranked_shares(trace, 4)
    assert shares.tolist() == [[0.75, 0.25, 0.0, 0.0]]
    uniform = np.full((1, 4), 0.25)
    assert popularity_tv(shares, uniform).tolist() == pytest.approx([0.5])


def test_quality_of_a_generated_trace_is_near_the_noise_floor() -> None:
    real = generate(MODEL, SyntheticParams(zipf_s=(0.5, 1.0, 1.5), reuse_prob=0.3, cross_layer_corr=0.3,
                                           prompt_len=8, output_len=120, n_requests=4, batch_size=2, seed=21))
    q = quality(real, fit(real, MODEL), seeds=3)
    assert q.pop_tv_mean < q.pop_tv_floor + 0.03
    assert q.reuse_ks < 0.06
    assert q.worst_curve_gap() < 0.05
    assert q.slots == (2, 4, 8, 12)


def test_quality_flags_a_popularity_the_zipf_family_cannot_make() -> None:
    # every token picks 2 of experts 0..3 (uniformly, distinct) and never any of 4..15: a flat head and an
    # empty tail, which no single Zipf exponent produces
    rng = np.random.default_rng(3)
    n = 600
    experts = np.stack([rng.permutation(4)[:2] for _ in range(n * 3)]).reshape(n, 3, 2).astype(np.int16)
    real = RoutingTrace(experts=experts, pass_offsets=np.arange(n + 1, dtype=np.int64),
                        pass_phase=np.ones(n, np.int8), token_request=np.zeros(n, np.int32),
                        token_position=np.arange(n, dtype=np.int32), n_experts=16)
    q = quality(real, fit(real, MODEL), seeds=2)
    assert q.pop_tv_family > 3 * q.pop_tv_floor
    assert q.pop_tv_mean >= q.pop_tv_family - 0.02


def test_each_popularity_target_matches_its_own_statistic() -> None:
    # a flat head and an empty tail (experts 0..5 of 16 at every layer): no Zipf exponent matches both the top
    # share and the entropy, so each fit is closer on the statistic it targets
    rng = np.random.default_rng(8)
    n = 800
    experts = np.stack([rng.permutation(6)[:2] for _ in range(n * 3)]).reshape(n, 3, 2).astype(np.int16)
    real = RoutingTrace(experts=experts, pass_offsets=np.arange(n + 1, dtype=np.int64),
                        pass_phase=np.ones(n, np.int8), token_request=np.zeros(n, np.int32),
                        token_position=np.arange(n, dtype=np.int32), n_experts=16)
    by_entropy = fit(real, MODEL).errors()
    by_share = fit(real, MODEL, popularity="top-share").errors()
    assert by_entropy["entropy_max_abs"] < by_share["entropy_max_abs"]
    assert by_share["top_share_max_abs"] < by_entropy["top_share_max_abs"]
    with pytest.raises(EmuError, match="--popularity"):
        fit(real, MODEL, popularity="mass")


def test_fit_model_any_shape() -> None:
    trace = generate(MODEL, SyntheticParams(prompt_len=0, output_len=20, seed=1))
    shape = fit_model(trace, None)
    assert (shape.n_moe_layers, shape.n_experts, shape.top_k) == (3, 16, 2)
    wider = ModelSpec(name="k4", n_moe_layers=3, n_experts=16, top_k=4, hidden=8, expert_intermediate=8)
    with pytest.warns(EmuWarning, match="top-2"):
        assert fit_model(trace, wider).top_k == 2
    with pytest.raises(EmuError, match="layers"):
        fit_model(trace, ModelSpec(name="l4", n_moe_layers=4, n_experts=16, top_k=2, hidden=8, expert_intermediate=8))
    with pytest.raises(EmuError, match="experts per layer"):
        fit_model(trace, ModelSpec(name="e32", n_moe_layers=3, n_experts=32, top_k=2, hidden=8, expert_intermediate=8))


def test_load_model_preset_and_toml(tmp_path: Path) -> None:
    assert load_model("mixtral-8x7b").n_experts == 8
    scenario_like = tmp_path / "m.toml"
    scenario_like.write_text('[model]\npreset = "mixtral-8x7b"\ntop_k = 1\n')
    assert load_model(str(scenario_like)).top_k == 1
    bare = tmp_path / "bare.toml"
    bare.write_text('name = "b"\nn_moe_layers = 3\nn_experts = 16\ntop_k = 2\nhidden = 8\nexpert_intermediate = 8\n')
    assert load_model(str(bare)).n_moe_layers == 3
    bad = tmp_path / "bad.toml"
    bad.write_text('[model]\npreset = "mixtral-8x7b"\nlayers = 3\n')
    with pytest.raises(EmuError, match=r"model\.layers") as err:
        load_model(str(bad))
    assert str(bad) in str(err.value)
    with pytest.raises(EmuError, match="--model"):
        load_model("no-such-model")


def test_cli_fit_with_a_model_file_keeps_the_prompt_and_writes_the_report(tmp_path: Path,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "real.npz"
    generate(MODEL, SyntheticParams(zipf_s=1.0, reuse_prob=0.2, prompt_len=12, output_len=40, n_requests=3,
                                    seed=4)).save(src)
    model_file = tmp_path / "model.toml"
    model_file.write_text('[model]\nname = "wide"\nn_moe_layers = 3\nn_experts = 16\ntop_k = 4\nhidden = 8\n'
                          'expert_intermediate = 8\n')
    out, report = tmp_path / "params.toml", tmp_path / "fit.md"
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        assert trace_main(["trace", "fit", str(src), "--model", str(model_file), "--out", str(out), "--report",
                           str(report), "--seeds", "2"]) == 0
    data = tomllib.loads(out.read_text())
    synthetic = data["workload"]["synthetic"]
    assert (synthetic["prompt_len"], synthetic["output_len"], synthetic["n_requests"]) == (12, 40, 3)
    assert data["fit"]["model"] == "wide"
    assert set(data["fit"]["quality"]) >= {"pop_tv_mean", "reuse_ks", "lru_real", "opt_syn"}
    text = report.read_text()
    assert "reuse-distance KS" in text and "| slots/layer |" in text
    assert "fit quality over 2 generated traces" in capsys.readouterr().out
    # no model: the trace's own shape
    assert trace_main(["trace", "fit", str(src), "--out", str(out), "--seeds", "2"]) == 0
    assert tomllib.loads(out.read_text())["fit"]["model"] == "fr-test"
    assert trace_main(["trace", "fit", str(src), "--out", str(out), "--seeds", "1"]) == 2
    assert "--seeds" in capsys.readouterr().err
