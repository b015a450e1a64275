"""Bad input gets one clear line naming the file, the key and what was expected, and a non-zero exit."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from emu.cli import main
from emu.trace import RoutingTrace

REPO = Path(__file__).resolve().parents[1]
PROFILE = REPO / "scenarios" / "profiles" / "h100-provisional.toml"

BASE = """
model = "olmoe-1b-7b"
[hardware]
profile = "{profile}"
[cache]
capacity = "5%"
[workload.synthetic]
tokens = 40
prompt_len = 8
output_len = 8
[engine]
kind = "des"
"""


def write(tmp_path: Path, text: str, name: str = "s.toml") -> Path:
    path = tmp_path / name
    path.write_text(text.replace("{profile}", str(PROFILE)))
    return path


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, err: str, *needles: str) -> None:
    assert code == 2
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("emu: error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def test_valid_scenario_runs_and_writes_json(tmp_path, capsys):
    path = write(tmp_path, BASE)
    code, out, _err = run_cli(capsys, "run", str(path), "--out", str(tmp_path / "out"))
    assert code == 0
    rec = json.loads((tmp_path / "out" / "s.json").read_text())
    for key in ("ttft_s", "tpot_s", "decode_tok_per_s", "e2e_s", "hit_rate", "accesses", "hits",
                "late_prefetch_hits", "misses_compulsory", "misses_capacity", "misses_collision", "dropped",
                "bytes_h2d", "copy_busy_frac", "compute_busy_frac", "stall_s", "per_layer", "scenario", "trace",
                "engine"):
        assert key in rec, key
    assert len(rec["per_layer"]) == 16 and "misses_collision" in rec["per_layer"][0]
    assert rec["hits"] + rec["misses"] + rec["dropped"] == rec["accesses"]
    assert rec["scenario"]["cache"]["capacity"] == "5%" and rec["engine"] == "des"
    assert len(rec["trace"]["fingerprint"]) == 16
    assert "s " in out or out.splitlines()[2].startswith("s")


def test_same_seed_same_json(tmp_path, capsys):
    path = write(tmp_path, BASE)
    run_cli(capsys, "run", str(path), "--out", str(tmp_path / "a"))
    run_cli(capsys, "run", str(path), "--out", str(tmp_path / "b"))
    a = json.loads((tmp_path / "a" / "s.json").read_text())
    b = json.loads((tmp_path / "b" / "s.json").read_text())
    a.pop("timings"), b.pop("timings")
    assert a == b


def test_set_override_is_applied_and_validated(tmp_path, capsys):
    path = write(tmp_path, BASE)
    code, _out, _err = run_cli(capsys, "run", str(path), "--out", str(tmp_path), "--set", "cache.capacity=25%")
    assert code == 0
    rec = json.loads((tmp_path / "s@cache.capacity=25pct.json").read_text())  # named with its override
    assert rec["scenario"]["cache"]["capacity"] == "25%"
    code, _out, err = run_cli(capsys, "run", str(path), "--set", "cache.capacity=lots")
    assert_one_line_error(code, err, "s.toml", "cache.capacity", "lots")


@pytest.mark.parametrize(("edit", "needles"), [
    (lambda s: s + "\n[extra]\nx = 1\n", ("s.toml", "extra", "unknown key")),
    (lambda s: s.replace("[cache]", "[cache]\ncolour = 1"), ("cache.colour", "unknown key")),
    (lambda s: s.replace('capacity = "5%"', "capacity = true"), ("cache.capacity", "expected")),
    (lambda s: s.replace('capacity = "5%"', 'capacity = "1kB"'), ("cache.capacity", "cannot hold one expert")),
    (lambda s: s.replace('kind = "des"', 'kind = "warp"'), ("engine.kind", "expected one of")),
    (lambda s: s.replace('model = "olmoe-1b-7b"', 'model = "gpt-5"'), ("model", "unknown model preset")),
    (lambda s: s.replace("tokens = 40", "tokens = -4"), ("workload.synthetic", "tokens")),
    (lambda s: s.replace('profile = "', 'profile = "/nonexistent/'), ("hardware.profile", "not found")),
    (lambda s: s + '\n[policy]\neviction = "clairvoyant"\n', ("policy.eviction", "unknown eviction policy")),
    (lambda s: s + '\n[policy]\neviction = { name = "lru", depth = 3 }\n', ("policy.eviction.depth",)),
])
def test_bad_scenarios(tmp_path, capsys, edit, needles):
    path = write(tmp_path, edit(BASE))
    code, _out, err = run_cli(capsys, "run", str(path), "--out", str(tmp_path))
    assert_one_line_error(code, err, *needles)


def test_missing_scenario_file(tmp_path, capsys):
    code, _out, err = run_cli(capsys, "run", str(tmp_path / "nope.toml"))
    assert_one_line_error(code, err, "nope.toml", "not found")


def test_invalid_toml(tmp_path, capsys):
    path = write(tmp_path, "model = [")
    code, _out, err = run_cli(capsys, "run", str(path))
    assert_one_line_error(code, err, "s.toml", "not valid TOML")


@pytest.mark.parametrize(("edit", "needles"), [
    (lambda s: s.replace("latency_s = 1.0e-5", "latency_s = nan"), ("copy.latency_s", "finite")),
    (lambda s: s.replace("bw_pinned_Bps = 5.5e10", "bw_pinned_Bps = \"fast\""), ("copy.bw_pinned_Bps", "number")),
    (lambda s: s.replace("h2d_engines = 1", "h2d_engines = 0"), ("copy.h2d_engines", "positive integer")),
    (lambda s: s.replace("[compute]", "[compute]\nwarp = 9"), ("compute.warp", "unknown key")),
])
def test_bad_profiles(tmp_path, capsys, edit, needles):
    profile = tmp_path / "p.toml"
    profile.write_text(edit(PROFILE.read_text()))
    path = tmp_path / "s.toml"
    path.write_text(BASE.replace("{profile}", str(profile)))
    code, _out, err = run_cli(capsys, "run", str(path))
    assert_one_line_error(code, err, "p.toml", *needles)


def _trace(tmp_path: Path, layers: int, experts_max: int, top_k: int) -> Path:
    rng = np.random.default_rng(0)
    n = 6
    # distinct ids within each token's top-k (a trace with repeats is refused on load, for another reason)
    ex = np.argsort(rng.random((n, layers, experts_max)), axis=2)[:, :, :top_k].astype(np.int16)
    ex[0, 0, 0] = experts_max - 1
    ex[0, 0, 1:] = np.arange(top_k - 1)
    tr = RoutingTrace(experts=ex, pass_offsets=np.arange(n + 1, dtype=np.int64), pass_phase=np.ones(n, np.int8),
                      token_request=np.zeros(n, np.int32), token_position=np.arange(n, dtype=np.int32))
    path = tmp_path / "t.npz"
    tr.save(path)
    return path


@pytest.mark.parametrize(("shape", "needle"), [
    ((15, 64, 8), "15 MoE layers"),
    ((16, 65, 8), "expert id 64"),
    ((16, 64, 4), "top-4"),
])
def test_trace_that_does_not_fit_the_model(tmp_path, capsys, shape, needle):
    trace = _trace(tmp_path, *shape)
    text = BASE.replace("[workload.synthetic]\ntokens = 40\nprompt_len = 8\noutput_len = 8",
                        f"[workload]\ntrace = \"{trace}\"")
    path = write(tmp_path, text)
    code, _out, err = run_cli(capsys, "run", str(path))
    assert_one_line_error(code, err, "s.toml", "workload.trace", needle)


def test_thrash_zone_warns_but_runs(tmp_path, capsys):
    path = write(tmp_path, BASE.replace('capacity = "5%"', "capacity = 4"))
    code, _out, err = run_cli(capsys, "run", str(path), "--out", str(tmp_path))
    assert code == 0
    assert "thrash zone" in err and "top_k = 8" in err


def test_bundled_scenarios_validate(capsys):
    from emu.scenario import load_scenario

    for path in sorted((REPO / "scenarios").glob("*.toml")):
        sc = load_scenario(path)
        assert sc.cache.capacity_bytes > 0


def test_policies_listing(capsys):
    code, out, _err = run_cli(capsys, "policies", "--json")
    assert code == 0
    listing = json.loads(out)
    assert "lru" in listing["eviction"] and "fetch" in listing["miss"] and "none" in listing["prefetch"]
