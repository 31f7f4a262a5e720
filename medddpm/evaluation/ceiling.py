"""The autoencoder's ceiling of a latent run: how close to the real set any diffusion model in this
autoencoder's latent space could come.

A latent diffusion model's samples are decodings D(z / s); the best it can do is the distribution of
D(mu(x)) over the real scans x, the autoencoder's reconstructions. With ``evaluate --run`` of a latent
run, ``reconstruct`` encodes every real scan as training did (x in [-1, 1] -> s * mu(x), the run
folder's autoencoder with its sha256 checked against the config: medddpm.models.spaces.config_space)
and decodes it as ``sample`` does (tile by tile, divided by the same s, clipped to [-1, 1]). The
reconstructions are written in output units and read back through the same preprocessing as
synthetic files (medddpm.evaluation.measure), then compared with the real set by the same feature
metrics. Their FID against the real set is the floor under the synthetic set's: of the synthetic
set's FID, that much is the autoencoder's.

Pixel and wavelet runs have no autoencoder: ``latent_space_of`` gives None and nothing changes.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medddpm.config import load_config
from medddpm.data.nifti import write_volume
from medddpm.data.transforms import IntensityMapping
from medddpm.evaluation.reconstruction import compare, summarise
from medddpm.models.spaces import SpaceEntry, config_space

FEATURE_KEYS = ("fid", "mmd", "precision", "recall", "density", "coverage")
"""The set-level metrics computed for the reconstructions (the feature metrics: cheap once the real
set's features exist); MS-SSIM diversity is left out (as many pairs again, and the reconstructions'
diversity is the real set's, blurred)."""


def latent_space_of(run_dir: Path | None) -> tuple[SpaceEntry, str] | None:
    """The latent space of the run in ``run_dir`` with its autoencoder loaded, and the autoencoder's
    sha256 the run recorded (the weights are checked against it: an InputError, one line, for weights
    other than those the run was trained with); None for a pixel or wavelet run, or without a run."""
    if run_dir is None:
        return None
    cfg = load_config(Path(run_dir) / "config.yaml")
    if cfg.model.space != "latent":
        return None
    return config_space(cfg, run_dir), cfg.latent.autoencoder_sha256


def reconstruct(space: SpaceEntry, volume: torch.Tensor, device: torch.device) -> torch.Tensor:
    """One preprocessed real volume [1, D, H, W] on [0, 1] -> its reconstruction [D, H, W] in [-1, 1]:
    decode(encode(x)) with x = 2 v - 1, the input training encoded; clipped as samples are."""
    x = (2.0 * volume - 1.0)[None].to(device)
    with torch.no_grad():
        return space.decode(space.encode(x)).float().clamp(-1.0, 1.0)[0, 0].cpu()


def write_reconstructions(
    space: SpaceEntry,
    volumes: torch.Tensor,
    mapping: IntensityMapping,
    spacing: tuple[float, float, float],
    folder: Path,
    device: torch.device,
) -> list[Path]:
    """The reconstructions of volumes [N, 1, D, H, W] on [0, 1] written into ``folder`` as ``sample``
    writes samples (output units: HU as int16 for CT, [0, 1] float32 for MRI); their paths."""
    dtype = np.int16 if mapping.modality == "ct" else np.float32
    paths = []
    for i, volume in enumerate(volumes):
        x_hat = reconstruct(space, volume, device)
        path = folder / f"recon_{i:05d}.nii.gz"
        paths.append(write_volume(mapping.to_output(x_hat.numpy()), path, spacing, dtype))
    return paths


def paired_measures(real: torch.Tensor, reconstructions: torch.Tensor) -> dict[str, float | None]:
    """Mean PSNR, SSIM, MAE and correlation of each real volume and its reconstruction, both [N, 1, D,
    H, W] on the evaluation's [0, 1] scale (data range 1); a non-finite mean (PSNR of identical
    volumes) is None, which metrics.json can hold."""
    results = [compare(r[0].numpy(), x[0].numpy(), 1.0) for r, x in zip(real, reconstructions, strict=True)]
    return {k: (v if math.isfinite(v) else None) for k, v in summarise(results).items()}


def gap_share(ceiling_fid: float, synthetic_fid: float) -> float | None:
    """The ceiling's FID as a fraction of the synthetic set's, at most 1; None when that FID is 0."""
    if synthetic_fid <= 0:
        return None
    return min(1.0, ceiling_fid / synthetic_fid)


def ceiling_sentence(m: dict[str, Any]) -> str | None:
    """One plain sentence: of the synthetic set's FID, how much is the autoencoder's (None: no ceiling)."""
    c = m.get("autoencoder_ceiling")
    if c is None:
        return None
    head = (
        f"Autoencoder ceiling: the run's autoencoder, encoding and decoding the {c['n']} real scans, gives "
        f"reconstructions at FID {c['fid']:.4g} from them, against {m['fid']:.4g} for the synthetic set"
    )
    share = c["share_of_synthetic_fid"]
    if share is None or share >= 1.0:
        return (
            f"{head}: the synthetic set is as close to the real one as the autoencoder's own "
            "reconstructions, so the autoencoder, not the diffusion model, is what limits it."
        )
    return (
        f"{head}; of the gap, about {100 * share:.0f}% is the autoencoder and the rest the diffusion "
        "model (no diffusion model in this latent space gets closer than the reconstructions)."
    )
