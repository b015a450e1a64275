"""The latency + bandwidth fit and spread statistics, on synthetic data with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from calibrate.fit import fit_latency_bandwidth, relative_difference, spread
from emu.errors import EmuError

SIZES = np.array([4096 * 2 ** i for i in range(18)], dtype=float)  # 4 KiB .. 512 MiB


@pytest.mark.parametrize(("latency", "bw", "noise", "seed"), [
    (1.0e-5, 5.5e10, 0.03, 0),
    (2.5e-6, 2.4e10, 0.05, 1),
    (4.0e-5, 1.2e10, 0.02, 2),
    (8.0e-6, 2.0e11, 0.03, 3),
])
def test_fit_recovers_known_latency_and_bandwidth(latency: float, bw: float, noise: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    times = (latency + SIZES / bw) * rng.lognormal(0.0, noise, SIZES.size)
    fit = fit_latency_bandwidth(SIZES, times)
    assert fit.latency_s == pytest.approx(latency, rel=0.08)
    assert fit.bw_Bps == pytest.approx(bw, rel=0.05)
    assert fit.n_points == SIZES.size
    assert fit.rms_rel_residual < 3 * noise


def test_relative_weighting_beats_plain_least_squares_on_latency() -> None:
    """A plain fit lets the biggest copies' noise swamp the intercept; the weighted one does not."""
    rng = np.random.default_rng(7)
    latency, bw = 1.0e-5, 5.5e10
    times = (latency + SIZES / bw) * rng.lognormal(0.0, 0.03, SIZES.size)
    _, plain_intercept = np.polyfit(SIZES, times, 1)
    fit = fit_latency_bandwidth(SIZES, times)
    assert abs(fit.latency_s - latency) < abs(plain_intercept - latency)


def test_exact_data_fits_exactly() -> None:
    times = 7e-6 + SIZES / 3e10
    fit = fit_latency_bandwidth(SIZES, times)
    assert fit.latency_s == pytest.approx(7e-6, rel=1e-9)
    assert fit.bw_Bps == pytest.approx(3e10, rel=1e-9)
    assert fit.max_rel_residual < 1e-9
    assert np.allclose(fit.predict(SIZES), times, rtol=1e-9)


def test_negative_intercept_is_clamped_to_zero() -> None:
    # pure bandwidth law with the smallest copies measured a bit fast: the free intercept goes negative
    times = SIZES / 4e10
    times[:4] *= 0.8
    fit = fit_latency_bandwidth(SIZES, times)
    assert fit.latency_s == 0.0
    assert fit.bw_Bps == pytest.approx(4e10, rel=0.15)


@pytest.mark.parametrize(("sizes", "times", "key"), [
    ([4096, 8192], [1e-5], "times"),
    ([4096, 4096, 4096], [1e-5, 1.1e-5, 1e-5], "sizes"),
    ([4096, 8192], [1e-5, -1.0], "times"),
    ([4096, 8192], [1e-5, float("nan")], "times"),
    ([], [], "sizes"),
    ([4096, 8192, 16384], [3e-5, 2e-5, 1e-5], "times"),  # time falls with size: no bandwidth law
])
def test_bad_measurements_raise_emu_error(sizes: list[float], times: list[float], key: str) -> None:
    with pytest.raises(EmuError) as info:
        fit_latency_bandwidth(sizes, times)
    assert info.value.key == key


def test_spread_statistics() -> None:
    samples = [float(x) for x in range(1, 12)]  # 1..11
    s = spread(samples)
    assert s.median == 6.0
    assert s.p10 == pytest.approx(2.0)
    assert s.p90 == pytest.approx(10.0)
    assert (s.minimum, s.maximum, s.n) == (1.0, 11.0, 11)
    assert s.rel_spread == pytest.approx(8.0 / 6.0)
    assert spread([5e-6] * 4).rel_spread == 0.0


def test_relative_difference_is_symmetric() -> None:
    assert relative_difference(1.0, 1.1) == pytest.approx(relative_difference(1.1, 1.0))
    assert relative_difference(2.0, 2.0) == 0.0
    assert relative_difference(0.0, 0.0) == 0.0
    assert relative_difference(1.0, 3.0) == pytest.approx(1.0)
