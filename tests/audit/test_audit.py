"""``medddpm audit`` end to end on small NIfTI sets with planted copies, and its refusals of bad input."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from medddpm.audit.audit import audit
from medddpm.audit.measure import AuditSettings
from medddpm.cli.app import main
from medddpm.errors import InputError
from medddpm.output_folder import AUDIT_FOLDER
from tests.conftest import write_nifti

SHAPE = (16, 16, 16)
NO_FEATURES = AuditSettings(features="none")


def head(rng: np.random.Generator) -> np.ndarray:
    """A bright ellipsoid of random size, place and inner texture on a dark, noisy background."""
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in SHAPE], indexing="ij"))
    centre = rng.uniform(-0.2, 0.2, size=(3, 1, 1, 1))
    inside = np.sqrt((((grid - centre) / rng.uniform(0.5, 0.8, size=(3, 1, 1, 1))) ** 2).sum(0)) < 1
    texture = np.sin(grid[0] * rng.uniform(2, 6) + rng.uniform(0, 6)) * np.cos(grid[1] * rng.uniform(2, 6))
    return (inside * (100 + 30 * texture) + rng.normal(0, 3, SHAPE)).astype(np.float32)


@pytest.fixture
def cohort(tmp_path: Path) -> dict[str, Path]:
    """12 training and 40 held-out scans; 12 synthetic: 4 noisy copies of training scans 0-3, 8 new.

    Forty held-out scans: with fewer the held-out 0.95 quantile is barely estimated, and the exact
    test rightly finds 4 flagged of 12 within chance (12 held-out scans: p = 0.16)."""
    rng = np.random.default_rng(0)
    training = [head(rng) for _ in range(12)]
    folders = {name: tmp_path / name for name in ("train", "heldout", "synth")}
    for i, volume in enumerate(training):
        write_nifti(folders["train"] / f"t{i:02d}.nii.gz", volume)
    for i in range(40):
        write_nifti(folders["heldout"] / f"h{i:02d}.nii.gz", head(rng))
    for i in range(4):
        copy = training[i] + rng.normal(0, 2, SHAPE).astype(np.float32)
        write_nifti(folders["synth"] / f"copy{i}.nii.gz", copy)
    for i in range(8):
        write_nifti(folders["synth"] / f"new{i}.nii.gz", head(rng))
    return folders


def _run(cohort, out, settings=NO_FEATURES, **kwargs):
    return audit(cohort["train"], cohort["heldout"], cohort["synth"], out, settings, device="cpu", **kwargs)


def test_planted_copies_are_flagged_and_named(cohort, tmp_path: Path):
    out = tmp_path / "audit"
    result = _run(cohort, out, AuditSettings(features="resnet10"))
    r = json.loads((out / "audit.json").read_text())
    assert r["verdict"] == "memorisation"
    pairs = {p["file"]: p for p in r["pairs"]["synthetic"]}
    for i in range(4):
        copy = pairs[f"copy{i}.nii.gz"]
        assert copy["flagged"] and copy["nearest_training"] == f"t{i:02d}.nii.gz"
        assert copy["correlation"] > 0.99 and copy["ssim"] > 0.9 and not copy["authentic"]
        held_gaps = [p["gap"] for p in r["pairs"]["heldout"]]
        assert copy["gap"] > np.quantile(held_gaps, 0.9)  # close to one training scan only
        assert copy["feature_nearest_training"] == f"t{i:02d}.nii.gz" and copy["feature_cosine"] > 0.99
    new_flagged = sum(pairs[f"new{i}.nii.gz"]["flagged"] for i in range(8))
    assert r["n_flagged"] == 4 + new_flagged and new_flagged <= 2
    low, high = r["flagged_share_ci95"]
    assert low > r["expected_share"] and low < r["flagged_share"] < high
    assert r["mann_whitney"]["p_value"] < 0.05 and r["exceedance_p_value"] < 0.05
    assert r["authenticity"]["score"] <= 8 / 12
    # the threshold is the held-out quantile, recomputed from the listed pairs
    held = [p["correlation"] for p in r["pairs"]["heldout"]]
    assert r["threshold"] == pytest.approx(np.quantile(held, 0.95))
    # what the folder holds: only AUDIT_FOLDER's files, and a report that needs nothing else
    assert all(AUDIT_FOLDER.owns(p) for p in out.iterdir())
    html = result.html.read_text()
    assert "Memorisation suspected" in html and html.count("data:image/png;base64,") == 3
    assert not re.search(r"(src|href)=\"(?!data:)", html)


def test_without_copies_there_is_no_memorisation_verdict(cohort, tmp_path: Path):
    for copy in cohort["synth"].glob("copy*"):
        copy.unlink()
    r = _run(cohort, tmp_path / "audit").result
    assert r["verdict"] != "memorisation"
    assert r["flagged_share_ci95"][0] <= r["expected_share"]
    assert all(p["correlation"] < 0.99 for p in r["pairs"]["synthetic"])


def test_a_mirrored_copy_is_caught_only_with_mirroring(cohort, tmp_path: Path):
    import nibabel as nib

    source = nib.load(cohort["train"] / "t05.nii.gz")
    write_nifti(cohort["synth"] / "mirror.nii.gz", np.asarray(source.dataobj)[::-1].copy())
    r = _run(cohort, tmp_path / "a").result
    pair = next(p for p in r["pairs"]["synthetic"] if p["file"] == "mirror.nii.gz")
    assert pair["mirrored"] and pair["nearest_training"] == "t05.nii.gz" and pair["correlation"] > 0.999
    assert pair["flagged"] and pair["ssim"] > 0.999
    r = _run(cohort, tmp_path / "b", AuditSettings(features="none", mirror=False)).result
    pair = next(p for p in r["pairs"]["synthetic"] if p["file"] == "mirror.nii.gz")
    assert not pair["mirrored"] and pair["correlation"] < 0.99
    assert any("--no-mirror" in c for c in r["caveats"])


def test_a_mirrored_copy_is_the_nearest_by_features_too(cohort, tmp_path: Path):
    import nibabel as nib

    source = nib.load(cohort["train"] / "t05.nii.gz")
    write_nifti(cohort["synth"] / "mirror.nii.gz", np.asarray(source.dataobj)[::-1].copy())
    r = _run(cohort, tmp_path / "a", AuditSettings(features="resnet10")).result
    pair = next(p for p in r["pairs"]["synthetic"] if p["file"] == "mirror.nii.gz")
    assert pair["feature_nearest_training"] == "t05.nii.gz" and pair["feature_mirrored"]
    assert pair["feature_cosine"] > 0.9999
    assert not any(p["feature_mirrored"] for p in r["pairs"]["synthetic"] if p["file"].startswith("copy"))
    r = _run(cohort, tmp_path / "b", AuditSettings(features="resnet10", mirror=False)).result
    pair = next(p for p in r["pairs"]["synthetic"] if p["file"] == "mirror.nii.gz")
    assert not pair["feature_mirrored"] and pair["feature_cosine"] < 0.9999


def test_bad_input_is_one_error_and_writes_nothing(cohort, tmp_path: Path):
    out = tmp_path / "audit"
    with pytest.raises(InputError, match="also the training folder"):
        audit(cohort["train"], cohort["train"], cohort["synth"], out, NO_FEATURES)
    lonely = tmp_path / "one"
    write_nifti(lonely / "x.nii.gz", head(np.random.default_rng(5)))
    with pytest.raises(InputError, match="has 1 scan, and the audit needs at least 2") as e:
        audit(cohort["train"], lonely, cohort["synth"], out, NO_FEATURES)
    assert str(lonely) in str(e.value)
    (cohort["synth"] / "broken.nii.gz").write_bytes(b"not a nifti file")
    with pytest.raises(InputError, match="broken.nii.gz"):
        _run(cohort, out)
    (cohort["synth"] / "broken.nii.gz").unlink()
    with pytest.raises(InputError, match="quantile"):
        _run(cohort, out, AuditSettings(features="none", quantile=1.0))
    with pytest.raises(InputError, match="unknown interval"):
        _run(cohort, out, AuditSettings(features="none", interval="wald"))
    with pytest.raises(InputError, match="overlaps the input folder"):
        _run(cohort, cohort["synth"] / "audit")
    assert not out.exists() and not (cohort["synth"] / "audit").exists()
    assert not list(tmp_path.glob(".audit-*"))  # no temporary left either
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="not empty"):
        _run(cohort, out)
    with pytest.raises(InputError, match="notes.txt"):
        _run(cohort, out, overwrite=True)
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_the_command_line(cohort, tmp_path: Path, capsys):
    out = tmp_path / "audit"
    args = ["audit", "--train", str(cohort["train"]), "--heldout", str(cohort["heldout"])]
    args += [
        "--synthetic",
        str(cohort["synth"]),
        "--output",
        str(out),
        "--features",
        "none",
        "--device",
        "cpu",
    ]
    main(args)
    printed = capsys.readouterr()
    assert "Memorisation suspected" in printed.out and "flagged: " in printed.out
    with pytest.raises(SystemExit) as e:
        main(args)  # the folder now holds an audit
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "output folder is not empty" in err and "--overwrite" in err and len(err.strip().splitlines()) == 1
    main([*args, "--overwrite", "--interval", "clopper-pearson", "--no-mirror", "--quantile", "0.9"])
    r = json.loads((out / "audit.json").read_text())
    assert r["interval"] == "clopper-pearson" and r["quantile"] == 0.9 and not r["similarity"]["mirrored"]
