"""Statistics for comparing measured with emulated timings (numpy and math only; no scipy).

Definitions used by the validation summary:

* Relative error of a figure: `emulated / measured - 1` (TTFT, decode tok/s, step-time quantiles).
* Two-sample Kolmogorov-Smirnov statistic D = sup_x |F_a(x) - F_b(x)| with F the empirical CDFs, taken at
  every observed value with `F(x) = #{samples <= x} / n`, so tied values (within or across samples) count
  together, as the definition of the ECDF requires.
* KS p-value: the asymptotic Kolmogorov distribution at lambda = (sqrt(N) + 0.12 + 0.11 / sqrt(N)) * D with
  the effective size N = n m / (n + m) (Stephens' correction, as in Numerical Recipes' `probks`):
  Q(lambda) = 2 sum_{j>=1} (-1)^(j-1) exp(-2 j^2 lambda^2), evaluated for small lambda through the
  equivalent theta-function form 1 - sqrt(2 pi) / lambda sum_{j>=1} exp(-(2j-1)^2 pi^2 / (8 lambda^2)),
  where the alternating series converges slowly. Approximate for small samples (a step-time comparison
  has tens to hundreds of steps per side, where it is within a few percent of the exact value).
* Student's t CDF through the regularized incomplete beta function:
  P(T <= t) = 1 - I_x(df/2, 1/2) / 2 for t > 0 (and I_x / 2 for t <= 0), x = df / (df + t^2), with I_x
  evaluated by its continued fraction (modified Lentz, Numerical Recipes `betacf`); df may be fractional
  (Welch), an infinite df gives the normal CDF.
* TOST (two one-sided tests) equivalence of means: with d = mean(emulated) - mean(measured) and the bound
  delta = margin * mean(measured), test H0: d <= -delta against d > -delta (p_lower) and H0: d >= delta
  against d < delta (p_upper), each a one-sided Welch t-test (unequal variances, Welch-Satterthwaite df;
  sample variances with ddof=1, a single observation contributing none). p = max(p_lower, p_upper); the
  means are equivalent within +-margin when p < alpha. When neither sample varies, there is nothing to
  test: the decision is exact, equivalent iff |d| < delta (p values 0 or 1 accordingly).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import attrs
import numpy as np

#: the continued fraction's stopping tolerance and the smallest number kept from underflowing (Lentz)
_EPS = 1e-15
_FPMIN = 1e-300


def _sample(values: Sequence[float] | np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(values, dtype=float).ravel()
    if arr.size == 0:
        raise ValueError(f"{name}: expected at least one value")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name}: expected finite values")
    return arr


def ks_statistic(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov D: the largest gap between the two empirical CDFs, ties counted together."""
    x, y = np.sort(_sample(a, "a")), np.sort(_sample(b, "b"))
    points = np.union1d(x, y)
    fx = np.searchsorted(x, points, side="right") / x.size
    fy = np.searchsorted(y, points, side="right") / y.size
    return float(np.max(np.abs(fx - fy)))


def kolmogorov_sf(lam: float) -> float:
    """Q(lambda) = P(K > lambda) of the Kolmogorov distribution (the limit of sqrt(n) D_n)."""
    if lam <= 0.0:
        return 1.0
    if lam < 1.18:  # theta-function form: converges in a few terms where the alternating series is slow
        s = sum(math.exp(-((2 * j - 1) ** 2) * math.pi**2 / (8.0 * lam * lam)) for j in range(1, 12))
        return min(max(1.0 - math.sqrt(2.0 * math.pi) / lam * s, 0.0), 1.0)
    total = 0.0
    for j in range(1, 101):
        term = math.exp(-2.0 * j * j * lam * lam)
        total += term if j % 2 else -term
        if term < 1e-17 * max(total, 1e-300):
            break
    return min(max(2.0 * total, 0.0), 1.0)


def ks_pvalue(d: float, n: int, m: int) -> float:
    """Asymptotic p-value of a two-sample KS statistic `d` of samples of sizes `n` and `m` (Stephens'
    correction of the Kolmogorov distribution at the effective size n m / (n + m); see the module doc)."""
    if n < 1 or m < 1:
        raise ValueError(f"sample sizes must be positive, got {n} and {m}")
    if not 0.0 <= d <= 1.0:
        raise ValueError(f"a KS statistic lies in [0, 1], got {d}")
    en = math.sqrt(n * m / (n + m))
    return kolmogorov_sf((en + 0.12 + 0.11 / en) * d)


def _betacf(a: float, b: float, x: float) -> float:
    """The continued fraction of the incomplete beta function (modified Lentz)."""
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) >= _FPMIN else _FPMIN)
    h = d
    # converges in O(sqrt(max(a, b))) terms on the side of x where it is used
    for m in range(1, 1000 + int(20 * math.sqrt(max(a, b)))):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) >= _FPMIN else _FPMIN)
        c = 1.0 + aa / c
        c = c if abs(c) >= _FPMIN else _FPMIN
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) >= _FPMIN else _FPMIN)
        c = 1.0 + aa / c
        c = c if abs(c) >= _FPMIN else _FPMIN
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < _EPS:
            return h
    raise ArithmeticError(f"incomplete beta continued fraction did not converge (a={a}, b={b}, x={x})")


def betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta function I_x(a, b) for a, b > 0 and 0 <= x <= 1."""
    if a <= 0 or b <= 0:
        raise ValueError(f"a and b must be positive, got {a} and {b}")
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"x must lie in [0, 1], got {x}")
    if x in (0.0, 1.0):
        return x
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    front = math.exp(log_front)
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def normal_cdf(z: float) -> float:
    return 0.5 * math.erfc(-z / math.sqrt(2.0))


def student_t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with `df` (> 0, may be fractional or infinite) degrees of freedom."""
    if not df > 0:
        raise ValueError(f"degrees of freedom must be positive, got {df}")
    if math.isnan(t):
        raise ValueError("t is NaN")
    if math.isinf(df):
        return normal_cdf(t)
    if math.isinf(t):
        return 1.0 if t > 0 else 0.0
    tail = 0.5 * betainc(0.5 * df, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


@attrs.frozen
class TostResult:
    """Two one-sided tests of mean equivalence; see the module doc for the definitions."""

    #: p of H0: mean(emulated) - mean(measured) <= -margin * mean(measured)
    p_lower: float
    #: p of H0: mean(emulated) - mean(measured) >= +margin * mean(measured)
    p_upper: float
    #: max(p_lower, p_upper): equivalence is shown when p < alpha
    p: float
    equivalent: bool
    #: mean(emulated) / mean(measured)
    mean_ratio: float


def _welch_se_df(e: np.ndarray, m: np.ndarray) -> tuple[float, float]:
    """Standard error of mean(e) - mean(m) and the Welch-Satterthwaite degrees of freedom."""
    parts = [(float(np.var(s, ddof=1)) / s.size, s.size - 1) for s in (e, m) if s.size >= 2]
    parts = [(v, k) for v, k in parts if v > 0]
    var = sum(v for v, _ in parts)
    if var <= 0:
        return 0.0, math.inf
    df = var * var / sum(v * v / k for v, k in parts)
    return math.sqrt(var), df


def tost_equivalent(measured: Sequence[float] | np.ndarray, emulated: Sequence[float] | np.ndarray,
                    margin: float = 0.05, alpha: float = 0.05) -> TostResult:
    """Whether mean(emulated) lies within +-margin x mean(measured) of mean(measured), by two one-sided
    Welch t-tests at level `alpha` (exact when neither sample varies)."""
    if not margin > 0 or not 0 < alpha < 1:
        raise ValueError(f"expected margin > 0 and 0 < alpha < 1, got {margin} and {alpha}")
    m, e = _sample(measured, "measured"), _sample(emulated, "emulated")
    mean_m, mean_e = float(np.mean(m)), float(np.mean(e))
    if not mean_m > 0:
        raise ValueError(f"measured: expected a positive mean, got {mean_m}")
    diff, delta = mean_e - mean_m, margin * mean_m
    se, df = _welch_se_df(e, m)
    if se == 0.0:
        p_lower = 0.0 if diff > -delta else 1.0
        p_upper = 0.0 if diff < delta else 1.0
        return TostResult(p_lower, p_upper, max(p_lower, p_upper), abs(diff) < delta, mean_e / mean_m)
    p_lower = 1.0 - student_t_cdf((diff + delta) / se, df)
    p_upper = student_t_cdf((diff - delta) / se, df)
    p = max(p_lower, p_upper)
    return TostResult(p_lower, p_upper, p, p < alpha, mean_e / mean_m)


def quantile_errors(measured: Sequence[float] | np.ndarray, emulated: Sequence[float] | np.ndarray,
                    qs: Sequence[float] = (0.5, 0.99)) -> tuple[float, ...]:
    """Per quantile q (in `qs` order): emulated's q-quantile / measured's - 1 (linear interpolation)."""
    m, e = _sample(measured, "measured"), _sample(emulated, "emulated")
    mq = np.quantile(m, list(qs))
    eq = np.quantile(e, list(qs))
    if np.any(mq <= 0):
        raise ValueError("measured: expected positive quantiles")
    return tuple(float(v) for v in eq / mq - 1.0)
