"""``medddpm export-nnunet``: image / label pairs (real, synthetic, or both) as an nnU-Net v2 dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from medddpm.cli.options import console, startup_checks


def export_nnunet(
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Dataset folder to write (DatasetXXX_Name).")
    ],
    images: Annotated[
        Path | None,
        typer.Option("--images", help="Real scans (with --labels), paired with label maps by name."),
    ] = None,
    labels: Annotated[Path | None, typer.Option("--labels", help="Label maps of the --images scans.")] = None,
    synthetic: Annotated[
        list[Path] | None,
        typer.Option(
            "--synthetic", help="A `sample --masks` folder of NAME_img / NAME_seg pairs (repeatable)."
        ),
    ] = None,
    channel_name: Annotated[
        str, typer.Option("--channel-name", help="dataset.json channel_names['0'] (CT, MRI, ...).")
    ] = "MRI",
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an earlier export in OUTPUT.")
    ] = False,
) -> None:
    """Write an nnU-Net v2 raw dataset (imagesTr/, labelsTr/, dataset.json) from real and synthetic pairs."""
    startup_checks()
    from medddpm.export.nnunet import export_nnunet as run_export

    dataset = run_export(
        output, images=images, labels=labels, synthetic=synthetic or [], channel_name=channel_name,
        overwrite=overwrite,
    )  # fmt: skip
    console.print(f"[green]Done:[/] {dataset['numTraining']} cases, labels {dataset['labels']} in {output}")
