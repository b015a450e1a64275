"""`emu calibrate` end to end on the CPU, its error paths, model shapes and copy-pool rotation."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

from calibrate.cli import main
from calibrate.shapes import ATTENTION, parse_model
from emu.errors import EmuError

TINY = "tiny:preset=olmoe-1b-7b,hidden=128,expert_intermediate=128,heads=2,kv_heads=1,vocab=512"
# for timings that must grow with the tokens on a CPU: at 128 x 128 one expert's launch is most of its time (81 us
# at 1 token, 121 us at 64), and a busy host once timed 1 token slower than 64; at 256 x 512: 139 and 432 us
CPU_TINY = "tiny:preset=olmoe-1b-7b,hidden=256,expert_intermediate=512,heads=2,kv_heads=1,vocab=512"


def _one_line(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def test_no_gpu_is_one_line_and_exit_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    torch = pytest.importorskip("torch")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "p.toml"
    assert main(["--out", str(out), "--model", "olmoe-1b-7b"]) == 2
    line = _one_line(capsys.readouterr().err)
    assert "no CUDA GPU" in line and "--device cpu" in line
    assert not out.exists()


def test_no_nvml_is_one_line_and_exit_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    torch = pytest.importorskip("torch")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml -> ImportError
    assert main(["--out", str(tmp_path / "p.toml")]) == 2
    assert "NVML is not available" in _one_line(capsys.readouterr().err)


def test_no_torch_is_one_line_and_exit_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)
    assert main(["--out", str(tmp_path / "p.toml"), "--device", "cpu"]) == 2
    assert "torch is not installed" in _one_line(capsys.readouterr().err)


@pytest.mark.parametrize(("argv", "needle"), [
    (["--model", "no-such-model"], "unknown model preset"),
    (["--model", "x:hidden=64"], "incomplete model table"),
    (["--model", "x:preset=olmoe-1b-7b,bogus=1"], "model.bogus"),
    (["--model", "x:preset=mixtral-8x7b,heads=6,kv_heads=4"], "kv_heads"),
    (["--repeats", "0"], "--repeats"),
])
def test_bad_arguments_are_one_line(argv: list[str], needle: str, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*argv, "--out", str(tmp_path / "p.toml"), "--device", "cpu"]) == 2
    assert needle in _one_line(capsys.readouterr().err)


def test_out_must_be_toml(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--out", str(tmp_path / "p.json"), "--device", "cpu"]) == 2
    assert ".toml" in _one_line(capsys.readouterr().err)


def test_parse_model_presets_and_custom_shapes() -> None:
    mix = parse_model("mixtral-8x7b")
    assert (mix.spec.hidden, mix.spec.expert_intermediate, mix.attention.kv_heads) == (4096, 14336, 8)
    tiny = parse_model(TINY)
    assert tiny.name == "tiny" and tiny.spec.hidden == 128 and tiny.spec.n_experts == 64
    assert (tiny.attention.heads, tiny.attention.kv_heads, tiny.attention.vocab) == (2, 1, 512)
    assert tiny.attention.qk_norm is True  # inherited from the olmoe preset
    for name in ATTENTION:
        assert parse_model(name).spec.name == name
    with pytest.raises(EmuError):
        parse_model("deepseek-v2-lite")  # MLA attention: no shape to time without being told


def test_copy_pool_views_rotate_inside_the_pool() -> None:
    pytest.importorskip("torch")
    from calibrate.bench import Bench
    from calibrate.transfers import MiB, Pools, copy_plan

    plan = copy_plan("cpu", True, 3)
    pools = Pools(Bench("cpu"), plan.pool_bytes)
    for size in plan.sizes:
        offsets = set()
        for i in range(50):
            v = pools.view(pools.pageable, size, i)
            assert v.numel() == size
            off = v.storage_offset()
            assert off % 4096 == 0 and off + size <= pools.nbytes
            offsets.add(off)
        assert len(offsets) > 1 or size * 2 > pools.nbytes
    assert plan.sizes[0] == 4096 and plan.sizes[-1] == 1 * MiB


def _check_profile(path: Path, model: str, grows: bool = True) -> dict:
    data = tomllib.loads(path.read_text())
    assert data["schema"] == "moe-emu/profile/1" and data["provisional"] is False
    c = data["copy"]
    assert c["latency_s"] >= 0 and c["bw_pinned_Bps"] > 1e8 and c["bw_pageable_Bps"] > 1e8
    assert len(c["table_bytes"]) == len(c["table_s"]) >= 3
    assert all(t > 0 for t in c["table_s"])
    comp = data["compute"]
    for key in ("expert_launch_s", "hbm_Bps", "flops_per_s", "dense_layer_s", "pass_overhead_s",
                "layer_overhead_s"):
        assert comp[key] > 0, key
    m = data["models"][model]
    tok, sec = m["expert"]["bf16"]["tokens"], m["expert"]["bf16"]["seconds"]
    assert len(tok) == len(sec) and all(s > 0 for s in sec)
    if grows:  # on the CPU more routed tokens take longer; a tiny shape on a GPU is launch-bound, flat
        assert sec[-1] > sec[0]
    d = m["dense"]
    assert len(d["seconds"]) == len(d["tokens"]) and all(len(r) == len(d["context"]) for r in d["seconds"])
    assert m["cpu_expert"]["bf16"]["seconds"][0] > 0
    raw = json.loads(path.with_name(path.stem + ".raw.json").read_text())
    assert set(raw["copies"]) == {"h2d_pinned", "d2h_pinned", "h2d_pageable", "d2h_pageable"}
    assert raw["models"][model]["expert_bf16"][0]["samples_s"]
    try:
        from emu.profile import load_profile
    except ImportError:
        return data
    load_profile(path)
    return data


def test_cpu_quick_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("torch")
    out = tmp_path / "cpu.toml"
    assert main(["--device", "cpu", "--quick", "--threads", "1", "--no-progress", "--model", CPU_TINY,
                 "--out", str(out)]) == 0
    data = _check_profile(out, "tiny")
    assert data["models"]["tiny"]["expert"]["bf16"]["tokens"] == [1, 8, 64]
    assert data["provenance"]["device"]["device"] == "cpu"
    # a layer's experts as one grouped GEMM, by distinct experts: 1, top_k and 4 top_k (OLMoE's 8 and 32)
    from emu.profile import load_profile

    fused = data["models"]["tiny"]["fused"]["bf16"]
    assert fused["experts"] == [1, 8, 32] and all(s > 0 for s in fused["seconds"])
    assert list(load_profile(out).models["tiny"].fused["bf16"].tokens) == [1.0, 8.0, 32.0]
    assert "wrote" in capsys.readouterr().err


def _cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda(), reason="needs a CUDA GPU")
def test_cuda_quick_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "gpu.toml"
    assert main(["--quick", "--no-progress", "--model", TINY, "--out", str(out)]) == 0
    data = _check_profile(out, "tiny", grows=False)
    assert data["copy"]["h2d_engines"] in (1, 2)
    prov = data["provenance"]
    # the sleep-kernel hold let the host queue every copy and call before the device started
    assert prov["pinned_held"] is True
    assert prov["expert_bf16_device"]["tiny"]["held"] is True
    dev, paced = prov["expert_bf16_device"]["tiny"]["seconds"], data["models"]["tiny"]["expert"]["bf16"]["seconds"]
    assert all(d <= 1.2 * p for d, p in zip(dev, paced))  # hiding launch cost never makes a call slower
    assert isinstance(data["copy"]["h2d_d2h_overlap"], bool)
    assert data["provenance"]["device"]["gpu_name"]


def test_runtime_calibration_warns_when_its_resident_request_ran_on_a_slowed_host(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """`emu calibrate --runtime` checks the profile it wrote: one request per model, whose resident steps ran
    slower than the small cache's beside them (which do at least their work), names the model and the file."""
    pytest.importorskip("torch")
    import live.host_calibration
    from emu.runtime_profile import RuntimeProfile

    def fake_run(name: str, models: list[str], out: Path, **_: object) -> RuntimeProfile:
        def entry(resident: float, small: float) -> dict:
            return {"resident_request": {"decode_step_s": [resident] * 4}, "decode_step_s": [small] * 4}

        prov = {"models": {"slowed": entry(0.030, 0.020), "steady": entry(0.020, 0.031)}}
        out.write_text(f'name = "{name}"\n')
        return RuntimeProfile(name=name, provenance=prov)

    monkeypatch.setattr(live.host_calibration, "run", fake_run)
    out = tmp_path / "rt.toml"
    assert main(["--runtime", "hf-eager", "--device", "cpu", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    warning = next(ln for ln in err.splitlines() if "warning" in ln)
    assert warning.startswith(f"emu calibrate: warning: {out}: ") and "slowed 20.0-30.0 ms (+50%)" in warning
    assert "steady" not in warning
    # a host that kept its pace: no warning
    monkeypatch.setattr(live.host_calibration, "run",
                        lambda name, models, out, **_: RuntimeProfile(name=name, provenance={"models": {
                            "m": {"resident_request": {"decode_step_s": [0.02]}, "decode_step_s": [0.03]}}}))
    assert main(["--runtime", "hf-eager", "--device", "cpu", "--out", str(out)]) == 0
    assert "warning" not in capsys.readouterr().err



def test_the_runtime_calibration_self_checks_against_a_hardware_profile(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import live.host_calibration
    from emu.profile import load_profile
    from emu.runtime_profile import RuntimeProfile
    from live.protocol import self_check

    hw = Path(__file__).resolve().parents[1] / "scenarios" / "profiles" / "h100-pcie5.toml"

    def request(step_s: float) -> dict:
        return {"prompt_len": 16, "costs": {"gate_s": 2e-5, "readback_s": 1e-5},
                "resident_request": {"decode_step_s": [step_s] * 8}}

    # two requests of one model, the second's resident steps twice the first's
    prov = {"models": {"olmoe-1b-7b": {"n_layers": 4, "requests": [request(0.004), request(0.008)]}}}
    rt = RuntimeProfile(name="r", provenance=prov)
    monkeypatch.setattr(live.host_calibration, "run", lambda name, models, out, **_: rt)
    out = tmp_path / "rt.toml"
    assert main(["--runtime", "r", "--device", "cpu", "--out", str(out), "--profile", str(hw)]) == 0
    err = capsys.readouterr().err
    e1, e2 = self_check(load_profile(hw), rt)["olmoe-1b-7b"]
    assert 1 + e1 == pytest.approx(2 * (1 + e2))
    line = next(ln for ln in err.splitlines() if "self-check" in ln)
    assert f"olmoe-1b-7b {e1:+.1%} / {e2:+.1%}" in line
    assert ("warning" in line) == (abs((e1 + e2) / 2) > 0.05)
    # a profile that is not there: one error line naming it
    assert main(["--runtime", "r", "--device", "cpu", "--out", str(out), "--profile", str(tmp_path / "no.toml")]) == 2
    assert "no.toml" in capsys.readouterr().err

def test_a_gated_shared_expert_is_timed_with_its_gate() -> None:
    assert parse_model("qwen1.5-moe-a2.7b").attention.shared_gate is True  # Qwen2-MoE's shared_expert_gate
    assert parse_model("olmoe-1b-7b").attention.shared_gate is False
    shape = ("g:preset=qwen1.5-moe-a2.7b,hidden=64,expert_intermediate=32,n_experts=8,top_k=2,n_moe_layers=1,"
             "shared_intermediate=48,heads=2,kv_heads=2,head_dim=32,vocab=128")
    gated = parse_model(shape)
    assert gated.attention.shared_gate is True and gated.spec.n_shared_experts == 1
    plain = parse_model(shape + ",shared_gate=false")
    with pytest.raises(EmuError, match="true or false"):
        parse_model(shape + ",shared_gate=3")
    pytest.importorskip("torch")
    from calibrate.bench import Bench
    from calibrate.dense import _layer_bytes, _layer_weights, measure_dense

    bench = Bench("cpu")
    assert "shared_gate" in _layer_weights(bench, gated) and "shared_gate" not in _layer_weights(bench, plain)
    assert _layer_bytes(gated) == _layer_bytes(plain) + 2 * 64  # the gate's one row of weights
    out = measure_dense(bench, gated, [1, 4], [8], repeats=1, rotate_bytes=1, tick=lambda _: None)
    assert all(s > 0 for row in out["seconds"] for s in row)
