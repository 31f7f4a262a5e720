"""Wall time of ``medddpm evaluate``: 100 real + 100 synthetic volumes at 64³ in under 5 minutes on CPU.

Writes the volumes (real: ellipsoids of random size on a noisy background; synthetic: the same kind
of volume with extra noise) as .nii.gz into a temporary folder, runs medddpm.evaluation.evaluate.evaluate
with its defaults (random-init resnet10, 500 MS-SSIM pairs per set) and prints the total and the
breakdown (loading, features, feature metrics, MS-SSIM, report), with the process's CPU time and
the machine load, since on a shared machine wall time depends on what else runs.

    .venv/bin/python benchmarks/bench_evaluate.py [--n 100] [--size 64] [--max-pairs 500] [--report DIR]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch


def volume(rng: np.random.Generator, size: int, noise: float) -> np.ndarray:
    """An ellipsoid of random radii and brightness on a dark background, with Gaussian noise."""
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, size)] * 3, indexing="ij"))
    radius = np.sqrt(((grid / rng.uniform(0.4, 0.8, size=(3, 1, 1, 1))) ** 2).sum(0))
    inner = np.sqrt(((grid / rng.uniform(0.1, 0.3, size=(3, 1, 1, 1))) ** 2).sum(0))
    v = 100.0 * (radius < 1) + rng.uniform(20, 60) * (inner < 1) + rng.normal(0, noise, grid.shape[1:])
    return v.astype(np.float32)


def write_set(folder: Path, n: int, size: int, noise: float, seed: int) -> None:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        nib.save(
            nib.Nifti1Image(volume(rng, size, noise), np.diag([1.5, 1.5, 1.5, 1.0])),
            folder / f"v{i:04d}.nii.gz",
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100, help="volumes per set")
    parser.add_argument("--size", type=int, default=64, help="voxels per side")
    parser.add_argument("--max-pairs", type=int, default=None, help="MS-SSIM pairs per set (default: 500)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--report", type=Path, default=None, help="keep the report in this folder")
    args = parser.parse_args()

    from medddpm.evaluation.evaluate import evaluate
    from medddpm.evaluation.measure import eval_config

    with tempfile.TemporaryDirectory(prefix="bench_evaluate_") as tmp:
        root = Path(tmp)
        t = time.perf_counter()
        write_set(root / "real", args.n, args.size, noise=5.0, seed=0)
        write_set(root / "synthetic", args.n, args.size, noise=15.0, seed=1)
        print(f"wrote {2 * args.n} volumes of {args.size}³ in {time.perf_counter() - t:.1f} s")

        load_before = os.getloadavg()
        cpu = time.process_time()
        t = time.perf_counter()
        result = evaluate(
            root / "real",
            root / "synthetic",
            args.report or root / "report",
            eval_config(flags={"eval.max_pairs": args.max_pairs}),
            device=args.device,
            overwrite=True,
        )
        wall = time.perf_counter() - t
        cpu = time.process_time() - cpu
        load_after = os.getloadavg()

    m = result.metrics
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch threads "
          f"{torch.get_num_threads()}, torch {torch.__version__}")  # fmt: skip
    print(f"load average (1, 5, 15 min) before: {' '.join(f'{x:.2f}' for x in load_before)}, "
          f"after: {' '.join(f'{x:.2f}' for x in load_after)}")  # fmt: skip
    print(
        f"evaluate {m['n_real']} + {m['n_synthetic']} volumes at {args.size}³: "
        f"{wall:.1f} s wall, {cpu:.1f} s CPU (this process)"
    )
    print(f"  {'stage':<16} {'wall':>8} {'CPU':>8}")
    for stage, seconds in result.seconds.items():
        if stage != "total":
            print(f"  {stage:<16} {seconds:7.1f}s {result.cpu_seconds[stage]:7.1f}s")
    print(f"MS-SSIM pairs per set: {m['ms_ssim_pairs']}; FID {m['fid']:.4g}, MMD² {m['mmd']:.3g}")
    print("target: under 300 s:", "met" if wall < 300 else "NOT met")


if __name__ == "__main__":
    main()
