"""Runtime profiles: the host time a serving runtime adds around the device's work (docs/profiles.md).

A hardware profile says how long the device takes (copies, expert and dense kernels); a runtime profile says
how long one runtime's host thread takes to get that work onto the device: per pass, per layer launched,
per routing readback, per cache decision, per expert launched, per copy and per prefetch issued. The two are
calibrated separately (`emu calibrate` for the device, `emu calibrate --runtime NAME` for a runtime) and the
engines combine them by the timing contract's host rule (docs/ARCHITECTURE.md). Without a runtime profile the
host adds nothing: the prediction is that of a runtime that keeps the device fed.
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path
from typing import Any

import attrs

from .errors import EmuError
from .models import ModelSpec
from .profile import _Reader, read_header
from .textio import load_toml

SCHEMA = "moe-emu/runtime/1"

#: the host costs, in the order of a layer: what each one is charged to
HOST_KEYS: dict[str, str] = {
    "pass_s": "per pass, before its first launch: inputs, the previous token's readback, the loop's own work",
    "layer_s": "per layer: launching its dense part (attention, norms, router, speculator) up to the readback",
    "readback_s": "per layer: from the router's result on the device to the expert ids on the host",
    "gate_s": "per layer: the cache decisions for the layer's experts (before its copies are issued)",
    "expert_s": "per expert launched on the device",
    "copy_s": "per demand copy issued",
    "prefetch_s": "per prefetch copy issued (unset: copy_s)",
    "prefetch_gate_s": "per layer, where a prefetch policy runs: what its work (the decision, the landing polls, "
                       "the watchdog's checkpoints) adds to the gate beyond gate_s, whether it issues or not",
    "batch_expert_s": "per expert launched in a decode pass of more than one token: where a runtime gathers each "
                      "expert's rows of the batch and scatters its output back (unset: expert_s)",
    "prefill_expert_s": "per expert launched in a prefill pass (unset: expert_s)",
    "prefill_copy_s": "per demand copy issued in a prefill pass (unset: copy_s)",
    "prefill_prefetch_s": "per prefetch issued in a prefill pass (unset: prefill_copy_s, else prefetch_s)",
    "prefill_layer_s": "per layer of a prefill pass: launching its dense part (unset: layer_s)",
    "prefill_readback_s": "per layer of a prefill pass: its routing readback (unset: readback_s)",
    "prefill_gate_s": "per layer of a prefill pass: its cache decisions (unset: gate_s)",
}
#: the largest host cost accepted for one item: a second per launch is a unit mistake, not a runtime
MAX_HOST_S = 1.0


@attrs.frozen
class HostCosts:
    """Host seconds per item (see `HOST_KEYS`); None: not set here (a model entry then takes the runtime's)."""

    pass_s: float | None = None
    layer_s: float | None = None
    readback_s: float | None = None
    gate_s: float | None = None
    expert_s: float | None = None
    copy_s: float | None = None
    prefetch_s: float | None = None
    prefetch_gate_s: float | None = None
    batch_expert_s: float | None = None
    prefill_expert_s: float | None = None
    prefill_copy_s: float | None = None
    prefill_prefetch_s: float | None = None
    prefill_layer_s: float | None = None
    prefill_readback_s: float | None = None
    prefill_gate_s: float | None = None

    def over(self, base: HostCosts) -> HostCosts:
        """These costs where set, else `base`'s."""
        return HostCosts(**{k: (v if v is not None else getattr(base, k))
                            for k, v in attrs.asdict(self).items()})


@attrs.frozen
class ResolvedHost:
    """Every host cost of one model under one runtime, fallbacks applied (all seconds, 0 where unset)."""

    pass_s: float = 0.0
    layer_s: float = 0.0
    readback_s: float = 0.0
    gate_s: float = 0.0
    expert_s: float = 0.0
    copy_s: float = 0.0
    prefetch_s: float = 0.0
    prefetch_gate_s: float = 0.0
    batch_expert_s: float = 0.0
    prefill_expert_s: float = 0.0
    prefill_copy_s: float = 0.0
    prefill_prefetch_s: float = 0.0
    prefill_layer_s: float = 0.0
    prefill_readback_s: float = 0.0
    prefill_gate_s: float = 0.0


#: how a runtime runs a layer's experts on the device: one kernel per expert, or all of them as one grouped GEMM
#: (the hardware profile's `fused` table prices the layer then)
EXPERT_KERNELS = ("per-expert", "fused")


@attrs.frozen
class RuntimeProfile:
    name: str
    host: HostCosts = attrs.field(factory=HostCosts)
    models: dict[str, HostCosts] = attrs.field(factory=dict)
    provisional: bool = False
    provenance: dict[str, Any] = attrs.field(factory=dict)
    source: str = ""
    experts: str = "per-expert"  # `EXPERT_KERNELS`
    #: `prefetch_gate_s` of a named prefetch policy: the runtime's (`[host.prefetch_gate_by_policy]`) and each
    #: model's (`[models.<m>.prefetch_gate_by_policy]`); a policy's decision work differs from another's
    host_prefetch_gates: dict[str, float] = attrs.field(factory=dict)
    prefetch_gates: dict[str, dict[str, float]] = attrs.field(factory=dict)

    def resolve(self, model: ModelSpec | str, prefetch: str = "none") -> ResolvedHost:
        """The model entry's costs over the runtime's, with the documented fallbacks; `prefetch`: the stack's
        prefetch policy, whose own gate price (the model's, else the runtime's) comes before `prefetch_gate_s`."""
        name = model if isinstance(model, str) else model.name
        c = self.models.get(name, HostCosts()).over(self.host)
        own = self.prefetch_gates.get(name, {}).get(prefetch, self.host_prefetch_gates.get(prefetch))
        if own is not None:
            c = attrs.evolve(c, prefetch_gate_s=own)

        def z(v: float | None) -> float:
            return 0.0 if v is None else float(v)

        copy = z(c.copy_s)
        prefetch = copy if c.prefetch_s is None else c.prefetch_s
        prefill_copy = copy if c.prefill_copy_s is None else c.prefill_copy_s
        if c.prefill_prefetch_s is not None:
            prefill_prefetch = c.prefill_prefetch_s
        else:
            prefill_prefetch = c.prefill_copy_s if c.prefill_copy_s is not None else prefetch
        expert = z(c.expert_s)
        return ResolvedHost(
            pass_s=z(c.pass_s), layer_s=z(c.layer_s), readback_s=z(c.readback_s), gate_s=z(c.gate_s),
            expert_s=expert, copy_s=copy, prefetch_s=float(prefetch), prefetch_gate_s=z(c.prefetch_gate_s),
            batch_expert_s=expert if c.batch_expert_s is None else float(c.batch_expert_s),
            prefill_expert_s=expert if c.prefill_expert_s is None else float(c.prefill_expert_s),
            prefill_copy_s=float(prefill_copy), prefill_prefetch_s=float(prefill_prefetch),
            prefill_layer_s=z(c.layer_s) if c.prefill_layer_s is None else float(c.prefill_layer_s),
            prefill_readback_s=z(c.readback_s) if c.prefill_readback_s is None else float(c.prefill_readback_s),
            prefill_gate_s=z(c.gate_s) if c.prefill_gate_s is None else float(c.prefill_gate_s))

    def to_dict(self) -> dict[str, Any]:
        """The TOML form (`load_runtime_profile` reads it back to an equal profile)."""
        def costs(c: HostCosts) -> dict[str, float]:
            return {k: v for k, v in attrs.asdict(c).items() if v is not None}

        out: dict[str, Any] = {"schema": SCHEMA, "name": self.name, "provisional": self.provisional,
                               "experts": self.experts, "host": costs(self.host)}
        if self.host_prefetch_gates:
            out["host"][GATES_KEY] = dict(self.host_prefetch_gates)
        if self.models or self.prefetch_gates:
            out["models"] = {name: costs(c) for name, c in self.models.items()}
            for name, gates in self.prefetch_gates.items():
                out["models"].setdefault(name, {})[GATES_KEY] = dict(gates)
        if self.provenance:
            out["provenance"] = dict(self.provenance)
        return out


#: the runtime of a scenario that names none: the host adds no time
NO_RUNTIME = RuntimeProfile(name="none")


#: the table of a host entry that prices `prefetch_gate_s` per prefetch policy, by the policy's name
GATES_KEY = "prefetch_gate_by_policy"


def _host_seconds(r: _Reader, key: str) -> float | None:
    v = r.number(key, None)
    if v is not None and v > MAX_HOST_S:
        raise r.err(key, f"expected host seconds per item (0 to {MAX_HOST_S}), got {v!r}")
    return v


def _entry(r: _Reader) -> tuple[HostCosts, dict[str, float]]:
    """A host entry: its costs and its per-policy gate prices (each a registered prefetch policy's name)."""
    values = {key: _host_seconds(r, key) for key in HOST_KEYS}
    gates: dict[str, float] = {}
    g = r.sub(GATES_KEY, None)
    if g is not None:
        from .policies.registry import REGISTRY

        names = sorted(REGISTRY.get("prefetch", {}))
        for policy in list(g.table):
            if policy not in names:
                raise g.err(policy, f"expected a prefetch policy's name, one of {names}")
            value = _host_seconds(g, policy)
            if value is None:
                raise g.err(policy, "expected host seconds per gate")
            gates[policy] = value
        g.done()
    r.done()
    return HostCosts(**values), gates


def runtime_from_dict(data: dict[str, Any], *, file: str = "<runtime>") -> RuntimeProfile:
    top = _Reader(data, file, "")
    name, provisional, prov = read_header(top, SCHEMA)
    experts = top.raw("experts", "per-expert")
    if experts not in EXPERT_KERNELS:
        raise top.err("experts", f"expected one of {list(EXPERT_KERNELS)}, got {experts!r}")
    h = top.sub("host", {})
    assert h is not None
    host, host_gates = _entry(h)
    entries = top.tables("models", _entry)
    top.done()
    # an entry holding gate prices alone sets no cost of the model's
    models = {m: e[0] for m, e in entries.items() if e[0] != HostCosts() or not e[1]}
    return RuntimeProfile(name=name, host=host, models=models, provisional=provisional,
                          provenance=prov, source=file, experts=experts, host_prefetch_gates=host_gates,
                          prefetch_gates={m: e[1] for m, e in entries.items() if e[1]})


def load_runtime_profile(path: str | Path) -> RuntimeProfile:
    path = Path(path)
    file = str(path)
    if not path.is_file():
        raise EmuError("runtime profile not found", file=file)
    data = load_toml(path, "a runtime profile TOML file (docs/profiles.md)")
    return runtime_from_dict(data, file=file)


# ---- the host's steadiness during a calibration ------------------------------------------------------

#: how far apart (slowest / fastest - 1, `host_drift`) the host's pace may be across one model's calibration requests
#: before the host is called unsteady: on a steady host they agree within a few percent (docs/validation.md)
HOST_DRIFT_TOLERANCE = 0.10


def host_drift(profile: RuntimeProfile) -> dict[str, tuple[float, float]]:
    """Per model: the fastest and the slowest pace its calibration requests saw, as a median decode step with every
    expert resident (seconds). The requests are taken at different moments of a lease with the same work, so
    where these disagree the host's pace changed between them, and predictions of host-paced runs made with the
    profile can be no closer than that.

    The slowest is the slowest request's resident median. The fastest is the least of every request's resident
    median and of its small-cache median (`decode_step_s`, the same prompt on a 10% cache): the small cache does
    at least the resident request's work per step (the same launches, plus its misses' copies), so its median
    bounds from above what a resident step took at its moment. A resident request slower than the small-cache
    one beside it says that the host slowed down for the resident request; it counts as a request of its own.
    A model calibrated from one request keeps that request's figures in its entry itself. Models with fewer than
    two such figures, or whose provenance lacks them, are left out."""
    out: dict[str, tuple[float, float]] = {}
    for name, entry in (profile.provenance.get("models") or {}).items():
        requests = entry.get("requests") if isinstance(entry, dict) else None
        if not isinstance(requests, list):
            if not (isinstance(entry, dict) and "resident_request" in entry):
                continue
            requests = [entry]  # a model calibrated from one request (`emu calibrate --runtime`)
        resident: list[float] = []
        bounds: list[float] = []
        for req in requests:
            if not isinstance(req, dict):
                continue
            step = median_step_s(req.get("resident_request"))
            if step is None:
                continue
            resident.append(step)
            small = median_step_s(req)
            if small is not None:
                bounds.append(small)
        if len(resident) + len(bounds) >= 2:
            out[str(name)] = (min(resident + bounds), max(resident))
    return out


def median_step_s(request: object) -> float | None:
    """The median of a calibration request's `decode_step_s` (its provenance, free-form: a dict), or None where
    that is not a non-empty list of finite positive seconds."""
    import math
    import statistics

    values = request.get("decode_step_s") if isinstance(request, dict) else None
    if isinstance(values, list) and values and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0 for v in values):
        return float(statistics.median(values))
    return None


def drift_fraction(span: tuple[float, float]) -> float:
    """slowest / fastest - 1 of a `host_drift` entry."""
    return span[1] / span[0] - 1.0


def host_drift_warning(profile: RuntimeProfile, tolerance: float = HOST_DRIFT_TOLERANCE,
                       models: Collection[str] | None = None) -> str | None:
    """A warning naming the models (of `models`, else any) whose calibration requests disagree by more than
    `tolerance`, else None."""
    drifted = {m: s for m, s in host_drift(profile).items()
               if drift_fraction(s) > tolerance and (models is None or m in models)}
    if not drifted:
        return None
    spans = "; ".join(f"{m} {lo * 1e3:.1f}-{hi * 1e3:.1f} ms (+{drift_fraction((lo, hi)):.0%})"
                      for m, (lo, hi) in sorted(drifted.items()))
    return (f"{profile.source or profile.name}: the runtime calibration's requests of a model disagree on the "
            f"host's pace (their median decode step with every expert resident, or less on a small cache) by more "
            f"than {tolerance:.0%} ({spans}): the host's pace changed during the calibration, and host-paced "
            "predictions made with it are no closer than that; calibrate again on a quiet host")
