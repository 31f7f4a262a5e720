"""``train(cfg, data_dir, run_dir)``: the DDPM training loop, top to bottom.

1. Runtime: device, precision, torchrun process group.
2. Run folder: refuse to overwrite, or pick up the latest checkpoint with ``resume``.
3. Data: discover, preflight every file, record dataset.json, preprocess once into a cache.
4. Model, EMA (torch AveragedModel), AdamW, warm-up + cosine LR, grad scaler for fp16.
5. Loop: accumulate micro-batches, clip, step, update EMA; skip non-finite steps; log, checkpoint,
   preview. Ctrl-C, or reaching ``train.max_minutes``, writes a checkpoint and returns.

Training reads one endless stream of samples: epoch e is a permutation of the scans seeded by
(seed, e), and the sample at stream position p gets its timestep and noise from a generator seeded
by (seed, p). Each optimizer step takes the next batch_size x grad_accum x processes positions, and
process r takes its own disjoint slice. So resuming reproduces exactly what an uninterrupted run
would have done, and K processes x batch B compute the same step as one process x batch K*B (up to
float rounding: DDP averages the K half-batch gradients).
"""

from __future__ import annotations

import contextlib
import csv
import functools
import json
import math
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from medddpm.config import Config, TrainConfig, save_config
from medddpm.data.scans import discover_scans, preflight, write_dataset_json
from medddpm.data.transforms import build_dataset, output_spacing
from medddpm.diffusion.noise import PerSampleGenerator
from medddpm.diffusion.schedule import NoiseSchedule, diffusion_loss
from medddpm.errors import InputError, TrainingAborted
from medddpm.models.unet import build_unet, count_parameters, preferred_memory_format, to_memory_format
from medddpm.runtime import (
    Distributed,
    autocast,
    check_conv3d_bf16,
    check_torch_version,
    init_distributed,
    library_versions,
    resolve_device,
    resolve_precision,
    seed_everything,
)
from medddpm.training.checkpoint import (
    Checkpoint,
    list_checkpoints,
    load_weights,
    open_checkpoint,
    save_checkpoint,
)

METRICS_FIELDS = ["step", "loss", "lr", "grad_norm", "skipped_nonfinite", "seconds"]
RUN_FILES = ("checkpoints", "previews", "metrics.csv", "config.yaml", "dataset.json", "cache", "tensorboard")
# Sections whose change makes a checkpoint meaningless for the run (what train/sample may change is free).
FROZEN_SECTIONS = ("data", "model", "diffusion")


@dataclass
class StepLog:
    step: int
    max_steps: int
    loss: float
    lr: float
    grad_norm: float
    skipped_nonfinite: int
    seconds: float


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    checkpoint: Path | None
    interrupted: bool = False
    signal: int | None = None
    """The signal that stopped training early (SIGINT or SIGTERM), when it was one."""


def _no_log(message: str) -> None:
    pass


# ---------------------------------------------------------------------------------------------
# Pieces the loop is built from


def lr_lambda(cfg_warmup: int, max_steps: int, min_ratio: float) -> Callable[[int], float]:
    """Linear warm-up to the peak LR, then cosine decay to ``min_ratio`` of it at ``max_steps``."""

    def factor(step: int) -> float:
        if step < cfg_warmup:
            return (step + 1) / cfg_warmup
        progress = min(1.0, (step - cfg_warmup) / max(1, max_steps - cfg_warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def batch_indices(position: int, batch_size: int, n: int, seed: int) -> list[int]:
    """Items ``position .. position+batch_size-1`` of an endless stream of per-epoch permutations.

    Epoch e is ``randperm(n)`` seeded by (seed, e): a pure function of the position, so a
    resumed run (or another rank, at another position) needs no sampler state. This replaces
    torch's DistributedSampler, which needs ``set_epoch``, cannot restart mid-epoch, and pads each
    rank's share with repeated items; here every epoch's items are used exactly once, whatever the
    number of processes, and a checkpoint only has to record how many samples were consumed.
    """
    out = []
    for p in range(position, position + batch_size):
        epoch, offset = divmod(p, n)
        out.append(_epoch_order(n, seed, epoch)[offset])
    return out


@functools.lru_cache(maxsize=4)
def _epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g).tolist()


def sample_generators(seed: int, position: int, count: int, device: torch.device) -> PerSampleGenerator:
    """One generator per stream position ``position .. position+count-1``: a sample's t and noise."""
    seeds = [((seed + 1) * 2**40 + p) % 2**63 for p in range(position, position + count)]
    return PerSampleGenerator.from_seeds(seeds, device)


@dataclass
class Learner:
    """What an optimizer step changes. ``network`` is ``model`` as the forward pass runs it
    (compiled and/or wrapped in DistributedDataParallel); ``model`` owns the weights."""

    model: torch.nn.Module
    network: torch.nn.Module
    ema: AveragedModel
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler


def build_learner(
    cfg: Config,
    device: torch.device,
    precision: str,
    dist: Distributed,
    memory_format: torch.memory_format | None = None,
) -> Learner:
    """The U-Net on ``device`` with its EMA copy, AdamW, warm-up + cosine LR and grad scaler (fp16
    only), and the network the forward pass runs: wrapped in DDP under torchrun, compiled with
    ``train.compile``. Draws the initial weights from torch's global generator. ``memory_format``:
    the weights' layout (default: ``preferred_memory_format(device)``; results differ only by
    float rounding)."""
    tc = cfg.train
    model = to_memory_format(
        build_unet(cfg.model).to(device), memory_format or preferred_memory_format(device)
    )
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(tc.ema_decay), use_buffers=True)
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
    return Learner(model, network, ema, optimizer, scheduler, scaler)


def train_step(
    learner: Learner,
    schedule: NoiseSchedule,
    dataset: Sequence[dict],
    samples_seen: int,
    tc: TrainConfig,
    dist: Distributed,
    device: torch.device,
    precision: str,
) -> tuple[float, float]:
    """One optimizer step from stream position ``samples_seen``: ``grad_accum`` micro-batches
    (batch assembly from the cache, loss, backward), unscale, clip, AdamW, EMA, LR schedule.

    Returns this process's (loss, grad_norm). When either is not finite the update is skipped
    (weights, EMA and AdamW moments untouched); the caller counts such steps.
    """
    loss_sum = 0.0
    for micro in range(tc.grad_accum):
        position = samples_seen + (micro * dist.world_size + dist.rank) * tc.batch_size
        idx = batch_indices(position, tc.batch_size, len(dataset), tc.seed)
        x0 = torch.stack([dataset[i]["image"] for i in idx]).to(device, non_blocking=True)
        g = sample_generators(tc.seed, position, tc.batch_size, device)
        sync = micro == tc.grad_accum - 1 or not dist.enabled
        with learner.network.no_sync() if not sync else contextlib.nullcontext():
            with autocast(precision, device):
                loss = diffusion_loss(learner.network, schedule, x0, generator=g) / tc.grad_accum
            learner.scaler.scale(loss).backward()
        loss_sum += float(loss.detach())
    learner.scaler.unscale_(learner.optimizer)
    max_norm = tc.grad_clip if tc.grad_clip > 0 else float("inf")
    grad_norm = float(torch.nn.utils.clip_grad_norm_(learner.model.parameters(), max_norm))
    if math.isfinite(grad_norm) and math.isfinite(loss_sum):
        learner.scaler.step(learner.optimizer)
        learner.ema.update_parameters(learner.model)
    learner.scaler.update()
    learner.optimizer.zero_grad(set_to_none=True)
    learner.scheduler.step()
    return loss_sum, grad_norm


def check_run_dir(run_dir: Path, resume: bool, overwrite: bool) -> None:
    """Never overwrite a run by accident; fail before any work if the folder cannot be written.

    Writes nothing: the folder is created only once the data has passed preflight. The rules are
    medddpm.output_folder's (RUN_FOLDER says what a run writes).
    """
    from medddpm.output_folder import RUN_FOLDER, check_output

    check_output(run_dir, RUN_FOLDER, overwrite=overwrite, resume=resume)


def prepare_run_dir(run_dir: Path, resume: bool, overwrite: bool) -> None:
    """Create the run folder; with --overwrite (and no --resume) remove the previous run's own files."""
    from medddpm.output_folder import RUN_FOLDER, prepare_output

    prepare_output(run_dir, RUN_FOLDER, clear=overwrite and not resume)


RESUME_STATE_KEYS = ("step", "optimizer", "scheduler", "scaler", "ema_n_averaged", "skipped_nonfinite", "rng")


def read_resume_state(start: Checkpoint, cfg: Config) -> tuple[dict, dict, dict]:
    """Read and check every file of the checkpoint to resume from, before the run folder is touched.

    Returns (model weights, EMA weights, training state). Raises InputError naming the file for
    weights that are corrupt or do not fit the model config, and for a training state that is
    corrupt, incomplete, or holds anything but tensors and plain types (weights_only=True).
    """
    import warnings

    with torch.device("meta"), warnings.catch_warnings():  # shapes only: no memory for a second model
        warnings.simplefilter("ignore")
        shapes = build_unet(cfg.model)
        weights = start.weights(ema=False)
        load_weights(shapes, weights, start.path / "model.safetensors")
        ema_weights = start.weights(ema=True)
        load_weights(shapes, ema_weights, start.path / "ema.safetensors")
    state = start.training_state()
    missing = [k for k in RESUME_STATE_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise InputError(f"training state lacks {', '.join(missing)}", start.path / "training_state.pt")
    return weights, ema_weights, state


def check_resume_config(cfg: Config, saved: Config, source: Path) -> None:
    """The data, model and diffusion sections must match the checkpoint; train and sample may change."""
    new, old = cfg.to_dict(), saved.to_dict()
    for section in FROZEN_SECTIONS:
        for key, value in old[section].items():
            if new[section].get(key) != value:
                raise InputError(
                    f"cannot resume: {section}.{key} is {new[section].get(key)!r} here but "
                    f"{value!r} in the checkpoint; drop the change or train into a new folder",
                    source,
                )


class MetricsLog:
    """RUN_DIR/metrics.csv; on resume, rows past the checkpoint's step are dropped (they will be redone)."""

    def __init__(self, path: Path, resume_step: int | None):
        self.path = path
        rows = []
        if resume_step is not None and path.exists():
            with path.open(newline="") as f:
                rows = [r for r in csv.DictReader(f) if _row_step(r) <= resume_step]
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=METRICS_FIELDS)
            writer.writeheader()
            writer.writerows(rows)

    def write(self, log: StepLog) -> None:
        with self.path.open("a", newline="") as f:
            csv.writer(f).writerow(
                [
                    log.step,
                    f"{log.loss:.6g}",
                    f"{log.lr:.6g}",
                    f"{log.grad_norm:.6g}",
                    log.skipped_nonfinite,
                    f"{log.seconds:.2f}",
                ]
            )


def _row_step(row: dict) -> float:
    """The step of a metrics.csv row; inf (dropped) for a row a crash cut short."""
    try:
        return int(row["step"]) if all(row.get(k) not in (None, "") for k in METRICS_FIELDS) else math.inf
    except ValueError:
        return math.inf


def rng_state() -> dict:
    import random

    import numpy as np

    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype("int64")), *np_state[2:]],
        "python": random.getstate(),
    }


def set_rng_state(state: dict) -> None:
    import random

    import numpy as np

    torch.set_rng_state(state["torch"])
    if torch.cuda.is_available() and state["cuda"]:
        torch.cuda.set_rng_state_all(state["cuda"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype("uint32"), *rest))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


# ---------------------------------------------------------------------------------------------
# The loop


def train(
    cfg: Config,
    data_dir: str | Path,
    run_dir: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    skip_invalid: bool = False,
    log: Callable[[str], None] = _no_log,
    on_step: Callable[[StepLog], None] | None = None,
) -> TrainResult:
    """Train a DDPM on the NIfTI scans below ``data_dir``, writing everything into ``run_dir``."""
    data_dir, run_dir = Path(data_dir), Path(run_dir)
    tc = cfg.train

    # 1. Runtime -------------------------------------------------------------------------------
    check_torch_version()
    device = resolve_device(tc.device)
    dist = init_distributed(device)
    if dist.enabled and device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
    precision = resolve_precision(tc.precision, device)
    if not dist.is_main:
        log = _no_log

    # 2-3. Checks, on every process; dist.agree makes them all stop if any one fails, before
    # process 0 writes anything (no process waits in a barrier for one that gave up).
    failure: InputError | None = None
    start = None
    try:
        # 2. Run folder ------------------------------------------------------------------------
        check_run_dir(run_dir, resume, overwrite)
        checkpoints = list_checkpoints(run_dir) if resume else []
        start = open_checkpoint(checkpoints[-1][1]) if checkpoints else None
        if start is not None:
            check_resume_config(cfg, start.config, start.path)
            resume_state = read_resume_state(start, cfg)

        # 3. Data ------------------------------------------------------------------------------
        files = discover_scans(data_dir)
        checked = preflight(files)
        if checked.skipped and not skip_invalid:
            raise InputError(checked.error_report())
        if not checked.valid:
            raise InputError("no usable scans after preflight", data_dir)
        spacing = output_spacing(cfg.data, checked.valid)
    except InputError as e:
        failure = e
    dist.agree(failure, resume_from_step=None if start is None else start.step)
    if start is not None:
        log(f"Resuming from {start.path} (step {start.step})")
    elif resume:
        log(f"No complete checkpoint in {run_dir}: starting from step 0")
    for bad in checked.skipped:
        log(f"[yellow]skipping[/] {bad['path']}: {bad['reason']}")
    for scan in checked.valid:  # kept in dataset.json too (files[].warnings)
        for warning in scan.warnings:
            log(f"[yellow]warning:[/] {scan.path}: {warning}")
    if dist.is_main:
        prepare_run_dir(run_dir, resume, overwrite)
        save_config(cfg, run_dir / "config.yaml")
        write_dataset_json(run_dir / "dataset.json", cfg.data, checked, data_dir, spacing)
    dist.barrier()
    dataset = build_dataset(
        cfg.data, [s.path for s in checked.valid], run_dir / "cache", cfg.data.num_workers
    )
    n = len(dataset)

    # 4. Model, EMA, optimiser -----------------------------------------------------------------
    # bf16 on CUDA: one conv3d at the model's full-resolution size against fp32 (a cuDNN bug).
    bf16_warning = check_conv3d_bf16(device, precision, (1, cfg.model.channels[0], *cfg.data.image_size))
    if bf16_warning:
        log(f"[yellow]warning:[/] {bf16_warning}")
    seed_everything(tc.seed)
    learner = build_learner(cfg, device, precision, dist)
    model, ema, optimizer, scheduler, scaler = (
        learner.model,
        learner.ema,
        learner.optimizer,
        learner.scheduler,
        learner.scaler,
    )
    schedule = NoiseSchedule.from_config(cfg.diffusion)
    step = 0
    nonfinite_total = 0
    effective = tc.batch_size * tc.grad_accum * dist.world_size
    samples_seen = 0  # stream positions consumed by all processes together
    if start is not None:
        weights, ema_weights, state = resume_state
        load_weights(model, weights, start.path / "model.safetensors")
        load_weights(ema.module, ema_weights, start.path / "ema.safetensors")
        del resume_state, weights, ema_weights
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        ema.n_averaged.copy_(state["ema_n_averaged"])
        set_rng_state(state["rng"])
        step, nonfinite_total = int(state["step"]), int(state["skipped_nonfinite"])
        # Stream position: recorded, so that a run resumed with another number of processes (or
        # batch size) goes on where it stopped; older checkpoints imply it from the step.
        samples_seen = int(state.get("samples_seen", step * effective))

    log(
        f"{n} scans, {count_parameters(model) / 1e6:.2f}M parameters, {device.type} {precision}, "
        f"effective batch {effective} ({tc.batch_size} x {tc.grad_accum} accumulation x {dist.world_size} "
        f"process{'es' if dist.world_size > 1 else ''})"
    )

    def checkpoint_now() -> Path | None:
        path = None
        if dist.is_main:
            path = save_checkpoint(
                run_dir,
                step,
                model.state_dict(),
                ema.module.state_dict(),
                {
                    "step": step,
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "scaler": scaler.state_dict(),
                    "ema_n_averaged": ema.n_averaged.detach().cpu(),
                    "skipped_nonfinite": nonfinite_total,
                    "samples_seen": samples_seen,
                    "rng": rng_state(),
                },
                {"config": cfg.to_dict(), "output_spacing": list(spacing), "versions": library_versions()},
                tc.keep_last,
            )
        dist.barrier()
        return path

    # 5. Loop ----------------------------------------------------------------------------------
    metrics = MetricsLog(run_dir / "metrics.csv", step if start else None) if dist.is_main else None
    writer = _tensorboard(run_dir) if tc.tensorboard and dist.is_main else None
    last_checkpoint = start.path if start else None
    consecutive_nonfinite = 0
    t0 = time.perf_counter()
    model.train()
    stop = StopRequest()
    try:
        stop.listen()
        while step < tc.max_steps:
            loss_sum, grad_norm = train_step(
                learner, schedule, dataset, samples_seen, tc, dist, device, precision
            )
            if math.isfinite(grad_norm) and math.isfinite(loss_sum):
                consecutive_nonfinite = 0
            else:
                nonfinite_total += 1
                consecutive_nonfinite += 1
                if consecutive_nonfinite >= tc.max_nonfinite:
                    raise TrainingAborted(
                        f"{consecutive_nonfinite} steps in a row had a non-finite loss or gradient "
                        f"(last at step {step + 1}); try --precision fp32 or a lower train.lr "
                        f"(now {tc.lr:g}), then --resume"
                    )
            step += 1
            samples_seen += effective
            out_of_time = _out_of_time(tc.max_minutes, time.perf_counter() - t0, dist, device)

            logged = step % tc.log_every == 0 or step == tc.max_steps or out_of_time
            if logged and dist.enabled:
                t = torch.tensor([loss_sum], device=device)
                torch.distributed.all_reduce(t)
                loss_sum = float(t) / dist.world_size
            entry = StepLog(
                step,
                tc.max_steps,
                loss_sum,
                scheduler.get_last_lr()[0],
                grad_norm,
                nonfinite_total,
                time.perf_counter() - t0,
            )
            if logged:
                if metrics is not None:
                    metrics.write(entry)
                if writer is not None:
                    writer.add_scalar("loss", entry.loss, step)
                    writer.add_scalar("lr", entry.lr, step)
            if on_step is not None and dist.is_main:
                try:
                    on_step(entry)
                except KeyboardInterrupt:  # a callback's interrupt: the same as Ctrl-C
                    stop.request(signal.SIGINT)
            if stop.agreed(dist, device):
                raise KeyboardInterrupt
            if step % tc.checkpoint_every == 0 or step == tc.max_steps or out_of_time:
                last_checkpoint = checkpoint_now() or last_checkpoint
            last = step == tc.max_steps or out_of_time
            if tc.preview_every and (step % tc.preview_every == 0 or last) and dist.is_main:
                write_preview(ema.module, schedule, cfg, step, run_dir, spacing, device, precision)
                model.train()
            if out_of_time:
                log(f"Stopped at step {step}: train.max_minutes={tc.max_minutes:g} reached")
                break
    except KeyboardInterrupt:
        if stop.forced:
            raise
        last_checkpoint = checkpoint_now() or last_checkpoint
        by = " (SIGTERM)" if stop.signal == signal.SIGTERM else ""
        log(
            f"Interrupted at step {step}{by}; checkpoint saved in {last_checkpoint}. "
            f"Continue with: medddpm train {data_dir} --output {run_dir} --resume"
        )
        by_signal = stop.signal or signal.SIGINT  # None: another process's signal, or a KeyboardInterrupt
        return TrainResult(run_dir, step, last_checkpoint, interrupted=True, signal=by_signal)
    finally:
        stop.stop_listening()
        if writer is not None:
            writer.close()
    return TrainResult(run_dir, step, last_checkpoint)


class StopRequest:
    """Ctrl-C (SIGINT) or SIGTERM (what a batch scheduler such as SLURM sends before it kills a job,
    and what ``kill`` sends) while training. The first one asks to stop once the current step is
    done; every process then stops after the same step, so the checkpoint written on the way out
    is consistent (under torchrun, which passes signals on to each process, one can arrive in the
    middle of a step or of a collective). A second one stops at once, without a checkpoint.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signal: int | None = None
        self.forced = False
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.signal is not None

    def request(self, signum: int) -> None:
        if self.signal is None:
            self.signal = signum

    def listen(self) -> None:
        for signum in self.SIGNALS:
            try:
                self._previous[signum] = signal.signal(signum, self._handle)
            except ValueError:  # not the main thread: signals keep Python's own behaviour
                break

    def stop_listening(self) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous = {}

    def _handle(self, signum, frame) -> None:
        if self.requested:
            self.forced = True
            raise KeyboardInterrupt
        self.request(signum)

    def agreed(self, dist: Distributed, device: torch.device) -> bool:
        """Whether any process was asked to stop; a collective under torchrun, so all answer alike."""
        if not dist.enabled:
            return self.requested
        flag = torch.tensor([float(self.requested)], device=device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return bool(flag.item())


def _out_of_time(max_minutes: float | None, seconds: float, dist: Distributed, device: torch.device) -> bool:
    """Whether the time budget is spent; under torchrun rank 0's clock decides for every rank."""
    if max_minutes is None:
        return False
    spent = torch.tensor([float(seconds >= max_minutes * 60)], device=device)
    if dist.enabled:
        torch.distributed.broadcast(spent, src=0)
    return bool(spent.item())


def _tensorboard(run_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise InputError(
            "train.tensorboard=true needs the tensorboard package: pip install tensorboard"
        ) from None
    return SummaryWriter(str(run_dir / "tensorboard"))


@torch.no_grad()
def write_preview(
    model: torch.nn.Module,
    schedule: NoiseSchedule,
    cfg: Config,
    step: int,
    run_dir: Path,
    spacing: tuple[float, float, float],
    device: torch.device,
    precision: str,
) -> Path:
    """previews/step-N.png: mid-slices of ``train.preview_num`` EMA samples (short DDIM, fixed seeds)."""
    from medddpm.diffusion.generate import generate
    from medddpm.preview import save_montage

    model.eval()
    seeds = list(range(cfg.train.preview_num))
    volumes = generate(
        model,
        schedule,
        cfg.data.image_size,
        seeds,
        "ddim",
        cfg.train.preview_steps,
        device=device,
        precision=precision,
    )
    path = run_dir / "previews" / f"step-{step:08d}.png"
    save_montage(
        [v[0].cpu().numpy() for v in volumes],
        path,
        spacing=spacing,
        titles=[f"seed {s}" for s in seeds],
        value_range=(-1.0, 1.0),
        suptitle=f"EMA samples at step {step} (DDIM, {cfg.train.preview_steps} steps)",
    )
    return path


def read_dataset_json(run_dir: Path) -> dict:
    path = run_dir / "dataset.json"
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise InputError(f"cannot read dataset.json ({e})", path) from None


__all__ = ["train", "TrainResult", "StepLog", "Distributed"]
