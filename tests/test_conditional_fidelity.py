"""Conditions are obeyed: a categorical variable decides the object, a continuous one its size.

The cohort: 16³ NIfTI volumes, each a bright sphere or cube (``shape``) of half-width ``size`` voxels
(3 to 6) in the centre, light noise, with the variables in a CSV. A model with the tiny network sizes of
tests/test_distribution.py, trained as rectified flow with uniform training times (FLOW_SETTINGS) and
``--conditions``, is sampled for requested (shape, size) rows and unconditionally. A sample's shape is
read from how much of its bounding box the bright voxels fill (a sphere ~0.52, a cube ~1), its size
from their count (the half-width of a sphere or cube of that volume). Requirements (the targets of
conditional generation): requested shapes obeyed in >= 90% of samples, requested and measured sizes
correlated >= 0.8, both shapes among unconditional samples. Slow: it trains a small network for
several CPU minutes.
"""

from __future__ import annotations

import csv
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medddpm.config import build_config
from medddpm.inference.sample_to_folder import ConditionRequest, read_output, sample_to_folder
from medddpm.runtime import torch_threads
from medddpm.training.loop import train

SIDE = 16
SIZE_SETTINGS = [
    "data.image_size=16",
    "model.channels=[16,32]",
    "model.attention_levels=[false,true]",
    "model.num_head_channels=16",
    "model.norm_num_groups=8",
    "train.device=cpu",
    "train.preview_every=0",
    "train.log_every=50",
]
FLOW_SETTINGS = ["diffusion.process=rflow", "diffusion.rflow_timesteps=uniform"]
"""At 600 steps of the default process (v-prediction DDPM) requested shapes were obeyed in 62% of
samples and the cubes came out rounded; a cube's corners are the last detail sampling sets, at low
noise, which uniform times train and logit-normal ones hardly do. With these settings and 1,200
steps: 100% of shapes, size r 0.97, 14 spheres and 2 cubes unconditionally (one run, seeds below)."""
STEPS, BATCH = 1200, 8
FILL_CUBE = 0.75
"""A sample whose bright voxels fill more of their bounding box than this is a cube (sphere: pi/6)."""


def shape_volume(shape: str, size: float, rng: np.random.Generator) -> np.ndarray:
    grid = np.stack(np.meshgrid(*[np.arange(SIDE, dtype=float) - (SIDE - 1) / 2] * 3, indexing="ij"))
    inside = np.sqrt((grid**2).sum(0)) <= size if shape == "sphere" else (np.abs(grid) <= size).all(0)
    return (inside + rng.normal(0, 0.05, (SIDE,) * 3)).astype(np.float32)


def measure(volume: np.ndarray) -> tuple[str, float]:
    """(shape, half-width) of the bright object of a sample on [0, 1]."""
    bright = volume > 0.5
    if bright.sum() < 8:
        return "none", 0.0
    box = [np.flatnonzero(bright.any(axis=tuple(a for a in range(3) if a != ax))) for ax in range(3)]
    fill = bright.sum() / np.prod([b[-1] - b[0] + 1 for b in box])
    if fill > FILL_CUBE:
        return "cube", float(np.cbrt(bright.sum()) / 2)
    return "sphere", float(np.cbrt(3 * bright.sum() / (4 * np.pi)))


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fidelity")
    rng = np.random.default_rng(0)
    rows = []
    for i in range(48):
        shape, size = ("sphere", "cube")[i % 2], float(rng.uniform(3.0, 6.0))
        path = root / "scans" / f"toy_{i:03d}.nii.gz"
        path.parent.mkdir(exist_ok=True)
        nib.save(nib.Nifti1Image(shape_volume(shape, size, rng), np.eye(4)), str(path))
        rows.append({"file": path.name, "shape": shape, "size": round(size, 3)})
    with open(root / "conditions.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["file", "shape", "size"])
        writer.writeheader()
        writer.writerows(rows)
    return root


def test_measure_reads_the_cohorts_own_shapes_and_sizes():
    rng = np.random.default_rng(1)
    for shape in ("sphere", "cube"):
        sizes = np.linspace(3.0, 6.0, 7)
        measured = [measure(np.clip(shape_volume(shape, s, rng), 0, 1)) for s in sizes]
        assert all(m[0] == shape for m in measured)
        assert np.corrcoef(sizes, [m[1] for m in measured])[0, 1] > 0.95  # cubes: whole voxels
    assert measure(np.zeros((SIDE,) * 3))[0] == "none"


@pytest.mark.slow  # several CPU minutes: 1,200 steps of a small 16³ U-Net, then 40 samples
def test_samples_obey_the_requested_shape_and_size(cohort: Path, tmp_path: Path):
    cfg = build_config(
        overrides=[*SIZE_SETTINGS, *FLOW_SETTINGS, f"train.max_steps={STEPS}", f"train.batch_size={BATCH}",
                   f"train.checkpoint_every={STEPS}"]
    )  # fmt: skip
    requested = [(shape, size) for size in (3.25, 4.0, 4.75, 5.5) for shape in ("sphere", "cube")] * 3
    with open(tmp_path / "rows.csv", "w", newline="") as f:
        f.write("shape,size\n" + "".join(f"{s},{z}\n" for s, z in requested))
    with torch_threads(2):
        train(cfg, cohort / "scans", tmp_path / "run", conditions=cohort / "conditions.csv")
        asked = sample_to_folder(
            tmp_path / "run", tmp_path / "conditional", len(requested), seed=100, device="cpu",
            conditions=ConditionRequest(table=tmp_path / "rows.csv"),
        )  # fmt: skip
        free = sample_to_folder(tmp_path / "run", tmp_path / "free", 16, seed=200, device="cpu")
    got = [measure(read_output(f)) for f in asked.files]
    shape_hits = np.mean([g[0] == r[0] for g, r in zip(got, requested, strict=True)])
    size_r = np.corrcoef([r[1] for r in requested], [g[1] for g in got])[0, 1]
    free_shapes = [measure(read_output(f))[0] for f in free.files]
    print(
        f"shape obeyed {shape_hits:.0%}, size correlation {size_r:.2f}, unconditional: "
        f"{free_shapes.count('sphere')} spheres, {free_shapes.count('cube')} cubes of {len(free_shapes)}"
    )
    assert shape_hits >= 0.9
    assert size_r >= 0.8
    assert "sphere" in free_shapes and "cube" in free_shapes
