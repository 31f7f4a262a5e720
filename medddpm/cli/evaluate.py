"""``medddpm evaluate``: two folders of scans to metrics.json and a report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from medddpm.cli.options import (
    ThreadsOpt,
    console,
    cpu_threads,
    print_message,
    startup_checks,
)


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
    conditions: Annotated[
        Path | None,
        typer.Option(
            "--conditions",
            help="The real scans' conditions, a CSV table in train's format: metrics per stratum and a "
            "check that the samples obey the conditions they were drawn with (read from their sidecars).",
        ),
    ] = None,
    device: Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")] = "auto",
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an earlier report in OUTPUT.")
    ] = False,
    threads: ThreadsOpt = None,
) -> None:
    """Compare synthetic scans with real ones: 3D FID, MMD, precision/recall, MS-SSIM; writes report.html."""
    startup_checks()
    threads_used = cpu_threads(threads)  # --threads is checked before anything is read
    from medddpm.evaluation.evaluate import evaluate as run_evaluation
    from medddpm.evaluation.measure import eval_config
    from medddpm.evaluation.report import summary_table

    # the eval section: defaults, or the run's config.yaml, < these flags (as train merges its flags)
    flags = {"eval.features": features, "eval.max_pairs": max_pairs, "eval.seed": seed}
    with threads_used, console.status("Evaluating"):  # transient: an error stays one line
        result = run_evaluation(
            real_dir,
            synth_dir,
            output,
            eval_config(run, flags),
            run_dir=run,
            feature_weights=feature_weights,
            device=device,
            save_features=save_features,
            conditions=conditions,
            overwrite=overwrite,
            log=print_message,
        )
    Console(highlight=False).print(summary_table(result.metrics))
    for check in (result.metrics.get("conditions") or {}).get("check", []):
        console.print(check["sentence"], markup=False, highlight=False)
    if result.metrics.get("autoencoder_ceiling") is not None:  # a latent run: how much is the autoencoder
        console.print(result.metrics["autoencoder_ceiling"]["summary"], highlight=False)
    console.print(f"[green]Report:[/] {result.html}")
