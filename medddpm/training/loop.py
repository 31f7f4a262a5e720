"""``train(cfg, data_dir, run_dir)``: the DDPM training run, top to bottom.

``train()`` calls one function per step:

1. ``start_compute``: device, precision, torchrun process group.
2. ``check_inputs``, on every process before anything is written: the run folder (refuse to
   overwrite), the checkpoint to resume from with ``resume`` (config, weights and training state
   read and checked), preflight of every scan.
3. ``prepare_run_folder``: config.yaml and dataset.json; every scan preprocessed once into a cache.
4. ``start_learner``: model, EMA (torch AveragedModel), AdamW, warm-up + cosine LR, grad scaler for
   fp16 (``learner``); the checkpoint's state put back into it when resuming.
5. ``run_loop``: ``train_step`` (accumulate micro-batches, clip, step, update EMA; skip non-finite
   steps), then record (metrics.csv, tensorboard: ``monitor``), checkpoint, preview. Ctrl-C,
   SIGTERM or reaching ``train.max_minutes`` (``stopping``) writes a checkpoint and returns.

Training reads one endless stream of samples: epoch e is a permutation of the scans seeded by
(seed, e), and the sample at stream position p gets its timestep and noise from a generator seeded
by (seed, p). Each optimizer step takes the next batch_size x grad_accum x processes positions, and
process r takes its own disjoint slice. So resuming reproduces exactly what an uninterrupted run
would have done, and K processes x batch B compute the same step as one process x batch K*B (up to
float rounding: DDP averages the K half-batch gradients).
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from medddpm.config import ConditionsConfig, Config, TrainConfig, save_config
from medddpm.data.conditions import TrainingConditions, match_table
from medddpm.data.labels import TrainingLabels, match_labels
from medddpm.data.scans import Preflight, discover_scans, preflight, write_dataset_json
from medddpm.data.transforms import OutputGeometry, build_dataset, output_geometry
from medddpm.diffusion.advice import sampling_warnings
from medddpm.diffusion.noise import PerSampleGenerator
from medddpm.diffusion.objective import diffusion_loss
from medddpm.diffusion.process import Process, build_process, process_entry
from medddpm.errors import InputError, TrainingAborted
from medddpm.models.spaces import SPACES, SpaceEntry, config_space
from medddpm.models.unet import count_parameters
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
from medddpm.training.checkpoint import Checkpoint, list_checkpoints, open_checkpoint, save_checkpoint
from medddpm.training.latent import prepare_latents, resolve_latent
from medddpm.training.learner import Learner, build_learner, read_learner_state
from medddpm.training.monitor import RunRecords, StepLog, write_preview
from medddpm.training.stopping import StopRequest, out_of_time

DIFFUSION = "diffusion"
"""The kind of run ``train`` writes (``train-autoencoder`` writes "autoencoder" runs)."""


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


def _cached(z: torch.Tensor) -> torch.Tensor:
    return z


# ---------------------------------------------------------------------------------------------
# The run, step by step


def train(
    cfg: Config,
    data_dir: str | Path,
    run_dir: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    skip_invalid: bool = False,
    conditions: str | Path | None = None,
    labels: str | Path | None = None,
    log: Callable[[str], None] = _no_log,
    on_step: Callable[[StepLog], None] | None = None,
    stop_after: int | None = None,
) -> TrainResult:
    """Train a DDPM on the NIfTI scans below ``data_dir``, writing everything into ``run_dir``.

    One call per numbered step of the module docstring. ``conditions``: a CSV table of per-scan
    variables to condition on (``medddpm.data.conditions``). ``labels``: a folder of label maps
    paired with the scans by name (``medddpm.data.labels``), fed to the network beside x. ``log``
    receives one line per event (process 0 only); ``on_step`` a StepLog after every step (process 0 only).
    ``stop_after``: stop with a checkpoint after this step, before ``train.max_steps``, whose
    learning-rate schedule the steps follow (to resume from it, as ``train.max_minutes`` stops).
    """
    data_dir, run_dir = Path(data_dir), Path(run_dir)
    compute = start_compute(cfg.train)
    if not compute.dist.is_main:
        log = _no_log  # under torchrun, process 0 speaks for all
    cfg = resolve_latent(cfg, run_dir, resume)  # latent space: the autoencoder checked and recorded
    found, resume_state = check_inputs(
        cfg,
        data_dir,
        run_dir,
        compute.dist,
        resume=resume,
        overwrite=overwrite,
        skip_invalid=skip_invalid,
        conditions=conditions,
        labels=labels,
    )
    report_inputs(found, run_dir, resume, log)
    dataset = prepare_run_folder(
        cfg, found, data_dir, run_dir, compute.dist, resume=resume, overwrite=overwrite
    )
    if cfg.model.space == "latent":
        cfg, dataset = prepare_latents(cfg, dataset, run_dir, compute.device, compute.dist.is_main, log)
        compute.dist.barrier()
    learner = start_learner(cfg, compute, resume_state, log, found.condition_sizes, found.label_values)
    del resume_state  # the checkpoint's weights and optimizer moments: in the learner now
    log(describe_run(len(dataset), learner, compute, cfg.train))
    return run_loop(learner, dataset, cfg, compute, found, run_dir, data_dir, log, on_step, stop_after)


@dataclass(frozen=True)
class Compute:
    """Where the arithmetic runs: the device, the precision, and this process's place under torchrun."""

    device: torch.device
    precision: str
    dist: Distributed


def start_compute(tc: TrainConfig) -> Compute:
    """1. The device and precision ``train`` asks for, and the process group when under torchrun."""
    check_torch_version()
    device = resolve_device(tc.device)
    dist = init_distributed(device)
    if dist.enabled and device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
    return Compute(device, resolve_precision(tc.precision, device), dist)


@dataclass
class CheckedInputs:
    """What the checks found; the same on every process."""

    scans: Preflight
    geometry: OutputGeometry  # voxel sizes the scans were learnt at, and the one samples get
    start: Checkpoint | None  # the checkpoint to resume from
    conditions: TrainingConditions | None = None  # per-scan variables, in the order of scans.valid
    labels: TrainingLabels | None = None  # per-scan label maps, in the order of scans.valid

    @property
    def label_values(self) -> tuple[int, ...]:
        """The label set of the training label maps; empty without --labels."""
        return () if self.labels is None else self.labels.values

    @property
    def condition_sizes(self) -> list[int]:
        """Per variable: categories or 0 (continuous); empty for an unconditional run."""
        return [] if self.conditions is None else self.conditions.spec.sizes

    @property
    def spacing(self) -> tuple[float, float, float]:
        """mm, RAS: the voxel size samples are written with."""
        return self.geometry.spacing


def check_inputs(
    cfg: Config,
    data_dir: Path,
    run_dir: Path,
    dist: Distributed,
    *,
    resume: bool,
    overwrite: bool,
    skip_invalid: bool,
    conditions: str | Path | None = None,
    labels: str | Path | None = None,
    kind: str = DIFFUSION,
    read_state: Callable[..., dict] = read_learner_state,
) -> tuple[CheckedInputs, dict | None]:
    """2. Check the run folder, the checkpoint to resume from and every scan; write nothing.

    Returns what was found and the learner state to resume from (None: start afresh). Runs on
    every process; ``dist.agree`` makes them all raise if any one fails, before process 0 writes
    anything (no process waits in a barrier for one that gave up). ``kind``: the kind of run
    (``meta.json``'s "kind"; a folder holding another kind is refused), ``read_state``: how its
    checkpoint is read and checked.
    """
    failure: InputError | None = None
    start = state = table = paired = None
    try:
        config_space(cfg)  # image_size fits the space and the U-Net's levels
        check_run_dir(run_dir, resume, overwrite, kind)
        checkpoints = list_checkpoints(run_dir) if resume else []
        start = open_checkpoint(checkpoints[-1][1]) if checkpoints else None
        scans = preflight(discover_scans(data_dir))
        if scans.skipped and not skip_invalid:
            raise InputError(scans.error_report())
        if not scans.valid:
            raise InputError("no usable scans after preflight", data_dir)
        geometry = output_geometry(cfg.data, scans.valid)
        if conditions is not None:
            table = read_conditions(conditions, scans, data_dir, cfg.conditions)
        if labels is not None:
            paired = match_labels(labels, [Path(s.path) for s in scans.valid], data_dir)
        if start is not None:
            check_resume_conditions(start, table)
            check_resume_labels(start, paired)
            sizes = {} if table is None else {"condition_sizes": table.spec.sizes}
            if paired is not None:
                sizes["label_values"] = paired.values
            state = read_state(start, cfg, **sizes)
    except InputError as e:
        failure = e
    dist.agree(failure, resume_from_step=None if start is None else start.step)
    return CheckedInputs(scans, geometry, start, table, paired), state


def read_conditions(
    table: str | Path, scans: Preflight, data_dir: Path, cc: ConditionsConfig
) -> TrainingConditions:
    """The conditions table matched to the usable scans (``medddpm.data.conditions.match_table``)."""
    return match_table(table, [Path(s.path) for s in scans.valid], data_dir, cc.types, cc.allow_missing)


def check_resume_conditions(start: Checkpoint, table: TrainingConditions | None) -> None:
    """A resumed run conditions on the same variables, encoded the same way, as its checkpoint."""
    saved = start.meta.get("conditioning")
    now = None if table is None else table.spec.to_dict()
    if (saved or None) != now:
        what = "no --conditions table" if now is None else "a --conditions table"
        had = "conditioned on variables" if saved else "was unconditional"
        raise InputError(
            f"cannot resume: the checkpoint {had}, and this run has {what} "
            "(or its variables, categories or statistics differ); train into a new folder",
            start.path,
        )


def check_resume_labels(start: Checkpoint, paired: TrainingLabels | None) -> None:
    """A resumed run takes label maps with the same label set as its checkpoint, or none if it had none."""
    saved = (start.meta.get("labels") or {}).get("values")
    now = None if paired is None else list(paired.values)
    if saved != now:
        had = f"label set {saved}" if saved else "no label maps"
        raise InputError(
            f"cannot resume: the checkpoint was trained with {had}, this run has "
            f"{'label set ' + str(now) if now else 'no --labels'}; train into a new folder",
            start.path,
        )


def report_inputs(found: CheckedInputs, run_dir: Path, resume: bool, log: Callable[[str], None]) -> None:
    """Where training starts from, and each scan skipped or warned about (dataset.json keeps them too)."""
    if found.start is not None:
        log(f"Resuming from {found.start.path} (step {found.start.step})")
    elif resume:
        log(f"No complete checkpoint in {run_dir}: starting from step 0")
    for bad in found.scans.skipped:
        log(f"skipping {bad['path']}: {bad['reason']}")
    for scan in found.scans.valid:
        for warning in scan.warnings:
            log(f"warning: {scan.path}: {warning}")
    mixed_scales = found.geometry.warning()
    if mixed_scales is not None:
        log(f"warning: {mixed_scales}")


def prepare_run_folder(
    cfg: Config,
    found: CheckedInputs,
    data_dir: Path,
    run_dir: Path,
    dist: Distributed,
    *,
    resume: bool,
    overwrite: bool,
    kind: str = DIFFUSION,
) -> Sequence[dict]:
    """3. Process 0 writes the run folder's config.yaml and dataset.json; then every process opens
    the dataset (items ``{"image": [1, D, H, W] in [-1, 1]}``), preprocessing each scan once into
    the cache."""
    if dist.is_main:
        prepare_run_dir(run_dir, resume, overwrite, kind)
        save_config(cfg, run_dir / "config.yaml")
        write_dataset_json(
            run_dir / "dataset.json", cfg.data, found.scans, data_dir, found.geometry, found.conditions,
            found.labels,
        )  # fmt: skip
    dist.barrier()
    return build_dataset(
        cfg.data,
        [s.path for s in found.scans.valid],
        run_dir / "cache",
        cfg.data.num_workers,
        labels=None if found.labels is None else found.labels.files,
    )


def start_learner(
    cfg: Config,
    compute: Compute,
    resume_state: dict | None,
    log: Callable[[str], None],
    condition_sizes: Sequence[int] = (),
    label_values: Sequence[int] = (),
) -> Learner:
    """4. A learner with fresh weights drawn from ``train.seed``, then the resumed state put back."""
    device, precision = compute.device, compute.precision
    # bf16 on CUDA: one conv3d at the model's full-resolution size against fp32 (a cuDNN bug).
    bf16_warning = check_conv3d_bf16(device, precision, (1, cfg.model.channels[0], *cfg.data.image_size))
    if bf16_warning:
        log(f"warning: {bf16_warning}")
    seed_everything(cfg.train.seed)
    learner = build_learner(
        cfg, device, precision, compute.dist, condition_sizes=condition_sizes, label_values=label_values
    )
    if resume_state is not None:
        learner.load_state_dict(resume_state)  # RNG states included: after the draws above
    return learner


def describe_run(n_scans: int, learner: Learner, compute: Compute, tc: TrainConfig) -> str:
    world = compute.dist.world_size
    return (
        f"{n_scans} scans, {count_parameters(learner.model) / 1e6:.2f}M parameters, {compute.device.type} "
        f"{compute.precision}, effective batch {learner.samples_per_step} ({tc.batch_size} x {tc.grad_accum} "
        f"accumulation x {world} process{'es' if world > 1 else ''})"
    )


def run_loop(
    learner: Learner,
    dataset: Sequence[dict],
    cfg: Config,
    compute: Compute,
    found: CheckedInputs,
    run_dir: Path,
    data_dir: Path,
    log: Callable[[str], None],
    on_step: Callable[[StepLog], None] | None,
    stop_after: int | None = None,
) -> TrainResult:
    """5. Optimizer steps up to ``train.max_steps``: after each, record, checkpoint and preview when due.

    The first Ctrl-C or SIGTERM, the end of ``train.max_minutes``, or step ``stop_after`` stops after
    the current step with a checkpoint; a second signal stops at once (KeyboardInterrupt, no
    checkpoint). Non-finite steps are skipped, and ``train.max_nonfinite`` of them in a row raise
    TrainingAborted.
    """
    tc, dist, device = cfg.train, compute.dist, compute.device
    schedule = build_process(cfg.diffusion)
    space = config_space(cfg, run_dir)
    # The latent space's batches come from the latent cache, encoded already (s * mu).
    batch_space = replace(space, encode=_cached) if cfg.model.space == "latent" else space
    checkpoints = CheckpointWriter(
        run_dir, cfg, found.spacing, dist, found.start, found.conditions, labels=found.labels
    )

    def take_step() -> tuple[float, float]:
        return train_step(
            learner,
            schedule,
            dataset,
            learner.samples_seen,
            tc,
            dist,
            device,
            compute.precision,
            found.conditions,
            cfg.conditions,
            batch_space,
            labelled=found.labels is not None,
        )

    def preview(step: int) -> None:
        for warning in preview_warnings(cfg, step):
            log(f"warning: preview at step {step}: {warning}")
        write_preview(
            learner.ema.module, schedule, cfg, step, run_dir, found.spacing, device, compute.precision
        )

    return run_steps(
        learner, take_step, preview, checkpoints, tc, compute, found, run_dir, data_dir, log, on_step,
        stop_after=stop_after,
    )  # fmt: skip


def run_steps(
    learner: Learner,
    take_step: Callable[[], tuple[float, float]],
    preview: Callable[[int], None],
    checkpoints: CheckpointWriter,
    tc: TrainConfig,
    compute: Compute,
    found: CheckedInputs,
    run_dir: Path,
    data_dir: Path,
    log: Callable[[str], None],
    on_step: Callable[[StepLog], None] | None,
    command: str = "train",
    stop_after: int | None = None,
) -> TrainResult:
    """The loop of ``run_loop`` for any learner: ``take_step()`` takes one optimizer step and returns
    (loss, grad_norm); ``preview(step)`` writes a preview (process 0). ``command``: the medddpm
    command named in the advice to resume. ``stop_after``: the step to stop after (``train``)."""
    dist, device = compute.dist, compute.device
    records = RunRecords(run_dir, tc, learner.step if found.start else None, enabled=dist.is_main)
    stop = StopRequest()
    nonfinite_in_a_row = 0
    t0 = time.perf_counter()
    learner.model.train()
    try:
        stop.listen()
        while learner.step < tc.max_steps:
            loss, grad_norm = take_step()
            nonfinite_in_a_row = 0 if learner.count_step(loss, grad_norm) else nonfinite_in_a_row + 1
            check_diverged(nonfinite_in_a_row, learner.step, tc)
            seconds = time.perf_counter() - t0
            spent = out_of_time(tc.max_minutes, seconds, dist, device)
            paused = learner.step == stop_after  # checkpointed and logged, not previewed
            last = learner.step == tc.max_steps or spent
            logged = learner.step % tc.log_every == 0 or last or paused
            if logged:
                loss = mean_over_processes(loss, compute)
            lr = learner.scheduler.get_last_lr()[0]
            entry = StepLog(
                learner.step, tc.max_steps, loss, lr, grad_norm, learner.skipped_nonfinite, seconds
            )
            if logged:
                records.write(entry)
            if on_step is not None and dist.is_main:
                stop.call(on_step, entry)
            if stop.agreed(dist, device):
                raise KeyboardInterrupt
            if learner.step % tc.checkpoint_every == 0 or last or paused:
                checkpoints.save(learner)
            if tc.preview_every and (learner.step % tc.preview_every == 0 or last) and dist.is_main:
                preview(learner.step)
            if spent:
                log(f"Stopped at step {learner.step}: train.max_minutes={tc.max_minutes:g} reached")
                break
            if paused:
                break
    except KeyboardInterrupt:
        if stop.forced:
            raise
        return stop_early(learner, checkpoints, stop, run_dir, data_dir, log, command)
    finally:
        stop.stop_listening()
        records.close()
    return TrainResult(run_dir, learner.step, checkpoints.last)


def preview_warnings(cfg: Config, step: int) -> list[str]:
    """Why a preview (EMA weights, the process's preview sampler with ``train.preview_steps``) at
    ``step`` may show only noise."""
    process = build_process(cfg.diffusion)
    sampler = process_entry(cfg.diffusion.process).preview_sampler
    return sampling_warnings(
        step=step, prediction=process.prediction, sampler=sampler, steps=cfg.train.preview_steps,
        eta=0.0, use_ema=True, ema_decay=cfg.train.ema_decay, ema_warmup=cfg.train.ema_warmup,
    )  # fmt: skip


def stop_early(
    learner: Learner,
    checkpoints: CheckpointWriter,
    stop: StopRequest,
    run_dir: Path,
    data_dir: Path,
    log: Callable[[str], None],
    command: str = "train",
) -> TrainResult:
    """After Ctrl-C or SIGTERM: a checkpoint of the last finished step, and how to go on from it."""
    checkpoints.save(learner)
    by = " (SIGTERM)" if stop.signal == signal.SIGTERM else ""
    log(
        f"Interrupted at step {learner.step}{by}; checkpoint saved in {checkpoints.last}. "
        f"Continue with: medddpm {command} {data_dir} --output {run_dir} --resume"
    )
    by_signal = stop.signal or signal.SIGINT  # None: another process's signal, or a KeyboardInterrupt
    return TrainResult(run_dir, learner.step, checkpoints.last, interrupted=True, signal=by_signal)


def check_diverged(nonfinite_in_a_row: int, step: int, tc: TrainConfig) -> None:
    """Raise TrainingAborted, with advice, after ``train.max_nonfinite`` skipped steps in a row."""
    if nonfinite_in_a_row >= tc.max_nonfinite:
        raise TrainingAborted(
            f"{nonfinite_in_a_row} steps in a row had a non-finite loss or gradient "
            f"(last at step {step}); try --precision fp32 or a lower train.lr "
            f"(now {tc.lr:g}), then --resume"
        )


def mean_over_processes(value: float, compute: Compute) -> float:
    """``value`` averaged over the torchrun processes (a collective); itself with one process."""
    if not compute.dist.enabled:
        return value
    t = torch.tensor([value], device=compute.device)
    torch.distributed.all_reduce(t)
    return float(t) / compute.dist.world_size


class CheckpointWriter:
    """Process 0 writes the learner's state into checkpoints/step-N/; every process waits for it.

    ``last``: the newest checkpoint of the run (the one resumed from, before the first write).
    """

    def __init__(
        self,
        run_dir: Path,
        cfg: Config,
        spacing: tuple[float, float, float],
        dist: Distributed,
        start: Checkpoint | None,
        conditions: TrainingConditions | None = None,
        kind: str = DIFFUSION,
        labels: TrainingLabels | None = None,
    ):
        self.run_dir, self.keep_last, self.dist = run_dir, cfg.train.keep_last, dist
        self.meta = {"config": cfg.to_dict(), "output_spacing": list(spacing), "versions": library_versions()}
        if kind != DIFFUSION:  # a diffusion checkpoint's meta.json has no "kind", as before others existed
            self.meta["kind"] = kind
        if conditions is not None:
            # What sampling needs: the encoding, and the training rows (--match-training draws from them).
            self.meta["conditioning"] = conditions.spec.to_dict()
            self.meta["condition_rows"] = conditions.rows
        if labels is not None:  # the label set the network's label channels encode
            self.meta["labels"] = labels.record()
        self.last: Path | None = start.path if start is not None else None

    def save(self, learner: Learner) -> None:
        if self.dist.is_main:
            state = learner.state_dict()
            self.last = save_checkpoint(self.run_dir, learner.step, state, self.meta, self.keep_last)
        self.dist.barrier()


# ---------------------------------------------------------------------------------------------
# Pieces the loop is built from: the sample stream, one optimizer step, the run folder


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


def condition_dropout(
    known: torch.Tensor, seed: int, position: int, p_all: float, p_each: float
) -> torch.Tensor:
    """``known`` [B, V] with conditions dropped for classifier-free guidance (Ho & Salimans 2022):
    each row all together with probability ``p_all``, else each variable alone with ``p_each``.

    Dropping only one variable at a time would leave the others to reveal it; dropping all together
    trains the unconditional model that guidance and unconditional sampling use. Row i's draws come
    from a generator seeded by (seed, stream position + i), so resuming draws the same.
    """
    dropped_all, kept_each = dropout_draws(known.shape[0], known.shape[1], seed, position, p_all, p_each)
    keep = known & kept_each.to(known.device)
    keep[dropped_all.to(known.device)] = False
    return keep


def dropout_draws(
    batch: int, variables: int, seed: int, position: int, p_all: float, p_each: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``condition_dropout``'s draws: rows whose conditions are all dropped [B] bool (the label
    map too), and the variables each row keeps otherwise [B, V] bool."""
    dropped_all = torch.zeros(batch, dtype=torch.bool)
    kept_each = torch.ones(batch, variables, dtype=torch.bool)
    for i in range(batch):
        g = torch.Generator().manual_seed(((seed + 1) * 2**41 + position + i) % 2**63)
        u = torch.rand(1 + variables, generator=g)
        dropped_all[i] = bool(u[0] < p_all)
        kept_each[i] = u[1:] >= p_each
    return dropped_all, kept_each


def train_step(
    learner: Learner,
    schedule: Process,
    dataset: Sequence[dict],
    samples_seen: int,
    tc: TrainConfig,
    dist: Distributed,
    device: torch.device,
    precision: str,
    conditions: TrainingConditions | None = None,
    cc: ConditionsConfig | None = None,
    space: SpaceEntry = SPACES["pixel"],
    labelled: bool = False,
) -> tuple[float, float]:
    """One optimizer step from stream position ``samples_seen``: ``grad_accum`` micro-batches
    (batch assembly from the cache, encoding into ``space``, conditions with dropout, loss,
    backward), unscale, clip, AdamW, EMA, LR schedule. ``labelled``: the dataset's items carry a
    "label" map, passed to the network (absent for the rows whose conditions are all dropped).
    ``schedule``: the process (medddpm.diffusion.process).

    Returns this process's (loss, grad_norm). When either is not finite the update is skipped
    (weights, EMA and AdamW moments untouched); the caller counts such steps.
    """
    loss_sum = 0.0
    for micro in range(tc.grad_accum):
        position = samples_seen + (micro * dist.world_size + dist.rank) * tc.batch_size
        idx = batch_indices(position, tc.batch_size, len(dataset), tc.seed)
        x0 = space.encode(torch.stack([dataset[i]["image"] for i in idx]).to(device, non_blocking=True))
        g = sample_generators(tc.seed, position, tc.batch_size, device)
        kwargs = {}
        if conditions is not None:
            cc = cc or ConditionsConfig()
            known = condition_dropout(
                torch.from_numpy(conditions.known[idx]), tc.seed, position, cc.p_all, cc.p_each
            )
            kwargs = {
                "cond_values": torch.from_numpy(conditions.values[idx]).to(device),
                "cond_known": known.to(device),
            }
        if labelled:
            cc = cc or ConditionsConfig()
            # The same draws as the variables' dropout: a row whose conditions all drop loses its mask too.
            n_vars = 0 if conditions is None else conditions.values.shape[1]
            dropped, _ = dropout_draws(len(idx), n_vars, tc.seed, position, cc.p_all, cc.p_each)
            kwargs["labels"] = torch.stack([dataset[i]["label"] for i in idx]).to(device, non_blocking=True)
            kwargs["labels_known"] = (~dropped).to(device)
        sync = micro == tc.grad_accum - 1 or not dist.enabled
        with learner.network.no_sync() if not sync else contextlib.nullcontext():
            with autocast(precision, device):
                loss = diffusion_loss(learner.network, schedule, x0, generator=g, model_kwargs=kwargs)
                loss = loss / tc.grad_accum
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


def check_run_dir(run_dir: Path, resume: bool, overwrite: bool, kind: str = DIFFUSION) -> None:
    """Never overwrite a run by accident; fail before any work if the folder cannot be written.

    Writes nothing: the folder is created only once the data has passed preflight. The rules are
    medddpm.output_folder's (RUN_FOLDERS[kind] says what a run of that kind writes). A folder whose
    checkpoints belong to another kind of run is refused, with --resume or --overwrite too.
    """
    from medddpm.output_folder import RUN_FOLDERS, check_output

    check_output(run_dir, RUN_FOLDERS[kind], overwrite=overwrite, resume=resume)
    checkpoints = list_checkpoints(run_dir)
    if checkpoints:
        found = run_kind(checkpoints[-1][1])
        if found != kind:
            raise InputError(f"holds a {found} run, not a {kind} run; choose another --output", run_dir)


def run_kind(checkpoint_dir: Path) -> str:
    """The kind of run a checkpoint folder belongs to: meta.json's "kind" (absent: a diffusion run)."""
    try:
        meta = json.loads((checkpoint_dir / "meta.json").read_text())
    except (OSError, ValueError):
        return DIFFUSION  # an unreadable checkpoint is open_checkpoint's to report
    return str(meta.get("kind", DIFFUSION)) if isinstance(meta, dict) else DIFFUSION


def prepare_run_dir(run_dir: Path, resume: bool, overwrite: bool, kind: str = DIFFUSION) -> None:
    """Create the run folder; with --overwrite (and no --resume) remove the previous run's own files."""
    from medddpm.output_folder import RUN_FOLDERS, prepare_output

    prepare_output(run_dir, RUN_FOLDERS[kind], clear=overwrite and not resume)


__all__ = ["train", "TrainResult", "StepLog", "Distributed"]
