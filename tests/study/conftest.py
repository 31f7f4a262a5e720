"""A small real and synthetic set (NIfTI written on the fly) and studies built from them with the real CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.conftest import blob_volume, write_nifti
from tests.evaluation.test_measure import run_cli

SHAPE = (16, 18, 20)
N = 6


def write_sets(root: Path, n: int = N) -> tuple[Path, Path]:
    """n real blobs, and n synthetic ones: other blobs with extra noise (a generator's tell)."""
    rng = np.random.default_rng(0)
    for i in range(n):
        write_nifti(root / "real" / f"subject_{i:02d}.nii.gz", blob_volume(rng, SHAPE))
        noisy = blob_volume(rng, SHAPE) + rng.normal(0, 15, SHAPE).astype(np.float32)
        write_nifti(root / "synthetic" / f"sample_{i:04d}.nii.gz", noisy)
    return root / "real", root / "synthetic"


@pytest.fixture(scope="session")
def sets(tmp_path_factory) -> tuple[Path, Path]:
    return write_sets(tmp_path_factory.mktemp("study_sets"))


def build(sets: tuple[Path, Path], out: Path, *extra: str) -> Path:
    real, synthetic = sets
    code, _, err = run_cli(
        ["study", "build", "--real", real, "--synthetic", synthetic, "--output", out, "--n", N, *extra]
    )
    assert code == 0, err
    return out


@pytest.fixture(scope="session")
def binary_study(sets, tmp_path_factory) -> Path:
    return build(sets, tmp_path_factory.mktemp("binary") / "study", "--readers", "3", "--seed", "5")
