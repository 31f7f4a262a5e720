"""``medddpm train --dry-run`` and ``train-autoencoder --dry-run``: what a run would do, without doing it."""

from __future__ import annotations

from pathlib import Path

import yaml
from rich.console import Console
from rich.table import Table

from medddpm.config import Config
from medddpm.data.conditions import TrainingConditions, match_table
from medddpm.data.scans import discover_scans, preflight
from medddpm.data.transforms import output_geometry
from medddpm.models.memory import (
    estimate_autoencoder_memory,
    estimate_memory,
    estimate_sampling_memory,
    unet_model_config,
)
from medddpm.models.spaces import config_space
from medddpm.runtime import resolve_device, resolve_precision


def _size(shape) -> str:
    return "x".join(map(str, shape))


def _config_and_data(
    cfg: Config, data_dir: Path, console: Console, conditions: Path | None = None
) -> TrainingConditions | None:
    """Print the resolved config and a dataset summary; with a ``conditions`` table, match it to the
    usable scans as training does first, so that a table that does not match is an InputError before
    anything is printed. Returns the matched conditions (None without a table)."""
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
        shapes = sorted({_size(s.shape) for s in checked.valid})
        console.print(f"  shapes: {', '.join(shapes[:5])}{' ...' if len(shapes) > 5 else ''}")
        geometry = output_geometry(cfg.data, checked.valid)
        console.print(
            f"  trained at {_size(cfg.data.image_size)} voxels, "
            f"output spacing {' x '.join(f'{s:.3g}' for s in geometry.spacing)} mm (RAS)"
        )
        mixed_scales = geometry.warning()
        if mixed_scales is not None:
            console.print(f"  [yellow]warning[/]: {mixed_scales}", markup=True, highlight=False)
    return matched


def _table(console: Console, rows: list[tuple[str, float]], notes: list[str]) -> None:
    table = Table(show_header=True)
    table.add_column("part")
    table.add_column("GiB", justify="right")
    for name, value in rows:
        table.add_row(name, f"{value:.3f}")
    console.print(table)
    for note in notes:
        console.print(f"  note: {note}")


def dry_run(cfg: Config, data_dir: Path, console: Console, conditions: Path | None = None) -> None:
    """Print the resolved config, a dataset summary, the conditioning (with a ``conditions`` table), the
    model size and the peak-memory estimate; in latent space also the sampling estimate (U-Net steps at
    the latent grid, slab decoding). Bad input (no scans, a table that does not match them) is an
    InputError before anything is printed."""
    matched = _config_and_data(cfg, data_dir, console, conditions)
    if matched is not None:
        console.rule("conditions")
        show_conditions(cfg, matched, console)

    console.rule("model and memory")
    device = resolve_device(cfg.train.device)
    precision = resolve_precision(cfg.train.precision, device)
    estimate = estimate_memory(cfg, precision)
    space = config_space(cfg)
    channels = unet_model_config(cfg).latent_channels if space.name == "latent" else space.channels
    grid = _size(space.latent_size(cfg.data.image_size))
    console.print(f"U-Net in {space.name} space: {channels} channel(s) at {grid} voxels")
    console.print(f"{estimate.parameters:,} parameters; {device.type}, {precision}")
    _table(
        console,
        [
            ("weights (fp32)", estimate.weights_gib),
            ("gradients", estimate.gradients_gib),
            ("AdamW moments", estimate.optimizer_gib),
            ("EMA copy", estimate.ema_gib),
            (f"activations (batch {cfg.train.batch_size}, {precision})", estimate.activations_gib),
            ("estimated peak", estimate.total_gib),
        ],
        estimate.notes,
    )
    if space.name != "latent":
        return
    ac = cfg.autoencoder
    source = cfg.latent.autoencoder or "the config's autoencoder section (no --autoencoder given)"
    console.rule("sampling: latent steps and slab decoding")
    console.print(
        f"autoencoder from {source}: channels {list(ac.channels)}, {ac.latent_channels} latent channels, "
        f"{space.factor}x downsampling per side"
    )
    sampling = estimate_sampling_memory(cfg, precision)
    console.print(
        f"sample.batch_size {sampling.batch_size}; decoded layer by layer in slabs of at most "
        f"{sampling.slab_voxels} output voxels (autoencoder.slab_voxels); largest activation held whole: "
        f"{sampling.largest_activation[1]} channels at {_size(sampling.largest_activation[2:])} per volume"
    )
    _table(
        console,
        [
            ("weights: U-Net and autoencoder (fp32)", sampling.weights_gib),
            (f"U-Net step ({precision}, no autograd)", sampling.unet_step_gib),
            ("slab decoding (fp32)", sampling.decode_gib),
            ("estimated sampling peak", sampling.total_gib),
        ],
        sampling.notes,
    )


def dry_run_autoencoder(cfg: Config, data_dir: Path, console: Console) -> None:
    """``train-autoencoder --dry-run``: config, dataset summary, the autoencoder's and the
    discriminator's size and the estimated peak of one training step. Sizes the training would
    refuse are refused here too, with the same one-line error."""
    from medddpm.training.autoencoder import check_sizes

    check_sizes(cfg)
    _config_and_data(cfg, data_dir, console)

    console.rule("autoencoder and memory")
    device = resolve_device(cfg.train.device)
    precision = resolve_precision(cfg.train.precision, device)
    estimate = estimate_autoencoder_memory(cfg, precision)
    ac = cfg.autoencoder
    console.print(
        f"AutoencoderKL {list(ac.channels)}, {ac.latent_channels} latent channels: "
        f"{estimate.autoencoder_parameters:,} parameters; PatchDiscriminator: "
        f"{estimate.discriminator_parameters:,} parameters; {device.type}, {precision}"
    )
    batch = f"batch {cfg.train.batch_size} of {_size(estimate.patch)} patches, {precision}"
    _table(
        console,
        [
            ("weights, gradients, optimizer moments, EMA", estimate.state_gib),
            (f"autoencoder step activations ({batch})", estimate.autoencoder_step_gib),
            ("discriminator step activations", estimate.discriminator_step_gib),
            ("estimated peak", estimate.total_gib),
        ],
        estimate.notes,
    )


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
