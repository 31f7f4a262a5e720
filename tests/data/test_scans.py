import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from nibabel.testing import data_path

from medddpm.config import DataConfig
from medddpm.data.scans import discover_scans, preflight, write_dataset_json
from medddpm.data.transforms import IntensityMapping, build_dataset, build_transforms, output_geometry
from medddpm.errors import InputError
from tests.conftest import write_nifti

ANATOMICAL = Path(data_path) / "anatomical.nii"


def test_discovery_is_recursive_sorted_and_skips_other_files(tmp_path: Path):
    for name in ["b/2.nii.gz", "a.nii", "b/1.nii.gz", "notes.txt", ".hidden.nii.gz", "c/x.nii.bak"]:
        p = tmp_path / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("")
    assert [p.relative_to(tmp_path).as_posix() for p in discover_scans(tmp_path)] == [
        "a.nii",
        "b/1.nii.gz",
        "b/2.nii.gz",
    ]


def test_discovery_errors(tmp_path: Path):
    with pytest.raises(InputError, match="no such folder"):
        discover_scans(tmp_path / "missing")
    with pytest.raises(InputError, match="empty"):
        discover_scans(tmp_path)
    (tmp_path / "x.txt").write_text("")
    with pytest.raises(InputError, match="no .nii or .nii.gz"):
        discover_scans(tmp_path)


def test_transforms_reorient_las_to_ras():
    """anatomical.nii is LAS: after the transforms, the first axis must run left -> right."""
    cfg = DataConfig(image_size=(33, 41, 25), modality="mri")
    x = build_transforms(cfg)({"image": str(ANATOMICAL)})["image"]
    assert x.shape == (1, 33, 41, 25) and x.dtype == torch.float32
    raw = np.asarray(nib.load(str(ANATOMICAL)).dataobj).astype(np.float32)
    ras = raw[::-1]  # flip the L->R axis
    corr = np.corrcoef(x[0].numpy().ravel(), ras.ravel())[0, 1]
    corr_unflipped = np.corrcoef(x[0].numpy().ravel(), raw.ravel())[0, 1]
    assert corr > 0.99 and corr_unflipped < corr


def test_spacing_resamples_to_target(tmp_path: Path):
    path = write_nifti(
        tmp_path / "v.nii.gz", np.random.rand(10, 10, 10).astype(np.float32), spacing=(2, 2, 2)
    )
    cfg = DataConfig(image_size=(20, 20, 20), spacing=1.0, resize="pad_crop")
    x = build_transforms(cfg)({"image": str(path)})["image"]
    # 10 voxels at 2 mm span 20 mm -> ~19-20 voxels at 1 mm, so few padded (-1) planes
    assert (x[0, :, 10, 10] > -1).sum() >= 18


def test_intensity_mapping_ct_window_and_inverse(tmp_path: Path):
    hu = np.linspace(-1200, 1200, 16**3, dtype=np.float32).reshape(16, 16, 16)
    path = write_nifti(tmp_path / "ct.nii.gz", hu, spacing=(1, 1, 1))
    cfg = DataConfig(modality="ct", image_size=16, a_min=-1000, a_max=1000)
    x = build_transforms(cfg)({"image": str(path)})["image"]
    assert float(x.min()) == -1.0 and float(x.max()) == 1.0
    back = IntensityMapping.from_config(cfg).to_output(x[0])
    np.testing.assert_allclose(back, np.clip(hu, -1000, 1000), atol=0.5)


def test_mri_percentiles_map_to_unit_range(tmp_path: Path):
    data = np.random.default_rng(0).gamma(2.0, 50.0, (16, 16, 16)).astype(np.float32)
    data[0, 0, 0] = 1e6  # one bright outlier must not squash the range
    path = write_nifti(tmp_path / "mri.nii.gz", data, spacing=(1, 1, 1))
    x = build_transforms(DataConfig(image_size=16))({"image": str(path)})["image"]
    assert float(x.min()) == -1.0 and float(x.max()) == 1.0
    assert float(x.median()) > -0.8  # the bulk of the tissue keeps its contrast
    out = IntensityMapping.from_config(DataConfig()).to_output(x)
    assert out.min() >= 0 and out.max() <= 1


@pytest.mark.parametrize(("model_value", "hu"), [(-1.0, -500.0), (0.0, 100.0), (1.0, 700.0)])
def test_asymmetric_ct_window_maps_both_ways(tmp_path: Path, model_value: float, hu: float):
    """Window -500..700 HU (centre 100, not 0): the ends and the centre map to -1, 0, 1 and back."""
    cfg = DataConfig(modality="ct", image_size=8, a_min=-500, a_max=700)
    mapping = IntensityMapping.from_config(cfg)
    assert mapping.to_output(np.array([model_value]))[0] == pytest.approx(hu)
    volume = np.full((8, 8, 8), hu, np.float32)
    volume[0, 0, 0], volume[0, 0, 1] = -1000.0, 1500.0  # outside the window: clipped to its ends
    x = build_transforms(cfg)({"image": str(write_nifti(tmp_path / "ct.nii.gz", volume))})["image"][0]
    assert float(x[1, 1, 1]) == pytest.approx(model_value, abs=1e-6)
    assert (float(x[0, 0, 0]), float(x[0, 0, 1])) == (-1.0, 1.0)
    np.testing.assert_allclose(mapping.to_output(x)[1:], hu, atol=1e-3)


def test_mri_mapping_values_follow_the_scans_percentiles(tmp_path: Path):
    """Each voxel v is written as (v - p0.5) / (p99.5 - p0.5) of its scan, clipped to [0, 1]."""
    data = np.random.default_rng(1).gamma(2.0, 50.0, (12, 12, 12)).astype(np.float32) + 30.0
    path = write_nifti(tmp_path / "mri.nii.gz", data, spacing=(1, 1, 1))
    cfg = DataConfig(image_size=12)
    x = build_transforms(cfg)({"image": str(path)})["image"][0].numpy()
    out = IntensityMapping.from_config(cfg).to_output(x)
    lo, hi = np.percentile(data, [0.5, 99.5])
    expected = np.clip((data - lo) / (hi - lo), 0, 1)
    np.testing.assert_allclose(out, expected, atol=1e-5)
    assert 0.05 < float(np.median(out)) < 0.5  # not only the clipped ends: the bulk keeps its values


def test_pad_value_is_background(tmp_path: Path):
    path = write_nifti(
        tmp_path / "v.nii.gz", np.random.rand(8, 8, 8).astype(np.float32) + 1, spacing=(1, 1, 1)
    )
    x = build_transforms(DataConfig(image_size=16))({"image": str(path)})["image"]
    assert x.shape == (1, 16, 16, 16)
    assert float(x[0, 0, 0, 0]) == -1.0 and float(x[0, 8, 8, 8]) > -1.0


def test_singleton_4d_goes_through_transforms(tmp_path: Path):
    path = write_nifti(tmp_path / "t.nii.gz", np.random.rand(10, 12, 14, 1).astype(np.float32))
    assert build_transforms(DataConfig(image_size=16))({"image": str(path)})["image"].shape == (1, 16, 16, 16)


def test_preflight_collects_every_problem(scan_dir: Path):
    (scan_dir / "text.nii.gz").write_text("hello")
    write_nifti(scan_dir / "nan.nii.gz", np.full((6, 6, 6), np.nan, np.float32))
    write_nifti(scan_dir / "series.nii.gz", np.random.rand(6, 6, 6, 4).astype(np.float32))
    raw = (scan_dir / "subject_0.nii.gz").read_bytes()
    (scan_dir / "truncated.nii.gz").write_bytes(raw[: len(raw) // 2])
    result = preflight(discover_scans(scan_dir))
    assert len(result.valid) == 4
    reasons = {Path(s["path"]).name: s["reason"] for s in result.skipped}
    assert set(reasons) == {"text.nii.gz", "nan.nii.gz", "series.nii.gz", "truncated.nii.gz"}
    report = result.error_report()
    assert all(name in report for name in reasons) and "--skip-invalid" in report


def test_cached_dataset_and_dataset_json(scan_dir: Path, tmp_path: Path):
    cfg = DataConfig(image_size=16)
    files = discover_scans(scan_dir)
    result = preflight(files)
    ds = build_dataset(cfg, files)
    assert len(ds) == 4 and ds[0]["image"].shape == (1, 16, 16, 16)
    disk = build_dataset(cfg.model_copy(update={"cache": "disk"}), files, tmp_path / "cache")
    torch.testing.assert_close(disk[2]["image"], ds[2]["image"])
    assert any((tmp_path / "cache").iterdir())
    geometry = output_geometry(cfg, result.valid)
    assert geometry.spacing == (2.0, 2.5, 3.0) and geometry.warning() is None
    write_dataset_json(tmp_path / "dataset.json", cfg, result, scan_dir, geometry)
    record = json.loads((tmp_path / "dataset.json").read_text())
    assert record["n_used"] == 4 and record["output_spacing"] == [2.0, 2.5, 3.0]
    assert all(f["learnt_spacing"] == [2.0, 2.5, 3.0] for f in record["files"])
    assert record["files"][0]["axcodes"] == "RAS" and record["intensity"]["modality"] == "mri"
