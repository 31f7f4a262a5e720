"""``train --autoencoder AE_DIR``: what a diffusion run in latent space adds to ``train``.

1. ``resolve_latent`` (before anything is written): AE_DIR must be a ``train-autoencoder`` folder
   with a complete checkpoint; its EMA weights' sha256, its ``autoencoder`` section and its latent
   channels go into the run's config. A resumed run must name the autoencoder it was trained with.
2. ``prepare_latents`` (after the run folder and the image cache): the weights copied into
   RUN_DIR/autoencoder.safetensors (the run carries them: sampling reads that copy and refuses it when
   its sha256 differs from the config's); every scan encoded once into RUN_DIR/cache/latents.safetensors,
   holding the posterior mean mu (not mu + sigma * eps, whose noise would put a floor under the
   diffusion loss); the scale factor s = 1 / std(mu) over the first ``latent.scale_volumes`` scans
   saved in config.yaml, and so in every checkpoint's meta.json. Training then sees s * mu.

A resumed run reuses its latent cache and its saved scale factor (never recomputed), so it takes
exactly the steps an uninterrupted run would.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from medddpm.config import Config, save_config
from medddpm.errors import InputError
from medddpm.models.autoencoder import encode_tiled, file_sha256, load_autoencoder_file
from medddpm.models.spaces import AUTOENCODER_FILE
from medddpm.output_folder import atomic_path
from medddpm.training.checkpoint import list_checkpoints, open_checkpoint

LATENT_CACHE = Path("cache") / "latents.safetensors"
"""In RUN_DIR: mu of every scan, keys ``scan_00000``... in the order of dataset.json's files."""


def _no_log(message: str) -> None:
    pass


def autoencoder_weights(ae_dir: Path) -> tuple[Path, Config]:
    """The EMA weights file of the latest complete checkpoint of ``ae_dir`` and the config it was
    trained with; an InputError, one line, when ``ae_dir`` is not a train-autoencoder folder."""
    if not ae_dir.is_dir():
        raise InputError("no such autoencoder folder (made by medddpm train-autoencoder)", ae_dir)
    checkpoints = list_checkpoints(ae_dir)
    if not checkpoints:
        made = (ae_dir / "checkpoints").is_dir() and (ae_dir / "config.yaml").is_file()
        why = (
            "no complete checkpoint (train-autoencoder has not saved one yet)"
            if made
            else ("not an autoencoder folder: no checkpoints/ (make one with medddpm train-autoencoder)")
        )
        raise InputError(why, ae_dir)
    ckpt = open_checkpoint(checkpoints[-1][1])
    kind = ckpt.meta.get("kind", "diffusion")  # medddpm.training.autoencoder.AUTOENCODER
    if kind != "autoencoder":
        raise InputError(f"not an autoencoder folder: it holds a {kind} run", ae_dir)
    return ckpt.file("ema"), ckpt.config


def resolve_latent(cfg: Config, run_dir: Path, resume: bool) -> Config:
    """1. ``cfg`` with the autoencoder of ``latent.autoencoder`` filled in (its section, latent
    channels and weights' sha256); ``cfg`` itself outside latent space. Resuming, the run's latest
    checkpoint says which autoencoder (sha256) and scale factor it was trained with. Writes nothing."""
    if cfg.model.space != "latent":
        if cfg.latent.autoencoder is not None:
            raise InputError(
                f"latent.autoencoder is set but model.space is {cfg.model.space}; set it to latent"
            )
        return cfg
    if cfg.latent.autoencoder is None:
        raise InputError("model.space latent needs an autoencoder: pass --autoencoder AE_DIR")
    ae_dir = Path(cfg.latent.autoencoder)
    weights, ae_cfg = autoencoder_weights(ae_dir)
    digest = file_sha256(weights)
    checkpoints = list_checkpoints(run_dir) if resume else []
    trained = open_checkpoint(checkpoints[-1][1]).config.latent if checkpoints else None
    saved = None if trained is None else trained.autoencoder_sha256
    if saved is not None and saved != digest:
        raise InputError(
            f"this run was trained with another autoencoder (sha256 {saved[:12]}, this one {digest[:12]}); "
            "resume with the one it was trained with, or train into a new folder",
            weights,
        )
    ac = ae_cfg.autoencoder
    wanted = cfg.model.latent_channels
    if wanted is not None and wanted != ac.latent_channels:
        raise InputError(
            f"model.latent_channels is {wanted} but the autoencoder has {ac.latent_channels} latent "
            "channels; drop the setting or set it to the autoencoder's",
            weights,
        )
    data, learnt = cfg.data, ae_cfg.data
    if data.modality != learnt.modality or (
        data.modality == "ct" and (data.a_min, data.a_max) != (learnt.a_min, learnt.a_max)
    ):
        raise InputError(
            f"the autoencoder was trained on {learnt.modality} data scaled otherwise (data.modality, "
            "data.a_min / a_max must match its config)",
            weights,
        )
    load_autoencoder_file(weights, ac)  # its tensors fit its config: an InputError now, not mid-run
    return cfg.model_copy(
        update={
            "model": cfg.model.model_copy(update={"latent_channels": ac.latent_channels}),
            "autoencoder": ac,
            "latent": cfg.latent.model_copy(
                update={
                    "autoencoder": str(ae_dir.resolve()),
                    "autoencoder_sha256": digest,
                    "scale_factor": None if trained is None else trained.scale_factor,
                }
            ),
        }
    )


def scale_factor(latents: Sequence[torch.Tensor], volumes: int) -> float:
    """1 / std of every element of the first ``volumes`` latents (float64, population std)."""
    z = torch.cat([t.double().flatten() for t in latents[:volumes]])
    return float(1.0 / z.std(correction=0))


def prepare_latents(
    cfg: Config,
    dataset: Sequence[dict],
    run_dir: Path,
    device: torch.device,
    is_main: bool = True,
    log: Callable[[str], None] = _no_log,
) -> tuple[Config, list[dict]]:
    """2. The latent cache and the scale factor: returns ``cfg`` with ``latent.scale_factor`` (saved
    in config.yaml) and the training items ``{"image": s * mu}`` [C, *image_size / f]."""
    lc, ac = cfg.latent, cfg.autoencoder
    source, _ = autoencoder_weights(Path(lc.autoencoder))
    copy = run_dir / AUTOENCODER_FILE
    if is_main and not (copy.is_file() and file_sha256(copy) == lc.autoencoder_sha256):
        with atomic_path(copy) as tmp:
            shutil.copyfile(source, tmp)
    autoencoder = load_autoencoder_file(copy, ac, lc.autoencoder_sha256).to(device)
    latents = read_latent_cache(run_dir / LATENT_CACHE, lc.autoencoder_sha256, len(dataset))
    if latents is None:
        log(f"Encoding {len(dataset)} scans into the latent cache ({run_dir / LATENT_CACHE})")
        latents = [
            encode_tiled(autoencoder, item["image"][None].to(device), ac.slab_voxels)[0].cpu()
            for item in dataset
        ]
        if is_main:
            tensors = {f"scan_{i:05d}": z.contiguous() for i, z in enumerate(latents)}
            with atomic_path(run_dir / LATENT_CACHE) as tmp:
                save_file(tensors, tmp, metadata={"autoencoder_sha256": lc.autoencoder_sha256})
    if lc.scale_factor is None:
        n = min(lc.scale_volumes, len(latents))
        cfg = cfg.model_copy(
            update={"latent": lc.model_copy(update={"scale_factor": scale_factor(latents, n)})}
        )
        if is_main:
            save_config(cfg, run_dir / "config.yaml")
        log(f"Latent scale factor 1/std(mu) = {cfg.latent.scale_factor:.6g} over {n} scans")
    s = cfg.latent.scale_factor
    return cfg, [{"image": s * z} for z in latents]


def read_latent_cache(path: Path, sha256: str | None, n: int) -> list[torch.Tensor] | None:
    """The cached mu of ``n`` scans, or None when there is no cache of this autoencoder (to encode)."""
    if not path.is_file():
        return None
    try:
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            if (f.metadata() or {}).get("autoencoder_sha256") != sha256:
                return None
        tensors = load_file(path)
    except (SafetensorError, OSError, ValueError):
        return None
    keys = [f"scan_{i:05d}" for i in range(n)]
    if sorted(tensors) != keys:
        return None
    return [tensors[k] for k in keys]
