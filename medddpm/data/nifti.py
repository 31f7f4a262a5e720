"""Geometry and files: reading and checking scans, the affine of outputs, writing volumes atomically.

Conventions. Arrays handed around inside medddpm are in RAS voxel order, [D, H, W] = [R, A, S]:
the first axis runs left -> right, the second posterior -> anterior, the third inferior -> superior.
Written files carry a diagonal RAS affine with the training voxel size and the origin at the volume
centre, in both qform and sform (code 1, scanner), so nibabel, SimpleITK and viewers agree.
"""

from __future__ import annotations

import warnings
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from medddpm.errors import InputError
from medddpm.output_folder import atomic_path

NIFTI_SUFFIXES = (".nii", ".nii.gz")
OUTPUT_FORMATS = ("nii.gz", "nii", "nrrd", "mha")


def is_nifti(path: Path) -> bool:
    name = path.name.lower()
    return name.endswith(NIFTI_SUFFIXES) and not name.startswith(".")


@dataclass
class ScanInfo:
    """What a scan is, as read from its header and voxels (spacing in mm, RAS order after reorienting)."""

    path: str
    shape: list[int]
    spacing: list[float]
    axcodes: str
    dtype: str
    intensity_min: float
    intensity_max: float
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def _is_sheared(affine: np.ndarray, tol: float = 1e-3) -> bool:
    """True when the voxel axes are not orthogonal (a shear that RAS reorientation cannot undo)."""
    m = affine[:3, :3]
    norms = np.linalg.norm(m, axis=0)
    if np.any(norms == 0):
        return True
    r = m / norms
    return bool(np.abs(r.T @ r - np.eye(3)).max() > tol)


def _ras_spacing(img: nib.Nifti1Image) -> list[float]:
    """Voxel sizes in the order of the RAS-reoriented array."""
    zooms = np.asarray(img.header.get_zooms()[:3], dtype=float)
    ornt = nib.orientations.io_orientation(img.affine)
    return [float(zooms[int(axis)]) for axis in np.argsort(ornt[:, 0])]


def read_scan(path: str | Path) -> tuple[nib.Nifti1Image, np.ndarray, ScanInfo]:
    """Open a NIfTI file, read every voxel and check it can be trained on.

    Returns the image, its voxels as float32 [X, Y, Z] in file order, and a summary. Raises
    InputError naming the file and the reason: unreadable or truncated, not 3D, a zero-size
    dimension, non-finite voxels, a sheared affine, or a constant (empty) volume.

    Intensity scaling (scl_slope, scl_inter) is applied as nibabel and MONAI apply it, so preflight
    sees the voxels training will see. A scl_slope of 0 means "no scaling" in the NIfTI-1 standard,
    and nibabel writes NaN there for unscaled data: both leave the stored values as they are. An
    infinite scl_slope, or a valid one with a non-finite scl_inter, is an error, and so is a scaling
    that turns finite stored values into non-finite voxels.
    """
    path = Path(path)
    try:
        img = nib.load(str(path))
    except FileNotFoundError:
        raise InputError("no such file", path) from None
    except nib.spatialimages.HeaderDataError as e:
        if "intercept" in str(e):  # nibabel: a valid scl_slope with a NaN or infinite scl_inter
            raise InputError(
                f"scl_inter is not finite while scl_slope is set, so every voxel would be non-finite "
                f"({_reason(e)})",
                path,
            ) from None
        raise InputError(f"not a readable NIfTI file ({_reason(e)})", path) from None
    except Exception as e:  # nibabel raises many types for bad headers
        raise InputError(f"not a readable NIfTI file ({_reason(e)})", path) from None
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise InputError(f"not a NIfTI image ({type(img).__name__})", path)
    shape = tuple(int(s) for s in img.shape)
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        kind = "a true 4D series" if len(shape) == 4 else f"{len(shape)}D"
        raise InputError(f"not a 3D volume: shape {tuple(img.shape)} is {kind}", path)
    if min(shape) == 0:
        raise InputError(f"zero-size dimension in shape {shape}", path)
    notes = []
    raw_slope = _raw_scl_slope(img, path)
    if np.isinf(raw_slope):  # nibabel would ignore it; applied, it would make every voxel infinite
        raise InputError(f"scl_slope is {raw_slope:g}: scaling would make every voxel non-finite", path)
    if _is_sheared(img.affine):
        raise InputError("sheared affine: voxel axes are not orthogonal, cannot reorient to RAS", path)
    qform, qcode = img.get_qform(coded=True)
    sform, scode = img.get_sform(coded=True)
    if qcode and scode and not np.allclose(qform, sform, atol=1e-3):
        notes.append("qform and sform disagree; using sform")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            data = np.asarray(img.dataobj, dtype=np.float32).reshape(shape)
    except (EOFError, OSError, ValueError, zlib.error, MemoryError) as e:
        raise InputError(f"truncated or unreadable voxel data ({_reason(e)})", path) from None
    finite = np.isfinite(data)
    if not finite.all():
        bad = int(data.size - finite.sum())
        slope, inter = float(img.dataobj.slope), float(img.dataobj.inter)
        if (slope, inter) != (1.0, 0.0) and np.isfinite(np.asarray(img.dataobj.get_unscaled())).all():
            raise InputError(
                f"{bad} voxels are NaN or infinite after scaling by scl_slope={slope:g}, "
                f"scl_inter={inter:g} (the stored values are finite: the header's scaling is wrong)",
                path,
            )
        raise InputError(f"{bad} voxels are NaN or infinite", path)
    lo, hi = float(data.min()), float(data.max())
    if lo == hi:
        raise InputError(f"empty volume: every voxel equals {lo:g}", path)
    info = ScanInfo(
        path=str(path),
        shape=list(shape),
        spacing=_ras_spacing(img),
        axcodes="".join(nib.aff2axcodes(img.affine)),
        dtype=str(img.get_data_dtype()),
        intensity_min=lo,
        intensity_max=hi,
        warnings=notes,
    )
    return img, data, info


def _raw_scl_slope(img: nib.Nifti1Image, path: Path) -> float:
    """scl_slope as stored in the file (nibabel resets the loaded header's scaling fields)."""
    with nib.openers.ImageOpener(str(path)) as f:
        raw = img.header_class.from_fileobj(f, check=False)
    return float(raw["scl_slope"])


def _reason(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:200]


# ---------------------------------------------------------------------------------------------
# Outputs


def output_affine(spacing: tuple[float, float, float], shape: tuple[int, int, int]) -> np.ndarray:
    """Diagonal RAS affine with voxel size ``spacing`` (mm) and the volume centre at the origin."""
    s = np.asarray(spacing, dtype=float)
    affine = np.diag([*s, 1.0])
    affine[:3, 3] = -s * (np.asarray(shape, dtype=float) - 1) / 2
    return affine


def write_volume(
    volume: np.ndarray,
    path: str | Path,
    spacing: tuple[float, float, float],
    dtype: np.dtype | type = np.float32,
) -> Path:
    """Write a RAS-ordered [D, H, W] volume atomically as NIfTI (.nii/.nii.gz), NRRD or MHA.

    The file's geometry is ``output_affine(spacing, volume.shape)`` in every format.
    """
    path = Path(path)
    volume = np.asarray(volume)
    if np.issubdtype(np.dtype(dtype), np.integer):
        info = np.iinfo(dtype)
        volume = np.clip(np.rint(volume), info.min, info.max)
    volume = volume.astype(dtype)
    affine = output_affine(spacing, volume.shape)
    with atomic_path(path) as tmp:
        if path.name.endswith((".nii", ".nii.gz")):
            img = nib.Nifti1Image(volume, affine)
            img.set_qform(affine, code=1)
            img.set_sform(affine, code=1)
            img.header.set_xyzt_units("mm")
            nib.save(img, str(tmp))
        else:
            import SimpleITK as sitk

            # SimpleITK: array order [z, y, x], physical space LPS.
            image = sitk.GetImageFromArray(np.ascontiguousarray(volume.transpose(2, 1, 0)))
            image.SetSpacing([float(s) for s in spacing])
            origin = affine[:3, 3]
            image.SetOrigin([float(-origin[0]), float(-origin[1]), float(origin[2])])
            image.SetDirection([-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0])
            sitk.WriteImage(image, str(tmp), useCompression=True)
    return path
