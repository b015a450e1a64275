"""Working sets and knees: how many slots each layer needs before its expert cache stops thrashing.

Definitions (docs/analysis.md has the reasoning):
- working set of layer l at pass p over a window of W passes: the distinct experts layer l used in passes
  p-W+1..p. Stats (mean, p90, max) are over the passes whose window is full (all passes form one window
  when the trace has fewer than W).
- hit-rate curve h_l(c), c = 1..E: an isolated LRU cache of c slots per layer, fed each pass's distinct
  experts of layer l in order of first appearance (token order, then top-k slot). LRU is a stack
  algorithm, so one pass of Mattson's stack-distance kernel gives the exact LRU hit rate at every c.
  No timing, prefetch or cross-layer sharing: a cheap lower bound on what a per-layer LRU sees.
- stable point: the smallest c with h(c) >= h(E) - STABLE_TOL; the stable region is [stable, E].
- knee (Kneedle, Satopaa et al. 2011): with x = (c - 1) / (E - 1) and y = (h(c) - h(1)) / (h(E) - h(1)),
  the c that maximises y - x (last on ties, so a curve on or below its chord, e.g. a cliff at the end,
  has its knee at the top of the cliff); 1 when the curve is flat.
- thrash zone: capacities c < top_k (a pass's own experts evict each other) or with
  h(c) < THRASH_FRAC * h(knee). h is non-decreasing, so the zone is a prefix 1..thrash_point
  (thrash_point = 0: no zone).
- recommended target: max(top_k, ceil(p90 working set)) + 1, the adaptive partition's floor with the
  p90 in place of the online value.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import attrs
import numba
import numpy as np

from ..errors import EmuError
from ..trace import RoutingTrace
from .workingset_cli import DEFAULT_WINDOW  # the parser shows it; defined where building it needs no numpy

STABLE_TOL = 0.02
THRASH_FRAC = 0.5


# ---- kernels -------------------------------------------------------------------------------------

@numba.njit(cache=True)
def _working_sets(experts: np.ndarray, pass_offsets: np.ndarray, n_exp: int, window: int) -> np.ndarray:
    """ws[l, p] = distinct experts of layer l in passes max(0, p-window+1)..p (sliding counts per expert)."""
    n_layers = experts.shape[1]
    top_k = experts.shape[2]
    n_pass = pass_offsets.shape[0] - 1
    ws = np.zeros((n_layers, n_pass), np.int64)
    for layer in range(n_layers):
        in_window = np.zeros(n_exp, np.int64)  # passes in the window that used e
        stamp = np.full(n_exp, -1, np.int64)  # last pass marked, so a pass counts each expert once
        drop_stamp = np.full(n_exp, -1, np.int64)
        live = 0
        for p in range(n_pass):
            for t in range(pass_offsets[p], pass_offsets[p + 1]):
                for k in range(top_k):
                    e = experts[t, layer, k]
                    if stamp[e] != p:
                        stamp[e] = p
                        if in_window[e] == 0:
                            live += 1
                        in_window[e] += 1
            old = p - window
            if old >= 0:
                for t in range(pass_offsets[old], pass_offsets[old + 1]):
                    for k in range(top_k):
                        e = experts[t, layer, k]
                        if drop_stamp[e] != old:
                            drop_stamp[e] = old
                            in_window[e] -= 1
                            if in_window[e] == 0:
                                live -= 1
            ws[layer, p] = live
    return ws


@numba.njit(cache=True)
def _stack_distances(experts: np.ndarray, pass_offsets: np.ndarray, n_exp: int) -> tuple[np.ndarray, np.ndarray]:
    """hist[l, d] = accesses of layer l at LRU stack depth d (1-based; hit iff d <= slots), cold[l] first uses.

    Accesses are each pass's distinct experts in order of first appearance; the stack is move-to-front."""
    n_layers = experts.shape[1]
    top_k = experts.shape[2]
    n_pass = pass_offsets.shape[0] - 1
    hist = np.zeros((n_layers, n_exp + 1), np.int64)
    cold = np.zeros(n_layers, np.int64)
    for layer in range(n_layers):
        stack = np.empty(n_exp, np.int64)
        depth = 0
        stamp = np.full(n_exp, -1, np.int64)
        for p in range(n_pass):
            for t in range(pass_offsets[p], pass_offsets[p + 1]):
                for k in range(top_k):
                    e = experts[t, layer, k]
                    if stamp[e] == p:
                        continue
                    stamp[e] = p
                    pos = -1
                    for i in range(depth):
                        if stack[i] == e:
                            pos = i
                            break
                    if pos < 0:
                        cold[layer] += 1
                        pos = depth
                        depth += 1
                    else:
                        hist[layer, pos + 1] += 1
                    for i in range(pos, 0, -1):
                        stack[i] = stack[i - 1]
                    stack[0] = e
    return hist, cold


# ---- curve features ------------------------------------------------------------------------------

@attrs.frozen
class CurveFeatures:
    """Where a hit-rate curve h(1..E) stops paying: stable point, knee and thrash point (1-based slots)."""

    stable: int
    knee: int
    thrash_point: int


def knee_point(hit: np.ndarray, slots: np.ndarray | None = None) -> int:
    """Kneedle knee of a non-decreasing curve hit[i] at slots[i] (default 1..n), as a 1-based index:
    argmax of normalised y - x, last on ties (convex curves: the cliff top, not the first point)."""
    hit = np.asarray(hit, dtype=np.float64)
    n = hit.size
    if n == 0:
        raise EmuError("empty hit-rate curve", key="hit")
    span = hit[-1] - hit[0]
    xs = np.arange(1.0, n + 1) if slots is None else np.asarray(slots, dtype=np.float64)
    if n == 1 or span <= 0 or xs[-1] <= xs[0]:
        return 1
    x = (xs - xs[0]) / (xs[-1] - xs[0])
    y = (hit - hit[0]) / span
    diff = y - x
    return int(np.flatnonzero(diff >= diff.max() - 1e-12)[-1]) + 1


def curve_features(hit: np.ndarray, top_k: int) -> CurveFeatures:
    hit = np.asarray(hit, dtype=np.float64)
    stable = int(np.argmax(hit >= hit[-1] - STABLE_TOL)) + 1
    knee = knee_point(hit)
    slots = np.arange(1, hit.size + 1)
    thrash = (slots < top_k) | (hit < THRASH_FRAC * hit[knee - 1])
    # h is non-decreasing, so the zone is a prefix; count its length defensively as the first False
    thrash_point = int(np.argmin(thrash)) if not thrash.all() else int(hit.size)
    return CurveFeatures(stable=stable, knee=knee, thrash_point=thrash_point)


# ---- report --------------------------------------------------------------------------------------

@attrs.frozen
class LayerWorkingSet:
    layer: int
    ws_mean: float
    ws_p90: float
    ws_max: int
    accesses: int
    cold_misses: int
    hit_rate: tuple[float, ...]  # h(c) for c = 1..E
    features: CurveFeatures
    target: int

    def to_dict(self) -> dict[str, Any]:
        return {"layer": self.layer, "ws_mean": self.ws_mean, "ws_p90": self.ws_p90, "ws_max": self.ws_max,
                "accesses": self.accesses, "cold_misses": self.cold_misses,
                "stable": self.features.stable, "knee": self.features.knee,
                "thrash_point": self.features.thrash_point, "target": self.target,
                "hit_at_target": self.hit_at(self.target), "hit_rate": list(self.hit_rate)}

    def hit_at(self, slots: int) -> float:
        if slots < 1:
            return 0.0
        return self.hit_rate[min(slots, len(self.hit_rate)) - 1]


@attrs.frozen
class CapacityCheck:
    """One capacity the user asked about, as slots per layer, and the layers in their thrash zone there."""

    spec: str
    slots_per_layer: int
    thrashing: tuple[int, ...]
    below_target: tuple[int, ...]
    hit_rate: float  # access-weighted mean over layers of h_l(slots)

    def to_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)


@attrs.frozen
class WorkingSetReport:
    source: str
    model: str
    n_experts: int
    top_k: int
    n_passes: int
    window: int
    layers: tuple[LayerWorkingSet, ...]
    capacities: tuple[CapacityCheck, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "model": self.model, "n_experts": self.n_experts, "top_k": self.top_k,
                "n_passes": self.n_passes, "window": self.window,
                "definitions": {"stable_tol": STABLE_TOL, "thrash_frac": THRASH_FRAC,
                                "cache": "isolated per-layer LRU over per-pass distinct experts"},
                "layers": [layer.to_dict() for layer in self.layers],
                "capacities": [c.to_dict() for c in self.capacities]}


def analyze(trace: RoutingTrace, window: int = DEFAULT_WINDOW, source: str = "") -> WorkingSetReport:
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise EmuError(f"expected a positive number of passes, got {window!r}", file=source or None, key="--window")
    if trace.n_tokens == 0:
        raise EmuError("trace has no tokens", file=source or None, key="experts")
    n_exp = max(trace.n_experts, int(trace.experts.max()) + 1)
    experts = np.ascontiguousarray(trace.experts)
    offsets = np.ascontiguousarray(trace.pass_offsets, dtype=np.int64)
    ws = _working_sets(experts, offsets, n_exp, window)
    hist, cold = _stack_distances(experts, offsets, n_exp)
    full = slice(window - 1, None) if trace.n_passes >= window else slice(trace.n_passes - 1, None)
    layers = []
    for layer in range(trace.n_layers):
        sample = ws[layer, full]
        accesses = int(hist[layer].sum() + cold[layer])
        hit = np.cumsum(hist[layer, 1:]) / accesses
        p90 = float(np.percentile(sample, 90))
        target = min(max(trace.top_k, math.ceil(p90)) + 1, n_exp)
        layers.append(LayerWorkingSet(
            layer=layer, ws_mean=float(sample.mean()), ws_p90=p90, ws_max=int(sample.max()), accesses=accesses,
            cold_misses=int(cold[layer]), hit_rate=tuple(float(v) for v in hit),
            features=curve_features(hit, trace.top_k), target=target))
    return WorkingSetReport(source=source, model=trace.model, n_experts=n_exp, top_k=trace.top_k,
                            n_passes=trace.n_passes, window=window, layers=tuple(layers))


# ---- capacities ----------------------------------------------------------------------------------

_TOTAL = re.compile(r"^\s*total\s*[=:]\s*(\d+)\s*$", re.IGNORECASE)


def _count(digits: str, spec: str, key: str) -> int:
    """A slot count; one too long for Python's int() (over 4300 digits) is a count no model has."""
    if len(digits.lstrip("0")) > 18:
        raise EmuError(f"expected a slot count below 10**18, got {spec[:40]!r}"
                       + ("..." if len(spec) > 40 else ""), key=key)
    return int(digits)


def slots_per_layer(spec: str, n_layers: int, n_experts: int, expert_bytes: int | None = None) -> int:
    """`8` (slots per layer), `25%` (of all experts), `total=512` (slots) or `0.6GB` (needs expert_bytes);
    a total is split evenly over layers, rounded down."""
    text = spec.strip()
    key = "--capacity"
    if re.fullmatch(r"\d+", text):
        per_layer = _count(text, spec, key)
    elif text.endswith("%"):
        try:
            pct = float(text[:-1])
        except ValueError:
            raise EmuError(f"expected a percentage like 25%, got {spec!r}", key=key) from None
        if not 0 < pct <= 100:
            raise EmuError(f"expected a percentage in (0, 100], got {spec!r}", key=key)
        per_layer = int(n_experts * pct / 100.0 + 1e-9)
    elif m := _TOTAL.match(text):
        per_layer = _count(m.group(1), spec, key) // n_layers
    else:
        from ..scenario import parse_size  # one reading of sizes: GB = 1e9 bytes, GiB = 2**30

        nbytes = parse_size(text)
        if nbytes is None:
            raise EmuError(f"expected slots per layer (8), a percentage (25%), total=N slots or a size (0.6GB), "
                           f"got {spec!r}", key=key)
        if expert_bytes is None:
            raise EmuError(f"a size needs the model's expert bytes: pass --model (got {spec!r})", key=key)
        if not math.isfinite(nbytes):
            raise EmuError(f"expected a finite size, got {spec!r}", key=key)
        per_layer = int(nbytes // expert_bytes) // n_layers
    if per_layer < 1:
        raise EmuError(f"{spec!r} gives {per_layer} slots per layer over {n_layers} layers; need at least 1",
                       key=key)
    return min(per_layer, n_experts)


def check_capacity(report: WorkingSetReport, spec: str, slots: int) -> CapacityCheck:
    thrashing = tuple(ly.layer for ly in report.layers if slots <= ly.features.thrash_point)
    below = tuple(ly.layer for ly in report.layers if slots < ly.target)
    total = sum(ly.accesses for ly in report.layers)
    hit = sum(ly.hit_at(slots) * ly.accesses for ly in report.layers) / total if total else 0.0
    return CapacityCheck(spec=spec, slots_per_layer=slots, thrashing=thrashing, below_target=below, hit_rate=hit)


# ---- output --------------------------------------------------------------------------------------

def _layers_text(layers: tuple[int, ...]) -> str:
    """Runs as ranges: (0, 1, 2, 5) -> "0-2, 5"."""
    if not layers:
        return "none"
    runs: list[list[int]] = []
    for v in layers:
        if runs and v == runs[-1][1] + 1:
            runs[-1][1] = v
        else:
            runs.append([v, v])
    return ", ".join(f"{a}-{b}" if b > a else str(a) for a, b in runs)


def render_table(report: WorkingSetReport, fmt: str = "plain") -> str:
    """The report as text, its per-layer table in `fmt` (`emu.tables`: "plain", or "rich" for a terminal)."""
    from ..tables import Column, table_text

    lines = [f"{report.source or 'trace'}: {report.model or 'model ?'}, {report.n_experts} experts, "
             f"top-{report.top_k}, {report.n_passes:,} passes, window {report.window} passes",
             "per-layer isolated LRU over per-pass distinct experts (no timing, no prefetch)", ""]
    columns = [Column(h) for h in ("layer", "ws mean", "ws p90", "ws max", "knee", "h@knee", "stable", "thrash<=",
                                   "target", "h@target", "h@E")]
    rows = []
    for ly in report.layers:
        f = ly.features
        rows.append([str(ly.layer), f"{ly.ws_mean:.2f}", f"{ly.ws_p90:.1f}", str(ly.ws_max), str(f.knee),
                     f"{ly.hit_at(f.knee):.3f}", str(f.stable), str(f.thrash_point), str(ly.target),
                     f"{ly.hit_at(ly.target):.3f}", f"{ly.hit_rate[-1]:.3f}"])
    lines.append(table_text(columns, rows, fmt))
    lines.append("")
    lines.append(f"targets max(TopK, ceil(p90 ws)) + 1 sum to {sum(ly.target for ly in report.layers)} slots "
                 f"({sum(ly.target for ly in report.layers) / (report.n_experts * len(report.layers)):.1%} "
                 "of all experts)")
    for c in report.capacities:
        lines.append(f"capacity {c.spec} = {c.slots_per_layer} slots/layer: hit rate {c.hit_rate:.3f}; "
                     f"thrash zone: {_layers_text(c.thrashing)}; below target: {_layers_text(c.below_target)}")
    return "\n".join(lines)


def render_json(report: WorkingSetReport) -> str:
    return json.dumps(report.to_dict(), indent=2)
