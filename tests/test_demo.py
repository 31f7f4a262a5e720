"""The demo: the cohort made from the MNI152 template, and the demo command end to end (tiny config)."""

import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medddpm.cli import main
from medddpm.data.nifti import read_scan
from medddpm.demo import INSTALL_HINT, make_cohort

pytest.importorskip("nilearn")


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as e:
        main(args)
        raise SystemExit(0)
    out = capsys.readouterr()
    return e.value.code or 0, out.out, out.err


def test_cohort_is_real_ras_nifti_with_the_stated_spacing_and_deterministic(tmp_path: Path):
    a = make_cohort(tmp_path / "a", n_subjects=4, image_size=16, seed=3)
    b = make_cohort(tmp_path / "b", n_subjects=4, image_size=16, seed=3)
    c = make_cohort(tmp_path / "c", n_subjects=2, image_size=16, seed=4)
    assert a.spacing == 12.0  # 192 mm field of view over 16 voxels
    assert [p.parent.name for p in a.train + a.heldout] == ["train"] * 3 + ["heldout"]
    for path in a.train + a.heldout:
        img = nib.load(str(path))
        assert img.shape == (16, 16, 16)
        assert np.allclose(img.header.get_zooms()[:3], 12.0)
        assert nib.aff2axcodes(img.affine) == ("R", "A", "S")
        assert int(img.header["qform_code"]) == 1 and int(img.header["sform_code"]) == 1
        _, data, info = read_scan(path)  # passes training's preflight
        assert info.axcodes == "RAS" and info.spacing == [12.0, 12.0, 12.0]
        # a head in the middle of a dark background
        assert data[8, 8, 8] > 0.3 * data.max() and data[0, 0, 0] == 0.0
    volumes = {
        name: [np.asarray(nib.load(str(p)).dataobj) for p in cohort.train + cohort.heldout]
        for name, cohort in (("a", a), ("b", b), ("c", c))
    }
    assert all(np.array_equal(x, y) for x, y in zip(volumes["a"], volumes["b"], strict=True))
    assert not np.allclose(volumes["a"][0], volumes["c"][0])
    assert not np.allclose(volumes["a"][0], volumes["a"][1])  # subjects differ from one another
    record = json.loads((tmp_path / "a" / "cohort.json").read_text())
    assert record["n_heldout"] == 1 and record["spacing_mm"] == [12.0] * 3 and record["seed"] == 3


def test_demo_command_end_to_end_on_the_tiny_config(tmp_path: Path, capsys, monkeypatch):
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")  # what the command sets, restored afterwards
    out = tmp_path / "demo"
    args = ["demo", "--output", str(out), "--config", "tiny", "--set", "train.max_steps=100000"]
    args += ["--set", "train.preview_every=1000", "--minutes", "0.02", "--subjects", "8", "--num", "4"]
    code, stdout, stderr = run_cli(args, capsys)
    assert code == 0, stderr
    # stopped by the time budget, with a checkpoint and a final preview
    steps = [int(p.name.removeprefix("step-")) for p in (out / "run" / "checkpoints").glob("step-*")]
    last_logged = int((out / "run" / "metrics.csv").read_text().splitlines()[-1].split(",")[0])
    assert steps and max(steps) == last_logged < 100000
    assert len(list((out / "run" / "previews").glob("step-*.png"))) == 1
    assert len(list((out / "cohort" / "train").glob("*.nii.gz"))) == 6
    assert len(list((out / "samples").glob("sample_*.nii.gz"))) == 4
    assert (out / "samples" / "preview.png").is_file()
    metrics = json.loads((out / "report" / "metrics.json").read_text())
    assert metrics["n_real"] == 2 and metrics["n_synthetic"] == 4
    assert np.isfinite(metrics["fid"]) and 0 <= metrics["ms_ssim_synthetic"] <= 1
    assert str(out / "report" / "report.html") in stderr.replace("\n", "")
    assert "samples preview" in stderr

    # a second demo into the same folder needs --overwrite
    code, _, stderr = run_cli(["demo", "--output", str(out), "--config", "tiny"], capsys)
    assert code == 2 and "--overwrite" in stderr and len(stderr.strip().splitlines()) == 1


def test_without_nilearn_the_demo_says_what_to_install(tmp_path: Path, capsys, monkeypatch):
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    monkeypatch.setitem(sys.modules, "nilearn", None)  # import nilearn now raises ImportError
    monkeypatch.setitem(sys.modules, "nilearn.datasets", None)
    code, _, stderr = run_cli(["demo", "--output", str(tmp_path / "demo")], capsys)
    assert code == 2
    assert stderr.strip() == f"error: {INSTALL_HINT}" and 'pip install "medddpm[demo]"' in stderr
    assert not (tmp_path / "demo").exists()
