"""``medddpm demo``: the built-in cohort, trained, sampled and evaluated."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from medddpm.cli.options import (
    SetOpt,
    console,
    print_message,
    startup_checks,
)
from medddpm.cli.progress import demo_training_progress, sampling_progress


def demo(
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Folder for the demo's cohort, run, samples and report.")
    ] = Path("medddpm-demo"),
    minutes: Annotated[
        float | None,
        typer.Option(
            "--minutes",
            help="About how long the whole demo takes (default 10): training steps are fitted to it, "
            "at most the config's max_steps.",
        ),
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
    threads: Annotated[
        int | None,
        typer.Option(
            "--threads",
            help="CPU threads torch computes with (default: every core, or 1 where the timed warm-up "
            "finds one faster).",
        ),
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an earlier demo's folders in OUTPUT.")
    ] = False,
) -> None:
    """The whole tool in about 10 minutes on a CPU: a brain MRI cohort made from the MNI152 template
    (nilearn), trained for the steps that fit --minutes on this machine, sampled and evaluated
    against held-out scans.
    """
    startup_checks()
    import time

    from medddpm.demo import DEFAULT_MINUTES, run_demo
    from medddpm.evaluation.report import summary_table

    started = time.perf_counter()
    budget = 60 * (DEFAULT_MINUTES if minutes is None else minutes)
    with demo_training_progress(budget) as on_step, sampling_progress() as (on_volumes, on_sample_step):
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
            threads=threads,
            overwrite=overwrite,
            log=print_message,
            on_step=on_step,
            on_volumes=on_volumes,
            on_sample_step=on_sample_step,
        )
    out = Console(highlight=False)
    out.print(summary_table(result.metrics))
    for check in (result.metrics.get("conditions") or {}).get("check", []):
        console.print(check["sentence"], markup=False, highlight=False)
    out.print(
        f"Nearest-training correlation (median): synthetic {result.likeness['synthetic']:.3f}, held-out real "
        f"scans {result.likeness['heldout']:.3f} (how like a training scan; medddpm audit checks for copies)"
    )
    took = (time.perf_counter() - started) / 60
    console.print(
        f"[green]Demo done[/] in {took:.1f} minutes ({result.steps} training steps)\n"
        f"  report:            {escape(str(result.report_html))}\n"
        f"  samples preview:   {escape(str(result.samples_preview))}\n"
        f"  training preview:  {escape(str(result.training_preview or '(none)'))}\n"
        f"  synthetic scans:   {escape(str(result.samples_dir))}"
    )
