"""``medddpm info``: what each scan in a folder is, and whether it can be used."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from medddpm.cli.options import (
    console,
    startup_checks,
)


def info(
    path: Annotated[
        Path | None,
        typer.Argument(
            help="A NIfTI file, a folder of them, or an autoencoder folder; none: list the presets."
        ),
    ] = None,
) -> None:
    """Shape, spacing, orientation, data type and intensity range of a scan or of every scan in a folder;
    without PATH, the config presets (--config NAME) and the GPU each is sized for."""
    startup_checks()
    from rich.table import Table

    if path is None:
        from medddpm.config import PRESET_DIR, preset_header

        table = Table(title="presets (--config NAME; `train ... --config NAME --dry-run` estimates memory)")
        for column in ("preset", "for", "fits"):
            table.add_column(column)
        for name in sorted(p.stem for p in PRESET_DIR.glob("*.yaml")):
            header = preset_header(name)
            table.add_row(name, header["about"], header["fits"])
        Console(highlight=False, width=max(console.width, 140)).print(table)
        return

    from medddpm.data.nifti import read_scan
    from medddpm.data.scans import discover_scans
    from medddpm.errors import InputError

    if path.is_dir():
        from medddpm.training.autoencoder import describe_folder

        facts = describe_folder(path)
        if facts is not None:
            Console(highlight=False).print("\n".join(facts))
            return
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
