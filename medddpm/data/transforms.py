"""From a folder of NIfTI scans to cached training batches [B, 1, D, H, W] in [-1, 1].

discover_scans -> preflight (every file read and checked) -> MONAI transforms -> cache.
The same transforms serve training, evaluation (``medddpm evaluate --run``) and the demo, so real
and synthetic volumes are always compared at the same size, orientation and intensity scale.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from monai.data import CacheDataset, Dataset, PersistentDataset
from monai.transforms import (
    Compose,
    CropForegroundd,
    EnsureChannelFirstd,
    EnsureTyped,
    LoadImaged,
    Orientationd,
    Resized,
    ResizeWithPadOrCropd,
    ScaleIntensityRange,
    ScaleIntensityRanged,
    ScaleIntensityRangePercentiles,
    ScaleIntensityRangePercentilesd,
    Spacingd,
)
from monai.transforms.utils_pytorch_numpy_unification import percentile
from monai.utils import convert_to_tensor

from medddpm.config import DataConfig
from medddpm.data.nifti import ScanInfo

BACKGROUND = -1.0
"""Model-space value of air / background after intensity mapping; padding uses it too."""


RAS_AXIS = {"L": 0, "R": 0, "P": 1, "A": 1, "I": 2, "S": 2}

SPACING_TOLERANCE = 0.05
"""Relative spread of the scans' learnt voxel sizes above which training warns (anatomy at mixed scales)."""


@dataclass(frozen=True)
class OutputGeometry:
    """The voxel size generated volumes are written with, and the one each training scan was learnt at.

    A scan is learnt at the voxel size it has when it reaches the model: with ``data.resize:
    pad_crop`` that is ``data.spacing`` or its own voxel size; with ``resize`` it is the field of
    view it reaches the resize step with, divided by ``data.image_size`` (so a 1 mm 256³ scan
    resized to 64³ is learnt at 4 mm). Samples get ``data.spacing`` when pad_crop keeps it, else
    the median of the scans' voxel sizes, axis by axis.
    """

    spacing: tuple[float, float, float]
    per_scan: tuple[tuple[float, float, float], ...]

    def spread(self) -> float:
        """Largest relative difference between the scans' voxel sizes along one axis (0: all equal)."""
        if not self.per_scan:
            return 0.0
        sizes = np.asarray(self.per_scan, dtype=float)
        return float((sizes.max(axis=0) / sizes.min(axis=0) - 1.0).max())

    def warning(self) -> str | None:
        """A plain-text warning when the scans were learnt at voxel sizes that differ by over 5%."""
        if self.spread() <= SPACING_TOLERANCE:
            return None
        sizes = np.asarray(self.per_scan, dtype=float)
        ranges = " x ".join(f"{lo:.3g}-{hi:.3g}" for lo, hi in zip(sizes.min(0), sizes.max(0), strict=True))
        return (
            f"the training scans are learnt at voxel sizes from {ranges} mm (differing by up to "
            f"{100 * self.spread():.0f}%), so the model sees anatomy at mixed scales and samples are "
            f"written at the median; set data.spacing (with data.resize: pad_crop) to give every scan "
            f"one voxel size"
        )


def output_geometry(cfg: DataConfig, scans: Sequence[ScanInfo]) -> OutputGeometry:
    """The voxel size (mm, RAS) of generated volumes and of each training scan as the model learnt it.

    With ``resize`` and ``foreground_crop`` or ``data.spacing``, each scan is read again through the
    transforms that come before the resize step, to measure the field of view it reaches it with.
    """
    per_scan = tuple(_learnt_voxel_size(cfg, s) for s in scans)
    if cfg.resize == "pad_crop" and cfg.spacing is not None:
        spacing = tuple(float(s) for s in cfg.spacing)
    else:
        spacing = tuple(float(statistics.median(v[i] for v in per_scan)) for i in range(3))
    return OutputGeometry(spacing, per_scan)


def _learnt_voxel_size(cfg: DataConfig, scan: ScanInfo) -> tuple[float, float, float]:
    if cfg.resize == "pad_crop":
        return tuple(float(s) for s in (cfg.spacing if cfg.spacing is not None else scan.spacing))
    if cfg.spacing is None and not cfg.foreground_crop:
        shape = [0, 0, 0]  # the file's shape in RAS axis order
        for n, code in zip(scan.shape, scan.axcodes, strict=True):
            shape[RAS_AXIS[code]] = n
        fov = np.asarray(shape, dtype=float) * np.asarray(scan.spacing, dtype=float)
    else:
        x = Compose(_steps_before_sizing(cfg))({"image": scan.path})["image"]
        fov = np.asarray(x.shape[1:], dtype=float) * np.asarray(x.pixdim, dtype=float)
    return tuple(float(f / n) for f, n in zip(fov, cfg.image_size, strict=True))


def _steps_before_sizing(cfg: DataConfig, label: bool = False, image: bool = True) -> list:
    """Load, RAS, spacing, intensity and foreground crop. ``label``: also key "label" (a label map
    on the image's grid), resampled with nearest neighbour; ``image`` False: the label alone (a mask
    to sample with; no foreground crop, which needs the image)."""
    keys = (["image"] if image else []) + (["label"] if label else [])
    modes = [{"image": "bilinear", "label": "nearest"}[k] for k in keys]
    steps: list = [
        LoadImaged(keys, reader="NibabelReader", image_only=True),
        EnsureChannelFirstd(keys),
        Orientationd(keys, axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S"))),
    ]
    if cfg.spacing is not None:
        steps.append(Spacingd(keys, pixdim=cfg.spacing, mode=modes, padding_mode="border"))
    if not image:
        return steps
    if cfg.modality == "ct":
        steps.append(ScaleIntensityRanged(["image"], cfg.a_min, cfg.a_max, -1.0, 1.0, clip=True))
    else:
        steps.append(
            ScalePercentilesd(["image"], cfg.lower_percentile, cfg.upper_percentile, -1.0, 1.0, clip=True)
        )
    if cfg.foreground_crop:
        steps.append(CropForegroundd(keys, source_key="image", select_fn=lambda x: x > BACKGROUND))
    return steps


def quantile_like_torch(x: torch.Tensor, q: float) -> torch.Tensor:
    """``torch.quantile(x, q)`` (linear interpolation) bit for bit, by selection instead of a full sort.

    torch sorts every value to read two of them; ``np.partition`` finds the two order statistics in
    linear time (about 20x faster for a 64³ volume). The arithmetic is torch's own, in ``x``'s dtype:
    rank = q * (n - 1), the values at floor(rank) and ceil(rank), ``torch.lerp`` between them by
    rank - floor(rank). Finite values only (medddpm.data.nifti rejects scans with NaN or inf).
    """
    flat = x.detach().reshape(-1)
    n = flat.numel()
    rank = torch.tensor(q, dtype=flat.dtype) * (n - 1)
    below, above = int(rank), int(torch.ceil(rank))
    values = np.partition(flat.cpu().numpy(), [below, above])
    low = torch.tensor(values[below], dtype=flat.dtype)
    high = torch.tensor(values[above], dtype=flat.dtype)
    return torch.lerp(low, high, rank - below).to(x.device)


class ScalePercentiles(ScaleIntensityRangePercentiles):
    """MONAI's ScaleIntensityRangePercentiles with the same two percentiles found by selection.

    For tensors MONAI computes percentiles with ``torch.quantile`` (a full sort; arrays above a million
    values go to ``np.percentile``), twice per volume: that was most of the time of loading a scan.
    ``quantile_like_torch`` returns the identical values (tests compare the outputs bit for bit);
    whatever MONAI would not send to ``torch.quantile`` still goes through MONAI's ``percentile``.
    """

    def _percentile(self, img, p: float):
        if isinstance(img, torch.Tensor) and img.numel() <= 1_000_000 and img.dtype.is_floating_point:
            return quantile_like_torch(img, float(np.float64(p) / 100.0))
        return percentile(img, p)

    def _normalize(self, img):
        if self.relative:
            return super()._normalize(img)
        a_min, a_max = self._percentile(img, self.lower), self._percentile(img, self.upper)
        scale = ScaleIntensityRange(a_min, a_max, self.b_min, self.b_max, clip=self.clip, dtype=self.dtype)
        return convert_to_tensor(scale(img), track_meta=False)


class ScalePercentilesd(ScaleIntensityRangePercentilesd):
    """The dictionary form of ScalePercentiles (MONAI's ScaleIntensityRangePercentilesd, faster)."""

    def __init__(self, keys, lower: float, upper: float, b_min: float, b_max: float, clip: bool = False):
        super().__init__(keys, lower, upper, b_min, b_max, clip)
        self.scaler = ScalePercentiles(lower, upper, b_min, b_max, clip)


def build_transforms(cfg: DataConfig, label: bool = False, image: bool = True) -> Compose:
    """MONAI dictionary transforms on key "image": NIfTI path -> float32 tensor [1, D, H, W] in [-1, 1].

    ``label``: also key "label", a label map on the image's grid, through the same steps (nearest
    neighbour, padded with 0) so that it stays aligned: float32 [1, D, H, W] holding its integer
    values. ``image`` False: the label alone (``medddpm sample --masks``)."""
    keys = (["image"] if image else []) + (["label"] if label else [])
    modes = [{"image": "trilinear", "label": "nearest"}[k] for k in keys]
    steps = _steps_before_sizing(cfg, label, image)
    if cfg.resize == "resize":
        steps.append(Resized(keys, spatial_size=cfg.image_size, mode=modes))
    else:
        if image:
            steps.append(ResizeWithPadOrCropd(["image"], spatial_size=cfg.image_size, value=BACKGROUND))
        if label:
            steps.append(ResizeWithPadOrCropd(["label"], spatial_size=cfg.image_size, value=0))
    steps.append(EnsureTyped(keys, dtype=torch.float32, track_meta=False))
    return Compose(steps)


def build_dataset(
    cfg: DataConfig,
    files: Sequence[Path | str],
    cache_dir: Path | None = None,
    num_workers: int = 0,
    labels: Sequence[Path | str] | None = None,
) -> Dataset:
    """Preprocess once and cache: in memory (CacheDataset) or on disk (PersistentDataset in ``cache_dir``).
    ``labels``: each file's label map, preprocessed with it under key "label"."""
    items = [{"image": str(f)} for f in files]
    if labels is not None:
        items = [{**item, "label": str(lab)} for item, lab in zip(items, labels, strict=True)]
    transforms = build_transforms(cfg, label=labels is not None)
    if cfg.cache == "disk":
        if cache_dir is None:
            raise ValueError("data.cache=disk needs a cache folder")
        # weights_only: a cache file is only ever read back as tensors, never unpickled as objects.
        return PersistentDataset(items, transforms, cache_dir=cache_dir, weights_only=True)
    # copy_cache=False: no random transform follows the cache and training stacks items into a new
    # batch tensor, so the per-item deep copy MONAI makes by default would only copy each volume twice.
    return CacheDataset(
        items, transforms, cache_rate=1.0, num_workers=num_workers, progress=False, copy_cache=False
    )


# ---------------------------------------------------------------------------------------------
# Intensity units of outputs


@dataclass(frozen=True)
class IntensityMapping:
    """How model space [-1, 1] maps back to the units samples are written in.

    CT: the HU window [a_min, a_max] (samples in HU). MRI: per-volume percentiles were mapped to
    [-1, 1], which cannot be inverted to scanner units, so samples are written on [0, 1]
    (0 = the lower percentile, 1 = the upper one).
    """

    modality: str
    a_min: float = -1000.0
    a_max: float = 1000.0

    @classmethod
    def from_config(cls, cfg: DataConfig) -> IntensityMapping:
        return cls(cfg.modality, cfg.a_min, cfg.a_max)

    @property
    def units(self) -> str:
        return "HU" if self.modality == "ct" else "normalised [0, 1] (0.5/99.5 percentiles of each scan)"

    def to_output(self, x: torch.Tensor | np.ndarray) -> np.ndarray:
        x = np.clip(np.asarray(x, dtype=np.float32), -1.0, 1.0)
        unit = (x + 1.0) / 2.0
        if self.modality == "ct":
            return unit * (self.a_max - self.a_min) + self.a_min
        return unit
