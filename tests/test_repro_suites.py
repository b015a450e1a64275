"""The reproduction suites (scenarios/specmd/, scenarios/prefetch-study/; docs/specmd.md, docs/prefetch_study.md):
every sweep and base scenario loads and validates, the files are what their generator writes, the listing of
bundled scenarios leaves the sweeps out, and one small point of each suite runs with its counts adding up."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import attrs
import pytest

from emu import bundled
from emu.scenario import load_scenario
from emu.sweep import grid_points, load_sweep, run_point, validate_points

ROOT = Path(__file__).resolve().parents[1]
SUITES = {"specmd": "make_specmd.py", "prefetch-study": "make_prefetch_study.py"}
SWEEPS = sorted(p for suite in SUITES for p in (ROOT / "scenarios" / suite).glob("*.toml"))
BASES = sorted(p for suite in SUITES for p in (ROOT / "scenarios" / suite / "models").glob("*.toml"))


def _ids(paths: list[Path]) -> list[str]:
    return [str(p.relative_to(ROOT / "scenarios")) for p in paths]


def test_the_suites_are_there() -> None:
    stems = {p.stem for p in SWEEPS}
    for exp in ("table1", "collisions", "prefetch", "miss", "strength"):
        assert {f"{exp}_{m}" for m in ("olmoe", "mixtral", "qwen15", "phi35")} <= stems
    assert {"switch", "switch_flat", "qwen_moe", "qwen_moe_flat", "qwen3_real"} <= stems
    assert len(BASES) == 10


@pytest.mark.parametrize("path", SWEEPS, ids=_ids(SWEEPS))
def test_every_sweep_loads_and_validates(path: Path) -> None:
    spec = load_sweep(path)
    points = grid_points(spec)
    scenarios = validate_points(points, str(path))  # every point's scenario resolved, its policies built
    assert len(scenarios) == len(points) >= 4
    for scenario in scenarios:
        trace = scenario.workload.trace
        assert trace is None or Path(trace).is_file()


@pytest.mark.parametrize("path", BASES, ids=_ids(BASES))
def test_every_base_scenario_loads(path: Path) -> None:
    scenario = load_scenario(path)
    assert scenario.profile_path.endswith(("a100-80gb-5gbps.toml", "h100-pcie5.toml"))


@pytest.mark.parametrize("suite", sorted(SUITES))
def test_the_files_are_what_the_generator_writes(suite: str, tmp_path: Path) -> None:
    folder = ROOT / "scenarios" / suite
    spec = importlib.util.spec_from_file_location(f"gen_{suite.replace('-', '_')}", folder / SUITES[suite])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    (tmp_path / "models").mkdir()
    module.main(tmp_path)
    made = {str(p.relative_to(tmp_path)): p.read_text() for p in tmp_path.rglob("*.toml")}
    have = {str(p.relative_to(folder)): p.read_text() for p in folder.rglob("*.toml")}
    assert made == have, "edit the generator and run it, not the generated files"


def test_the_bundled_listing_leaves_the_sweeps_out() -> None:
    found = bundled.scenarios()
    assert all(p not in found.values() for p in SWEEPS)
    assert all(found[p.stem] == p for p in BASES)  # the bases run by name: `emu run specmd_olmoe`


def _small(path: Path, stack: str, tokens: int | None) -> attrs.AttrsInstance:
    point = next(p for p in grid_points(load_sweep(path)) if p.stack == stack)
    extra = () if tokens is None else (f"workload.synthetic.tokens={tokens}",)
    return attrs.evolve(point, overrides=(*point.overrides, *extra))


@pytest.mark.parametrize(("sweep", "stack", "tokens"), [
    ("specmd/table1_olmoe.toml", "#5 SpecMD: score-pf+LS+fetch", 160),
    ("prefetch-study/qwen3_real.toml", "E intelligent adaptive", None),
])
def test_one_small_point_runs(sweep: str, stack: str, tokens: int | None) -> None:
    _index, row, record, _messages = run_point(_small(ROOT / "scenarios" / sweep, stack, tokens))
    assert record["hits"] + record["late_prefetch_hits"] + record["misses"] + record["dropped"] == record["accesses"]
    assert record["accesses"] > 0 and row["stack"] == stack
    assert record["prefetch_issued"] > 0  # both stacks prefetch
