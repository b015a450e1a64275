"""`emu --version`, and every run record says which version (and source revision) produced it."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import emu
from emu.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_version_is_printed(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    out = capsys.readouterr().out.strip()
    assert out.startswith(f"moe-emu {emu.__version__}")
    assert re.fullmatch(r"moe-emu \S+( \([0-9a-f]{40}(-dirty)?\))?", out)


def test_run_records_carry_the_version_and_revision(tmp_path: Path) -> None:
    scen = ROOT / "scenarios" / "shootout" / "gsm8k_05pct_lru_none.toml"
    assert main(["run", str(scen), "--out", str(tmp_path), "--quiet"]) == 0
    record = json.loads((tmp_path / "gsm8k_05pct_lru_none.json").read_text())
    assert record["version"] == emu.__version__
    rev = record["git_revision"]
    assert rev is None or re.fullmatch(r"[0-9a-f]{40}(-dirty)?", rev)
    if (ROOT / ".git").exists():
        assert rev is not None
