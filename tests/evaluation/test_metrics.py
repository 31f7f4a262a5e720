"""Closed-form and reference checks for medddpm.evaluation.metrics."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.metrics import MMDMetric, MultiScaleSSIMMetric
from scipy.stats import ortho_group

from medddpm.errors import InputError
from medddpm.evaluation.metrics import (
    covariance_rank_deficient,
    feature_statistics,
    fid_from_features,
    frechet_distance,
    median_heuristic_bandwidth,
    mmd,
    ms_ssim,
    ms_ssim_settings,
    pairwise_ms_ssim,
    prdc,
)


def gaussian_features(rng: np.random.Generator, n: int, f: int, shift: float = 0.0) -> np.ndarray:
    return rng.standard_normal((n, f)) @ rng.standard_normal((f, f)) * 0.5 + shift


# ---------------------------------------------------------------------------------------------- FID


def test_fid_of_a_set_with_itself_is_zero():
    x = gaussian_features(np.random.default_rng(0), 200, 16)
    assert fid_from_features(x, x) == pytest.approx(0.0, abs=1e-6)


def test_fid_is_symmetric():
    rng = np.random.default_rng(1)
    a, b = gaussian_features(rng, 150, 12), gaussian_features(rng, 90, 12, shift=0.3)
    assert fid_from_features(a, b) == pytest.approx(fid_from_features(b, a), rel=1e-9)


def test_frechet_distance_matches_closed_form_for_commuting_covariances():
    # S1 = Q D1 Qᵀ and S2 = Q D2 Qᵀ commute, so (S1 S2)^{1/2} = Q (D1 D2)^{1/2} Qᵀ and
    # d² = ||mu1 - mu2||² + Σ (√d1 - √d2)², elementwise.
    rng = np.random.default_rng(2)
    f = 10
    q = ortho_group.rvs(f, random_state=3)
    d1, d2 = rng.uniform(0.1, 3.0, f), rng.uniform(0.1, 3.0, f)
    mu1, mu2 = rng.standard_normal(f), rng.standard_normal(f)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(d1) - np.sqrt(d2)) ** 2)
    assert frechet_distance(mu1, q @ np.diag(d1) @ q.T, mu2, q @ np.diag(d2) @ q.T) == pytest.approx(
        expected, rel=1e-6
    )
    # diagonal covariances, the plainest case
    assert frechet_distance(mu1, np.diag(d1), mu2, np.diag(d2)) == pytest.approx(expected, rel=1e-6)


def test_fid_of_two_gaussian_samples_matches_closed_form_of_their_statistics():
    # Tr (S1 S2)^{1/2} = Σ √λ(S1^{1/2} S2 S1^{1/2}), by similarity: an independent route through eigh.
    rng = np.random.default_rng(4)
    real, synth = gaussian_features(rng, 300, 8), gaussian_features(rng, 250, 8, shift=0.5)
    mu1, s1 = real.mean(0), np.cov(real, rowvar=False)
    mu2, s2 = synth.mean(0), np.cov(synth, rowvar=False)
    w, v = np.linalg.eigh(s1)
    s1_half = v @ np.diag(np.sqrt(w)) @ v.T
    tr_covmean = np.sum(np.sqrt(np.clip(np.linalg.eigvalsh(s1_half @ s2 @ s1_half), 0, None)))
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * tr_covmean
    assert fid_from_features(real, synth) == pytest.approx(expected, rel=1e-6)


def test_fid_grows_with_noise_added_to_synthetic():
    rng = np.random.default_rng(5)
    real = gaussian_features(rng, 200, 8)
    noise = rng.standard_normal(real.shape)
    fids = [fid_from_features(real, real + s * noise) for s in (0.0, 0.25, 0.5, 1.0, 2.0, 4.0)]
    assert fids[0] == pytest.approx(0.0, abs=1e-6)
    assert all(a < b for a, b in zip(fids, fids[1:], strict=False)), fids


def test_fid_survives_fewer_samples_than_features():
    rng = np.random.default_rng(6)
    a, b = rng.standard_normal((10, 32)), rng.standard_normal((12, 32))
    assert covariance_rank_deficient(10, 32) and covariance_rank_deficient(32, 32)
    assert not covariance_rank_deficient(33, 32)
    fid = fid_from_features(a, b)
    assert np.isfinite(fid) and fid > 0


def test_fid_accepts_torch_and_rejects_tiny_or_mismatched_sets():
    x = torch.randn(20, 4, generator=torch.Generator().manual_seed(0))
    assert fid_from_features(x, x) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(InputError, match="at least 2"):
        feature_statistics(np.ones((1, 4)))
    with pytest.raises(ValueError, match="feature sizes differ"):
        fid_from_features(np.zeros((5, 3)), np.zeros((5, 4)))


# ---------------------------------------------------------------------------------------------- MMD


def test_linear_mmd_matches_monai_on_equal_size_sets():
    rng = np.random.default_rng(7)
    a, b = rng.standard_normal((16, 6)), rng.standard_normal((16, 6)) + 0.4
    expected = MMDMetric()(torch.from_numpy(a), torch.from_numpy(b)).item()
    assert mmd(a, b, kernel="linear") == pytest.approx(expected, rel=1e-9)


def test_rbf_mmd_matches_the_unbiased_estimator_written_out():
    rng = np.random.default_rng(8)
    x, y = rng.standard_normal((7, 3)), rng.standard_normal((5, 3)) + 1.0  # different set sizes
    sigma = median_heuristic_bandwidth(x, y)

    def k(a, b):
        return np.exp(-np.sum((a - b) ** 2) / (2 * sigma**2))

    m, n = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    assert mmd(x, y) == pytest.approx(xx + yy - 2 * xy, rel=1e-10)


def test_rbf_mmd_is_near_zero_for_one_distribution_and_large_for_distant_ones():
    rng = np.random.default_rng(9)
    a, b = rng.standard_normal((60, 4)), rng.standard_normal((40, 4))
    assert abs(mmd(a, b)) < 0.05
    assert mmd(a, b + 10.0) > 0.5
    with pytest.raises(InputError, match="at least 2"):
        mmd(a[:1], b)


# --------------------------------------------------------------------------------------------- PRDC


def test_prdc_of_identical_sets():
    x = np.random.default_rng(10).standard_normal((40, 5))
    r = prdc(x, x.copy(), nearest_k=5)
    assert r["precision"] == 1.0 and r["recall"] == 1.0 and r["coverage"] == 1.0
    assert r["density"] == pytest.approx(1.0, abs=1e-12)


def test_prdc_of_a_far_shifted_set_is_zero():
    rng = np.random.default_rng(11)
    x = rng.standard_normal((30, 5))
    r = prdc(x, rng.standard_normal((30, 5)) + 100.0, nearest_k=3)
    assert r == {"precision": 0.0, "recall": 0.0, "density": 0.0, "coverage": 0.0}


def test_prdc_hand_computed_1d():
    # real 0,1,2,3 with k = 1: every real radius is 1. synthetic 0.5 and 10: radii 9.5.
    # precision: 0.5 lies in the balls of 0 and 1, 10 in none -> 1/2; density: (2 + 0) / 2 / 1 = 1.
    # recall: every real point is within 9.5 of 0.5 -> 1. coverage: nearest synthetic point of
    # 0, 1 is 0.5 away (< 1), of 2, 3 is 1.5 and 2.5 away -> 1/2.
    real = np.array([[0.0], [1.0], [2.0], [3.0]])
    synth = np.array([[0.5], [10.0]])
    assert prdc(real, synth, nearest_k=1) == {
        "precision": 0.5,
        "recall": 1.0,
        "density": 1.0,
        "coverage": 0.5,
    }


def test_prdc_hand_computed_2d():
    # real: unit square corners, k = 1 -> every radius 1 (strict "<", so a point at exactly 1 is out).
    # synth: the centre (√0.5 ≈ 0.707 from each corner) and a point at (3, 0).
    # precision: centre in all four balls, (3, 0) in none -> 1/2; density = (4 + 0) / 2 = 2.
    # synth radii: both 1st neighbours are each other, √(2.5² + 0.5²) ≈ 2.55 apart, so all
    # real corners are within 2.55 of the centre -> recall 1; coverage: every corner's nearest
    # synthetic point is the centre, 0.707 < 1 -> 1.
    real = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    synth = np.array([[0.5, 0.5], [3.0, 0.0]])
    assert prdc(real, synth, nearest_k=1) == {
        "precision": 0.5,
        "recall": 1.0,
        "density": 2.0,
        "coverage": 1.0,
    }


def test_prdc_needs_more_points_than_k():
    with pytest.raises(InputError, match="nearest_k=5"):
        prdc(np.zeros((5, 2)), np.zeros((9, 2)), nearest_k=5)


# ------------------------------------------------------------------------------------------ MS-SSIM

EXPECTED_SETTINGS = {16: (3, 3), 32: (4, 3), 64: (5, 3), 128: (5, 7), 176: (5, 11)}  # side: (scales, kernel)


@pytest.mark.parametrize("side", sorted(EXPECTED_SETTINGS))
def test_ms_ssim_settings_table(side):
    s = ms_ssim_settings((side, side + 8, side + 16))  # the smallest side decides
    assert (s["num_scales"], s["kernel_size"]) == EXPECTED_SETTINGS[side]
    assert len(s["weights"]) == s["num_scales"] and sum(s["weights"]) == pytest.approx(1.0)


def _runs_in_monai(x: torch.Tensor, scales: int, kernel_size: int) -> bool:
    weights = [1.0 / scales] * scales
    try:
        MultiScaleSSIMMetric(spatial_dims=3, kernel_size=kernel_size, weights=weights)(y_pred=x, y=x)
    except (ValueError, RuntimeError):  # MONAI's size check, or a kernel larger than a coarse scale
        return False
    return True


@pytest.mark.parametrize("side", [3, 5, 6, 11, 12, 16, 26, 27, 32, 48, 64, 128])
def test_ms_ssim_settings_run_through_monai_and_are_the_largest_that_do(side):
    # A 1 x 1 x side³ tensor keeps this fast even at 128.
    s = ms_ssim_settings((side,) * 3)
    x = torch.rand(1, 1, side, side, side, generator=torch.Generator().manual_seed(side))
    metric = MultiScaleSSIMMetric(
        spatial_dims=3, kernel_size=s["kernel_size"], kernel_sigma=s["kernel_sigma"], weights=s["weights"]
    )
    assert metric(y_pred=x, y=x.clone()).item() == pytest.approx(1.0, abs=1e-5)
    if s["num_scales"] < 5:
        assert not _runs_in_monai(x, s["num_scales"] + 1, 3)
    if s["kernel_size"] < 11:
        assert not _runs_in_monai(x, s["num_scales"], s["kernel_size"] + 2)


def test_ms_ssim_settings_at_the_monai_limits():
    # MONAI rejects 4 scales below 27 voxels (side // 9 >= 3) even though 24 would pool to 3;
    # at 2 scales the coarse convolution needs side // 2 >= kernel.
    assert ms_ssim_settings((26, 26, 26))["num_scales"] == 3
    assert ms_ssim_settings((27, 27, 27))["num_scales"] == 4
    assert (ms_ssim_settings((7, 7, 7))["num_scales"], ms_ssim_settings((7, 7, 7))["kernel_size"]) == (2, 3)
    x = torch.rand(1, 1, 24, 24, 24)
    with pytest.raises(ValueError):
        MultiScaleSSIMMetric(spatial_dims=3, kernel_size=3, weights=(0.25,) * 4)(y_pred=x, y=x)
    with pytest.raises(InputError, match="too small"):
        ms_ssim_settings((2, 16, 16))


def test_ms_ssim_of_identical_volumes_is_one():
    x = torch.rand(2, 1, 16, 16, 16, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(ms_ssim(x, x.clone()), torch.ones(2), atol=1e-5)


def test_pairwise_ms_ssim_identical_copies_and_independent_noise():
    g = torch.Generator().manual_seed(1)
    one = torch.rand(1, 1, 16, 16, 16, generator=g)
    same = pairwise_ms_ssim(one.repeat(4, 1, 1, 1, 1))
    assert same["n_pairs"] == 6 and same["mean"] == pytest.approx(1.0, abs=1e-5)
    assert same["ci95_low"] == pytest.approx(1.0, abs=1e-5) and same["ci95_high"] == pytest.approx(
        1.0, abs=1e-5
    )

    noise = pairwise_ms_ssim(torch.rand(4, 1, 16, 16, 16, generator=g), batch_size=4)
    assert noise["mean"] < 0.5
    assert noise["ci95_low"] <= noise["mean"] <= noise["ci95_high"]
    assert noise["settings"] == {**ms_ssim_settings((16, 16, 16)), "data_range": 1.0}


def test_pairwise_ms_ssim_subsets_pairs_with_a_seed():
    vols = torch.rand(5, 1, 12, 12, 12, generator=torch.Generator().manual_seed(2))
    a = pairwise_ms_ssim(vols, max_pairs=4, seed=3)
    b = pairwise_ms_ssim(vols, max_pairs=4, seed=3)
    every = pairwise_ms_ssim(vols, max_pairs=100)
    assert a["n_pairs"] == 4 and a["values"] == b["values"]
    assert every["n_pairs"] == 10
    assert all(min(abs(v - w) for w in every["values"]) < 1e-6 for v in a["values"])


def test_pairwise_ms_ssim_input_errors():
    with pytest.raises(InputError, match="at least 2 volumes"):
        pairwise_ms_ssim(torch.rand(1, 1, 16, 16, 16))
    with pytest.raises(InputError, match="data_range"):
        pairwise_ms_ssim(torch.rand(2, 1, 16, 16, 16) * 1000.0)
    single = pairwise_ms_ssim(torch.rand(2, 1, 16, 16, 16) * 1000.0, data_range=1000.0)
    assert single["n_pairs"] == 1 and single["ci95_low"] is None


def test_nearest_correlation_against_numpy_corrcoef():
    from medddpm.evaluation.metrics import nearest_correlation

    gen = torch.Generator().manual_seed(3)
    refs = torch.rand(5, 1, 6, 7, 8, generator=gen)
    vols = torch.cat(
        [
            refs[2:3] * 3 + 1 + 0.05 * torch.rand(1, 1, 6, 7, 8, generator=gen),
            torch.rand(3, 1, 6, 7, 8, generator=gen),
        ]
    )
    r = np.corrcoef(vols.flatten(1).numpy(), refs.flatten(1).numpy())[: len(vols), len(vols) :]
    np.testing.assert_allclose(nearest_correlation(vols, refs), r.max(axis=1), rtol=1e-10)
    assert nearest_correlation(vols, refs)[0] > 0.99  # a rescaled copy of reference 2
