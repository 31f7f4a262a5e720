"""examples/api_usage.py runs as its docstring says, and prints clean lines (no rich markup)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tests.conftest import blob_volume, write_nifti
from tests.test_layout import MARKUP

EXAMPLES = Path(__file__).parent.parent / "examples"


def test_api_usage_runs_and_prints_plain_lines(tmp_path: Path):
    rng = np.random.default_rng(3)
    for i in range(3):
        write_nifti(tmp_path / "scans" / f"s{i}.nii.gz", blob_volume(rng, (20, 20, 20)))
    # one scan whose qform and sform disagree: training logs a warning about it
    img = nib.Nifti1Image(blob_volume(rng, (20, 20, 20)), np.diag([2.0, 2.0, 2.0, 1.0]))
    img.set_qform(np.diag([2.0, 2.0, 2.0, 1.0]), code=1)
    img.set_sform(np.diag([2.5, 2.0, 2.0, 1.0]), code=1)
    nib.save(img, str(tmp_path / "scans" / "s3.nii.gz"))

    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # 16³ gains nothing from more
    args = [tmp_path / "scans", tmp_path / "out", "--size", "16", "--steps", "2", "--num", "2"]
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "api_usage.py"), *map(str, args)],
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert any(line.startswith("FID ") for line in lines)
    assert any("qform and sform disagree" in line for line in lines)
    assert (tmp_path / "out" / "report" / "report.html").is_file()
    marked = [line for line in lines if MARKUP.search(line)]
    assert not marked, f"library messages carry rich markup: {marked}"


@pytest.mark.slow
def test_latent_demo_runs_at_its_smallest_settings(tmp_path: Path):
    pytest.importorskip("nilearn")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = ["--size", "16", "--subjects", "6", "--max-steps", "2", "--num", "2", "--threads", "1"]
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "latent_demo.py"), str(tmp_path / "out"), *args],
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert any(line.startswith("Autoencoder, held-out scans: correlation ") for line in lines)
    assert any(line.startswith("Autoencoder ceiling: ") for line in lines)
    out = tmp_path / "out"
    assert json.loads((out / "ae" / "reconstruction.json").read_text())["held_out"] == 1
    assert len(list((out / "samples").glob("sample_*.nii.gz"))) == 2
    metrics = json.loads((out / "report" / "metrics.json").read_text())
    assert metrics["autoencoder_ceiling"]["n"] == 2  # the held-out quarter of 6 subjects
    assert any(line.startswith("Report: ") and "report.html" in line for line in lines)


def test_demo_montage_draws_real_then_synthetic_rows(tmp_path: Path):
    """docs/demo_montage.py draws the README's picture from a demo folder: one row per volume, and a
    folder without enough scans is refused with a message naming it."""
    rng = np.random.default_rng(4)
    for i in range(3):
        write_nifti(tmp_path / "demo" / "cohort" / "heldout" / f"subject_{i:03d}.nii.gz", blob_volume(rng))
    for i in range(4):
        write_nifti(tmp_path / "demo" / "samples" / f"sample_{i:04d}.nii.gz", blob_volume(rng))
    script = Path(__file__).parent.parent / "docs" / "demo_montage.py"

    def draw(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(script), *argv], capture_output=True, text=True)

    done = draw(str(tmp_path / "demo"), str(tmp_path / "demo.png"))
    assert done.returncode == 0, done.stderr[-3000:]
    from PIL import Image

    width, height = Image.open(tmp_path / "demo.png").size
    assert height > 2 * width  # six rows of three views

    refused = draw(str(tmp_path / "demo"), str(tmp_path / "five.png"), "--synthetic", "5")
    assert refused.returncode == 2 and "holds 3 held-out scans and 4 samples" in refused.stderr
    assert not (tmp_path / "five.png").exists()
