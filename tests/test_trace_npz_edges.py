""".npz traces whose contents would index past the kernels' tables are refused at load, with one line naming
the file and the array: predicted ids out of range, an id twice in one token's top-k, a header whose expert
count differs from the model's. Before, such a trace reached the numba kernels (a wild write, a segfault)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from emu.errors import EmuError
from emu.trace import RoutingTrace

ROOT = Path(__file__).resolve().parents[1]


def _trace(experts: np.ndarray, n_experts: int, predicted: np.ndarray | None = None) -> RoutingTrace:
    t = experts.shape[0]
    return RoutingTrace(experts=experts.astype(np.int16), pass_offsets=np.arange(t + 1, dtype=np.int64),
                        pass_phase=np.ones(t, np.int8), token_request=np.zeros(t, np.int32),
                        token_position=np.arange(t, dtype=np.int32), n_experts=n_experts,
                        predicted=None if predicted is None else predicted.astype(np.int16))


def _saved(tmp_path: Path, trace: RoutingTrace) -> Path:
    path = tmp_path / "t.npz"
    trace.save(path)
    return path


def _experts(tokens: int, layers: int, k: int, n_experts: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    return np.stack([np.stack([rng.choice(n_experts, k, replace=False) for _ in range(layers)])
                     for _ in range(tokens)])


@pytest.mark.parametrize("bad", [-1, 64])
def test_predicted_ids_out_of_range_are_refused(tmp_path, bad):
    experts = _experts(4, 16, 8, 64)
    predicted = experts.copy()
    predicted[2, 5, 3] = bad
    path = _saved(tmp_path, _trace(experts, 64, predicted))
    with pytest.raises(EmuError, match=r"predicted expert ids in 0\.\.63") as err:
        RoutingTrace.load(path)
    assert (err.value.file, err.value.key) == (str(path), "predicted")


def test_an_id_twice_in_a_tokens_top_k_is_refused(tmp_path):
    experts = _experts(4, 16, 8, 64)
    experts[1, 7, 4] = experts[1, 7, 0]
    path = _saved(tmp_path, _trace(experts, 64))
    with pytest.raises(EmuError, match=r"token 1 layer 7 routes expert \d+ twice") as err:
        RoutingTrace.load(path)
    assert err.value.key == "experts"


def test_a_header_expert_count_other_than_the_models_is_refused():
    trace = _trace(_experts(3, 16, 8, 64), 128).validate()
    with pytest.raises(EmuError, match="declares 128 experts per MoE layer but the model has 64"):
        trace.check_fits(16, 64, 8)
    trace.check_fits(16, 128, 8)  # the model it came from


def test_emu_run_with_a_bad_prediction_is_one_error_line_not_a_crash(tmp_path):
    experts = _experts(6, 16, 8, 64)
    predicted = experts.copy()
    predicted[3, 2, 1] = 300
    # written as a later tool would (no validation on save): the load is the boundary
    trace = _trace(experts, 64, predicted)
    trace.save(tmp_path / "bad.npz")
    scen = tmp_path / "s.toml"
    scen.write_text(f'model = "olmoe-1b-7b"\n[hardware]\nprofile = "{ROOT}/scenarios/profiles/h100-provisional.toml"\n'
                    f'[cache]\ncapacity = "5%"\n[workload]\ntrace = "{tmp_path}/bad.npz"\n'
                    f'[policy]\nprefetch = "next-layer"\n[engine]\nkind = "fast"\n')
    out = subprocess.run([sys.executable, "-m", "emu.cli", "run", str(scen), "--out", str(tmp_path / "runs")],
                         capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 2, out.stderr[-2000:]
    assert "Traceback" not in out.stderr
    assert "predicted" in out.stderr and "bad.npz" in out.stderr
