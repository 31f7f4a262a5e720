"""``medddpm train --dry-run``: what a run would do, without doing it."""

from __future__ import annotations

from pathlib import Path

import yaml
from rich.console import Console
from rich.table import Table

from medddpm.config import Config
from medddpm.data.conditions import TrainingConditions, match_table
from medddpm.data.scans import discover_scans, preflight
from medddpm.data.transforms import output_geometry
from medddpm.models.memory import estimate_memory
from medddpm.models.spaces import config_space
from medddpm.runtime import resolve_device, resolve_precision


def dry_run(cfg: Config, data_dir: Path, console: Console, conditions: Path | None = None) -> None:
    """Print the resolved config, a dataset summary, the conditioning (with a ``conditions`` table), the
    model size and the peak-memory estimate. Bad input (no scans, a table that does not match them)
    is an InputError before anything is printed."""
    files = discover_scans(data_dir)
    checked = preflight(files)
    matched = None
    if conditions is not None:
        cc = cfg.conditions
        scans = [Path(s.path) for s in checked.valid]
        matched = match_table(conditions, scans, data_dir, cc.types, cc.allow_missing)

    console.rule("resolved config")
    console.print(yaml.safe_dump(cfg.to_dict(), sort_keys=False).rstrip())

    console.rule("data")
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

    if matched is not None:
        console.rule("conditions")
        show_conditions(cfg, matched, console)

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


def show_conditions(cfg: Config, matched: TrainingConditions, console: Console) -> None:
    """The variables of a conditions table (matched to the usable scans as training matches them),
    the embedding they are added to, and the parameters that adds to the U-Net."""
    import torch

    from medddpm.models.unet import build_unet

    cc = cfg.conditions
    n = len(matched.spec.variables)
    console.print(f"{n} variable(s) from {matched.table}, one row per scan:", markup=False)
    for j, var in enumerate(matched.spec.variables):
        if var.kind == "categorical":
            counts = [
                int(((matched.values[:, j] == i) & matched.known[:, j]).sum())
                for i in range(len(var.categories))
            ]
            shown = ", ".join(f"{c} ({n})" for c, n in zip(var.categories, counts, strict=True))
            console.print(
                f"  {var.name}: categorical, {len(var.categories)} categories: {shown}", markup=False
            )
        else:
            console.print(
                f"  {var.name}: continuous, mean {var.mean:.4g}, sd {var.std:.4g}, "
                f"range [{var.minimum:.4g}, {var.maximum:.4g}] (standardised)",
                markup=False,
            )
    unknown = int((~matched.known).sum())
    if unknown:
        console.print(
            f"  {unknown} missing value(s): the variable's learned 'unknown' embedding", markup=False
        )
    with torch.device("meta"):
        plain = sum(p.numel() for p in build_unet(cfg.model).parameters())
        model = build_unet(cfg.model, condition_sizes=matched.spec.sizes)
        total = sum(p.numel() for p in model.parameters())
    width = model.time_embed[-1].out_features
    console.print(
        f"  embeddings of width {width}, summed and added to the time embedding: {total - plain:,} "
        f"parameters added; dropout p_all {cc.p_all:g}, p_each {cc.p_each:g} (classifier-free guidance)",
        markup=False,
    )
