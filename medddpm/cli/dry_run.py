"""``medddpm train --dry-run``: what a run would do, without doing it."""

from __future__ import annotations

from pathlib import Path

import yaml
from rich.console import Console
from rich.table import Table

from medddpm.config import Config
from medddpm.data.scans import discover_scans, preflight
from medddpm.data.transforms import output_geometry
from medddpm.models.memory import estimate_memory
from medddpm.models.spaces import config_space
from medddpm.runtime import resolve_device, resolve_precision


def dry_run(cfg: Config, data_dir: Path, console: Console) -> None:
    """Print the resolved config, a dataset summary, the model size and the peak-memory estimate."""
    console.rule("resolved config")
    console.print(yaml.safe_dump(cfg.to_dict(), sort_keys=False).rstrip())

    console.rule("data")
    files = discover_scans(data_dir)
    checked = preflight(files)
    console.print(
        f"{len(files)} NIfTI files in {data_dir}: {len(checked.valid)} usable, {len(checked.skipped)} not"
    )
    for bad in checked.skipped:
        console.print(f"  [yellow]{bad['path']}[/]: {bad['reason']}")
    if checked.valid:
        shapes = sorted({"x".join(map(str, s.shape)) for s in checked.valid})
        console.print(f"  shapes: {', '.join(shapes[:5])}{' ...' if len(shapes) > 5 else ''}")
        geometry = output_geometry(cfg.data, checked.valid)
        console.print(
            f"  trained at {'x'.join(map(str, cfg.data.image_size))} voxels, "
            f"output spacing {' x '.join(f'{s:.3g}' for s in geometry.spacing)} mm (RAS)"
        )
        mixed_scales = geometry.warning()
        if mixed_scales is not None:
            console.print(f"  [yellow]warning[/]: {mixed_scales}", markup=True, highlight=False)

    console.rule("model and memory")
    device = resolve_device(cfg.train.device)
    precision = resolve_precision(cfg.train.precision, device)
    estimate = estimate_memory(cfg, precision)
    table = Table(show_header=True)
    table.add_column("part")
    table.add_column("GiB", justify="right")
    for name, value in [
        ("weights (fp32)", estimate.weights_gib),
        ("gradients", estimate.gradients_gib),
        ("AdamW moments", estimate.optimizer_gib),
        ("EMA copy", estimate.ema_gib),
        (f"activations (batch {cfg.train.batch_size}, {precision})", estimate.activations_gib),
        ("estimated peak", estimate.total_gib),
    ]:
        table.add_row(name, f"{value:.3f}")
    space = config_space(cfg)
    latent = "x".join(map(str, space.latent_size(cfg.data.image_size)))
    console.print(f"U-Net in {space.name} space: {space.channels} channel(s) at {latent} voxels")
    console.print(f"{estimate.parameters:,} parameters; {device.type}, {precision}")
    console.print(table)
    for note in estimate.notes:
        console.print(f"  note: {note}")
