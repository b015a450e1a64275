"""Scenario files: one TOML file says which model, GPU, cache, workload and policy stack to emulate.

Validation happens here, at the edge: every mistake names the file, the dotted key and what was
expected (docs/scenarios.md documents every key).
"""

from __future__ import annotations

import copy
import json
import math
import os
import re
import sys
import warnings
from pathlib import Path
from typing import Any

import attrs

from .engines.setup import PolicyChoice, StackChoice
from .errors import EmuError, EmuWarning
from .models import PRECISION_BITS, ModelSpec, get_preset, model_from_dict
from .policies.registry import get_policy
from .profile import PROFILE_SECTIONS, HardwareProfile, check_overrides, effective_profile
from .textio import load_toml

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from .engines import ENGINES

_SECTIONS = {
    "name": None, "seed": None, "model": None,
    # copy, compute, models: keys over the hardware profile's (`hardware.copy.bw_pinned_Bps = 5e9`)
    "hardware": {"profile", "runtime", *PROFILE_SECTIONS},
    "cache": {"capacity"},
    "workload": {"trace", "synthetic", "max_tokens"},
    "policy": {"eviction", "prefetch", "miss", "routing", "partition"},
    "engine": {"kind"},
    "output": {"dir"},
}
_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([KMGT]i?B)\s*$", re.IGNORECASE)
#: decimal units are powers of 1000 and binary ones powers of 1024, everywhere a size is read (docs/scenarios.md):
#: "0.6GB" is 600,000,000 bytes and "0.6GiB" 644,245,094 (SpecMD's "0.6GB" cache is 5% of OLMoE's bf16 experts,
#: 644 MB: its "GB" are GiB)
_UNITS = {"kb": 1e3, "mb": 1e6, "gb": 1e9, "tb": 1e12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
#: a share of the model's expert bytes at a stated precision: "5% of bf16"
_SHARE_OF = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*%\s*of\s+(\S+)\s*$", re.IGNORECASE)


def parse_size(text: str) -> float | None:
    """Bytes of a size such as "0.6GB" (1e9-based) or "512MiB" (1024-based); None when `text` is not a size."""
    m = _SIZE.match(text)
    if m is None:
        return None
    return float(m.group(1)) * _UNITS[m.group(2).lower()]


@attrs.frozen
class CacheConfig:
    """Capacity as the user wrote it, and what it resolves to for the model."""

    spec: str
    capacity_bytes: int
    slots: int  # whole experts of the model's own size the budget holds (the engine holds bytes)

    @classmethod
    def parse(cls, value: Any, model: ModelSpec, file: str | None) -> CacheConfig:
        key = "cache.capacity"
        expert = model.expert_bytes()
        if isinstance(value, bool):
            raise EmuError(f"expected \"5%\", \"5% of bf16\", \"0.6GB\" or a slot count, got {value!r}", file=file,
                           key=key)
        if isinstance(value, int):
            nbytes = value * expert
        elif isinstance(value, str) and _SHARE_OF.match(value):
            nbytes = _share_of(value, model, file, key)
        elif isinstance(value, str) and value.strip().endswith("%"):
            try:
                pct = float(value.strip()[:-1])
            except ValueError:
                raise EmuError(f"expected a percentage like \"5%\", got {value!r}", file=file, key=key) from None
            if not (0 < pct <= 100):
                raise EmuError(f"expected a percentage in (0, 100], got {value!r}", file=file, key=key)
            nbytes = int(model.total_expert_bytes * pct / 100.0)
        elif isinstance(value, str) and (size := parse_size(value)) is not None:
            if not math.isfinite(size):
                raise EmuError(f"expected a finite size, got {value!r}", file=file, key=key)
            nbytes = int(size)
        else:
            raise EmuError(f"expected \"5%\" of expert bytes, \"5% of bf16\" (of the expert bytes at a stated "
                           f"precision), a size like \"0.6GB\" or \"0.6GiB\", or a slot count, got {value!r}",
                           file=file, key=key)
        if nbytes < expert:
            raise EmuError(f"{value!r} is {nbytes} bytes, which cannot hold one expert of {model.name} "
                           f"({expert} bytes)", file=file, key=key)
        nbytes = min(nbytes, model.total_expert_bytes)
        return cls(spec=str(value), capacity_bytes=int(nbytes), slots=nbytes // expert)


def _share_of(value: str, model: ModelSpec, file: str | None, key: str) -> int:
    """Bytes of "P% of PRECISION": P% of all routed experts' bytes were they stored at PRECISION (the model's own
    precision sets the slot size; this only states the budget). SpecMD's "5%" cache (0.6 GB) of OLMoE holding int4
    experts is "5% of bf16": 5% of the bf16 experts' 12.9 GB."""
    m = _SHARE_OF.match(value)
    assert m is not None
    pct, precision = float(m.group(1)), m.group(2).lower()
    if not (0 < pct <= 100):
        raise EmuError(f"expected a percentage in (0, 100], got {value!r}", file=file, key=key)
    if precision not in PRECISION_BITS:
        raise EmuError(f"unknown precision {m.group(2)!r} in {value!r}; expected one of {sorted(PRECISION_BITS)}",
                       file=file, key=key)
    return int(model.total_expert_bytes_at(precision) * pct / 100.0)


@attrs.frozen
class Workload:
    """A trace file, or a seeded synthetic generator (then `synthetic` holds its parameters)."""

    trace: str | None = None
    synthetic: dict[str, Any] | None = None
    max_tokens: int | None = None


@attrs.frozen
class Scenario:
    name: str
    path: str
    model: ModelSpec
    profile_path: str
    cache: CacheConfig
    workload: Workload
    stack: StackChoice
    engine: str
    seed: int
    output_dir: str | None
    raw: dict[str, Any]
    #: a runtime profile (the host's costs around the device's work); None: a runtime that adds none
    runtime_path: str | None = None
    #: keys over the hardware profile's, as the scenario's `hardware.copy` / `.compute` / `.models` tables hold them
    hardware_overrides: dict[str, Any] = attrs.field(factory=dict)

    def profile(self) -> HardwareProfile:
        """The hardware profile this scenario runs on: the profile file with the scenario's `hardware.*` keys over
        it (what they invalidate dropped, and said in one warning)."""
        return effective_profile(self.profile_path, self.hardware_overrides, file=self.path)

    def resolved(self) -> dict[str, Any]:
        """The scenario as run: every default filled in, paths resolved."""
        return {
            "name": self.name, "file": self.path, "seed": self.seed, "model": self.model.to_dict(),
            "hardware": {"profile": self.profile_path,
                         **({} if self.runtime_path is None else {"runtime": self.runtime_path}),
                         **copy.deepcopy(self.hardware_overrides)},
            "cache": {"capacity": self.cache.spec, "capacity_bytes": self.cache.capacity_bytes,
                      "slots": self.cache.slots},
            "workload": attrs.asdict(self.workload),
            "policy": {kind: {"name": c.name, **c.params} for kind, c in attrs.asdict(
                self.stack, recurse=False).items() for c in [c]},
            "engine": {"kind": self.engine},
        }


# ---- overrides -----------------------------------------------------------------------------------

def parse_override(text: str) -> tuple[list[str], Any]:
    """`key.path=value`; the value is read as TOML (numbers, strings, booleans), else kept as a string.
    `-key.path` (`emu run --unset key.path`) removes the key: its value is `UNSET`."""
    if text.startswith("-") and "=" not in text:
        keys = [k.strip() for k in text[1:].strip().split(".") if k.strip()]
        if not keys:
            raise EmuError(f"--unset expects key.path, got {text[1:]!r}", key="--unset")
        return keys, UNSET
    if "=" not in text:
        raise EmuError(f"--set expects key.path=value, got {text!r}", key="--set")
    path, _, value = text.partition("=")
    keys = [k.strip() for k in path.strip().split(".") if k.strip()]
    if not keys:
        raise EmuError(f"--set expects key.path=value, got {text!r}", key="--set")
    try:
        parsed = tomllib.loads(f"v = {value.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        parsed = value.strip()
    return keys, parsed


def from_here(overrides: list[str]) -> list[str]:
    """Command-line overrides with their relative paths (`PATH_KEYS`) made absolute from the current folder: a
    path the user types is from where they stand (a path in a scenario or sweep file is from that file)."""
    out = []
    for text in overrides:
        if "=" in text and not text.startswith("-"):
            keys, value = parse_override(text)
            if tuple(keys) in PATH_KEYS and isinstance(value, str) and value and not Path(value).is_absolute():
                text = f"{'.'.join(keys)}={json.dumps(os.path.abspath(value))}"
        out.append(text)
    return out


#: `parse_override`'s value of a key to remove
UNSET = object()

#: scenario keys that hold file paths: in a file relative to the file, on the command line to the current folder
PATH_KEYS = {("hardware", "profile"), ("hardware", "runtime"), ("workload", "trace")}

#: the workload's kinds: setting a key of one drops the other (`--set workload.trace=F.npz` on a synthetic one)
_WORKLOAD_KINDS = ("trace", "synthetic")


def apply_overrides(data: dict[str, Any], overrides: list[str], file: str | None = None) -> dict[str, Any]:
    """The scenario's data with each `key.path=value` set (or `-key.path` removed); a path through a value that
    is not a table is an EmuError naming the scenario `file` and the override. Setting one workload kind
    (`workload.trace` or `workload.synthetic.*`) replaces the other."""
    data = copy.deepcopy(data)
    for text in overrides:
        keys, value = parse_override(text)
        if value is UNSET:
            _unset(data, keys, file)
            continue
        if len(keys) >= 2 and keys[0] == "workload" and keys[1] in _WORKLOAD_KINDS:
            workload = data.get("workload")
            if isinstance(workload, dict):
                other = _WORKLOAD_KINDS[1 - _WORKLOAD_KINDS.index(keys[1])]
                workload.pop(other, None)
        node = data
        for k in keys[:-1]:
            child = node.get(k)
            if child is None:
                child = node[k] = {}
            elif isinstance(child, str) and k in ("eviction", "prefetch", "miss", "routing", "partition"):
                child = node[k] = {"name": child}
            elif isinstance(child, str) and node is data and k == "model":
                # `--set model.precision=int4` on a preset: the preset with that key changed (an inline table)
                child = node[k] = {"preset": child}
            elif not isinstance(child, dict):
                raise EmuError(f"cannot set {'.'.join(keys)}: {k} is not a table but {repr(child)[:60]}", file=file,
                               key="--set")
            node = child
        node[keys[-1]] = value
    return data


def _unset(data: dict[str, Any], keys: list[str], file: str | None) -> None:
    node: Any = data
    for k in keys[:-1]:
        node = node.get(k) if isinstance(node, dict) else None
    if not isinstance(node, dict) or keys[-1] not in node:
        raise EmuError(f"cannot unset {'.'.join(keys)}: the scenario has no such key", file=file, key="--unset")
    del node[keys[-1]]


# ---- loading -------------------------------------------------------------------------------------

def _policy_choice(kind: str, value: Any, file: str) -> PolicyChoice:
    key = f"policy.{kind}"
    if isinstance(value, str):
        name, params = value, {}
    elif isinstance(value, dict):
        params = dict(value)
        name = params.pop("name", None)
        if not isinstance(name, str):
            raise EmuError("expected a table with a string `name`, e.g. { name = \"lfu\" }", file=file, key=key)
    else:
        raise EmuError(f"expected a policy name or a table, got {value!r}", file=file, key=key)
    policy = get_policy(kind, name, file=file)
    return PolicyChoice(name=name, params=policy.resolve_params(params, key, file))


def _check_sections(data: dict[str, Any], file: str) -> None:
    for key, value in data.items():
        if key not in _SECTIONS:
            raise EmuError(f"unknown key; expected one of {sorted(_SECTIONS)}", file=file, key=key)
        allowed = _SECTIONS[key]
        if allowed is None:
            continue
        if not isinstance(value, dict):
            raise EmuError(f"expected a table, got {value!r}", file=file, key=key)
        for sub in value:
            if sub not in allowed:
                raise EmuError(f"unknown key; expected one of {sorted(allowed)}", file=file, key=f"{key}.{sub}")


def _resolve_path(value: Any, base: Path, file: str, key: str) -> str:
    if not isinstance(value, str) or not value or "\x00" in value:
        raise EmuError(f"expected a file path, got {value!r}", file=file, key=key)
    path = Path(value)
    if not path.is_absolute():
        path = base / path
    if not path.exists():
        raise EmuError(f"file not found: {path}", file=file, key=key)
    return str(path)


def scenario_from_dict(data: dict[str, Any], path: str | Path, overrides: list[str] | None = None) -> Scenario:
    file = str(path)
    base = Path(path).parent
    if overrides:
        data = apply_overrides(data, overrides, file)
    _check_sections(data, file)

    model_value = data.get("model")
    if isinstance(model_value, str):
        try:
            model = get_preset(model_value)
        except EmuError as err:
            raise EmuError(err.detail, file=file, key="model") from None
    elif isinstance(model_value, dict):
        model = model_from_dict(model_value, file=file)
    else:
        raise EmuError("expected a preset name or an inline table", file=file, key="model")

    hardware = data.get("hardware") or {}
    if "profile" not in hardware:
        raise EmuError("missing: the hardware profile TOML to use", file=file, key="hardware.profile")
    profile_path = _resolve_path(hardware["profile"], base, file, "hardware.profile")
    runtime_path = (None if hardware.get("runtime") is None
                    else _resolve_path(hardware["runtime"], base, file, "hardware.runtime"))
    hardware_overrides = check_overrides({k: v for k, v in hardware.items() if k in PROFILE_SECTIONS}, file)

    if "capacity" not in (data.get("cache") or {}):
        raise EmuError("missing: e.g. \"5%\", \"0.6GB\" or a slot count", file=file, key="cache.capacity")
    cache = CacheConfig.parse(data["cache"]["capacity"], model, file)

    seed = data.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= 2**63 - 1:
        raise EmuError(f"expected an integer in [0, 2**63 - 1], got {seed!r}", file=file, key="seed")

    wl = data.get("workload") or {}
    if ("trace" in wl) == ("synthetic" in wl):
        raise EmuError("expected exactly one of workload.trace or workload.synthetic", file=file, key="workload")
    max_tokens = wl.get("max_tokens")
    if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int)
                                   or max_tokens < 1):
        raise EmuError(f"expected a positive integer, got {max_tokens!r}", file=file, key="workload.max_tokens")
    if "trace" in wl:
        workload = Workload(trace=_resolve_path(wl["trace"], base, file, "workload.trace"), max_tokens=max_tokens)
    else:
        if not isinstance(wl["synthetic"], dict):
            raise EmuError("expected a table of generator parameters", file=file, key="workload.synthetic")
        workload = Workload(synthetic=dict(wl["synthetic"]), max_tokens=max_tokens)

    pol = data.get("policy") or {}
    defaults = StackChoice()
    stack = StackChoice(**{
        kind: _policy_choice(kind, pol[kind], file) if kind in pol else getattr(defaults, kind)
        for kind in ("eviction", "prefetch", "miss", "routing", "partition")})

    engine = (data.get("engine") or {}).get("kind", "auto")
    if engine not in ENGINES:
        raise EmuError(f"expected one of {list(ENGINES)}, got {engine!r}", file=file, key="engine.kind")

    name = data.get("name", Path(path).stem)
    if not isinstance(name, str):
        raise EmuError(f"expected a string, got {name!r}", file=file, key="name")
    out = (data.get("output") or {}).get("dir")
    if out is not None and (not isinstance(out, str) or not out or "\x00" in out):
        raise EmuError(f"expected a directory path, got {out!r}", file=file, key="output.dir")

    if stack.partition.name == "global" and cache.slots < model.top_k:
        warnings.warn(f"{file}: cache.capacity holds {cache.slots} experts, fewer than top_k = "
                      f"{model.top_k}: every layer is in the thrash zone", EmuWarning, stacklevel=2)
    return Scenario(name=name, path=file, model=model, profile_path=profile_path, cache=cache, workload=workload,
                    stack=stack, engine=engine, seed=seed, output_dir=out, raw=data, runtime_path=runtime_path,
                    hardware_overrides=hardware_overrides)


def load_scenario(path: str | Path, overrides: list[str] | None = None) -> Scenario:
    path = Path(path)
    if not path.is_file():
        raise EmuError("scenario file not found", file=str(path))
    data = load_toml(path, "a scenario TOML file (docs/scenarios.md)")
    return scenario_from_dict(data, path, overrides)

