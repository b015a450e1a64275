"""The concentration gate: is a per-expert VRAM cache worth building for this model and workload?

A cache of hot experts pays off only if a small share of each layer's experts carries most of its routing
mass. The gate measures that per layer from selection counts and gives a one-word verdict. Definitions
(docs/concentration.md has the reasoning): with p the layer's selection shares over its E experts,
- hot_frac_for_coverage = n / E, n the smallest number of experts, hottest first, whose shares sum to at
  least `coverage` (default 0.9);
- concentration_score = 1 - H(p) / ln(E), H the natural-log entropy (0 log 0 = 0): 0 uniform, 1 one expert;
- top_share = the hottest expert's share.
Verdict from the median hot_frac over layers: "yes" below 0.25, "barely" below 0.5, else "no".
"""

from __future__ import annotations

import json
import math
import textwrap
from pathlib import Path
from typing import Any

import attrs
import numpy as np

from ..errors import EmuError
from .concentration_cli import DEFAULT_COVERAGE  # the parser shows it; defined where building it needs no numpy
from .expert_counts import CountsTable, counts_table, load_counts_json, load_imatrix_counts

YES_BELOW = 0.25
BARELY_BELOW = 0.5
# Relative slack when comparing a cumulative share with the coverage target, so that e.g. counts
# [90, 5, 5] reach 0.9 with one expert despite binary rounding of 0.9 * 100.
_REL_TOL = 1e-12

CAVEAT = (
    "Workload caveat: these counts describe one workload. Which experts are hot shifts with domain, "
    "language and prompt mix, so a cache sized from them can miss on other traffic; gather counts from "
    "the traffic you will serve. The gate sees only aggregate popularity, not temporal reuse: a 'no' here "
    "does not rule out a cache that exploits bursty routing (look at working sets on a routing trace)."
)


@attrs.frozen
class LayerConcentration:
    """How concentrated one MoE layer's routing is."""

    layer: int
    n_experts: int
    selections: float  # routing mass: sum of the layer's counts
    hot_n: int  # experts, hottest first, needed to reach the coverage
    hot_frac: float  # hot_frac_for_coverage = hot_n / n_experts
    concentration_score: float
    top_share: float
    top_expert: int
    hot_experts: tuple[int, ...]  # the hot_n hottest experts, hottest first (ties: lower id first)

    def to_dict(self) -> dict[str, Any]:
        return {
            "layer": self.layer,
            "n_experts": self.n_experts,
            "selections": self.selections,
            "hot_n": self.hot_n,
            "hot_frac_for_coverage": self.hot_frac,
            "concentration_score": self.concentration_score,
            "top_share": self.top_share,
            "top_expert": self.top_expert,
            "hot_experts": list(self.hot_experts),
        }


@attrs.frozen
class ConcentrationReport:
    """The gate's answer for one set of counts."""

    source: str
    model: str | None
    workload: str | None
    n_experts: int
    top_k: int | None
    coverage: float
    layers: tuple[LayerConcentration, ...]
    median_hot_frac: float
    cache_helps: str  # "yes" | "barely" | "no"
    #: hot_frac if every token went to the same top_k experts: the best any top-k model can do
    hot_frac_floor: float | None
    #: hot_frac of perfectly uniform routing: the worst case
    hot_frac_uniform: float
    caveat: str = CAVEAT

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "model": self.model,
            "workload": self.workload,
            "n_experts": self.n_experts,
            "top_k": self.top_k,
            "coverage": self.coverage,
            "layers": [layer.to_dict() for layer in self.layers],
            "median_hot_frac": self.median_hot_frac,
            "cache_helps": self.cache_helps,
            "hot_frac_floor": self.hot_frac_floor,
            "hot_frac_uniform": self.hot_frac_uniform,
            "caveat": self.caveat,
        }


def check_coverage(coverage: Any) -> float:
    ok = isinstance(coverage, (int, float)) and not isinstance(coverage, bool) and 0.0 < coverage <= 1.0
    if not ok:
        raise EmuError(f"expected a fraction in (0, 1], got {coverage!r}", key="coverage")
    return float(coverage)


def layer_concentration(
    counts: Any, layer: int = 0, coverage: float = DEFAULT_COVERAGE
) -> LayerConcentration:
    """Gate metrics of one layer from its per-expert counts (non-negative, positive sum, E >= 2)."""
    coverage = check_coverage(coverage)
    c = np.asarray(counts, dtype=np.float64)
    if c.ndim != 1 or c.size < 2 or not np.all(np.isfinite(c)) or np.any(c < 0) or c.sum() <= 0:
        raise EmuError("expected >= 2 finite non-negative counts with a positive sum", key=f"layer {layer}")
    n_experts = int(c.size)
    total = float(c.sum())
    order = np.argsort(-c, kind="stable")
    cumulative = np.cumsum(c[order])
    hot_n = int(np.searchsorted(cumulative, coverage * total * (1.0 - _REL_TOL), side="left")) + 1
    hot_n = min(hot_n, n_experts)
    p = c / total
    nz = p[p > 0]
    entropy = float(-(nz * np.log(nz)).sum())
    score = min(1.0, max(0.0, 1.0 - entropy / math.log(n_experts)))
    return LayerConcentration(
        layer=int(layer),
        n_experts=n_experts,
        selections=total,
        hot_n=hot_n,
        hot_frac=hot_n / n_experts,
        concentration_score=score,
        top_share=float(p[order[0]]),
        top_expert=int(order[0]),
        hot_experts=tuple(int(e) for e in order[:hot_n]),
    )


def verdict(median_hot_frac: float) -> str:
    if median_hot_frac < YES_BELOW:
        return "yes"
    if median_hot_frac < BARELY_BELOW:
        return "barely"
    return "no"


def gate(table: CountsTable, coverage: float = DEFAULT_COVERAGE) -> ConcentrationReport:
    """Run the gate on validated counts."""
    coverage = check_coverage(coverage)
    rows = zip(table.layers, table.counts, strict=True)
    layers = tuple(layer_concentration(row, layer, coverage) for layer, row in rows)
    median = float(np.median([lc.hot_frac for lc in layers]))
    n_experts = table.n_experts
    floor = None if table.top_k is None else _min_experts(coverage, table.top_k) / n_experts
    return ConcentrationReport(
        source=table.source,
        model=table.model,
        workload=table.workload,
        n_experts=n_experts,
        top_k=table.top_k,
        coverage=coverage,
        layers=layers,
        median_hot_frac=median,
        cache_helps=verdict(median),
        hot_frac_floor=floor,
        hot_frac_uniform=_min_experts(coverage, n_experts) / n_experts,
    )


def _min_experts(coverage: float, n: int) -> int:
    """Smallest m with m / n >= coverage (with the same slack as the per-layer test)."""
    return max(1, math.ceil(coverage * n * (1.0 - _REL_TOL)))


def gate_from_counts(
    counts: Any,
    layers: Any = None,
    top_k: int | None = None,
    coverage: float = DEFAULT_COVERAGE,
    *,
    source: str = "<counts array>",
    model: str | None = None,
    workload: str | None = None,
) -> ConcentrationReport:
    """Gate from an L×E array of counts, e.g. a routing trace's per-layer expert counts."""
    table = counts_table(counts, layers, top_k, source=source, model=model, workload=workload)
    return gate(table, coverage)


def gate_from_counts_json(path: str | Path, coverage: float = DEFAULT_COVERAGE) -> ConcentrationReport:
    return gate(load_counts_json(path), coverage)


def gate_from_imatrix(path: str | Path, coverage: float = DEFAULT_COVERAGE) -> ConcentrationReport:
    return gate(load_imatrix_counts(path), coverage)


def gate_from_trace(path: str | Path, coverage: float = DEFAULT_COVERAGE) -> ConcentrationReport:
    """Gate from a routing trace (.npz) through emu.trace.RoutingTrace."""
    try:
        from ..trace import RoutingTrace
    except ImportError as exc:
        raise EmuError(f"routing traces cannot be read in this build ({exc})", file=str(path)) from None
    trace = RoutingTrace.load(path)
    # layers are the trace's MoE layer indices 0..L-1; top_k lets the reader check the counts' invariant
    return gate_from_counts(trace.expert_counts(), None, trace.top_k, coverage, source=str(path),
                            model=trace.model or None)


def render_table(report: ConcentrationReport, fmt: str = "plain") -> str:
    """The gate's per-layer table in `fmt` (`emu.tables`: "plain", or "rich" for a terminal), followed by the
    verdict and the caveat."""
    from ..tables import Column, table_text

    head = [f"concentration gate: {report.source}"]
    facts = []
    if report.model:
        facts.append(f"model {report.model}")
    if report.workload:
        facts.append(f"workload {report.workload}")
    facts.append(f"{len(report.layers)} MoE layers x {report.n_experts} experts")
    facts.append(f"top_k {report.top_k}" if report.top_k is not None else "top_k unknown")
    facts.append(f"coverage {report.coverage:g}")
    head.append("  " + ", ".join(facts))

    columns = ("layer", "hot_n", "hot_frac", "concentration", "top_share", "top_expert")
    rows = [
        (str(lc.layer), str(lc.hot_n), f"{lc.hot_frac:.3f}", f"{lc.concentration_score:.3f}",
         f"{lc.top_share:.3f}", str(lc.top_expert))
        for lc in report.layers
    ]
    lines = ["", table_text([Column(c) for c in columns], rows, fmt, rule=False)]

    reference = f"uniform routing {report.hot_frac_uniform:.3f}"
    if report.hot_frac_floor is not None:
        reference = f"best possible with top_k {report.top_k}: {report.hot_frac_floor:.3f}, " + reference
    tail = [
        "",
        f"median hot_frac: {report.median_hot_frac:.3f}  ({reference})",
        f"cache_helps: {report.cache_helps}  (yes if median < {YES_BELOW:g}, barely if < {BARELY_BELOW:g}, "
        "else no)",
        *textwrap.wrap(report.caveat, width=100),
    ]
    return "\n".join(head + lines + tail)


def render_json(report: ConcentrationReport) -> str:
    return json.dumps(report.to_dict(), indent=2)
