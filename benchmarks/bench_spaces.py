"""Pixel, wavelet and latent space side by side at one output size: seconds per training step, seconds
per sampled volume (the latent one including its tiled decode), and the peak memory of each.

    python benchmarks/bench_spaces.py --sizes 64 --steps 2 --repeats 5 --threads 1
    python benchmarks/bench_spaces.py --device cuda --sizes 64 128 --repeats 5
    python benchmarks/bench_spaces.py --sizes 16 --config tiny --set autoencoder.channels=[8,16] \\
        --set autoencoder.norm_num_groups=4 --set autoencoder.patch_size=16 \\
        --steps 1 --repeats 2 --sample-steps 2                                 # smallest: a smoke run

At each size the three spaces share the U-Net of ``--config`` (default: medddpm's defaults; widths,
levels and attention alike), the batch size, precision, sampler and the same NIfTI files, and train
with ``medddpm.training.loop.train_step`` exactly as ``train`` runs it:

- pixel: the U-Net on the volume, [B, 1, S, S, S];
- wavelet: each batch Haar-transformed before the loss, the U-Net on [B, 8, S/2, S/2, S/2];
- latent: a randomly initialised AutoencoderKL of the config's ``autoencoder`` section (default
  64-128-256 channels, 4 latent channels, f = 4; speed and memory do not depend on what it has learnt).
  As ``train --autoencoder`` does, every scan is encoded once into a cache of mu before training
  (timed apart: "encode s/scan"), and the U-Net trains on [B, 4, S/4, S/4, S/4].

A sampled volume is ``--sample-steps`` network evaluations of the config's sampler (dpm++ by default)
and, in wavelet and latent space, the decode (latent: tile by tile, as ``sample`` does).

After a warm-up step and a warm-up volume per side, the sides take turns (pixel wavelet latent, then
latent wavelet pixel, ...): ``--steps`` training steps, then one sampled volume, per side and turn,
``--repeats`` turns, so that load from other work hits every side alike. Reported: the median wall
seconds per step and per volume, the CPU time of the process for each (on a shared CPU the figure to
trust), and the peak memory of a training step and of a sampled volume: on CUDA
``torch.cuda.max_memory_allocated`` (reset before each); on CPU what the side holds (weights, EMA, AdamW
moments; for sampling the EMA weights and the autoencoder) plus the most one step or volume allocates on
top of it (bench_train's profiler method).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shlex
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).parent))
from bench_train import machine, step_peak_bytes, storage_bytes, sync, write_scans  # noqa: E402

from medddpm.config import Config, build_config  # noqa: E402
from medddpm.data.transforms import build_dataset  # noqa: E402
from medddpm.diffusion.generate import generate_batches  # noqa: E402
from medddpm.diffusion.process import build_process  # noqa: E402
from medddpm.models.autoencoder import build_autoencoder, encode_tiled  # noqa: E402
from medddpm.models.spaces import SPACES, latent_space  # noqa: E402
from medddpm.runtime import Distributed, resolve_device, resolve_precision, seed_everything  # noqa: E402
from medddpm.training.latent import scale_factor  # noqa: E402
from medddpm.training.learner import build_learner  # noqa: E402
from medddpm.training.loop import train_step  # noqa: E402

SPACE_NAMES = ("pixel", "wavelet", "latent")
GIB = 2**30


class SpaceSide:
    """One space: its learner, its training data (latent: the cache of mu) and its sampler."""

    def __init__(self, name: str, cfg: Config, files: list[Path], device: torch.device, work: Path, args):
        ac = cfg.autoencoder
        model = {"space": name, "latent_channels": ac.latent_channels if name == "latent" else None}
        self.cfg = cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update=model)})
        self.name, self.device, self.sample_steps = name, device, args.sample_steps
        self.precision = resolve_precision(cfg.train.precision, device)
        self.dist = Distributed()
        self.dataset = build_dataset(cfg.data, files, work / f"cache-{name}", cfg.data.num_workers)
        seed_everything(cfg.train.seed)
        self.autoencoder = None
        self.encode_seconds = None
        if name == "latent":
            self.autoencoder = build_autoencoder(ac).eval().to(device)
            t0 = time.perf_counter()
            mu = [
                encode_tiled(self.autoencoder, item["image"][None].to(device), ac.slab_voxels)[0].cpu()
                for item in self.dataset
            ]
            sync(device)
            self.encode_seconds = (time.perf_counter() - t0) / len(mu)
            s = scale_factor(mu, len(mu))
            self.space = latent_space(self.autoencoder, s, ac, ac.latent_channels)
            self.dataset = [{"image": s * z} for z in mu]
            self.batch_space = replace(self.space, encode=lambda z: z)  # batches come encoded, as in train
        else:
            self.space = self.batch_space = SPACES[name]
        self.learner = build_learner(cfg, device, self.precision, self.dist)
        self.process = build_process(cfg.diffusion)
        self.unet_size = self.space.latent_size(cfg.data.image_size)
        self.sampled = 0

    def step(self) -> None:
        learner = self.learner
        learner.model.train()
        loss, grad_norm = train_step(
            learner, self.process, self.dataset, learner.samples_seen, self.cfg.train, self.dist, self.device,
            self.precision, space=self.batch_space,
        )  # fmt: skip
        learner.count_step(loss, grad_norm)

    def sample_volume(self) -> torch.Tensor:
        """One volume from the EMA weights, decoded into image space: [1, 1, *image_size]."""
        self.sampled += 1
        sc = self.cfg.sample
        (_, volume), *_ = generate_batches(
            self.learner.ema.module, self.process, self.cfg.data.image_size, [self.sampled], sc.sampler,
            self.sample_steps, eta=sc.eta, device=self.device, precision=self.precision, space=self.space,
        )  # fmt: skip
        return volume

    def held_bytes(self) -> int:
        """Weights, EMA copy and AdamW moments (gradients are freed at the end of every step)."""
        learner = self.learner
        optimizer = [v for s in learner.optimizer.state.values() for v in s.values() if torch.is_tensor(v)]
        return storage_bytes([*learner.model.parameters(), *learner.ema.parameters(), *optimizer])

    def sampling_held_bytes(self) -> int:
        """The EMA weights, and the autoencoder in latent space."""
        tensors = [*self.learner.ema.parameters()]
        if self.autoencoder is not None:
            tensors += [*self.autoencoder.parameters()]
        return storage_bytes(tensors)

    def close(self) -> None:
        del self.learner, self.dataset, self.autoencoder, self.space, self.batch_space


class SamplingView:
    """A side seen by bench_train.step_peak_bytes with sampling as its step."""

    def __init__(self, side: SpaceSide):
        self.side = side

    def held_bytes(self) -> int:
        return self.side.sampling_held_bytes()

    def step(self) -> None:
        self.side.sample_volume()


def peak_gib(side: SpaceSide, what: str, device: torch.device) -> float:
    """Peak memory of one training step (``what`` "train") or one sampled volume ("sample"), GiB."""
    gc.collect()
    run = side.step if what == "train" else side.sample_volume
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        run()
        sync(device)
        return torch.cuda.max_memory_allocated(device) / GIB
    return step_peak_bytes(side if what == "train" else SamplingView(side), device) / GIB


@dataclass
class SpaceResult:
    space: str
    unet_input: list[int]
    """[channels, *spatial] of what the U-Net sees."""
    seconds_per_step: float
    cpu_seconds_per_step: float
    seconds_per_volume: float
    cpu_seconds_per_volume: float
    train_peak_gib: float
    sample_peak_gib: float
    encode_seconds_per_scan: float | None = None
    seconds_per_step_all: list[float] = field(default_factory=list)
    seconds_per_volume_all: list[float] = field(default_factory=list)


def bench_size(size: int, args, device: torch.device, work: Path, log) -> list[SpaceResult]:
    cfg = build_config(args.config, [f"data.image_size={size}", *args.set])
    files = write_scans(work / f"scans-{size}", args.num_scans, size)
    sides = [SpaceSide(name, cfg, files, device, work, args) for name in args.spaces]
    for side in sides:  # warm-up: first-call costs (allocator, kernels, compile) left out of the turns
        side.step()
        side.sample_volume()
        sync(device)
    peaks = {s.name: (peak_gib(s, "train", device), peak_gib(s, "sample", device)) for s in sides}
    steps: dict[str, list[float]] = {s.name: [] for s in sides}
    cpu_steps: dict[str, list[float]] = {s.name: [] for s in sides}
    volumes: dict[str, list[float]] = {s.name: [] for s in sides}
    cpu_volumes: dict[str, list[float]] = {s.name: [] for s in sides}
    for turn in range(args.repeats):
        for side in sides if turn % 2 == 0 else sides[::-1]:
            t0, c0 = time.perf_counter(), time.process_time()
            for _ in range(args.steps):
                side.step()
            sync(device)
            steps[side.name].append((time.perf_counter() - t0) / args.steps)
            cpu_steps[side.name].append((time.process_time() - c0) / args.steps)
            t0, c0 = time.perf_counter(), time.process_time()
            side.sample_volume()
            sync(device)
            volumes[side.name].append(time.perf_counter() - t0)
            cpu_volumes[side.name].append(time.process_time() - c0)
        log(
            f"{size}³ turn {turn + 1}/{args.repeats}: "
            + ", ".join(f"{n} {steps[n][-1]:.3f} s/step {volumes[n][-1]:.2f} s/volume" for n in steps)
        )
    results = []
    for side in sides:
        n = side.name
        results.append(
            SpaceResult(
                space=n,
                unet_input=[side.space.channels, *side.unet_size],
                seconds_per_step=statistics.median(steps[n]),
                cpu_seconds_per_step=statistics.median(cpu_steps[n]),
                seconds_per_volume=statistics.median(volumes[n]),
                cpu_seconds_per_volume=statistics.median(cpu_volumes[n]),
                train_peak_gib=peaks[n][0],
                sample_peak_gib=peaks[n][1],
                encode_seconds_per_scan=side.encode_seconds,
                seconds_per_step_all=steps[n],
                seconds_per_volume_all=volumes[n],
            )
        )
        side.close()
    return results


def report(size: int, results: list[SpaceResult], args) -> str:
    lines = [
        f"{size}³ volumes, batch {args.batch_label}, {args.sample_steps} sampler steps per volume, "
        f"median of {args.repeats} turns:",
        "",
        "| space | U-Net input | s/step | CPU s/step | peak train GiB | s/volume | CPU s/volume | "
        "peak sample GiB | encode s/scan |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        c, *spatial = r.unet_input
        enc = "-" if r.encode_seconds_per_scan is None else f"{r.encode_seconds_per_scan:.2f}"
        lines.append(
            f"| {r.space} | {c} × {'×'.join(map(str, spatial))} | {r.seconds_per_step:.3f} | "
            f"{r.cpu_seconds_per_step:.3f} | {r.train_peak_gib:.3f} | {r.seconds_per_volume:.2f} | "
            f"{r.cpu_seconds_per_volume:.2f} | {r.sample_peak_gib:.3f} | {enc} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[int, list[SpaceResult]]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[64], help="cube sides of the output volume")
    parser.add_argument("--steps", type=int, default=2, help="training steps per side and turn")
    parser.add_argument("--repeats", type=int, default=5, help="turns (the median is reported)")
    parser.add_argument("--sample-steps", type=int, default=25, help="sampler steps per volume")
    parser.add_argument("--spaces", nargs="+", default=list(SPACE_NAMES), choices=SPACE_NAMES)
    parser.add_argument("--config", default=None, help="preset or YAML for every side (default: defaults)")
    parser.add_argument("--set", action="append", default=[], help="config override KEY=VALUE (repeatable)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--num-scans", type=int, default=4, help="NIfTI files written per size")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--json", type=Path, default=None, help="also write the results as JSON")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    args.batch_label = build_config(args.config, list(args.set)).train.batch_size

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    where = machine()
    command = "python benchmarks/bench_spaces.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    print(
        f"{where['date']}, {where['nproc']} CPUs ({where['cpu']}), GPU {where['gpu']}, "
        f"load {where['load_1_5_15']}"
    )
    print(f"torch {where['torch']}, monai {where['monai']}, device {device}; command: {command}")
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-spaces-") as tmp:
        for size in args.sizes:
            results[size] = bench_size(size, args, device, Path(tmp), log)
            print()
            print(report(size, results[size], args), flush=True)
    print(f"\nload after: {[round(x, 2) for x in os.getloadavg()]}")
    if args.json:
        payload = {
            "machine": where,
            "command": command,
            "results": {s: [asdict(r) for r in rs] for s, rs in results.items()},
        }
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
