"""``train_autoencoder(cfg, data_dir, ae_dir)``: the AutoencoderKL of the latent space, top to bottom.

The steps are ``train``'s (``medddpm.training.loop``), with another learner and another step:

1. ``start_compute``: device, precision, torchrun process group (as ``train``: process 0 writes).
2. ``check_inputs`` with kind "autoencoder": the folder, the checkpoint to resume from (its
   autoencoder, EMA and discriminator states read and checked), preflight of every scan, the
   perceptual weights (``autoencoder.perceptual``).
3. ``prepare_run_folder``: config.yaml, dataset.json, the cache. A fixed fraction of the scans
   (``autoencoder.held_out``) is kept out of training to measure reconstruction on.
4. ``start_autoencoder_learner``: AutoencoderKL with EMA, AdamW, warm-up + cosine LR (``train``
   section), and a PatchDiscriminator with Adam.
5. ``run_steps`` with ``autoencoder_step``: random patches (MONAI RandSpatialCrop), each process
   its own slice of the stream as in ``train`` ->
   L1 + kl_weight KL (+ perceptual_weight perceptual) (+ adversarial_weight PatchGAN loss after
   ``adversarial_warmup_steps``) -> clip, AdamW, EMA; then the discriminator's step. Previews show
   original | reconstruction | difference of one held-out scan.
6. ``measure_held_out``: each held-out scan encoded and decoded whole, layer by layer in slabs
   (``decode_tiled``) with the EMA weights, compared in the data's units: AE_DIR/reconstruction.json.

Patches come from a pure function of the stream position (scan order as in ``train``, crop offset
seeded by (seed, position)), and so does each patch's posterior noise, so a resumed run takes exactly
the steps an uninterrupted one would, and K processes x batch B the step of one process x batch K*B.
Under torchrun the autoencoder runs in DistributedDataParallel (``build_learner``); the
discriminator's gradients are averaged over the processes by hand and its BatchNorm statistics
taken from process 0 after each of its steps, so every process holds the same discriminator (it
also scores reconstructions in the autoencoder's loss, where DDP's one-backward-per-forward rule
would not fit).
"""

from __future__ import annotations

import contextlib
import json
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from monai.losses import PatchAdversarialLoss
from monai.transforms import RandSpatialCrop
from monai.utils import convert_to_tensor

from medddpm.config import Config, TrainConfig
from medddpm.errors import InputError
from medddpm.models.autoencoder import (
    build_autoencoder,
    build_discriminator,
    decode_tiled,
    downsampling,
    encode_tiled,
)
from medddpm.runtime import Distributed, autocast, seed_everything
from medddpm.training.checkpoint import Checkpoint, load_weights
from medddpm.training.learner import Learner, build_learner, read_learner_state
from medddpm.training.loop import (
    CheckedInputs,
    CheckpointWriter,
    Compute,
    TrainResult,
    batch_indices,
    check_inputs,
    prepare_run_folder,
    report_inputs,
    run_steps,
    sample_generators,
    start_compute,
)
from medddpm.training.monitor import StepLog

AUTOENCODER = "autoencoder"
"""The kind of run (meta.json's "kind"): ``train`` refuses such a folder, and this command a diffusion run."""
FROZEN_SECTIONS = ("data", "autoencoder")
"""Sections a resumed run may not change (``train`` may: steps, LR, EMA, precision...)."""
HELD_OUT_SEED = 20240214
"""Seeds the held-out split: the same scans are held out whatever train.seed."""


def _no_log(message: str) -> None:
    pass


def train_autoencoder(
    cfg: Config,
    data_dir: str | Path,
    ae_dir: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    skip_invalid: bool = False,
    log: Callable[[str], None] = _no_log,
    on_step: Callable[[StepLog], None] | None = None,
) -> TrainResult:
    """Train the AutoencoderKL on patches of the scans below ``data_dir``, writing into ``ae_dir``;
    after the last step, measure held-out reconstruction (reconstruction.json)."""
    data_dir, ae_dir = Path(data_dir), Path(ae_dir)
    compute = start_compute(cfg.train)
    if not compute.dist.is_main:
        log = _no_log  # under torchrun, process 0 speaks for all
    ac = cfg.autoencoder
    check_sizes(cfg)
    perceptual = perceptual_loss(
        ac.perceptual
    )  # the weights are read (and checked) before anything is written
    found, resume_state = check_inputs(
        cfg,
        data_dir,
        ae_dir,
        compute.dist,
        resume=resume,
        overwrite=overwrite,
        skip_invalid=skip_invalid,
        kind=AUTOENCODER,
        read_state=read_autoencoder_state,
    )
    report_inputs(found, ae_dir, resume, log)
    dataset = prepare_run_folder(
        cfg, found, data_dir, ae_dir, compute.dist, resume=resume, overwrite=overwrite, kind=AUTOENCODER
    )
    held_out = held_out_indices(len(dataset), ac.held_out)
    training = [i for i in range(len(dataset)) if i not in held_out]
    learner = start_autoencoder_learner(cfg, compute, resume_state)
    del resume_state
    log(
        f"{len(training)} training scans, {len(held_out)} held out; "
        f"patches {'x'.join(map(str, patch_size(cfg)))}, "
        f"{sum(p.numel() for p in learner.model.parameters()) / 1e6:.2f}M parameters, "
        f"{compute.device.type} {compute.precision}; perceptual loss: "
        f"{'none' if perceptual is None else ac.perceptual}"
    )
    if perceptual is not None:
        perceptual = perceptual.to(compute.device)
    preview_scan = dataset[held_out[0] if held_out else 0]["image"]

    def take_step() -> tuple[float, float]:
        return autoencoder_step(learner, dataset, training, cfg, compute, perceptual)

    def preview(step: int) -> None:
        write_reconstruction_preview(learner.ema.module, preview_scan, cfg, step, ae_dir, found, compute)

    checkpoints = CheckpointWriter(ae_dir, cfg, found.spacing, compute.dist, found.start, kind=AUTOENCODER)
    result = run_steps(
        learner,
        take_step,
        preview,
        checkpoints,
        cfg.train,
        compute,
        found,
        ae_dir,
        data_dir,
        log,
        on_step,
        command="train-autoencoder",
    )
    if not result.interrupted:
        if compute.dist.is_main:
            summary = measure_held_out(
                learner.ema.module, dataset, held_out, found, cfg, compute, ae_dir, result.step
            )
            log(f"Held-out reconstruction: {describe(summary)}")
        compute.dist.barrier()
    return result


def check_sizes(cfg: Config) -> None:
    """Whole volumes are encoded: every side must be a multiple of the downsampling."""
    f = downsampling(cfg.autoencoder)
    if any(s % f for s in cfg.data.image_size):
        raise InputError(
            f"data.image_size {list(cfg.data.image_size)} must be a multiple of {f} on every side "
            f"(the autoencoder downsamples {f}x); set --image-size to one"
        )
    patch = patch_size(cfg)
    if cfg.autoencoder.adversarial_weight > 0:
        try:
            with torch.device("meta"):
                build_discriminator(cfg.autoencoder)(torch.empty(1, 1, *patch))
        except (RuntimeError, ValueError):  # a kernel larger than its input; BatchNorm on one value
            raise InputError(
                f"patches of {'x'.join(map(str, patch))} voxels are too small for a discriminator of "
                f"{cfg.autoencoder.discriminator_layers} layers; lower autoencoder.discriminator_layers "
                "or raise autoencoder.patch_size"
            ) from None


def patch_size(cfg: Config) -> tuple[int, int, int]:
    """``autoencoder.patch_size``, cut to ``data.image_size`` side by side."""
    return tuple(min(p, s) for p, s in zip(cfg.autoencoder.patch_size, cfg.data.image_size, strict=True))


def held_out_indices(n: int, fraction: float) -> list[int]:
    """The scans kept out of training: ``round(fraction * n)``, at least one of two or more (none
    with fraction 0), chosen by a permutation seeded with HELD_OUT_SEED; sorted."""
    if fraction <= 0 or n < 2:
        return []
    k = min(n - 1, max(1, round(fraction * n)))
    order = torch.randperm(n, generator=torch.Generator().manual_seed(HELD_OUT_SEED)).tolist()
    return sorted(order[:k])


# ---------------------------------------------------------------------------------------------
# The learner: the autoencoder's (Learner) plus the discriminator's


@dataclass
class AutoencoderLearner(Learner):
    """A Learner of the autoencoder, plus the discriminator and its optimizer and grad scaler, whose
    state travels in training_state.pt under "discriminator" (tensors and plain types)."""

    discriminator: torch.nn.Module | None = None
    d_optimizer: torch.optim.Optimizer | None = None
    d_scaler: torch.amp.GradScaler | None = None

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["training_state"]["discriminator"] = {
            "weights": {k: v.detach().cpu().clone() for k, v in self.discriminator.state_dict().items()},
            "optimizer": self.d_optimizer.state_dict(),
            "scaler": self.d_scaler.state_dict(),
        }
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        saved = state["training_state"]["discriminator"]
        self.discriminator.load_state_dict(saved["weights"])
        self.d_optimizer.load_state_dict(saved["optimizer"])
        self.d_scaler.load_state_dict(saved["scaler"])


def start_autoencoder_learner(cfg: Config, compute: Compute, resume_state: dict | None) -> AutoencoderLearner:
    """4. Fresh weights from ``train.seed`` (autoencoder, then discriminator); the resumed state put back."""
    ac, device = cfg.autoencoder, compute.device
    seed_everything(cfg.train.seed)
    autoencoder = build_autoencoder(ac).to(device)
    discriminator = build_discriminator(ac).to(device)
    base = build_learner(cfg, device, compute.precision, compute.dist, model=autoencoder)
    learner = AutoencoderLearner(
        **{name: getattr(base, name) for name in Learner.__dataclass_fields__},
        discriminator=discriminator,
        d_optimizer=torch.optim.Adam(discriminator.parameters(), lr=ac.discriminator_lr, betas=(0.5, 0.999)),
        d_scaler=torch.amp.GradScaler(device.type, enabled=compute.precision == "fp16"),
    )
    if resume_state is not None:
        learner.load_state_dict(resume_state)
    return learner


def read_autoencoder_state(checkpoint: Checkpoint, cfg: Config) -> dict[str, Any]:
    """``read_learner_state`` for an autoencoder checkpoint: weights checked against the AutoencoderKL
    of ``cfg.autoencoder``, the discriminator's against its PatchDiscriminator."""
    state = read_learner_state(checkpoint, cfg, lambda c: build_autoencoder(c.autoencoder), FROZEN_SECTIONS)
    source = checkpoint.file("training_state")
    saved = state["training_state"].get("discriminator")
    if not isinstance(saved, dict) or not {"weights", "optimizer", "scaler"} <= saved.keys():
        raise InputError("training state lacks the discriminator's state", source)
    with torch.device("meta"), warnings.catch_warnings():  # shapes only
        warnings.simplefilter("ignore")
        load_weights(build_discriminator(cfg.autoencoder), saved["weights"], source)
    return state


# ---------------------------------------------------------------------------------------------
# One step


def patch_batch(
    dataset: Sequence[dict], training: Sequence[int], position: int, count: int, cfg: Config
) -> torch.Tensor:
    """Patches [count, 1, *patch] of stream positions ``position ..``: the scan by ``batch_indices``
    over the training scans, the crop by MONAI RandSpatialCrop seeded by (train.seed, position)."""
    seed = cfg.train.seed
    patches = []
    for p, i in zip(
        range(position, position + count), batch_indices(position, count, len(training), seed), strict=True
    ):
        crop = RandSpatialCrop(patch_size(cfg), random_size=False)
        crop.set_random_state(seed=((seed + 1) * 1_000_003 + p) % 2**32)
        patches.append(convert_to_tensor(crop(dataset[training[i]]["image"]), track_meta=False))
    return torch.stack(patches)


def kl_divergence(z_mu: torch.Tensor, z_sigma: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma^2) || N(0, 1)) summed over latent voxels, batch mean (Kingma & Welling 2014)."""
    kl = 0.5 * (z_mu.pow(2) + z_sigma.pow(2) - torch.log(z_sigma.pow(2)) - 1)
    return kl.flatten(1).sum(1).mean()


def autoencoder_step(
    learner: AutoencoderLearner,
    dataset: Sequence[dict],
    training: Sequence[int],
    cfg: Config,
    compute: Compute,
    perceptual: torch.nn.Module | None,
) -> tuple[float, float]:
    """One optimizer step of the autoencoder, then (after the warm-up) one of the discriminator.

    Returns the autoencoder's (loss, grad_norm); a non-finite one skips both updates (weights, EMA
    and moments untouched).
    """
    tc, ac, device, precision = cfg.train, cfg.autoencoder, compute.device, compute.precision
    dist = compute.dist
    adversarial = learner.step >= ac.adversarial_warmup_steps and ac.adversarial_weight > 0
    adv_loss = PatchAdversarialLoss(criterion="least_squares")
    f = downsampling(ac)
    loss_sum, pairs = 0.0, []
    for micro in range(tc.grad_accum):
        position = learner.samples_seen + (micro * dist.world_size + dist.rank) * tc.batch_size
        x = patch_batch(dataset, training, position, tc.batch_size, cfg).to(device)
        latent = (tc.batch_size, ac.latent_channels, *(s // f for s in x.shape[2:]))
        eps = sample_generators(tc.seed, position, tc.batch_size, device).randn(latent, device=device)
        sync = micro == tc.grad_accum - 1 or not dist.enabled
        with learner.network.no_sync() if not sync else contextlib.nullcontext():
            with autocast(precision, device):
                reconstruction, z_mu, z_sigma = learner.network(x, eps)
                loss = torch.nn.functional.l1_loss(reconstruction.float(), x)
                loss = loss + ac.kl_weight * kl_divergence(z_mu.float(), z_sigma.float())
                if perceptual is not None:
                    loss = loss + ac.perceptual_weight * perceptual(reconstruction.float(), x)
                if adversarial:
                    logits = learner.discriminator(reconstruction.contiguous())[-1]
                    loss = loss + ac.adversarial_weight * adv_loss(
                        logits.float(), target_is_real=True, for_discriminator=False
                    )
                loss = loss / tc.grad_accum
            learner.scaler.scale(loss).backward()
        loss_sum += float(loss.detach())
        pairs.append((x, reconstruction.detach()))
    grad_norm = _optimizer_step(learner, tc, loss_sum)
    if adversarial and math.isfinite(grad_norm) and math.isfinite(loss_sum):
        discriminator_step(learner, pairs, tc, device, precision, dist)
    return loss_sum, grad_norm


def _optimizer_step(learner: Learner, tc: TrainConfig, loss_sum: float) -> float:
    """Unscale, clip, AdamW and EMA (when finite), LR schedule: as ``train_step`` ends."""
    learner.scaler.unscale_(learner.optimizer)
    max_norm = tc.grad_clip if tc.grad_clip > 0 else float("inf")
    grad_norm = float(torch.nn.utils.clip_grad_norm_(learner.model.parameters(), max_norm))
    if math.isfinite(grad_norm) and math.isfinite(loss_sum):
        learner.scaler.step(learner.optimizer)
        learner.ema.update_parameters(learner.model)
    learner.scaler.update()
    learner.optimizer.zero_grad(set_to_none=True)
    learner.scheduler.step()
    return grad_norm


def discriminator_step(
    learner: AutoencoderLearner,
    pairs: Sequence[tuple[torch.Tensor, torch.Tensor]],
    tc: TrainConfig,
    device: torch.device,
    precision: str,
    dist: Distributed = Distributed(),
) -> None:
    """Least-squares PatchGAN (Mao et al. 2017): real patches -> 1, reconstructions -> 0. Under
    torchrun: gradients and loss averaged over the processes (as DDP would), BatchNorm statistics
    from process 0, so that every process takes the same step."""
    adv_loss = PatchAdversarialLoss(criterion="least_squares")
    learner.d_optimizer.zero_grad(set_to_none=True)  # drop what the autoencoder's loss left there
    total = 0.0
    for x, reconstruction in pairs:
        with autocast(precision, device):
            fake = learner.discriminator(reconstruction.contiguous())[-1].float()
            real = learner.discriminator(x.contiguous())[-1].float()
            loss = 0.5 * (
                adv_loss(fake, target_is_real=False, for_discriminator=True)
                + adv_loss(real, target_is_real=True, for_discriminator=True)
            )
            loss = loss / tc.grad_accum
        learner.d_scaler.scale(loss).backward()
        total += float(loss.detach())
    total = average_over_processes(learner.discriminator, total, dist)
    if math.isfinite(total):
        learner.d_scaler.step(learner.d_optimizer)
    learner.d_scaler.update()
    learner.d_optimizer.zero_grad(set_to_none=True)
    if dist.enabled:
        for buffer in learner.discriminator.buffers():
            torch.distributed.broadcast(buffer, src=0)


def average_over_processes(network: torch.nn.Module, loss: float, dist: Distributed) -> float:
    """The gradients of ``network`` and ``loss`` averaged over the torchrun processes (in place,
    one all-reduce); ``loss`` as it is with one process."""
    if not dist.enabled:
        return loss
    grads = [p.grad for p in network.parameters() if p.grad is not None]
    flat = torch.cat([g.flatten() for g in grads] + [torch.tensor([loss], device=grads[0].device)])
    torch.distributed.all_reduce(flat)
    flat /= dist.world_size
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()
    return float(flat[-1])


# ---------------------------------------------------------------------------------------------
# Perceptual loss from local MedicalNet weights


class MedicalNetPerceptual(torch.nn.Module):
    """Mean squared distance of channel-normalised ResNet feature maps (layers 1-4) of two volumes,
    each volume z-scored first as MedicalNet's inputs were (the LPIPS recipe, Zhang et al. 2018,
    with MedicalNet's 3D ResNet as MONAI's MedicalNetPerceptualSimilarity does; frozen weights)."""

    def __init__(self, network: torch.nn.Module):
        super().__init__()
        self.network = network.eval().requires_grad_(False)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        dims = tuple(range(1, x.ndim))
        x = (x - x.mean(dim=dims, keepdim=True)) / (x.std(dim=dims, keepdim=True) + 1e-6)
        n = self.network
        x = n.act(n.bn1(n.conv1(x)))
        if not n.no_max_pool:
            x = n.maxpool(x)
        out = []
        for layer in (n.layer1, n.layer2, n.layer3, n.layer4):
            x = layer(x)
            out.append(x / (x.pow(2).sum(1, keepdim=True).sqrt() + 1e-10))
        return out

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return sum(
            (fa - fb).pow(2).sum(1).mean() for fa, fb in zip(self.features(a), self.features(b), strict=True)
        )


def perceptual_loss(spec: str | None) -> MedicalNetPerceptual | None:
    """``medicalnet:PATH`` -> the perceptual loss on that file's ResNet (depth found from its keys);
    None -> None. Raises InputError naming the file when it is missing or not MedicalNet weights."""
    if spec is None:
        return None
    from medddpm.evaluation.features import ARCHITECTURES, build_resnet, load_medicalnet_weights

    path = Path(spec.removeprefix("medicalnet:"))
    if not path.is_file():
        raise InputError(
            "perceptual-loss weights not found (no such file); --perceptual takes medicalnet:PATH", path
        )
    for depth in ARCHITECTURES:
        network = build_resnet(depth)
        try:
            load_medicalnet_weights(network, path)
        except InputError as e:
            if "do not fit" in str(e):
                continue  # another depth, or not a ResNet at all
            raise
        return MedicalNetPerceptual(network)
    raise InputError(f"not MedicalNet ResNet weights: they fit none of {', '.join(ARCHITECTURES)}", path)


# ---------------------------------------------------------------------------------------------
# Whole volumes: reconstruction, previews, held-out measures


@torch.no_grad()
def reconstruct(autoencoder: torch.nn.Module, x: torch.Tensor, cfg: Config, precision: str) -> torch.Tensor:
    """x [B, 1, D, H, W] encoded (mu) and decoded whole, layer by layer in slabs: [B, 1, D, H, W] float32."""
    slab_voxels = cfg.autoencoder.slab_voxels
    with autocast(precision, x.device):
        z = encode_tiled(autoencoder, x, slab_voxels)
        out = decode_tiled(autoencoder, z, slab_voxels)
    return out.float()


def write_reconstruction_preview(
    autoencoder: torch.nn.Module,
    volume: torch.Tensor,
    cfg: Config,
    step: int,
    ae_dir: Path,
    found: CheckedInputs,
    compute: Compute,
) -> Path:
    """previews/step-N.png: original | reconstruction | difference (EMA weights), rows of mid-slices."""
    from medddpm.preview import save_montage

    autoencoder.eval()
    x = volume[None].to(compute.device)
    reconstruction = reconstruct(autoencoder, x, cfg, compute.precision)
    original, rebuilt = x[0, 0].cpu().numpy(), reconstruction[0, 0].cpu().numpy()
    return save_montage(
        [original, rebuilt, rebuilt - original],
        ae_dir / "previews" / f"step-{step:08d}.png",
        spacing=found.spacing,
        titles=["original", "reconstruction", "difference"],
        value_range=(-1.0, 1.0),
        suptitle=f"EMA autoencoder at step {step} (model space [-1, 1])",
    )


def measure_held_out(
    autoencoder: torch.nn.Module,
    dataset: Sequence[dict],
    held_out: Sequence[int],
    found: CheckedInputs,
    cfg: Config,
    compute: Compute,
    ae_dir: Path,
    step: int,
) -> dict[str, Any]:
    """6. Every held-out scan reconstructed whole (in slabs) by the EMA weights and compared in the data's
    units; written to AE_DIR/reconstruction.json (atomically) and returned."""
    from medddpm.data.transforms import IntensityMapping
    from medddpm.evaluation.reconstruction import compare, ssim_kernel, summarise
    from medddpm.output_folder import atomic_path

    mapping = IntensityMapping.from_config(cfg.data)
    data_range = cfg.data.a_max - cfg.data.a_min if cfg.data.modality == "ct" else 1.0
    autoencoder.eval()
    per_scan, results = [], []
    for i in held_out:
        x = dataset[i]["image"][None].to(compute.device)
        y = reconstruct(autoencoder, x, cfg, compute.precision)
        result = compare(mapping.to_output(x[0, 0].cpu()), mapping.to_output(y[0, 0].cpu()), data_range)
        results.append(result)
        per_scan.append({"path": str(found.scans.valid[i].path), **result.to_dict()})
    ac = cfg.autoencoder
    summary = {
        "step": step,
        "weights": "ema",
        "units": mapping.units,
        "data_range": data_range,
        "held_out": len(held_out),
        "mean": summarise(results),
        "scans": per_scan,
        "tiling": {
            "method": "layer by layer in slabs, exact (medddpm.models.slabs)",
            "slab_voxels": ac.slab_voxels,
        },
        "ssim_kernel": ssim_kernel(cfg.data.image_size),
        "perceptual_loss": ac.perceptual or "none",
        "note": "" if held_out else "no held-out scans (fewer than two scans, or autoencoder.held_out = 0)",
    }
    with atomic_path(ae_dir / "reconstruction.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=2, allow_nan=True))
    return summary


def describe(summary: dict[str, Any]) -> str:
    if not summary["held_out"]:
        return summary["note"]
    m = summary["mean"]
    return (
        f"correlation {m['correlation']:.4f}, PSNR {m['psnr']:.2f} dB, SSIM {m['ssim']:.4f}, "
        f"MAE {m['mae']:.4g} ({summary['units']}) over {summary['held_out']} scans"
    )


__all__ = ["train_autoencoder", "AUTOENCODER", "held_out_indices"]


def describe_folder(folder: Path) -> list[str] | None:
    """What an autoencoder folder holds, one line per fact (for ``medddpm info``); None when
    ``folder`` holds no autoencoder checkpoint."""
    from medddpm.training.checkpoint import list_checkpoints, open_checkpoint
    from medddpm.training.loop import run_kind

    checkpoints = list_checkpoints(folder)
    if not checkpoints or run_kind(checkpoints[-1][1]) != AUTOENCODER:
        return None
    latest = open_checkpoint(checkpoints[-1][1])
    cfg = latest.config
    ac, f = cfg.autoencoder, downsampling(cfg.autoencoder)
    latent = [s // f for s in cfg.data.image_size]
    lines = [
        f"autoencoder run (medddpm train-autoencoder): latest checkpoint step {latest.step} "
        f"of {cfg.train.max_steps}, {latest.path}",
        f"AutoencoderKL channels {list(ac.channels)}, {ac.latent_channels} latent channels, {f}x "
        f"downsampling: {'x'.join(map(str, cfg.data.image_size))} -> {ac.latent_channels}x"
        f"{'x'.join(map(str, latent))}",
        f"{cfg.data.modality} data, perceptual loss: {ac.perceptual or 'none'}",
    ]
    report = folder / "reconstruction.json"
    if report.is_file():
        try:
            lines.append(
                f"held-out reconstruction at step {json.loads(report.read_text())['step']}: "
                + describe(json.loads(report.read_text()))
            )
        except (ValueError, KeyError):
            lines.append(f"unreadable {report}")
    else:
        lines.append("no reconstruction.json yet (written when training completes)")
    return lines
