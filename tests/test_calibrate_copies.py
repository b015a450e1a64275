"""The copy table's points resist the link's slow spells: a point's copies are spread over rounds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from calibrate import transfers
from calibrate.transfers import KINDS, CopyPlan, measure_copies

SIZES = (4096, 65536, 1 << 20)
NORMAL_S_PER_BYTE = 1e-9


class SpellBench:
    """A bench whose copies take 1 ns a byte, three times that during a slow spell: a window of
    consecutive copies (`spell`, counted over every copy the measurement makes)."""

    is_cuda = False

    def __init__(self, spell: range) -> None:
        self.spell = spell
        self.copies = 0
        self.size = 0
        self.last_held = False

    def new_stream(self) -> None:
        return None

    def _one(self, fn: Any, i: int) -> float:
        fn(i)
        self.copies += 1
        slow = 3.0 if self.copies in self.spell else 1.0
        return self.size * NORMAL_S_PER_BYTE * slow

    def time_each(self, fn: Any, n: int, stream: Any = None, hold_s: float = 0.0) -> tuple[list[float], list[float]]:
        times = [self._one(fn, i) for i in range(n)]
        return times, [1e-6] * n

    def time_loop(self, fn: Any, n: int, stream: Any = None, hold_s: float = 0.0) -> float:
        return sum(self._one(fn, i) for i in range(n)) / n


@pytest.fixture()
def sized_copies(monkeypatch: pytest.MonkeyPatch) -> None:
    def copy_fn(pools: Any, kind: str, size: int) -> Any:
        def fn(i: int) -> None:
            pools.size = size  # the bench prices the copy by the size it last saw
        return fn

    monkeypatch.setattr(transfers, "_copy_fn", copy_fn)


def _measure(spell: range, rounds: int) -> dict[str, Any]:
    bench = SpellBench(spell)
    plan = CopyPlan(sizes=SIZES, repeats=6, bytes_per_point=1 << 40, pool_bytes=1 << 30, concurrency_bytes=0,
                    concurrency_copies=0, concurrency_repeats=0, matmul_n=0)
    return measure_copies(bench, plan, bench, lambda label: None, rounds=rounds)  # type: ignore[arg-type]


def test_a_slow_spell_moves_no_points_median(sized_copies: None) -> None:
    # 24 warm-up copies (2 per kind and size), then rounds of 12 points x 2 copies: the spell is one round long
    out = _measure(range(25 + 24, 25 + 48), rounds=5)
    for kind in KINDS:
        for point in out[kind]:
            assert len(point["samples_s"]) == 10 and point["rounds"] == 5
            assert sum(t > point["bytes"] * NORMAL_S_PER_BYTE for t in point["samples_s"]) <= 2
            assert point["median_s"] == pytest.approx(point["bytes"] * NORMAL_S_PER_BYTE)


def test_in_one_round_the_same_spell_takes_whole_points(sized_copies: None) -> None:
    out = _measure(range(25 + 24, 25 + 48), rounds=1)  # each point's 6 copies back to back
    slow = [p for kind in KINDS for p in out[kind] if p["median_s"] > p["bytes"] * NORMAL_S_PER_BYTE * 1.5]
    assert len(slow) >= 3


def test_a_table_slower_than_its_own_sustained_run_is_named() -> None:
    import json

    from calibrate.profile_writer import copy_table_check
    from emu.profile import load_profile, profile_copy_warning

    size = 64 << 20
    raw = {"copies": {"h2d_pinned": [{"bytes": 1 << 20, "median_s": 2.3e-5}, {"bytes": size, "median_s": 1.323e-3}]},
           "sustained": {"bytes": size, "median_s": 1.214e-3}}
    warning = copy_table_check(raw, "dev.toml")
    assert warning is not None and warning.startswith("dev.toml: ") and "64 MiB" in warning and "9.0% slower" in warning
    raw["copies"]["h2d_pinned"][1]["median_s"] = 1.259e-3  # 3.7% slower: within the tolerance
    assert copy_table_check(raw, "dev.toml") is None
    assert copy_table_check({"copies": raw["copies"]}, "dev.toml") is None  # no sustained run (the CPU)
    for lease in ("lease8-graph-split", "lease9-graph"):  # the committed calibrations: lease 9's is named, from
        path = Path(__file__).resolve().parents[1] / "validation" / f"2026-12-06-h100-{lease}" / "calibration"
        found = copy_table_check(json.loads((path / "dev.raw.json").read_text()), lease)  # its raw data and
        assert (found is not None) == (lease == "lease9-graph")
        found = profile_copy_warning(load_profile(path / "dev.toml"))  # from the profile it wrote
        assert (found is not None) == (lease == "lease9-graph")
