"""``medddpm train``: options to a config, then the training loop (or its dry run)."""

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


def train(
    data_dir: Annotated[Path, typer.Argument(help="Folder of .nii / .nii.gz scans (searched recursively).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Run folder to write.")],
    config: ConfigOpt = None,
    set_: SetOpt = None,
    image_size: Annotated[
        list[int] | None, typer.Option("--image-size", help="Voxels per side (one number, or three).")
    ] = None,
    max_steps: Annotated[
        int | None, typer.Option("--max-steps", help="Optimizer steps to train for.")
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option("--batch-size", help="Volumes per step per process.")
    ] = None,
    precision: PrecisionOpt = None,
    device: DeviceOpt = None,
    checkpoint_every: Annotated[
        int | None, typer.Option("--checkpoint-every", help="Steps between checkpoints.")
    ] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Seed for weights, batches and noise.")] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue from the run's latest checkpoint.")
    ] = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Start again in a folder that holds a run.")
    ] = False,
    skip_invalid: Annotated[
        bool, typer.Option("--skip-invalid", help="Skip unusable scans (with a warning) instead of stopping.")
    ] = False,
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
    from medddpm.config import build_config, resolve_config_path

    saved = resume and config is None and (output / "config.yaml").is_file()
    if saved:
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
        "model.space": None if autoencoder is None else "latent",
        "latent.autoencoder": None if autoencoder is None else str(autoencoder),
    }
    cfg = build_config(config, set_ or [], flags, saved=saved)
    if dry_run:
        from medddpm.cli.dry_run import dry_run as run_dry
        from medddpm.training.latent import resolve_latent

        if cfg.latent.autoencoder is not None:  # that folder's autoencoder section; nothing written
            cfg = resolve_latent(cfg, output, resume)
        run_dry(cfg, data_dir, console, conditions)
        return

    from medddpm.training.loop import train as run_training

    try:
        with threads_used, training_progress(enabled=is_main_process()) as on_step:
            result = run_training(
                cfg,
                data_dir,
                output,
                resume=resume,
                overwrite=overwrite,
                skip_invalid=skip_invalid,
                conditions=conditions,
                labels=labels,
                log=print_message,
                on_step=on_step,
            )
    except KeyboardInterrupt:  # a second Ctrl-C (typer would exit 130 without a word)
        if is_main_process():
            print_message(
                "Stopped at once, without a checkpoint of the step under way; "
                f"--resume continues from the last checkpoint in {output / 'checkpoints'}"
            )
        raise typer.Exit(130) from None
    if result.interrupted:
        raise typer.Exit(128 + (result.signal or 2))  # the shell's convention: 130 Ctrl-C, 143 SIGTERM
    if is_main_process():
        console.print(f"[green]Done:[/] step {result.step}, checkpoint {result.checkpoint}")
