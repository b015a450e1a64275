"""Cases the fuzz suite (tests/test_fuzz_inputs.py) found, each kept as a plain test through the CLI: every one
ended in a traceback (or a wrong or unreadable error) before its fix, and each now ends in one `emu: error:` line
naming the file and the key, or runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from emu.cli import main
from emu.errors import EmuError

from .test_bad_inputs import one_error_line
from .test_scenario_bad_input import BASE, PROFILE

SWEEP = """
name = "fz"
base = "s.toml"
engine = "fast"
set = ["workload.max_tokens=24"]
[grid]
capacity = ["5%", "25%"]
"""


def _scenario(tmp_path: Path, text: str = BASE) -> Path:
    path = tmp_path / "s.toml"
    path.write_text(text.replace("{profile}", str(PROFILE)))
    return path


# ---- TOML files that are not UTF-8 ----------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["scenario", "profile", "runtime", "sweep", "sweep base"])
@pytest.mark.parametrize("data", [b"\xff\xfem\x00o\x00", b"name = \"caf\xe9\"\n"], ids=["utf16", "latin1"])
def test_toml_that_is_not_utf8(tmp_path, capsys, kind, data):
    bad = tmp_path / "bad.toml"
    bad.write_bytes(data)
    if kind == "scenario":
        argv = ["run", str(bad)]
    elif kind == "profile":
        argv = ["run", str(_scenario(tmp_path, BASE.replace("{profile}", str(bad))))]
    elif kind == "runtime":
        argv = ["run", str(_scenario(tmp_path, BASE.replace("[cache]", f'runtime = "{bad}"\n[cache]')))]
    elif kind == "sweep":
        argv = ["sweep", str(bad), "--jobs", "1"]
    else:
        (tmp_path / "sw.toml").write_text(SWEEP.replace('"s.toml"', f'"{bad}"'))
        argv = ["sweep", str(tmp_path / "sw.toml"), "--jobs", "1"]
    line = one_error_line(capsys, [*argv, "--out", str(tmp_path / "out")], str(bad), "not UTF-8")
    assert ("UTF-16" in line) == (data.startswith(b"\xff\xfe"))


# ---- one line, whatever the value quoted ----------------------------------------------------------------

def test_an_error_quoting_a_huge_value_stays_short(tmp_path, capsys):
    path = _scenario(tmp_path, BASE.replace('model = "olmoe-1b-7b"', 'model = "' + "x" * 50_000 + '"'))
    line = one_error_line(capsys, ["run", str(path), "--out", str(tmp_path / "o")], "s.toml", "model",
                          "characters ...]")
    assert len(line) < 1200


def test_an_error_quoting_a_line_break_stays_on_one_line(tmp_path, capsys):
    (tmp_path / "sw.toml").write_text(SWEEP.replace('base = "s.toml"', 'base = "\\r0\\nx"'))
    one_error_line(capsys, ["sweep", str(tmp_path / "sw.toml"), "--jobs", "1", "--out", str(tmp_path / "o")],
                   "sw.toml", "base", "\\r0\\nx")


def test_error_text_escapes_control_characters_and_cuts_the_middle():
    err = EmuError("got 'a\r\nb\x00'", file="f.toml", key="k")
    assert str(err) == "f.toml: k: got 'a\\r\\nb\\x00'"
    long = EmuError("expected a string, got '" + "y" * 10_000 + "z'", file="f.toml", key="k")
    assert str(long).startswith("f.toml: k: expected a string, got 'yyy") and str(long).endswith("yz'")
    assert "characters ...]" in str(long) and len(str(long)) < 700
    assert long.detail.endswith("z'") and len(long.detail) > 10_000  # the exception keeps the whole message


# ---- --set through a value that is not a table names the scenario -------------------------------------------

def test_set_through_a_value_names_the_scenario(tmp_path, capsys):
    path = _scenario(tmp_path, BASE + "\n[output]\ndir = \"o\"\n")
    path.write_text(path.read_text().replace("[workload.synthetic]", "[workload.synthetic]\n").replace(
        'model = "olmoe-1b-7b"', 'model = "olmoe-1b-7b"\nseed = 3'))
    one_error_line(capsys, ["run", str(path), "--set", "seed.x=1"], "s.toml", "--set", "seed is not a table")


# ---- paths holding a NUL character ----------------------------------------------------------------------------

@pytest.mark.parametrize("key", ["hardware.profile", "workload.trace", "output.dir"])
def test_scenario_path_with_a_nul(tmp_path, capsys, key):
    path = _scenario(tmp_path)
    one_error_line(capsys, ["run", str(path), "--set", f'{key}="a\\u0000b"', "--out", str(tmp_path / "o")],
                   "s.toml", key)


@pytest.mark.parametrize("edit,key", [
    (lambda s: s.replace('base = "s.toml"', 'base = "\\u0000"'), "base"),
    (lambda s: s + 'trace = ["a\\u0000"]\n', "grid.trace"),
    (lambda s: s.replace('name = "fz"', 'name = "a\\u0000"'), "name"),
    (lambda s: s.replace('name = "fz"', 'name = "../../fz"'), "name"),
    (lambda s: s.replace('name = "fz"', 'name = 3'), "name"),
    (lambda s: s.replace('name = "fz"', 'out = "\\u0000"'), "out"),
])
def test_sweep_names_and_paths(tmp_path, capsys, edit, key):
    _scenario(tmp_path)
    (tmp_path / "sw.toml").write_text(edit(SWEEP))
    one_error_line(capsys, ["sweep", str(tmp_path / "sw.toml"), "--jobs", "1", "--out", str(tmp_path / "o")],
                   "sw.toml", f": {key}:")


def test_sweep_of_too_many_points_is_refused_with_the_arithmetic(tmp_path, capsys):
    _scenario(tmp_path)
    caps = ", ".join(f'"{i}%"' for i in range(1, 101))
    stacks = ", ".join(f'{{ name = "s{i}", eviction = "lru" }}' for i in range(1001))
    (tmp_path / "sw.toml").write_text(SWEEP.replace('capacity = ["5%", "25%"]', f"capacity = [{caps}]\n"
                                                    f"stack = [{stacks}]"))
    one_error_line(capsys, ["sweep", str(tmp_path / "sw.toml"), "--jobs", "1", "--out", str(tmp_path / "o")],
                   "sw.toml", "grid", "100 capacities x 1001 stacks = 100,100 grid points", "at most 100,000")


def test_sweep_output_place_is_checked_before_the_runs(tmp_path, capsys):
    _scenario(tmp_path)
    (tmp_path / "sw.toml").write_text(SWEEP)
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    one_error_line(capsys, ["sweep", str(tmp_path / "sw.toml"), "--jobs", "1", "--quiet", "--out", str(blocker)],
                   "--out", "not a directory")
    assert blocker.read_text() == "x"


def test_a_sweep_with_a_plain_name_still_runs(tmp_path, capsys):
    _scenario(tmp_path)
    (tmp_path / "sw.toml").write_text(SWEEP.replace('name = "fz"', 'name = "my sweep+lru@5%"'))
    assert main(["sweep", str(tmp_path / "sw.toml"), "--jobs", "1", "--quiet", "--out", str(tmp_path / "o")]) == 0
    assert (tmp_path / "o" / "my sweep+lru@5%.csv").is_file()


# ---- JSONL: a phase that is not a string -------------------------------------------------------------------

@pytest.mark.parametrize("phase", [[], {}, 1, None])
def test_jsonl_phase_that_is_not_a_string(tmp_path, capsys, phase):
    path = tmp_path / "t.jsonl"
    rows = [{"request": 0, "token": 0, "layer": 0, "experts": [5, 7], "phase": phase},
            {"request": 0, "token": 0, "layer": 1, "experts": [3, 4]}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    one_error_line(capsys, ["trace", "import", str(path), "--out", str(tmp_path / "o.npz")], f"{path}:1", "phase",
                   "expected 'prefill' or 'decode'")


# ---- model shapes that no real model has ------------------------------------------------------------------------

@pytest.mark.parametrize("model,needles", [
    ('{ preset = "olmoe-1b-7b", n_moe_layers = 1000000 }', ("model.n_moe_layers", "1..4,096", "1000000")),
    ('{ preset = "olmoe-1b-7b", n_experts = 32769 }', ("model.n_experts", "1..32,768")),
    ('{ preset = "olmoe-1b-7b", n_experts = 30000, n_moe_layers = 100 }',
     ("model.n_experts", "100 MoE layers x 30,000 experts = 3,000,000", "at most 1,048,576")),
    ('{ preset = "olmoe-1b-7b", hidden = 10000000000000 }', ("model.hidden", "1..1,048,576")),
])
def test_model_shapes_are_bounded(tmp_path, capsys, model, needles):
    """A million MoE layers ran for minutes (the fuzz suite's hang); the bounds are far above any real model."""
    path = _scenario(tmp_path)
    one_error_line(capsys, ["run", str(path), "--set", f"model={model}", "--out", str(tmp_path / "o")], "s.toml",
                   *needles)


def test_a_model_at_the_bounds_of_its_keys_is_accepted():
    from emu.models import MAX_KEYS, get_preset, model_from_dict

    spec = model_from_dict({"preset": "olmoe-1b-7b", "n_moe_layers": 32, "n_experts": 32768, "top_k": 8})
    assert spec.n_keys == MAX_KEYS and get_preset("olmoe-1b-7b").n_keys < MAX_KEYS


# ---- profile numbers that make a run's times infinite -------------------------------------------------------------

@pytest.mark.parametrize("edit,needles", [
    # before: NaN and Infinity in the record (SimPy engine), a misdiagnosed deadlock (fast engine)
    (("bw_pinned_Bps = 5.5e10", "bw_pinned_Bps = 1e-300"), ("copy:", "one pinned copy", "1.25829e+307 s")),
    # before: a fast-engine loop that never ended, NaN in the SimPy engine's record
    (("flops_per_s = 4.0e14", "flops_per_s = 1e-300"), ("compute:", "expert kernel (bf16, 1 tokens)")),
    (("hbm_Bps = 2.0e12", "hbm_Bps = 1e-300"), ("compute:", "expert kernel")),
    (("bw_pageable_Bps = 1.0e10", "bw_pageable_Bps = 1e-3"), ("copy.bw_pageable_Bps", "pageable copy")),
    (("latency_s = 1.0e-5", "latency_s = 1e300"), ("copy.latency_s", "at most an hour")),
])
@pytest.mark.parametrize("engine", ["fast", "des"])
def test_profile_rates_that_no_machine_has(tmp_path, capsys, edit, needles, engine):
    text = PROFILE.read_text()
    assert edit[0] in text
    profile = tmp_path / "p.toml"
    profile.write_text(text.replace(*edit))
    path = _scenario(tmp_path, BASE.replace("{profile}", str(profile)))
    one_error_line(capsys, ["run", str(path), "--engine", engine, "--out", str(tmp_path / "o")], "p.toml", *needles)
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_extreme_but_finite_profiles_give_finite_records(tmp_path, capsys):
    """A link a thousand times faster than any, an expert launch of 1000 s: the run's numbers stay finite."""
    text = PROFILE.read_text().replace("bw_pinned_Bps = 5.5e10", "bw_pinned_Bps = 1e300").replace(
        "expert_launch_s = 1.1e-4", "expert_launch_s = 1e3")
    profile = tmp_path / "p.toml"
    profile.write_text(text)
    path = _scenario(tmp_path, BASE.replace("{profile}", str(profile)))
    assert main(["run", str(path), "--out", str(tmp_path / "o"), "--quiet"]) == 0
    record = json.loads((tmp_path / "o" / "s.json").read_text(),
                        parse_constant=lambda c: pytest.fail(f"{c} in the record"))
    assert record["e2e_s"] > 1e3


def test_every_bundled_profile_passes_the_time_check_for_every_preset():
    from emu.models import PRESETS
    from emu.profile import check_item_times, load_profile

    profiles = sorted((PROFILE.parent).glob("*.toml")) + sorted(PROFILE.parents[2].glob("validation/*/calibration/"
                                                                                          "h100.toml"))
    assert len(profiles) >= 3
    for path in profiles:
        for model in PRESETS.values():
            check_item_times(load_profile(path), model)


def test_a_sweep_bandwidth_that_no_link_has_names_the_grid_point(tmp_path, capsys):
    _scenario(tmp_path)
    (tmp_path / "sw.toml").write_text(SWEEP + "bandwidth = [1e-300]\n")
    one_error_line(capsys, ["sweep", str(tmp_path / "sw.toml"), "--jobs", "1", "--out", str(tmp_path / "o")],
                   "sw.toml", "grid.bandwidth", "grid point 0 (bandwidth 1e-300 B/s)", "one pinned copy")


def test_a_seed_past_int64_names_the_scenario_key(tmp_path, capsys):
    """It was refused as workload.synthetic.seed, a key the user never wrote."""
    path = _scenario(tmp_path)
    one_error_line(capsys, ["run", str(path), "--set", f"seed={2**64 - 1}", "--out", str(tmp_path / "o")],
                   "s.toml: seed:", "2**63 - 1")
    assert main(["run", str(path), "--set", f"seed={2**63 - 1}", "--out", str(tmp_path / "o"), "--quiet"]) == 0


# ---- imatrix counts that are not one number per expert -------------------------------------------------------------

def _imatrix(path: Path, counts) -> Path:
    gguf = pytest.importorskip("gguf")
    writer = gguf.GGUFWriter(str(path), arch="imatrix")
    writer.add_type("imatrix")
    for layer, data in enumerate(counts):
        writer.add_tensor(f"blk.{layer}.ffn_up_exps.weight.counts", data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_imatrix_counts_of_two_columns_are_not_twice_the_experts(tmp_path, capsys):
    import numpy as np

    path = _imatrix(tmp_path / "i.gguf", [np.arange(1, 17, dtype=np.float32).reshape(8, 2)])
    one_error_line(capsys, ["concentration", "--imatrix", str(path), "--json"], "i.gguf",
                   "blk.0.ffn_up_exps.weight.counts", "one count per expert", "[2, 8]")
    good = _imatrix(tmp_path / "g.gguf", [np.arange(1, 9, dtype=np.float32).reshape(8, 1)])
    assert main(["concentration", "--imatrix", str(good), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["layers"][0]["selections"] == 36


def test_imatrix_counts_in_a_quantized_tensor_are_refused(tmp_path, capsys):
    import numpy as np

    gguf = pytest.importorskip("gguf")
    path = tmp_path / "q.gguf"
    writer = gguf.GGUFWriter(str(path), arch="imatrix")
    writer.add_type("imatrix")
    q = gguf.quants.quantize(np.ones((1, 32), np.float32), gguf.GGMLQuantizationType.Q8_0)
    writer.add_tensor("blk.0.ffn_up_exps.weight.counts", q, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    one_error_line(capsys, ["concentration", "--imatrix", str(path)], "q.gguf", "tensor type Q8_0")


def test_a_path_the_file_system_refuses_is_one_line(tmp_path, capsys):
    """A base scenario name longer than the system allows raised OSError (ENAMETOOLONG) from Path.is_file()."""
    (tmp_path / "sw.toml").write_text(SWEEP.replace('base = "s.toml"', 'base = "' + "x" * 5000 + '"'))
    one_error_line(capsys, ["sweep", str(tmp_path / "sw.toml"), "--jobs", "1", "--out", str(tmp_path / "o")],
                   "File name too long", "characters ...]")


def test_a_sweep_override_without_a_value_names_the_sweep_file(tmp_path, capsys):
    _scenario(tmp_path)
    (tmp_path / "sw.toml").write_text(SWEEP.replace('set = ["workload.max_tokens=24"]', 'set = ["seed=1", "a"]'))
    one_error_line(capsys, ["sweep", str(tmp_path / "sw.toml"), "--jobs", "1", "--out", str(tmp_path / "o")],
                   "sw.toml: set[1]:", "key.path=value")


@pytest.mark.parametrize("option", ["--imatrix", "--counts", "--trace"])
def test_concentration_of_an_empty_path(tmp_path, capsys, option):
    """`--imatrix ''` fell through to the trace branch with no path (a TypeError)."""
    one_error_line(capsys, ["concentration", option, ""], f"{option}: expected a file path, got ''")


# ---- a trace's negative gate scores --------------------------------------------------------------------------------

@pytest.mark.parametrize("engine", ["fast", "des"])
def test_negative_gate_scores_are_refused_before_the_run(tmp_path, capsys, engine):
    """A score of -1 gave a record with a negative routed mass (-32767 in the fuzz case)."""
    import numpy as np

    from emu.trace import RoutingTrace

    from .test_trace_npz_edges import _experts, _trace

    ex = _experts(6, 16, 8, 64)
    scores = np.full(ex.shape, 0.125, np.float16)
    scores[2, 3, 1] = -1.0
    trace = _trace(ex, 64)
    import attrs

    path = tmp_path / "t.npz"
    attrs.evolve(trace, scores=scores).save(path)
    assert RoutingTrace.load(path).scores is not None
    scen = _scenario(tmp_path, BASE.replace("[workload.synthetic]\ntokens = 40\nprompt_len = 8\noutput_len = 8",
                                            f'[workload]\ntrace = "{path}"'))
    assert main(["run", str(scen), "--engine", engine, "--out", str(tmp_path / "o")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    errors = [ln for ln in lines if not ln.startswith("warning:")]  # the profile's roofline warning comes first
    assert len(errors) == 1 and errors[0].startswith("emu: error:"), lines
    for needle in ("s.toml", "workload.trace", "gate score -1 at token 2, layer 3, slot 1", "expected scores >= 0"):
        assert needle in errors[0], (needle, errors[0])
    assert not (tmp_path / "o" / "s.json").exists()


def test_an_empty_out_folder_is_refused_by_sweep_and_plot(tmp_path, capsys) -> None:
    from emu.cli import main

    sweep = tmp_path / "s.toml"
    sweep.write_text('name = "s"\nbase = "x.toml"\n')
    for argv in (["sweep", str(sweep), "--out", ""], ["plot", str(tmp_path / "none.csv"), "--out", " "]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "--out" in err[0] and "empty" in err[0], argv


# ---- a token budget with no decode step ------------------------------------------------------------------

def test_a_batch_whose_prefills_take_every_token_is_refused_naming_tokens(tmp_path, capsys):
    # 5 prompts of 8 tokens fill the 40-token budget: the run would report a TPOT of 0 for lack of any step
    path = _scenario(tmp_path, BASE.replace("output_len = 8", "output_len = 8\nbatch_size = 5"))
    assert main(["run", str(path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    # one error line (beside the profile's roofline warning: the trace is generated after the profile is read)
    errors = [line for line in err if line.startswith("emu: error:")]
    assert len(errors) == 1 and all(line.startswith(("emu: error:", "warning:")) for line in err)
    assert "s.toml: workload.synthetic.tokens" in errors[0] and "before the first decode step" in errors[0]
    # one token more and the batch decodes once; a prefill-only run (output_len = 0) is what it says
    assert main(["run", str(_scenario(tmp_path, BASE.replace("tokens = 40", "tokens = 41")
                                      .replace("output_len = 8", "output_len = 8\nbatch_size = 5"))),
                 "--out", str(tmp_path / "o1"), "--quiet"]) == 0
    assert main(["run", str(_scenario(tmp_path, BASE.replace("output_len = 8", "output_len = 0\nbatch_size = 5"))),
                 "--out", str(tmp_path / "o2"), "--quiet"]) == 0

