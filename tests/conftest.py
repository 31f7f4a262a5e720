"""Shared fixtures: small NIfTI files written on the fly, and one tiny trained run."""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _missing_extra_fails_in_ci(report) -> None:
    """In CI every optional extra is installed, so a test skipped for want of one (pytest.importorskip)
    means the install is broken: report it as a failure rather than a skip."""
    if IN_CI and report.skipped and "could not import" in str(report.longrepr):
        report.outcome = "failed"


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    _missing_extra_fails_in_ci(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    _missing_extra_fails_in_ci(outcome.get_result())


def write_nifti(
    path: Path, data: np.ndarray, spacing=(2.0, 2.5, 3.0), affine: np.ndarray | None = None
) -> Path:
    """Write ``data`` as NIfTI with a diagonal RAS affine of ``spacing`` (or the given affine)."""
    if affine is None:
        affine = np.diag([*spacing, 1.0])
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


def blob_volume(rng: np.random.Generator, shape=(20, 18, 22)) -> np.ndarray:
    """A bright ellipsoid on a dark, noisy background: something with anatomy-like contrast."""
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij"))
    radius = np.sqrt(((grid / rng.uniform(0.5, 0.8, size=(3, 1, 1, 1))) ** 2).sum(0))
    return (100.0 * (radius < 1) + rng.normal(0, 5, shape)).astype(np.float32)


@pytest.fixture
def scan_dir(tmp_path: Path) -> Path:
    """Four small anisotropic MRI-like scans (2.0 x 2.5 x 3.0 mm, RAS)."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "scans"
    for i in range(4):
        write_nifti(folder / f"subject_{i}.nii.gz", blob_volume(rng))
    return folder


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """A run of the tiny config trained for 2 steps: a real checkpoint for sample/evaluate tests."""
    from medddpm.config import build_config
    from medddpm.training.loop import train

    root = tmp_path_factory.mktemp("tiny_run")
    rng = np.random.default_rng(1)
    for i in range(4):
        write_nifti(root / "scans" / f"s{i}.nii.gz", blob_volume(rng))
    cfg = build_config("tiny", ["train.max_steps=2"])
    train(cfg, root / "scans", root / "run")
    return root / "run"
