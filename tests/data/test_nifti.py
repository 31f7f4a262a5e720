import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from nibabel.testing import data_path

from medddpm.data.nifti import output_affine, read_scan, write_volume
from medddpm.errors import InputError
from tests.conftest import write_nifti

ANATOMICAL = Path(data_path) / "anatomical.nii"  # LAS, big-endian int16, 2 mm


def test_reads_shipped_las_big_endian_volume():
    _, data, info = read_scan(ANATOMICAL)
    assert info.axcodes == "LAS"
    assert info.dtype == ">i2"
    assert info.shape == [33, 41, 25]
    assert info.spacing == [2.0, 2.0, 2.0]
    assert data.dtype == np.float32 and info.intensity_max > info.intensity_min


def test_spacing_is_reported_in_ras_order(tmp_path: Path):
    # voxel axes permuted: file axis 0 runs along S, axis 1 along R, axis 2 along A
    affine = np.array([[0, 2.0, 0, 0], [0, 0, 3.0, 0], [4.0, 0, 0, 0], [0, 0, 0, 1]])
    path = write_nifti(tmp_path / "p.nii.gz", np.random.rand(5, 6, 7).astype(np.float32), affine=affine)
    info = read_scan(path)[2]
    assert info.axcodes == "SRA"
    assert info.spacing == [2.0, 3.0, 4.0]


@pytest.mark.parametrize(
    "make, reason",
    [
        (lambda p: p.write_text("not an image"), "not a readable NIfTI"),
        (lambda p: write_nifti(p, np.random.rand(6, 6)), "not a 3D volume"),
        (lambda p: write_nifti(p, np.random.rand(6, 6, 6, 3)), "true 4D"),
        (lambda p: write_nifti(p, np.full((6, 6, 6), np.nan, np.float32)), "NaN or infinite"),
        (lambda p: write_nifti(p, np.ones((6, 6, 6), np.float32)), "empty volume"),
        (
            lambda p: write_nifti(
                p,
                np.random.rand(6, 6, 6),
                affine=np.array([[2, 1.0, 0, 0], [0, 2, 0, 0], [0, 0, 2, 0], [0, 0, 0, 1]]),
            ),
            "sheared",
        ),
    ],
)
def test_bad_scans_are_rejected_with_reason(tmp_path: Path, make, reason):
    path = tmp_path / "bad.nii.gz"
    make(path)
    with pytest.raises(InputError, match=reason) as e:
        read_scan(path)
    assert str(path) in str(e.value)


def test_truncated_gzip_is_rejected(tmp_path: Path):
    good = write_nifti(tmp_path / "good.nii.gz", np.random.rand(16, 16, 16).astype(np.float32))
    raw = good.read_bytes()
    bad = tmp_path / "cut.nii.gz"
    bad.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(InputError, match="truncated|not a readable"):
        read_scan(bad)
    # an uncompressed file whose header claims more voxels than it holds
    full = gzip.decompress(raw)
    short = tmp_path / "short.nii"
    short.write_bytes(full[: len(full) - 100])
    with pytest.raises(InputError, match="truncated|not a readable"):
        read_scan(short)


def test_singleton_fourth_dimension_is_3d(tmp_path: Path):
    path = write_nifti(tmp_path / "t.nii.gz", np.random.rand(6, 7, 8, 1).astype(np.float32))
    assert read_scan(path)[2].shape == [6, 7, 8]


def test_output_affine_centres_origin():
    affine = output_affine((2.0, 2.5, 3.0), (10, 20, 30))
    centre = affine @ np.array([4.5, 9.5, 14.5, 1.0])
    np.testing.assert_allclose(centre[:3], 0, atol=1e-9)
    np.testing.assert_allclose(np.diag(affine)[:3], [2.0, 2.5, 3.0])


@pytest.mark.parametrize("fmt", ["nii.gz", "nii", "nrrd", "mha"])
def test_written_geometry_agrees_in_nibabel_and_simpleitk(tmp_path: Path, fmt):
    volume = np.random.default_rng(0).random((10, 12, 14)).astype(np.float32)
    path = write_volume(volume, tmp_path / f"v.{fmt}", spacing=(2.0, 2.5, 3.0))
    image = sitk.ReadImage(str(path))
    assert image.GetSpacing() == pytest.approx((2.0, 2.5, 3.0))
    np.testing.assert_allclose(sitk.GetArrayFromImage(image).transpose(2, 1, 0), volume)
    # index (0, 0, 0) lies at the same physical point in both libraries (SimpleITK is LPS)
    lps = np.array(image.TransformIndexToPhysicalPoint((0, 0, 0)))
    ras = output_affine((2.0, 2.5, 3.0), volume.shape)[:3, 3]
    np.testing.assert_allclose(lps * [-1, -1, 1], ras, atol=1e-6)
    if fmt.startswith("nii"):
        img = nib.load(str(path))
        assert nib.aff2axcodes(img.affine) == ("R", "A", "S")
        assert img.get_qform(coded=True)[1] == 1 and img.get_sform(coded=True)[1] == 1
        np.testing.assert_allclose(img.header.get_zooms(), (2.0, 2.5, 3.0))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temporary file left behind"


def test_int16_output_rounds_and_clips(tmp_path: Path):
    path = write_volume(np.array([[[1.6, -40000.0, 40000.0]]]), tmp_path / "v.nii.gz", (1, 1, 1), np.int16)
    np.testing.assert_array_equal(np.asarray(nib.load(str(path)).dataobj), [[[2, -32768, 32767]]])
