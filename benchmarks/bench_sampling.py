"""Sampler speed and quality on a toy two-mode dataset: is the default fast sampler good enough?

1. Data: 16³ CT-like volumes, half bright spheres (800 HU), half darker cubes (0 HU) on air
   (-1000 HU), with random size and position. A training set is written as NIfTI; two held-out
   sets (A and B) stay in memory.
2. Train a small U-Net with ``medddpm.training.loop.train`` (reused if OUT/run already holds it). The
   network predicts v (``--prediction v``): trained this briefly, an eps-prediction network does not
   learn the mean of the air background at high noise levels, where eps hides x_0 errors, and its
   samples drift to mid-grey with every sampler (``--prediction eps`` shows it).
3. For each sampler setting draw the same seeds, timing seconds per volume.
4. Quality proxies, each against held-out set A, with one fixed RBF bandwidth per feature set
   (median heuristic on the real sets A and B, so every row uses the same kernel):
   - MMD² on the features of a fixed-seed random ResNet-10 (medddpm.evaluation.features, random init);
   - MMD² on shape statistics (foreground fraction and mean, bounding-box fill, centroid offset),
     standardised by set A;
   - the mode balance: the fraction of samples whose single object is bright (the sphere mode),
     grey (the cube mode), or that are not one object ("other").
   Real set B against A gives the noise floor of each MMD at this sample size.

Usage (from the repository root):

    .venv/bin/python benchmarks/bench_sampling.py --out /tmp/bench_sampling --threads 1 --write-results

``--write-results`` replaces the "Sampling" section of benchmarks/RESULTS.md (between its markers).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_train import cpu_model  # noqa: E402

SIZE = 16
CHANNELS = (8, 16)
"""U-Net channels per level (attention at the coarser, 8³): small enough to train in minutes on a CPU."""
AIR, SPHERE_HU, CUBE_HU = -1000.0, 800.0, 0.0
SETTINGS = [
    ("ddpm", 1000, None),
    ("ddim", 50, None),
    ("ddim", 20, None),
    ("dpm++", 25, None),
    ("dpm++", 10, None),
    ("dpm++", 25, 1.0),
]
"""(sampler, steps, eta); eta None is the sampler's own (ddpm 1, ddim 0, dpm++ 0 = the ODE solver)."""
REFERENCE = "ddpm-1000"
RESULTS = Path(__file__).parent / "RESULTS.md"
START, END = "<!-- bench_sampling:start -->", "<!-- bench_sampling:end -->"


# ---------------------------------------------------------------------------------------------
# 1. Data


def toy_volume(rng: np.random.Generator, mode: str) -> np.ndarray:
    """One [16, 16, 16] volume in HU: a sphere (radius 3-5 voxels) or a cube (side 5-8 voxels)."""
    centre = SIZE / 2 - 0.5 + rng.uniform(-2, 2, size=3)
    grid = np.stack(np.meshgrid(*[np.arange(SIZE)] * 3, indexing="ij")).astype(float)
    offset = grid - centre[:, None, None, None]
    if mode == "sphere":
        inside = np.sqrt((offset**2).sum(0)) <= rng.uniform(3, 5)
        value = SPHERE_HU
    else:
        inside = np.abs(offset).max(0) <= rng.uniform(2.5, 4)
        value = CUBE_HU
    volume = np.full((SIZE,) * 3, AIR, dtype=np.float32)
    volume[inside] = value
    return volume


def toy_set(seed: int, n: int) -> np.ndarray:
    """n volumes in HU [n, 16, 16, 16], alternately spheres and cubes."""
    rng = np.random.default_rng(seed)
    return np.stack([toy_volume(rng, "sphere" if i % 2 == 0 else "cube") for i in range(n)])


def to_model_space(hu: np.ndarray) -> np.ndarray:
    """The CT window [-1000, 1000] HU -> [-1, 1], as training preprocessing maps it."""
    return np.clip(hu / 1000.0, -1, 1).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# 2. Training


def train_model(out: Path, steps: int, n_train: int, prediction: str, device: torch.device, log) -> Path:
    from medddpm.config import build_config
    from medddpm.training.checkpoint import list_checkpoints, open_checkpoint
    from medddpm.training.loop import train

    run = out / "run"
    done = list_checkpoints(run)
    if (
        done
        and done[-1][0] == steps
        and open_checkpoint(done[-1][1]).config.diffusion.prediction == prediction
    ):
        log(f"reusing the model in {run}")
        return run
    scans = out / "scans"
    scans.mkdir(parents=True, exist_ok=True)
    for i, volume in enumerate(toy_set(seed=1, n=n_train)):
        nib.save(nib.Nifti1Image(volume, np.eye(4)), str(scans / f"toy_{i:03d}.nii.gz"))
    overrides = [
        "data.modality=ct",
        f"data.image_size={SIZE}",
        f"diffusion.prediction={prediction}",
        f"model.channels=[{CHANNELS[0]},{CHANNELS[1]}]",
        "model.attention_levels=[false,true]",
        "model.num_head_channels=8",
        "model.norm_num_groups=4",
        "train.batch_size=8",
        "train.lr=1e-3",
        "train.warmup_steps=50",
        "train.ema_decay=0.995",
        f"train.checkpoint_every={steps}",
        "train.log_every=50",
        "train.preview_every=0",
        f"train.device={device.type}",
        "train.precision=auto",  # fp32 on CPU, bf16 on CUDA
    ]
    cfg = build_config(None, overrides, {"train.max_steps": steps})
    t0 = time.perf_counter()
    train(cfg, scans, run, overwrite=True, log=log)
    log(f"trained {steps} steps in {time.perf_counter() - t0:.0f} s")
    return run


# ---------------------------------------------------------------------------------------------
# 3 and 4. Sampling and quality


def shape_statistics(x: np.ndarray) -> np.ndarray:
    """Per volume [N, 4]: foreground (> -0.5) fraction and mean, bounding-box fill, centroid offset (voxels).

    No feature is constant over the real data (the foreground's spread would be: every real object
    is flat), so each can be standardised by the real set's spread.
    """
    out = []
    for v in x:
        fg = v > -0.5
        n = int(fg.sum())
        if n == 0:
            out.append([0.0, -1.0, 0.0, 0.0])
            continue
        idx = np.argwhere(fg)
        box = np.prod(idx.max(0) - idx.min(0) + 1)
        centroid = idx.mean(0) - (SIZE - 1) / 2
        out.append([n / v.size, v[fg].mean(), n / box, np.linalg.norm(centroid)])
    return np.asarray(out, dtype=np.float64)


def classify(x: np.ndarray) -> np.ndarray:
    """'bright', 'grey' or 'other' per volume: which mode's intensity its single object has.

    One object: the largest connected foreground component (> -0.5) holds at least 90% of the
    foreground and 1% to 25% of the volume; anything else is 'other'. Its median intensity then
    picks the nearer mode: spheres are 0.8 in model space and cubes 0.0, so the cut is at 0.4.
    How well shapes are drawn shows in the shape-statistics MMD, not here.
    """
    from scipy import ndimage

    labels = []
    for v in x:
        foreground = v > -0.5
        components, n = ndimage.label(foreground)
        sizes = np.bincount(components.ravel())[1:] if n else np.zeros(1, dtype=int)
        largest = components == 1 + int(sizes.argmax())
        one_object = n and sizes.max() >= 0.9 * foreground.sum() and 0.01 <= largest.mean() <= 0.25
        if not one_object:
            labels.append("other")
        else:
            labels.append("bright" if np.median(v[largest]) >= 0.4 else "grey")
    return np.asarray(labels)


class Quality:
    """MMD² of a set of volumes against held-out set A, on two fixed feature maps."""

    def __init__(self, real_a: np.ndarray, real_b: np.ndarray):
        from medddpm.evaluation.features import build_feature_extractor
        from medddpm.evaluation.metrics import median_heuristic_bandwidth

        self.net = build_feature_extractor("resnet10", seed=0)
        self.a_net = self._net_features(real_a)
        self.a_stats_raw = shape_statistics(real_a)
        self.mu, self.sd = self.a_stats_raw.mean(0), self.a_stats_raw.std(0)
        self.a_stats = (self.a_stats_raw - self.mu) / self.sd
        b_net, b_stats = self._net_features(real_b), (shape_statistics(real_b) - self.mu) / self.sd
        self.sigma_net = median_heuristic_bandwidth(self.a_net, b_net)
        self.sigma_stats = median_heuristic_bandwidth(self.a_stats, b_stats)

    def _net_features(self, x: np.ndarray) -> np.ndarray:
        return self.net.extract(torch.from_numpy(x[:, None]), batch_size=16)

    def __call__(self, x: np.ndarray) -> dict[str, float]:
        from medddpm.evaluation.metrics import mmd

        stats = (shape_statistics(x) - self.mu) / self.sd
        labels = classify(x)
        return {
            "mmd_net": mmd(self.a_net, self._net_features(x), bandwidth=self.sigma_net),
            "mmd_stats": mmd(self.a_stats, stats, bandwidth=self.sigma_stats),
            "bright": float((labels == "bright").mean()),
            "grey": float((labels == "grey").mean()),
            "other": float((labels == "other").mean()),
        }


def setting_name(sampler: str, steps: int, eta: float | None) -> str:
    return f"{sampler}-{steps}" + ("" if eta is None else f"-eta{eta:g}")


def draw(
    run: Path,
    sampler: str,
    steps: int,
    eta: float | None,
    seeds: list[int],
    batch_size: int,
    device: torch.device,
) -> tuple[np.ndarray, float]:
    """Samples [N, 16, 16, 16] in model space and seconds per volume (network + sampler, no file I/O)."""
    from medddpm.diffusion.generate import generate
    from medddpm.diffusion.schedule import NoiseSchedule
    from medddpm.models.unet import build_unet
    from medddpm.runtime import resolve_precision
    from medddpm.training.checkpoint import load_weights, open_checkpoint, resolve_checkpoint

    ckpt = open_checkpoint(resolve_checkpoint("latest", run))
    model = build_unet(ckpt.config.model)
    load_weights(model, ckpt.weights(ema=True), ckpt.path / "ema.safetensors")
    schedule = NoiseSchedule.from_config(ckpt.config.diffusion)
    model.to(device)
    precision = resolve_precision("auto", device)
    t0 = time.perf_counter()
    volumes = generate(
        model, schedule, ckpt.config.data.image_size, seeds, sampler, steps, eta=eta,
        batch_size=batch_size, device=device, precision=precision,
    )  # fmt: skip
    seconds = (time.perf_counter() - t0) / len(seeds)
    return torch.stack(volumes)[:, 0].numpy(), seconds


# ---------------------------------------------------------------------------------------------
# Report


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}, CUDA {torch.version.cuda}"
    model = cpu_model()
    nproc = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip() or str(os.cpu_count())
    threads = torch.get_num_threads()
    return f"{model}, nproc {nproc}, {platform.system()}, torch {torch.__version__} with {threads} thread(s)"


def table(rows: list[dict], ref: dict, floor: dict) -> str:
    lines = [
        f"| sampler | steps | eta | s / volume | speed-up vs {ref['name']} "
        "| MMD² random ResNet-10 | MMD² shape stats | bright (sphere) / grey (cube) / other |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['sampler']} | {r['steps']} | {r['eta']:g} | {r['seconds']:.3f} "
            f"| {ref['seconds'] / r['seconds']:.1f}x "
            f"| {r['mmd_net']:.4f} | {r['mmd_stats']:.4f} "
            f"| {r['bright']:.0%} / {r['grey']:.0%} / {r['other']:.0%} |"
        )
    lines.append(
        f"| real set B (noise floor) | - | - | - | - | {floor['mmd_net']:.4f} | {floor['mmd_stats']:.4f} "
        f"| {floor['bright']:.0%} / {floor['grey']:.0%} / {floor['other']:.0%} |"
    )
    return "\n".join(lines)


def write_results(section: str) -> None:
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    block = f"{START}\n{section.rstrip()}\n{END}"
    if START in text and END in text:
        text = re.sub(re.escape(START) + ".*?" + re.escape(END), lambda _: block, text, flags=re.S)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    RESULTS.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/bench_sampling"), help="work folder")
    parser.add_argument("--train-steps", type=int, default=1000)
    parser.add_argument("--prediction", choices=["eps", "v"], default="v", help="network target")
    parser.add_argument("--n-train", type=int, default=128, help="training volumes")
    parser.add_argument("--num", type=int, default=32, help="samples per setting (and volumes per real set)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument(
        "--only",
        nargs="*",
        default=None,
        help="settings such as dpm++-25 or dpm++-25-eta1 (default: all; none: only train the model)",
    )
    parser.add_argument("--write-results", action="store_true", help="update benchmarks/RESULTS.md")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    log = lambda message: print(message, flush=True)  # noqa: E731
    load_start = os.getloadavg()
    started = datetime.datetime.now().astimezone()

    from medddpm.runtime import resolve_device, resolve_precision

    device = resolve_device(args.device)
    run = train_model(args.out, args.train_steps, args.n_train, args.prediction, device, log)
    real_a = to_model_space(toy_set(seed=2, n=args.num))
    real_b = to_model_space(toy_set(seed=3, n=args.num))
    quality = Quality(real_a, real_b)
    floor = quality(real_b)
    seeds = list(range(10_000, 10_000 + args.num))

    rows = []
    from medddpm.diffusion.samplers import resolve_eta
    from medddpm.preview import save_montage

    settings = [s for s in SETTINGS if args.only is None or setting_name(*s) in args.only]
    if not settings:  # `--only` with no names: train (or check) the model and stop
        log(f"no sampler settings selected; the model is in {run}")
        return
    for sampler, steps, eta in settings:
        name = setting_name(sampler, steps, eta)
        volumes, seconds = draw(run, sampler, steps, eta, seeds, args.batch_size, device)
        np.save(args.out / f"samples-{name}.npy", volumes)
        used_eta = resolve_eta(sampler, eta)
        row = {"name": name, "sampler": sampler, "steps": steps, "eta": used_eta, "seconds": seconds}
        row.update(quality(volumes))
        rows.append(row)
        log(f"{name}: {seconds:.3f} s/volume, {row}")
        save_montage(list(volumes[:4]), args.out / f"samples-{name}.png", value_range=(-1, 1))
    ref = next((r for r in rows if r["name"] == REFERENCE), rows[0])
    load_end = os.getloadavg()
    result = table(rows, ref, floor)
    command = " ".join(
        shlex.quote(a) for a in [".venv/bin/python", "benchmarks/bench_sampling.py", *sys.argv[1:]]
    )
    section = "\n".join(
        [
            "## Sampling: speed and quality per sampler (`bench_sampling.py`)",
            "",
            f"- Date: {started:%Y-%m-%d %H:%M %Z}",
            f"- Machine: {machine(device)}",
            f"- Load average (1 min) at start / end: {load_start[0]:.1f} / {load_end[0]:.1f}",
            f"- Command: `{command}`",
            f"- Model: U-Net channels {CHANNELS}, attention at 8³, {args.prediction}-prediction, linear "
            f"schedule T = 1000, trained {args.train_steps} steps (batch 8) on {args.n_train} toy volumes "
            f"(16³, spheres 800 HU / cubes 0 HU on air); EMA weights, {device.type} "
            f"{resolve_precision('auto', device)}.",
            f"- {args.num} samples per setting (seeds 10000..), batch {args.batch_size}; "
            "MMD² (unbiased, RBF, bandwidth fixed by the median heuristic on the real sets) against "
            f"{args.num} held-out real volumes.",
            "",
            result,
            "",
        ]
    )
    print(section)
    if args.write_results:
        write_results(section)


if __name__ == "__main__":
    main()
