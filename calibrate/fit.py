"""Fits and spread statistics over measured times: pure numpy, no torch."""

from __future__ import annotations

from collections.abc import Sequence

import attrs
import numpy as np

from emu.errors import EmuError


@attrs.frozen
class LinearFit:
    """time = latency_s + bytes / bw_Bps, with how well the measured points follow it."""

    latency_s: float
    bw_Bps: float
    #: largest |fit - measured| / measured over the points
    max_rel_residual: float
    #: root mean square of the relative residuals
    rms_rel_residual: float
    n_points: int

    def predict(self, nbytes: float | np.ndarray) -> float | np.ndarray:
        return self.latency_s + np.asarray(nbytes, dtype=float) / self.bw_Bps

    def to_dict(self) -> dict[str, float | int]:
        return attrs.asdict(self)


@attrs.frozen
class Spread:
    """Distribution of repeated measurements of one figure."""

    median: float
    p10: float
    p90: float
    minimum: float
    maximum: float
    n: int

    @property
    def rel_spread(self) -> float:
        """(p90 - p10) / median: the figure's relative run-to-run noise."""
        return (self.p90 - self.p10) / self.median if self.median > 0 else 0.0

    def to_dict(self) -> dict[str, float | int]:
        out = attrs.asdict(self)
        out["rel_spread"] = self.rel_spread
        return out


def _as_positive_array(values: Sequence[float] | np.ndarray, what: str) -> np.ndarray:
    arr = np.asarray(values, dtype=float)
    if arr.ndim != 1 or arr.size == 0:
        raise EmuError(f"expected a non-empty list of {what}, got shape {arr.shape}", key=what)
    if not np.all(np.isfinite(arr)) or np.any(arr <= 0):
        raise EmuError(f"expected positive finite {what}, got {arr.tolist()}", key=what)
    return arr


def spread(samples: Sequence[float] | np.ndarray) -> Spread:
    arr = _as_positive_array(samples, "samples")
    p10, med, p90 = np.percentile(arr, [10, 50, 90])
    return Spread(median=float(med), p10=float(p10), p90=float(p90), minimum=float(arr.min()),
                  maximum=float(arr.max()), n=int(arr.size))


def fit_latency_bandwidth(sizes: Sequence[float] | np.ndarray,
                          times: Sequence[float] | np.ndarray) -> LinearFit:
    """Least squares on relative error, so small copies fix the latency and large ones the bandwidth.

    An ordinary fit is dominated by the largest copies (their absolute errors are largest) and
    returns a meaningless, even negative, intercept. Weighting each point by 1/time minimizes the
    relative residuals instead. A negative intercept is clamped to zero and the slope refitted.
    """
    s = _as_positive_array(sizes, "sizes")
    t = _as_positive_array(times, "times")
    if s.shape != t.shape:
        raise EmuError(f"sizes and times differ in length ({s.size} vs {t.size})", key="times")
    if np.unique(s).size < 2:
        raise EmuError("need at least two distinct sizes to separate latency from bandwidth", key="sizes")
    w = 1.0 / t
    design = np.stack([w, s * w], axis=1)
    (latency, inv_bw), *_ = np.linalg.lstsq(design, np.ones_like(t), rcond=None)
    if latency < 0:
        latency = 0.0
        inv_bw = float(np.sum(w * w * s * t) / np.sum(w * w * s * s))
    if not inv_bw > 0:
        raise EmuError(f"copy time does not grow with size (slope {inv_bw:.3g} s/B): measurements are "
                       "not a latency + bandwidth law", key="times")
    rel = (latency + s * inv_bw - t) / t
    return LinearFit(latency_s=float(latency), bw_Bps=float(1.0 / inv_bw),
                     max_rel_residual=float(np.max(np.abs(rel))),
                     rms_rel_residual=float(np.sqrt(np.mean(rel * rel))), n_points=int(s.size))


def relative_difference(a: float, b: float) -> float:
    """|a - b| / mean(|a|, |b|): symmetric, 0 for equal figures, 0 when both are 0."""
    scale = (abs(a) + abs(b)) / 2.0
    return abs(a - b) / scale if scale > 0 else 0.0
