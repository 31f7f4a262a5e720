"""``study build``: real and synthetic folders -> STUDY_DIR (key.json, study.json, readers/READER/).

1. Check the inputs and the study folder (output_folder.STUDY_FOLDER); nothing is written until step 5.
2. Pick ``n`` real and ``n`` synthetic scans (seeded) and pass both sets through one preprocessing, the
   one ``medddpm evaluate`` uses (medddpm.evaluation.measure.load_scan): the run's data section with
   ``run_dir``, else RAS and per-volume percentiles at the first picked real scan's shape. Real scans
   thus reach the reader through the same resampling, intensity mapping, grey scale and PNG writer as
   synthetic ones: format, intensity range, noise floor and field of view give nothing away.
3. Shuffle the volumes together and name each by a random id; form the cases (a volume, or for 2afc a
   real and a synthetic volume on sides drawn at random); draw each reader's order.
4. An automatic score per volume for ``analyze``: its correlation with the nearest picked real volume
   other than itself, inside the real volumes' foreground (medddpm.audit.neighbours).
5. Write, in a temporary folder renamed into place: key.json (the answer key and the readers' tokens:
   never inside a reader's folder, never served), study.json (settings) and per reader
   readers/READER/index.html with img/ (medddpm.study.pages).
"""

from __future__ import annotations

import json
import secrets
import shutil
import statistics
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medddpm.audit.neighbours import foreground_mask, unit_vectors
from medddpm.data.scans import discover_scans
from medddpm.errors import InputError
from medddpm.evaluation.measure import default_preprocessing, load_scan, resolve_preprocessing
from medddpm.output_folder import STUDY_FOLDER, atomic_folder, check_output
from medddpm.study.pages import page_html, same_times, view_geometry, volume_ids, write_stacks
from medddpm.study.tasks import TASKS


def _no_log(message: str) -> None:
    pass


@dataclass(frozen=True)
class StudySettings:
    n: int = 50
    """Real and synthetic volumes each (2afc: pairs). Park et al. 2021 showed 300 images to 10 readers."""
    readers: int = 3
    """Three or more gives Fleiss' κ; two, Cohen's."""
    task: str = "binary"
    seed: int = 0
    """Seeds the choice of scans, the ids, the pairs and sides, and every reader's order."""


def reader_names(count: int) -> list[str]:
    return [f"reader-{i + 1:02d}" for i in range(count)]


def reader_order(n_cases: int, seed: int, reader: int) -> list[int]:
    """Reader ``reader``'s order of the cases: a permutation drawn from (seed, reader) alone."""
    return [int(i) for i in np.random.default_rng([seed, 1000 + reader]).permutation(n_cases)]


def check_settings(s: StudySettings) -> None:
    if s.task not in TASKS:
        raise InputError(f"unknown task {s.task!r}: choose one of {', '.join(TASKS)}")
    if s.n < 1:
        raise InputError(f"--n must be at least 1, got {s.n}")
    if s.readers < 1:
        raise InputError(f"--readers must be at least 1, got {s.readers}")


def nearest_real_correlation(volumes: torch.Tensor, is_real: np.ndarray) -> np.ndarray:
    """[V] each volume's correlation with the most similar real volume other than itself (step 4)."""
    real = volumes[torch.from_numpy(is_real)]
    z = unit_vectors(volumes, foreground_mask(real))
    corr = (z @ z[torch.from_numpy(is_real)].T).double().numpy()  # [V, R]
    real_index = np.flatnonzero(is_real)
    corr[real_index, np.arange(len(real_index))] = -np.inf  # not itself
    best = corr.max(axis=1)
    return np.where(np.isfinite(best), best, np.nan)


def _number(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


def build_study(
    real_dir: str | Path,
    synthetic_dir: str | Path,
    study_dir: str | Path,
    settings: StudySettings | None = None,
    *,
    run_dir: str | Path | None = None,
    overwrite: bool = False,
    log: Callable[[str], None] = _no_log,
) -> dict[str, Any]:
    """Build a blinded reader study in ``study_dir`` (module docstring); returns study.json's content.

    Raises InputError, with nothing written, for a missing or too small set, a corrupt scan, scans of
    different shapes without ``run_dir``, bad settings, or a study folder that is not empty (without
    ``overwrite``; one holding answers is never replaced) or overlaps an input folder.
    """
    s = settings or StudySettings()
    check_settings(s)
    real_dir, synthetic_dir, study_dir = Path(real_dir), Path(synthetic_dir), Path(study_dir)
    check_output(study_dir, STUDY_FOLDER, overwrite=overwrite, inputs=[real_dir, synthetic_dir])
    task = TASKS[s.task]

    # 2. pick and preprocess
    rng = np.random.default_rng(s.seed)
    picked = {}
    for name, folder in (("real", real_dir), ("synthetic", synthetic_dir)):
        files = discover_scans(folder)
        if len(files) < s.n:
            raise InputError(f"the {name} set has {len(files)} scans and --n asks for {s.n}", folder)
        picked[name] = [files[i] for i in sorted(rng.choice(len(files), s.n, replace=False))]
    prep = resolve_preprocessing(None if run_dir is None else Path(run_dir))
    if prep is None:
        prep = default_preprocessing(picked["real"][0])
    log(f"preprocessing {2 * s.n} volumes: {prep.describe()}")
    loaded = {name: [load_scan(p, prep) for p in files] for name, files in picked.items()}
    if prep.data.spacing is not None:
        spacing = tuple(float(x) for x in prep.data.spacing)
    else:  # the real scans' median voxel size, for both sets: the page's proportions tell nothing
        spacing = tuple(float(statistics.median(sp[i] for _, sp in loaded["real"])) for i in range(3))

    # 3. shuffle, name, pair, order
    pool = [
        (name, f, v)
        for name in ("real", "synthetic")
        for f, (v, _) in zip(picked[name], loaded[name], strict=True)
    ]
    pool = [pool[i] for i in rng.permutation(len(pool))]
    ids = volume_ids(len(pool) + s.n, rng)
    volumes = torch.stack([v for _, _, v in pool])
    is_real = np.array([name == "real" for name, _, _ in pool])
    scores = nearest_real_correlation(volumes, is_real)
    key_volumes = {
        ids[i]: {"truth": name, "file": str(f), "nearest_real_correlation": _number(scores[i])}
        for i, (name, f, _) in enumerate(pool)
    }
    if task.volumes_per_case == 1:
        cases = {vid: {"volumes": [vid], "truth": key_volumes[vid]["truth"]} for vid in ids[: len(pool)]}
    else:
        real_ids = [ids[i] for i in np.flatnonzero(is_real)]
        synth_ids = [ids[i] for i in np.flatnonzero(~is_real)]
        synth_ids = [synth_ids[i] for i in rng.permutation(len(synth_ids))]
        cases = {}
        for case_id, r, sy in zip(ids[len(pool) :], real_ids, synth_ids, strict=True):
            real_left = bool(rng.integers(0, 2))
            cases[case_id] = {
                "volumes": [r, sy] if real_left else [sy, r],
                "truth": "A" if real_left else "B",
            }
    case_ids = list(cases)
    names = reader_names(s.readers)
    study_id = uuid.uuid4().hex
    shape = [int(x) for x in volumes.shape[2:]]
    study = {
        "study": study_id,
        "task": s.task,
        "n": s.n,
        "readers": names,
        "seed": s.seed,
        "cases": len(cases),
        "shape": shape,
        "spacing": list(spacing),
        "preprocessing": prep.to_dict(),
        "inputs": {"real": str(real_dir), "synthetic": str(synthetic_dir), "run": run_dir and str(run_dir)},
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    from medddpm import __version__

    study["version"] = __version__
    key = {
        "study": study_id,
        "task": s.task,
        "volumes": key_volumes,
        "cases": cases,
        "readers": {name: {"token": secrets.token_urlsafe(18)} for name in names},
    }

    # 5. write
    views = view_geometry(shape, spacing)
    stamp = time.time()
    with atomic_folder(study_dir) as tmp:
        images = tmp / "readers" / names[0] / "img"
        images.mkdir(parents=True)
        for vid, (_, _, v) in zip(ids, pool, strict=False):
            write_stacks(v[0].numpy(), vid, images)
        for r, name in enumerate(names):
            folder = tmp / "readers" / name
            if r:
                shutil.copytree(images, folder / "img")
            order = reader_order(len(case_ids), s.seed, r)
            page = {
                "study": study_id,
                "reader": name,
                "task": task.to_dict(),
                "views": views,
                "cases": [{"id": case_ids[i], "volumes": cases[case_ids[i]]["volumes"]} for i in order],
            }
            (folder / "index.html").write_text(page_html(page), encoding="utf-8")
            same_times(folder, stamp)
        (tmp / "key.json").write_text(json.dumps(key, indent=2) + "\n")
        (tmp / "study.json").write_text(json.dumps(study, indent=2) + "\n")
    log(f"{len(cases)} cases for {len(names)} readers in {study_dir / 'readers'}")
    return study
