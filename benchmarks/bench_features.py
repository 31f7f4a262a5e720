"""What the evaluation's feature metrics see: precision and coverage of controlled changes to real scans.

The random-init resnet10 of ``medddpm evaluate`` (seed 0) measures held-out real scans against sets
made from the training scans with one thing changed, and against the given synthetic sets, under
two normalisations of each volume before the network:

    whole      z-score over every voxel (MONAI's medicalnet_intensity_normalisation; medddpm's rule)
    nonzero    z-score over the nonzero voxels, zeros kept at 0 (MedicalNet's training data; medddpm's
               rule before), for comparison

Changes (each on the first N training scans, N = the held-out count): none; a constant floor of
0.001 in the background (voxels exactly 0); light noise inside the head only (sd 0.02); noise
everywhere (sd 0.02); Gaussian blur (sigma 0.5 and 1 voxel). A useful feature space moves little for
the floor and the light noise, and much for blur, which is a real loss of detail.

    python benchmarks/bench_features.py --cohort medddpm-demo/cohort --run medddpm-demo/run \\
        --synthetic medddpm-demo/samples [--synthetic OTHER_SAMPLES ...]
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from scipy.ndimage import gaussian_filter


def nonzero_normalize(volumes: torch.Tensor) -> torch.Tensor:
    """The earlier rule: per volume, z-score over nonzero voxels; zero voxels stay 0."""
    x = volumes.float()
    flat = x.reshape(x.shape[0], -1)
    nonzero = flat != 0
    count = nonzero.sum(dim=1).clamp(min=1)
    mean = (flat * nonzero).sum(dim=1) / count
    std = ((((flat - mean[:, None]) * nonzero) ** 2).sum(dim=1) / count).sqrt()
    std = torch.where(std > 0, std, torch.ones_like(std))
    z = (flat - mean[:, None]) / std[:, None]
    return torch.where(nonzero, z, torch.zeros_like(z)).reshape(x.shape)


def changes(scans: torch.Tensor, seed: int = 0) -> dict[str, torch.Tensor]:
    """The controlled variants of ``scans`` [N, 1, D, H, W] on [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    x = scans.numpy()
    head = torch.from_numpy(np.stack([gaussian_filter(v, (0, 2, 2, 2)) > 0.15 for v in x]))
    noise = 0.02 * torch.randn(scans.shape, generator=g)
    return {
        "unchanged": scans,
        "background floor 0.001": torch.where(scans == 0, torch.full_like(scans, 1e-3), scans),
        "noise 0.02 inside the head": torch.where(head, (scans + noise).clamp(0, 1), scans),
        "noise 0.02 everywhere": (scans + noise).clamp(0, 1),
        "blur sigma 0.5": torch.from_numpy(np.stack([gaussian_filter(v, (0, 0.5, 0.5, 0.5)) for v in x])),
        "blur sigma 1": torch.from_numpy(np.stack([gaussian_filter(v, (0, 1, 1, 1)) for v in x])),
    }


def load(folder: Path, run: Path | None, reference: Path) -> torch.Tensor:
    """A folder's scans as evaluate reads them: the run's preprocessing, else evaluate's default (the
    shape of ``reference``, the first held-out scan)."""
    from medddpm.evaluation.measure import default_preprocessing, load_set, resolve_preprocessing

    files = sorted([*folder.glob("*.nii.gz"), *folder.glob("*.nii")])
    prep = resolve_preprocessing(run) if run is not None else default_preprocessing(reference)
    return load_set(folder.name, folder, files, prep).volumes


def measure(
    heldout: torch.Tensor, sets: dict[str, torch.Tensor], normalize: Callable[[torch.Tensor], torch.Tensor]
) -> dict[str, dict[str, float]]:
    import medddpm.evaluation.features as features
    from medddpm.evaluation.metrics import prdc

    rule = features.medicalnet_normalize
    features.medicalnet_normalize = normalize
    try:
        fx = features.build_feature_extractor("resnet10", seed=0)
        real = fx.extract(heldout)
        return {name: prdc(real, fx.extract(v), nearest_k=5) for name, v in sets.items()}
    finally:
        features.medicalnet_normalize = rule


def main(argv: list[str] | None = None) -> None:
    from medddpm.evaluation.features import medicalnet_normalize

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cohort", type=Path, required=True, help="folder with train/ and heldout/")
    p.add_argument("--run", type=Path, help="run folder whose preprocessing to use (default: evaluate's)")
    p.add_argument("--synthetic", type=Path, action="append", default=[], help="a folder of samples")
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    reference = sorted((a.cohort / "heldout").glob("*.nii*"))[0]
    heldout = load(a.cohort / "heldout", a.run, reference)
    train = load(a.cohort / "train", a.run, reference)[: len(heldout)]
    sets = {f"training scans, {k}": v for k, v in changes(train).items()}
    sets.update({f"synthetic: {d}": load(d, a.run, reference) for d in a.synthetic})
    rules = {"whole": medicalnet_normalize, "nonzero": nonzero_normalize}
    results = {name: measure(heldout, sets, rule) for name, rule in rules.items()}
    print(f"{len(heldout)} held-out scans against each set; precision / coverage, k = 5\n")
    print("| set | whole-volume z-score (now) | nonzero-voxel z-score (before) |")
    print("|---|---:|---:|")
    for name in sets:
        cells = [f"{results[r][name]['precision']:.2f} / {results[r][name]['coverage']:.2f}" for r in rules]
        print(f"| {name} | {' | '.join(cells)} |")


if __name__ == "__main__":
    main()
