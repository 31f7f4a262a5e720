"""What a run records while it trains, besides checkpoints (process 0 only).

- ``RUN_DIR/metrics.csv``: one row per logged step (METRICS_FIELDS), kept consistent across resumes.
- ``RUN_DIR/tensorboard/``: loss and LR scalars, with ``train.tensorboard``.
- ``RUN_DIR/previews/step-N.png``: mid-slices of a few EMA samples, every ``train.preview_every`` steps.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from medddpm.config import Config, TrainConfig
from medddpm.diffusion.schedule import NoiseSchedule
from medddpm.errors import InputError

METRICS_FIELDS = ["step", "loss", "lr", "grad_norm", "skipped_nonfinite", "seconds"]


@dataclass
class StepLog:
    """One optimizer step as the loop reports it (to metrics.csv and to the ``on_step`` callback)."""

    step: int
    max_steps: int
    loss: float
    lr: float
    grad_norm: float
    skipped_nonfinite: int
    seconds: float  # since this process started its loop


class MetricsLog:
    """RUN_DIR/metrics.csv; on resume, rows past the checkpoint's step are dropped (they will be redone)."""

    def __init__(self, path: Path, resume_step: int | None):
        self.path = path
        rows = []
        if resume_step is not None and path.exists():
            with path.open(newline="") as f:
                rows = [r for r in csv.DictReader(f) if _row_step(r) <= resume_step]
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=METRICS_FIELDS)
            writer.writeheader()
            writer.writerows(rows)

    def write(self, log: StepLog) -> None:
        with self.path.open("a", newline="") as f:
            csv.writer(f).writerow(
                [
                    log.step,
                    f"{log.loss:.6g}",
                    f"{log.lr:.6g}",
                    f"{log.grad_norm:.6g}",
                    log.skipped_nonfinite,
                    f"{log.seconds:.2f}",
                ]
            )


def _row_step(row: dict) -> float:
    """The step of a metrics.csv row; inf (dropped) for a row a crash cut short."""
    try:
        return int(row["step"]) if all(row.get(k) not in (None, "") for k in METRICS_FIELDS) else math.inf
    except ValueError:
        return math.inf


class RunRecords:
    """metrics.csv and (with ``train.tensorboard``) tensorboard scalars; writes nothing unless ``enabled``
    (processes other than 0 under torchrun)."""

    def __init__(self, run_dir: Path, tc: TrainConfig, resume_step: int | None, enabled: bool):
        self.metrics = MetricsLog(run_dir / "metrics.csv", resume_step) if enabled else None
        self.tensorboard = _tensorboard(run_dir) if tc.tensorboard and enabled else None

    def write(self, entry: StepLog) -> None:
        if self.metrics is not None:
            self.metrics.write(entry)
        if self.tensorboard is not None:
            self.tensorboard.add_scalar("loss", entry.loss, entry.step)
            self.tensorboard.add_scalar("lr", entry.lr, entry.step)

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()


def _tensorboard(run_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise InputError(
            "train.tensorboard=true needs the tensorboard package: pip install tensorboard"
        ) from None
    return SummaryWriter(str(run_dir / "tensorboard"))


@torch.no_grad()
def write_preview(
    model: torch.nn.Module,
    schedule: NoiseSchedule,
    cfg: Config,
    step: int,
    run_dir: Path,
    spacing: tuple[float, float, float],
    device: torch.device,
    precision: str,
) -> Path:
    """previews/step-N.png: mid-slices of ``train.preview_num`` EMA samples (fixed seeds, a short
    deterministic sampler of the process: DDIM for ddpm, Euler for rflow), decoded from the model's space."""
    from medddpm.diffusion.generate import generate
    from medddpm.diffusion.process import process_entry
    from medddpm.models.spaces import config_space
    from medddpm.preview import save_montage

    model.eval()
    seeds = list(range(cfg.train.preview_num))
    sampler = process_entry(cfg.diffusion.process).preview_sampler
    volumes = generate(
        model,
        schedule,
        cfg.data.image_size,
        seeds,
        sampler,
        cfg.train.preview_steps,
        device=device,
        precision=precision,
        space=config_space(cfg, run_dir),
    )
    path = run_dir / "previews" / f"step-{step:08d}.png"
    save_montage(
        [v[0].cpu().numpy() for v in volumes],
        path,
        spacing=spacing,
        titles=[f"seed {s}" for s in seeds],
        value_range=(-1.0, 1.0),
        suptitle=f"EMA samples at step {step} ({sampler}, {cfg.train.preview_steps} steps)",
    )
    return path
