"""``medddpm train-autoencoder``: options to a config, then the autoencoder's training loop."""

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


def train_autoencoder(
    data_dir: Annotated[Path, typer.Argument(help="Folder of .nii / .nii.gz scans (searched recursively).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Autoencoder folder to write.")],
    config: ConfigOpt = None,
    set_: SetOpt = None,
    image_size: ImageSizeOpt = None,
    max_steps: MaxStepsOpt = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", help="Patches per step.")] = None,
    perceptual: Annotated[
        str | None,
        typer.Option(
            "--perceptual",
            help="Perceptual loss from a local MedicalNet ResNet file: medicalnet:PATH (default: none).",
        ),
    ] = None,
    precision: PrecisionOpt = None,
    device: DeviceOpt = None,
    checkpoint_every: CheckpointEveryOpt = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Seed for weights, patches and order.")] = None,
    resume: ResumeOpt = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Start again in a folder that holds an autoencoder run.")
    ] = False,
    skip_invalid: SkipInvalidOpt = False,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run", help="Show config, data, network sizes and memory estimate; train nothing."
        ),
    ] = False,
    threads: ThreadsOpt = None,
) -> None:
    """Train the 3D AutoencoderKL of the latent space on patches of a folder of NIfTI scans."""
    startup_checks()
    threads_used = cpu_threads(threads)
    flags: dict[str, Any] = {
        "train.max_steps": max_steps,
        "train.batch_size": batch_size,
        "train.precision": precision,
        "train.device": device,
        "train.checkpoint_every": checkpoint_every,
        "train.seed": seed,
        "autoencoder.perceptual": perceptual,
    }
    cfg = training_config(output, config, set_, resume, image_size, flags)
    if dry_run:
        from medddpm.cli.dry_run import dry_run_autoencoder

        dry_run_autoencoder(cfg, data_dir, console)
        return

    from medddpm.training.autoencoder import train_autoencoder as loop

    run_training(
        loop,
        cfg,
        data_dir,
        output,
        threads_used,
        resume=resume,
        overwrite=overwrite,
        skip_invalid=skip_invalid,
    )
