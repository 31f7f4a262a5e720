"""``medddpm train-autoencoder``: options to a config, then the autoencoder's training loop."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from medddpm.cli.options import (
    ConfigOpt,
    DeviceOpt,
    PrecisionOpt,
    SetOpt,
    ThreadsOpt,
    console,
    cpu_threads,
    fail,
    is_main_process,
    print_message,
    startup_checks,
)
from medddpm.cli.progress import training_progress


def train_autoencoder(
    data_dir: Annotated[Path, typer.Argument(help="Folder of .nii / .nii.gz scans (searched recursively).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Autoencoder folder to write.")],
    config: ConfigOpt = None,
    set_: SetOpt = None,
    image_size: Annotated[
        list[int] | None, typer.Option("--image-size", help="Voxels per side (one number, or three).")
    ] = None,
    max_steps: Annotated[
        int | None, typer.Option("--max-steps", help="Optimizer steps to train for.")
    ] = None,
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
    checkpoint_every: Annotated[
        int | None, typer.Option("--checkpoint-every", help="Steps between checkpoints.")
    ] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Seed for weights, patches and order.")] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue from the run's latest checkpoint.")
    ] = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Start again in a folder that holds an autoencoder run.")
    ] = False,
    skip_invalid: Annotated[
        bool, typer.Option("--skip-invalid", help="Skip unusable scans (with a warning) instead of stopping.")
    ] = False,
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
    from medddpm.config import build_config, resolve_config_path

    if resume and config is None and (output / "config.yaml").is_file():
        config = str(output / "config.yaml")  # a resumed run keeps its own config unless told otherwise
    elif config is not None:
        resolve_config_path(config)
    if image_size is not None and len(image_size) not in (1, 3):
        fail("--image-size takes one number or three")
    flags: dict[str, Any] = {
        "data.image_size": None
        if image_size is None
        else (image_size[0] if len(image_size) == 1 else image_size),
        "train.max_steps": max_steps,
        "train.batch_size": batch_size,
        "train.precision": precision,
        "train.device": device,
        "train.checkpoint_every": checkpoint_every,
        "train.seed": seed,
        "autoencoder.perceptual": perceptual,
    }
    cfg = build_config(config, set_ or [], flags)
    if dry_run:
        from medddpm.cli.dry_run import dry_run_autoencoder

        dry_run_autoencoder(cfg, data_dir, console)
        return

    from medddpm.training.autoencoder import train_autoencoder as run_training

    with threads_used, training_progress(enabled=is_main_process()) as on_step:
        result = run_training(
            cfg,
            data_dir,
            output,
            resume=resume,
            overwrite=overwrite,
            skip_invalid=skip_invalid,
            log=print_message,
            on_step=on_step,
        )
    if result.interrupted:
        raise typer.Exit(128 + (result.signal or 2))
    if is_main_process():
        console.print(f"[green]Done:[/] step {result.step}, checkpoint {result.checkpoint}")
