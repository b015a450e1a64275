"""live/validation_stats.py against hand-computed cases and closed forms (no scipy)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from live.validation_stats import (
    betainc,
    kolmogorov_sf,
    ks_pvalue,
    ks_statistic,
    normal_cdf,
    quantile_errors,
    student_t_cdf,
    tost_equivalent,
)

# ---- Kolmogorov-Smirnov -----------------------------------------------------------------------------


@pytest.mark.parametrize(("a", "b", "d"), [
    ([1, 2, 3], [4, 5, 6], 1.0),  # disjoint
    ([1, 2, 3, 4], [3, 4, 5, 6], 0.5),  # at 2: 2/4 vs 0; at 4: 1 vs 2/4
    ([3, 1, 2], [2, 3, 1], 0.0),  # same values, any order
    # ties within and across samples: at 1, 2/3 vs 1/3; at 2, 1 vs 1 (stepping through the merged
    # sample one value at a time would report 2/3)
    ([1, 1, 2], [1, 2, 2], 1 / 3),
    ([1, 1, 1, 1], [1, 1], 0.0),  # all tied: the ECDFs jump together
    ([0, 0, 1], [0, 1, 1, 1], 5 / 12),  # at 0: 2/3 vs 1/4
    ([5.0], [1.0, 2.0, 5.0, 9.0], 0.5),  # at 2: 0 vs 2/4; at 5: 1 vs 3/4
])
def test_ks_statistic_hand_cases(a: list[float], b: list[float], d: float) -> None:
    assert ks_statistic(a, b) == pytest.approx(d, abs=1e-12)
    assert ks_statistic(b, a) == pytest.approx(d, abs=1e-12)


def test_ks_statistic_rejects_empty_and_nan() -> None:
    with pytest.raises(ValueError, match="at least one"):
        ks_statistic([], [1.0])
    with pytest.raises(ValueError, match="finite"):
        ks_statistic([1.0, math.nan], [1.0])


@pytest.mark.parametrize(("lam", "q"), [(0.5, 0.9639), (1.0, 0.2700), (1.36, 0.0495), (1.63, 0.0098)])
def test_kolmogorov_distribution_table_values(lam: float, q: float) -> None:
    # large equal samples: sqrt(N) = 1000 and Stephens' correction (0.12 + 0.11 / 1000) is a 0.012% change
    n = 2_000_000
    d = lam / (1000.0 + 0.12 + 0.11 / 1000.0)
    assert ks_pvalue(d, n, n) == pytest.approx(q, abs=1e-4)
    assert kolmogorov_sf(lam) == pytest.approx(q, abs=1e-4)


@pytest.mark.parametrize("lam", [0.3, 0.6, 0.9, 1.1, 1.17, 1.19, 1.5, 2.5])
def test_kolmogorov_both_series_agree(lam: float) -> None:
    """Below 1.18 the implementation uses the theta-function form; the alternating series (many terms)
    must give the same value."""
    alternating = 2.0 * sum((-1) ** (j - 1) * math.exp(-2.0 * j * j * lam * lam) for j in range(1, 5000))
    assert kolmogorov_sf(lam) == pytest.approx(alternating, abs=1e-12)


def test_ks_pvalue_stephens_small_samples() -> None:
    # n = m = 10: sqrt(N) = sqrt(5); lambda = (2.2360680 + 0.12 + 0.0491935) * 0.4 = 0.9621046
    lam = (math.sqrt(5.0) + 0.12 + 0.11 / math.sqrt(5.0)) * 0.4
    assert lam == pytest.approx(0.9621046, abs=1e-6)
    expected = 2.0 * sum((-1) ** (j - 1) * math.exp(-2.0 * j * j * lam * lam) for j in range(1, 200))
    assert ks_pvalue(0.4, 10, 10) == pytest.approx(expected, abs=1e-12)
    assert 0.30 < expected < 0.32
    # unequal sizes: N = 6 * 24 / 30 = 4.8
    en = math.sqrt(4.8)
    assert ks_pvalue(0.5, 6, 24) == pytest.approx(kolmogorov_sf((en + 0.12 + 0.11 / en) * 0.5), abs=1e-15)
    assert ks_pvalue(0.0, 5, 5) == 1.0
    ps = [ks_pvalue(d, 30, 40) for d in np.linspace(0.0, 1.0, 21)]
    assert np.all(np.diff(ps) <= 0) and ps[-1] < 1e-6
    with pytest.raises(ValueError):
        ks_pvalue(1.5, 3, 3)
    with pytest.raises(ValueError):
        ks_pvalue(0.5, 0, 3)


# ---- Student's t ------------------------------------------------------------------------------------


def test_student_t_known_values() -> None:
    assert student_t_cdf(2.0, 10) == pytest.approx(0.963306, abs=1e-6)
    # df = 3 closed form: 1/2 + (x / (1 + t^2/3) + atan(x)) / pi, x = t / sqrt(3): 0.1152919 at t = -1.5
    x = -1.5 / math.sqrt(3.0)
    closed = 0.5 + (x / (1.0 + 1.5**2 / 3.0) + math.atan(x)) / math.pi
    assert closed == pytest.approx(0.1152919, abs=1e-7)
    assert student_t_cdf(-1.5, 3) == pytest.approx(closed, abs=1e-12)
    for t in (-7.0, -1.0, -0.2, 0.0, 0.4, 3.0, 25.0):
        assert student_t_cdf(t, 1) == pytest.approx(0.5 + math.atan(t) / math.pi, abs=1e-12)  # Cauchy
        assert student_t_cdf(t, 2) == pytest.approx(0.5 + t / (2.0 * math.sqrt(2.0 + t * t)), abs=1e-12)
        assert student_t_cdf(t, 7.3) + student_t_cdf(-t, 7.3) == pytest.approx(1.0, abs=1e-12)
    assert student_t_cdf(0.0, 4.2) == 0.5


def test_student_t_fractional_df_against_the_density() -> None:
    df, t = 4.5, 1.3
    g = math.gamma((df + 1) / 2) / (math.sqrt(df * math.pi) * math.gamma(df / 2))
    xs = np.linspace(0.0, t, 400_001)
    ys = g * (1.0 + xs**2 / df) ** (-(df + 1) / 2)
    integral = float(np.sum((ys[1:] + ys[:-1]) * np.diff(xs)) / 2)
    assert student_t_cdf(t, df) == pytest.approx(0.5 + integral, abs=1e-9)


def test_student_t_approaches_the_normal() -> None:
    for t in (-2.5, -1.0, 0.3, 1.96):
        assert abs(student_t_cdf(t, 1e6) - normal_cdf(t)) < 1e-6
        assert student_t_cdf(t, math.inf) == normal_cdf(t)
        # heavier tails at small df
        assert abs(student_t_cdf(t, 5) - 0.5) < abs(normal_cdf(t) - 0.5)
    assert normal_cdf(1.96) == pytest.approx(0.9750021, abs=1e-7)
    with pytest.raises(ValueError):
        student_t_cdf(1.0, 0)


def test_incomplete_beta_closed_forms() -> None:
    for x in (0.0, 0.05, 0.3, 0.5, 0.77, 0.999, 1.0):
        assert betainc(2.5, 1.0, x) == pytest.approx(x**2.5, abs=1e-12)
        assert betainc(1.0, 3.5, x) == pytest.approx(1.0 - (1.0 - x) ** 3.5, abs=1e-12)
        assert betainc(0.5, 0.5, x) == pytest.approx(2.0 / math.pi * math.asin(math.sqrt(x)), abs=1e-12)


# ---- TOST -------------------------------------------------------------------------------------------

def _noisy(n: int, mean: float, rel_sd: float, seed: int) -> np.ndarray:
    return mean * (1.0 + rel_sd * np.random.default_rng(seed).standard_normal(n))


def test_tost_equal_samples_are_equivalent() -> None:
    m = _noisy(60, 0.02, 0.02, 1)
    res = tost_equivalent(m, m.copy())
    assert res.equivalent and res.p < 1e-6 and res.mean_ratio == pytest.approx(1.0)
    assert res.p == max(res.p_lower, res.p_upper)
    # a different draw of the same distribution, 2% offset: still within 5%
    res = tost_equivalent(m, _noisy(60, 0.0204, 0.02, 2))
    assert res.equivalent


def test_tost_ten_percent_offset_is_not_equivalent() -> None:
    m = _noisy(60, 0.02, 0.02, 3)
    res = tost_equivalent(m, m * 1.10)
    assert not res.equivalent and res.p_upper > 0.99 and res.p_lower < 1e-6
    assert res.mean_ratio == pytest.approx(1.10)
    res = tost_equivalent(m, m * 0.90)
    assert not res.equivalent and res.p_lower > 0.99 and res.p_upper < 1e-6
    # within the margin but too noisy to show it
    assert not tost_equivalent(_noisy(5, 1.0, 0.3, 4), _noisy(5, 1.01, 0.3, 5)).equivalent
    # the same samples with a wider margin
    assert tost_equivalent(m, m * 1.10, margin=0.15).equivalent


def test_tost_one_sided_welch_by_hand() -> None:
    # measured mean 1, variance 0.01 (ddof 1), se = sqrt(0.01 / 3); emulated constant at the same mean:
    # t = 0.05 / se = 0.8660, df = 2, P(T <= t) = 1/2 + t / (2 sqrt(2 + t^2)) = 0.76112
    res = tost_equivalent([0.9, 1.0, 1.1], [1.0, 1.0, 1.0])
    t = 0.05 / math.sqrt(0.01 / 3)
    p = 1.0 - (0.5 + t / (2.0 * math.sqrt(2.0 + t * t)))
    assert p == pytest.approx(0.23888, abs=1e-5)
    assert res.p_lower == pytest.approx(p, abs=1e-12) and res.p_upper == pytest.approx(p, abs=1e-12)
    assert not res.equivalent


def test_tost_zero_variance_decides_exactly() -> None:
    res = tost_equivalent([1.0, 1.0, 1.0], [1.04, 1.04])
    assert res.equivalent and res.p == 0.0 and res.mean_ratio == pytest.approx(1.04)
    res = tost_equivalent([1.0, 1.0, 1.0], [1.06])
    assert not res.equivalent and res.p == 1.0 and res.p_lower == 0.0 and res.p_upper == 1.0
    res = tost_equivalent([2.0], [1.88])  # one value each: -6% of 2
    assert not res.equivalent and res.p_lower == 1.0 and res.p_upper == 0.0
    assert tost_equivalent([2.0], [1.92]).equivalent
    with pytest.raises(ValueError):
        tost_equivalent([1.0], [1.0], margin=0.0)


# ---- quantiles --------------------------------------------------------------------------------------

def test_quantile_errors_hand_cases() -> None:
    assert quantile_errors([1, 2, 3, 4, 5], [2, 4, 6, 8, 10]) == pytest.approx((1.0, 1.0))
    # linear: p50 of both 2.5; p99 at position 2.97: 3.97 measured, 3 + 0.97 * 5 = 7.85 emulated
    p50, p99 = quantile_errors([1, 2, 3, 4], [1, 2, 3, 8])
    assert p50 == pytest.approx(0.0, abs=1e-12)
    assert p99 == pytest.approx(7.85 / 3.97 - 1.0, abs=1e-12)
    # order of qs kept; p90 of [10, 20] is 19, of [10, 10] 10
    assert quantile_errors([10, 20], [10, 10], qs=(0.9, 0.0)) == pytest.approx((10 / 19 - 1.0, 0.0))
