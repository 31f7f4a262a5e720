import numpy as np
import pytest

from medddpm.evaluation.reconstruction import compare, ssim_kernel, summarise


def test_measures_match_their_formulas():
    rng = np.random.default_rng(0)
    x = rng.uniform(-1000, 1000, size=(12, 13, 14))
    y = x + rng.normal(0, 50, size=x.shape)
    r = compare(x, y, data_range=2000.0)
    mse = np.mean((x - y) ** 2)
    assert r.psnr == pytest.approx(10 * np.log10(2000.0**2 / mse), rel=1e-12)
    assert r.mae == pytest.approx(np.mean(np.abs(x - y)), rel=1e-12)
    assert r.correlation == pytest.approx(np.corrcoef(x.ravel(), y.ravel())[0, 1], rel=1e-12)
    assert 0 < r.ssim < 1


def test_identical_volumes_are_perfect_and_ssim_falls_with_noise():
    x = np.random.default_rng(1).uniform(0, 1, size=(16, 16, 16))
    same = compare(x, x.copy(), data_range=1.0)
    assert same.psnr == float("inf") and same.mae == 0 and same.correlation == pytest.approx(1.0)
    assert same.ssim == pytest.approx(1.0, abs=1e-6)
    noisy = [compare(x, x + s * np.random.default_rng(2).normal(size=x.shape), 1.0).ssim for s in (0.01, 0.1)]
    assert 1 > noisy[0] > noisy[1]


def test_ssim_window_fits_small_volumes_and_means_average():
    assert ssim_kernel((64, 64, 64)) == 11 and ssim_kernel((8, 9, 10)) == 7 and ssim_kernel((10, 10, 10)) == 9
    x = np.random.default_rng(3).uniform(0, 1, size=(8, 8, 8))
    a, b = compare(x, x * 0.9, 1.0), compare(x, x * 0.5, 1.0)
    assert summarise([a, b])["mae"] == pytest.approx((a.mae + b.mae) / 2)
