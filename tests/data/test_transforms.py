"""Geometry of ``data.resize: resize``: the voxel size a scan is learnt at is its field of view over
``data.image_size``, and samples are written with it."""

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medddpm.config import DataConfig, build_config
from medddpm.data.nifti import read_scan
from medddpm.data.transforms import build_transforms, output_geometry
from medddpm.inference.sample_to_folder import sample_to_folder
from medddpm.training.loop import train
from tests.conftest import write_nifti


def ball_scan(path: Path, ras_shape, spacing, radius_mm: float, order=(0, 1, 2)) -> Path:
    """A bright ball of ``radius_mm`` (physical) centred in a dark volume, stored with its RAS axes in
    file order ``order`` (file axis i is RAS axis order[i])."""
    axes = [(np.arange(n) - (n - 1) / 2) * s for n, s in zip(ras_shape, spacing, strict=True)]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"))
    ras = np.where(np.sqrt((grid**2).sum(0)) <= radius_mm, 100.0, 0.0).astype(np.float32)
    affine = np.zeros((4, 4))
    affine[3, 3] = 1.0
    for file_axis, ras_axis in enumerate(order):
        affine[ras_axis, file_axis] = spacing[ras_axis]
    return write_nifti(path, np.transpose(ras, order), affine=affine)


def test_resize_writes_the_field_of_view_over_the_output_shape(tmp_path: Path):
    """48 x 24 x 8 voxels of 1 x 2 x 4 mm (a 48 x 48 x 32 mm field of view), stored as S, R, A in
    the file, resized to 16³: each output voxel is 3 x 3 x 2 mm, and a 24 mm ball spans 24 mm along
    every axis at that voxel size (the input's 1 x 2 x 4 mm would make it 8 x 16 x 48 mm)."""
    path = ball_scan(tmp_path / "v.nii.gz", (48, 24, 8), (1.0, 2.0, 4.0), 12.0, order=(2, 0, 1))
    info = read_scan(path)[2]
    assert info.axcodes == "SRA"
    cfg = DataConfig(image_size=16, resize="resize", modality="ct", a_min=0, a_max=100)
    geometry = output_geometry(cfg, [info])
    assert geometry.spacing == pytest.approx((3.0, 3.0, 2.0))
    assert geometry.warning() is None
    x = build_transforms(cfg)({"image": str(path)})["image"][0].numpy()
    inside = x > 0  # the ball: 100 HU -> +1, background 0 HU -> -1, trilinear edges in between
    for k in range(3):
        extent_mm = inside.any(axis=tuple(a for a in range(3) if a != k)).sum() * geometry.spacing[k]
        assert abs(extent_mm - 24.0) <= geometry.spacing[k] + 1e-6, (k, extent_mm)


def cube_scan(path: Path, shape, spacing, box) -> Path:
    """-1000 HU (air) with a box of soft tissue (40 HU) of ``box`` voxels in a corner region."""
    data = np.full(shape, -1000.0, np.float32)
    data[2 : 2 + box[0], 3 : 3 + box[1], 1 : 1 + box[2]] = 40.0
    return write_nifti(path, data, spacing=spacing)


def test_foreground_crop_then_resize_gives_each_scan_its_own_voxel_size(tmp_path: Path):
    """Cropped to its box, each scan reaches the resize step with the box as field of view: an 8 x 8 x
    8 box at 1 x 1 x 2 mm learnt at 8³ is 1 x 1 x 2 mm, a 16 x 12 x 8 one 2 x 1.5 x 2 mm; the scales
    differ by 100%, so training warns and advises data.spacing."""
    a = cube_scan(tmp_path / "a.nii.gz", (24, 24, 12), (1.0, 1.0, 2.0), (8, 8, 8))
    b = cube_scan(tmp_path / "b.nii.gz", (24, 24, 12), (1.0, 1.0, 2.0), (16, 12, 8))
    cfg = DataConfig(image_size=8, resize="resize", foreground_crop=True, modality="ct")
    geometry = output_geometry(cfg, [read_scan(a)[2], read_scan(b)[2]])
    assert geometry.per_scan == (pytest.approx((1.0, 1.0, 2.0)), pytest.approx((2.0, 1.5, 2.0)))
    assert geometry.spacing == pytest.approx((1.5, 1.25, 2.0))  # the median, axis by axis
    assert geometry.spread() == pytest.approx(1.0)
    assert "data.spacing" in geometry.warning() and "100%" in geometry.warning()
    # pad_crop keeps the voxel size: no mixed scales whatever the crop
    assert output_geometry(cfg.model_copy(update={"resize": "pad_crop"}), [read_scan(a)[2]]).spacing == (
        1.0,
        1.0,
        2.0,
    )


def test_resampled_then_resized_voxel_size_follows_the_resampled_field_of_view(tmp_path: Path):
    """data.spacing 2 mm then resize to 8³: a 40 x 20 x 20 mm scan is learnt at about 5 x 2.5 x 2.5 mm,
    not at data.spacing."""
    path = cube_scan(tmp_path / "v.nii.gz", (40, 20, 10), (1.0, 1.0, 2.0), (4, 4, 4))
    cfg = DataConfig(image_size=8, resize="resize", spacing=2.0, modality="ct")
    (size,) = output_geometry(cfg, [read_scan(path)[2]]).per_scan
    assert size == pytest.approx((5.0, 2.5, 2.5), rel=0.1)


def test_training_records_learnt_voxel_sizes_and_samples_carry_them(tmp_path: Path):
    """End to end: dataset.json keeps each scan's learnt voxel size, training warns about mixed
    scales, and a sampled NIfTI has the median learnt voxel size in its header."""
    scans = tmp_path / "scans"
    cube_scan(scans / "a.nii.gz", (24, 24, 12), (1.0, 1.0, 2.0), (16, 16, 8))
    cube_scan(scans / "b.nii.gz", (24, 24, 12), (1.0, 1.0, 2.0), (20, 20, 10))
    cfg = build_config(
        "tiny",
        [
            "train.max_steps=1",
            "data.resize=resize",
            "data.foreground_crop=true",
            "data.modality=ct",
            "sample.steps=2",
        ],
    )
    messages: list[str] = []
    train(cfg, scans, tmp_path / "run", log=messages.append)
    warnings = [m for m in messages if m.startswith("warning: ") and "data.spacing" in m]
    assert len(warnings) == 1, messages
    record = json.loads((tmp_path / "run" / "dataset.json").read_text())
    learnt = [f["learnt_spacing"] for f in record["files"]]
    assert learnt == [pytest.approx([1.0, 1.0, 1.0]), pytest.approx([1.25, 1.25, 1.25])]
    assert record["output_spacing"] == pytest.approx([1.125, 1.125, 1.125])
    assert {"shape", "spacing", "axcodes"} <= set(record["files"][0])  # the existing keys stay
    sample_to_folder(tmp_path / "run", tmp_path / "out", 1, seed=0)
    (written,) = sorted((tmp_path / "out").glob("*.nii.gz"))
    assert nib.load(str(written)).header.get_zooms()[:3] == pytest.approx((1.125, 1.125, 1.125))


@pytest.mark.parametrize("shape", [(1,), (2,), (7,), (1, 16, 16, 16), (1, 33, 20, 17), (1, 64, 64, 64)])
@pytest.mark.parametrize("q", [0.0, 0.005, 0.25, 0.5, 0.995, 1.0])
def test_quantile_by_selection_equals_torch_quantile_bit_for_bit(shape, q):
    import torch

    from medddpm.data.transforms import quantile_like_torch

    gen = torch.Generator().manual_seed(hash((shape, q)) % 2**31)
    x = torch.randn(shape, generator=gen) * 300 - 40
    x[..., ::3] = x.reshape(-1)[0]  # ties
    assert torch.equal(quantile_like_torch(x, q), torch.quantile(x, torch.tensor(q, dtype=x.dtype)))


def test_percentile_scaling_equals_monais_transform_bit_for_bit():
    import torch
    from monai.transforms import ScaleIntensityRangePercentilesd

    from medddpm.data.transforms import ScalePercentilesd

    gen = torch.Generator().manual_seed(0)
    for shape in [(1, 20, 24, 28), (1, 64, 64, 64), (1, 110, 100, 100)]:  # the last goes to np.percentile
        x = torch.rand(shape, generator=gen) ** 3 * 1200.0
        ours = ScalePercentilesd(["image"], 0.5, 99.5, -1.0, 1.0, clip=True)({"image": x.clone()})["image"]
        monai = ScaleIntensityRangePercentilesd(["image"], 0.5, 99.5, -1.0, 1.0, clip=True)(
            {"image": x.clone()}
        )
        assert torch.equal(torch.as_tensor(ours), torch.as_tensor(monai["image"]))
