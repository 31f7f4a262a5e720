"""``medddpm sample``: options to the sampling of a checkpoint into a folder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from medddpm.cli.options import (
    console,
    startup_checks,
)
from medddpm.cli.progress import sampling_progress


def sample(
    run_dir: Annotated[
        Path, typer.Argument(help="Run folder (its latest checkpoint), or a checkpoint folder (step-N).")
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder to write the samples into.")],
    num: Annotated[int, typer.Option("--num", "-n", help="Number of volumes to write.")],
    sampler: Annotated[
        str | None,
        typer.Option("--sampler", help="ddpm, ddim or dpm++ (default: the checkpoint's sample.sampler)."),
    ] = None,
    steps: Annotated[
        int | None, typer.Option("--steps", help="Network evaluations per volume (default: sample.steps).")
    ] = None,
    eta: Annotated[
        float | None,
        typer.Option(
            "--eta", help="Sampler noise (default: sample.eta, else the sampler's own: ddpm 1, ddim/dpm++ 0)."
        ),
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Sample i is drawn from seed + i.")] = 0,
    batch_size: Annotated[
        int | None,
        typer.Option("--batch-size", help="Volumes denoised at once (default: sample.batch_size)."),
    ] = None,
    checkpoint: Annotated[
        str, typer.Option("--checkpoint", help="latest, step-N, or a checkpoint folder.")
    ] = "latest",
    no_ema: Annotated[
        bool, typer.Option("--no-ema", help="Use the raw weights instead of the EMA weights.")
    ] = False,
    precision: Annotated[
        str, typer.Option("--precision", help="auto (bf16 on CUDA, else fp32), fp32, bf16 or fp16.")
    ] = "auto",
    device: Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")] = "auto",
    fmt: Annotated[
        str,
        typer.Option("--format", help="nii.gz, nii, nrrd or mha. CT is written in HU (int16), MRI on [0,1]."),
    ] = "nii.gz",
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace the samples of another sampling run in OUTPUT.")
    ] = False,
) -> None:
    """Sample synthetic volumes from a trained checkpoint into NIfTI (or NRRD / MHA) files.

    Writes sample_0000.nii.gz ... (RAS, training voxel size), manifest.json and preview.png.
    Re-running the same command finishes an interrupted run. Under torchrun each process writes its
    share (write -n N there: torchrun's own parser mistakes --num for its --numa-binding).
    """
    startup_checks()
    from medddpm.inference.sample_to_folder import sample_to_folder

    with sampling_progress() as (on_volumes, on_step):
        sample_to_folder(
            run_dir,
            output,
            num,
            checkpoint=checkpoint,
            sampler=sampler,
            steps=steps,
            eta=eta,
            seed=seed,
            batch_size=batch_size,
            ema=not no_ema,
            precision=precision,
            device=device,
            fmt=fmt,
            overwrite=overwrite,
            log=console.print,
            on_volumes=on_volumes,
            on_step=on_step,
        )
