"""How close an autoencoder's reconstruction is to the scan it encoded: PSNR, SSIM, MAE and
correlation, in the data's own units (HU for CT, the [0, 1] scale for MRI).

    PSNR = 10 log10(R^2 / MSE)            R: the data range (a_max - a_min for CT, 1 for MRI)
    SSIM                                  MONAI's SSIMMetric (Wang et al. 2004), gaussian window
    MAE  = mean |x - x_hat|               in the data's units
    r    = Pearson correlation of x and x_hat over all voxels
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch

SSIM_KERNEL = 11
"""SSIM's gaussian window (Wang et al. 2004), shrunk to the volume's shortest side when smaller."""


@dataclass(frozen=True)
class Reconstruction:
    """One scan's reconstruction error, in the data's units."""

    psnr: float  # dB
    ssim: float  # [-1, 1], 1 = identical
    mae: float  # data units
    correlation: float  # Pearson r over voxels

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def ssim_kernel(shape: Sequence[int]) -> int:
    """The odd SSIM window that fits a volume of ``shape``: 11, or the largest odd size that fits."""
    k = min(SSIM_KERNEL, min(shape))
    return k if k % 2 else k - 1


def compare(original: np.ndarray, reconstruction: np.ndarray, data_range: float) -> Reconstruction:
    """PSNR, SSIM, MAE and correlation of two volumes [D, H, W] in the same units."""
    from monai.metrics import SSIMMetric

    x = np.asarray(original, dtype=np.float64)
    y = np.asarray(reconstruction, dtype=np.float64)
    mse = float(np.mean((x - y) ** 2))
    psnr = float("inf") if mse == 0 else float(10 * np.log10(data_range**2 / mse))
    metric = SSIMMetric(spatial_dims=3, data_range=data_range, win_size=ssim_kernel(x.shape))
    ssim = float(metric(torch.from_numpy(y)[None, None], torch.from_numpy(x)[None, None]).mean())
    xc, yc = x - x.mean(), y - y.mean()
    denominator = float(np.sqrt((xc**2).sum() * (yc**2).sum()))
    correlation = float((xc * yc).sum() / denominator) if denominator > 0 else float("nan")
    return Reconstruction(psnr, ssim, float(np.abs(x - y).mean()), correlation)


def summarise(results: Sequence[Reconstruction]) -> dict[str, float]:
    """The mean of each measure over scans (NaN without scans)."""
    keys = ("psnr", "ssim", "mae", "correlation")
    return {k: float(np.mean([getattr(r, k) for r in results])) if results else float("nan") for k in keys}
