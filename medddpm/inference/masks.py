"""Masks to sample with (``medddpm sample --masks masks/``): one scan drawn for each mask, written as a
NAME_img / NAME_seg pair on one voxel grid.

Each mask is read through the training label transforms (``build_transforms(label=True, image=False)``:
RAS, ``data.spacing`` with nearest neighbour, pad / crop or resize to ``data.image_size``; no
foreground crop, which needs a scan), so it reaches the network as training label maps did, and
the _seg file written is that map: the geometry of the _img file, the values of the mask (padding
adds 0). Sample i takes mask i mod M (M masks, sorted by path); NAME is the mask's name for the
first M samples and NAME_k for pass k = i // M after that.

``--mask-augment A`` (A in [0, 0.5]) changes each sample's mask before sampling, drawn from a
generator seeded with the sample's seed: an isotropic scale in [1 - A, 1 + A] and a shift of up to
A times the side along each axis, through MONAI's ``Affine`` with nearest neighbour (values stay
the mask's; what leaves the box is lost, what enters is 0).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medddpm.config import DataConfig
from medddpm.data.labels import check_values, nifti_files, read_label_map, stem
from medddpm.errors import InputError

MAX_AUGMENT = 0.5


@dataclass
class SampleMasks:
    """Each sample's mask on the model grid, its output NAME and where it came from."""

    maps: torch.Tensor
    """[num, 1, *image_size] float32 holding label values."""
    names: list[str]
    sources: list[dict[str, Any]]
    """Per sample: mask file, and the scale and shift drawn by --mask-augment."""
    folder: Path
    augment: float

    def recipe(self) -> dict[str, Any]:
        return {"folder": str(self.folder), "files": sorted({s["mask"] for s in self.sources}),
                "augment": self.augment}  # fmt: skip


def augment_map(label: torch.Tensor, amount: float, generator: torch.Generator) -> tuple[torch.Tensor, dict]:
    """label [1, *S] -> the same map scaled and shifted (module docstring), and the parameters drawn."""
    from monai.transforms import Affine

    u = torch.rand(1 + label.ndim - 1, generator=generator, dtype=torch.float64)
    scale = 1.0 + amount * (2 * float(u[0]) - 1)
    sides = label.shape[1:]
    shift = [amount * (2 * float(v) - 1) * n for v, n in zip(u[1:], sides, strict=True)]
    out, _ = Affine(
        scale_params=[scale] * len(sides), translate_params=shift, mode="nearest", padding_mode="zeros",
        image_only=False,
    )(label)  # fmt: skip
    return torch.as_tensor(out).float(), {
        "scale": round(scale, 6),
        "shift_voxels": [round(s, 4) for s in shift],
    }


def read_masks(
    folder: str | Path,
    num: int,
    cfg: DataConfig,
    label_values: Sequence[int],
    seed: int,
    augment: float = 0.0,
) -> SampleMasks:
    """Every sample's mask (module docstring). InputError, naming the file, for a folder without
    masks, a mask that is not a 3D integer map, and a value outside the model's label set."""
    from medddpm.data.transforms import build_transforms

    folder = Path(folder)
    if not 0.0 <= augment <= MAX_AUGMENT:
        raise InputError(f"--mask-augment must be between 0 and {MAX_AUGMENT}; got {augment:g}")
    files = nifti_files(folder)
    if not files:
        raise InputError("holds no .nii / .nii.gz masks", folder)
    transforms = build_transforms(cfg, label=True, image=False)
    grids = []
    for path in files:
        data, _ = read_label_map(path)
        check_values(data, label_values, path)
        try:
            grids.append(transforms({"label": str(path)})["label"])
        except Exception as e:  # MONAI wraps reader errors in RuntimeError
            raise InputError(f"cannot read the mask ({type(e).__name__})", path) from None
    maps, names, sources = [], [], []
    stems = [stem(p) for p in files]
    for i in range(num):
        k, m = divmod(i, len(files))
        label = grids[m]
        source: dict[str, Any] = {"mask": str(files[m])}
        if augment > 0:
            label, drawn = augment_map(label, augment, torch.Generator().manual_seed(seed + i))
            source.update(drawn)
        maps.append(label.round())
        names.append(stems[m] if k == 0 else f"{stems[m]}_{k}")
        sources.append(source)
    if len(set(names)) != len(names):
        raise InputError("two masks have the same name (NAME.nii and NAME.nii.gz?)", folder)
    return SampleMasks(torch.stack(maps), names, sources, folder, float(augment))


def seg_dtype(values: Sequence[int]) -> type:
    """The integer type _seg files are written in: int16 when the label set fits, else int32."""
    info = np.iinfo(np.int16)
    return np.int16 if info.min <= min(values) and max(values) <= info.max else np.int32
