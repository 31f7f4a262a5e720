"""Do the defaults learn? Train short runs on a two-mode toy cohort and score what they sample.

1. Data: ``toy_cohort`` writes 16³ NIfTI volumes, half a bright sphere in one half of the field of
   view, half a dimmer cube in the other, both on a dark background with light Gaussian noise.
2. Each recipe is the code defaults plus the size settings of ``SIZE_SETTINGS`` (16³, a two-level
   U-Net of ~0.1M parameters, CPU) plus the recipe's own ``--set`` overrides; it trains through
   ``medddpm.training.loop.train`` and samples through ``sample_to_folder`` with the checkpoint
   config's own sampler and steps (the defaults, unless the recipe sets them).
3. ``judge``: each sample's Pearson correlation with the two noise-free mode templates; the best
   one names its mode, and the sample *matches* when that correlation is at least ``MATCH``.
   Training volumes score ~0.99 and pure noise ~0 (tests/test_distribution.py checks both).
   A recipe passes when at least ``MIN_MATCHED`` of the samples match and each mode holds 20-80%
   of them.

Usage (from the repository root; one recipe per ``--recipe``, its overrides separated by commas):

    .venv/bin/python benchmarks/bench_defaults.py --out /tmp/bench_defaults --steps 400 \\
        --recipe "new=" \\
        --recipe "old=diffusion.prediction=eps,train.lr=1e-4,train.warmup_steps=500,train.ema_warmup=false"

``--config tiny`` starts from configs/tiny.yaml instead (its own sizes, so SIZE_SETTINGS are not added).
Results: benchmarks/RESULTS.md, "Defaults". tests/test_distribution.py runs the same ``run_recipe``.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

SIZE = 16
SIZE_SETTINGS = [
    "data.image_size=16",
    "model.channels=[8,16]",
    "model.attention_levels=[false,true]",
    "model.num_head_channels=8",
    "model.norm_num_groups=4",
    "train.device=cpu",
    "train.preview_every=0",
    "train.log_every=50",
]
"""What a small CPU run changes besides the number of steps and the batch size: sizes, not the recipe."""
MATCH = 0.7
"""A sample matches a mode when its correlation with that mode's template is at least this."""
MIN_MATCHED = 0.75
"""Share of samples that must match a mode for a recipe to pass."""
SHARE_RANGE = (0.2, 0.8)
"""Each mode's share of the samples must lie in this range (the cohort is 50 / 50)."""
MODES = ("sphere", "cube")


def templates() -> np.ndarray:
    """[2, 16, 16, 16] float64: 1 inside the sphere (mode 0) or the cube (mode 1), 0 elsewhere."""
    grid = np.stack(np.meshgrid(*[np.arange(SIZE, dtype=float)] * 3, indexing="ij"))
    sphere = np.sqrt(((grid - np.array([7.5, 7.5, 4.0])[:, None, None, None]) ** 2).sum(0)) <= 3.5
    cube = (np.abs(grid - np.array([7.5, 7.5, 11.5])[:, None, None, None]) <= 3.0).all(0)
    return np.stack([sphere, cube]).astype(np.float64)


def toy_volume(mode: int, rng: np.random.Generator, noise: float = 0.05) -> np.ndarray:
    """One volume of ``mode``: the sphere at 1.0 or the cube at 0.6 on 0, plus N(0, noise²) per voxel."""
    value = (1.0, 0.6)[mode]
    return (value * templates()[mode] + rng.normal(0, noise, (SIZE,) * 3)).astype(np.float32)


def toy_cohort(folder: Path, n: int = 40, seed: int = 0) -> Path:
    """``n`` NIfTI files (1 mm isotropic, RAS), modes alternating: half spheres, half cubes."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        nib.save(nib.Nifti1Image(toy_volume(i % 2, rng), np.eye(4)), str(folder / f"toy_{i:03d}.nii.gz"))
    return folder


@dataclass
class ModeReport:
    """How a set of volumes sits on the two modes."""

    correlations: np.ndarray
    """[N]: each volume's correlation with its best-matching template."""
    modes: np.ndarray
    """[N]: the index of that template (0 sphere, 1 cube)."""

    @property
    def matched(self) -> float:
        return float((self.correlations >= MATCH).mean())

    @property
    def shares(self) -> tuple[float, float]:
        return tuple(float((self.modes == m).mean()) for m in range(len(MODES)))

    @property
    def median(self) -> float:
        return float(np.median(self.correlations))

    @property
    def passed(self) -> bool:
        lo, hi = SHARE_RANGE
        return self.matched >= MIN_MATCHED and all(lo <= s <= hi for s in self.shares)

    def summary(self) -> str:
        shares = " / ".join(f"{s:.0%}" for s in self.shares)
        return (
            f"median r {self.median:.2f}, matched {self.matched:.0%}, sphere / cube {shares}: "
            f"{'pass' if self.passed else 'FAIL'}"
        )


def judge(volumes: np.ndarray) -> ModeReport:
    """Score volumes [N, 16, 16, 16] (any intensity scale) against the mode templates."""
    t = templates().reshape(len(MODES), -1)
    v = np.asarray(volumes, dtype=np.float64).reshape(len(volumes), -1)
    r = np.array([[np.corrcoef(x, m)[0, 1] for m in t] for x in v])
    r = np.nan_to_num(r, nan=0.0)  # a constant volume correlates with nothing
    return ModeReport(correlations=r.max(1), modes=r.argmax(1))


def run_recipe(
    root: Path,
    data: Path,
    overrides: list[str],
    *,
    config: str | None = None,
    max_steps: int,
    batch_size: int,
    num: int = 16,
    seed: int = 0,
) -> tuple[ModeReport, float, float]:
    """Train ``config`` (None: the code defaults) + SIZE_SETTINGS + ``overrides`` into root/run, sample
    ``num`` volumes with the checkpoint's own sample settings; the report and the train / sample seconds."""
    from medddpm.config import build_config
    from medddpm.inference.sample_to_folder import read_output, sample_to_folder
    from medddpm.training.loop import train

    sets = ([] if config else SIZE_SETTINGS) + list(overrides)
    sets += [f"train.max_steps={max_steps}", f"train.batch_size={batch_size}"]
    sets += [f"train.checkpoint_every={max_steps}", f"train.seed={seed}"]
    cfg = build_config(config, sets)
    t0 = time.perf_counter()
    train(cfg, data, root / "run")
    t1 = time.perf_counter()
    result = sample_to_folder(root / "run", root / "samples", num, seed=10_000, device="cpu")
    t2 = time.perf_counter()
    report = judge(np.stack([read_output(f) for f in result.files]))
    return report, t1 - t0, t2 - t1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="work folder (one subfolder per recipe)")
    ap.add_argument("--recipe", action="append", required=True, help="NAME=key=value,key=value,...")
    ap.add_argument("--config", default=None, help="a preset or YAML instead of the code defaults")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--num", type=int, default=16)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    data = toy_cohort(args.out / "data")
    print(f"# {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.processor()}, ")
    load = os.getloadavg()[0]
    print(f"# nproc {os.cpu_count()}, load {load:.1f}, {args.threads} thread(s), torch {torch.__version__}")
    print(f"# {shlex.join([sys.executable, *sys.argv])}")
    print("| recipe | seed | train s | sample s | median r | matched | sphere / cube | verdict |")
    print("|---|---:|---:|---:|---:|---:|---|---|")
    for spec in args.recipe:
        name, _, rest = spec.partition("=")
        overrides = [s for s in rest.split(",") if s]
        for seed in args.seeds:
            root = args.out / f"{name}-{seed}"
            report, t_train, t_sample = run_recipe(
                root, data, overrides, config=args.config, max_steps=args.steps,
                batch_size=args.batch_size, num=args.num, seed=seed,
            )  # fmt: skip
            shares = " / ".join(f"{s:.0%}" for s in report.shares)
            print(
                f"| {name} | {seed} | {t_train:.0f} | {t_sample:.0f} | {report.median:.2f} | "
                f"{report.matched:.0%} | {shares} | {'pass' if report.passed else 'FAIL'} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
