"""scripts/source_digest.py: the digest a lease records of the code it ran, and the commit it names."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("source_digest", ROOT / "scripts" / "source_digest.py")
assert spec is not None and spec.loader is not None
source_digest = importlib.util.module_from_spec(spec)
spec.loader.exec_module(source_digest)


def _tree(root: Path) -> Path:
    (root / "emu" / "sub").mkdir(parents=True)
    (root / "live").mkdir()
    (root / "validation").mkdir()
    (root / "emu" / "a.py").write_text("x = 1\n")
    (root / "emu" / "sub" / "b.py").write_text("y = 2\n")
    (root / "live" / "c.py").write_text("z = 3\n")
    (root / "validation" / "lease.sh").write_text("echo part\n")
    (root / "pyproject.toml").write_text("[project]\n")
    return root


def test_the_digest_follows_the_code_and_nothing_else(tmp_path: Path) -> None:
    a = _tree(tmp_path / "a")
    b = shutil.copytree(a, tmp_path / "b")
    assert source_digest.digest(a) == source_digest.digest(b)  # where the tree lies does not count
    (b / "emu" / "__pycache__").mkdir()
    (b / "emu" / "__pycache__" / "a.cpython-311.py").write_text("compiled")
    (b / "emu" / "notes.txt").write_text("not code")
    (b / "README.md").write_text("docs")
    assert source_digest.digest(a) == source_digest.digest(b)
    (b / "emu" / "a.py").write_text("x = 2\n")  # one byte of code
    assert source_digest.digest(a) != source_digest.digest(b)
    c = shutil.copytree(a, tmp_path / "c")
    (c / "emu" / "sub" / "b.py").rename(c / "emu" / "b.py")  # the same bytes under another path
    assert source_digest.digest(a) != source_digest.digest(c)
    d = shutil.copytree(a, tmp_path / "d")
    (d / "validation" / "lease.sh").write_text("echo other part\n")
    assert source_digest.digest(a) != source_digest.digest(d)


def test_find_names_the_commit_whose_tree_has_the_digest() -> None:
    if not (ROOT / ".git").exists() or shutil.which("git") is None:
        pytest.skip("not a git checkout")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout.strip()
    assert source_digest.find(source_digest.commit_digest("HEAD"), 1) == head
    assert source_digest.find("0" * 64, 3) is None
