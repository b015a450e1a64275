"""emu trace fit recovers the parameters of a synthetic trace and writes a pasteable [workload.synthetic]."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from emu.errors import EmuError
from emu.models import ModelSpec, get_preset
from emu.trace.cli import main as trace_main
from emu.trace.fit import fit, trace_stats
from emu.trace.synthetic import SyntheticParams, generate

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

MODEL = ModelSpec(name="fit-test", n_moe_layers=4, n_experts=16, top_k=2, hidden=8, expert_intermediate=8)


@pytest.mark.parametrize(("zipf", "reuse", "cross"), [
    ((0.4, 0.8, 1.2, 1.6), 0.35, 0.25),
    ((1.0, 1.0, 0.5, 0.7), 0.10, 0.50),
])
def test_fit_recovers_known_parameters(zipf: tuple[float, ...], reuse: float, cross: float) -> None:
    true = SyntheticParams(zipf_s=zipf, reuse_prob=reuse, cross_layer_corr=cross, prompt_len=16, output_len=64,
                           batch_size=4, seed=11)
    result = fit(generate(MODEL, true, 8000), MODEL)
    got = result.params
    assert np.abs(np.subtract(got.zipf_s, zipf)).max() < 0.15
    assert abs(got.reuse_prob - reuse) < 0.04
    assert abs(got.cross_layer_corr - cross) < 0.06
    assert (got.prompt_len, got.output_len, got.batch_size) == (16, 64, 4)
    assert result.errors()["top_share_max_abs"] < 0.02


def test_cross_statistic_separates_independent_and_correlated_layers() -> None:
    base = {"zipf_s": 1.0, "reuse_prob": 0.0, "prompt_len": 0, "output_len": 64, "seed": 3}
    indep = trace_stats(generate(MODEL, SyntheticParams(cross_layer_corr=0.0, **base), 6000)).cross
    some = trace_stats(generate(MODEL, SyntheticParams(cross_layer_corr=0.3, **base), 6000)).cross
    most = trace_stats(generate(MODEL, SyntheticParams(cross_layer_corr=0.8, **base), 6000)).cross
    assert indep < 0.05 < some < most


def test_fit_rejects_a_trace_of_another_model() -> None:
    trace = generate(MODEL, SyntheticParams(), 100)
    with pytest.raises(EmuError, match="layers"):
        fit(trace, get_preset("olmoe-1b-7b"))


def test_cli_writes_params_a_scenario_can_use(tmp_path: Path) -> None:
    mixtral = get_preset("mixtral-8x7b")
    src = tmp_path / "real.npz"
    generate(mixtral, SyntheticParams(zipf_s=0.7, reuse_prob=0.2, prompt_len=0, output_len=200, seed=2)).save(src)
    out = tmp_path / "params.toml"
    assert trace_main(["trace", "fit", str(src), "--model", "mixtral-8x7b", "--out", str(out),
                       "--max-tokens", "800"]) == 0
    data = tomllib.loads(out.read_text())
    synthetic = dict(data["workload"]["synthetic"])
    assert synthetic.pop("tokens") == 800
    params = SyntheticParams.from_dict(synthetic)
    assert len(params.zipf_s) == mixtral.n_moe_layers
    assert abs(params.reuse_prob - 0.2) < 0.06
    assert data["fit"]["errors"]["cross_abs"] < 0.05
