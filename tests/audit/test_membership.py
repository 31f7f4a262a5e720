"""The membership signal: the run's denoising loss on a fixed grid, its AUC against a hand count, its
bootstrap, and the ``membership`` block of audit.json with and without ``--run``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from medddpm.audit.audit import audit
from medddpm.audit.measure import AuditSettings
from medddpm.audit.membership import (
    bootstrap_auc,
    grid_losses,
    load_denoiser,
    membership_auc,
    timestep_grid,
)
from medddpm.diffusion.noise import PerSampleGenerator
from medddpm.diffusion.schedule import denoising_errors, diffusion_loss
from medddpm.errors import InputError
from tests.audit.test_audit import cohort, head  # noqa: F401 (a fixture)


def test_auc_is_the_share_of_pairs_where_the_heldout_loss_is_higher():
    training = [0.1, 0.3, 0.3, 0.7]
    heldout = [0.2, 0.3, 0.9]
    # hand count over the 12 (held-out, training) pairs: higher counts 1, a tie a half
    wins = sum((h > t) + 0.5 * (h == t) for h in heldout for t in training)
    assert wins == 7.0  # 0.2: beats 0.1; 0.3: beats 0.1, ties 0.3 twice; 0.9: beats all four
    assert membership_auc(training, heldout) == pytest.approx(7 / 12)
    assert membership_auc([0.1, 0.2], [0.3, 0.4]) == 1.0
    assert membership_auc([0.3, 0.4], [0.1, 0.2]) == 0.0


def test_bootstrap_resamples_scans_within_each_set():
    rng = np.random.default_rng(4)
    training, heldout = rng.normal(0, 1, 9), rng.normal(0.5, 1, 7)
    aucs = bootstrap_auc(training, heldout, resamples=40, seed=11)
    draw = np.random.default_rng(11)
    t_idx = draw.integers(0, 9, (40, 9))
    h_idx = draw.integers(0, 7, (40, 7))
    expected = [membership_auc(training[t], heldout[h]) for t, h in zip(t_idx, h_idx, strict=True)]
    np.testing.assert_allclose(aucs, expected, atol=1e-12)
    assert np.array_equal(bootstrap_auc(training, heldout, 40, seed=11), aucs)  # seeded


def test_timestep_grid_spreads_over_the_schedule():
    assert timestep_grid(1000, 8) == [62, 187, 312, 437, 562, 687, 812, 937]
    assert timestep_grid(1000, 1) == [500]
    assert timestep_grid(4, 10) == [0, 1, 2, 3]


def test_the_grid_loss_is_the_training_objective_at_fixed_draws(tiny_run: Path):
    denoiser = load_denoiser(tiny_run, torch.device("cpu"))
    x0 = torch.rand(3, 1, 16, 16, 16) * 2 - 1
    torch.manual_seed(0)
    loss = diffusion_loss(denoiser.model, denoiser.schedule, x0, PerSampleGenerator.from_seeds([5, 6, 7]))
    g = PerSampleGenerator.from_seeds([5, 6, 7])  # the same draws: t first, then eps
    t = g.randint(0, denoiser.schedule.num_timesteps, (3,))
    eps = g.randn(x0.shape)
    with torch.no_grad():
        errors = denoising_errors(denoiser.model, denoiser.schedule, x0, t, eps)
    assert errors.shape == (3,) and errors.mean().item() == pytest.approx(loss.item(), rel=1e-5)


def test_a_scans_grid_loss_depends_on_itself_only(tiny_run: Path):
    denoiser = load_denoiser(tiny_run, torch.device("cpu"))
    volumes = torch.rand(5, 1, 16, 16, 16)
    grid = [100, 600]
    alone = grid_losses(denoiser, volumes[2:3], grid, 2, seed=3)
    together = grid_losses(denoiser, volumes, grid, 2, seed=3)
    assert together.shape == (5, 2, 2)
    np.testing.assert_allclose(together[2:3], alone, rtol=1e-5)
    assert not np.allclose(together[:, :, 0], together[:, :, 1])  # two different noises
    assert not np.allclose(grid_losses(denoiser, volumes, grid, 2, seed=4), together)


def test_audit_with_a_run_reports_the_membership_signal(cohort, tiny_run: Path, tmp_path: Path):  # noqa: F811
    settings = AuditSettings(features="none", membership_timesteps=3, membership_noises=2)
    result = audit(
        cohort["train"], cohort["heldout"], cohort["synth"], tmp_path / "a", settings,
        run_dir=tiny_run, device="cpu",
    )  # fmt: skip
    m = json.loads((tmp_path / "a" / "audit.json").read_text())["membership"]
    assert m["n_train"] == 12 and m["n_heldout"] == 40 and m["timesteps"] == [166, 500, 833]
    assert m["noises_per_timestep"] == 2 and sorted(m["losses"]["training"]) == [
        f"t{i:02d}.nii.gz" for i in range(12)
    ]
    losses = m["losses"]
    assert m["auc"] == pytest.approx(
        membership_auc(list(losses["training"].values()), list(losses["heldout"].values()))
    )
    low, high = m["auc_ci95"]
    assert 0 <= low <= m["auc"] <= high <= 1
    assert any(c.startswith("Membership AUC") for c in result.result["caveats"])
    assert "membership AUC (denoising loss)" in result.html.read_text()

    plain = audit(
        cohort["train"], cohort["heldout"], cohort["synth"], tmp_path / "b", AuditSettings(features="none"),
        device="cpu",
    )  # fmt: skip
    assert plain.result["membership"] is None
    assert any("membership signal" in c and "--run" in c for c in plain.result["caveats"])

    with pytest.raises(InputError, match="--membership-noises"):
        audit(
            cohort["train"], cohort["heldout"], cohort["synth"], tmp_path / "c",
            AuditSettings(features="none", membership_noises=0), run_dir=tiny_run,
        )  # fmt: skip
    assert not (tmp_path / "c").exists()
