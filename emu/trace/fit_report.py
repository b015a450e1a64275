"""How close a fitted generator is to the real trace: the measures a cache cares about, real vs synthetic.

For `seeds` generated traces of the fitted parameters, each as long as the real one (seeds 0..seeds-1):
- popularity: per layer, the total variation distance between the real and generated selection shares
  sorted by rank (expert ids are arbitrary labels, so the ranked shares are what a generator can match);
- reuse distances: the two-sample Kolmogorov-Smirnov statistic between the real and generated reuse-gap
  distributions (passes between accesses of a layer's expert, every layer pooled: `emu trace audit`'s);
- miss ratios of LRU and Belady (OPT) per-layer caches at the stated capacities, pooled over layers, and
  the previous-layer map ceiling (cross-layer structure), real vs generated (mean and range over seeds).
The same popularity and KS measures between generated traces of consecutive seeds give the noise floor:
what two samples of the generator itself differ by at this length. The family floor of popularity is the
best any single Zipf exponent per layer reaches (each layer's smallest TV over a grid of exponents
0, 0.2, ..., 4 with the fitted reuse and cross-layer parameters, 2 seeds): a fitted TV near it and far
above the noise floor means the Zipf family, not the fit, is what cannot match.
"""

from __future__ import annotations

from typing import Any

import attrs
import numpy as np

from .audit import AuditReport, audit, default_slots
from .fit import FitResult
from .keystream import n_experts_of
from .routing_trace import RoutingTrace
from .synthetic import generate

#: Zipf exponents tried for the family floor of popularity
ZIPF_GRID = np.round(np.arange(0.0, 4.0001, 0.2), 1)


def ks_statistic(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov D = sup_x |F_a(x) - F_b(x)| of the empirical CDFs (1.0 if one is empty
    and the other not)."""
    if a.size == 0 or b.size == 0:
        return 0.0 if a.size == b.size else 1.0
    a, b = np.sort(a), np.sort(b)
    xs = np.concatenate([a, b])
    fa = np.searchsorted(a, xs, side="right") / a.size
    fb = np.searchsorted(b, xs, side="right") / b.size
    return float(np.max(np.abs(fa - fb)))


def ranked_shares(trace: RoutingTrace, n_exp: int) -> np.ndarray:
    """[layers, n_exp]: each layer's selection shares, largest first."""
    counts = trace.expert_counts()[:, :n_exp].astype(np.float64)
    if counts.shape[1] < n_exp:
        counts = np.pad(counts, ((0, 0), (0, n_exp - counts.shape[1])))
    shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1.0)
    return -np.sort(-shares, axis=1)


def popularity_tv(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per layer: total variation distance between two ranked-share tables."""
    return 0.5 * np.abs(a - b).sum(axis=1)


@attrs.frozen
class FitQuality:
    source: str
    tokens: int
    seeds: int
    slots: tuple[int, ...]
    pop_tv_mean: float  # mean over layers and seeds
    pop_tv_max: float  # worst layer, mean over seeds
    pop_tv_floor: float  # between consecutive seeds, mean over layers
    pop_tv_family: float  # the best per-layer Zipf exponent on a grid, mean over layers
    reuse_ks: float  # mean over seeds
    reuse_ks_floor: float
    reuse_rate: tuple[float, float]  # real, generated (mean over seeds): inspect's reuse rate
    top_share: tuple[float, float]
    partner_excess: tuple[float, float]
    layer_map: tuple[float, float]  # the previous-layer map ceiling
    lru_real: tuple[float, ...]  # miss ratio at each slot count
    lru_syn: tuple[float, ...]
    lru_syn_range: tuple[tuple[float, float], ...]
    opt_real: tuple[float, ...]
    opt_syn: tuple[float, ...]
    opt_syn_range: tuple[tuple[float, float], ...]

    def to_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)

    def worst_curve_gap(self) -> float:
        """Largest |real - generated mean| over the LRU and OPT points, in miss-ratio units."""
        return float(max(np.max(np.abs(np.subtract(self.lru_real, self.lru_syn))),
                         np.max(np.abs(np.subtract(self.opt_real, self.opt_syn)))))


def _pooled(report: AuditReport, key: str, slots: list[int]) -> list[float]:
    total = max(int(report.curves["accesses"].sum()), 1)
    return [float(report.curves[key][:, c - 1].sum() / total) for c in slots]


def _mean_reuse(report: AuditReport) -> float:
    return float(np.mean([x.repeat for x in report.layers]))


def quality(real: RoutingTrace, result: FitResult, *, seeds: int = 5, slots: list[int] | None = None,
            source: str = "") -> FitQuality:
    model = result.model
    assert model is not None, "a FitResult from fit() names its model"
    if real.n_tokens > result.tokens:
        real = real.slice_tokens(result.tokens)
    n_exp = max(n_experts_of(real), model.n_experts)
    caps = sorted(set(slots)) if slots else default_slots(n_exp, real.top_k)
    rep_real = audit(real, slots=caps, source=source)
    shares_real = ranked_shares(real, n_exp)
    synth = [generate(model, attrs.evolve(result.params, seed=s), real.n_tokens) for s in range(seeds)]
    reps = [audit(t, slots=caps) for t in synth]
    shares = [ranked_shares(t, n_exp) for t in synth]
    tv = np.array([popularity_tv(shares_real, s) for s in shares])  # [seeds, layers]
    ks = [ks_statistic(rep_real.gaps, r.gaps) for r in reps]
    floor_tv = [float(popularity_tv(shares[i], shares[i + 1]).mean()) for i in range(seeds - 1)]
    floor_ks = [ks_statistic(reps[i].gaps, reps[i + 1].gaps) for i in range(seeds - 1)]
    grid = []
    for z in ZIPF_GRID:
        params = attrs.evolve(result.params, zipf_s=(float(z),) * real.n_layers)
        grid.append(np.mean([popularity_tv(shares_real, ranked_shares(generate(model, attrs.evolve(params, seed=s),
                                                                              real.n_tokens), n_exp))
                             for s in range(2)], axis=0))
    lru = np.array([_pooled(r, "lru", caps) for r in reps])
    opt = np.array([_pooled(r, "opt", caps) for r in reps])

    def pair(real_value: float, values: list[float]) -> tuple[float, float]:
        return float(real_value), float(np.mean(values))

    return FitQuality(
        source=source, tokens=real.n_tokens, seeds=seeds, slots=tuple(caps),
        pop_tv_mean=float(tv.mean()), pop_tv_max=float(tv.mean(axis=0).max()),
        pop_tv_floor=float(np.mean(floor_tv)) if floor_tv else float("nan"),
        pop_tv_family=float(np.min(grid, axis=0).mean()),
        reuse_ks=float(np.mean(ks)), reuse_ks_floor=float(np.mean(floor_ks)) if floor_ks else float("nan"),
        reuse_rate=pair(_mean_reuse(rep_real), [_mean_reuse(r) for r in reps]),
        top_share=pair(float(np.mean(result.target.top_share)),
                       [float(np.mean([x.top_share for x in r.layers])) for r in reps]),
        partner_excess=pair(rep_real.partner_excess, [r.partner_excess for r in reps]),
        layer_map=pair(_ceiling(rep_real), [_ceiling(r) for r in reps]),
        lru_real=tuple(_pooled(rep_real, "lru", caps)), lru_syn=tuple(float(v) for v in lru.mean(axis=0)),
        lru_syn_range=tuple((float(lo), float(hi)) for lo, hi in zip(lru.min(axis=0), lru.max(axis=0), strict=True)),
        opt_real=tuple(_pooled(rep_real, "opt", caps)), opt_syn=tuple(float(v) for v in opt.mean(axis=0)),
        opt_syn_range=tuple((float(lo), float(hi)) for lo, hi in zip(opt.min(axis=0), opt.max(axis=0), strict=True)))


def _ceiling(report: AuditReport) -> float:
    value = report.ceilings.get("previous-layer map (in-sample)")
    return float("nan") if value is None else float(value)


def _pct(v: float) -> str:
    return f"{100 * v:.1f}"


def render(q: FitQuality, *, markdown: bool = False, fmt: str = "plain") -> str:
    """The fit's quality tables in `fmt` (as `emu.trace.audit.render` takes it), Markdown with `markdown`."""
    from .audit import _table

    fmt = "markdown" if markdown else fmt

    lines = [f"fit quality over {q.seeds} generated traces of {q.tokens:,} tokens (seeds 0..{q.seeds - 1}); "
             "floor: between generated traces of consecutive seeds", ""]
    lines += _table(["measure", "real", "generated", "floor"], [
        ["popularity TV per layer (mean / worst)", "-", f"{q.pop_tv_mean:.3f} / {q.pop_tv_max:.3f}",
         f"{q.pop_tv_floor:.3f}"],
        ["popularity TV, best Zipf per layer (family floor)", "-", f"{q.pop_tv_family:.3f}", "-"],
        ["reuse-distance KS", "-", f"{q.reuse_ks:.3f}", f"{q.reuse_ks_floor:.3f}"],
        ["reuse rate", f"{q.reuse_rate[0]:.3f}", f"{q.reuse_rate[1]:.3f}", "-"],
        ["top-expert share", f"{q.top_share[0]:.3f}", f"{q.top_share[1]:.3f}", "-"],
        ["partner excess (adjacent layers)", f"{q.partner_excess[0]:.3f}", f"{q.partner_excess[1]:.3f}", "-"],
        ["previous-layer map ceiling", f"{q.layer_map[0]:.3f}", f"{q.layer_map[1]:.3f}", "-"],
    ], fmt)
    lines += [""]
    rows = []
    for i, c in enumerate(q.slots):
        rows.append([str(c), _pct(q.lru_real[i]), f"{_pct(q.lru_syn[i])} ({_pct(q.lru_syn_range[i][0])}-"
                     f"{_pct(q.lru_syn_range[i][1])})", _pct(q.opt_real[i]),
                     f"{_pct(q.opt_syn[i])} ({_pct(q.opt_syn_range[i][0])}-{_pct(q.opt_syn_range[i][1])})"])
    lines += _table(["slots/layer", "LRU miss % real", "LRU miss % generated (range)", "OPT miss % real",
                     "OPT miss % generated (range)"], rows, fmt)
    return "\n".join(lines)
