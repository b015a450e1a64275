"""A hardware profile is read once per process while its file is unchanged."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from emu.profile import load_profile

ROOT = Path(__file__).resolve().parents[1]


def test_an_unchanged_profile_is_read_once_and_an_edited_one_again(tmp_path):
    path = tmp_path / "p.toml"
    shutil.copy(ROOT / "scenarios" / "profiles" / "h100-pcie5.toml", path)
    first = load_profile(path)
    assert load_profile(str(path)) is first  # the same object: no second parse
    text = path.read_text().replace('name = "', 'name = "edited-', 1)
    path.write_text(text)
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # a later modification time, whatever the clock
    again = load_profile(path)
    assert again is not first and again.name.startswith("edited-")
