"""Results: what a run measured, derived from the core's counters the same way for every engine."""

from __future__ import annotations

from typing import Any

import attrs
import numpy as np

from .kernel.layout import FC, SC, SF, ST
from .trace import PHASE_DECODE

_COUNTERS = {
    "accesses": ST.ACCESSES, "hits": ST.HITS, "late_prefetch_hits": ST.LATE_HITS,
    "misses_compulsory": ST.MISS_COMPULSORY, "misses_capacity": ST.MISS_CAPACITY,
    "misses_collision": ST.MISS_COLLISION, "dropped": ST.DROPPED, "substituted": ST.SUBSTITUTED,
    "degraded": ST.DEGRADED, "cpu_runs": ST.CPU_RUNS, "prefetch_issued": ST.PF_ISSUED,
    "prefetch_useful": ST.PF_USEFUL, "prefetch_dropped": ST.PF_DROPPED, "prefetch_wasted": ST.PF_WASTED,
    "bytes_h2d": ST.BYTES_H2D, "copies": ST.COPIES, "evictions": ST.EVICTIONS,
    "demand_waits": ST.DEMAND_WAITS,
}
_FLOATS = {
    "late_wait_s": SF.LATE_WAIT_S, "stall_s": SF.STALL_S, "dropped_mass": SF.DROPPED_MASS,
    "substituted_mass": SF.SUBSTITUTED_MASS, "degraded_mass": SF.DEGRADED_MASS, "mass": SF.MASS,
    "prefetch_wasted_bytes": SF.PF_WASTED_BYTES, "rerouted_mass": SF.REROUTED_MASS,
    "host_wait_s": SF.HOST_WAIT_S,
}


_DECODE = {"accesses": ST.DECODE_ACCESSES, "hits": ST.DECODE_HITS, "late_prefetch_hits": ST.DECODE_LATE_HITS,
           "misses": ST.DECODE_MISSES, "misses_collision": ST.DECODE_MISS_COLLISION}


def _on_time(c: dict[str, Any]) -> None:
    """The core counts a hit at the gate whether its copy has landed or is still in flight; `hits` are the
    on-time ones, the late ones stay apart in `late_prefetch_hits`."""
    c["hits"] -= c["late_prefetch_hits"]


def _ratios(c: dict[str, Any]) -> dict[str, float]:
    acc = c["accesses"]
    misses = c["misses_compulsory"] + c["misses_capacity"] + c["misses_collision"]
    issued = c["prefetch_issued"]
    late = c["late_prefetch_hits"]
    return {
        "misses": misses,
        "hit_rate": c["hits"] / acc if acc else 0.0,
        "collision_rate": c["misses_collision"] / acc if acc else 0.0,
        "late_wait_mean_s": c["late_wait_s"] / late if late else 0.0,
        "prefetch_precision": c["prefetch_useful"] / issued if issued else 0.0,
        "prefetch_recall": c["prefetch_useful"] / (c["prefetch_useful"] + misses)
        if c["prefetch_useful"] + misses else 0.0,
    }


def _by_phase(stats_i: np.ndarray, c: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Accesses, on-time and late hits, misses and collisions of the decode passes and of the prefill passes
    (the totals less the decode passes'), with their rates."""
    decode = {name: int(stats_i[idx].sum()) for name, idx in _DECODE.items()}
    _on_time(decode)
    prefill = {name: c[name] - decode[name] for name in _DECODE}
    out = {}
    for phase, d in (("prefill", prefill), ("decode", decode)):
        acc = d["accesses"]
        out[phase] = d | {"hit_rate": d["hits"] / acc if acc else 0.0,
                          "collision_rate": d["misses_collision"] / acc if acc else 0.0}
    return out


@attrs.frozen
class RunResult:
    """One scenario's numbers. `to_dict` is the JSON `emu run` writes."""

    ttft_s: float
    tpot_s: float
    decode_tok_per_s: float
    e2e_s: float
    counters: dict[str, Any]
    per_layer: list[dict[str, Any]]
    per_request_ttft_s: list[float]
    copy_busy_frac: float
    compute_busy_frac: float
    cpu_busy_frac: float
    engine: str
    timings: dict[str, float] = attrs.field(factory=dict)
    #: each request's decode rate: the tokens it decoded after its first over the time from its first token's
    #: pass end to its last pass's end (0 for a request with no decode pass)
    per_request_decode_tok_per_s: list[float] = attrs.field(factory=list)
    by_phase: dict[str, dict[str, Any]] = attrs.field(factory=dict)
    #: each decode pass's duration, in pass order (the per-step distribution a validation compares; not in
    #: the JSON record): float64, as a Python float per pass costs 32 bytes on a million-pass trace
    decode_step_s: np.ndarray = attrs.field(factory=lambda: np.zeros(0), eq=False, repr=False)

    @property
    def hit_rate(self) -> float:
        return float(self.counters["hit_rate"])

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "ttft_s": self.ttft_s, "tpot_s": self.tpot_s, "decode_tok_per_s": self.decode_tok_per_s,
            "e2e_s": self.e2e_s, "copy_busy_frac": self.copy_busy_frac,
            "compute_busy_frac": self.compute_busy_frac, "cpu_busy_frac": self.cpu_busy_frac,
        }
        out.update(self.counters)
        out["quality"] = {
            "dropped_mass": self.counters["dropped_mass"], "substituted_mass": self.counters["substituted_mass"],
            "degraded_mass": self.counters["degraded_mass"], "rerouted_mass": self.counters["rerouted_mass"],
            "lost_mass_frac": (self.counters["dropped_mass"] + self.counters["substituted_mass"]
                               + self.counters["rerouted_mass"]) / self.counters["mass"]
            if self.counters["mass"] else 0.0,
            "degraded_mass_frac": self.counters["degraded_mass"] / self.counters["mass"]
            if self.counters["mass"] else 0.0,
        }
        out["per_layer"] = self.per_layer
        out["by_phase"] = self.by_phase
        out["per_request_ttft_s"] = self.per_request_ttft_s
        out["per_request_decode_tok_per_s"] = self.per_request_decode_tok_per_s
        out["engine"] = self.engine
        out["timings"] = self.timings
        return out


def _counters(stats_i: np.ndarray, stats_f: np.ndarray) -> dict[str, Any]:
    c: dict[str, Any] = {name: int(stats_i[idx].sum()) for name, idx in _COUNTERS.items()}
    c.update({name: float(stats_f[idx].sum()) for name, idx in _FLOATS.items()})
    _on_time(c)
    c.update(_ratios(c))
    return c


def build_result(cs: Any, end_time: float, trace: Any, engine: str, timings: dict[str, float]) -> RunResult:
    per_layer = []
    # Python ints and floats of the whole tables at once (the values int() and float() give one by one): an
    # index into a numpy array per counter and layer cost more than the rest of the result
    stats_i, stats_f = cs.stats_i.tolist(), cs.stats_f.tolist()
    for layer in range(cs.stats_i.shape[1]):
        c: dict[str, Any] = {"layer": layer}
        c.update({name: stats_i[idx][layer] for name, idx in _COUNTERS.items()})
        c.update({name: stats_f[idx][layer] for name, idx in _FLOATS.items()})
        _on_time(c)
        c.update(_ratios(c))
        per_layer.append(c)
    counters = _counters(cs.stats_i, cs.stats_f)

    # Each request's first pass gives its first token; TTFT is that pass's duration. Tokens are stored pass by
    # pass, so a request's first pass is the one holding its first token (one search, not a scan per pass).
    starts, ends = cs.pass_start, cs.pass_end
    offsets = np.asarray(trace.pass_offsets)
    _requests, first_token, request_of = np.unique(trace.token_request, return_index=True,  # in request order
                                                   return_inverse=True)
    first_pass = np.searchsorted(offsets, first_token, side="right") - 1
    ttfts = (ends[first_pass] - starts[first_pass]).tolist()
    is_first = np.zeros(trace.n_passes, dtype=bool)
    is_first[first_pass] = True
    decode_passes = np.flatnonzero((np.asarray(trace.pass_phase) == PHASE_DECODE) & ~is_first)
    steps = ends[decode_passes] - starts[decode_passes]
    # one addition after another in pass order (accumulate, not sum's pairwise order): the figures as before
    decode_time = float(np.add.accumulate(steps)[-1]) if steps.size else 0.0
    decode_tokens = int(np.diff(offsets)[decode_passes].sum())
    per_request_rate = _per_request_decode_rate(trace, offsets, request_of, first_pass, ends)
    tpot = decode_time / steps.size if steps.size else 0.0
    e2e = float(end_time)
    return RunResult(
        ttft_s=float(np.mean(ttfts)) if ttfts else 0.0, tpot_s=tpot,
        decode_tok_per_s=decode_tokens / decode_time if decode_time > 0 else 0.0, e2e_s=e2e,
        counters=counters, per_layer=per_layer, per_request_ttft_s=ttfts,
        copy_busy_frac=min(float(cs.fc[FC.COPY_BUSY]) / (e2e * max(int(cs.sc[SC.N_ENGINES]), 1)), 1.0)
        if e2e > 0 else 0.0,
        compute_busy_frac=float(cs.fc[FC.GPU_BUSY]) / e2e if e2e > 0 else 0.0,
        cpu_busy_frac=float(cs.fc[FC.CPU_BUSY]) / e2e if e2e > 0 else 0.0,
        engine=engine, timings=timings, decode_step_s=steps, per_request_decode_tok_per_s=per_request_rate,
        by_phase=_by_phase(cs.stats_i, counters))


#: tokens per block of `_per_request_decode_rate`
_TOKEN_BLOCK = 1 << 16


def _per_request_decode_rate(trace: Any, offsets: np.ndarray, inverse: np.ndarray, first_pass: np.ndarray,
                              ends: np.ndarray) -> list[float]:
    """Per request (in request order; `inverse`: each token's request's index in it): its tokens in decode passes
    after its first pass, over the time from that first pass's end to its last pass's end."""
    last_pass = np.zeros(first_pass.size, dtype=np.int64)
    tokens = np.zeros(first_pass.size, dtype=np.int64)
    phase = np.asarray(trace.pass_phase)
    # tokens a block at a time: arrays per token of a whole 1M-token trace would add tens of MB to the run's peak
    for lo in range(0, inverse.size, _TOKEN_BLOCK):
        request = inverse[lo:lo + _TOKEN_BLOCK]
        # each token's pass (tokens are stored pass by pass; an empty pass holds none)
        pass_of = np.searchsorted(offsets, np.arange(lo, lo + request.size), side="right") - 1
        np.maximum.at(last_pass, request, pass_of)
        later = (phase[pass_of] == PHASE_DECODE) & (pass_of != first_pass[request])
        tokens += np.bincount(request[later], minlength=first_pass.size)
    span = ends[last_pass] - ends[first_pass]
    return [float(n / s) if n and s > 0 else 0.0 for n, s in zip(tokens.tolist(), span.tolist())]
