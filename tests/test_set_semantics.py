"""`--set` as a user means it: one workload kind replaces the other, paths are from the current folder, keys can be
removed (`--unset`), and runs that differ by their overrides keep their own result files (or `--name`)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from emu.cli import main, result_name
from emu.errors import EmuError
from emu.scenario import from_here, load_scenario

ROOT = Path(__file__).resolve().parents[1]
SYNTHETIC = ROOT / "scenarios" / "olmoe-1b-7b_h100_5pct.toml"
TRACED = ROOT / "scenarios" / "mixtral-8x7b_h100_gsm8k_25pct.toml"


def test_a_trace_replaces_a_synthetic_workload_and_its_path_is_from_here(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shutil.copy(ROOT / "scenarios" / "traces" / "mixtral8x7b_gsm8k.npz", tmp_path / "t.npz")
    sc = load_scenario(SYNTHETIC, from_here(["workload.trace=t.npz", 'model="mixtral-8x7b"']))
    assert sc.workload.trace == str(tmp_path / "t.npz") and sc.workload.synthetic is None
    with pytest.raises(EmuError, match="file not found"):  # typed: from here, not from the scenario's folder
        load_scenario(SYNTHETIC, from_here(["workload.trace=traces/mixtral8x7b_gsm8k.npz"]))
    # in a file (a sweep's `set`) a path is from that file's side: the scenario's folder here
    sc = load_scenario(SYNTHETIC, ["workload.trace=traces/mixtral8x7b_gsm8k.npz", 'model="mixtral-8x7b"'])
    assert sc.workload.trace == str(SYNTHETIC.parent / "traces" / "mixtral8x7b_gsm8k.npz")


def test_synthetic_keys_replace_a_trace():
    sc = load_scenario(TRACED, ["workload.synthetic.tokens=64", "workload.synthetic.prompt_len=8",
                                "workload.synthetic.output_len=8"])
    assert sc.workload.trace is None and sc.workload.synthetic["tokens"] == 64


def test_unset_removes_a_key_and_names_a_missing_one():
    base = load_scenario(SYNTHETIC)
    assert base.workload.synthetic["zipf_s"] == 0.6
    sc = load_scenario(SYNTHETIC, ["-workload.synthetic.zipf_s"])
    assert "zipf_s" not in sc.workload.synthetic
    with pytest.raises(EmuError, match=r"cannot unset cache\.nope"):
        load_scenario(SYNTHETIC, ["-cache.nope"])


def test_runs_that_differ_by_their_overrides_keep_their_own_files(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["run", str(SYNTHETIC), "--quiet", "--set", "cache.capacity=25%"]) == 0
    assert main(["run", str(SYNTHETIC), "--quiet", "--set", "cache.capacity=10%"]) == 0
    assert main(["run", str(SYNTHETIC), "--quiet", "--set", "cache.capacity=10%", "--name", "ten"]) == 0
    names = sorted(p.name for p in (tmp_path / "runs").iterdir())
    assert names == ["olmoe-1b-7b_h100_5pct@cache.capacity=10pct.json",
                     "olmoe-1b-7b_h100_5pct@cache.capacity=25pct.json", "ten.json"]
    a = json.loads((tmp_path / "runs" / names[0]).read_text())
    b = json.loads((tmp_path / "runs" / names[1]).read_text())
    assert a["decode_tok_per_s"] != b["decode_tok_per_s"]
    assert main(["run", str(SYNTHETIC), str(TRACED), "--name", "x"]) == 2
    assert "--name" in capsys.readouterr().err


def test_result_names():
    assert result_name("s", []) == "s"
    got = result_name("s", ["cache.capacity=5%", "-workload.max_tokens"])
    assert got == "s@cache.capacity=5pct+-workload.max_tokens"
    long = result_name("s", [f"policy.eviction.p{i}=0.5" for i in range(8)])
    assert long.startswith("s@overrides-") and len(long) == len("s@overrides-") + 12


def test_the_cli_reads_a_typed_path_from_here_and_names_the_result_as_typed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shutil.copy(ROOT / "scenarios" / "traces" / "mixtral8x7b_gsm8k.npz", tmp_path / "t.npz")
    assert main(["run", str(SYNTHETIC), "--quiet", "--set", "workload.trace=t.npz", "--set", "model=mixtral-8x7b"]) == 0
    (written,) = (tmp_path / "runs").iterdir()
    assert written.name == "olmoe-1b-7b_h100_5pct@workload.trace=t.npz+model=mixtral-8x7b.json"
    record = json.loads(written.read_text())
    assert record["scenario"]["workload"]["trace"] == str(tmp_path / "t.npz")
