"""The learner: what an optimizer step changes, and the state that a checkpoint saves and a resume restores.

``build_learner`` makes the U-Net with its EMA copy, AdamW, the warm-up + cosine LR schedule and the
grad scaler. ``Learner.state_dict()`` and ``Learner.load_state_dict()`` are the resume contract,
written once::

    state_dict() key    checkpoint file (checkpoint.STATE_FILES)    what it holds
    "model"             model.safetensors                           the trained weights
    "ema"               ema.safetensors                             the EMA weights
    "training_state"    training_state.pt                           TrainingState's fields

``read_learner_state`` reads and checks such a state from a checkpoint before a resumed run writes
anything; ``load_state_dict`` then puts it into a freshly built learner, RNG states included, so the
next step draws what an uninterrupted run would have drawn.
"""

from __future__ import annotations

import math
import random
import warnings
from collections.abc import Callable, Sequence
from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.optim.swa_utils import AveragedModel

from medddpm.config import Config
from medddpm.errors import InputError
from medddpm.models.unet import build_unet, to_memory_format
from medddpm.runtime import Distributed
from medddpm.training.checkpoint import Checkpoint, load_weights

# Sections whose change makes a checkpoint meaningless for the run (what train/sample may change is free).
FROZEN_SECTIONS = ("data", "model", "diffusion")


@dataclass(kw_only=True)
class TrainingState:
    """training_state.pt: the learner's state besides its weights, one key per field in this order.

    Tensors and plain types only, so that it loads with ``torch.load(weights_only=True)``.
    """

    step: int  # optimizer steps done (skipped non-finite ones included)
    optimizer: dict[str, Any]  # AdamW's moments and per-parameter step counts
    scheduler: dict[str, Any]  # the LR schedule's position
    scaler: dict[str, Any]  # the grad scaler's scale and growth tracker (fp16; inert otherwise)
    ema_n_averaged: torch.Tensor  # updates the EMA has taken in
    skipped_nonfinite: int  # steps whose update was skipped for a non-finite loss or gradient
    # Stream positions consumed by all processes together, so that a run resumed with another number
    # of processes (or batch size) goes on where it stopped; absent (None) in older checkpoints.
    samples_seen: int | None = None
    rng: dict[str, Any]  # torch, CUDA, NumPy and Python generator states

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, state: object, source: Path | None = None) -> TrainingState:
        """Raises InputError naming ``source`` when ``state`` is not a dict or lacks a required key."""
        required = [f.name for f in fields(cls) if f.default is MISSING]
        missing = [k for k in required if not isinstance(state, dict) or k not in state]
        if missing:
            raise InputError(f"training state lacks {', '.join(missing)}", source)
        return cls(**{f.name: state[f.name] for f in fields(cls) if f.name in state})


@dataclass
class Learner:
    """What an optimizer step changes, and where the run stands.

    ``network`` is ``model`` as the forward pass runs it (compiled and/or wrapped in
    DistributedDataParallel); ``model`` owns the weights. ``samples_per_step``: stream positions one
    optimizer step consumes over all processes (batch size x accumulation x processes).
    """

    model: torch.nn.Module
    network: torch.nn.Module
    ema: AveragedModel
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    samples_per_step: int
    step: int = 0
    samples_seen: int = 0  # stream positions consumed by all processes together
    skipped_nonfinite: int = 0

    def count_step(self, loss: float, grad_norm: float) -> bool:
        """Record that an optimizer step was taken; returns whether it was finite (else it was skipped)."""
        finite = math.isfinite(grad_norm) and math.isfinite(loss)
        if not finite:
            self.skipped_nonfinite += 1
        self.step += 1
        self.samples_seen += self.samples_per_step
        return finite

    def state_dict(self) -> dict[str, Any]:
        """Everything a resume needs: the weights, the EMA weights and the TrainingState (as a dict).

        The tensors are the learner's own (not copies): save them before the next step.
        """
        training_state = TrainingState(
            step=self.step,
            optimizer=self.optimizer.state_dict(),
            scheduler=self.scheduler.state_dict(),
            scaler=self.scaler.state_dict(),
            ema_n_averaged=self.ema.n_averaged.detach().cpu(),
            skipped_nonfinite=self.skipped_nonfinite,
            samples_seen=self.samples_seen,
            rng=_rng_state(),
        )
        return {
            "model": self.model.state_dict(),
            "ema": self.ema.module.state_dict(),
            "training_state": training_state.to_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Put back a ``state_dict()`` (check one read from disk with ``read_learner_state`` first).

        Restores the global RNG states too: call it after anything else that draws from them.
        """
        saved = TrainingState.from_dict(state["training_state"])
        self.model.load_state_dict(state["model"])
        self.ema.module.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(saved.optimizer)
        self.scheduler.load_state_dict(saved.scheduler)
        self.scaler.load_state_dict(saved.scaler)
        self.ema.n_averaged.copy_(saved.ema_n_averaged)
        _set_rng_state(saved.rng)
        self.step, self.skipped_nonfinite = int(saved.step), int(saved.skipped_nonfinite)
        # Checkpoints older than samples_seen imply it from the step.
        seen = saved.samples_seen
        self.samples_seen = int(seen) if seen is not None else self.step * self.samples_per_step


def build_learner(
    cfg: Config,
    device: torch.device,
    precision: str,
    dist: Distributed,
    memory_format: torch.memory_format | None = None,
    condition_sizes: Sequence[int] = (),
    model: torch.nn.Module | None = None,
    label_values: Sequence[int] = (),
) -> Learner:
    """The U-Net on ``device`` with its EMA copy, AdamW, warm-up + cosine LR and grad scaler (fp16
    only), and the network the forward pass runs: wrapped in DDP under torchrun, compiled with
    ``train.compile``. Draws the initial weights from torch's global generator. ``memory_format``:
    the weights' layout (default: ``preferred_memory_format(device)``; results differ only by
    float rounding). ``condition_sizes``: the condition variables (``build_unet``); none: unconditional.
    ``label_values``: the label set of training label maps (``build_unet``); none: no label channels.
    ``model``: another network to train (the autoencoder), kept in its own layout."""
    tc = cfg.train
    if model is None:
        model = to_memory_format(
            build_unet(cfg.model, condition_sizes=condition_sizes, label_values=label_values).to(device),
            memory_format,
        )
    ema = AveragedModel(model, multi_avg_fn=ema_multi_avg_fn(tc.ema_decay, tc.ema_warmup), use_buffers=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(tc.warmup_steps, tc.max_steps, tc.min_lr_ratio)
    )
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    network: torch.nn.Module = model
    if dist.enabled:
        network = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    if tc.compile:
        network = torch.compile(network)
    samples_per_step = tc.batch_size * tc.grad_accum * dist.world_size
    return Learner(model, network, ema, optimizer, scheduler, scaler, samples_per_step)


def ema_decay_at(n_averaged: int, decay: float, warmup: bool) -> float:
    """The EMA decay of the update that follows ``n_averaged`` earlier ones (the first copies the weights).

    With ``warmup``, diffusers' EMAModel.get_decay without its power form: min(decay, (1 + n) / (10 + n))
    (0.1 at n = 0, 0.5 at 8, 0.9 at 80, 0.99 at 890, 0.999 from 8990 on), so after n steps the average
    spans roughly the last n / 10 of them instead of holding the initial weights. diffusers counts from
    its first update, which blends with the initial weights; torch's AveragedModel copies the weights at
    its first update and averages from the second on, so its n (updates taken in) is diffusers' step.
    """
    return min(decay, (1 + n_averaged) / (10 + n_averaged)) if warmup else decay


def ema_multi_avg_fn(decay: float, warmup: bool) -> Callable[[list, list, torch.Tensor], None]:
    """AveragedModel's multi_avg_fn: ema <- decay_t ema + (1 - decay_t) weights, decay_t = ``ema_decay_at``.

    Depends on nothing but ``n_averaged`` (saved in training_state.pt), so a resumed run averages as an
    uninterrupted one would.
    """
    if not 0.0 <= decay <= 1.0:
        raise ValueError(f"EMA decay must be in [0, 1], got {decay}")

    @torch.no_grad()
    def update(ema_params: list[torch.Tensor], params: list[torch.Tensor], n_averaged: torch.Tensor) -> None:
        decay_t = ema_decay_at(int(n_averaged), decay, warmup)
        if torch.is_floating_point(ema_params[0]) or torch.is_complex(ema_params[0]):
            torch._foreach_lerp_(ema_params, params, 1 - decay_t)
        else:  # integer buffers (none in the U-Net today): torch's own rule
            for p_ema, p in zip(ema_params, params, strict=True):
                p_ema.copy_(p_ema * decay_t + p * (1 - decay_t))

    return update


def lr_lambda(cfg_warmup: int, max_steps: int, min_ratio: float) -> Callable[[int], float]:
    """Linear warm-up to the peak LR, then cosine decay to ``min_ratio`` of it at ``max_steps``."""

    def factor(step: int) -> float:
        if step < cfg_warmup:
            return (step + 1) / cfg_warmup
        progress = min(1.0, (step - cfg_warmup) / max(1, max_steps - cfg_warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def read_learner_state(
    checkpoint: Checkpoint,
    cfg: Config,
    build_model: Callable[[Config], torch.nn.Module] | None = None,
    frozen: tuple[str, ...] = FROZEN_SECTIONS,
    condition_sizes: Sequence[int] = (),
    label_values: Sequence[int] = (),
) -> dict[str, Any]:
    """Read and check every file of the checkpoint to resume from, before the run folder is touched.

    Returns a state for ``Learner.load_state_dict``. Raises InputError naming the file (or the
    checkpoint) for a config whose data, model or diffusion section differs from the checkpoint's,
    weights that are corrupt or do not fit the model config, and a training state that is corrupt,
    incomplete, or holds anything but tensors and plain types (weights_only=True). ``build_model``
    and ``frozen``: the network the weights must fit (default: the U-Net, conditioned on
    ``condition_sizes``), and the config sections that must not change.
    """
    check_resume_config(cfg, checkpoint.config, checkpoint.path, frozen)
    state: dict[str, Any] = {}
    with torch.device("meta"), warnings.catch_warnings():  # shapes only: no memory for a second model
        warnings.simplefilter("ignore")
        shapes = (
            build_model(cfg)
            if build_model
            else build_unet(cfg.model, condition_sizes=condition_sizes, label_values=label_values)
        )
        for key in ("model", "ema"):
            state[key] = checkpoint.weights(ema=key == "ema")
            load_weights(shapes, state[key], checkpoint.file(key))
    state["training_state"] = checkpoint.training_state()
    TrainingState.from_dict(state["training_state"], checkpoint.file("training_state"))
    return state


def check_resume_config(
    cfg: Config, saved: Config, source: Path, frozen: tuple[str, ...] = FROZEN_SECTIONS
) -> None:
    """The ``frozen`` sections (data, model, diffusion) must match the checkpoint."""
    new, old = cfg.to_dict(), saved.to_dict()
    for section in frozen:
        for key, value in old[section].items():
            if new[section].get(key) != value:
                raise InputError(
                    f"cannot resume: {section}.{key} is {new[section].get(key)!r} here but "
                    f"{value!r} in the checkpoint; drop the change or train into a new folder",
                    source,
                )


def _rng_state() -> dict[str, Any]:
    """The global torch, CUDA, NumPy and Python generator states, as tensors and plain types."""
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype("int64")), *np_state[2:]],
        "python": random.getstate(),
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if torch.cuda.is_available() and state["cuda"]:
        torch.cuda.set_rng_state_all(state["cuda"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype("uint32"), *rest))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
