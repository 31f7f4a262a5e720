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
    ScaleIntensityRanged,
    ScaleIntensityRangePercentilesd,
    Spacingd,
)

from medddpm.config import DataConfig
from medddpm.data.nifti import ScanInfo

BACKGROUND = -1.0
"""Model-space value of air / background after intensity mapping; padding uses it too."""


def output_spacing(cfg: DataConfig, scans: Sequence[ScanInfo]) -> tuple[float, float, float]:
    """Voxel size of generated volumes: ``data.spacing`` if set, else the median of the inputs (RAS)."""
    if cfg.spacing is not None:
        return tuple(float(s) for s in cfg.spacing)
    return tuple(float(statistics.median(s.spacing[i] for s in scans)) for i in range(3))


def build_transforms(cfg: DataConfig) -> Compose:
    """MONAI dictionary transforms on key "image": NIfTI path -> float32 tensor [1, D, H, W] in [-1, 1]."""
    keys = ["image"]
    steps: list = [
        LoadImaged(keys, reader="NibabelReader", image_only=True),
        EnsureChannelFirstd(keys),
        Orientationd(keys, axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S"))),
    ]
    if cfg.spacing is not None:
        steps.append(Spacingd(keys, pixdim=cfg.spacing, mode="bilinear", padding_mode="border"))
    if cfg.modality == "ct":
        steps.append(ScaleIntensityRanged(keys, cfg.a_min, cfg.a_max, -1.0, 1.0, clip=True))
    else:
        steps.append(
            ScaleIntensityRangePercentilesd(
                keys, cfg.lower_percentile, cfg.upper_percentile, -1.0, 1.0, clip=True
            )
        )
    if cfg.foreground_crop:
        steps.append(CropForegroundd(keys, source_key="image", select_fn=lambda x: x > BACKGROUND))
    if cfg.resize == "resize":
        steps.append(Resized(keys, spatial_size=cfg.image_size, mode="trilinear"))
    else:
        steps.append(ResizeWithPadOrCropd(keys, spatial_size=cfg.image_size, value=BACKGROUND))
    steps.append(EnsureTyped(keys, dtype=torch.float32, track_meta=False))
    return Compose(steps)


def build_dataset(
    cfg: DataConfig, files: Sequence[Path | str], cache_dir: Path | None = None, num_workers: int = 0
) -> Dataset:
    """Preprocess once and cache: in memory (CacheDataset) or on disk (PersistentDataset in ``cache_dir``)."""
    items = [{"image": str(f)} for f in files]
    transforms = build_transforms(cfg)
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
