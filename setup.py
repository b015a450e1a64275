"""The wheel carries the bundled scenarios, profiles and traces (the repository's `scenarios/`) as package data
under `emu/bundled/`, so a scenario's relative paths to its profiles and traces hold there as in a checkout."""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

BUNDLED_SUFFIXES = {".toml", ".npz", ".json", ".md", ".csv", ".txt", ".jsonl"}


class BuildWithScenarios(build_py):
    def run(self) -> None:
        super().run()
        source = Path(__file__).resolve().parent / "scenarios"
        target = Path(self.build_lib) / "emu" / "bundled"
        for path in sorted(source.rglob("*")):
            if path.is_file() and path.suffix in BUNDLED_SUFFIXES and "__pycache__" not in path.parts:
                dest = target / path.relative_to(source)
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, dest)


setup(cmdclass={"build_py": BuildWithScenarios})
