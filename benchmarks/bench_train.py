"""Training throughput: medddpm's training step against the training loop of MONAI's 3D DDPM tutorial.

In one process, at each size, with the same U-Net architecture (medddpm's model config) and the
same NIfTI files (written to a temporary folder):

A. tutorial: the loop of MONAI's ``generation/3d_ddpm/3d_ddpm_tutorial.ipynb`` as the notebook writes
   it: a DataLoader (shuffle, workers) over a CacheDataset of the scans, DiffusionModelUNet with its
   default attention, DDPMScheduler (scaled_linear_beta, 1000 steps) + DiffusionInferer, Adam at
   lr 5e-5, fp16 autocast + GradScaler on CUDA (fp32 on CPU, where the notebook's GradScaler does
   nothing), ``loss.item()`` every step; no EMA, no clipping.
B. medddpm: ``medddpm.training.learner.build_learner`` + ``medddpm.training.loop.train_step``, exactly
   what ``train()`` runs: the cached dataset of ``medddpm.data.transforms.build_dataset`` and its batch
   assembly, AdamW + LR schedule, gradient clipping, EMA, per-sample generators, the configured
   precision, compile and gradient checkpointing.

After warm-up the two are timed in alternation (A B, B A, A B, ...), ``--steps`` optimizer steps per turn
and ``--repeats`` turns each, so that load from other work on the machine hits both alike. Reported:
the median steps/s of each and the ratio B / A (> 1: medddpm is faster) as the median of the
per-turn ratios, with their range; also the CPU time of the process per step, and on a CPU the
ratio in CPU time, which load from other jobs barely moves. Peak memory: what a side holds between
steps (weights, optimizer state, EMA; not the data cache) plus the most that one profiled step
allocates on top of it. ``--flops`` counts the
model FLOPs of one step (forward + backward, FlopCounterMode) and reports achieved TFLOP/s.

A side that runs out of device memory (``torch.OutOfMemoryError`` in its warm-up, its profiled step
or a timed step) is a result, not a crash: its row says "out of memory" (when, what torch tried to
allocate, the device's peak), its memory is given back, the other sides are measured on, and no
ratio is computed at that size where the tutorial or medddpm is the one that ran out.

Usage (from the repository root):

    .venv/bin/python benchmarks/bench_train.py --sizes 32 --steps 2 --repeats 5
    .venv/bin/python benchmarks/bench_train.py --device cuda --sizes 64 128 --compile --flops
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import json
import os
import platform
import re
import shlex
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from medddpm.config import Config, build_config
from medddpm.data.transforms import build_dataset
from medddpm.diffusion.schedule import NoiseSchedule
from medddpm.models.unet import build_unet
from medddpm.runtime import Distributed, resolve_device, resolve_precision, seed_everything
from medddpm.training.learner import build_learner
from medddpm.training.loop import train_step

MEMORY_FORMATS = {"auto": None, "channels-last": torch.channels_last_3d, "ncdhw": torch.contiguous_format}
H100_BF16_DENSE_TFLOPS = 989.0
"""NVIDIA H100 SXM dense bf16 tensor-core peak (the H200 has the same)."""


# ---------------------------------------------------------------------------------------------
# The machine and the data


def cpu_model() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo), else what the platform module knows."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown CPU"


def machine() -> dict:
    """Where a figure was measured: date, CPU, cores, load, GPU, library versions."""
    import monai

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu": cpu_model(),
        "nproc": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": gpu,
        "load_1_5_15": [round(x, 2) for x in os.getloadavg()],
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "monai": monai.__version__,
    }


def blob_volume(rng: np.random.Generator, shape: tuple[int, int, int]) -> np.ndarray:
    """A bright ellipsoid with an inner structure on a dark, noisy background (MRI-like contrast)."""
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij"))
    radius = np.sqrt(((grid / rng.uniform(0.6, 0.85, size=(3, 1, 1, 1))) ** 2).sum(0))
    volume = 300.0 * (radius < 1) + 200.0 * (radius < 0.5) + rng.normal(0, 20, shape)
    return volume.astype(np.float32)


def write_scans(folder: Path, n: int, size: int, seed: int = 0) -> list[Path]:
    """``n`` NIfTI files (.nii.gz, 1.5 mm, RAS) a quarter larger than ``size``, so that fitting
    them to ``size``³ does some work, as real scans would."""
    rng = np.random.default_rng(seed)
    shape = (size + size // 4, size + size // 4 + 2, size + size // 4 - 2)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / f"scan_{i:03d}.nii.gz"
        nib.save(nib.Nifti1Image(blob_volume(rng, shape), np.diag([1.5, 1.5, 1.5, 1.0])), str(path))
        paths.append(path)
    return paths


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def storage_bytes(tensors) -> int:
    """Bytes of the distinct storages behind ``tensors`` (views and shared weights counted once)."""
    seen: dict[int, int] = {}
    for t in tensors:
        if isinstance(t, torch.Tensor) and t.device.type != "meta":
            s = t.untyped_storage()
            seen[s.data_ptr()] = s.nbytes()
    return sum(seen.values())


def optimizer_tensors(optimizer: torch.optim.Optimizer):
    for state in optimizer.state.values():
        yield from (v for v in state.values() if isinstance(v, torch.Tensor))


# ---------------------------------------------------------------------------------------------
# A. The tutorial's loop


class TutorialLoop:
    """The training loop of MONAI's 3D DDPM tutorial, on medddpm's model architecture."""

    name = "tutorial"
    label = "fp32 NCDHW"  # precision and layout, as reported

    def __init__(self, cfg: Config, files: list[Path], device: torch.device, amp: bool, workers: int):
        from monai.data import CacheDataset, DataLoader
        from monai.inferers import DiffusionInferer
        from monai.networks.nets import DiffusionModelUNet
        from monai.networks.schedulers import DDPMScheduler
        from monai.transforms import (
            Compose,
            EnsureChannelFirstd,
            LoadImaged,
            Resized,
            ScaleIntensityd,
            ScaleIntensityRangePercentilesd,
        )

        size = tuple(cfg.data.image_size)
        # The notebook's chain for its BraTS files (load, channel first, fit the size, rescale
        # intensities), written for single-channel 3D files. Its output stays a MetaTensor, as there.
        transforms = Compose(
            [
                LoadImaged(keys=["image"]),
                EnsureChannelFirstd(keys=["image"], channel_dim="no_channel"),
                Resized(keys=["image"], spatial_size=size),
                ScaleIntensityd(keys=["image"]),
                ScaleIntensityRangePercentilesd(keys=["image"], lower=0, upper=99.5, b_min=0, b_max=1),
            ]
        )
        dataset = CacheDataset([{"image": str(f)} for f in files], transforms, cache_rate=1.0, progress=False)
        self.loader = DataLoader(
            dataset,
            batch_size=cfg.train.batch_size,
            shuffle=True,
            num_workers=workers,
            persistent_workers=workers > 0,
        )
        m = cfg.model
        self.model = DiffusionModelUNet(
            spatial_dims=3,
            in_channels=1,
            out_channels=1,
            channels=tuple(m.channels),
            attention_levels=tuple(m.attention_levels),
            num_res_blocks=m.num_res_blocks,
            num_head_channels=m.num_head_channels,
            norm_num_groups=m.norm_num_groups,
        ).to(device)
        self.scheduler = DDPMScheduler(
            num_train_timesteps=1000, schedule="scaled_linear_beta", beta_start=0.0005, beta_end=0.0195
        )
        self.inferer = DiffusionInferer(self.scheduler)
        self.optimizer = torch.optim.Adam(params=self.model.parameters(), lr=5e-5)
        self.scaler = torch.amp.GradScaler(device.type, enabled=amp)
        self.amp = amp
        self.device = device
        self.batches = self._endless()
        self.epoch_loss = 0.0
        self.model.train()

    def _endless(self):
        while True:  # one pass of the notebook's epoch loop after another
            yield from self.loader

    def step(self) -> None:
        import torch.nn.functional as F

        batch = next(self.batches)
        images = batch["image"].to(self.device)
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device_type=self.device.type, dtype=torch.float16, enabled=self.amp):
            noise = torch.randn_like(images).to(self.device)
            timesteps = torch.randint(
                0, self.inferer.scheduler.num_train_timesteps, (images.shape[0],), device=images.device
            ).long()
            noise_pred = self.inferer(
                inputs=images, diffusion_model=self.model, noise=noise, timesteps=timesteps
            )
            loss = F.mse_loss(noise_pred.float(), noise.float())
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.epoch_loss += loss.item()

    def held_bytes(self) -> int:
        """Weights and Adam moments (the previous step's gradients are freed when a step begins)."""
        return storage_bytes(
            [*self.model.parameters(), *self.model.buffers(), *optimizer_tensors(self.optimizer)]
        )

    def close(self) -> None:
        """Drop the model, optimizer and data (and the loader's workers)."""
        del self.model, self.optimizer, self.scaler, self.inferer, self.batches, self.loader


# ---------------------------------------------------------------------------------------------
# B. medddpm's training step


class MedddpmStep:
    """``medddpm.training.loop.train_step`` on ``build_learner`` and ``build_dataset``, as train() does."""

    def __init__(
        self,
        cfg: Config,
        files: list[Path],
        device: torch.device,
        cache_dir: Path,
        memory_format: torch.memory_format | None = None,
        name: str = "medddpm",
    ):
        self.name = name
        self.cfg = cfg
        self.device = device
        self.precision = resolve_precision(cfg.train.precision, device)
        self.dist = Distributed()
        self.dataset = build_dataset(cfg.data, files, cache_dir, cfg.data.num_workers)
        seed_everything(cfg.train.seed)
        self.learner = build_learner(cfg, device, self.precision, self.dist, memory_format)
        conv = next(w for w in self.learner.model.parameters() if w.dim() == 5 and w.shape[1] > 1)
        self.layout = "channels-last" if conv.is_contiguous(memory_format=torch.channels_last_3d) else "NCDHW"
        self.label = (
            f"{self.precision} {self.layout}"
            + (" +compile" if cfg.train.compile else "")
            + (" +checkpointing" if cfg.model.gradient_checkpointing else "")
        )
        self.schedule = NoiseSchedule.from_config(cfg.diffusion)
        self.learner.model.train()

    def step(self) -> None:
        learner = self.learner
        loss, grad_norm = train_step(
            learner,
            self.schedule,
            self.dataset,
            learner.samples_seen,
            self.cfg.train,
            self.dist,
            self.device,
            self.precision,
        )
        learner.count_step(loss, grad_norm)

    def held_bytes(self) -> int:
        """Weights, EMA copy and AdamW moments (gradients are freed at the end of every step)."""
        learner = self.learner
        model, ema = learner.model, learner.ema
        return storage_bytes(
            [*model.parameters(), *model.buffers(), *ema.parameters(), *ema.buffers()]
            + list(optimizer_tensors(learner.optimizer))
        )

    def close(self) -> None:
        """Drop the learner (weights, EMA, optimizer) and the cached dataset."""
        del self.learner, self.dataset


# ---------------------------------------------------------------------------------------------
# Measuring


def step_peak_bytes(side, device: torch.device) -> int:
    """What ``side`` holds between steps plus the most that one step allocates on top of it.

    The profiler does not see frees of blocks allocated before it started (the tutorial's previous
    gradients, freed by its zero_grad), so those are left out of what a side holds."""
    from torch.profiler import ProfilerActivity, profile

    held = side.held_bytes()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    sync(device)
    with profile(activities=activities, profile_memory=True) as prof:
        side.step()
        sync(device)
    # Allocations (+bytes) and frees (-bytes) of every device, in time order; keep this device's.
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    live = peak = 0
    for e in sorted(events, key=lambda e: e.start_ns()):
        if e.device_type().name.lower() == device.type:
            live += e.nbytes()
            peak = max(peak, live)
    return held + peak


def model_flops(cfg: Config) -> int:
    """Model FLOPs of one training step (forward + backward, one batch) counted on the meta device.

    Counts the network's own work once: recomputation by gradient checkpointing is not useful work."""
    from torch.utils.flop_counter import FlopCounterMode

    model_cfg = cfg.model.model_copy(update={"gradient_checkpointing": False, "use_flash_attention": False})
    with torch.device("meta"):
        model = build_unet(model_cfg)
        x = torch.randn(cfg.train.batch_size, 1, *cfg.data.image_size)
        t = torch.randint(0, 1000, (cfg.train.batch_size,))
    with FlopCounterMode(display=False) as counter:
        model(x, t).float().square().mean().backward()
    return int(counter.get_total_flops())


@dataclass
class OutOfMemory:
    """A side that ran out of device memory, so was not (fully) measured."""

    during: str  # "warm-up", "memory profile" or "timed turn N"
    message: str  # torch's first line: what it tried to allocate, and what was in use
    device_peak_gib: float | None = None  # the most the device held during that attempt, all sides (CUDA)

    @property
    def tried_to_allocate(self) -> str | None:
        found = re.search(r"[Tt]ried to allocate ([\d.]+ [KMGT]?i?B)", self.message)
        return found.group(1) if found else None


@dataclass
class SideResult:
    name: str
    steps_per_s: float | None  # median over turns, wall clock (None: out of memory)
    steps_per_s_all: list[float]
    cpu_seconds_per_step: float | None  # median over turns, CPU time of this process (all its threads)
    peak_memory_gib: float | None
    tflops: float | None = None
    ratio: float | None = None  # vs the tutorial: median over turns of the per-turn steps/s ratio
    ratio_per_turn: list[float] = field(default_factory=list)
    cpu_ratio: float | None = None  # the same from CPU time per step (CPU runs: robust to load)
    out_of_memory: OutOfMemory | None = None


@dataclass
class SizeResult:
    size: int
    batch_size: int
    precision: dict[str, str]
    load_before: list[float]
    load_after: list[float]
    # medddpm vs tutorial: median over turns of (medddpm steps/s) / (tutorial steps/s); None when
    # either ran out of memory
    ratio: float | None
    ratio_of_medians: float | None  # median medddpm steps/s / median tutorial steps/s
    sides: list[SideResult] = field(default_factory=list)
    flops_per_step: int | None = None


@contextlib.contextmanager
def recording_oom(name: str, during: str, device: torch.device, failures: dict[str, OutOfMemory]):
    """Run the block; if the device runs out of memory, record it in ``failures[name]`` instead of raising."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    try:
        yield
    except torch.OutOfMemoryError as e:
        peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
        message = str(e).strip().splitlines()[0] if str(e).strip() else "out of memory"
        failures[name] = OutOfMemory(during, message, peak)


def drop(side, oom: OutOfMemory, sides: list, device: torch.device, log) -> None:
    """Take a side that ran out of memory out of the measurement and give its memory back."""
    log(f"{side.name}: out of memory in {oom.during} ({oom.message}); measuring the others without it")
    sides.remove(side)
    side.close()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def build_sides(
    size: int,
    cfg: Config,
    flags: dict,
    files: list[Path],
    args: argparse.Namespace,
    device: torch.device,
    work: Path,
) -> list:
    """[tutorial, medddpm] and, with --compare-layouts / --compare-set, medddpm-2."""
    ref_amp = args.ref_precision == "fp16" or (args.ref_precision == "tutorial" and device.type == "cuda")
    torch.manual_seed(0)
    tutorial = TutorialLoop(cfg, files, device, ref_amp, args.ref_workers)
    tutorial.label = ("fp16 autocast" if ref_amp else "fp32") + " NCDHW"
    medddpm = MedddpmStep(cfg, files, device, work / f"cache_{size}", MEMORY_FORMATS[args.memory_format])
    sides = [tutorial, medddpm]
    if args.compare_layouts or args.compare_set:
        # Side medddpm-2: the same, in the other layout and/or with further config overrides.
        other = MEMORY_FORMATS[args.memory_format]
        if args.compare_layouts:
            other = torch.contiguous_format if medddpm.layout == "channels-last" else torch.channels_last_3d
        # its overrides beat this script's flags (--compile, --checkpointing, ...)
        set_here = {kv.partition("=")[0].strip() for kv in args.compare_set}
        flags2 = {k: v for k, v in flags.items() if k not in set_here}
        cfg2 = build_config(args.config, [*args.set, *args.compare_set], flags2)
        second = MedddpmStep(cfg2, files, device, work / f"cache_{size}", other, name="medddpm-2")
        second.label += "".join(f" {kv}" for kv in args.compare_set)
        sides.append(second)
    return sides


def warm_up(sides: list, steps: int, size: int, device: torch.device, failures: dict, log) -> None:
    for side in list(sides):
        t0 = time.perf_counter()
        with recording_oom(side.name, "warm-up", device, failures):
            for _ in range(steps):
                side.step()
            sync(device)
        if side.name in failures:
            drop(side, failures[side.name], sides, device, log)
        else:
            log(f"{size}³ {side.name}: warm-up {steps} step(s) in {time.perf_counter() - t0:.1f} s")


def profile_memory(sides: list, device: torch.device, failures: dict, log) -> dict[str, float]:
    """GiB each side holds plus what one profiled step allocates on top (``step_peak_bytes``)."""
    peaks = {}
    for side in list(sides):
        with recording_oom(side.name, "memory profile", device, failures):
            peaks[side.name] = step_peak_bytes(side, device) / 2**30
        if side.name in failures:
            drop(side, failures[side.name], sides, device, log)
    return peaks


def timed_turns(sides: list, size: int, args: argparse.Namespace, device: torch.device, failures: dict, log):
    """Steps/s and CPU seconds per step of each side, per turn, the sides taking turns."""
    rates: dict[str, list[float]] = {s.name: [] for s in sides}
    cpu: dict[str, list[float]] = {s.name: [] for s in sides}
    for turn in range(args.repeats):
        # A B, then B A: a load that rises or falls during the run favours neither side.
        for side in list(sides) if turn % 2 == 0 else sides[::-1]:
            with recording_oom(side.name, f"timed turn {turn + 1}", device, failures):
                sync(device)
                t0, c0 = time.perf_counter(), time.process_time()
                for _ in range(args.steps):
                    side.step()
                sync(device)
                rates[side.name].append(args.steps / (time.perf_counter() - t0))
                cpu[side.name].append((time.process_time() - c0) / args.steps)
            if side.name in failures:
                drop(side, failures[side.name], sides, device, log)
        log(
            f"{size}³ turn {turn + 1}/{args.repeats}: "
            + ", ".join(
                f"{s.name} {rates[s.name][-1]:.3g} steps/s ({cpu[s.name][-1]:.3g} CPU s/step)" for s in sides
            )
        )
    return rates, cpu


def bench_size(size: int, args: argparse.Namespace, device: torch.device, work: Path, log) -> SizeResult:
    flags = {
        "data.image_size": size,
        "train.batch_size": args.batch_size,
        "train.precision": args.precision,
        "train.compile": args.compile or None,
        "train.device": device.type,
        "model.gradient_checkpointing": args.checkpointing or None,
    }
    cfg = build_config(args.config, args.set, flags)
    files = write_scans(work / f"scans_{size}", args.num_scans, size)
    if args.compile:
        torch._dynamo.reset()  # a fresh compile per size: no shapes made dynamic by the previous one
    log(f"{size}³: building the sides (compile happens in warm-up)")
    sides = build_sides(size, cfg, flags, files, args, device, work)
    names, labels = [s.name for s in sides], {s.name: s.label for s in sides}
    failures: dict[str, OutOfMemory] = {}
    warmup = args.warmup if args.warmup is not None else 1 + int(args.compile)
    warm_up(sides, warmup, size, device, failures, log)
    peaks = profile_memory(sides, device, failures, log) if args.memory else {}
    load_before = [round(x, 2) for x in os.getloadavg()]
    rates, cpu = timed_turns(sides, size, args, device, failures, log)
    load_after = [round(x, 2) for x in os.getloadavg()]
    del sides
    flops = model_flops(cfg) if args.flops else None
    measured = [n for n in names if n not in failures]
    result = SizeResult(
        size=size,
        batch_size=args.batch_size,
        precision=labels,
        load_before=load_before,
        load_after=load_after,
        ratio=None,
        ratio_of_medians=None,
        flops_per_step=flops,
    )
    for name in names:
        if name in failures:
            result.sides.append(
                SideResult(
                    name=name,
                    steps_per_s=None,
                    steps_per_s_all=rates.get(name, []),
                    cpu_seconds_per_step=None,
                    peak_memory_gib=peaks.get(name),
                    out_of_memory=failures[name],
                )
            )
            continue
        rate = statistics.median(rates[name])
        side = SideResult(
            name=name,
            steps_per_s=rate,
            steps_per_s_all=rates[name],
            cpu_seconds_per_step=statistics.median(cpu[name]),
            peak_memory_gib=peaks.get(name),
            tflops=flops * rate / 1e12 if flops else None,
        )
        if "tutorial" in measured:  # a ratio needs both sides' every turn
            side.ratio_per_turn = [b / a for a, b in zip(rates["tutorial"], rates[name], strict=True)]
            side.ratio = statistics.median(side.ratio_per_turn)
            cpu_per_turn = [a / b for a, b in zip(cpu["tutorial"], cpu[name], strict=True)]
            side.cpu_ratio = statistics.median(cpu_per_turn) if device.type == "cpu" else None
        result.sides.append(side)
    if "tutorial" in measured and "medddpm" in measured:
        result.ratio = result.sides[1].ratio
        result.ratio_of_medians = statistics.median(rates["medddpm"]) / statistics.median(rates["tutorial"])
    return result


def out_of_memory_note(oom: OutOfMemory, profiled_peak_gib: float | None) -> str:
    """The row of a side that ran out of memory: when, and what is known of its memory."""
    details = [f"in {oom.during}"]
    if oom.tried_to_allocate:
        details.append(f"tried to allocate {oom.tried_to_allocate}")
    if oom.device_peak_gib is not None:
        details.append(f"device peak {oom.device_peak_gib:.1f} GiB")
    if profiled_peak_gib is not None:
        details.append(f"profiled step peak {profiled_peak_gib:.3f} GiB")
    return f"out of memory ({', '.join(details)})"


def report(results: list[SizeResult], device: torch.device) -> str:
    lines = [
        f"{'size':>5} {'side':<10} {'precision':<34} {'steps/s':>9} {'s/step':>8} {'CPU s':>8} "
        f"{'peak GiB':>9} {'TFLOP/s':>8} {'% of 989':>8}  ratio vs tutorial"
    ]
    for r in results:
        for s in r.sides:
            if s.out_of_memory is not None:
                lines.append(
                    f"{r.size:>4}³ {s.name:<10} {r.precision[s.name]:<34} "
                    + out_of_memory_note(s.out_of_memory, s.peak_memory_gib)
                )
                continue
            peak = f"{s.peak_memory_gib:.3f}" if s.peak_memory_gib is not None else "-"
            tf = f"{s.tflops:.3g}" if s.tflops is not None else "-"
            mfu = f"{100 * s.tflops / H100_BF16_DENSE_TFLOPS:.2f}" if s.tflops is not None else "-"
            ratio = ""
            if s.name != "tutorial" and s.ratio is not None:
                lo, hi = min(s.ratio_per_turn), max(s.ratio_per_turn)
                ratio = f"  {s.ratio:.3f} (turns {lo:.2f}-{hi:.2f})"
                if s.cpu_ratio is not None:
                    ratio += f"; CPU time {s.cpu_ratio:.3f}"
            lines.append(
                f"{r.size:>4}³ {s.name:<10} {r.precision[s.name]:<34} {s.steps_per_s:>9.4g} "
                f"{1 / s.steps_per_s:>8.3g} {s.cpu_seconds_per_step:>8.3g} {peak:>9} {tf:>8} {mfu:>8}{ratio}"
            )
        if r.ratio is None:
            short = ", ".join(s.name for s in r.sides if s.out_of_memory is not None)
            summary = f"not computed ({short} ran out of memory)"
        else:
            summary = (
                f"{r.ratio:.3f} (median of per-turn ratios; ratio of median steps/s {r.ratio_of_medians:.3f})"
            )
        lines.append(
            f"{r.size:>4}³ ratio medddpm / tutorial = {summary}; load {r.load_before} -> {r.load_after}"
        )
    if device.type != "cuda" and any(s.tflops for r in results for s in r.sides):
        lines.append("(% of 989: the H100's dense bf16 peak; meaningful on that GPU only)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[SizeResult]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64], help="cube sides to measure")
    parser.add_argument("--steps", type=int, default=2, help="optimizer steps per timed turn")
    parser.add_argument("--repeats", type=int, default=5, help="timed turns of each side (median reported)")
    parser.add_argument(
        "--warmup", type=int, default=None, help="untimed steps first (default 1, 2 with compile)"
    )
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16", "fp16"],
        default="auto",
        help="medddpm's (auto: bf16 on CUDA)",
    )
    parser.add_argument(
        "--ref-precision",
        choices=["tutorial", "fp32", "fp16"],
        default="tutorial",
        help="the tutorial's: fp16 autocast + GradScaler on CUDA, fp32 on CPU, as the notebook runs",
    )
    parser.add_argument("--compile", action="store_true", help="medddpm with train.compile")
    parser.add_argument(
        "--compare-layouts",
        action="store_true",
        help="also time medddpm in the other weight layout (side medddpm-2), in the same turns",
    )
    parser.add_argument(
        "--compare-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="also time medddpm with this config override (side medddpm-2), in the same turns",
    )
    parser.add_argument(
        "--memory-format",
        choices=list(MEMORY_FORMATS),
        default="auto",
        help="medddpm's weight layout (auto: what training picks for the device)",
    )
    parser.add_argument("--checkpointing", action="store_true", help="medddpm with gradient checkpointing")
    parser.add_argument(
        "--config", default=None, help="medddpm config or preset for the model (default: defaults)"
    )
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    parser.add_argument(
        "--ref-workers", type=int, default=None, help="tutorial DataLoader workers (default: min(8, cores))"
    )
    parser.add_argument("--num-scans", type=int, default=8, help="NIfTI files written for both sides")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--flops", action="store_true", help="count model FLOPs and report TFLOP/s")
    parser.add_argument(
        "--no-memory", dest="memory", action="store_false", help="skip the profiled memory step"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.ref_workers is None:
        args.ref_workers = min(8, os.cpu_count() or 1)
    device = resolve_device(args.device)

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    info = machine()
    command = "python " + " ".join(
        shlex.quote(a) for a in [sys.argv[0], *(argv if argv is not None else sys.argv[1:])]
    )
    log(
        f"{info['date']}  {info['cpu']} ({info['nproc']} cores)  gpu={info['gpu']}  "
        f"load {info['load_1_5_15']}"
    )
    results = []
    with tempfile.TemporaryDirectory(prefix="bench_train_") as tmp:
        for size in args.sizes:
            results.append(bench_size(size, args, device, Path(tmp), log))
    text = report(results, device)
    print(
        f"# {command}\n# {info['date']} | {info['cpu']} | nproc {info['nproc']} | torch threads "
        f"{info['torch_threads']} | gpu {info['gpu']} | torch {info['torch']} | monai {info['monai']}"
    )
    print(f"# load at start {info['load_1_5_15']}, at end {[round(x, 2) for x in os.getloadavg()]}")
    print(text)
    if args.json is not None:
        payload = {"command": command, "machine": info, "results": [asdict(r) for r in results]}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=2))
    return results


if __name__ == "__main__":
    main()
