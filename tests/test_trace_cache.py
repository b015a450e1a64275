"""The process's trace cache: a scenario asking for a trace an earlier one had gets the same trace object and the
same record; a different generator setting, seed or file content does not; the cache stays within its bounds."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from emu.errors import EmuError
from emu.models import get_preset
from emu.runner import load_workload, run_scenario
from emu.scenario import load_scenario
from emu.trace.cache import CACHE, TraceCache, trace_bytes
from emu.trace.synthetic import SyntheticParams, generate

PROFILE = Path(__file__).resolve().parents[1] / "scenarios" / "profiles" / "h100-pcie5.toml"


@pytest.fixture(autouse=True)
def empty_cache():
    CACHE.clear()
    yield
    CACHE.clear()


def synthetic(tmp_path: Path, name: str, *, seed: int = 0, tokens: int = 300, extra: str = "",
              model: str = '"olmoe-1b-7b"') -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(f'name = "{name}"\nseed = {seed}\nmodel = {model}\n[hardware]\nprofile = "{PROFILE}"\n'
                    f'[cache]\ncapacity = "25%"\n[workload.synthetic]\ntokens = {tokens}\nbatch_size = 4\n'
                    f'prompt_len = 32\nwith_scores = true\n{extra}[policy]\neviction = "lru"\nprefetch = "next-layer"\n'
                    '[engine]\nkind = "fast"\n')
    return path


def from_file(tmp_path: Path, name: str, trace_file: str, model: str = '"olmoe-1b-7b"', extra: str = "") -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(f'name = "{name}"\nmodel = {model}\n[hardware]\nprofile = "{PROFILE}"\n[cache]\n'
                    f'capacity = "25%"\n[workload]\ntrace = "{trace_file}"\n{extra}[engine]\nkind = "fast"\n')
    return path


def strip(record: dict) -> dict:
    return {k: v for k, v in record.items() if k not in ("timings", "scenario")}


def test_the_same_generator_settings_give_the_cached_trace_and_the_same_record(tmp_path):
    a = load_scenario(synthetic(tmp_path, "a"))
    b = load_scenario(synthetic(tmp_path, "b", extra='zipf_s = 1.0\n'))  # the default, written out
    first = load_workload(a)
    assert load_workload(b) is first and CACHE.hits == 1 and CACHE.misses == 1
    _r, rec_a = run_scenario(a)
    CACHE.clear()
    _r, fresh = run_scenario(a)  # generated again: the cached run's record is the fresh run's
    assert strip(rec_a) == strip(fresh)
    assert rec_a["trace"]["fingerprint"] == first.fingerprint()


@pytest.mark.parametrize("change", [{"seed": 1}, {"tokens": 301}, {"extra": "reuse_prob = 0.5\n"},
                                    {"extra": "seed = 3\n"}, {"model": '"qwen1.5-moe-a2.7b"'}])
def test_another_seed_length_setting_or_model_is_another_trace(tmp_path, change):
    base = load_workload(load_scenario(synthetic(tmp_path, "base")))
    other = load_workload(load_scenario(synthetic(tmp_path, "other", **change)))
    assert other is not base and CACHE.hits == 0


def test_max_tokens_cuts_the_cached_trace_without_changing_it(tmp_path):
    whole = load_workload(load_scenario(synthetic(tmp_path, "whole")))
    sc = synthetic(tmp_path, "cut")
    sc.write_text(sc.read_text().replace("[workload.synthetic]", "[workload]\nmax_tokens = 200\n"
                                         "[workload.synthetic]"))
    short = load_workload(load_scenario(sc))
    assert CACHE.hits == 1 and short.n_tokens <= 200 and whole.n_tokens == 300
    assert (short.experts == whole.experts[: short.n_tokens]).all()
    assert load_workload(load_scenario(synthetic(tmp_path, "whole2"))).n_tokens == 300


def test_a_trace_file_is_named_by_its_bytes(tmp_path):
    model = get_preset("olmoe-1b-7b")
    generate(model, SyntheticParams(seed=1), n_tokens=200).save(tmp_path / "one.npz")
    shutil.copy(tmp_path / "one.npz", tmp_path / "copy.npz")
    first = load_workload(load_scenario(from_file(tmp_path, "s1", "one.npz")))
    assert load_workload(load_scenario(from_file(tmp_path, "s2", "copy.npz"))) is first
    # the same path rewritten at once with other bytes of the same size is another trace
    generate(model, SyntheticParams(seed=2), n_tokens=200).save(tmp_path / "one.npz")
    again = load_workload(load_scenario(from_file(tmp_path, "s3", "one.npz")))
    assert again is not first and again.fingerprint() != first.fingerprint()


def test_a_cached_trace_is_still_checked_against_each_scenarios_model(tmp_path):
    generate(get_preset("olmoe-1b-7b"), SyntheticParams(), n_tokens=100).save(tmp_path / "t.npz")
    load_workload(load_scenario(from_file(tmp_path, "fits", "t.npz")))
    wrong = from_file(tmp_path, "wrong", "t.npz", model='"mixtral-8x7b"')
    with pytest.raises(EmuError, match="MoE layers") as err:
        load_workload(load_scenario(wrong))
    assert err.value.file == str(wrong)


def test_a_missing_file_is_not_cached_and_says_so(tmp_path):
    generate(get_preset("olmoe-1b-7b"), SyntheticParams(), n_tokens=100).save(tmp_path / "t.npz")
    sc = load_scenario(from_file(tmp_path, "gone", "t.npz"))
    (tmp_path / "t.npz").unlink()  # gone between loading the scenario and running it
    with pytest.raises(EmuError, match="not found"):
        load_workload(sc)
    assert len(CACHE) == 0


def test_bounds_by_count_and_by_memory(monkeypatch):
    model = get_preset("olmoe-1b-7b")
    traces = [generate(model, SyntheticParams(seed=s), n_tokens=50) for s in range(3)]
    cache = TraceCache(max_traces=2)
    for i, t in enumerate(traces):
        cache.put(i, t)
    assert len(cache) == 2 and cache.get(0) is None and cache.get(2) is traces[2]  # least recently used out
    assert cache.held_bytes() == 2 * trace_bytes(traces[0])
    import emu.trace.synthetic as synthetic

    # a machine with room for less than four times the trace: keeping it would crowd out the run
    monkeypatch.setattr(synthetic, "available_memory", lambda: (3 * trace_bytes(traces[0]), "test"))
    small = TraceCache(max_traces=8)
    small.put("x", traces[0])
    assert len(small) == 0


def test_facts_are_the_traces_own_and_kept_for_a_held_trace():
    model = get_preset("olmoe-1b-7b")
    trace = generate(model, SyntheticParams(batch_size=3), n_tokens=120)
    cache = TraceCache()
    own = {"fingerprint": trace.fingerprint(), "tokens": trace.n_tokens, "passes": trace.n_passes,
           "requests": trace.n_requests}
    assert cache.facts(trace) == own  # not held: computed, not kept
    cache.put("k", trace)
    facts = cache.facts(trace)
    facts["tokens"] = -1  # a caller's copy
    assert cache.facts(trace) == own


def test_emu_run_shows_generation_progress_unless_quiet(tmp_path, monkeypatch, capsys):
    import emu.trace.synthetic as generator
    from emu.cli import main

    monkeypatch.setattr(generator, "PROGRESS_ENTRIES", 0)  # every trace counts as a large one
    sc = synthetic(tmp_path, "big", tokens=400)
    assert main(["run", str(sc), "--out", str(tmp_path / "o"), "--format", "json"]) == 0
    assert "trace: " in capsys.readouterr().err
    CACHE.clear()  # generate again, quietly
    assert main(["run", str(sc), "--out", str(tmp_path / "o"), "--format", "json", "--quiet"]) == 0
    assert "trace: " not in capsys.readouterr().err
