"""The ``medddpm`` command: option parsing only; each command calls one plain function.

Heavy imports (torch, MONAI) happen inside the commands so that ``--help`` is instant.
Exit codes: 0 success, 1 unexpected failure, 2 bad input or usage (one line, no traceback unless
``--debug``), 130 interrupted (143 when SIGTERM stopped `train`).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

app = typer.Typer(
    name="medddpm",
    help="3D denoising diffusion for medical volumes: train on NIfTI scans, sample, evaluate.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
console = Console(stderr=True, highlight=False)
_state = {"debug": False}


def _is_main_process() -> bool:
    """False in torchrun's processes other than rank 0: they leave progress and messages to it."""
    return os.environ.get("RANK", "0") == "0"


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks for errors.")] = False,
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False,
) -> None:
    _state["debug"] = debug
    if version:
        from medddpm import __version__

        typer.echo(f"medddpm {__version__}")
        raise typer.Exit()


# Shared option types --------------------------------------------------------------------------
ConfigOpt = Annotated[
    str | None, typer.Option("--config", "-c", help="YAML config file, or a preset name from configs/.")
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override one config value, e.g. --set train.lr=3e-4 (repeatable)."),
]
DeviceOpt = Annotated[str | None, typer.Option("--device", help="auto, cpu or cuda.")]
PrecisionOpt = Annotated[str | None, typer.Option("--precision", help="auto, fp32, bf16 or fp16.")]


@app.command()
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
    dry_run: Annotated[
        bool,
        typer.Option("--dry-run", help="Show config, data, model size and memory estimate; train nothing."),
    ] = False,
) -> None:
    """Train a 3D DDPM on a folder of NIfTI scans."""
    _startup_checks()
    from medddpm.config import build_config, resolve_config_path

    if resume and config is None and (output / "config.yaml").is_file():
        config = str(output / "config.yaml")  # a resumed run keeps its own config unless told otherwise
    elif config is not None:
        resolve_config_path(config)
    if image_size is not None and len(image_size) not in (1, 3):
        _fail("--image-size takes one number or three")
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
    }
    cfg = build_config(config, set_ or [], flags)
    if dry_run:
        from medddpm.cli.dry_run import dry_run as run_dry

        run_dry(cfg, data_dir, console)
        return

    from medddpm.training.loop import train as run_training

    with _training_progress(enabled=_is_main_process()) as on_step:
        result = run_training(
            cfg,
            data_dir,
            output,
            resume=resume,
            overwrite=overwrite,
            skip_invalid=skip_invalid,
            log=console.print,
            on_step=on_step,
        )
    if result.interrupted:
        raise typer.Exit(128 + (result.signal or 2))  # the shell's convention: 130 Ctrl-C, 143 SIGTERM
    if _is_main_process():
        console.print(f"[green]Done:[/] step {result.step}, checkpoint {result.checkpoint}")


def _training_progress(enabled: bool = True):
    """A rich progress bar fed by the training loop's per-step callback (None when not ``enabled``)."""
    import contextlib

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    @contextlib.contextmanager
    def context():
        progress = Progress(
            TextColumn("[bold]train"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TextColumn("{task.fields[rate]} it/s"),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        task = None
        start_step = None

        def on_step(entry) -> None:
            nonlocal task, start_step
            if task is None:
                start_step = entry.step - 1
                task = progress.add_task(
                    "train", total=entry.max_steps, completed=start_step, loss="-", rate="-"
                )
            rate = (entry.step - start_step) / entry.seconds if entry.seconds > 0 else 0.0
            progress.update(task, completed=entry.step, loss=f"{entry.loss:.4f}", rate=f"{rate:.2f}")

        with progress:
            yield on_step

    return context() if enabled else contextlib.nullcontext()


@app.command()
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
    _startup_checks()
    from medddpm.inference.sample_to_folder import sample_to_folder

    with _sampling_progress() as (on_volumes, on_step):
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


def _sampling_progress():
    """Two rich progress bars fed by sampling's callbacks: volumes written, steps of the current batch.

    The bars appear with the first callback, so an error found while checking the input stays one line.
    """
    import contextlib

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    @contextlib.contextmanager
    def context():
        progress = Progress(
            TextColumn("[bold]{task.description:>7}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        volumes = progress.add_task("volumes", total=None)
        steps = progress.add_task("steps", total=None)
        started = False

        def on_volumes(done: int, total: int) -> None:
            nonlocal started
            if not started:
                progress.start()
                started = True
            progress.update(volumes, completed=done, total=total)

        def on_step(i: int, total: int) -> None:
            if i == 1:
                progress.reset(steps, total=total)
            progress.update(steps, completed=i, total=total)

        try:
            yield on_volumes, on_step
        finally:
            if started:
                progress.stop()

    return context()


@app.command()
def evaluate(
    real_dir: Annotated[Path, typer.Argument(help="Folder of real .nii / .nii.gz scans.")],
    synth_dir: Annotated[Path, typer.Argument(help="Folder of synthetic scans (e.g. from medddpm sample).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Report folder to write.")],
    run: Annotated[
        Path | None,
        typer.Option("--run", help="Run folder: preprocess both sets with its transforms (size, scale)."),
    ] = None,
    features: Annotated[
        str | None, typer.Option("--features", help="resnet10 (default), resnet18, resnet34 or resnet50.")
    ] = None,
    feature_weights: Annotated[
        Path | None,
        typer.Option("--feature-weights", help="MedicalNet checkpoint (.pth, .safetensors); default: none."),
    ] = None,
    max_pairs: Annotated[
        int | None, typer.Option("--max-pairs", help="MS-SSIM pairs per set, a seeded subset (default 500).")
    ] = None,
    seed: Annotated[
        int | None, typer.Option("--seed", help="Seeds the random-init network and the pairs (default 0).")
    ] = None,
    save_features: Annotated[
        bool, typer.Option("--save-features", help="Also write features.npz (arrays real, synthetic).")
    ] = False,
    device: Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")] = "auto",
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an earlier report in OUTPUT.")
    ] = False,
) -> None:
    """Compare synthetic scans with real ones: 3D FID, MMD, precision/recall, MS-SSIM; writes report.html."""
    _startup_checks()
    from medddpm.evaluation.measure import evaluate as run_evaluation
    from medddpm.evaluation.report import summary_table

    with console.status("Evaluating"):  # transient: an error stays one line
        result = run_evaluation(
            real_dir,
            synth_dir,
            output,
            run_dir=run,
            features=features,
            feature_weights=feature_weights,
            max_pairs=max_pairs,
            seed=seed,
            save_features=save_features,
            device=device,
            overwrite=overwrite,
            log=console.print,
        )
    Console(highlight=False).print(summary_table(result.metrics))
    console.print(f"[green]Report:[/] {result.html}")


@app.command()
def demo(
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Folder for the demo's cohort, run, samples and report.")
    ] = Path("medddpm-demo"),
    minutes: Annotated[
        float | None,
        typer.Option("--minutes", help="Training minutes (default 7; the rest of the demo takes about 3)."),
    ] = None,
    device: Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")] = "auto",
    config: Annotated[str, typer.Option("--config", "-c", help="Preset or YAML file to train.")] = "demo",
    set_: SetOpt = None,
    image_size: Annotated[
        int | None, typer.Option("--image-size", help="Voxels per side of the cohort (default: config's).")
    ] = None,
    subjects: Annotated[
        int | None, typer.Option("--subjects", help="Scans in the cohort, a quarter held out (default 64).")
    ] = None,
    num: Annotated[int, typer.Option("--num", "-n", help="Synthetic volumes to draw and evaluate.")] = 16,
    seed: Annotated[int, typer.Option("--seed", help="Seeds the cohort, training and sampling.")] = 0,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an earlier demo's folders in OUTPUT.")
    ] = False,
) -> None:
    """The whole tool in about 10 minutes on a CPU: a brain MRI cohort made from the MNI152 template
    (nilearn), trained on for --minutes, sampled and evaluated against held-out scans.
    """
    # Threads that sleep instead of spinning between parallel regions: 3D convolution backward
    # passes run up to 10x faster on a CPU that other work shares (set before torch loads OpenMP).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    _startup_checks()
    import time

    from medddpm.demo import DEFAULT_MINUTES, run_demo
    from medddpm.evaluation.report import summary_table

    started = time.perf_counter()
    budget = 60 * (DEFAULT_MINUTES if minutes is None else minutes)
    with _demo_training_progress(budget) as on_step, _sampling_progress() as (on_volumes, on_sample_step):
        result = run_demo(
            output,
            minutes,
            device=device,
            config=config,
            overrides=set_ or [],
            image_size=image_size,
            n_subjects=subjects,
            num_samples=num,
            seed=seed,
            overwrite=overwrite,
            log=console.print,
            on_step=on_step,
            on_volumes=on_volumes,
            on_sample_step=on_sample_step,
        )
    Console(highlight=False).print(summary_table(result.metrics))
    took = (time.perf_counter() - started) / 60
    console.print(
        f"[green]Demo done[/] in {took:.1f} minutes ({result.steps} training steps)\n"
        f"  report:            {result.report_html}\n"
        f"  samples preview:   {result.samples_preview}\n"
        f"  training preview:  {result.training_preview or '(none)'}\n"
        f"  synthetic scans:   {result.samples_dir}"
    )


def _demo_training_progress(budget_seconds: float):
    """A rich progress bar of training against its time budget, with step and loss."""
    import contextlib

    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    @contextlib.contextmanager
    def context():
        progress = Progress(
            TextColumn("[bold]  train"),
            BarColumn(),
            TextColumn("step {task.fields[step]}"),
            TextColumn("loss {task.fields[loss]}"),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        task = None

        def on_step(entry) -> None:
            nonlocal task
            if task is None:
                progress.start()
                task = progress.add_task("train", total=budget_seconds, step=0, loss="-")
            progress.update(task, completed=entry.seconds, step=entry.step, loss=f"{entry.loss:.4f}")

        try:
            yield on_step
        finally:
            progress.stop()

    return context()


@app.command()
def info(path: Annotated[Path, typer.Argument(help="A NIfTI file, or a folder of them.")]) -> None:
    """Shape, spacing, orientation, data type and intensity range of a scan or of every scan in a folder."""
    _startup_checks()
    from rich.table import Table

    from medddpm.data.nifti import read_scan
    from medddpm.data.scans import discover_scans
    from medddpm.errors import InputError

    files = discover_scans(path)
    table = Table(title=f"{len(files)} scan{'s' if len(files) != 1 else ''} in {path}")
    for column in ("file", "shape", "spacing (mm)", "axes", "dtype", "intensity range", "note"):
        table.add_column(column)
    bad = 0
    for f in files:
        name = str(f.relative_to(path)) if f != path else f.name
        try:
            _, _, s = read_scan(f)
        except InputError as e:
            if f == path:
                raise  # a single file: one line, ``error: FILE: reason``
            bad += 1
            table.add_row(name, "", "", "", "", "", f"[red]{str(e).removeprefix(f'{f}: ')}")
            continue
        table.add_row(
            name,
            "x".join(map(str, s.shape)),
            " x ".join(f"{v:.3g}" for v in s.spacing),
            s.axcodes,
            s.dtype,
            f"{s.intensity_min:.4g} .. {s.intensity_max:.4g}",
            "; ".join(s.warnings),
        )
    Console(highlight=False).print(table)
    if bad:
        console.print(f"[red]{bad} of {len(files)} scans are unusable[/]")
        raise typer.Exit(2)


def _startup_checks() -> None:
    """What every command checks first: a torch release known to break 3D work is refused."""
    from medddpm.runtime import check_torch_version

    check_torch_version()


def _fail(message: str) -> None:
    from medddpm.errors import InputError

    raise InputError(message)


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the app, turning user-fixable errors into one line and exit code 2."""
    from rich.markup import escape

    from medddpm.errors import InputError, TrainingAborted

    try:
        code = app(args=argv, standalone_mode=False)  # click returns typer.Exit's code here
        if isinstance(code, int) and code:
            sys.exit(code)
    except (InputError, TrainingAborted) as e:
        if _state["debug"]:
            raise
        if _is_main_process() or not getattr(e, "reported_by_rank_0", False):
            console.print(f"[red]error:[/] {escape(str(e))}", soft_wrap=True)  # text, not markup
        sys.exit(2)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]")
        sys.exit(130)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except typer.Abort:
        sys.exit(130)
    except Exception as e:  # click's usage errors carry their own exit code (2)
        import click

        if isinstance(e, click.ClickException):
            e.show()
            sys.exit(e.exit_code)
        if _state["debug"]:
            raise
        console.print(
            f"[red]unexpected error:[/] {type(e).__name__}: {e} (rerun with --debug for the traceback)"
        )
        sys.exit(1)


if __name__ == "__main__":
    main()
