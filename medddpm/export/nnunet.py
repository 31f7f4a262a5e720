"""``medddpm export-nnunet``: image / label pairs as an nnU-Net v2 raw dataset folder.

    OUT/imagesTr/CASE_0000.nii.gz   the image (one channel)
    OUT/labelsTr/CASE.nii.gz        its label map, values renumbered 0 .. K-1 (nnU-Net wants them
                                    consecutive), on the image's grid
    OUT/dataset.json                channel_names, labels {"background": 0, "label_V": k, ...},
                                    numTraining, file_ending (nnU-Net v2's required keys), plus
                                    medddpm_label_values (k -> the original value V) and
                                    medddpm_cases (each case's source files and kind)

Pairs come from real data (``--images DIR --labels DIR``, paired by name as ``train --labels``
pairs them) and from ``sample --masks`` folders (``--synthetic DIR``, NAME_img / NAME_seg), in any
mix. Cases are named real_NAME and synthK_NAME (K: the --synthetic folder's number). The smallest
label value across all pairs is "background" (0 in medddpm's label maps). Every pair is checked
(same shape and affine, integer labels) before anything is written; the folder is built beside
OUT and renamed into place.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from medddpm.data.labels import check_pair, match_labels, nifti_files, read_label_map, stem
from medddpm.errors import InputError
from medddpm.output_folder import NNUNET_FOLDER, atomic_folder, check_output

FILE_ENDING = ".nii.gz"
REQUIRED_KEYS = ("channel_names", "labels", "numTraining", "file_ending")
"""What nnU-Net v2's dataset.json must hold (nnunetv2.dataset_conversion.generate_dataset_json)."""


@dataclass(frozen=True)
class Pair:
    case: str
    image: Path
    label: Path
    kind: str  # "real" or "synthetic"


def real_pairs(images: Path, labels: Path) -> list[Pair]:
    """Scans below ``images`` with their label maps below ``labels`` (``match_labels``' pairing)."""
    scans = nifti_files(images)
    if not scans:
        raise InputError("holds no .nii / .nii.gz images", images)
    matched = match_labels(labels, scans, images)
    return [
        Pair(f"real_{_case_id(stem(s))}", s, lab, "real") for s, lab in zip(scans, matched.files, strict=True)
    ]


def synthetic_pairs(folder: Path, k: int) -> list[Pair]:
    """NAME_img / NAME_seg pairs of a ``sample --masks`` folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError("no such folder of synthetic pairs", folder)
    images = sorted(folder.glob("*_img.nii*"))
    if not images:
        raise InputError("holds no NAME_img.nii.gz files (a `sample --masks` folder?)", folder)
    pairs = []
    for image in images:
        name = stem(image)[: -len("_img")]
        segs = [p for p in folder.glob(f"{name}_seg.nii*") if stem(p) == f"{name}_seg"]
        if not segs:
            raise InputError(f"no {name}_seg.nii.gz beside it", image)
        pairs.append(Pair(f"synth{k}_{_case_id(name)}", image, segs[0], "synthetic"))
    return pairs


def _case_id(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", name)


def export_nnunet(
    out_dir: str | Path,
    *,
    images: str | Path | None = None,
    labels: str | Path | None = None,
    synthetic: Sequence[str | Path] = (),
    channel_name: str = "MRI",
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write the dataset folder (module docstring); returns its dataset.json. InputError, one line
    naming the file, for missing or unpaired inputs, mismatched geometry, non-integer labels, two
    cases with one name and an output folder that must not be touched; then nothing is written."""
    out_dir = Path(out_dir)
    if (images is None) != (labels is None):
        raise InputError("--images and --labels go together (real pairs)")
    pairs: list[Pair] = []
    if images is not None:
        pairs += real_pairs(Path(images), Path(labels))  # type: ignore[arg-type]
    for k, folder in enumerate(synthetic):
        pairs += synthetic_pairs(Path(folder), k)
    if not pairs:
        raise InputError("nothing to export: give --images with --labels, or --synthetic folders")
    seen: dict[str, Pair] = {}
    for p in pairs:
        if p.case in seen:
            raise InputError(f"two pairs make case {p.case} ({seen[p.case].image})", p.image)
        seen[p.case] = p
    inputs = [Path(p).resolve() for p in [images, labels, *synthetic] if p is not None]
    check_output(out_dir, NNUNET_FOLDER, overwrite=overwrite, inputs=inputs)
    values: set[int] = set()
    for p in pairs:
        values.update(int(v) for v in check_pair(p.image, p.label))
    ordered = sorted(values)
    index = {v: k for k, v in enumerate(ordered)}
    dataset = {
        "channel_names": {"0": channel_name},
        "labels": {("background" if k == 0 else f"label_{v}"): k for k, v in enumerate(ordered)},
        "numTraining": len(pairs),
        "file_ending": FILE_ENDING,
        "medddpm_label_values": {str(k): v for k, v in enumerate(ordered)},
        "medddpm_cases": [
            {"case": p.case, "kind": p.kind, "image": str(p.image), "label": str(p.label)} for p in pairs
        ],
    }
    with atomic_folder(out_dir) as tmp:
        (tmp / "imagesTr").mkdir()
        (tmp / "labelsTr").mkdir()
        for p in pairs:
            img = nib.load(str(p.image))
            nib.save(img, str(tmp / "imagesTr" / f"{p.case}_0000{FILE_ENDING}"))
            data, _ = read_label_map(p.label)
            lut = np.vectorize(index.__getitem__, otypes=[np.int64])
            renumbered = lut(data).astype(np.uint8 if len(ordered) <= 256 else np.int16)
            out = nib.Nifti1Image(renumbered, img.affine, img.header)
            out.set_data_dtype(renumbered.dtype)
            out.header.set_slope_inter(1, 0)
            nib.save(out, str(tmp / "labelsTr" / f"{p.case}{FILE_ENDING}"))
        (tmp / "dataset.json").write_text(json.dumps(dataset, indent=2))
    return dataset
