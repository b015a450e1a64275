"""Bad input of every kind is one `emu: error:` line naming the file, key or option, and exit code 2: never a
traceback, a hang, or a silently wrong number (hardware profiles, output paths, trace generation sizes,
capacities, counts, undecodable or deeply nested text, damaged .npz traces, live runs without torch)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from emu.cli import main
from emu.errors import EmuError
from emu.models import get_preset
from emu.profile import MAX_H2D_ENGINES, profile_from_dict
from emu.trace import RoutingTrace

from .conftest import make_trace
from .test_scenario_bad_input import BASE as SCENARIO
from .test_scenario_bad_input import PROFILE, REPO


def one_error_line(capsys, argv: list[str], *needles: str) -> str:
    """Run the CLI in-process; it must exit 2 with exactly one stderr line, `emu: error: ...`, holding needles."""
    code = main(argv)
    _out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1, err
    assert lines[0].startswith("emu: error:"), err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def scenario(tmp_path: Path, profile: Path = PROFILE) -> Path:
    path = tmp_path / "s.toml"
    path.write_text(SCENARIO.replace("{profile}", str(profile)))
    return path


# ---- 1. hardware profile ranges ------------------------------------------------------------------

def _profile_doc(**copy: object) -> dict:
    return {"name": "p", "copy": {"h2d_engines": 1, "latency_s": 0.0, "bw_pinned_Bps": 1e9, "bw_pageable_Bps": 1e9,
                                  **copy},
            "compute": {"expert_launch_s": 1e-6, "hbm_Bps": 1e12, "flops_per_s": 1e12, "dense_layer_s": 1e-5}}


def test_h2d_engines_is_bounded_and_the_bound_itself_is_accepted():
    assert profile_from_dict(_profile_doc(h2d_engines=MAX_H2D_ENGINES)).copy.h2d_engines == 64
    for bad in (MAX_H2D_ENGINES + 1, 100_000_000, 0):
        with pytest.raises(EmuError) as err:
            profile_from_dict(_profile_doc(h2d_engines=bad), file="p.toml")
        assert err.value.file == "p.toml" and err.value.key == "copy.h2d_engines"


@pytest.mark.parametrize(("fused", "key", "what"), [
    ({"bf16": {"experts": [0, 2], "seconds": [1e-4, 2e-4]}}, "models.m.fused.bf16.experts", "at least 1"),
    ({"bf16": {"experts": [1, 2], "seconds": [1e-4]}}, "models.m.fused.bf16.seconds", "one per expert count"),
    ({"bf16": {"experts": [2, 1], "seconds": [1e-4, 2e-4]}}, "models.m.fused.bf16.experts", "increasing"),
    ({"bf17": {"experts": [1], "seconds": [1e-4]}}, "models.m.fused.bf17", "unknown precision"),
])
def test_a_bad_fused_table_names_its_key(fused, key, what):
    doc = _profile_doc() | {"models": {"m": {"expert": {"bf16": {"tokens": [1], "seconds": [1e-5]}},
                                             "fused": fused}}}
    with pytest.raises(EmuError, match=what) as err:
        profile_from_dict(doc, file="p.toml")
    assert err.value.file == "p.toml" and err.value.key == key


def test_a_huge_copy_table_is_refused():
    n = 5000
    doc = _profile_doc(table_bytes=list(range(1, n + 1)), table_s=[1.0] * n)
    with pytest.raises(EmuError, match="at most 4096 values") as err:
        profile_from_dict(doc, file="p.toml")
    assert err.value.key == "copy.table_bytes"


def test_run_with_a_hundred_million_copy_engines_fails_fast_not_hangs(tmp_path):
    text = PROFILE.read_text()
    assert "h2d_engines" in text
    lines = [("h2d_engines = 100000000" if ln.strip().startswith("h2d_engines") else ln) for ln in text.splitlines()]
    profile = tmp_path / "p.toml"
    profile.write_text("\n".join(lines) + "\n")
    proc = subprocess.run([sys.executable, "-m", "emu.cli", "run", str(scenario(tmp_path, profile)), "--out",
                           str(tmp_path / "out")], capture_output=True, text=True, timeout=120, cwd=REPO)
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr
    assert [ln for ln in err if ln.startswith("emu: error:")] == err[:1] and "Traceback" not in proc.stderr
    assert "copy.h2d_engines" in err[0] and "1..64" in err[0] and str(profile) in err[0]


# ---- 2. output paths of `emu run` --------------------------------------------------------------------

def test_out_that_is_a_regular_file(tmp_path, capsys):
    target = tmp_path / "afile"
    target.write_text("x")
    one_error_line(capsys, ["run", str(scenario(tmp_path)), "--out", str(target)], "--out", "not a directory")
    assert target.read_text() == "x"


def test_out_under_a_regular_file(tmp_path, capsys):
    target = tmp_path / "afile"
    target.write_text("x")
    one_error_line(capsys, ["run", str(scenario(tmp_path)), "--out", str(target / "sub")], "--out",
                   str(target / "sub"))


def test_timeline_that_is_a_directory(tmp_path, capsys):
    one_error_line(capsys, ["run", str(scenario(tmp_path)), "--out", str(tmp_path / "o"), "--timeline",
                            str(tmp_path)], "--timeline", "is a directory")
    assert not (tmp_path / "o" / "s.json").exists()  # refused before the run


def test_timeline_under_a_regular_file(tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    one_error_line(capsys, ["run", str(scenario(tmp_path)), "--out", str(tmp_path / "o"), "--timeline",
                            str(tmp_path / "afile" / "t.json")], "--timeline")


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs /proc")
@pytest.mark.parametrize("option,path", [("--out", "/proc/emu-bad-input-test"), ("--out", "/proc"),
                                         ("--timeline", "/proc/emu-bad-input-test.json")])
def test_outputs_under_proc(tmp_path, capsys, option, path):
    argv = ["run", str(scenario(tmp_path)), "--out", str(tmp_path / "o")]
    argv += [option, path] if option == "--timeline" else []
    if option == "--out":
        argv[-1] = path
    one_error_line(capsys, argv, option, "/proc")
    assert not (tmp_path / "o" / "s.json").exists()


# ---- 3. `emu trace gen` sizes ----------------------------------------------------------------------

def test_gen_of_2_to_the_40_tokens_is_refused_before_allocating(tmp_path, capsys):
    line = one_error_line(capsys, ["trace", "gen", "--model", "olmoe-1b-7b", "--tokens", str(2**40), "--out",
                                   str(tmp_path / "t.npz")], "--tokens", "1,099,511,627,776 tokens", "GB",
                          "the limit is")
    assert not (tmp_path / "t.npz").exists(), line


def test_gen_limit_is_the_available_memory(tmp_path, capsys, monkeypatch):
    from emu.trace import synthetic

    monkeypatch.setattr(synthetic, "available_memory", lambda: (10**6, "a test cap"))
    need, tokens, _ = synthetic.generation_bytes(get_preset("olmoe-1b-7b"), synthetic.SyntheticParams(), 100_000)
    assert tokens == 100_000 and need > 100_000 * 16 * 8  # the expert ids alone: a byte per layer and slot (64 experts)
    one_error_line(capsys, ["trace", "gen", "--model", "olmoe-1b-7b", "--tokens", "100000", "--out",
                            str(tmp_path / "t.npz")], "--tokens", "0.0 GB (a test cap)")
    one_error_line(capsys, ["trace", "gen", "--model", "olmoe-1b-7b", "--requests", "100000", "--out",
                            str(tmp_path / "t.npz")], "--requests", "a test cap")


# ---- 4. `emu workingset --capacity` ----------------------------------------------------------------

@pytest.fixture
def small_trace(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    passes = [[[list(rng.choice(8, 2, replace=False)) for _layer in range(2)]] for _p in range(20)]
    path = tmp_path / "t.npz"
    make_trace(passes, n_experts=8).save(path)
    return path


@pytest.mark.parametrize("cap", ["1e400GB", "1e300GB", "1e400TiB", "9" * 5000, "total=" + "9" * 5000,
                                 "99999999999999999999999"])
def test_absurd_capacity(small_trace, capsys, cap):
    one_error_line(capsys, ["workingset", str(small_trace), "--model", "olmoe-1b-7b", "--capacity", cap],
                   "--capacity")


def test_sane_capacity_still_works(small_trace, capsys):
    assert main(["workingset", str(small_trace), "--capacity", "4", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["capacities"][0]["slots_per_layer"] == 4


# ---- 5. counts too large -----------------------------------------------------------------------------

def _counts(tmp_path: Path, row_text: str, name: str = "c.json") -> Path:
    path = tmp_path / name
    path.write_text('{"n_experts": 2, "layers": [0], "counts": [[' + row_text + ', 2]]}')
    return path


@pytest.mark.parametrize("value", ["1e308", "1" + "0" * 400, "1e201", "Infinity", "NaN"])
def test_overflowing_counts_are_refused(tmp_path, capsys, value):
    path = _counts(tmp_path, value)
    one_error_line(capsys, ["concentration", "--counts", str(path), "--json"], str(path), "counts[0][0]")


def test_counts_of_5000_digits_are_refused(tmp_path, capsys):
    path = _counts(tmp_path, "9" * 5000)
    one_error_line(capsys, ["concentration", "--counts", str(path), "--json"], str(path), "not valid JSON")


def test_large_but_sane_counts_give_finite_json(tmp_path, capsys):
    path = _counts(tmp_path, "1e150")
    assert main(["concentration", "--counts", str(path), "--json"]) == 0
    out = capsys.readouterr().out
    assert "Infinity" not in out and "NaN" not in out
    assert json.loads(out)["layers"][0]["selections"] == pytest.approx(1e150)


# ---- 6. undecodable or deeply nested text --------------------------------------------------------------

_ROW = '{"request": 0, "token": 0, "layer": 0, "experts": [1, 2], "note": "caf\u00e9"}\n'
_BAD_TEXT = {
    "binary": b"\x00\xff\xfe" + bytes(range(256)) * 8,
    "latin1": _ROW.encode("latin-1"),
    "utf16": _ROW.encode("utf-16"),
    "nested": ("[" * 100_000 + "]" * 100_000).encode(),
    "nested_row": ('{"request": 0, "token": 0, "layer": 0, "experts": ' + "[" * 100_000 + "]" * 100_000
                   + "}\n").encode(),
}


@pytest.mark.parametrize("kind", sorted(_BAD_TEXT))
@pytest.mark.parametrize("fmt", ["jsonl", "onnx-genai", "route-trace", None])
def test_trace_import_of_bad_text(tmp_path, capsys, kind, fmt):
    path = tmp_path / f"{kind}.jsonl"
    path.write_bytes(_BAD_TEXT[kind])
    argv = ["trace", "import", str(path), "--out", str(tmp_path / "o.npz")] + (["--format", fmt] if fmt else [])
    one_error_line(capsys, argv, str(path))
    assert not (tmp_path / "o.npz").exists()


@pytest.mark.parametrize("kind,needle", [("binary", "binary data"), ("latin1", "not UTF-8"),
                                         ("utf16", "UTF-16"), ("nested", "nested too deeply")])
def test_jsonl_bad_text_says_what_is_wrong(tmp_path, capsys, kind, needle):
    path = tmp_path / "t.jsonl"
    path.write_bytes(_BAD_TEXT[kind])
    one_error_line(capsys, ["trace", "import", str(path), "--format", "jsonl", "--out", str(tmp_path / "o.npz")],
                   f"{path}:1", needle)


@pytest.mark.parametrize("kind,needle", [("binary", "binary data"), ("latin1", "not UTF-8"),
                                         ("utf16", "UTF-16"), ("nested", "nested too deeply")])
def test_counts_bad_text(tmp_path, capsys, kind, needle):
    path = tmp_path / "c.json"
    path.write_bytes(_BAD_TEXT[kind])
    one_error_line(capsys, ["concentration", "--counts", str(path)], str(path), needle)


def test_counts_nested_inside_an_object(tmp_path, capsys):
    path = tmp_path / "c.json"
    path.write_text('{"n_experts": 2, "layers": [0], "counts": ' + "[" * 100_000 + "]" * 100_000 + "}")
    one_error_line(capsys, ["concentration", "--counts", str(path)], str(path), "nested too deeply")


# ---- 7. damaged .npz traces ------------------------------------------------------------------------------

@pytest.fixture
def good_npz(tmp_path) -> Path:
    passes = [[[[0, 1], [2, 3]], [[1, 2], [3, 0]]], [[[0, 2], [1, 3]]]] * 20
    path = tmp_path / "good.npz"
    make_trace(passes).save(path)
    return path


def _rewrite(good: Path, out: Path, **arrays: np.ndarray) -> Path:
    with np.load(good) as data:
        members = {k: data[k] for k in data.files}
    members.update(arrays)
    with open(out, "wb") as fh:
        np.savez(fh, **members)
    return out


def _header(good: Path) -> dict:
    with np.load(good) as data:
        return json.loads(str(data["header"]))


def test_good_npz_loads(good_npz):
    assert RoutingTrace.load(good_npz).n_tokens == 60


def test_npz_with_a_bad_crc(good_npz, tmp_path, capsys):
    raw = bytearray(good_npz.read_bytes())
    with zipfile.ZipFile(good_npz) as zf:
        info = zf.getinfo("experts.npy")
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)
    raw[start + info.compress_size - 5] ^= 0xFF  # in the data, after the .npy header
    bad = tmp_path / "crc.npz"
    bad.write_bytes(bytes(raw))
    one_error_line(capsys, ["trace", "inspect", str(bad)], str(bad), "experts", "CRC")


@pytest.mark.parametrize("keep", [0.5, 0.05])
def test_truncated_npz(good_npz, tmp_path, capsys, keep):
    raw = good_npz.read_bytes()
    bad = tmp_path / "cut.npz"
    bad.write_bytes(raw[: int(len(raw) * keep)])
    one_error_line(capsys, ["trace", "inspect", str(bad)], str(bad))


@pytest.mark.parametrize("header,key", [
    ("not json {", "header"), ("[1, 2]", "header"), ("[" * 100_000 + "]" * 100_000, "header"),
])
def test_npz_header_not_a_json_object(good_npz, tmp_path, capsys, header, key):
    bad = _rewrite(good_npz, tmp_path / "h.npz", header=np.array(header))
    one_error_line(capsys, ["trace", "inspect", str(bad)], str(bad), f": {key}:")


@pytest.mark.parametrize("field,value", [("n_experts", "abc"), ("n_experts", -1), ("n_experts", 1.5),
                                         ("n_experts", True), ("n_experts", 10**6), ("meta", "x"), ("model", 3)])
def test_npz_header_fields(good_npz, tmp_path, capsys, field, value):
    header = dict(_header(good_npz), **{field: value})
    bad = _rewrite(good_npz, tmp_path / "h.npz", header=np.array(json.dumps(header)))
    one_error_line(capsys, ["trace", "inspect", str(bad)], str(bad), f"header.{field}")


def test_npz_header_that_is_not_a_string(good_npz, tmp_path, capsys):
    bad = _rewrite(good_npz, tmp_path / "h.npz", header=np.array(5))
    one_error_line(capsys, ["trace", "inspect", str(bad)], str(bad), "header")


def test_npz_arrays_that_a_cast_would_silently_change(good_npz, tmp_path, capsys):
    with np.load(good_npz) as data:
        experts = data["experts"]
    bad = _rewrite(good_npz, tmp_path / "f.npz", experts=experts.astype(np.float32) + 0.5)
    one_error_line(capsys, ["trace", "inspect", str(bad)], str(bad), "experts", "integer")
    bad = _rewrite(good_npz, tmp_path / "w.npz", experts=experts.astype(np.int64) + 65536)  # wraps to the same ids
    one_error_line(capsys, ["trace", "inspect", str(bad)], str(bad), "experts", "int16")


def test_a_bare_npy_named_npz(tmp_path, capsys):
    buf = io.BytesIO()
    np.save(buf, np.arange(3))
    bad = tmp_path / "a.npz"
    bad.write_bytes(buf.getvalue())
    one_error_line(capsys, ["trace", "inspect", str(bad)], str(bad))


# ---- 8. live runs: missing scenario, no torch -------------------------------------------------------------

@pytest.mark.parametrize("command", ["live", "validate"])
def test_live_and_validate_of_a_missing_scenario(tmp_path, capsys, command):
    missing = tmp_path / "MISSING.toml"
    one_error_line(capsys, [command, str(missing)], str(missing), "not found")


@pytest.mark.parametrize("command", ["live", "validate"])
def test_live_and_validate_without_torch(tmp_path, capsys, monkeypatch, command):
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` raises ImportError
    one_error_line(capsys, [command, str(scenario(tmp_path))], "torch", "`emu live`", "pip install")
    missing = tmp_path / "MISSING.toml"
    one_error_line(capsys, [command, str(missing)], str(missing), "not found")


def test_live_without_torch_in_a_fresh_interpreter(tmp_path):
    """The same through a real interpreter whose import system refuses torch (as when it is not installed)."""
    block = ("import sys\n"
             "class _NoTorch:\n"
             "    def find_spec(self, name, path=None, target=None):\n"
             "        if name == 'torch' or name.startswith('torch.'):\n"
             "            raise ImportError('No module named torch')\n"
             "sys.meta_path.insert(0, _NoTorch())\n"
             "from emu.cli import main\n"
             "sys.exit(main(sys.argv[1:]))\n")
    proc = subprocess.run([sys.executable, "-c", block, "live", str(scenario(tmp_path))], capture_output=True,
                          text=True, timeout=120, cwd=REPO, env=dict(os.environ))
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("emu: error: torch:"), proc.stderr
