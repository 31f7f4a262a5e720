"""``medddpm train``: options to a config, then the training loop (or its dry run)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from medddpm.cli.options import (
    CheckpointEveryOpt,
    ConfigOpt,
    DeviceOpt,
    ImageSizeOpt,
    MaxStepsOpt,
    PrecisionOpt,
    ResumeOpt,
    SetOpt,
    SkipInvalidOpt,
    ThreadsOpt,
    console,
    cpu_threads,
    startup_checks,
)
from medddpm.cli.training import run_training, training_config


def train(
    data_dir: Annotated[Path, typer.Argument(help="Folder of .nii / .nii.gz scans (searched recursively).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Run folder to write.")],
    config: ConfigOpt = None,
    set_: SetOpt = None,
    image_size: ImageSizeOpt = None,
    max_steps: MaxStepsOpt = None,
    batch_size: Annotated[
        int | None, typer.Option("--batch-size", help="Volumes per step per process.")
    ] = None,
    precision: PrecisionOpt = None,
    device: DeviceOpt = None,
    checkpoint_every: CheckpointEveryOpt = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Seed for weights, batches and noise.")] = None,
    resume: ResumeOpt = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Start again in a folder that holds a run.")
    ] = False,
    skip_invalid: SkipInvalidOpt = False,
    conditions: Annotated[
        Path | None,
        typer.Option(
            "--conditions",
            help="CSV table: a 'file' column naming each scan, one column per variable to condition on "
            "(text: categorical, numbers: continuous; conditions.types overrides).",
        ),
    ] = None,
    autoencoder: Annotated[
        Path | None,
        typer.Option(
            "--autoencoder",
            help="Train in the latent space of this train-autoencoder folder (sets model.space latent).",
        ),
    ] = None,
    labels: Annotated[
        Path | None,
        typer.Option(
            "--labels",
            help="Folder of label maps paired with the scans by name (same shape and affine), fed to the "
            "network beside each scan; `sample --masks` then draws scans for given masks.",
        ),
    ] = None,
    dry_run: Annotated[
        bool,
        typer.Option("--dry-run", help="Show config, data, model size and memory estimate; train nothing."),
    ] = False,
    threads: ThreadsOpt = None,
) -> None:
    """Train a 3D DDPM on a folder of NIfTI scans."""
    startup_checks()
    threads_used = cpu_threads(threads)  # --threads is checked before anything is read
    flags: dict[str, Any] = {
        "train.max_steps": max_steps,
        "train.batch_size": batch_size,
        "train.precision": precision,
        "train.device": device,
        "train.checkpoint_every": checkpoint_every,
        "train.seed": seed,
        "model.space": None if autoencoder is None else "latent",
        "latent.autoencoder": None if autoencoder is None else str(autoencoder),
    }
    cfg = training_config(output, config, set_, resume, image_size, flags)
    if dry_run:
        from medddpm.cli.dry_run import dry_run as run_dry
        from medddpm.training.latent import resolve_latent

        if cfg.latent.autoencoder is not None:  # that folder's autoencoder section; nothing written
            cfg = resolve_latent(cfg, output, resume)
        run_dry(cfg, data_dir, console, conditions)
        return

    from medddpm.training.loop import train as loop

    run_training(
        loop, cfg, data_dir, output, threads_used, resume=resume, overwrite=overwrite,
        skip_invalid=skip_invalid, conditions=conditions, labels=labels,
    )  # fmt: skip
