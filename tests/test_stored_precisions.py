"""Stored precisions per model (`model.stored_precisions`): the forms of each expert the host holds, the only ones a
degraded fetch may copy. Bad values are one error line naming the file and key; the degrading miss policies choose
only stored forms (hand-computed bytes on the tiny model, both engines); without the key nothing changes."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from emu.engines.setup import make_inputs, precisions_for
from emu.errors import EmuError, EmuWarning
from emu.kernel.hooks import MISS_FETCH
from emu.models import get_preset
from emu.runner import run_scenario
from emu.scenario import load_scenario

from .conftest import hand_profile, tiny_model
from .policy_support import kernel_setup, run, set_layer, stack, trace_of
from .test_engine_equivalence import assert_same, scenarios
from .test_engine_reference import assert_agree
from .test_policies_cascade import _close

ROOT = Path(__file__).resolve().parents[1]
SCN = ROOT / "scenarios" / "olmoe-1b-7b_h100_5pct.toml"
SHORT = "workload.max_tokens=8"
KEY = "model.stored_precisions"
# the tiny model's expert: 6 B at bf16, 3 B at int8, 2 B at int4 (4 bits + a 2-byte scale per 128 weights, rounded
# up), 1 B at int2
BF16_B, INT8_B, INT4_B, INT2_B = 6, 3, 2, 1


def stored(*forms: str) -> Any:
    """The tiny model (2 layers of 4 experts, top-2) storing `forms`."""
    return attrs.evolve(tiny_model(), stored_precisions=list(forms))


def one_token(scores: list[float] | None = None) -> Any:
    """One token routed to e0 and e1 of layer 0 (with gate scores `scores`)."""
    return trace_of([[[[0, 1]]]], scores=None if scores is None else [[[scores]]])


def _warnings_of(fn: Any) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", EmuWarning)
        fn()
    return [str(w.message) for w in caught if issubclass(w.category, EmuWarning)]


# ---- the key at the edge --------------------------------------------------------------------------------------

BAD = [
    ('"bf16"', "expected a non-empty list of precision names"),
    ("[]", "expected a non-empty list of precision names"),
    ('["bf16", 4]', "expected a non-empty list of precision names"),
    ('["bf16", "int3"]', "unknown precision 'int3'"),
    ('["bf16", "int4", "int4"]', "'int4' is listed 2 times"),
    ('["int4"]', "the model's own precision 'bf16' is not listed"),
]


@pytest.mark.parametrize("value,message", BAD)
def test_a_bad_value_on_a_preset_is_one_line_naming_the_file_and_key(value: str, message: str) -> None:
    with pytest.raises(EmuError, match=message) as err:
        load_scenario(SCN, [f"{KEY}={value}"])
    assert (err.value.file, err.value.key) == (str(SCN), KEY)
    assert "\n" not in str(err.value) and str(err.value).startswith(f"{SCN}: {KEY}: ")


def test_a_form_above_the_models_precision_is_refused(tmp_path: Path) -> None:
    # an inline model table at int8 (the preset line replaced by a [model] table at the end): bf16 is above it
    text = SCN.read_text().replace('model = "olmoe-1b-7b"', "").replace(
        '"profiles/', f'"{SCN.parent}/profiles/')
    path = tmp_path / "s.toml"
    path.write_text(text + '\n[model]\npreset = "olmoe-1b-7b"\nprecision = "int8"\n'
                           'stored_precisions = ["bf16", "int8", "int4"]\n')
    with pytest.raises(EmuError, match=r"'bf16' \(16 bits\) is above the model's precision int8") as err:
        load_scenario(path)
    assert (err.value.file, err.value.key) == (str(path), KEY) and "\n" not in str(err.value)
    # `--set model.precision` below a list written for bf16: the list is judged against the new precision
    with pytest.raises(EmuError, match=r"'bf16' .* above the model's precision int4") as err:
        load_scenario(SCN, [f'{KEY}=["bf16", "int4"]', "model.precision=int4"])
    assert err.value.key == KEY
    # the same table at int8 with int8 listed and nothing above: fine, and int8's smaller forms are narrowed
    path.write_text(text + '\n[model]\npreset = "olmoe-1b-7b"\nprecision = "int8"\n'
                           'stored_precisions = ["int2", "int8"]\n')
    assert precisions_for(load_scenario(path).model) == ("int8", "int2")


def test_the_default_is_every_smaller_form_and_the_record_is_unchanged() -> None:
    olmoe = get_preset("olmoe-1b-7b")
    assert olmoe.stored_precisions is None and "stored_precisions" not in olmoe.to_dict()
    assert precisions_for(olmoe) == ("bf16", "fp16", "fp8", "int8", "int4", "int2")
    assert precisions_for(attrs.evolve(olmoe, precision="int8")) == ("int8", "fp8", "int4", "int2")
    assert precisions_for(attrs.evolve(olmoe, precision="int2")) == ("int2",)
    # listing every form is the default's tables, whatever the order written
    every = attrs.evolve(olmoe, stored_precisions=["int2", "int4", "int8", "fp8", "fp16", "bf16"])
    assert precisions_for(every) == precisions_for(olmoe)
    assert every.stored_precisions == ("bf16", "fp16", "fp8", "int8", "int4", "int2")


def test_the_stored_forms_are_the_engines_tables_and_the_record_echoes_them() -> None:
    sc = load_scenario(SCN, [SHORT, f'{KEY}=["int4", "bf16"]'])
    assert sc.model.stored_precisions == ("bf16", "int4")  # kept in the engines' order
    assert precisions_for(sc.model) == ("bf16", "int4")
    _result, rec = run_scenario(sc, "fast")
    assert rec["scenario"]["model"]["stored_precisions"] == ["bf16", "int4"]
    _result, rec = run_scenario(load_scenario(SCN, [SHORT]), "fast")
    assert "stored_precisions" not in rec["scenario"]["model"]
    # the tables a miss policy indexes hold the stored forms only
    inputs = make_inputs(stored("bf16", "int4"), hand_profile(), one_token(), 4 * BF16_B, stack())
    assert inputs.precisions == ("bf16", "int4") and inputs.tm.copy_s.shape == (2,)
    assert inputs.tm.layer_copy_s.tolist() == [[1.0, INT4_B / BF16_B]] * 2  # 6 B/s


# ---- the degrading miss policies choose stored forms only -----------------------------------------------------

@pytest.mark.parametrize("engine", ["fast", "des"])
def test_fetch_priority_bits_2_degrades_to_int4_when_int2_is_not_stored(engine: str) -> None:
    # e0 (.8) and e1 (.2) miss a cold cache; the median .5 degrades e1. bits = 2: int2 (1 B) by default; with only
    # bf16 and int4 stored, the nearest stored form of at least 2 bits, int4 (2 B)
    tr = one_token([.8, .2])
    miss = ("fetch-priority", {"bits": 2})
    r, cs = run(tr, 4, miss=miss, engine=engine)
    assert (r["degraded"], r["bytes_h2d"]) == (1, BF16_B + INT2_B)
    r, cs = run(tr, 4, miss=miss, engine=engine, model=stored("bf16", "int4"))
    assert (r["degraded"], r["bytes_h2d"]) == (1, BF16_B + INT4_B)
    assert [int(cs.prec[k]) for k in (0, 1)] == [0, 1]  # int4 is index 1 of ("bf16", "int4")
    assert r["degraded_mass"] == pytest.approx(.2, abs=1e-3)  # fp16 scores
    r2, _ = run(tr, 4, miss=miss, engine=engine, model=stored("bf16", "int8", "int4"))
    assert r2["bytes_h2d"] == BF16_B + INT4_B  # int8 stored too: int4 is still the nearest of at least 2 bits


def test_fetch_priority_kernel_picks_the_stored_index() -> None:
    tr = one_token([.8, .2])
    for model, bits, want in [(None, 8, 3), (None, 2, 5), (stored("bf16", "int4"), 2, 1),
                              (stored("bf16", "int8", "int2"), 4, 1), (stored("bf16", "fp8", "int4"), 8, 1)]:
        pol, ps, cs, tv = kernel_setup(tr, "miss", ("fetch-priority", {"bits": bits}), model=model)
        set_layer(cs, 0, [0, 1], mass=[.8, .2])
        a = int(pol.hooks["on_miss"](ps, cs, tv, 1, 0.0))
        assert (a & 15, a >> 4) == (MISS_FETCH, want), (model and model.stored_precisions, bits)


@pytest.mark.parametrize("engine", ["fast", "des"])
def test_fetch_priority_with_nothing_stored_to_degrade_to_says_so(engine: str) -> None:
    # bits = 8 asks for at least 8 bits; only int4 is stored below bf16: every miss is a full copy, and a warning
    # names the stored forms and the key
    tr = one_token([.8, .2])
    said = _warnings_of(lambda: run(tr, 4, miss=("fetch-priority", {"bits": 8}), engine=engine,
                                    model=stored("bf16", "int4")))
    r, _ = run(tr, 4, miss=("fetch-priority", {"bits": 8}), engine=engine, model=stored("bf16", "int4"))
    assert (r["degraded"], r["bytes_h2d"]) == (0, 2 * BF16_B)
    (line,) = [s for s in said if "fetch-priority" in s]
    assert "bits = 8" in line and "plain 'fetch'" in line and KEY in line and ": int4)" in line
    assert "\n" not in line


@pytest.mark.parametrize("engine", ["fast", "des"])
def test_fetch_lowest_bit_copies_the_smallest_stored_form(engine: str) -> None:
    tr = one_token()
    r, _ = run(tr, 4, miss="fetch-lowest-bit", engine=engine)
    assert (r["degraded"], r["bytes_h2d"]) == (2, 2 * INT2_B)  # default: int2
    r, cs = run(tr, 4, miss="fetch-lowest-bit", engine=engine, model=stored("bf16", "int8", "int4"))
    assert (r["degraded"], r["bytes_h2d"]) == (2, 2 * INT4_B)
    assert [int(cs.prec[k]) for k in (0, 1)] == [2, 2]  # int4 is index 2 of ("bf16", "int8", "int4")
    r, _ = run(tr, 4, miss="fetch-lowest-bit", engine=engine, model=stored("bf16", "int8"))
    assert (r["degraded"], r["bytes_h2d"]) == (2, 2 * INT8_B)
    said = _warnings_of(lambda: run(tr, 4, miss="fetch-lowest-bit", engine=engine, model=stored("bf16")))
    r, _ = run(tr, 4, miss="fetch-lowest-bit", engine=engine, model=stored("bf16"))
    assert (r["degraded"], r["bytes_h2d"]) == (0, 2 * BF16_B)
    (line,) = [s for s in said if "fetch-lowest-bit" in s]
    assert "plain 'fetch'" in line and KEY in line and "bf16" in line


@pytest.mark.parametrize("engine", ["fast", "des"])
def test_fetch_cascade_over_stored_forms_only(engine: str) -> None:
    # masses .4 .3 .2 .1 (tests/test_policies_cascade.py): .2 at int4, .1 at int2; with fp8 and int8 stored too the
    # indices move (int4 is 3, int2 4) and the bytes do not
    tr = trace_of([[[[0, 1, 2, 3]]]], scores=[[[[.4, .3, .2, .1]]]])
    r, cs = run(tr, 4, miss="fetch-cascade", engine=engine, model=stored("bf16", "fp8", "int8", "int4", "int2"))
    assert (r["degraded"], r["bytes_h2d"]) == (2, 2 * BF16_B + INT4_B + INT2_B)
    assert [int(cs.prec[k]) for k in range(4)] == [0, 0, 3, 4]


def test_a_cascade_level_that_is_not_stored_is_one_error_naming_its_key() -> None:
    cases = [('["bf16", "int4"]', '"fetch-cascade"', "policy.miss.lowest_bits", "int2"),
             ('["bf16", "int8", "int2"]', '"fetch-cascade"', "policy.miss.bits", "int4"),
             ('["bf16", "int4"]', '{ name = "drop-priority-cascade", bits = 8, lowest_bits = 4 }', "policy.miss.bits",
              "int8")]
    for forms, miss, key, level in cases:
        sc = load_scenario(SCN, [SHORT, f"{KEY}={forms}", f"policy.miss={miss}"])
        with pytest.raises(EmuError) as err:
            run_scenario(sc, "fast")
        text = str(err.value)
        assert (err.value.file, err.value.key) == (str(SCN), key) and "\n" not in text
        assert f"the cascade level {level} is not a stored precision below the model's bf16" in text
        assert KEY in text
    # the levels stored: it runs
    run_scenario(load_scenario(SCN, [SHORT, f'{KEY}=["bf16", "int4", "int2"]', 'policy.miss="fetch-cascade"']),
                 "fast")


# ---- both engines agree -----------------------------------------------------------------------------------------

_SMALLER = {"bf16": ("fp16", "fp8", "int8", "int4", "int2"), "fp8": ("int8", "int4", "int2")}
_CASCADE_LEVELS = {"fetch-cascade": (4.0, 2.0), "drop-priority-cascade": (8.0, 4.0)}


@pytest.mark.parametrize("name", ["fetch-priority", "fetch-lowest-bit", "fetch-cascade", "drop-priority-cascade"])
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_engines_agree_with_stored_precisions(name: str, data: Any) -> None:
    """fast = SimPy (des) = reference, on drawn scenarios whose model stores a drawn subset of the smaller forms
    (a cascade's levels always among them, so the runs degrade rather than all fail alike)."""
    s = data.draw(scenarios(fixed=("miss", name)), label="scenario")
    smaller = _SMALLER[s.precision]
    forms = {p for p in smaller if data.draw(st.booleans(), label=p)}
    if name in _CASCADE_LEVELS:
        bits, lowest = _CASCADE_LEVELS[name]
        forms |= {f"int{int(bits)}", f"int{int(lowest)}"}
        stack_ = tuple((k, n, tuple(sorted({**dict(p), "bits": bits, "lowest_bits": lowest,
                                            "lowest_percentile": min(dict(p)["lowest_percentile"],
                                                                     dict(p)["percentile"])}.items())))
                       if k == "miss" else (k, n, p) for k, n, p in s.stack)
        s = attrs.evolve(s, stack=stack_)
    s = attrs.evolve(s, stored=(s.precision, *sorted(forms)))
    assert_same(s)  # fast and SimPy (des)
    assert_agree(s)  # fast and the reference engine


def test_a_run_over_stored_forms_is_identical_on_both_engines_end_to_end() -> None:
    """A cache of 3 slots over 12 passes, so degraded copies are evicted, refetched and hit: the whole record (bar
    the engine's name and wall clock) the same on fast and des, with the degraded copies at int4 (stored int8 and
    int4: fetch-priority bits = 2 and fetch-lowest-bit both land on int4, index 2)."""
    passes = [[[[p % 4, (p + 1) % 4], [(p + 2) % 4, p % 4]]] for p in range(12)]
    tr = trace_of(passes, scores=[[[[.7, .3], [.55, .45]]]] * 12)
    model = stored("bf16", "int8", "int4")
    for miss in (("fetch-priority", {"bits": 2}), "fetch-lowest-bit"):
        fast, cs = run(tr, 3, miss=miss, engine="fast", model=model)
        des, _ = run(tr, 3, miss=miss, engine="des", model=model)
        for rec in (fast, des):
            rec.pop("engine")
            rec.pop("timings")
        assert _close(fast, des)
        assert fast["degraded"] > 0 and set(map(int, cs.prec[cs.status == 1])) <= {0, 2}
