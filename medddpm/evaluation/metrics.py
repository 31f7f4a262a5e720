"""Evaluation metrics as pure functions on arrays: Fréchet distance, MMD, PRDC and MS-SSIM diversity.

Feature-space metrics take features as [N, F] arrays (numpy or torch; computed in float64):

    fid_from_features   Fréchet distance between Gaussians fitted to real and synthetic features
                        (Heusel et al. 2017), guarded as pytorch-fid guards it.
    mmd                 unbiased MMD² (Gretton et al. 2012), RBF kernel with the median heuristic.
    prdc                precision, recall, density, coverage (Naeem et al. 2020).

Image-space diversity and likeness take volumes [N, 1, D, H, W]:

    pairwise_ms_ssim    mean MS-SSIM over pairs within one set (lower = more diverse), with the
                        kernel and number of scales chosen by ms_ssim_settings to fit the volume.
    nearest_correlation each volume's Pearson correlation with its most correlated reference volume
                        (the demo's "how like a training scan", with held-out scans as the baseline;
                        ``medddpm audit`` asks the same question properly, for memorisation).

What these numbers cannot say: FID and MMD depend on the feature network (values from different
networks are never comparable), FID is biased upwards for small N and its covariance is singular
when N <= F (see covariance_rank_deficient), and the MS-SSIM interval treats pairs as independent
although pairs sharing a volume are correlated, so it is optimistic.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from scipy import linalg, stats
from scipy.spatial.distance import cdist

from medddpm.errors import InputError

ArrayLike = np.ndarray | torch.Tensor

# Wang, Simoncelli & Bovik (2003): the exponents of the five scales, finest first.
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
MS_SSIM_MAX_KERNEL = 11  # the 11-voxel Gaussian window of Wang et al. (2004), MONAI's default
MS_SSIM_MIN_KERNEL = 3  # the smallest odd window that still has a neighbourhood
MS_SSIM_KERNEL_SIGMA = 1.5  # MONAI's default; kept for every kernel size so windows differ only in extent


def _features(x: ArrayLike, name: str) -> np.ndarray:
    """A feature set as a float64 [N, F] numpy array."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"{name} must be a 2D array [N, F], got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} contains non-finite values")
    return x


def _same_dim(real: np.ndarray, synth: np.ndarray) -> None:
    if real.shape[1] != synth.shape[1]:
        raise ValueError(f"feature sizes differ: real has {real.shape[1]}, synthetic has {synth.shape[1]}")


# --------------------------------------------------------------------------------------------------
# Fréchet distance
# --------------------------------------------------------------------------------------------------


def feature_statistics(features: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Mean [F] and covariance [F, F] (unbiased, ddof=1, as pytorch-fid) of features [N, F], float64."""
    x = _features(features, "features")
    if x.shape[0] < 2:
        raise InputError(f"a covariance needs at least 2 feature vectors, got {x.shape[0]}")
    return x.mean(axis=0), np.atleast_2d(np.cov(x, rowvar=False))


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, eps: float = 1e-6
) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2) (Dowson & Landau 1982):

        d² = ||mu1 - mu2||² + Tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^{1/2})

    Guarded as pytorch-fid: if the square root of the product is not finite (a near-singular
    product), eps·I is added to both covariances; an imaginary part from round-off is dropped when
    its diagonal is within 1e-3 of zero, and a larger one raises ValueError. Tiny negative results
    from round-off are returned as 0.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = (
        np.atleast_2d(np.asarray(sigma1, np.float64)),
        np.atleast_2d(np.asarray(sigma2, np.float64)),
    )
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
        raise ValueError(
            "mean and covariance shapes do not match: "
            f"{mu1.shape}, {sigma1.shape}, {mu2.shape}, {sigma2.shape}"
        )
    diff = mu1 - mu2

    covmean = linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"Fréchet distance: imaginary component {np.max(np.abs(covmean.imag)):.3g}")
        covmean = covmean.real

    d2 = float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))
    return max(d2, 0.0)


def fid_from_features(real: ArrayLike, synth: ArrayLike) -> float:
    """FID between real [N, F] and synthetic [M, F] features: frechet_distance of their mean/covariance."""
    real, synth = _features(real, "real features"), _features(synth, "synthetic features")
    _same_dim(real, synth)
    return frechet_distance(*feature_statistics(real), *feature_statistics(synth))


def covariance_rank_deficient(n_samples: int, n_features: int) -> bool:
    """True when a covariance from n_samples vectors of n_features is singular: rank <= N - 1 < F.

    That is N <= F, fewer samples than feature dimensions (plus one for the mean). FID is then
    computed through the eps·I guard and dominated by estimation bias; a report should say so.
    """
    return n_samples <= n_features


# --------------------------------------------------------------------------------------------------
# Maximum mean discrepancy
# --------------------------------------------------------------------------------------------------


def median_heuristic_bandwidth(real: ArrayLike, synth: ArrayLike) -> float:
    """Gretton et al. (2012), Sec. 8: median Euclidean distance between distinct points of the pooled sample.

    Returns 1.0 when every point coincides (then any bandwidth gives MMD² = 0).
    """
    pooled = np.concatenate([_features(real, "real features"), _features(synth, "synthetic features")])
    d = cdist(pooled, pooled)[np.triu_indices(len(pooled), k=1)]
    median = float(np.median(d)) if d.size else 0.0
    return median if median > 0 else 1.0


def mmd(
    real_features: ArrayLike,
    synth_features: ArrayLike,
    kernel: Literal["rbf", "linear"] = "rbf",
    bandwidth: float | None = None,
) -> float:
    """Unbiased MMD² between real [m, F] and synthetic [n, F] features (Gretton et al. 2012, Lemma 6, Eq. 3):

        MMD²_u = 1/(m(m-1)) Σ_{i≠j} k(x_i, x_j) + 1/(n(n-1)) Σ_{i≠j} k(y_i, y_j) - 2/(mn) Σ_{i,j} k(x_i, y_j)

    kernel "rbf": k(x, y) = exp(-||x - y||² / (2 σ²)) with σ = ``bandwidth``, by default the median
    heuristic (median_heuristic_bandwidth); MMD² then lies in about [0, 2]. kernel "linear":
    k(x, y) = x·y, which is what ``monai.metrics.MMDMetric`` computes without a ``y_mapping``.

    Written here rather than calling MONAI's MMDMetric because that one requires both sets to have
    the same shape (the same number of volumes) and offers only the linear kernel; on equal-size
    sets the linear kernel matches it (see tests). The estimator is unbiased, so it can be slightly
    negative when the distributions agree. Needs at least 2 vectors in each set.
    """
    x, y = _features(real_features, "real features"), _features(synth_features, "synthetic features")
    _same_dim(x, y)
    m, n = len(x), len(y)
    if m < 2 or n < 2:
        raise InputError(f"MMD needs at least 2 feature vectors in each set, got {m} real and {n} synthetic")

    if kernel == "linear":
        k_xx, k_yy, k_xy = x @ x.T, y @ y.T, x @ y.T
    elif kernel == "rbf":
        sigma = median_heuristic_bandwidth(x, y) if bandwidth is None else float(bandwidth)
        if not sigma > 0:
            raise ValueError(f"bandwidth must be positive, got {bandwidth}")
        gamma = 1.0 / (2.0 * sigma**2)
        k_xx = np.exp(-gamma * cdist(x, x, "sqeuclidean"))
        k_yy = np.exp(-gamma * cdist(y, y, "sqeuclidean"))
        k_xy = np.exp(-gamma * cdist(x, y, "sqeuclidean"))
    else:
        raise ValueError(f"unknown kernel {kernel!r}: use 'rbf' or 'linear'")

    term_xx = (k_xx.sum() - np.trace(k_xx)) / (m * (m - 1))
    term_yy = (k_yy.sum() - np.trace(k_yy)) / (n * (n - 1))
    term_xy = 2.0 * k_xy.sum() / (m * n)
    return float(term_xx + term_yy - term_xy)


# --------------------------------------------------------------------------------------------------
# Precision, recall, density, coverage
# --------------------------------------------------------------------------------------------------


def _kth_neighbour_radii(features: np.ndarray, nearest_k: int) -> np.ndarray:
    """Distance from each point to its k-th nearest neighbour in its own set (the point itself is the 0th)."""
    d = cdist(features, features)
    return np.partition(d, nearest_k, axis=1)[:, nearest_k]


def prdc(real: ArrayLike, synth: ArrayLike, nearest_k: int = 5) -> dict[str, float]:
    """Precision, recall, density and coverage of synthetic features [M, F] against real ones [N, F].

    Naeem et al. (2020), "Reliable Fidelity and Diversity Metrics for Generative Models", computed
    as their reference code (clovaai/generative-evaluation-prdc) does, with Euclidean distances:

        1. r_i = distance from real X_i to its k-th nearest real neighbour; s_j likewise in synth.
        2. precision = share of synthetic Y_j inside some real ball: ∃i d(X_i, Y_j) < r_i.
        3. recall    = share of real X_i inside some synthetic ball: ∃j d(X_i, Y_j) < s_j.
        4. density   = 1/(kM) Σ_j #{i : d(X_i, Y_j) < r_i}   (≈ 1 when the sets agree; can exceed 1).
        5. coverage  = share of real X_i whose nearest synthetic point lies inside its ball.

    Precision and density measure fidelity, recall and coverage diversity; all but density lie in
    [0, 1], higher is better. Each set needs more than nearest_k points.
    """
    x, y = _features(real, "real features"), _features(synth, "synthetic features")
    _same_dim(x, y)
    if nearest_k < 1:
        raise ValueError(f"nearest_k must be at least 1, got {nearest_k}")
    if min(len(x), len(y)) <= nearest_k:
        raise InputError(
            f"PRDC with nearest_k={nearest_k} needs at least {nearest_k + 1} volumes in each set, "
            f"got {len(x)} real and {len(y)} synthetic; lower nearest_k or add volumes"
        )

    real_radii = _kth_neighbour_radii(x, nearest_k)  # [N]
    synth_radii = _kth_neighbour_radii(y, nearest_k)  # [M]
    d_real_synth = cdist(x, y)  # [N, M]

    inside_real_ball = d_real_synth < real_radii[:, None]  # [N, M]
    precision = inside_real_ball.any(axis=0).mean()
    recall = (d_real_synth < synth_radii[None, :]).any(axis=1).mean()
    density = inside_real_ball.sum(axis=0).mean() / nearest_k
    coverage = (d_real_synth.min(axis=1) < real_radii).mean()
    return {
        "precision": float(precision),
        "recall": float(recall),
        "density": float(density),
        "coverage": float(coverage),
    }


# --------------------------------------------------------------------------------------------------
# MS-SSIM
# --------------------------------------------------------------------------------------------------


def _ms_ssim_fits(side: int, scales: int, kernel_size: int) -> bool:
    """Whether MONAI's compute_ms_ssim runs on a side of this length.

    Two conditions, both from monai/metrics/regression.py (MONAI 1.4-1.6):
    - its explicit check: side // max(1, scales - 1)² > kernel_size - 1;
    - the valid (unpadded) Gaussian convolution at the coarsest scale, after scales - 1 average
      poolings of 2: side // 2^(scales - 1) >= kernel_size.
    The first is the stricter one at 4 scales (9 > 8), the second at 2 scales (2 > 1).
    """
    return side // max(1, scales - 1) ** 2 >= kernel_size and side // 2 ** (scales - 1) >= kernel_size


def ms_ssim_settings(spatial_shape: Sequence[int]) -> dict:
    """MS-SSIM kernel and scales that fit volumes of this spatial shape (D, H, W).

    MONAI's defaults (5 scales, kernel 11) need every side >= 176 voxels. This picks the largest
    number of scales (1..5) for which some odd kernel in [3, 11] fits the smallest side, then the
    largest such kernel. The weights are the first ``num_scales`` of Wang et al.'s five, renormalised
    to sum to 1 (one scale is plain SSIM). Returns kernel_size, kernel_sigma, num_scales and weights,
    plain types ready for metrics.json.
    """
    shape = [int(s) for s in spatial_shape]
    side = min(shape)
    for scales in range(len(MS_SSIM_WEIGHTS), 0, -1):
        for kernel_size in range(MS_SSIM_MAX_KERNEL, MS_SSIM_MIN_KERNEL - 1, -2):
            if _ms_ssim_fits(side, scales, kernel_size):
                w = MS_SSIM_WEIGHTS[:scales]
                return {
                    "kernel_size": kernel_size,
                    "kernel_sigma": MS_SSIM_KERNEL_SIGMA,
                    "num_scales": scales,
                    "weights": [x / sum(w) for x in w],
                }
    raise InputError(
        f"volumes of shape {tuple(shape)} are too small for MS-SSIM: every side needs at least "
        f"{MS_SSIM_MIN_KERNEL} voxels"
    )


def ms_ssim(
    x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0, settings: dict | None = None
) -> torch.Tensor:
    """MS-SSIM of each pair (x[b], y[b]) of volumes [B, 1, D, H, W]: a [B] float tensor.

    Computed by ``monai.metrics.MultiScaleSSIMMetric`` with ``settings`` (by default
    ms_ssim_settings of the volume shape). ``data_range`` is the span of the intensity scale (1.0
    for [0, 1]); it sets SSIM's stability constants.
    """
    from monai.metrics import MultiScaleSSIMMetric

    if x.shape != y.shape or x.ndim != 5:
        raise ValueError(
            f"expected two [B, C, D, H, W] tensors of one shape, got {tuple(x.shape)}, {tuple(y.shape)}"
        )
    settings = settings or ms_ssim_settings(x.shape[2:])
    metric = MultiScaleSSIMMetric(
        spatial_dims=3,
        data_range=data_range,
        kernel_size=settings["kernel_size"],
        kernel_sigma=settings["kernel_sigma"],
        weights=tuple(settings["weights"]),
        reduction="none",
    )
    return metric(y_pred=x, y=y).reshape(-1)


def _pair_from_index(k: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Map linear indices 0 <= k < n(n-1)/2 to pairs (i, j), i < j, ordered as np.triu_indices(n, 1)."""
    rows = np.arange(n, dtype=np.int64)
    row_start = rows * (2 * n - rows - 1) // 2  # linear index of the pair (i, i + 1)
    i = np.searchsorted(row_start, k, side="right") - 1
    return i, k - row_start[i] + i + 1


def pairwise_ms_ssim(
    volumes: torch.Tensor,
    max_pairs: int | None = None,
    seed: int = 0,
    data_range: float = 1.0,
    batch_size: int = 8,
) -> dict:
    """Mean MS-SSIM over pairs within one set of volumes [N, 1, D, H, W] (lower = more diverse).

    Uses every pair i < j, or, when ``max_pairs`` is smaller than N(N-1)/2, that many distinct pairs
    drawn with numpy's generator seeded by ``seed``. Volumes are on an intensity scale spanning
    ``data_range`` (1.0 for [0, 1]). Pairs are compared ``batch_size`` at a time.

    Returns mean, ci95_low, ci95_high (a t-interval over the pair values; None with a single pair;
    optimistic because pairs sharing a volume are correlated), n_pairs, values (one per pair, in
    the order drawn) and settings (ms_ssim_settings plus data_range).
    """
    if volumes.ndim != 5 or volumes.shape[1] != 1:
        raise ValueError(f"expected volumes [N, 1, D, H, W], got shape {tuple(volumes.shape)}")
    n = volumes.shape[0]
    if n < 2:
        raise InputError(f"MS-SSIM diversity needs at least 2 volumes in a set, got {n}")
    lo, hi = float(volumes.min()), float(volumes.max())
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise InputError("MS-SSIM diversity: the volumes contain non-finite values")
    if hi - lo > data_range * (1 + 1e-6):
        raise InputError(
            f"MS-SSIM diversity: the volumes span [{lo:.4g}, {hi:.4g}], "
            f"wider than data_range={data_range:g}; "
            "rescale them to [0, 1] or pass the intensity span as data_range"
        )
    settings = ms_ssim_settings(volumes.shape[2:])

    total = n * (n - 1) // 2
    if max_pairs is None or max_pairs >= total:
        pairs = np.arange(total)
    else:
        if max_pairs < 1:
            raise InputError(f"max_pairs must be at least 1, got {max_pairs}")
        pairs = np.random.default_rng(seed).choice(total, size=max_pairs, replace=False)
    first, second = _pair_from_index(pairs, n)

    values: list[float] = []
    for start in range(0, len(pairs), batch_size):
        i = torch.as_tensor(first[start : start + batch_size], device=volumes.device)
        j = torch.as_tensor(second[start : start + batch_size], device=volumes.device)
        values += ms_ssim(volumes[i], volumes[j], data_range, settings).double().cpu().tolist()

    mean = float(np.mean(values))
    ci_low = ci_high = None
    if len(values) > 1:
        sem = float(stats.sem(values))
        if sem > 0:
            ci_low, ci_high = (float(v) for v in stats.t.interval(0.95, len(values) - 1, loc=mean, scale=sem))
        else:
            ci_low = ci_high = mean
    return {
        "mean": mean,
        "ci95_low": ci_low,
        "ci95_high": ci_high,
        "n_pairs": len(values),
        "values": values,
        "settings": {**settings, "data_range": float(data_range)},
    }


def nearest_correlation(volumes: torch.Tensor, references: torch.Tensor) -> np.ndarray:
    """[N]: each volume's Pearson correlation over all voxels with its most correlated reference volume.

    ``volumes`` [N, ...] and ``references`` [M, ...] of one shape; computed in float64 as one matrix
    product of standardised vectors.
    """
    a, b = volumes.flatten(1).double(), references.flatten(1).double()
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"volumes of {a.shape[1]} and {b.shape[1]} voxels cannot be correlated")
    a = (a - a.mean(1, keepdim=True)) / a.std(1, keepdim=True).clamp_min(1e-12)
    b = (b - b.mean(1, keepdim=True)) / b.std(1, keepdim=True).clamp_min(1e-12)
    return (a @ b.T / (a.shape[1] - 1)).max(dim=1).values.numpy()
