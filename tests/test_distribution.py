"""The defaults learn: train on a two-mode toy cohort, sample, and find both modes in proportion.

The cohort (benchmarks/bench_defaults.py): 16³ NIfTI volumes, half a bright sphere on one side, half a
dimmer cube on the other, light noise. The config is the code defaults plus size settings only (16³,
the tiny U-Net, steps, batch), so the test follows whatever the defaults become; the sampler and its
steps are the config's own. The criterion (``bench_defaults.judge``): a sample matches a mode when its
Pearson correlation with that mode's noise-free template is at least MATCH (0.7); at least 75% of the
samples must match, and each mode must hold 20-80% of them. Training volumes pass it and pure noise
fails it, both checked here. Measured figures: benchmarks/RESULTS.md, "Defaults".
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medddpm.inference.sample_to_folder import read_output
from medddpm.runtime import torch_threads
from tests.test_benchmarks import load

STEPS, BATCH = 400, 8
"""Training length of both variants: ~2 CPU minutes each on one thread."""


@pytest.fixture(scope="module")
def bench():
    return load("bench_defaults")


@pytest.fixture(scope="module")
def cohort(bench, tmp_path_factory) -> Path:
    return bench.toy_cohort(tmp_path_factory.mktemp("cohort"))


def test_the_criterion_passes_training_volumes_and_fails_noise(bench, cohort: Path):
    real = bench.judge(np.stack([read_output(f) for f in sorted(cohort.glob("*.nii.gz"))]))
    assert real.passed and real.matched == 1.0 and real.shares == (0.5, 0.5), real.summary()
    assert real.correlations.min() > 0.9  # light noise: ~0.94 (cube) and ~0.97 (sphere)
    noise = bench.judge(np.random.default_rng(0).normal(size=(40, 16, 16, 16)))
    assert not noise.passed and noise.matched == 0.0 and noise.correlations.max() < 0.2, noise.summary()
    # One mode alone fails on proportion, however well it matches.
    spheres = np.stack([read_output(f) for f in sorted(cohort.glob("*.nii.gz"))[::2]])
    assert bench.judge(spheres).matched == 1.0 and not bench.judge(spheres).passed


@pytest.mark.slow  # ~2-3 CPU minutes per variant
@pytest.mark.parametrize("preset", [None, "tiny"], ids=["code-defaults", "tiny.yaml"])
def test_defaults_sample_both_modes(bench, cohort: Path, tmp_path: Path, preset: str | None):
    with torch_threads(1):
        report, _, _ = bench.run_recipe(
            tmp_path, cohort, [], config=preset, max_steps=STEPS, batch_size=BATCH
        )
    print(f"{preset or 'code defaults'}: {report.summary()}")  # shown with pytest -s
    assert report.passed, report.summary()
