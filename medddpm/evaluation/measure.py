"""``evaluate``: a folder of real scans and a folder of synthetic ones -> metrics.json and a report.

1. Check the options and the report folder; nothing is written until step 5.
2. Find both sets of scans and build the feature network (a bad weights file stops here).
3. Read every scan (a corrupt one stops the evaluation, naming the file) and preprocess both sets
   the same way (see Preprocessing) into volumes [N, 1, D, H, W] on [0, 1].
4. Feature-space metrics on features [N, F] (medddpm.evaluation.features): FID, MMD², precision / recall /
   density / coverage; image-space diversity: mean pairwise MS-SSIM within each set.
5. Build REPORT_DIR in a temporary folder beside it (metrics.json, report.html, report.md, PNGs,
   features.npz on request) and rename it into place, so a failed evaluation leaves nothing.

Preprocessing. Real and synthetic volumes must be compared at one size, orientation and intensity
scale, so both go through one transform (medddpm.data.transforms.build_transforms), then [-1, 1] -> [0, 1]:

- With ``run_dir``: the run's own ``data`` section (RUN_DIR/config.yaml), exactly as in training:
  RAS, the run's spacing, intensity mapping and pad/crop (or resize) to its image size. Synthetic
  files are written in output units (CT in HU, MRI on [0, 1]). CT: the HU window maps both sets
  alike. MRI: the same per-volume percentile mapping runs on both sets; a synthetic volume on
  [0, 1] is then stretched by its own percentiles exactly as a real scan is, which is the
  consistent choice (mapping synthetic files linearly instead would treat the two sets
  differently). The run's ``eval`` section supplies the defaults for features, pairs, seed and k.
- Without ``run_dir``: RAS, then per-volume 0.5 / 99.5 percentile scaling (the MRI mapping), with
  no resampling, padding or cropping: every volume of both sets must have the same shape after
  reorientation, or the evaluation stops naming the first file that differs (pass ``--run`` to
  bring both to the training size). Scaling by percentiles puts CT and MRI on one footing but
  hides global intensity differences; for CT, pass ``--run`` to compare in the HU window.

MONAI's ``MMDMetric`` is not reported: it is written for paired sets of equal size (an
autoencoder's reconstructions against its inputs), and with its only kernel, the linear one, its
unbiased MMD² estimates the squared distance between the feature means, which the FID's first term
already measures. The RBF-kernel MMD² reported here (metrics.mmd) takes sets of any size and
compares whole distributions.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from scipy import linalg
from threadpoolctl import threadpool_limits

from medddpm.config import DataConfig, EvalConfig, load_config
from medddpm.data.nifti import read_scan
from medddpm.data.scans import discover_scans
from medddpm.data.transforms import build_transforms
from medddpm.errors import InputError
from medddpm.evaluation.features import ARCHITECTURES, FeatureExtractor, build_feature_extractor
from medddpm.evaluation.metrics import (
    covariance_rank_deficient,
    fid_from_features,
    median_heuristic_bandwidth,
    mmd,
    pairwise_ms_ssim,
    prdc,
)
from medddpm.runtime import library_versions, resolve_device, stopwatch, torch_threads

REPORT_FILES = ("metrics.json", "report.html", "report.md", "features.npz")
"""What a report folder holds besides its PNG figures; --overwrite replaces only such a folder."""
MIN_VOLUMES = 2
"""FID needs a covariance and MS-SSIM a pair: at least two volumes in each set."""
MIN_SIDE = 8
"""Smallest side evaluated (the training config's own minimum; the ResNet halves it four times)."""
FEATURE_BATCH_VOXELS = 8 * 64**3
"""Voxels per feature batch: 8 volumes at 64³ (about 2 GB of activations in resnet10's first stage)."""


def _no_log(message: str) -> None:
    pass


@dataclass
class Preprocessing:
    """How both sets are brought to one size and intensity scale (see the module docstring)."""

    data: DataConfig
    source: str
    same_shape_required: bool

    def describe(self) -> str:
        d = self.data
        if d.modality == "ct":
            scale = f"HU window [{d.a_min:g}, {d.a_max:g}] mapped to [0, 1]"
        else:
            scale = f"per-volume {d.lower_percentile:g} / {d.upper_percentile:g} percentiles mapped to [0, 1]"
        spacing = "no resampling" if d.spacing is None else f"resampled to {_mm(d.spacing)} mm"
        if self.same_shape_required:
            size = "no padding or cropping (every volume must already have the same shape)"
        elif d.resize == "resize":
            size = f"resized to {_shape(d.image_size)}"
        else:
            size = f"padded / cropped to {_shape(d.image_size)}"
        crop = (
            ", cropped to the foreground first" if d.foreground_crop and not self.same_shape_required else ""
        )
        return f"RAS, {spacing}, {scale}, {size}{crop}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "description": self.describe(),
            "same_shape_required": self.same_shape_required,
            "data": self.data.model_dump(mode="json"),
        }


@dataclass
class VolumeSet:
    """One side of the comparison after preprocessing."""

    name: str
    folder: Path
    files: list[Path]
    volumes: torch.Tensor
    """[N, 1, D, H, W] float32 on [0, 1]."""
    spacing: tuple[float, float, float]
    """Voxel size (mm, RAS) of the preprocessed volumes: the run's spacing, else the set's median."""


@dataclass
class Measurement:
    """Everything ``measure`` computes: metrics.json's content and what the report draws."""

    metrics: dict[str, Any]
    real: VolumeSet
    synthetic: VolumeSet
    features: dict[str, np.ndarray]
    """"real" [N, F] and "synthetic" [M, F], float64."""
    ms_ssim_values: dict[str, list[float]]
    """MS-SSIM of each pair drawn, per set."""
    seconds: dict[str, float]
    """Wall time of each stage."""
    cpu_seconds: dict[str, float]
    """CPU time of each stage, all threads of this process (what a busy machine does not change)."""


@dataclass
class EvaluationResult:
    metrics: dict[str, Any]
    report_dir: Path
    html: Path
    markdown: Path
    seconds: dict[str, float] = field(default_factory=dict)
    cpu_seconds: dict[str, float] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------------
# Step 1: options and the report folder
# --------------------------------------------------------------------------------------------------


def _mm(values: Sequence[float]) -> str:
    return " x ".join(f"{v:.3g}" for v in values)


def _shape(values: Sequence[int]) -> str:
    return "x".join(str(int(v)) for v in values)


def check_report_dir(report_dir: Path, overwrite: bool, inputs: Sequence[Path]) -> None:
    """Refuse a report folder that would overwrite anything but an earlier report.

    medddpm.output_folder's policy (REPORT_FOLDER says what a report holds): an existing non-empty
    folder needs ``overwrite``, and even then only a folder holding report files is replaced; a
    folder that holds, or is, an input is never touched.
    """
    from medddpm.output_folder import REPORT_FOLDER, check_output

    check_output(report_dir, REPORT_FOLDER, overwrite=overwrite, inputs=inputs)


def resolve_preprocessing(run_dir: Path | None) -> tuple[Preprocessing | None, EvalConfig]:
    """The run's data and eval sections, or (None, defaults): the default preprocessing needs a real scan."""
    if run_dir is None:
        return None, EvalConfig()
    config_path = run_dir / "config.yaml"
    if not run_dir.is_dir():
        raise InputError("no such run folder", run_dir)
    if not config_path.is_file():
        raise InputError(
            "not a run folder: it has no config.yaml (the folder `medddpm train` wrote)", run_dir
        )
    cfg = load_config(config_path)
    return Preprocessing(cfg.data, f"run {run_dir} (config.yaml data section)", False), cfg.eval


# --------------------------------------------------------------------------------------------------
# Step 3: reading and preprocessing
# --------------------------------------------------------------------------------------------------


def _ras_shape(img: nib.spatialimages.SpatialImage, shape: Sequence[int]) -> tuple[int, int, int]:
    """The array shape after reorienting to RAS (the axis order of medddpm.data.transforms's Orientationd)."""
    ornt = nib.orientations.io_orientation(img.affine)
    return tuple(int(shape[int(axis)]) for axis in np.argsort(ornt[:, 0]))


def default_preprocessing(first_real: Path) -> Preprocessing:
    """Without a run: RAS and per-volume percentiles, at the RAS shape of the first real scan."""
    img, _, info = read_scan(first_real)
    shape = _ras_shape(img, info.shape)
    if min(shape) < MIN_SIDE:
        raise InputError(
            f"volume of shape {_shape(shape)} is too small to evaluate: "
            f"every side needs at least {MIN_SIDE} voxels",
            first_real,
        )
    data = DataConfig(modality="mri", image_size=shape, spacing=None, resize="pad_crop")
    return Preprocessing(data, "default (no --run)", True)


def check_set_size(name: str, folder: Path, files: Sequence[Path]) -> None:
    if len(files) < MIN_VOLUMES:
        raise InputError(
            f"the {name} set has {len(files)} scan{'s' if len(files) != 1 else ''}, and at least "
            f"{MIN_VOLUMES} are needed (MS-SSIM diversity compares pairs, FID needs a covariance)",
            folder,
        )


def load_scan(path: Path, prep: Preprocessing) -> tuple[torch.Tensor, list[float]]:
    """One file read, checked and preprocessed: [1, D, H, W] on [0, 1], and its voxel size (mm, RAS).

    The file is read in full first (medddpm.data.nifti.read_scan), so a truncated, non-3D, non-finite or
    constant scan is an InputError naming it; without a run, so is a RAS shape other than the target.
    """
    target = tuple(prep.data.image_size)
    img, _, info = read_scan(path)
    if prep.same_shape_required and _ras_shape(img, info.shape) != target:
        raise InputError(
            f"shape {_shape(_ras_shape(img, info.shape))} (RAS) differs from {_shape(target)}, the shape "
            "of the first real scan; without --run every volume must have the same shape. Pass --run "
            "RUN_DIR to bring both sets to the training size",
            path,
        )
    try:
        volume = build_transforms(prep.data)({"image": str(path)})["image"]
    except Exception as e:  # MONAI wraps reader and transform errors in RuntimeError
        reason = str(e).strip().splitlines()[-1][:200] if str(e).strip() else type(e).__name__
        raise InputError(f"preprocessing failed ({reason})", path) from None
    if tuple(volume.shape[1:]) != target:
        raise InputError(
            f"shape {_shape(volume.shape[1:])} after preprocessing differs from {_shape(target)}", path
        )
    return ((volume.float() + 1.0) / 2.0).clamp_(0.0, 1.0), info.spacing


def load_set(
    name: str,
    folder: Path,
    files: Sequence[Path],
    prep: Preprocessing,
    workers: int = 1,
) -> VolumeSet:
    """Every file through load_scan, ``workers`` at a time: volumes [N, 1, D, H, W] on [0, 1].

    A bad file stops the evaluation; with several bad files, the first in file order is named.
    """
    check_set_size(name, folder, files)
    loaded = parallel_map(lambda path: load_scan(path, prep), files, workers)
    volumes = [volume for volume, _ in loaded]
    spacings = [spacing for _, spacing in loaded]
    if prep.data.spacing is not None:
        spacing = tuple(float(s) for s in prep.data.spacing)
    else:
        spacing = tuple(float(statistics.median(s[i] for s in spacings)) for i in range(3))
    return VolumeSet(name, folder, list(files), torch.stack(volumes), spacing)


# --------------------------------------------------------------------------------------------------
# Step 4: metrics
# --------------------------------------------------------------------------------------------------


def extract_features(extractor: FeatureExtractor, volumes: torch.Tensor, workers: int = 1) -> np.ndarray:
    """Features [N, F] of volumes [N, 1, D, H, W]; ``workers`` threads share FEATURE_BATCH_VOXELS."""
    batch = max(1, min(8, FEATURE_BATCH_VOXELS // math.prod(volumes.shape[2:])))
    workers = max(1, min(workers, len(volumes)))
    chunks = [c for c in np.array_split(np.arange(len(volumes)), workers) if len(c)]
    parts = parallel_map(
        lambda idx: extractor.extract(volumes[idx], batch_size=max(1, batch // workers)), chunks, workers
    )
    return np.concatenate(parts)


def cpu_workers(device: torch.device) -> int:
    """Parallel streams for CPU work: one per torch thread (on CUDA, one stream feeds the device)."""
    return max(1, torch.get_num_threads()) if device.type == "cpu" else 1


def parallel_map(
    fn: Callable[[Any], Any], items: Sequence[Any], workers: int, threads_each: int = 1
) -> list[Any]:
    """``[fn(x) for x in items]`` on ``workers`` Python threads, each running torch on ``threads_each``.

    Why: on a small or busy CPU, one stream whose OpenMP threads wait on each other wastes most of
    its time. Measured on 2 shared cores (load ~9): MS-SSIM on two sets took 2.3x less wall and CPU
    time as two single-threaded streams than as one two-threaded stream; resnet10 features ~10% less
    CPU time, with identical results. torch releases the GIL inside its kernels, as nibabel's zlib
    does while decompressing. Exceptions surface in item order.
    """
    if workers <= 1 or len(items) <= 1:
        return [fn(x) for x in items]
    with (
        torch_threads(threads_each),
        ThreadPoolExecutor(workers, initializer=torch.set_num_threads, initargs=(threads_each,)) as pool,
    ):
        return list(pool.map(fn, items))


def feature_metrics(real: np.ndarray, synth: np.ndarray, nearest_k: int) -> dict[str, Any]:
    """FID, MMD² (RBF, median bandwidth) and PRDC of features [N, F] and [M, F]; plain types.

    PRDC needs more than ``nearest_k`` vectors in each set; with fewer its four values are None and
    ``prdc_unavailable`` says why, rather than failing the whole evaluation.
    """
    n_features = real.shape[1]
    with warnings.catch_warnings(), threadpool_limits(1, user_api="blas"):
        # scipy warns that sqrtm of a singular product may be inaccurate; with N <= F it always is
        # singular, and the report says so (fid_covariance_rank_deficient) instead.
        # One BLAS thread: at F = 512 threads gain little, and on a busy machine OpenBLAS threads
        # waiting on each other made sqrtm 8-10x slower (1 s -> 9-12 s measured on 2 shared cores).
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        fid = fid_from_features(real, synth)
    out: dict[str, Any] = {
        "fid": fid,
        "fid_covariance_rank_deficient": covariance_rank_deficient(min(len(real), len(synth)), n_features),
        "mmd": mmd(real, synth, kernel="rbf"),
        "mmd_settings": {
            "estimator": "unbiased MMD² (Gretton et al. 2012)",
            "kernel": "rbf",
            "bandwidth": median_heuristic_bandwidth(real, synth),
            "bandwidth_rule": "median pairwise distance of the pooled features",
        },
        "nearest_k": nearest_k,
        "prdc_unavailable": None,
    }
    try:
        out.update(prdc(real, synth, nearest_k=nearest_k))
    except InputError as e:
        out.update(dict.fromkeys(("precision", "recall", "density", "coverage")))
        out["prdc_unavailable"] = str(e)
    return out


def caveats(metrics: dict[str, Any]) -> list[str]:
    """What the numbers in ``metrics`` cannot say, in plain sentences for the report."""
    fe = metrics["feature_extractor"]
    n_real, n_synth, dim = metrics["n_real"], metrics["n_synthetic"], fe["feature_dim"]
    notes = []
    if fe["weights_sha256"].startswith("random-init"):
        notes.append(
            f"Features come from a {fe['label']}. A randomly initialised network has learnt nothing about "
            "anatomy: its FID, MMD and PRDC can rank models evaluated the same way, but they are not "
            "comparable with any published number. Pass --feature-weights with a MedicalNet checkpoint for "
            "features that are."
        )
    notes.append(
        f"The features are those of MONAI's {fe['name']} in MedicalNet's configuration, not of the original "
        "MedicalNet code: MONAI's ResNet keeps full resolution in its first convolution and strides its "
        "later stages where MedicalNet strides the first and dilates the later ones. The same weights give "
        "different features; FID and MMD compare only with values from the same network, weights (sha256), "
        "preprocessing and numbers of volumes."
    )
    if metrics["fid_covariance_rank_deficient"]:
        notes.append(
            f"FID: with {n_real} real and {n_synth} synthetic volumes but {dim} feature dimensions, both "
            f"covariance matrices are rank-deficient (rank at most N - 1 < {dim}). The FID is then dominated "
            "by this estimation error rather than by the difference between the sets, and is comparable only "
            "between evaluations with the same numbers of volumes."
        )
    else:
        notes.append(
            "FID is biased upwards for finite sets, the more so the fewer the volumes: compare FIDs only at "
            "equal numbers of volumes."
        )
    notes.append(
        "MMD² uses an RBF kernel whose bandwidth is the median distance between these features, so the "
        "bandwidth depends on the data being compared. The estimator is unbiased and can be slightly "
        "negative when the sets agree. MONAI's MMDMetric (linear kernel, equal-size paired sets) is not "
        "reported: its linear kernel only estimates the squared distance of the feature means, which the "
        "FID already contains."
    )
    if metrics["prdc_unavailable"]:
        notes.append(
            f"Precision, recall, density and coverage are unavailable: {metrics['prdc_unavailable']}."
        )
    else:
        notes.append(
            f"Precision, recall, density and coverage (k = {metrics['nearest_k']}) are shares of volumes in "
            f"nearest-neighbour balls; with {min(n_real, n_synth)} volumes in the smaller set each one moves "
            f"them by {1 / min(n_real, n_synth):.0%} or more."
        )
    s = metrics["ms_ssim_settings"]
    notes.append(
        f"MS-SSIM uses {s['num_scales']} scale{'s' if s['num_scales'] != 1 else ''} and a "
        f"{s['kernel_size']}-voxel "
        "Gaussian window chosen to fit the volume size (MONAI's defaults, 5 scales and 11 voxels, need 176 "
        "voxels a side), so its values compare only with evaluations at the same settings. Its 95% intervals "
        "treat pairs as independent although pairs sharing a volume are correlated, so they are too narrow."
    )
    notes.append(
        "None of these metrics detects memorisation: a model that reproduces its training scans scores as "
        "well as one that generalises. Compare synthetic volumes with their nearest training scans for that."
    )
    notes.append(f"Both sets were preprocessed alike: {metrics['preprocessing']['description']}.")
    spacing = metrics["inputs"]["voxel_size_mm"]
    if metrics["preprocessing"]["data"]["spacing"] is None and not np.allclose(
        spacing["real"], spacing["synthetic"], rtol=0.05
    ):
        notes.append(
            f"The voxel sizes differ (real {_mm(spacing['real'])} mm, "
            f"synthetic {_mm(spacing['synthetic'])} mm, "
            "medians) and the volumes were not resampled, so they are compared voxel for voxel at different "
            "physical scales."
        )
    return notes


# --------------------------------------------------------------------------------------------------
# Step 5: writing
# --------------------------------------------------------------------------------------------------


def _publish(tmp: Path, report_dir: Path) -> None:
    """Rename the finished temporary folder to ``report_dir``, replacing an earlier report there."""
    from medddpm.output_folder import publish_folder

    publish_folder(tmp, report_dir)


def _versions() -> dict[str, str]:
    import matplotlib
    import scipy

    return {**library_versions(), "scipy": scipy.__version__, "matplotlib": matplotlib.__version__}


def measure(
    real_dir: str | Path,
    synth_dir: str | Path,
    *,
    run_dir: str | Path | None = None,
    features: str | None = None,
    feature_weights: str | Path | None = None,
    max_pairs: int | None = None,
    seed: int | None = None,
    device: str = "auto",
    log: Callable[[str], None] = _no_log,
) -> Measurement:
    """Steps 2-4 of ``evaluate``: every number of metrics.json, with nothing written.

    ``features``, ``max_pairs`` and ``seed`` default to the run's ``eval`` section with ``run_dir``,
    else to EvalConfig's defaults (resnet10, 500 pairs per set, seed 0). ``seed`` seeds the
    random-init feature network and the MS-SSIM pair subset.
    """
    real_dir, synth_dir = Path(real_dir), Path(synth_dir)
    run_dir = None if run_dir is None else Path(run_dir)
    seconds: dict[str, float] = {}
    cpu_seconds: dict[str, float] = {}
    stage = stopwatch(seconds, cpu_seconds)

    # Options ------------------------------------------------------------------------------------------
    prep, eval_cfg = resolve_preprocessing(run_dir)
    features = features or eval_cfg.features
    if features not in ARCHITECTURES:
        raise InputError(f"unknown feature network {features!r}: choose one of {', '.join(ARCHITECTURES)}")
    max_pairs = eval_cfg.max_pairs if max_pairs is None else max_pairs
    if max_pairs < 1:
        raise InputError(f"--max-pairs must be at least 1, got {max_pairs}")
    seed = eval_cfg.seed if seed is None else seed
    if device not in ("auto", "cpu", "cuda"):
        raise InputError(f"unknown device {device!r}: use auto, cpu or cuda")
    torch_device = resolve_device(device)

    # 2. Inputs and the feature network ----------------------------------------------------------------
    real_files, synth_files = discover_scans(real_dir), discover_scans(synth_dir)
    check_set_size("real", real_dir, real_files)
    check_set_size("synthetic", synth_dir, synth_files)
    extractor = build_feature_extractor(features, feature_weights, seed=seed, device=torch_device)
    if torch_device.type == "cpu":
        # MONAI's 3D ResNet runs about 25% faster on CPU in the channels-last layout (same weights).
        extractor.model.to(memory_format=torch.channels_last_3d)

    # 3. Read and preprocess ----------------------------------------------------------------------------
    with stage("loading"):
        prep = prep or default_preprocessing(real_files[0])
        workers = cpu_workers(torch_device)
        real = load_set("real", real_dir, real_files, prep, workers)
        synth = load_set("synthetic", synth_dir, synth_files, prep, workers)
    # the first message comes once every input has been checked: an error stays a single line
    log(f"Read {len(real_files)} real and {len(synth_files)} synthetic scans ({prep.describe()})")

    # 4. Metrics ------------------------------------------------------------------------------------------
    log(f"Features: {extractor.label}, on {torch_device}")
    with stage("features"):
        real_features = extract_features(extractor, real.volumes, workers)
        synth_features = extract_features(extractor, synth.volumes, workers)
    with stage("feature_metrics"):
        metrics_f = feature_metrics(real_features, synth_features, eval_cfg.nearest_k)

    log(f"MS-SSIM diversity: up to {max_pairs} pairs per set")
    with stage("ms_ssim"):
        ssim_real, ssim_synth = parallel_map(
            lambda v: pairwise_ms_ssim(v.to(torch_device), max_pairs=max_pairs, seed=seed),
            [real.volumes, synth.volumes],
            workers=min(2, workers),
            threads_each=max(1, workers // 2),
        )

    metrics: dict[str, Any] = {
        "fid": metrics_f["fid"],
        "ms_ssim_synthetic": ssim_synth["mean"],
        "ms_ssim_real": ssim_real["mean"],
        "mmd": metrics_f["mmd"],
        "precision": metrics_f["precision"],
        "recall": metrics_f["recall"],
        "density": metrics_f["density"],
        "coverage": metrics_f["coverage"],
        "n_real": len(real.files),
        "n_synthetic": len(synth.files),
        "ms_ssim_synthetic_ci95": [ssim_synth["ci95_low"], ssim_synth["ci95_high"]],
        "ms_ssim_real_ci95": [ssim_real["ci95_low"], ssim_real["ci95_high"]],
        "ms_ssim_pairs": {"synthetic": ssim_synth["n_pairs"], "real": ssim_real["n_pairs"]},
        "fid_covariance_rank_deficient": metrics_f["fid_covariance_rank_deficient"],
        "mmd_settings": metrics_f["mmd_settings"],
        "nearest_k": metrics_f["nearest_k"],
        "prdc_unavailable": metrics_f["prdc_unavailable"],
        "feature_extractor": {
            "name": extractor.name,
            "label": extractor.label,
            "weights_sha256": extractor.weights_sha256 or f"random-init seed {seed}",
            "weights_path": None if feature_weights is None else str(Path(feature_weights).resolve()),
            "feature_dim": extractor.feature_dim,
            "implementation": f"monai.networks.nets.{extractor.name} in MedicalNet's configuration "
            "(not the original MedicalNet forward pass)",
        },
        "ms_ssim_settings": {**ssim_real["settings"], "max_pairs": max_pairs, "seed": seed},
        "preprocessing": prep.to_dict(),
        "inputs": {
            "real_dir": str(real_dir.resolve()),
            "synthetic_dir": str(synth_dir.resolve()),
            "run": None if run_dir is None else str(run_dir.resolve()),
            "volume_shape": list(real.volumes.shape[2:]),
            "voxel_size_mm": {"real": list(real.spacing), "synthetic": list(synth.spacing)},
            "real_files": _relative(real.files, real_dir),
            "synthetic_files": _relative(synth.files, synth_dir),
        },
        "seed": seed,
        "device": str(torch_device),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "version": _versions(),
    }
    metrics["caveats"] = caveats(metrics)
    return Measurement(
        metrics=metrics,
        real=real,
        synthetic=synth,
        features={"real": real_features, "synthetic": synth_features},
        ms_ssim_values={"real": ssim_real["values"], "synthetic": ssim_synth["values"]},
        seconds=seconds,
        cpu_seconds=cpu_seconds,
    )


def _relative(files: Sequence[Path], folder: Path) -> list[str]:
    return [str(p.relative_to(folder)) if p != folder else p.name for p in files]


def evaluate(
    real_dir: str | Path,
    synth_dir: str | Path,
    report_dir: str | Path,
    *,
    run_dir: str | Path | None = None,
    features: str | None = None,
    feature_weights: str | Path | None = None,
    max_pairs: int | None = None,
    seed: int | None = None,
    save_features: bool = False,
    device: str = "auto",
    overwrite: bool = False,
    log: Callable[[str], None] = _no_log,
) -> EvaluationResult:
    """Compare the scans below ``synth_dir`` with those below ``real_dir``; write REPORT_DIR.

    The options are those of ``measure``. Raises InputError, with nothing written, for bad input:
    an empty folder, a set of one, differing shapes, a bad weights file, a corrupt scan, or a report
    folder that is not empty (without ``overwrite``) or overlaps an input folder.
    """
    from medddpm.evaluation.report import write_report

    started = time.perf_counter()
    report_dir = Path(report_dir)
    check_report_dir(report_dir, overwrite, [Path(real_dir), Path(synth_dir)])
    m = measure(
        real_dir,
        synth_dir,
        run_dir=run_dir,
        features=features,
        feature_weights=feature_weights,
        max_pairs=max_pairs,
        seed=seed,
        device=device,
        log=log,
    )
    metrics, seconds = m.metrics, m.seconds

    # 5. Write the report beside its final place, then rename ------------------------------------------
    report_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{report_dir.name}-tmp-", dir=report_dir.parent))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp makes the folder private; a report folder is an ordinary one
    try:
        with stopwatch(seconds, m.cpu_seconds)("report"):
            write_report(tmp, metrics, m.real, m.synthetic, m.ms_ssim_values)
            if save_features:
                np.savez_compressed(tmp / "features.npz", **m.features)
        seconds["total"] = time.perf_counter() - started
        metrics["seconds"] = {k: round(v, 3) for k, v in seconds.items()}
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2, allow_nan=False) + "\n")
        _publish(tmp, report_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return EvaluationResult(
        metrics, report_dir, report_dir / "report.html", report_dir / "report.md", seconds, m.cpu_seconds
    )
