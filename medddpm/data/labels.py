"""Label maps paired with scans (med-ddpm's paired use): ``train images/ --labels labels/``.

A scan pairs with the label file that has its path relative to the data folder, or else its file
name, each with or without the .nii / .nii.gz extension. Every scan needs one, every label file
must pair with a scan, and a pair must have the same shape and affine (the label map is drawn on
the scan's voxel grid). Label values must be integers. The label set, every value any map holds,
sorted, is saved in each checkpoint (meta.json ``labels``) and dataset.json; the network turns a
map into channels with it (``medddpm.models.conditioning.label_channels``).

Labels travel through the same MONAI transforms as their scan, under key "label", resampled with
nearest neighbour and padded with 0 (``medddpm.data.transforms.build_transforms``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from medddpm.errors import InputError

AFFINE_TOLERANCE = 1e-3
"""mm: largest difference between a scan's and its label map's affine entries."""


@dataclass(frozen=True)
class TrainingLabels:
    """Each usable scan's label file (in scan order) and the label set of all of them."""

    files: list[Path]
    values: tuple[int, ...]
    folder: Path

    def record(self) -> dict[str, Any]:
        """dataset.json's ``labels``: the folder and the label set."""
        return {"folder": str(self.folder), "values": list(self.values)}


def nifti_files(folder: Path) -> list[Path]:
    """The .nii / .nii.gz files below ``folder``, sorted; InputError when it is no folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError("no such folder of label maps", folder)
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name.endswith((".nii", ".nii.gz")))


def stem(path: Path | str) -> str:
    """A NIfTI file's name without .nii / .nii.gz."""
    name = Path(path).name
    for ext in (".nii.gz", ".nii"):
        if name.endswith(ext):
            return name[: -len(ext)]
    return name


def _keys(path: Path, folder: Path) -> list[str]:
    rel = path.relative_to(folder).as_posix()
    return [rel, str(Path(rel).parent / stem(path)), path.name, stem(path)]


def read_label_map(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """A label file's integer data [D, H, W] (a 4th axis of 1 dropped) and its affine."""
    try:
        img = nib.load(str(path))
        data = np.asarray(img.dataobj)
    except Exception as e:  # nibabel raises many kinds for a broken file
        raise InputError(f"cannot read the label map ({type(e).__name__}: {e})", path) from None
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise InputError(f"a label map must be 3D; got shape {data.shape}", path)
    if not np.all(np.isfinite(data)) or not np.array_equal(data, np.rint(data)):
        raise InputError("label values must be integers", path)
    return data.astype(np.int64), img.affine


def check_pair(scan: Path, label: Path) -> np.ndarray:
    """The label map's values after checking it against ``scan``: same shape, same affine."""
    data, affine = read_label_map(label)
    img = nib.load(str(scan))
    shape = tuple(img.shape[:3])
    if data.shape != shape:
        raise InputError(f"label map shape {data.shape} differs from its scan's {shape} ({scan})", label)
    if not np.allclose(affine, img.affine, atol=AFFINE_TOLERANCE):
        raise InputError(
            f"label map affine differs from its scan's ({scan}); resample it onto the scan", label
        )
    return np.unique(data)


def match_labels(folder: str | Path, scans: Sequence[Path], data_dir: str | Path) -> TrainingLabels:
    """Pair a folder of label maps with ``scans`` (module docstring) and find the label set.

    InputError, naming the file, for: a scan without a label map, a label map that pairs with no
    scan or with two, a pair whose shape or affine differ, a non-integer label.
    """
    folder, data_dir = Path(folder), Path(data_dir)
    labels = nifti_files(folder)
    if not labels:
        raise InputError("holds no .nii / .nii.gz label maps", folder)
    by_key: dict[str, Path] = {}
    for label in labels:
        for key in _keys(label, folder):
            by_key.setdefault(key, label)
    paired: list[Path] = []
    for scan in scans:
        scan = Path(scan)
        keys = _keys(scan, data_dir) if data_dir.is_dir() else [scan.name, stem(scan)]
        label = next((by_key[k] for k in keys if k in by_key), None)
        if label is None:
            raise InputError(f"no label map in {folder} for this scan", scan)
        if label in paired:
            raise InputError(f"label map pairs with two scans ({scan} and another)", label)
        paired.append(label)
    unused = [p for p in labels if p not in paired]
    if unused:
        raise InputError("label map pairs with no scan (same name expected)", unused[0])
    values: set[int] = set()
    for scan, label in zip(scans, paired, strict=True):
        values.update(int(v) for v in check_pair(Path(scan), label))
    return TrainingLabels(paired, tuple(sorted(values)), folder)


def check_values(data: np.ndarray, values: Sequence[int], source: Path) -> None:
    """InputError unless every value of ``data`` is in the label set ``values``."""
    extra = sorted(set(np.unique(data).astype(int).tolist()) - set(values))
    if extra:
        raise InputError(f"label value {extra[0]} is not in the model's label set {list(values)}", source)
