"""`emu validate` end to end on the CPU: a tiny model run live, its trace replayed by the emulator."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from live.validate_cli import add_parser

PROFILE = str(Path(__file__).resolve().parent.parent / "scenarios/profiles/h100-provisional.toml")


def _validate(argv: list[str]) -> int:
    p = argparse.ArgumentParser()
    add_parser(p.add_subparsers())
    args = p.parse_args(["validate", *argv])
    return args.func(args)


@pytest.mark.parametrize("eviction", ["lru", "least-stale"])
def test_validate_runs_live_then_emulates_with_equal_counts(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                           eviction: str) -> None:
    scen = tmp_path / "tiny.toml"
    scen.write_text(f'model = "olmoe-1b-7b"\nseed = 3\n[hardware]\nprofile = "{PROFILE}"\n[cache]\ncapacity = "10%"\n'
                    f'[workload.synthetic]\ntokens = 64\nprompt_len = 12\noutput_len = 6\n'
                    f'[policy]\neviction = "{eviction}"\n')
    out = tmp_path / "val.json"
    argv = [str(scen), "--device", "cpu", "--scale", "tiny", "--live-dir", str(tmp_path / "live"), "--out", str(out)]
    assert _validate(argv) == 0
    text = capsys.readouterr().out
    assert "live_tiny" in text and "equal" in text
    row = json.loads(out.read_text())["runs"][0]
    assert row["counts_equal"] is True
    rec = json.loads((tmp_path / "live" / "live_tiny.json").read_text())
    assert rec["slots"] == 12 and rec["stats"]["misses"] > 0  # 10% of 2 x 64 keys: evictions happen
    assert row["bytes_h2d"]["measured"] == row["bytes_h2d"]["emulated"] == rec["stats"]["bytes_h2d"]
    assert row["ttft_s"]["measured"] == rec["ttft_s"] and row["ttft_s"]["emulated"] > 0
    # the finished run validates the same way from disk
    assert _validate(["--from-live", str(tmp_path / "live"), "--profile", PROFILE, str(scen)]) == 0
    assert "equal" in capsys.readouterr().out


@pytest.mark.parametrize(("eviction", "partition", "miss"),
                         [("arc", "global", "fetch"), ("s3-fifo", "global", "fetch"), ("fld", "global", "fetch"),
                          ("lhu", "global", "fetch"), ("random", "global", "fetch"), ("lru", "fair-bytes", "fetch"),
                          ("lfu", "count-floor", "fetch"), ("lru", "global", "drop"), ("lru", "global", "cpu")])
def test_every_live_declared_stack_runs_live_with_the_emulators_counts(tmp_path: Path, eviction: str,
                                                                       partition: str, miss: str) -> None:
    # the runtime's decisions are the emulator's decision layer: any policy declared `live` runs, partitions too
    scen = tmp_path / "tiny.toml"
    scen.write_text(f'model = "olmoe-1b-7b"\nseed = 5\n[hardware]\nprofile = "{PROFILE}"\n[cache]\ncapacity = "10%"\n'
                    f'[workload.synthetic]\ntokens = 64\nprompt_len = 12\noutput_len = 6\n'
                    f'[policy]\neviction = "{eviction}"\npartition = "{partition}"\nmiss = "{miss}"\n')
    out = tmp_path / "val.json"
    argv = [str(scen), "--device", "cpu", "--scale", "tiny", "--live-dir", str(tmp_path / "live"), "--out", str(out)]
    assert _validate(argv) == 0
    row = json.loads(out.read_text())["runs"][0]
    rec = json.loads((tmp_path / "live" / "live_tiny.json").read_text())
    assert (rec["eviction"], rec["partition"], rec["miss"]) == (eviction, partition, miss)
    assert rec["stats"]["misses"] > 0 and row["counts_equal"] is True
    assert row["bytes_h2d"]["measured"] == row["bytes_h2d"]["emulated"] == rec["stats"]["bytes_h2d"]
    if miss == "drop":
        assert rec["stats"]["dropped"] > 0
    if miss == "cpu":  # the profile's CPU curve against copy + GPU, as the emulator weighs them
        from emu.profile import load_profile
        from live.validate import emulate_live, load_live_run

        emulated = emulate_live(load_live_run(tmp_path / "live" / "live_tiny.json"), load_profile(PROFILE))
        assert rec["stats"]["cpu_runs"] == emulated.counters["cpu_runs"]
    if partition != "global":  # the partition decided something: one shared pool would have missed otherwise
        from emu.profile import load_profile
        from live.validate import emulate_live, load_live_run

        run = load_live_run(tmp_path / "live" / "live_tiny.json")
        run.record["partition"] = "global"
        pooled = emulate_live(run, load_profile(PROFILE))
        assert (pooled.counters["hits"], pooled.counters["misses"]) != (rec["stats"]["hits"], rec["stats"]["misses"])
