"""``medddpm sample``: flags on top of the checkpoint config's ``sample`` section, then the sampling
of that checkpoint into a folder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import click
import typer
from typer.core import TyperCommand

from medddpm.cli.options import (
    ThreadsOpt,
    cpu_threads,
    print_message,
    startup_checks,
)
from medddpm.cli.progress import sampling_progress

SAMPLER_HELP = "Sampler (default: the checkpoint's sample.sampler)."
ETA_HELP = "Sampler noise (default: sample.eta, else the sampler's own)."


class SampleCommand(TyperCommand):
    """``medddpm sample``, whose --sampler and --eta help is completed from the sampler registry when
    it is shown: the registry imports torch, which ``medddpm --help`` must not wait for."""

    def format_help(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        from medddpm.diffusion.samplers import SAMPLERS

        names = "; ".join(f"{name}: {entry.description}" for name, entry in SAMPLERS.items())
        etas = "; ".join(f"{name} {entry.eta:g} ({entry.eta_bounds})" for name, entry in SAMPLERS.items())
        helps = {"sampler": f"{SAMPLER_HELP} {names}.", "eta": f"{ETA_HELP} {etas}."}
        for param in self.params:
            if param.name in helps:
                param.help = helps[param.name]
        super().format_help(ctx, formatter)


def sample(
    run_dir: Annotated[
        Path, typer.Argument(help="Run folder (its latest checkpoint), or a checkpoint folder (step-N).")
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder to write the samples into.")],
    num: Annotated[int, typer.Option("--num", "-n", help="Number of volumes to write.")],
    sampler: Annotated[str | None, typer.Option("--sampler", help=SAMPLER_HELP)] = None,
    steps: Annotated[
        int | None, typer.Option("--steps", help="Network evaluations per volume (default: sample.steps).")
    ] = None,
    eta: Annotated[float | None, typer.Option("--eta", help=ETA_HELP)] = None,
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
    condition: Annotated[
        list[str] | None,
        typer.Option("--condition", help="name=value for every sample (repeatable); others stay unknown."),
    ] = None,
    conditions_csv: Annotated[
        Path | None,
        typer.Option("--conditions-csv", help="CSV with one row per sample and one column per variable."),
    ] = None,
    match_training: Annotated[
        bool,
        typer.Option("--match-training", help="Each sample takes a random training scan's conditions."),
    ] = False,
    guidance: Annotated[
        float,
        typer.Option(
            "--guidance", help="Classifier-free guidance W: 1 conditional, 0 unconditional, >1 stronger."
        ),
    ] = 1.0,
    guidance_rescale: Annotated[
        float, typer.Option("--guidance-rescale", help="Guidance rescale phi in [0, 1] (Lin et al. 2024).")
    ] = 0.0,
    extrapolate: Annotated[
        bool, typer.Option("--extrapolate", help="Allow numbers outside the training range of a variable.")
    ] = False,
    masks: Annotated[
        Path | None,
        typer.Option(
            "--masks",
            help="Folder of label maps (a --labels run): sample i is drawn for mask i mod M and written as "
            "NAME_img.nii.gz with NAME_seg.nii.gz, the mask on the same grid.",
        ),
    ] = None,
    mask_augment: Annotated[
        float,
        typer.Option(
            "--mask-augment",
            help="Scale masks by up to 1 +- A and shift them by up to A x the side (seeded).",
        ),
    ] = 0.0,
    threads: ThreadsOpt = None,
) -> None:
    """Sample synthetic volumes from a trained checkpoint into NIfTI (or NRRD / MHA) files.

    Writes sample_0000.nii.gz ... (RAS, training voxel size), manifest.json and preview.png.
    Re-running the same command finishes an interrupted run. Under torchrun each process writes its
    share (write -n N there: torchrun's own parser mistakes --num for its --numa-binding).
    """
    startup_checks()
    threads_used = cpu_threads(threads)  # --threads is checked before anything is read
    from medddpm.inference.sample_to_folder import ConditionRequest, checkpoint_config, sample_to_folder

    # The checkpoint is resolved once, so its config and its weights come from the same folder.
    checkpoint_dir, cfg = checkpoint_config(run_dir, checkpoint)
    settings = cfg.sample.with_flags(sampler=sampler, steps=steps, eta=eta, batch_size=batch_size)
    try:
        with threads_used, sampling_progress() as (on_volumes, on_step):
            sample_to_folder(
                checkpoint_dir,
                output,
                num,
                settings,
                seed=seed,
                ema=not no_ema,
                precision=precision,
                device=device,
                fmt=fmt,
                overwrite=overwrite,
                conditions=ConditionRequest(
                    tuple(condition or ()),
                    conditions_csv,
                    match_training,
                    guidance,
                    guidance_rescale,
                    extrapolate,
                    masks,
                    mask_augment,
                ),
                log=print_message,
                on_volumes=on_volumes,
                on_step=on_step,
            )
    except KeyboardInterrupt:  # typer would exit 130 without a word
        print_message(f"Interrupted; {output} is incomplete: run the same command again to finish it")
        raise typer.Exit(130) from None
