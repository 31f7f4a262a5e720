"""The measuring side of ``medddpm audit``: training, held-out and synthetic folders -> audit.json's numbers.

``measure_audit`` writes nothing:

1. Check the options and the three folders (distinct, at least two scans each); build the feature
   network unless ``features`` is "none".
2. Read and preprocess every scan exactly as ``medddpm evaluate`` does (medddpm.evaluation.measure:
   the run's data section with ``run_dir``, else RAS + per-volume percentiles at the first training
   scan's shape) into volumes [N, 1, D, H, W] on [0, 1].
3. Nearest training volumes (medddpm.audit.neighbours) of every synthetic and held-out volume, and of
   every training volume among the others (for authenticity): masked correlation, mirrored too; the
   SSIM of each nearest pair; the nearest by feature cosine.
4. Statistics (medddpm.audit.statistics): threshold from the held-out baseline, flags, the flagged
   share and its interval, Mann-Whitney, authenticity, the verdict.
5. With ``run_dir``: the membership signal of the model itself (medddpm.audit.membership), the run's
   denoising loss on training against held-out scans; then the caveats.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from medddpm.audit.membership import load_denoiser, membership
from medddpm.audit.neighbours import (
    FOREGROUND_LEVEL,
    LEFT_RIGHT_DIM,
    Neighbours,
    foreground_mask,
    nearest_feature,
    nearest_two,
    pair_ssim,
    ssim_kernel,
)
from medddpm.audit.statistics import INTERVALS, authenticity, flagging
from medddpm.data.scans import discover_scans
from medddpm.errors import InputError
from medddpm.evaluation.features import ARCHITECTURES, build_feature_extractor
from medddpm.evaluation.measure import (
    VolumeSet,
    cpu_workers,
    default_preprocessing,
    extract_features,
    load_set,
    resolve_preprocessing,
)
from medddpm.runtime import library_versions, resolve_device, stopwatch

SETS = ("training", "heldout", "synthetic")
MIN_VOLUMES = 2
"""A nearest and a second-nearest need two training scans; a baseline and a share need two of the others."""


def _no_log(message: str) -> None:
    pass


@dataclass(frozen=True)
class AuditSettings:
    """The audit's choices, each with its reason; all recorded in audit.json."""

    quantile: float = 0.95
    """Held-out quantile that flags: a model that does not copy flags about 5% of its volumes."""
    interval: str = "wilson"
    """Interval of the flagged share: Wilson (good coverage at small n) or clopper-pearson (conservative)."""
    mirror: bool = True
    """Compare with the left-right mirror images of training scans too (flips are a common augmentation)."""
    features: str = "resnet10"
    """Feature network for the cosine neighbour (evaluate's default), or "none" to skip features."""
    seed: int = 0
    """Seeds the random-init feature network and the membership signal's noises and bootstrap."""
    membership_timesteps: int = 8
    """Timesteps of the membership grid (with a run; 0 skips it): few, evenly spread, every scan alike."""
    membership_noises: int = 2
    """Noise volumes per timestep of the membership grid."""


@dataclass
class AuditMeasurement:
    """Everything ``measure_audit`` computes: audit.json's content and what the report draws."""

    result: dict[str, Any]
    sets: dict[str, VolumeSet]
    neighbours: dict[str, Neighbours]
    """"synthetic", "heldout" and "training" (each training volume among the others)."""
    flags: np.ndarray
    """[n_synthetic] bool."""
    seconds: dict[str, float] = field(default_factory=dict)
    cpu_seconds: dict[str, float] = field(default_factory=dict)


def check_settings(settings: AuditSettings, device: str) -> None:
    if not 0.0 < settings.quantile < 1.0:
        raise InputError(f"--quantile must lie between 0 and 1 (exclusive), got {settings.quantile:g}")
    if settings.interval not in INTERVALS:
        raise InputError(f"unknown interval {settings.interval!r}: choose one of {', '.join(INTERVALS)}")
    if settings.features != "none" and settings.features not in ARCHITECTURES:
        raise InputError(
            f"unknown feature network {settings.features!r}: choose one of {', '.join(ARCHITECTURES)} or none"
        )
    if device not in ("auto", "cpu", "cuda"):
        raise InputError(f"unknown device {device!r}: use auto, cpu or cuda")
    if settings.membership_timesteps < 0:
        raise InputError(
            f"--membership-timesteps must be at least 0 (0 skips it), got {settings.membership_timesteps}"
        )
    if settings.membership_noises < 1:
        raise InputError(f"--membership-noises must be at least 1, got {settings.membership_noises}")


def check_folders(folders: dict[str, Path]) -> dict[str, list[Path]]:
    """The scans of each set; InputError for a folder named twice, a missing one or too few scans."""
    seen: dict[Path, str] = {}
    for name, folder in folders.items():
        resolved = folder.resolve()
        if resolved in seen:
            raise InputError(
                f"the {name} folder is also the {seen[resolved]} folder; the audit compares distinct sets",
                folder,
            )
        seen[resolved] = name
    files = {name: discover_scans(folder) for name, folder in folders.items()}
    for name, found in files.items():
        if len(found) < MIN_VOLUMES:
            raise InputError(
                f"the {name} set has {len(found)} scan{'s' if len(found) != 1 else ''}, and the audit needs "
                f"at least {MIN_VOLUMES} (a nearest and a second-nearest training scan; a held-out baseline)",
                folders[name],
            )
    return files


def _pairs(
    names: Sequence[str], neighbours: Neighbours, training: Sequence[str], extra: dict[str, np.ndarray]
) -> list[dict[str, Any]]:
    rows = []
    for q, name in enumerate(names):
        row = {
            "file": name,
            "nearest_training": training[neighbours.index[q]],
            "mirrored": bool(neighbours.mirrored[q]),
            "correlation": float(neighbours.similarity[q]),
            "second_training": training[neighbours.second_index[q]],
            "second_correlation": float(neighbours.second[q]),
            "gap": float(neighbours.gap[q]),
        }
        for key, values in extra.items():
            value = values[q]
            row[key] = value.item() if isinstance(value, np.generic) else value
        rows.append(row)
    return rows


def _summary(values: np.ndarray) -> dict[str, float]:
    q = np.quantile(values, [0.0, 0.25, 0.5, 0.75, 0.95, 1.0])
    return dict(zip(("min", "q25", "median", "q75", "q95", "max"), map(float, q), strict=True))


def _relative(files: Sequence[Path], folder: Path) -> list[str]:
    return [str(p.relative_to(folder)) if p != folder else p.name for p in files]


def measure_audit(
    training_dir: str | Path,
    heldout_dir: str | Path,
    synthetic_dir: str | Path,
    settings: AuditSettings | None = None,
    *,
    run_dir: str | Path | None = None,
    feature_weights: str | Path | None = None,
    device: str = "auto",
    log: Callable[[str], None] = _no_log,
) -> AuditMeasurement:
    """Every number of audit.json for the three folders; nothing is written (see the module docstring).

    ``run_dir``: preprocess with the run's data section, as ``medddpm evaluate --run`` does.
    ``feature_weights``: a MedicalNet checkpoint for the cosine neighbour (None: random init).
    """
    settings = settings or AuditSettings()
    folders = {
        "training": Path(training_dir),
        "heldout": Path(heldout_dir),
        "synthetic": Path(synthetic_dir),
    }
    run_dir = None if run_dir is None else Path(run_dir)
    seconds: dict[str, float] = {}
    cpu_seconds: dict[str, float] = {}
    stage = stopwatch(seconds, cpu_seconds)

    # 1. Options, folders, feature network ------------------------------------------------------------
    check_settings(settings, device)
    prep = resolve_preprocessing(run_dir)
    files = check_folders(folders)
    torch_device = resolve_device(device)
    denoiser = None
    if run_dir is not None and settings.membership_timesteps > 0:
        denoiser = load_denoiser(run_dir, torch_device)
    extractor = None
    if settings.features != "none":
        extractor = build_feature_extractor(
            settings.features, feature_weights, seed=settings.seed, device=torch_device
        )

    # 2. Read and preprocess, as evaluate does ------------------------------------------------------------
    with stage("loading"):
        prep = prep or default_preprocessing(files["training"][0])
        workers = cpu_workers(torch_device)
        sets = {name: load_set(name, folders[name], files[name], prep, workers) for name in SETS}
    log(
        f"Read {len(files['training'])} training, {len(files['heldout'])} held-out and "
        f"{len(files['synthetic'])} synthetic scans ({prep.describe()})"
    )
    names = {name: _relative(sets[name].files, sets[name].folder) for name in SETS}
    training = sets["training"].volumes

    # 3. Nearest training volumes --------------------------------------------------------------------------
    with stage("correlation"):
        mask = foreground_mask(training)
        log(
            f"Nearest training scans by correlation inside the foreground "
            f"({mask.double().mean():.0%} of voxels)"
        )
        nb = {
            "synthetic": nearest_two(sets["synthetic"].volumes, training, mask, mirror=settings.mirror),
            "heldout": nearest_two(sets["heldout"].volumes, training, mask, mirror=settings.mirror),
            "training": nearest_two(training, training, mask, mirror=settings.mirror, exclude_self=True),
        }
    with stage("ssim"):
        ssim = {
            name: pair_ssim(sets[name].volumes, training, nb[name].index, nb[name].mirrored)
            for name in ("synthetic", "heldout")
        }
    extra: dict[str, dict[str, np.ndarray]] = {
        name: {"ssim": ssim[name]} for name in ("synthetic", "heldout")
    }
    if extractor is not None:
        log(f"Features: {extractor.label}, on {torch_device}")
        with stage("features"):
            feats = {name: extract_features(extractor, sets[name].volumes, workers) for name in SETS}
            mirrored = None
            if settings.mirror:
                mirrored = extract_features(extractor, training.flip(LEFT_RIGHT_DIM), workers)
        for name in ("synthetic", "heldout"):
            index, cosine, is_mirrored = nearest_feature(feats[name], feats["training"], mirrored)
            extra[name]["feature_cosine"] = cosine
            extra[name]["feature_mirrored"] = is_mirrored
            extra[name]["feature_nearest_training"] = np.array(names["training"], dtype=object)[index]

    # 4. Statistics ---------------------------------------------------------------------------------------
    flag = flagging(
        nb["synthetic"].similarity, nb["heldout"].similarity, settings.quantile, settings.interval
    )
    flags = flag.pop("flags")
    authentic = authenticity(nb["synthetic"].index, nb["synthetic"].similarity, nb["training"].similarity)
    # the same test on held-out scans: what a model that never copies scores with these sets
    heldout_authentic = authenticity(nb["heldout"].index, nb["heldout"].similarity, nb["training"].similarity)
    extra["synthetic"]["flagged"] = flags
    extra["synthetic"]["authentic"] = authentic
    pairs = {
        name: _pairs(names[name], nb[name], names["training"], extra[name])
        for name in ("synthetic", "heldout")
    }

    summary = {}
    for name in ("synthetic", "heldout"):
        summary[name] = {
            "correlation": _summary(nb[name].similarity),
            "gap": _summary(nb[name].gap),
            "ssim": _summary(ssim[name]),
            "mirrored_nearest": int(nb[name].mirrored.sum()),
        }
        if extractor is not None:
            summary[name]["feature_cosine"] = _summary(extra[name]["feature_cosine"])

    result: dict[str, Any] = {
        **flag,
        "authenticity": {
            "score": float(authentic.mean()),
            "n_unauthentic": int((~authentic).sum()),
            "heldout_score": float(heldout_authentic.mean()),
            "definition": "share of synthetic volumes farther (1 - correlation) from their nearest training "
            "volume t* than t* is from its own nearest other training volume (Alaa et al. 2022)",
        },
        "n_training": len(files["training"]),
        "n_heldout": len(files["heldout"]),
        "summary": summary,
        "pairs": pairs,
        "similarity": {
            "measure": "Pearson correlation of voxel intensities inside the foreground mask",
            "mask": {
                "rule": f"mean training intensity above {FOREGROUND_LEVEL:g} on [0, 1] "
                "(else the whole volume)",
                "voxels": int(mask.sum()),
                "share": float(mask.double().mean()),
            },
            "mirrored": settings.mirror,
            "ssim": {
                "implementation": "monai.metrics.SSIMMetric's formula, separable Gaussian window",
                "kernel_size": ssim_kernel(training.shape[2:]),
                "kernel_sigma": 1.5,
                "data_range": 1.0,
                "pair": "each volume and its nearest training volume",
            },
        },
        "feature_extractor": None
        if extractor is None
        else {
            "name": extractor.name,
            "label": extractor.label,
            "weights_sha256": extractor.weights_sha256 or f"random-init seed {settings.seed}",
            "weights_path": None if feature_weights is None else str(Path(feature_weights).resolve()),
        },
        "settings": asdict(settings),
        "preprocessing": prep.to_dict(),
        "inputs": {
            **{f"{name}_dir": str(folders[name].resolve()) for name in SETS},
            "run": None if run_dir is None else str(run_dir.resolve()),
            "volume_shape": list(training.shape[2:]),
            **{f"{name}_files": names[name] for name in SETS},
        },
        "device": str(torch_device),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "version": library_versions(),
    }

    # 5. The model's own membership signal -------------------------------------------------------------
    result["membership"] = None
    if denoiser is not None:
        log(
            f"Membership: denoising loss of {denoiser.checkpoint} (EMA) at {settings.membership_timesteps} "
            f"timesteps x {settings.membership_noises} noises, training against held-out scans"
        )
        with stage("membership"):
            result["membership"] = membership(
                denoiser,
                training,
                sets["heldout"].volumes,
                settings.membership_timesteps,
                settings.membership_noises,
                settings.seed,
                names["training"],
                names["heldout"],
            )
    result["caveats"] = caveats(result)
    return AuditMeasurement(result, sets, nb, flags, seconds, cpu_seconds)


def caveats(result: dict[str, Any]) -> list[str]:
    """What the audit cannot say, in plain sentences for the report."""
    notes = [
        "The held-out scans are the baseline: they must come from the same source as the training scans and "
        "never have been trained on. A held-out set from another scanner or population makes every synthetic "
        "volume look close to the training set; one that leaked into training hides memorisation.",
        f"The flagging rule expects about {result['expected_share']:.0%} of the volumes of a model that does "
        "not copy to be flagged; a flagged volume is a candidate to look at, not proof of a copy.",
        "Correlation inside the foreground sees copies of whole scans, shifted intensities included, but "
        "not copies of a part (a lesion, one organ) pasted into otherwise new anatomy, nor copies moved by "
        "more than a few voxels: look at the top pairs.",
        "No finding here is a privacy guarantee: an audit bounds what it tested (nearest neighbours in "
        "voxels and features), not what an attacker could extract from the model.",
    ]
    if not result["similarity"]["mirrored"]:
        notes.append(
            "Mirror images of training scans were not compared (--no-mirror): a flipped copy may pass."
        )
    if result["summary"]["heldout"]["correlation"]["max"] > 0.999:
        notes.append(
            "A held-out scan is a near-exact copy of a training scan (correlation above 0.999): the held-out "
            "set may overlap the training set, which raises the threshold and hides copies."
        )
    if result["feature_extractor"] is not None and result["feature_extractor"]["weights_sha256"].startswith(
        "random-init"
    ):
        notes.append(
            "Feature cosines come from a randomly initialised network: they rank pairs, but mean nothing "
            "about anatomy. Pass --feature-weights with a MedicalNet checkpoint for features that do."
        )
    if result["n_heldout"] < 20:
        notes.append(
            f"With {result['n_heldout']} held-out scans the {result['quantile']:g} quantile that sets the "
            "threshold is poorly estimated; use at least 20, better 100."
        )
    m = result["membership"]
    if m is None:
        notes.append(
            "The model's own membership signal (its denoising loss on training against held-out scans) was "
            "not measured: pass --run with the run that made the synthetic scans."
        )
    else:
        lo, hi = m["auc_ci95"]
        if lo > 0.5:
            reading = (
                "well above 0.5: the model fits its training scans better than unseen ones, a sign of "
                "memorisation even where no synthetic volume is flagged"
            )
        else:
            reading = "its interval reaches 0.5: no evidence that the model fits its training scans better"
        notes.append(
            f"Membership AUC of the model's denoising loss {m['auc']:.2f} (95% CI {lo:.2f}-{hi:.2f}, "
            f"{m['n_train']} training and {m['n_heldout']} held-out scans): {reading}."
        )
    notes.append(f"All sets were preprocessed alike: {result['preprocessing']['description']}.")
    return notes
