"""``medddpm audit``: are synthetic scans copies of training scans? audit.json and a report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from medddpm.cli.options import ThreadsOpt, console, cpu_threads, print_message, startup_checks

VERDICT_STYLES = {"memorisation": "bold red", "closer": "bold yellow", "none": "bold green"}


def audit(
    train: Annotated[Path, typer.Option("--train", help="Folder of the scans the model was trained on.")],
    heldout: Annotated[
        Path, typer.Option("--heldout", help="Folder of real scans from the same source, never trained on.")
    ],
    synthetic: Annotated[Path, typer.Option("--synthetic", help="Folder of synthetic scans to audit.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Audit folder to write.")],
    run: Annotated[
        Path | None,
        typer.Option("--run", help="Run folder: preprocess every set with its transforms (size, scale)."),
    ] = None,
    features: Annotated[
        str, typer.Option("--features", help="resnet10 (default), resnet18, resnet34, resnet50 or none.")
    ] = "resnet10",
    feature_weights: Annotated[
        Path | None,
        typer.Option("--feature-weights", help="MedicalNet checkpoint (.pth, .safetensors); default: none."),
    ] = None,
    quantile: Annotated[
        float, typer.Option("--quantile", help="Held-out quantile above which a volume is flagged (0.95).")
    ] = 0.95,
    interval: Annotated[
        str, typer.Option("--interval", help="Interval of the flagged share: wilson or clopper-pearson.")
    ] = "wilson",
    no_mirror: Annotated[
        bool, typer.Option("--no-mirror", help="Do not compare with mirror images of training scans.")
    ] = False,
    membership_timesteps: Annotated[
        int,
        typer.Option(
            "--membership-timesteps", help="With --run: timesteps of the denoising-loss grid (0 skips it)."
        ),
    ] = 8,
    membership_noises: Annotated[
        int, typer.Option("--membership-noises", help="With --run: noises per timestep of that grid.")
    ] = 2,
    seed: Annotated[
        int, typer.Option("--seed", help="Seeds the random-init feature network and the membership grid.")
    ] = 0,
    device: Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")] = "auto",
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an earlier audit in OUTPUT.")
    ] = False,
    threads: ThreadsOpt = None,
) -> None:
    """Look for memorised training scans: nearest neighbours against a held-out baseline; report.html."""
    startup_checks()
    threads_used = cpu_threads(threads)
    from medddpm.audit.audit import audit as run_audit
    from medddpm.audit.measure import AuditSettings

    settings = AuditSettings(
        quantile=quantile,
        interval=interval,
        mirror=not no_mirror,
        features=features,
        seed=seed,
        membership_timesteps=membership_timesteps,
        membership_noises=membership_noises,
    )
    with threads_used, console.status("Auditing"):  # transient: an error stays one line
        result = run_audit(
            train,
            heldout,
            synthetic,
            output,
            settings,
            run_dir=run,
            feature_weights=feature_weights,
            device=device,
            overwrite=overwrite,
            log=print_message,
        )
    r = result.result
    lo, hi = r["flagged_share_ci95"]
    out = Console(highlight=False)
    out.print(f"[{VERDICT_STYLES[r['verdict']]}]{r['headline']}[/]")
    out.print(
        f"flagged: {r['n_flagged']} of {r['n_synthetic']} synthetic volumes ({r['flagged_share']:.1%}, "
        f"95% CI {lo:.1%}-{hi:.1%}; about {r['expected_share']:.1%} expected without copying, "
        f"exceedance p = {r['exceedance_p_value']:.3g})"
    )
    out.print(
        f"Mann-Whitney p = {r['mann_whitney']['p_value']:.3g}; authenticity {r['authenticity']['score']:.2f}"
    )
    m = r["membership"]
    if m is not None:
        out.print(
            f"membership AUC (denoising loss, training vs held-out) {m['auc']:.2f}, "
            f"95% CI {m['auc_ci95'][0]:.2f}-{m['auc_ci95'][1]:.2f} (0.5 = no signal)"
        )
    console.print(f"[green]Report:[/] {result.html}")
