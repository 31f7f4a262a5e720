"""The measuring side of ``medddpm evaluate``: two folders of scans -> every number of metrics.json.

``measure`` runs three steps and writes nothing (medddpm.evaluation.evaluate writes the folder):

1. Resolve the options: the ``eval`` section of the config (``eval_config``: defaults, or the run's
   config.yaml, < the command's flags) and the device; find both sets of scans and build the feature
   network (a bad weights file stops here).
2. Read every scan (a corrupt one stops the evaluation, naming the file) and preprocess both sets
   the same way (see Preprocessing) into volumes [N, 1, D, H, W] on [0, 1].
3. Feature-space metrics on features [N, F] (medddpm.evaluation.features): FID, MMD², precision / recall /
   density / coverage; image-space diversity: mean pairwise MS-SSIM within each set. Which values
   metrics.json holds, and what is said about each, is medddpm.evaluation.specs.METRICS.
   With a real set's conditions table, also the metrics per stratum and the condition check
   (medddpm.evaluation.conditions), under metrics.json's ``conditions``.
4. With ``run_dir`` of a latent run only: the autoencoder's ceiling (medddpm.evaluation.ceiling), the
   real scans encoded and decoded by the run's autoencoder and compared with the real set by the same
   feature metrics, metrics.json's ``autoencoder_ceiling``.

Preprocessing. Real and synthetic volumes must be compared at one size, orientation and intensity
scale, so both go through one transform (medddpm.data.transforms.build_transforms), then [-1, 1] -> [0, 1]:

- With ``run_dir``: the run's own ``data`` section (RUN_DIR/config.yaml), exactly as in training:
  RAS, the run's spacing, intensity mapping and pad/crop (or resize) to its image size. Synthetic
  files are written in output units (CT in HU, MRI on [0, 1]). CT: the HU window maps both sets
  alike. MRI: the same per-volume percentile mapping runs on both sets; a synthetic volume on
  [0, 1] is then stretched by its own percentiles exactly as a real scan is, which is the
  consistent choice (mapping synthetic files linearly instead would treat the two sets
  differently). The run's ``eval`` section is the base the command's flags override (eval_config).
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

import math
import statistics
import tempfile
import warnings
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from scipy import linalg
from threadpoolctl import threadpool_limits

from medddpm.config import ConditionsConfig, DataConfig, EvalConfig, build_config, load_config
from medddpm.data.conditions import TrainingConditions, Value, match_table
from medddpm.data.nifti import read_scan
from medddpm.data.scans import discover_scans
from medddpm.data.transforms import IntensityMapping, build_transforms
from medddpm.errors import InputError
from medddpm.evaluation.ceiling import (
    FEATURE_KEYS,
    ceiling_sentence,
    gap_share,
    latent_space_of,
    paired_measures,
    write_reconstructions,
)
from medddpm.evaluation.conditions import (
    condition_metrics,
    read_synthetic_conditions,
    sidecar_path,
    typed_rows,
)
from medddpm.evaluation.features import (
    ARCHITECTURES,
    FEATURE_NORMALISATION,
    FeatureExtractor,
    build_feature_extractor,
)
from medddpm.evaluation.metrics import (
    covariance_rank_deficient,
    fid_from_features,
    median_heuristic_bandwidth,
    mmd,
    pairwise_ms_ssim,
    prdc,
)
from medddpm.evaluation.specs import METRICS, MetricInputs, table_rows
from medddpm.models.spaces import SpaceEntry
from medddpm.runtime import library_versions, resolve_device, stopwatch, torch_threads

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
    reconstructions: VolumeSet | None = None
    """A latent run's reconstructions of the real set (the autoencoder's ceiling); None otherwise."""


# --------------------------------------------------------------------------------------------------
# Step 1: options and the report folder
# --------------------------------------------------------------------------------------------------


def _mm(values: Sequence[float]) -> str:
    return " x ".join(f"{v:.3g}" for v in values)


def _shape(values: Sequence[int]) -> str:
    return "x".join(str(int(v)) for v in values)


def run_config_path(run_dir: Path) -> Path:
    """RUN_DIR/config.yaml, the config ``medddpm train`` saved; InputError for a folder that is not a run."""
    config_path = run_dir / "config.yaml"
    if not run_dir.is_dir():
        raise InputError("no such run folder", run_dir)
    if not config_path.is_file():
        raise InputError(
            "not a run folder: it has no config.yaml (the folder `medddpm train` wrote)", run_dir
        )
    return config_path


def resolve_preprocessing(run_dir: Path | None) -> Preprocessing | None:
    """The run's data section, or None: the default preprocessing needs a real scan."""
    if run_dir is None:
        return None
    cfg = load_config(run_config_path(run_dir))
    return Preprocessing(cfg.data, f"run {run_dir} (config.yaml data section)", False)


def eval_config(run_dir: str | Path | None = None, flags: Mapping[str, Any] | None = None) -> EvalConfig:
    """The ``eval`` section: defaults, or the run's config.yaml, < ``flags`` ({"eval.seed": 1}; None: unset).

    Merged by medddpm.config.build_config as every command merges its flags. A ``--features`` flag
    that names no feature network is refused with the choices, before the run's config is read.
    """
    flags = {key: value for key, value in (flags or {}).items() if value is not None}
    config_file = None if run_dir is None else run_config_path(Path(run_dir))
    features = flags.get("eval.features")
    if features is not None and features not in ARCHITECTURES:
        raise InputError(f"unknown feature network {features!r}: choose one of {', '.join(ARCHITECTURES)}")
    return build_config(config_file, (), flags).eval


@dataclass
class SetConditions:
    """Both sets' conditions: the real table matched to the real scans, each synthetic file's request."""

    real: TrainingConditions
    synthetic: list[dict[str, Value]]
    """Per synthetic file, in the real table's variables and types (None: unknown)."""
    synthetic_source: str


def conditions_config(run_dir: Path | None) -> ConditionsConfig:
    """The ``conditions`` section that reads the real table: the run's (its types), or the defaults."""
    return build_config(None if run_dir is None else run_config_path(run_dir)).conditions


def read_set_conditions(
    table: Path,
    real_dir: Path,
    real_files: Sequence[Path],
    synth_dir: Path,
    synth_files: Sequence[Path],
    run_dir: Path | None,
) -> SetConditions:
    """The real set's table (train's format, parsed and matched as train does) and the synthetic set's
    requests (medddpm.evaluation.conditions); InputError, naming the file, when either is unusable."""
    cc = conditions_config(run_dir)
    real = match_table(table, real_files, real_dir, cc.types, cc.allow_missing)
    found = read_synthetic_conditions(synth_dir, synth_files)
    if found is None:
        raise InputError(
            "no synthetic scan carries conditions (no JSON sidecar or manifest.json entry with a requested "
            "value); sample with --condition, --conditions-csv or --match-training, or drop --conditions",
            synth_dir,
        )
    rows, source = found
    synthetic = typed_rows(real.spec, rows, [sidecar_path(Path(f)) for f in synth_files])
    return SetConditions(real, synthetic, source)


def _synthetic_conditions_unused(synth_dir: Path, synth_files: Sequence[Path]) -> bool:
    """Whether the synthetic scans carry conditions that no --conditions table lets us use."""
    try:
        return read_synthetic_conditions(synth_dir, synth_files) is not None
    except InputError:
        return False


def check_options(cfg: EvalConfig, device: str) -> None:
    """What EvalConfig's types leave open: at least one MS-SSIM pair, and a device name we know."""
    if cfg.max_pairs < 1:
        raise InputError(f"--max-pairs must be at least 1, got {cfg.max_pairs}")
    if device not in ("auto", "cpu", "cuda"):
        raise InputError(f"unknown device {device!r}: use auto, cpu or cuda")


# --------------------------------------------------------------------------------------------------
# Step 2: reading and preprocessing
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
# Step 3: metrics
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
    its time; single-threaded streams side by side give identical results in less wall and CPU time
    (benchmarks/RESULTS.md, "evaluate"). torch releases the GIL inside its kernels, as nibabel's zlib
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
        # waiting on each other slow sqrtm several-fold (benchmarks/RESULTS.md, "evaluate").
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
    """What the numbers in ``metrics`` cannot say, in plain sentences for the report.

    About the features first, then each metric's note (specs.METRICS, in table order; a note several
    metrics share is given once), then what no metric here can say and how the sets were prepared.
    """
    fe = metrics["feature_extractor"]
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
        "preprocessing and numbers of volumes. Each volume is z-scored over every voxel before the network "
        "sees it."
    )
    for spec in table_rows():
        note = spec.note(metrics) if spec.note is not None else None
        if note and note not in notes:
            notes.append(note)
    notes.append(
        "None of these metrics detects memorisation: a model that reproduces its training scans scores as "
        "well as one that generalises. Compare synthetic volumes with their nearest training scans for that."
    )
    if metrics.get("autoencoder_ceiling") is not None:
        notes.append(
            "The autoencoder ceiling compares each real scan's reconstruction with the real set it came "
            f"from ({metrics['n_real']} against {metrics['n_real']} volumes, paired): the floor under what a "
            "latent model can reach, not a sample of one. Its FID is biased like the synthetic set's only at "
            "equal numbers of volumes; evaluate as many synthetic as real volumes to compare the two closely."
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
# Steps 1-3 together
# --------------------------------------------------------------------------------------------------


def _versions() -> dict[str, str]:
    import matplotlib
    import scipy

    return {**library_versions(), "scipy": scipy.__version__, "matplotlib": matplotlib.__version__}


def measure(
    real_dir: str | Path,
    synth_dir: str | Path,
    cfg: EvalConfig | None = None,
    *,
    run_dir: str | Path | None = None,
    feature_weights: str | Path | None = None,
    device: str = "auto",
    conditions: str | Path | None = None,
    log: Callable[[str], None] = _no_log,
) -> Measurement:
    """Every number of metrics.json for the scans below ``real_dir`` and ``synth_dir``; nothing is written.

    ``cfg``: the eval section (feature network, MS-SSIM pairs, seed, PRDC's k); None: eval_config(run_dir),
    the run's section or the defaults. ``cfg.seed`` seeds the random-init feature network and the MS-SSIM
    pair subset. ``run_dir``: preprocess both sets with the run's data section (see the module docstring).
    ``feature_weights``: a MedicalNet checkpoint (None: a random-init network). ``device``: auto, cpu or
    cuda. ``conditions``: the real set's table in train's format; the synthetic set's conditions are read
    from the sidecars ``medddpm sample`` wrote (medddpm.evaluation.conditions). ``log`` receives plain-text
    progress messages.
    """
    real_dir, synth_dir = Path(real_dir), Path(synth_dir)
    run_dir = None if run_dir is None else Path(run_dir)
    seconds: dict[str, float] = {}
    cpu_seconds: dict[str, float] = {}
    stage = stopwatch(seconds, cpu_seconds)

    # 1. Options, inputs and the feature network --------------------------------------------------------
    prep = resolve_preprocessing(run_dir)
    latent = latent_space_of(run_dir)  # a latent run's autoencoder, its sha256 checked; else None
    cfg = eval_config(run_dir) if cfg is None else cfg
    check_options(cfg, device)
    torch_device = resolve_device(device)
    real_files, synth_files = discover_scans(real_dir), discover_scans(synth_dir)
    check_set_size("real", real_dir, real_files)
    check_set_size("synthetic", synth_dir, synth_files)
    set_conditions = None
    if conditions is not None:
        set_conditions = read_set_conditions(
            Path(conditions), real_dir, real_files, synth_dir, synth_files, run_dir
        )
    extractor = build_feature_extractor(cfg.features, feature_weights, seed=cfg.seed, device=torch_device)
    if torch_device.type == "cpu":
        # MONAI's 3D ResNet runs about 25% faster on CPU in the channels-last layout (same weights).
        extractor.model.to(memory_format=torch.channels_last_3d)

    # 2. Read and preprocess ----------------------------------------------------------------------------
    with stage("loading"):
        prep = prep or default_preprocessing(real_files[0])
        workers = cpu_workers(torch_device)
        real = load_set("real", real_dir, real_files, prep, workers)
        synth = load_set("synthetic", synth_dir, synth_files, prep, workers)
    # the first message comes once every input has been checked: an error stays a single line
    log(f"Read {len(real_files)} real and {len(synth_files)} synthetic scans ({prep.describe()})")

    # 3. Metrics ------------------------------------------------------------------------------------------
    log(f"Features: {extractor.label}, on {torch_device}")
    with stage("features"):
        features = {
            "real": extract_features(extractor, real.volumes, workers),
            "synthetic": extract_features(extractor, synth.volumes, workers),
        }
    with stage("feature_metrics"):
        metrics_f = feature_metrics(features["real"], features["synthetic"], cfg.nearest_k)

    log(f"MS-SSIM diversity: up to {cfg.max_pairs} pairs per set")
    with stage("ms_ssim"):
        ssim_real, ssim_synth = parallel_map(
            lambda v: pairwise_ms_ssim(v.to(torch_device), max_pairs=cfg.max_pairs, seed=cfg.seed),
            [real.volumes, synth.volumes],
            workers=min(2, workers),
            threads_each=max(1, workers // 2),
        )

    condition_results = None
    if set_conditions is not None:
        log("Conditions: metrics per stratum and the condition check")
        with stage("conditions"):
            condition_results = condition_metrics(
                set_conditions.real,
                set_conditions.synthetic,
                set_conditions.synthetic_source,
                features,
                lambda r, s: feature_metrics(r, s, cfg.nearest_k),
                seed=cfg.seed,
            )
    unused = set_conditions is None and _synthetic_conditions_unused(synth_dir, synth_files)

    inputs = MetricInputs(
        volumes={"real": real.volumes, "synthetic": synth.volumes},
        features=features,
        feature_metrics=metrics_f,
        ms_ssim={"real": ssim_real, "synthetic": ssim_synth},
    )

    # 4. A latent run's autoencoder ceiling ---------------------------------------------------------------
    ceiling, reconstructions = None, None
    if latent is not None:
        log(f"Autoencoder ceiling: encoding and decoding the {len(real_files)} real scans")
        with stage("autoencoder_ceiling"):
            ceiling, reconstructions = autoencoder_ceiling(
                *latent, real, features["real"], extractor, prep, cfg.nearest_k, torch_device, workers
            )
    metrics = metrics_json(
        inputs,
        real,
        synth,
        extractor=extractor,
        feature_weights=feature_weights,
        cfg=cfg,
        prep=prep,
        run_dir=run_dir,
        device=torch_device,
        conditions=condition_results,
        conditions_unused=unused,
        ceiling=ceiling,
    )
    return Measurement(
        metrics=metrics,
        real=real,
        synthetic=synth,
        features=features,
        ms_ssim_values={"real": ssim_real["values"], "synthetic": ssim_synth["values"]},
        seconds=seconds,
        cpu_seconds=cpu_seconds,
        reconstructions=reconstructions,
    )


def autoencoder_ceiling(
    space: SpaceEntry,
    sha256: str,
    real: VolumeSet,
    real_features: np.ndarray,
    extractor: FeatureExtractor,
    prep: Preprocessing,
    nearest_k: int,
    device: torch.device,
    workers: int = 1,
) -> tuple[dict[str, Any], VolumeSet]:
    """Step 4: the real set's reconstructions through a latent run's ``space`` (its autoencoder of
    ``sha256``; medddpm.evaluation.ceiling) against the real set: the feature metrics, the paired
    measures, and the reconstructions, read back as synthetic files are (written to a temporary folder
    in output units, then ``prep``).

    The dict is metrics.json's ``autoencoder_ceiling`` without the share of the synthetic FID, which
    metrics_json adds.
    """
    with tempfile.TemporaryDirectory(prefix="medddpm-ceiling-") as tmp:
        mapping = IntensityMapping.from_config(prep.data)
        files = write_reconstructions(space, real.volumes, mapping, real.spacing, Path(tmp), device)
        loaded = load_set("reconstruction", Path(tmp), files, prep, workers)
    recon = VolumeSet("reconstruction", real.folder, list(real.files), loaded.volumes, loaded.spacing)
    f = feature_metrics(real_features, extract_features(extractor, recon.volumes, workers), nearest_k)
    ceiling = {key: f[key] for key in FEATURE_KEYS}
    ceiling.update(
        {
            "prdc_unavailable": f["prdc_unavailable"],
            "n": len(real.files),
            "reconstruction": paired_measures(real.volumes, recon.volumes),
            "reconstruction_scale": "the evaluation's [0, 1] scale (data range 1), mean over scans",
            "autoencoder_sha256": sha256,
            "scale_factor": space.scale_factor,
        }
    )
    return ceiling, recon


def metrics_json(
    inputs: MetricInputs,
    real: VolumeSet,
    synth: VolumeSet,
    *,
    extractor: FeatureExtractor,
    feature_weights: str | Path | None,
    cfg: EvalConfig,
    prep: Preprocessing,
    run_dir: Path | None,
    device: torch.device,
    conditions: dict[str, Any] | None = None,
    conditions_unused: bool = False,
    ceiling: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """metrics.json's content: each metric of specs.METRICS, then what it was measured on and with.

    Plain types only, in the file's documented order (the metrics' values first, then the set sizes,
    the intervals, the settings of each metric, the feature network, preprocessing, inputs and versions;
    then, with a conditions table only, ``conditions``: medddpm.evaluation.conditions.condition_metrics).
    ``ceiling``: a latent run's autoencoder ceiling (autoencoder_ceiling), written as
    ``autoencoder_ceiling`` with its share of the synthetic FID and its sentence; absent otherwise.
    """
    f, ms_ssim = inputs.feature_metrics, inputs.ms_ssim
    metrics: dict[str, Any] = {spec.key: spec.value(inputs) for spec in METRICS.values()}
    metrics["n_real"], metrics["n_synthetic"] = len(real.files), len(synth.files)
    for spec in METRICS.values():
        if spec.interval is not None:
            metrics[spec.interval_key] = spec.interval(inputs)
    metrics.update(
        {
            "ms_ssim_pairs": {name: ms_ssim[name]["n_pairs"] for name in ("synthetic", "real")},
            "fid_covariance_rank_deficient": f["fid_covariance_rank_deficient"],
            "mmd_settings": f["mmd_settings"],
            "nearest_k": f["nearest_k"],
            "prdc_unavailable": f["prdc_unavailable"],
            "feature_extractor": {
                "name": extractor.name,
                "label": extractor.label,
                "weights_sha256": extractor.weights_sha256 or f"random-init seed {cfg.seed}",
                "weights_path": None if feature_weights is None else str(Path(feature_weights).resolve()),
                "feature_dim": extractor.feature_dim,
                "implementation": f"monai.networks.nets.{extractor.name} in MedicalNet's configuration "
                "(not the original MedicalNet forward pass)",
                "normalisation": FEATURE_NORMALISATION,
            },
            "ms_ssim_settings": {**ms_ssim["real"]["settings"], "max_pairs": cfg.max_pairs, "seed": cfg.seed},
            "preprocessing": prep.to_dict(),
            "inputs": {
                "real_dir": str(real.folder.resolve()),
                "synthetic_dir": str(synth.folder.resolve()),
                "run": None if run_dir is None else str(run_dir.resolve()),
                "volume_shape": list(real.volumes.shape[2:]),
                "voxel_size_mm": {"real": list(real.spacing), "synthetic": list(synth.spacing)},
                "real_files": _relative(real.files, real.folder),
                "synthetic_files": _relative(synth.files, synth.folder),
            },
            "seed": cfg.seed,
            "device": str(device),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "version": _versions(),
        }
    )
    if conditions is not None:  # only with a conditions table: other reports keep the keys they had
        metrics["conditions"] = conditions
    if ceiling is not None:
        metrics["autoencoder_ceiling"] = {
            **ceiling,
            "fid_synthetic": metrics["fid"],
            "share_of_synthetic_fid": gap_share(ceiling["fid"], metrics["fid"]),
        }
        metrics["autoencoder_ceiling"]["summary"] = ceiling_sentence(metrics)
    metrics["caveats"] = caveats(metrics)
    if conditions_unused:
        metrics["caveats"].append(
            "The synthetic scans carry the conditions they were sampled with, but no table of the real "
            "scans' conditions was given: pass --conditions TABLE.csv (train's format) for metrics per "
            "stratum and a check that the samples obey their conditions."
        )
    return metrics


def _relative(files: Sequence[Path], folder: Path) -> list[str]:
    return [str(p.relative_to(folder)) if p != folder else p.name for p in files]
