"""scripts/compare_runs.py: a policy parameter added since the `before` record is skipped only at its default."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _compare_runs():
    spec = importlib.util.spec_from_file_location("compare_runs", ROOT / "scripts" / "compare_runs.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _record(folder: Path, eviction: dict, hits: int) -> Path:
    folder.mkdir(exist_ok=True)
    (folder / "s.json").write_text(json.dumps({"scenario": {"policy": {"eviction": eviction}}, "hits": hits}))
    return folder


def test_new_parameter_at_its_default_is_not_a_difference(tmp_path, capsys):
    cr = _compare_runs()
    before = _record(tmp_path / "a", {"name": "fld"}, 5)
    assert cr.compare(before, _record(tmp_path / "b", {"name": "fld", "absolute": 0}, 5), 0.0) == 0
    assert "eviction.fld.absolute" in capsys.readouterr().out
    # not at its default, or with a changed count: a difference
    assert cr.compare(before, _record(tmp_path / "c", {"name": "fld", "absolute": 1}, 5), 0.0) == 1
    assert cr.compare(before, _record(tmp_path / "d", {"name": "fld", "absolute": 0}, 6), 0.0) == 1
    # a key that is no parameter of the policy is always a difference
    assert cr.compare(before, _record(tmp_path / "e", {"name": "fld", "bogus": 0}, 5), 0.0) == 1
