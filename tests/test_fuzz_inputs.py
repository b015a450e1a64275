"""Fuzz every input kind through the real `emu` entry point (issue 20, item 2).

Each test draws inputs of one kind, from hypothesis strategies and from mutations of the bundled files (byte flips,
truncation, key deletion and duplication, type swaps, huge, negative, NaN and infinite numbers), writes them to a
fresh directory and runs the `emu` command that reads them in the fuzz worker (tests/fuzz_support.py): every case
must end in exit 0 with valid output (strict JSON, run records whose counters add up) or in one `emu: error:` line
that names the file or option at fault. A traceback, a signal, a hang or a messy error fails the case, and
hypothesis shrinks it.

Budget: `MOE_EMU_FUZZ=ci` (the default: 30 cases per kind, derandomized, well under two minutes in all on two cores
with a warm numba cache), `MOE_EMU_FUZZ=long` (400 per kind, random: benchmarks/fuzz_long.py), `dev` (5 per kind).
"""

from __future__ import annotations

import contextlib
import copy
import csv
import io
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from .fuzz_support import FUZZ, PROFILE, REPO, CaseDir, Worker, check, tally_text, write_tally
from .test_run_invariants import check_counters  # noqa: F401 - imported here, not inside a @given test (a nested @given)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

import tomli_w

SCENARIOS = REPO / "scenarios"
RUNTIME_KEYS = ("pass_s", "layer_s", "readback_s", "gate_s", "expert_s", "copy_s", "prefetch_s", "prefill_expert_s",
                "prefill_copy_s", "prefill_prefetch_s", "batch_expert_s")

TINY = f"""
model = "olmoe-1b-7b"
seed = 1
[hardware]
profile = "{PROFILE}"
[cache]
capacity = "5%"
[workload.synthetic]
tokens = 40
prompt_len = 8
output_len = 8
with_scores = true
[policy]
eviction = "lru"
prefetch = "none"
[engine]
kind = "des"
"""


@pytest.fixture(scope="module")
def worker():
    w = Worker()
    yield w
    w.close()


@pytest.fixture(scope="module")
def cases(tmp_path_factory) -> CaseDir:
    return CaseDir(tmp_path_factory.mktemp("fuzz"))


def teardown_module() -> None:
    print("\n" + tally_text())
    write_tally()


# ---- values and mutations ------------------------------------------------------------------------------------

#: TOML value texts a hostile user might write where a number, a string or a table is expected
WEIRD = ("nan", "-nan", "inf", "-inf", "1e400", "-1e400", "1e308", "-1", "0", "-0.0", "0.0", "1", "2", "3",
         "99999999999999999999999", "9223372036854775807", "-9223372036854775808", "2147483648", "1e-320", "5e-324",
         "0.5", "1.5", "true", "false", '""', '"abc"', '"5%"', '"0%"', '"101%"', '"-5%"', '"nan%"', '"1e400GB"',
         '"0.6GB"', '"1kB"', '"lru"', '"none"', '"fast"', '"des"', '"\\u0000"', "[]", "[1, 2]", '["a"]', "{}",
         "{ name = \"lru\" }", "{ a = 1 }", "1979-05-27T07:32:00Z", '"' + "x" * 5000 + '"', '"../../../etc"',
         '"/proc/self/mem"', '"/dev/zero"', '"."')
WEIRD_NUMBERS = ("nan", "inf", "-inf", "1e400", "1e308", "-1", "0", "-0.0", "1e-320", "99999999999999999999999",
                 "9223372036854775807", "2147483648", "65536", "32768", "0.5", "1", "2", "1e30", "-1e30")


def raw_value() -> st.SearchStrategy[str]:
    """A TOML value as text: a weird constant or a random number, string or small array."""
    return st.one_of(
        st.sampled_from(WEIRD),
        st.integers(-(2**70), 2**70).map(str),
        st.floats(allow_nan=False, allow_infinity=False).map(repr).filter(lambda s: "e" in s or "." in s),
        st.text(max_size=12).map(json.dumps),
        st.lists(st.sampled_from(WEIRD_NUMBERS), max_size=4).map(lambda v: "[" + ", ".join(v) + "]"),
    )


def _paths(doc: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = []
    if isinstance(doc, dict):
        for k, v in doc.items():
            out.append((*prefix, k))
            out += _paths(v, (*prefix, k))
    return out


def _get(doc: dict[str, Any], path: tuple[str, ...]) -> Any:
    node: Any = doc
    for k in path:
        node = node[k]
    return node


def _is_number(value: Any) -> bool:
    if isinstance(value, list):
        return bool(value) and all(_is_number(v) for v in value)
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _set(doc: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    node = doc
    for k in path[:-1]:
        nxt = node.get(k)
        if not isinstance(nxt, dict):
            nxt = node[k] = {}
        node = nxt
    node[path[-1]] = value


def _delete(doc: dict[str, Any], path: tuple[str, ...]) -> None:
    node = doc
    for k in path[:-1]:
        node = node[k]
    del node[path[-1]]


@st.composite
def toml_mutation(draw: Any, text: str, extra_keys: tuple[tuple[str, ...], ...] = ()) -> bytes:
    """`text` (valid TOML) after 1-3 structural edits (a key set to a weird value, deleted, added, duplicated)
    and sometimes a byte-level one (flip, truncation, insertion)."""
    doc = tomllib.loads(text)
    raws: dict[str, str] = {}
    for _ in range(draw(st.integers(1, 3))):
        paths = _paths(doc)
        op = draw(st.sampled_from(["set", "set", "number", "number", "delete", "add"]))
        numeric = [p for p in paths if _is_number(_get(doc, p))]
        if op == "number" and numeric:  # a number (or a list of them) that the file holds, made hostile
            path = draw(st.sampled_from(numeric))
            mark = f"__FUZZ{len(raws)}__"
            value = _get(doc, path)
            raws[mark] = (draw(st.sampled_from(WEIRD_NUMBERS)) if not isinstance(value, list) else
                          draw(st.lists(st.sampled_from(WEIRD_NUMBERS), min_size=len(value), max_size=len(value))
                               .map(lambda v: "[" + ", ".join(v) + "]")))
            _set(doc, path, mark)
        elif op in ("set", "number") and paths:
            path = draw(st.sampled_from(paths))
            mark = f"__FUZZ{len(raws)}__"
            raws[mark] = draw(raw_value())
            _set(doc, path, mark)
        elif op == "delete" and paths:
            path = draw(st.sampled_from(paths))
            with contextlib.suppress(KeyError, TypeError):
                _delete(doc, path)
        else:
            pool = [*paths, *extra_keys] or [("x",)]
            base = draw(st.sampled_from(pool))
            path = (*base[:-1], draw(st.sampled_from([base[-1], "x", "name", "1", "ünïcode", "a.b"])))
            mark = f"__FUZZ{len(raws)}__"
            raws[mark] = draw(raw_value())
            _set(doc, path, mark)
    out = tomli_w.dumps(doc)
    for mark, raw in raws.items():
        out = out.replace(json.dumps(mark), raw)
    data = out.encode()
    return draw(byte_mutation(data, p_none=0.7))


@st.composite
def byte_mutation(draw: Any, data: bytes, p_none: float = 0.0) -> bytes:
    """Flip, delete, insert or duplicate bytes; truncate; or keep the bytes as they are (with probability p_none)."""
    if draw(st.floats(0, 1)) < p_none or not data:
        return data
    op = draw(st.sampled_from(["flip", "truncate", "insert", "duplicate_line", "delete_line", "nul", "utf16"]))
    if op == "flip":
        buf = bytearray(data)
        for _ in range(draw(st.integers(1, 8))):
            i = draw(st.integers(0, len(buf) - 1))
            buf[i] ^= 1 << draw(st.integers(0, 7))
        return bytes(buf)
    if op == "truncate":
        return data[: draw(st.integers(0, len(data) - 1))]
    if op == "insert":
        i = draw(st.integers(0, len(data)))
        return data[:i] + draw(st.binary(min_size=1, max_size=16)) + data[i:]
    lines = data.split(b"\n")
    i = draw(st.integers(0, len(lines) - 1))
    if op == "duplicate_line":
        return b"\n".join(lines[: i + 1] + lines[i:])
    if op == "delete_line":
        return b"\n".join(lines[:i] + lines[i + 1:])
    if op == "nul":
        return data.replace(b"=", b"=\x00", 1)
    return data.decode("utf-8", "replace").encode("utf-16")


def write(path: Path, data: bytes | str) -> Path:
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def _engine(draw: Any) -> str:
    return draw(st.sampled_from(["fast", "des"]))


# ---- 1. scenario TOML ------------------------------------------------------------------------------------------

_BUNDLED_SCENARIOS = sorted(SCENARIOS.glob("*.toml")) + sorted(SCENARIOS.glob("shootout/*multi-look.toml"))[:2]
_SCENARIO_KEYS = (("name",), ("seed",), ("model",), ("model", "n_experts"), ("model", "top_k"),
                  ("hardware", "profile"), ("hardware", "runtime"), ("cache", "capacity"), ("workload", "trace"),
                  ("workload", "max_tokens"), ("workload", "synthetic", "tokens"), ("workload", "synthetic", "zipf_s"),
                  ("workload", "synthetic", "batch_size"), ("workload", "synthetic", "predictor_accuracy"),
                  ("policy", "eviction"), ("policy", "prefetch"), ("policy", "miss"), ("policy", "routing"),
                  ("policy", "partition"), ("policy", "prefetch", "name"), ("policy", "prefetch", "depth"),
                  ("engine", "kind"), ("output", "dir"), ("model", "precision"), ("hardware", "copy", "bw_pinned_Bps"),
                  ("hardware", "copy", "latency_s"), ("hardware", "copy", "table_bytes"), ("hardware", "compute"),
                  ("hardware", "compute", "hbm_Bps"), ("hardware", "models", "olmoe-1b-7b", "pass_overhead_s"))


@FUZZ
@given(data=st.data())
def test_fuzz_scenario_toml(worker, cases, data) -> None:
    case = cases.new()
    src = data.draw(st.sampled_from([None, *_BUNDLED_SCENARIOS]), label="source")
    text = TINY if src is None else src.read_text()
    name = "s.toml" if src is None else src.name
    mutated = (data.draw(toml_mutation(text, _SCENARIO_KEYS), label="scenario") if data.draw(st.booleans())
               else text.encode())
    # a bundled scenario's relative paths resolve from its folder: write the mutant beside the original's files
    folder = case if src is None else _mirror(src.parent, case)
    path = write(folder / name, mutated)
    argv = ["run", str(path), "--out", str(case / "out"), "--quiet", "--engine", _engine(data.draw),
            "--set", "workload.max_tokens=48"]
    for ov in data.draw(st.lists(plausible_override(), max_size=2), label="overrides"):
        argv += ["--set", ov]
    check("scenario TOML", worker.run(argv, case), names=(name, "scenarios/"), records=case / "out")


def _mirror(folder: Path, case: Path) -> Path:
    """A folder in the case directory whose profiles/ and traces/ link to the bundled ones."""
    out = case / "scn"
    out.mkdir(exist_ok=True)
    for sub in ("profiles", "traces"):
        target = SCENARIOS / sub
        if not (out / sub).exists():
            (out / sub).symlink_to(target)
    return out


# ---- 2. --set overrides ----------------------------------------------------------------------------------------

@st.composite
def override(draw: Any) -> str:
    path = draw(st.one_of(st.sampled_from([".".join(k) for k in _SCENARIO_KEYS]),
                          st.lists(st.sampled_from(["cache", "policy", "x", "", " ", "workload", "model", "0",
                                                    "hardware", "copy", "compute", "models"]),
                                   min_size=1, max_size=4).map(".".join),
                          st.text(max_size=10)))
    value = draw(st.one_of(raw_value(), st.text(max_size=10)))
    return draw(st.sampled_from([f"{path}={value}", f"{path}", f"{path} = {value}", f"={value}", f"{path}=="]))


def _policy_value(kind: str, name: str, params: dict[str, Any]) -> st.SearchStrategy[str]:
    """A policy as an inline table, its parameters at their bounds, defaults, just outside or absurd."""
    def values(p: Any) -> st.SearchStrategy[str]:
        return st.sampled_from([repr(v) for v in (p.default, p.lo, p.hi, p.lo - 1, p.hi + 1, p.hi * 1000)]
                               + ["nan", "inf", "-1", "0"])
    if not params:
        return st.just(json.dumps(name))
    return st.fixed_dictionaries({}, optional={k: values(v) for k, v in params.items()}).map(
        lambda chosen: "{ " + ", ".join([f"name = {json.dumps(name)}", *(f"{k} = {v}" for k, v in chosen.items())])
        + " }")


def plausible_override() -> st.SearchStrategy[str]:
    """`key=value` for a real scenario key with a value near or at the edge of what it accepts: these runs reach
    the engines and the policies' kernels (the hostile `override()` mostly stops at validation)."""
    from emu.policies.registry import REGISTRY

    policies = [st.tuples(st.just(f"policy.{kind}"), _policy_value(kind, name, p.params))
                for kind, named in REGISTRY.items() for name, p in sorted(named.items())]
    unit = st.sampled_from(["0", "0.0", "1", "1.0", "0.5", "0.999", "1e-9"])
    small = st.integers(0, 40).map(str)
    synthetic = [st.tuples(st.just(f"workload.synthetic.{k}"), v) for k, v in (
        ("tokens", st.integers(1, 200).map(str)), ("prompt_len", small), ("output_len", small),
        ("batch_size", st.integers(1, 16).map(str)), ("n_requests", st.integers(1, 5).map(str)),
        ("zipf_s", st.sampled_from(["0", "0.5", "3", "[1.0, 2.0]", "[" + ", ".join(["1.0"] * 16) + "]"])),
        ("reuse_prob", unit), ("cross_layer_corr", unit), ("length_jitter", unit),
        ("score_scale", st.sampled_from(["0.001", "1", "100", "1e300"])), ("predictor_accuracy", unit),
        ("with_scores", st.sampled_from(["true", "false"])))]
    models = st.one_of(
        st.sampled_from(['"olmoe-1b-7b"', '"mixtral-8x7b"']),
        st.tuples(st.integers(1, 4), st.sampled_from([2, 3, 8, 64, 300]), st.integers(1, 8)).map(
            lambda t: f'{{ preset = "olmoe-1b-7b", n_moe_layers = {t[0]}, n_experts = {t[1]}, top_k = {t[2]} }}'),
        st.sampled_from(['{ preset = "olmoe-1b-7b", n_experts = 32769 }',
                         '{ preset = "olmoe-1b-7b", n_moe_layers = 1000000 }',
                         '{ preset = "olmoe-1b-7b", n_experts = 30000, n_moe_layers = 100000 }',
                         '{ preset = "olmoe-1b-7b", hidden = 1, expert_intermediate = 1 }']))
    # hardware-profile keys over the scenario's profile: real keys with values at or past their edges
    rate = st.sampled_from(["5e9", "1e6", "1e15", "1", "1e-300", "0", "-1", "nan", "inf", '"5e9"'])
    seconds = st.sampled_from(["0", "1e-5", "3600", "3601", "-1e-9", "nan"])
    hardware = [st.tuples(st.just(f"hardware.{k}"), v) for k, v in (
        *((f"copy.{k}", rate) for k in ("bw_pinned_Bps", "bw_pageable_Bps", "d2h_bw_pinned_Bps")),
        ("copy.latency_s", seconds), ("copy.h2d_engines", st.sampled_from(["1", "2", "64", "65", "0"])),
        ("copy.sustained_ratio", st.sampled_from(["1", "0.5", "100", "101", "0"])),
        ("copy.order", st.sampled_from(['"submission"', '"demand-first"', '"x"'])),
        ("copy.h2d_d2h_overlap", st.sampled_from(["true", "false", "1"])),
        ("copy.table_bytes", st.sampled_from(["[4096, 1e9]", "[1e9, 4096]", "[]", "[4096]"])),
        ("copy.table_s", st.sampled_from(["[1e-5, 0.1]", "[1e-5]", "[-1, 1]"])),
        *((f"compute.{k}", rate) for k in ("hbm_Bps", "flops_per_s", "cpu_flops_per_s")),
        *((f"compute.{k}", seconds) for k in ("expert_launch_s", "dense_layer_s", "pass_overhead_s",
                                              "layer_overhead_s")),
        ("models.olmoe-1b-7b.pass_overhead_s", seconds), ("copy.bw", rate), ("gpu.bw", rate))]
    pairs = st.one_of(
        *policies, *synthetic, *hardware,
        st.tuples(st.just("model.precision"), st.sampled_from(['"int4"', '"int2"', '"bf16"', '"int3"', "4"])),
        st.tuples(st.just("cache.capacity"), st.sampled_from(
            ["1", "2", "8", "64", "1024", "100000", '"0.1%"', '"5%"', '"100%"', '"1GB"', '"1TB"', '"1e-9GB"',
             '"0.6GiB"', '"5% of bf16"', '"1% of int2"', '"100% of fp8"', '"5% of int3"', '"0% of bf16"'])),
        st.tuples(st.just("seed"), st.sampled_from(["0", "1", str(2**63 - 1), str(2**63), str(2**64)])),
        st.tuples(st.just("engine.kind"), st.sampled_from(['"fast"', '"des"', '"reference"', '"auto"'])),
        st.tuples(st.just("workload.max_tokens"), st.integers(1, 100).map(str)),
        st.tuples(st.just("model"), models))
    return pairs.map(lambda kv: f"{kv[0]}={kv[1]}")


@FUZZ
@given(data=st.data())
def test_fuzz_set_overrides(worker, cases, data) -> None:
    case = cases.new()
    path = write(case / "s.toml", TINY)
    argv = ["run", str(path), "--out", str(case / "out"), "--quiet", "--engine", _engine(data.draw)]
    chosen = st.one_of(plausible_override(), plausible_override(), plausible_override(), override())
    for ov in data.draw(st.lists(chosen, min_size=1, max_size=4), label="overrides"):
        argv += ["--set", ov]
    check("--set", worker.run(argv, case), names=("s.toml", "--set", "scenarios/"), records=case / "out")


# ---- 3. hardware profiles --------------------------------------------------------------------------------------

_PROFILE_KEYS = (("copy", "h2d_engines"), ("copy", "latency_s"), ("copy", "bw_pinned_Bps"), ("copy", "table_bytes"),
                 ("copy", "table_s"), ("copy", "order"), ("copy", "sustained_ratio"), ("compute", "hbm_Bps"),
                 ("compute", "flops_per_s"), ("compute", "cpu_flops_per_s"),
                 ("models", "olmoe-1b-7b", "expert", "bf16", "tokens"),
                 ("models", "olmoe-1b-7b", "dense", "context"), ("models", "olmoe-1b-7b", "pass_overhead_s"))
_PROFILES = (PROFILE, SCENARIOS / "profiles" / "h100-pcie5.toml")


@FUZZ
@given(data=st.data())
def test_fuzz_hardware_profile(worker, cases, data) -> None:
    case = cases.new()
    src = data.draw(st.sampled_from(_PROFILES), label="profile")
    prof = write(case / "p.toml", data.draw(toml_mutation(src.read_text(), _PROFILE_KEYS), label="mutant"))
    scen = write(case / "s.toml", TINY.replace(str(PROFILE), str(prof)))
    miss = data.draw(st.sampled_from(["fetch", "cpu"]))
    argv = ["run", str(scen), "--out", str(case / "out"), "--quiet", "--engine", _engine(data.draw),
            "--set", f"policy.miss={json.dumps(miss)}"]
    # an error names the profile, or the scenario's policy the profile cannot serve (cpu misses, no CPU timing)
    check("hardware profile", worker.run(argv, case), names=("p.toml", "policy.miss"), records=case / "out")


# ---- 4. runtime profiles ---------------------------------------------------------------------------------------

@st.composite
def runtime_doc(draw: Any) -> bytes:
    num = st.one_of(st.sampled_from(WEIRD_NUMBERS), st.floats(0, 1e-3).map(repr), st.floats(0, 1e-3).map(repr))
    host = {k: draw(num) for k in draw(st.lists(st.sampled_from(RUNTIME_KEYS), max_size=5, unique=True))}
    name = draw(st.sampled_from(['"rt"', '""', "3"]))
    lines = ['schema = "moe-emu/runtime/1"', f"name = {name}",
             "[host]", *(f"{k} = {v}" for k, v in host.items())]
    for model in draw(st.lists(st.sampled_from(["olmoe-1b-7b", "mixtral-8x7b", "x"]), max_size=2, unique=True)):
        lines.append(f'[models."{model}"]')
        lines += [f"{k} = {draw(num)}" for k in draw(st.lists(st.sampled_from(RUNTIME_KEYS), max_size=3, unique=True))]
    text = "\n".join(lines) + "\n"
    return draw(st.one_of(st.just(text.encode()), toml_mutation(text, (("host", "x"), ("models", "x", "y")))
                          if _valid_toml(text) else st.just(text.encode())))


def _valid_toml(text: str) -> bool:
    try:
        tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        return False
    return True


@FUZZ
@given(data=st.data())
def test_fuzz_runtime_profile(worker, cases, data) -> None:
    case = cases.new()
    rt = write(case / "rt.toml", data.draw(runtime_doc(), label="runtime"))
    scen = write(case / "s.toml", TINY.replace("[cache]", f'runtime = "{rt}"\n[cache]'))
    argv = ["run", str(scen), "--out", str(case / "out"), "--quiet", "--engine", _engine(data.draw)]
    check("runtime profile", worker.run(argv, case), names=("rt.toml",), records=case / "out")


# ---- 5. .npz traces ---------------------------------------------------------------------------------------------

def _valid_trace_arrays(seed: int, tokens: int = 24, layers: int = 16, experts: int = 64, k: int = 8
                        ) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    ex = np.argsort(rng.random((tokens, layers, experts)), axis=2)[:, :, :k].astype(np.int16)
    pred = np.argsort(rng.random((tokens, layers, experts)), axis=2)[:, :, :k].astype(np.int16)
    header = {"schema": "moe-emu/trace/1", "n_experts": experts, "model": "olmoe-1b-7b", "meta": {}}
    return {"experts": ex, "pass_offsets": np.concatenate([[0], np.arange(8, tokens + 1)]).astype(np.int64),
            "pass_phase": np.array([0] + [1] * (tokens - 8), np.int8),
            "token_request": np.zeros(tokens, np.int32),
            "token_position": np.arange(tokens, dtype=np.int32),
            "scores": rng.random((tokens, layers, k)).astype(np.float16), "predicted": pred,
            "header": np.array(json.dumps(header))}


_NPZ_VALUES = (-(2**15), -1, 0, 1, 7, 63, 64, 65, 255, 32767, 2**31 - 1, 2**40)


@st.composite
def npz_trace(draw: Any) -> bytes:
    arrays = _valid_trace_arrays(draw(st.integers(0, 3)))
    for _ in range(draw(st.integers(0, 3))):
        key = draw(st.sampled_from(sorted(arrays)))
        op = draw(st.sampled_from(["value", "value", "drop", "dtype", "shape", "header"]))
        a = arrays[key]
        if op == "header" or key == "header":
            header = json.loads(str(arrays["header"]))
            field = draw(st.sampled_from(["n_experts", "schema", "model", "meta", "extra"]))
            header[field] = draw(st.sampled_from([0, 1, 8, 63, 64, 65, 1000, 32768, 32769, -1, 1.5, "64", None,
                                                  [], {}, True]))
            arrays["header"] = np.array(json.dumps(header))
        elif op == "drop":
            arrays.pop(key)
        elif op == "value" and a.size and a.dtype.kind in "iuf":
            flat = a.reshape(-1).copy()
            i = draw(st.integers(0, flat.size - 1))
            if a.dtype.kind == "f":
                flat[i] = draw(st.sampled_from([np.nan, np.inf, -np.inf, -1.0, 65504.0, 0.0]))
                arrays[key] = flat.reshape(a.shape)
            else:
                v = draw(st.sampled_from(_NPZ_VALUES))
                wide = flat.astype(np.int64)
                wide[i] = v
                info = np.iinfo(a.dtype)
                arrays[key] = (wide.astype(a.dtype) if info.min <= v <= info.max else wide).reshape(a.shape)
        elif op == "dtype":
            arrays[key] = a.astype(draw(st.sampled_from([np.float32, np.int64, np.uint8, np.bool_, np.int8])))
        elif op == "shape" and a.ndim:
            arrays[key] = a[: max(a.shape[0] - draw(st.integers(1, 3)), 0)] if draw(st.booleans()) else a.T.copy()
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return draw(byte_mutation(buf.getvalue(), p_none=0.8))


_PREFETCH = ("multi-look", "adaptive", "next-layer", "lookahead", "oracle", "topk", "frequency", "none",
             "score-percentile")


@FUZZ
@given(data=st.data())
def test_fuzz_npz_trace(worker, cases, data) -> None:
    case = cases.new()
    trace = write(case / "t.npz", data.draw(npz_trace(), label="trace"))
    cmd = data.draw(st.sampled_from(["run", "run", "run", "inspect", "workingset", "concentration"]), label="cmd")
    if cmd == "run":
        text = TINY.replace("[workload.synthetic]\ntokens = 40\nprompt_len = 8\noutput_len = 8\nwith_scores = true",
                            f'[workload]\ntrace = "{trace}"')
        text = text.replace('prefetch = "none"', f'prefetch = "{data.draw(st.sampled_from(_PREFETCH))}"')
        scen = write(case / "s.toml", text)
        argv = ["run", str(scen), "--out", str(case / "out"), "--quiet", "--engine", _engine(data.draw)]
    elif cmd == "inspect":
        argv = ["trace", "inspect", str(trace), "--json"]
    elif cmd == "workingset":
        argv = ["workingset", str(trace), "--json", "--capacity", data.draw(st.sampled_from(["8", "25%", "1"]))]
    else:
        argv = ["concentration", "--trace", str(trace), "--json"]
    check(".npz trace", worker.run(argv, case), names=("t.npz", "workload.trace"), json_out=cmd != "run",
          records=case / "out")


# ---- 6. JSONL traces -------------------------------------------------------------------------------------------

@st.composite
def jsonl_trace(draw: Any) -> bytes:
    layers, k, experts = 2, 2, 8
    rows = []
    for tok in range(draw(st.integers(1, 6))):
        for layer in range(layers):
            rows.append({"request": 0, "token": tok, "layer": layer,
                         "experts": [int(x) for x in np.random.default_rng(tok * 7 + layer).choice(experts, k, False)],
                         "scores": [0.6, 0.4]})
    weird = st.sampled_from([-1, 8, 1e400, float("nan"), 2**31, 2**64, "0", None, [], {}, [1, 1], [0, 1, 2],
                             True, 1.5, 10**30])
    for _ in range(draw(st.integers(0, 3))):
        row = draw(st.sampled_from(rows))
        field = draw(st.sampled_from(["request", "token", "layer", "experts", "scores", "phase", "pass", "predicted",
                                      "problem_id", "extra"]))
        row[field] = draw(weird)
    lines = [json.dumps(r) for r in rows]
    if draw(st.booleans()):
        lines.insert(draw(st.integers(0, len(lines))), draw(st.sampled_from(
            ["{", "[]", "null", "1", '"x"', '{"request": 0}', "{" * 50_000, "NaN", '{"layer": Infinity}'])))
    return draw(byte_mutation("\n".join(lines).encode() + b"\n", p_none=0.75))


@FUZZ
@given(data=st.data())
def test_fuzz_jsonl_trace(worker, cases, data) -> None:
    case = cases.new()
    path = write(case / "t.jsonl", data.draw(jsonl_trace(), label="jsonl"))
    argv = ["trace", "import", str(path), "--out", str(case / "o.npz")]
    argv += data.draw(st.sampled_from([[], ["--format", "jsonl"], ["--strict"], ["--model", "olmoe-1b-7b"]]))
    check("JSONL trace", worker.run(argv, case), names=("t.jsonl", "--model", "--format", "--strict"))


# ---- 7. counts JSON --------------------------------------------------------------------------------------------

@st.composite
def counts_json(draw: Any) -> bytes:
    if draw(st.booleans()):
        src = draw(st.sampled_from(sorted((SCENARIOS / "counts").glob("*.json"))))
        doc = json.loads(src.read_text())
    else:
        n, layers = draw(st.integers(1, 6)), draw(st.integers(1, 3))
        doc = {"model": "m", "n_experts": n, "top_k": draw(st.sampled_from([None, 1, 2])),
               "layers": list(range(layers)),
               "counts": [[draw(st.integers(0, 100)) for _ in range(n)] for _ in range(layers)]}
    weird = st.sampled_from([-1, 0, 1, 1e308, 1e400, float("nan"), float("inf"), 10**400, "3", None, [], {}, True,
                             1.5, 2**63, [1, 2], [[1]], [[]], [0, 0]]).map(copy.deepcopy)  # no shared lists
    for _ in range(draw(st.integers(0, 3))):
        key = draw(st.sampled_from(["model", "n_experts", "top_k", "layers", "counts", "workload", "cell", "row"]))
        if key == "cell" and isinstance(doc.get("counts"), list) and doc["counts"] and isinstance(doc["counts"][0],
                                                                                                  list):
            row = doc["counts"][draw(st.integers(0, len(doc["counts"]) - 1))]
            if isinstance(row, list) and row:
                row[draw(st.integers(0, len(row) - 1))] = draw(weird)
        elif key == "row" and isinstance(doc.get("counts"), list):
            doc["counts"].append(draw(weird))
        elif draw(st.booleans()):
            doc.pop(key, None)
        else:
            doc[key] = draw(weird)
    text = json.dumps(doc, allow_nan=True)
    return draw(byte_mutation(text.encode(), p_none=0.75))


@FUZZ
@given(data=st.data())
def test_fuzz_counts_json(worker, cases, data) -> None:
    case = cases.new()
    path = write(case / "c.json", data.draw(counts_json(), label="counts"))
    argv = ["concentration", "--counts", str(path), "--json",
            "--coverage", data.draw(st.sampled_from(["0.9", "0.5", "1"]))]
    check("counts JSON", worker.run(argv, case), names=("c.json",), json_out=True)


# ---- 8. sweep TOML ---------------------------------------------------------------------------------------------

SWEEP = """
name = "fz"
base = "s.toml"
engine = "fast"
set = ["workload.max_tokens=24"]
[grid]
capacity = ["5%", "25%"]
bandwidth = ["profile", 25e9]
stack = [{ name = "lru", eviction = "lru" }, { name = "lfu+topk", eviction = "lfu", prefetch = "topk" }]
[pareto]
by = ["model", "capacity"]
"""
_SWEEP_KEYS = (("name",), ("base",), ("engine",), ("out",), ("copy_latency_s",), ("set",), ("grid", "capacity"),
               ("grid", "bandwidth"), ("grid", "stack"), ("grid", "model"), ("grid", "trace"), ("pareto", "by"))


@st.composite
def valid_sweep(draw: Any) -> bytes:
    """A sweep that should run: capacities, bandwidths and stacks drawn from valid values (edges included)."""
    caps = draw(st.lists(st.sampled_from(['"1%"', '"5%"', '"100%"', "8", "1", '"1GB"']), min_size=1, max_size=3,
                         unique=True))
    bws = draw(st.lists(st.sampled_from(['"profile"', "25e9", "1e6", "1e15"]), min_size=1, max_size=2, unique=True))
    stacks = draw(st.lists(st.sampled_from([
        '{ name = "lru", eviction = "lru" }', '{ name = "s3", eviction = { name = "s3-fifo", small_ratio = 1.0 } }',
        '{ name = "ml", prefetch = { name = "multi-look", k = 4096 } }', '{ name = "drop", miss = "drop" }',
        '{ name = "cpu", miss = "cpu", partition = "fair-bytes" }']), min_size=1, max_size=2, unique=True))
    engine = draw(st.sampled_from(['"fast"', '"des"']))
    return (f'name = "fz"\nbase = "s.toml"\nengine = {engine}\nset = ["workload.max_tokens=24"]\n'
            f'copy_latency_s = {draw(st.sampled_from(["0", "1e-5", "3600"]))}\n[grid]\n'
            f'capacity = [{", ".join(caps)}]\nbandwidth = [{", ".join(bws)}]\nstack = [{", ".join(stacks)}]\n'
            ).encode()


@FUZZ
@given(data=st.data())
def test_fuzz_sweep_toml(worker, cases, data) -> None:
    case = cases.new()
    write(case / "s.toml", TINY)
    path = write(case / "sw.toml", data.draw(st.one_of(toml_mutation(SWEEP, _SWEEP_KEYS), toml_mutation(
        SWEEP, _SWEEP_KEYS), valid_sweep()), label="sweep"))
    argv = ["sweep", str(path), "--jobs", "1", "--out", str(case / "out"), "--quiet"]
    # an error names the sweep file, its base scenario, or a path the mutant wrote in it (/proc/self/mem...)
    check("sweep TOML", worker.run(argv, case, timeout=120), names=("sw.toml", "s.toml", "/proc/", "/dev/", "etc"),
          records=case / "out")


# ---- 9. plot CSV -----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sweep_csv(worker, tmp_path_factory) -> Path:
    """A real sweep's CSV (the plot's input), made once."""
    root = tmp_path_factory.mktemp("sweep")
    write(root / "s.toml", TINY)
    write(root / "sw.toml", SWEEP.replace('capacity = ["5%", "25%"]', 'capacity = ["5%", "10%", "25%"]'))
    out = worker.run(["sweep", str(root / "sw.toml"), "--jobs", "1", "--out", str(root / "out"), "--quiet"], root)
    assert out.code == 0, out.describe()
    return root / "out" / "fz.csv"


@st.composite
def plot_csv(draw: Any, source: Path) -> bytes:
    rows = list(csv.reader(io.StringIO(source.read_text())))
    weird = st.sampled_from(["", "nan", "inf", "-inf", "-1", "0", "1e400", "abc", "1e308", "2", "x" * 200_000, "5%",
                             "0;1;x", ";;", "-3"])
    for _ in range(draw(st.integers(0, 3))):  # 0: the sweep's own CSV (a third of the cases through byte_mutation)
        op = draw(st.sampled_from(["cell", "cell", "cell", "drop_col", "short_row", "long_row", "dup_header"]))
        r = draw(st.integers(1, len(rows) - 1))
        c = draw(st.integers(0, len(rows[0]) - 1))
        if op == "cell" and c < len(rows[r]):
            rows[r][c] = draw(weird)
        elif op == "drop_col":
            for row in rows:
                if c < len(row):
                    del row[c]
        elif op == "short_row":
            rows[r] = rows[r][: draw(st.integers(0, len(rows[r])))]
        elif op == "long_row":
            rows[r] = [*rows[r], "extra", "1"]
        else:
            rows.insert(r, list(rows[0]))
    buf = io.StringIO()
    csv.writer(buf).writerows(rows)
    return draw(byte_mutation(buf.getvalue().encode(), p_none=0.8))


@FUZZ
@given(data=st.data())
def test_fuzz_plot_csv(worker, cases, sweep_csv, data) -> None:
    case = cases.new()
    path = write(case / "p.csv", data.draw(plot_csv(sweep_csv), label="csv"))
    kind = data.draw(st.sampled_from(["knee", "collisions", "speed", "pareto"]))
    argv = ["plot", str(path), "--out", str(case / "plots"), "--format", "svg", "--kind", kind]
    check("plot CSV", worker.run(argv, case), names=("p.csv", "--where"))


# ---- 10. GGUF imatrix ------------------------------------------------------------------------------------------

@st.composite
def imatrix(draw: Any, path: Path) -> None:
    gguf = pytest.importorskip("gguf")
    writer = gguf.GGUFWriter(str(path), arch="imatrix")
    writer.add_type(draw(st.sampled_from(["imatrix"] * 6 + ["model", ""])))
    n_exp = draw(st.sampled_from([8, 8, 1, 2]))
    weird = st.sampled_from([-1.0, np.nan, np.inf, -np.inf, 3.4e38, 0.0, 1e30])
    for layer in draw(st.lists(st.integers(0, 5), min_size=draw(st.sampled_from([0, 1, 1, 1])), max_size=3,
                               unique=True)):
        counts = np.arange(1, n_exp + 1, dtype=np.float32) * 10
        if draw(st.integers(0, 3)) == 0:
            counts[draw(st.integers(0, n_exp - 1))] = draw(weird)
        if draw(st.integers(0, 4)) == 0:
            counts[:] = 0
        for kind in draw(st.lists(st.sampled_from(["ffn_gate_exps", "ffn_up_exps", "ffn_down_exps"]), min_size=1,
                                  max_size=3, unique=True)):
            mine = counts.copy()
            if draw(st.integers(0, 9)) == 0:
                mine = mine[:-1] if mine.size > 1 else mine
            shape = draw(st.sampled_from([(-1, 1)] * 6 + [(-1,), (1, -1), (-1, 2), (2, 2, -1)]))
            if shape in ((-1, 2), (2, 2, -1)) and mine.size % 4:
                shape = (-1, 1)
            dtype = draw(st.sampled_from([np.float32, np.float32, np.float16, np.int32, np.float64]))
            with np.errstate(invalid="ignore", over="ignore"):
                writer.add_tensor(f"blk.{layer}.{kind}.weight.counts", mine.astype(dtype).reshape(shape))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    path.write_bytes(draw(byte_mutation(path.read_bytes(), p_none=0.7)))


@FUZZ
@given(data=st.data())
def test_fuzz_gguf_imatrix(worker, cases, data) -> None:
    case = cases.new()
    path = case / "i.gguf"
    data.draw(imatrix(path), label="imatrix")
    argv = ["concentration", "--imatrix", str(path), "--json"]
    check("GGUF imatrix", worker.run(argv, case), names=("i.gguf",), json_out=True)


# ---- 11. CLI arguments -----------------------------------------------------------------------------------------

_WORDS = ("-1", "0", "1", "2", "1e400", "nan", "inf", "abc", "", "--", "-", "%", "25%", "0:1", "5:", ":", "a:b",
          "/proc", "/dev/null", ".", "/nonexistent/x", "9" * 30, "olmoe-1b-7b", "mixtral-8x7b", "fast", "des",
          "\u00e9", "total=0", "total=-1", "0.6GB", "1e400GB", "key=value", "bandwidth=profile")
_COMMANDS: dict[str, tuple[str, ...]] = {
    "run": ("--out", "--set", "--engine", "--quiet", "--timeline", "--timeline-passes"),
    "policies": ("--json",),
    "trace gen": ("--model", "--tokens", "--seed", "--out", "--zipf-s", "--reuse-prob", "--cross-layer-corr",
                  "--prompt-len", "--output-len", "--length-jitter", "--requests", "--batch-size", "--scores",
                  "--score-scale", "--predictor-accuracy"),
    "trace inspect": ("--json",),
    "trace import": ("--format", "--model", "--out", "--strict", "--allow-degenerate"),
    "trace fit": ("--model", "--out", "--max-tokens"),
    "concentration": ("--imatrix", "--counts", "--trace", "--coverage", "--json"),
    "workingset": ("--window", "--capacity", "--model", "--json"),
    "sweep": ("--jobs", "--out", "--quiet"),
    "plot": ("--out", "--kind", "--format", "--where"),
    "validate": ("--summary", "--json", "--compare", "--profile", "--gpu-kind"),
}
_FLAGS = {"--quiet", "--json", "--scores", "--strict", "--allow-degenerate"}


@FUZZ
@given(data=st.data())
def test_fuzz_cli_arguments(worker, cases, data) -> None:
    case = cases.new()
    files = {"scenario": write(case / "s.toml", TINY), "counts": SCENARIOS / "counts" / "olmoe_c4.json",
             "trace": case / "t.npz", "out": case / "out", "outnpz": case / "g.npz", "outtoml": case / "f.toml"}
    arrays = _valid_trace_arrays(0)
    with open(files["trace"], "wb") as fh:
        np.savez(fh, **arrays)
    values = st.one_of(st.sampled_from(_WORDS), st.sampled_from([str(p) for p in files.values()]),
                       st.integers(-(2**64), 2**64).map(str), st.text(max_size=8))
    command = data.draw(st.sampled_from(sorted(_COMMANDS)), label="command")
    argv = command.split()
    positional = {"run": "scenario", "trace inspect": "trace", "trace import": "counts", "trace fit": "trace",
                  "workingset": "trace", "sweep": "scenario", "plot": "counts"}.get(command)
    if positional and data.draw(st.integers(0, 4)):
        argv.append(str(files[positional]))
    for _ in range(data.draw(st.integers(0, 4))):
        opt = data.draw(st.sampled_from(_COMMANDS[command]))
        argv.append(opt)
        if opt not in _FLAGS:
            argv.append(data.draw(values))
    if command == "run" and "--out" not in argv:
        argv += ["--out", str(files["out"])]
    if command == "trace gen" and "--tokens" not in argv:
        argv += ["--tokens", "64"]
    argv = data.draw(st.permutations(argv[len(command.split()):]).map(lambda rest: [*command.split(), *rest])) \
        if data.draw(st.booleans()) else argv
    json_out = "--json" in argv and command in ("policies", "trace inspect", "concentration", "workingset")
    check("CLI arguments", worker.run(argv, case), json_out=json_out, records=case / "out")


# ---- the harness itself ---------------------------------------------------------------------------------------

def _checker_cases() -> list[tuple[str, Callable[[Path], list[str]], str]]:
    return [
        ("a valid run", lambda d: ["run", str(write(d / "s.toml", TINY)), "--out", str(d / "o"), "--quiet"], "ok"),
        ("a bad scenario", lambda d: ["run", str(write(d / "s.toml", "model = [")), "--out", str(d / "o")], "error"),
        ("a usage error", lambda d: ["run"], "error"),
    ]


@pytest.mark.parametrize("label,argv,verdict", _checker_cases(), ids=[c[0] for c in _checker_cases()])
def test_the_harness_tells_clean_endings(worker, tmp_path, label, argv, verdict) -> None:
    assert check("harness", worker.run(argv(tmp_path), tmp_path), records=tmp_path / "o") == verdict


def test_the_harness_catches_a_traceback_a_signal_and_a_hang(worker, tmp_path, monkeypatch) -> None:
    """A wrong ending is never taken for a clean one: a Python exception escaping main(), a worker killed by a
    signal, and a worker that stops answering."""
    from .fuzz_support import Outcome, classify

    assert classify(Outcome(code=None, out="", err="", exc="Traceback ...\nValueError")) == "traceback"
    assert classify(Outcome(code=1, out="", err="Traceback (most recent call last):\n  x\nKeyError: 1")) == \
        "traceback"
    assert classify(Outcome(code=2, out="", err="emu: error: a\nemu: error: b\n")) == "messy error"
    assert classify(Outcome(code=2, out="", err="oops\nemu: error: a\n")) == "messy error"
    assert classify(Outcome(code=2, out="", err="emu: error: s.toml: cache.capacity: expected ...\n")) == "error"
    # a real signal and a real hang: the worker's own test hooks (tests/fuzz_support.py), not emu's
    w = Worker()
    try:
        assert w.run(["policies"], tmp_path).code == 0
        died = w.run(["__fuzz_signal__"], tmp_path)
        assert died.died == "killed by signal SIGSEGV" and classify(died) == "died"
        assert w.run(["policies"], tmp_path).code == 0  # a fresh worker after the death
        hung = w.run(["__fuzz_hang__"], tmp_path, timeout=2)
        assert hung.died is not None and "timeout" in hung.died and classify(hung) == "died"
        assert w.run(["policies"], tmp_path).code == 0
    finally:
        w.close()
