"""Label maps end to end: train --labels, sample --masks (NAME_img / NAME_seg pairs), export-nnunet,
and the bad inputs of each (exit 2, one line, nothing written)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medddpm.cli.app import main
from medddpm.config import DataConfig
from medddpm.data.transforms import build_transforms
from medddpm.export.nnunet import REQUIRED_KEYS
from tests.conftest import write_nifti

AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])
TINY = ["--config", "tiny", "--image-size", "16", "--max-steps", "2", "--batch-size", "2",
        "--set", "train.preview_every=0", "--seed", "0"]  # fmt: skip


def cohort(root: Path, n: int = 4) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    for i in range(n):
        lab = np.zeros((16, 16, 16), np.int16)
        lab[3 + i : 10 + i, 4:11, 4:11] = 1 + i % 2
        lab[12:14] = 5
        write_nifti(root / "img" / f"case{i}.nii.gz", lab + rng.normal(0, 0.1, lab.shape), affine=AFFINE)
        write_nifti(root / "lab" / f"case{i}.nii.gz", lab, affine=AFFINE)
    return root / "img", root / "lab"


def run(args: list[str], capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as e:
        main(args)
    return e.value.code, capsys.readouterr().err


@pytest.fixture(scope="module")
def labelled_run(tmp_path_factory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("labelled")
    images, labels = cohort(root)
    main(["train", str(images), "--output", str(root / "run"), "--labels", str(labels), *TINY])
    return root, images, labels


def test_labels_follow_the_image_through_every_transform(tmp_path: Path):
    """A box drawn in both files lands on the same voxels after RAS, respacing and pad / resize."""
    affine = np.diag([-1.5, 1.0, 2.5, 1.0])  # LAS, anisotropic
    lab = np.zeros((20, 14, 9), np.int16)
    lab[5:12, 3:9, 2:6] = 3
    write_nifti(tmp_path / "i.nii.gz", np.where(lab > 0, 1.0, 0.0), affine=affine)
    write_nifti(tmp_path / "l.nii.gz", lab, affine=affine)
    for resize in ("pad_crop", "resize"):
        cfg = DataConfig(image_size=[16, 16, 16], spacing=[2.0, 2.0, 2.0], resize=resize, modality="ct",
                         a_min=0.0, a_max=1.0)  # fmt: skip
        out = build_transforms(cfg, label=True)(
            {"image": str(tmp_path / "i.nii.gz"), "label": str(tmp_path / "l.nii.gz")}
        )
        label = out["label"][0].numpy()
        assert set(np.unique(label)) == {0.0, 3.0}  # nearest neighbour: only the file's values
        inside = out["image"][0].numpy() > 0.0  # model space: 1 -> 1, 0 -> -1 (and in between at edges)
        agree = ((label == 3) == inside).mean()
        assert agree > 0.97, (resize, agree)


def test_run_records_the_label_set(labelled_run):
    root, _, _ = labelled_run
    assert json.loads((root / "run" / "dataset.json").read_text())["labels"]["values"] == [0, 1, 2, 5]
    meta = json.loads(next((root / "run" / "checkpoints").glob("step-*/meta.json")).read_text())
    assert meta["labels"]["values"] == [0, 1, 2, 5]


def test_sample_with_masks_writes_pairs_on_one_grid(labelled_run, tmp_path: Path):
    root, _, labels = labelled_run
    out = tmp_path / "out"
    args = ["sample", str(root / "run"), "--output", str(out), "--steps", "2", "--masks", str(labels)]
    main([*args, "--num", "6", "--mask-augment", "0.1", "--seed", "3"])
    names = [f"case{i}" for i in range(4)] + ["case0_1", "case1_1"]
    for name in names:
        img, seg = nib.load(out / f"{name}_img.nii.gz"), nib.load(out / f"{name}_seg.nii.gz")
        np.testing.assert_array_equal(img.affine, seg.affine)
        for key in ("dim", "pixdim", "qform_code", "sform_code", "srow_x", "srow_y", "srow_z", "xyzt_units"):
            np.testing.assert_array_equal(img.header[key], seg.header[key], err_msg=key)
        data = np.asarray(seg.dataobj)
        assert np.issubdtype(data.dtype, np.integer)
        mask = np.asarray(nib.load(labels / f"{name.split('_')[0]}.nii.gz").dataobj)
        assert set(np.unique(data)) <= set(np.unique(mask))  # augmented: some may leave the box
        sidecar = json.loads((out / f"{name}_img.json").read_text())
        assert sidecar["mask"].endswith(f"{name.split('_')[0]}.nii.gz") and "scale" in sidecar
    # Without augmentation the seg is the mask itself, value for value and voxel for voxel.
    plain = tmp_path / "plain"
    main([*args[:3], str(plain), *args[4:], "--num", "4"])
    for i in range(4):
        mask = np.asarray(nib.load(labels / f"case{i}.nii.gz").dataobj)
        np.testing.assert_array_equal(np.asarray(nib.load(plain / f"case{i}_seg.nii.gz").dataobj), mask)


def test_bad_label_inputs_exit_2_with_one_line_and_write_nothing(labelled_run, tmp_path: Path, capsys):
    root, images, labels = labelled_run
    bad = tmp_path / "bad"
    for i in range(4):
        shape = (16, 16, 15) if i == 2 else (16, 16, 16)
        write_nifti(bad / f"case{i}.nii.gz", np.zeros(shape, np.int16), affine=AFFINE)
    shifted = AFFINE.copy()
    shifted[0, 3] = 5.0
    moved = tmp_path / "moved"
    for i in range(4):
        write_nifti(
            moved / f"case{i}.nii.gz", np.zeros((16, 16, 16), np.int16), affine=shifted if i == 1 else AFFINE
        )
    fractional = tmp_path / "fractional"
    for i in range(4):
        write_nifti(
            fractional / f"case{i}.nii.gz", np.full((16, 16, 16), 0.5 if i == 3 else 0.0), affine=AFFINE
        )
    extra = tmp_path / "extra"
    for i in range(5):
        write_nifti(extra / f"case{i}.nii.gz", np.zeros((16, 16, 16), np.int16), affine=AFFINE)
    cases = {
        bad: "case2.nii.gz: label map shape",
        moved: "case1.nii.gz: label map affine differs",
        fractional: "case3.nii.gz: label values must be integers",
        extra: "case4.nii.gz: label map pairs with no scan",
    }
    for folder, message in cases.items():
        code, out = run(
            ["train", str(images), "--output", str(tmp_path / "run"), "--labels", str(folder), *TINY], capsys
        )
        assert code == 2 and message in out and len(out.strip().splitlines()) == 1, out
        assert not (tmp_path / "run").exists()
    # A mask with a value the model never saw; --masks on a run without labels is refused too.
    masks = tmp_path / "masks"
    write_nifti(masks / "m.nii.gz", np.full((16, 16, 16), 9, np.int16), affine=AFFINE)
    code, out = run(
        ["sample", str(root / "run"), "--output", str(tmp_path / "o"), "--num", "1", "--masks", str(masks)],
        capsys,
    )
    assert code == 2 and "m.nii.gz: label value 9 is not in the model's label set" in out, out
    assert not (tmp_path / "o").exists()
    code, out = run(
        ["sample", str(root / "run"), "--output", str(tmp_path / "o"), "--num", "1", "--mask-augment", "0.1"],
        capsys,
    )
    assert code == 2 and "--mask-augment needs --masks" in out and not (tmp_path / "o").exists()


def test_nnunet_export_of_real_and_synthetic_pairs(labelled_run, tmp_path: Path, capsys):
    root, images, labels = labelled_run
    synth = tmp_path / "synth"
    main(
        [
            "sample",
            str(root / "run"),
            "--output",
            str(synth),
            "--steps",
            "2",
            "--num",
            "2",
            "--masks",
            str(labels),
        ]
    )
    out = tmp_path / "Dataset501_Mixed"
    main(["export-nnunet", "--output", str(out), "--images", str(images), "--labels", str(labels),
          "--synthetic", str(synth), "--channel-name", "CT"])  # fmt: skip
    dataset = json.loads((out / "dataset.json").read_text())
    assert set(REQUIRED_KEYS) <= set(dataset)
    assert dataset["channel_names"] == {"0": "CT"} and dataset["file_ending"] == ".nii.gz"
    assert dataset["labels"] == {"background": 0, "label_1": 1, "label_2": 2, "label_5": 3}
    assert dataset["numTraining"] == 6 == len(list((out / "labelsTr").iterdir()))
    cases = sorted(p.name[: -len(".nii.gz")] for p in (out / "labelsTr").iterdir())
    assert cases == ["real_case0", "real_case1", "real_case2", "real_case3", "synth0_case0", "synth0_case1"]
    for case in cases:
        img = nib.load(out / "imagesTr" / f"{case}_0000.nii.gz")
        seg = nib.load(out / "labelsTr" / f"{case}.nii.gz")
        np.testing.assert_array_equal(img.affine, seg.affine)
        data = np.asarray(seg.dataobj)
        assert np.issubdtype(data.dtype, np.integer) and set(np.unique(data)) <= {0, 1, 2, 3}
    raw = np.asarray(nib.load(labels / "case1.nii.gz").dataobj)  # values 0, 2, 5 -> 0, 2, 3
    np.testing.assert_array_equal(np.asarray(nib.load(out / "labelsTr" / "real_case1.nii.gz").dataobj),
                                  np.select([raw == 2, raw == 5], [2, 3], 0))  # fmt: skip
    # Bad input: a synthetic folder without its seg file; nothing is written.
    (synth / "case1_seg.nii.gz").unlink()
    code, text = run(["export-nnunet", "--output", str(tmp_path / "x"), "--synthetic", str(synth)], capsys)
    assert (
        code == 2
        and "case1_img.nii.gz: no case1_seg.nii.gz beside it" in text
        and not (tmp_path / "x").exists()
    )
