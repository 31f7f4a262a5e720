"""The membership signal of the model itself: does it denoise its training scans better than unseen ones?

A model that memorised its training scans predicts their noise better than that of new scans from
the same population (Carlini et al. 2023, section 6; Matsumoto et al. 2023). So, with the run's own
objective (medddpm.diffusion.process: eps or v prediction for ddpm, velocity for rflow; unweighted),
in the space it works in, and the EMA weights of its latest checkpoint:

1. A fixed grid: ``timesteps`` evenly spaced t (the midpoints of as many equal parts of 0..T-1 for
   ddpm, of (0, 1) for rflow: the process's ``time_grid``) and
   ``noises`` noise volumes eps_k, drawn from seed + k. Every scan meets the same (t, eps_k) pairs,
   so scans differ only in themselves, not in the luck of their draws.
2. Each scan's loss: the denoising error averaged over the grid.
3. ROC AUC of "training" against "held-out" with lower loss = member: the probability that a random
   held-out scan has a higher loss than a random training scan (ties count a half), i.e. Mann-Whitney
   U / (n1 n2). 0.5: no signal; 1: every training scan is denoised better than every held-out one.
4. A 95% percentile bootstrap interval: scans resampled with replacement within each set, seeded.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import stats

from medddpm.diffusion.noise import randn
from medddpm.diffusion.objective import denoising_errors
from medddpm.diffusion.process import Process, build_process
from medddpm.models.spaces import SpaceEntry, config_space
from medddpm.training.checkpoint import load_weights, open_checkpoint, resolve_checkpoint

BOOTSTRAP = 2000
"""Bootstrap resamples of the AUC's interval."""
BATCH_VOXELS = 4 * 64**3
"""Voxels per forward pass."""


@dataclass
class Denoiser:
    """The run's EMA network, its process and the space it works in, ready to score scans."""

    model: torch.nn.Module
    schedule: Process
    checkpoint: Path
    step: int
    space: SpaceEntry


def load_denoiser(run_dir: Path, device: torch.device) -> Denoiser:
    """The latest checkpoint of ``run_dir``: its network rebuilt from its own config, EMA weights loaded."""
    from medddpm.models.unet import build_unet, to_memory_format

    ckpt = open_checkpoint(resolve_checkpoint("latest", Path(run_dir)))
    model = build_unet(ckpt.config.model)
    load_weights(model, ckpt.weights(ema=True), ckpt.file("ema"))
    to_memory_format(model.to(device)).eval()  # the layout preferred on the device
    space = config_space(ckpt.config, run_dir)  # a latent run keeps its autoencoder there
    return Denoiser(model, build_process(ckpt.config.diffusion), ckpt.path, ckpt.step, space)


def timestep_grid(num_timesteps: int, count: int) -> list[int]:
    """``count`` timesteps evenly spread over 0..num_timesteps-1: the midpoints of equal parts."""
    return sorted({int((i + 0.5) * num_timesteps / count) for i in range(count)})


@torch.no_grad()
def grid_losses(
    denoiser: Denoiser, volumes: torch.Tensor, timesteps: Sequence[int], noises: int, seed: int
) -> np.ndarray:
    """Denoising errors [N, len(timesteps), noises] of volumes [N, 1, D, H, W] on [0, 1] over the grid."""
    device = next(denoiser.model.parameters()).device
    space = denoiser.space
    shape = (space.channels, *space.latent_size(volumes.shape[2:]))
    eps = [randn(shape, torch.Generator().manual_seed(seed + k), device=device) for k in range(noises)]
    batch = max(1, BATCH_VOXELS // int(np.prod(shape)))
    out = np.zeros((len(volumes), len(timesteps), noises))
    for b0 in range(0, len(volumes), batch):
        x0 = space.encode(volumes[b0 : b0 + batch].to(device) * 2 - 1)  # the training scale, [-1, 1]
        for j, t in enumerate(timesteps):
            tt = torch.full((len(x0),), t, device=device)  # long for ddpm timesteps, float for rflow
            for k, e in enumerate(eps):
                errors = denoising_errors(denoiser.model, denoiser.schedule, x0, tt, e.expand_as(x0))
                out[b0 : b0 + len(x0), j, k] = errors.cpu().double().numpy()
    return out


def membership_auc(training_loss: Sequence[float], heldout_loss: Sequence[float]) -> float:
    """P(a held-out scan's loss > a training scan's), ties a half: the held-out U / (n1 n2)."""
    heldout, training = np.asarray(heldout_loss, np.float64), np.asarray(training_loss, np.float64)
    u = stats.mannwhitneyu(heldout, training, alternative="two-sided").statistic
    return float(u) / (len(heldout) * len(training))


def bootstrap_auc(
    training_loss: Sequence[float], heldout_loss: Sequence[float], resamples: int = BOOTSTRAP, seed: int = 0
) -> np.ndarray:
    """AUCs [resamples] of scans drawn with replacement within each set (ranks, all resamples at once)."""
    training, heldout = np.asarray(training_loss, np.float64), np.asarray(heldout_loss, np.float64)
    rng = np.random.default_rng(seed)
    t = training[rng.integers(0, len(training), (resamples, len(training)))]
    h = heldout[rng.integers(0, len(heldout), (resamples, len(heldout)))]
    ranks = stats.rankdata(np.concatenate([h, t], axis=1), axis=1)  # ties share their mean rank
    n_h, n_t = len(heldout), len(training)
    u = ranks[:, :n_h].sum(axis=1) - n_h * (n_h + 1) / 2
    return u / (n_h * n_t)


def membership(
    denoiser: Denoiser,
    training: torch.Tensor,
    heldout: torch.Tensor,
    timesteps: int,
    noises: int,
    seed: int,
    training_names: Sequence[str],
    heldout_names: Sequence[str],
) -> dict[str, Any]:
    """audit.json's ``membership`` block: steps 1-4 of the module docstring."""
    grid = denoiser.schedule.time_grid(timesteps)
    loss = {
        "training": grid_losses(denoiser, training, grid, noises, seed).mean(axis=(1, 2)),
        "heldout": grid_losses(denoiser, heldout, grid, noises, seed).mean(axis=(1, 2)),
    }
    auc = membership_auc(loss["training"], loss["heldout"])
    low, high = np.quantile(bootstrap_auc(loss["training"], loss["heldout"], seed=seed), [0.025, 0.975])
    return {
        "auc": auc,
        "auc_ci95": [float(low), float(high)],
        "interval": f"percentile bootstrap over scans, {BOOTSTRAP} resamples, seed {seed}",
        "definition": "ROC AUC of training against held-out scans with lower denoising loss = member: "
        "P(a held-out scan's loss exceeds a training scan's); 0.5 = no signal",
        "n_train": len(training),
        "n_heldout": len(heldout),
        "timesteps": grid,
        "noises_per_timestep": noises,
        "noise_seeds": [seed + k for k in range(noises)],
        "objective": f"{denoiser.schedule.objective} (the run's own)",
        "checkpoint": str(denoiser.checkpoint.resolve()),
        "checkpoint_step": denoiser.step,
        "weights": "ema",
        "median_loss": {name: float(np.median(v)) for name, v in loss.items()},
        "losses": {
            "training": dict(zip(training_names, map(float, loss["training"]), strict=True)),
            "heldout": dict(zip(heldout_names, map(float, loss["heldout"]), strict=True)),
        },
    }
