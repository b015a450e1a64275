"""validation/lease.sh: what each part runs (`--dry-run`, no GPU), against validation/matrix.toml. A typo in its
selections would only show on a GPU machine, after its start had cost device time."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def _lease(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", "validation/lease.sh", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, check=False)


def _part(n: int) -> tuple[str, list[str]]:
    proc = _lease(str(n), "--dry-run")
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    words = proc.stdout.split()
    assert words[:2] == ["part", f"{n}:"]
    decode = words[words.index("--decode") + 1]
    runtime = words[words.index("--calibrate-runtime") + 1]
    experts = words[words.index("--experts") + 1] if "--experts" in words else "eager"
    assert runtime == f"hf-{decode}" + ("-fused" if experts == "fused" else "")
    if experts == "fused":
        decode += "-fused"
    configs = [words[i + 1] for i, w in enumerate(words) if w == "--only"]
    assert len(configs) == len(set(configs))
    return decode, configs


def test_every_part_runs_configurations_of_the_matrix() -> None:
    matrix = tomllib.loads((ROOT / "validation" / "matrix.toml").read_text())["config"]
    names = {c["name"] for c in matrix}
    model = {c["name"]: c["model"] for c in matrix}
    batch1_olmoe = {c["name"] for c in matrix if c["model"] == "olmoe-1b-7b" and c.get("batch", 1) == 1}
    parts = {n: _part(n) for n in range(1, 18)}
    for _decode, configs in parts.values():
        assert set(configs) <= names
    graph = {n for n, (decode, _) in parts.items() if decode == "graph"}
    assert graph == {1, 2, 4, 6, 7} and {n for n, (d, _) in parts.items() if d == "eager"} == {3, 5, 8, 12, 13, 14}
    assert parts[9] == ("graph-fused", parts[4][1])  # part 4's configurations with the fused experts kernel
    assert parts[10] == ("graph-fused", [c for c in parts[4][1] if model[c] == "olmoe-1b-7b"])  # OLMoE's of part 9
    assert parts[11] == ("graph-fused", parts[7][1])  # part 7's Mixtral with the fused experts kernel
    assert parts[12] == parts[5] and parts[13] == parts[3]  # parts 5's and 3's eager runs (then the device)

    def union(*ns: int) -> set[str]:
        return {c for n in ns for c in parts[n][1]}

    # the whole matrix: graph in parts 1 + 2 or 4 + 7, eager in parts 3 + 5
    assert union(1, 2) == union(4, 7) == union(3, 5) == union(9, 11) == names  # 9 + 11: the graph matrix, fused
    assert not union(4) & union(7) and not union(1) & union(2)
    assert {model[c] for c in union(7)} == {"mixtral-8x7b"}
    assert union(6) == union(8) == batch1_olmoe  # the short parts: OLMoE at batch 1
    assert union(14) == {c for c in union(12) if model[c] == "qwen3-30b-a3b"} and len(union(14)) == 5  # Qwen3's
    assert parts[15] == ("graph-fused", [c for c in parts[9][1] if model[c] == "qwen1.5-moe-a2.7b"])  # Qwen1.5's of 9
    assert parts[16] == ("graph-fused", [c for c in parts[9][1] if model[c] == "qwen3-30b-a3b"])  # Qwen3's of 9
    assert parts[17] == parts[11]  # part 11's Mixtral, then its own device calibration
    assert union(10, 15, 16, 17) == names  # the fused matrix in four short parts


@pytest.mark.parametrize("args", [[], ["0"], ["18"], ["1", "--now"], ["1", "--dry-run", "x"], ["a"]])
def test_a_bad_part_is_one_usage_line_and_exit_2(args: list[str]) -> None:
    proc = _lease(*args)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == ["usage: bash validation/lease.sh PART (1-17) [--dry-run]"]


def test_processing_a_lease_refuses_without_its_arguments_or_over_a_dataset() -> None:
    def process(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["bash", "scripts/process_lease.sh", *args], cwd=ROOT, capture_output=True, text=True,
                              timeout=60, check=False)

    proc = process("name", "h100")
    assert proc.returncode == 2 and proc.stderr.startswith("usage: bash scripts/process_lease.sh NAME GPU_KIND")
    existing = next(p.name for p in (ROOT / "validation").iterdir() if (p / "comparisons.json").is_file())
    proc = process(existing, "h100", "x.tar.gz")  # a committed dataset is never written over
    assert proc.returncode == 2 and "already there" in proc.stderr
    proc = process("2099-01-01-h100-none", "h100", "no-such.tar.gz")
    assert proc.returncode == 2 and "no such tarball" in proc.stderr
    assert not (ROOT / "validation" / "2099-01-01-h100-none").exists()
