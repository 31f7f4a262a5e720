"""The demo: a small brain MRI cohort made from the MNI152 template, then train -> sample -> evaluate.

1. ``make_cohort``: the MNI152 T1 template that nilearn ships inside its package (no download),
   resampled to a cube of ``image_size`` voxels over a 192 mm field of view (6 mm voxels at 32³),
   and varied per subject with MONAI random transforms: affine (rotation, scale, shift), elastic
   deformation, a smooth bias field, gamma contrast and a global intensity scale. Every subject is
   a pure function of (seed, index). Written as RAS NIfTI files with their true voxel size into
   ``cohort/train`` and ``cohort/heldout`` (a quarter, the real reference for evaluation).
   Subjects alternate between two groups that differ in head size (GROUPS: the "small" heads are
   the template scaled by 0.88, by a MONAI affine before the random transforms, so about two thirds
   of the "large" heads' volume); each split's groups are written as a conditions table in train's
   format beside the cohort (``cohort/train_conditions.csv``, ``cohort/heldout_conditions.csv``).
2. ``run_demo``: the same functions as ``medddpm train``, ``sample`` and ``evaluate``, in order,
   with the ``demo`` config, its training steps fitted to the demo's minutes (``train_in_time``:
   the warm-up timed, then at most the config's ``max_steps``). It trains conditioned on the
   group, samples in the training set's proportions (``--match-training``) and evaluates with the
   held-out table, so the report shows the condition check: whether the
   samples' head size follows the group they were asked for.

The cohort is one template deformed many times: it shows the tool end to end in minutes on a
CPU, and the figures it yields are for that cohort only, not a benchmark of anything.

May import: ``medddpm.config``, ``errors``, ``runtime``, ``output_folder``, ``data``, ``training``,
``inference``, ``evaluation`` (it runs the whole pipeline).
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from medddpm.errors import InputError

FIELD_OF_VIEW_MM = 192.0
"""Side of the cube the head is placed in: the MNI152 brain (about 145 x 180 x 155 mm) with room to move."""
DEFAULT_MINUTES = 10.0
"""About how long ``medddpm demo`` takes in all, cohort, sampling and evaluation included: its training
steps are fitted to it on each machine (``train_in_time``)."""
DEFAULT_SUBJECTS = 64
HELDOUT_FRACTION = 0.25
GROUPS = {"large": 1.0, "small": 0.88}
"""Head size of each group, relative to the template (subject i is in group i mod 2): a visible, and
measurable, effect for the demo's conditional model. Within a group heads still vary by up to +-8% per
axis (``subject_transforms``), so single axes overlap a little, but a small head has about 0.88³ = 0.68
of a large one's volume."""
GROUP_VARIABLE = "group"
COHORT_RECORD = "cohort.json"
INSTALL_HINT = 'the demo needs nilearn, which ships the MNI152 template: pip install "medddpm[demo]"'


def _no_log(message: str) -> None:
    pass


# ---------------------------------------------------------------------------------------------
# 1. The cohort


@dataclass
class Cohort:
    """Where the demo cohort lies, and its geometry (RAS, isotropic voxels of ``spacing`` mm)."""

    root: Path
    train: list[Path]
    heldout: list[Path]
    image_size: int
    spacing: float
    train_conditions: Path | None = None
    """The training scans' groups, a table in train's format (``file``, ``group``); None: no groups."""
    heldout_conditions: Path | None = None
    """The held-out scans' groups, the same way."""

    @property
    def train_dir(self) -> Path:
        return self.root / "train"

    @property
    def heldout_dir(self) -> Path:
        return self.root / "heldout"


def load_template():
    """The MNI152 T1 template at 2 mm (nibabel image, RAS, brain on [0, 1]) from nilearn's package files."""
    try:
        from nilearn.datasets import load_mni152_template
    except ImportError:
        raise InputError(INSTALL_HINT) from None
    return load_mni152_template(resolution=2)


@functools.lru_cache(maxsize=2)
def _template_on_grid(size: int, spacing: float):
    """The template resampled to ``spacing`` mm and centred in a cube of ``size`` voxels: [1, S, S, S].

    Cached: every subject starts from a clone of it.
    """
    import torch
    from monai.data import MetaTensor
    from monai.transforms import CropForeground, ResizeWithPadOrCrop, Spacing

    img = load_template()
    data = np.asarray(img.get_fdata(), dtype=np.float32)
    volume = MetaTensor(torch.from_numpy(data)[None], affine=torch.as_tensor(img.affine, dtype=torch.float64))
    volume = Spacing(pixdim=(spacing,) * 3, mode="bilinear", padding_mode="zeros")(volume)
    volume = CropForeground(select_fn=lambda x: x > 0.02, margin=0)(volume)
    volume = ResizeWithPadOrCrop((size,) * 3, value=0.0)(volume)
    return volume.as_tensor().clamp_(min=0.0)


def subject_transforms(size: int):
    """MONAI random transforms that turn the template into one subject (on the working grid of ``size``³).

    Ranges are those of typical inter-subject variation after rigid alignment: a few degrees of
    head tilt, +-8% head size, a few millimetres of shift, smooth local shape changes, a scanner's
    bias field and contrast, and an arbitrary global intensity scale (MRI has no absolute units).
    """
    from monai.transforms import (
        Compose,
        Rand3DElastic,
        RandAdjustContrast,
        RandBiasField,
        RandScaleIntensity,
    )

    voxels_per_cm = size / (FIELD_OF_VIEW_MM / 10)
    return Compose(
        [
            # A random affine (RandAffine's rotation, scale and shift) and a smooth elastic
            # deformation, composed into one displacement field: one interpolation, not two.
            Rand3DElastic(
                prob=1.0,
                sigma_range=(0.6 * voxels_per_cm, 0.8 * voxels_per_cm),  # smooth over 6-8 mm
                magnitude_range=(1.0 * voxels_per_cm, 2.0 * voxels_per_cm),
                rotate_range=(0.1, 0.1, 0.1),  # radians, about 6 degrees
                scale_range=(0.08, 0.08, 0.08),
                translate_range=(0.5 * voxels_per_cm,) * 3,  # +-5 mm
                padding_mode="zeros",
            ),
            RandBiasField(prob=1.0, degree=3, coeff_range=(0.0, 0.25)),
            RandAdjustContrast(prob=1.0, gamma=(0.75, 1.35)),
            RandScaleIntensity(prob=1.0, factors=0.2),
        ]
    )


def subject_group(index: int) -> str:
    """The group of subject ``index``: the keys of GROUPS in turn."""
    names = list(GROUPS)
    return names[index % len(names)]


def group_transform(group: str):
    """MONAI's Affine scaling a head by GROUPS[group] about the grid's centre. MONAI scales the sampling
    grid, so an image shrinks by the reciprocal of ``scale_params``."""
    from monai.transforms import Affine

    factor = 1.0 / GROUPS[group]
    return Affine(scale_params=(factor,) * 3, padding_mode="zeros", image_only=True)


def _write_table(path: Path, files: list[Path], groups: list[str]) -> Path:
    from medddpm.output_folder import atomic_path

    lines = ["file," + GROUP_VARIABLE, *(f"{f.name},{g}" for f, g in zip(files, groups, strict=True))]
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    return path


def make_cohort(
    out_dir: str | Path,
    n_subjects: int = DEFAULT_SUBJECTS,
    image_size: int = 32,
    seed: int = 0,
    log: Callable[[str], None] = _no_log,
) -> Cohort:
    """Write ``n_subjects`` synthetic T1 scans into ``out_dir/train`` and ``out_dir/heldout``.

    Each is ``image_size``³ voxels of ``192 / image_size`` mm (RAS, float32, qform and sform set,
    origin at the centre), made on a grid twice as fine and averaged down, as a scanner integrates
    over a voxel. The last quarter (at least one) is held out. Subject i, in group ``subject_group(i)``,
    depends only on (seed, i): the same seed gives the same files. Writes each split's groups as
    ``train_conditions.csv`` and ``heldout_conditions.csv`` in ``out_dir``. Raises InputError without
    nilearn.
    """
    import torch
    from monai.transforms import Resize

    from medddpm.data.nifti import write_volume
    from medddpm.output_folder import atomic_path

    if n_subjects < 2:
        raise InputError(f"the demo cohort needs at least 2 subjects; got {n_subjects}")
    if image_size < 8:
        raise InputError(f"the demo image size must be at least 8 voxels; got {image_size}")
    out_dir = Path(out_dir)
    spacing = FIELD_OF_VIEW_MM / image_size
    fine = 2 * image_size
    t0 = time.perf_counter()
    base = _template_on_grid(fine, spacing / 2)
    transforms = subject_transforms(fine)
    downsample = Resize((image_size,) * 3, mode="area")
    n_heldout = max(1, round(n_subjects * HELDOUT_FRACTION))
    train, heldout = [], []
    groups: dict[str, list[str]] = {"train": [], "heldout": []}
    for i in range(n_subjects):
        transforms.set_random_state(seed=int(np.random.SeedSequence([seed, i]).generate_state(1)[0]))
        with torch.no_grad():
            volume = downsample(transforms(group_transform(subject_group(i))(base.clone())))
        volume = np.asarray(volume, dtype=np.float32)[0].clip(min=0.0)
        split = "heldout" if i >= n_subjects - n_heldout else "train"
        path = write_volume(volume, out_dir / split / f"subject_{i:03d}.nii.gz", (spacing,) * 3)
        (heldout if split == "heldout" else train).append(path)
        groups[split].append(subject_group(i))
    tables = {
        split: _write_table(out_dir / f"{split}_conditions.csv", files, groups[split])
        for split, files in (("train", train), ("heldout", heldout))
    }
    record = {
        "source": "MNI152 T1 template (ICBM 2009a symmetric, 2 mm) from the nilearn package",
        "n_subjects": n_subjects,
        "n_train": len(train),
        "n_heldout": len(heldout),
        "image_size": [image_size] * 3,
        "spacing_mm": [spacing] * 3,
        "orientation": "RAS",
        "seed": seed,
        "transforms": ["Affine (group head size)", *(type(t).__name__ for t in transforms.transforms)],
        "conditions": {
            "variable": GROUP_VARIABLE,
            "head_size": GROUPS,
            "rule": "subject i is in group i mod 2, in the order of head_size",
            "tables": {split: path.name for split, path in tables.items()},
        },
    }
    with atomic_path(out_dir / COHORT_RECORD) as tmp:
        tmp.write_text(json.dumps(record, indent=2))
    log(
        f"Cohort: {len(train)} training and {len(heldout)} held-out scans, {image_size}³ at {spacing:g} mm, "
        f"in {out_dir} ({time.perf_counter() - t0:.0f} s)"
    )
    return Cohort(out_dir, train, heldout, image_size, spacing, tables["train"], tables["heldout"])


# ---------------------------------------------------------------------------------------------
# 2. The demo: cohort -> train -> sample -> evaluate


@dataclass
class DemoResult:
    """Where everything the demo wrote lies, the evaluation's figures, and the seconds each stage took."""

    output: Path
    cohort: Cohort
    run_dir: Path
    steps: int
    """Optimizer steps trained in the time budget."""
    samples_dir: Path
    report_dir: Path
    report_html: Path
    samples_preview: Path
    training_preview: Path | None
    """The run's last preview PNG (EMA samples at the final step)."""
    metrics: dict[str, Any]
    likeness: dict[str, float]
    """Median nearest-training correlation of synthetic volumes and of held-out scans (``likeness``)."""
    threads: int
    """Torch CPU threads the demo ran with."""
    seconds: dict[str, float] = field(default_factory=dict)


def likeness(cfg, cohort: Cohort, samples: Sequence[Path]) -> dict[str, float]:
    """How like a training scan each synthetic volume is, against how like one a new real scan is.

    The median over volumes of the Pearson correlation with the most correlated training scan, all
    through the run's preprocessing: for the synthetic volumes, and for the held-out scans (the level
    a model that generalises reaches; a model that copied its training scans would exceed it, which
    ``medddpm audit`` tests).
    """
    import torch

    from medddpm.data.transforms import build_transforms
    from medddpm.evaluation.metrics import nearest_correlation

    transforms = build_transforms(cfg.data)

    def load(files) -> torch.Tensor:
        return torch.stack([transforms({"image": str(f)})["image"] for f in files])

    training = load(cohort.train)
    return {
        "synthetic": float(np.median(nearest_correlation(load(samples), training))),
        "heldout": float(np.median(nearest_correlation(load(cohort.heldout), training))),
    }


def check_demo_folder(output: Path, overwrite: bool) -> None:
    """Refuse a folder the demo cannot write, or a non-empty one unless ``overwrite``; writes nothing.

    medddpm.output_folder's policy: DEMO_FOLDER says what ``overwrite`` then deletes (the demo's
    four parts, nothing else).
    """
    from medddpm.output_folder import DEMO_FOLDER, check_output

    check_output(output, DEMO_FOLDER, overwrite=overwrite)


def _require_nilearn() -> None:
    try:
        import nilearn.datasets  # noqa: F401
    except ImportError:
        raise InputError(INSTALL_HINT) from None


TIMED_FROM = 10
"""Training steps before this one are not timed: the first ones pay for allocation and warm-up."""
RETIME_SECONDS = 60.0
"""After fitting its steps to the warm-up's pace, the demo trains about this long on that fit, times
those steps again and fits once more: 40 warm-up steps are a short sample of a machine, and a
moment's load during them (another program starting) would cost the whole demo steps."""
EVALUATE_SECONDS = 20.0
"""What the demo keeps for evaluation when it fits its training steps to its minutes: features, MS-SSIM,
nearest-training correlation and the report of 16 + 16 volumes at 32³ take 10-15 s on 2 CPU cores."""


def fitted_steps(cfg, minutes: float, spent: float, pace: float, done: int, num_samples: int) -> int:
    """Training steps that end the demo in about ``minutes``, ``spent`` seconds of them gone, at ``pace``
    seconds a step (``done`` steps taken): at most the config's ``train.max_steps``, at least ``done``.

    Kept back: sampling, estimated from the pace (``num_samples`` x ``sample.steps`` network calls on one
    volume, where a training step makes about 3 x ``batch_size``: forward and backward), and
    EVALUATE_SECONDS.
    """
    sampling = pace * num_samples * cfg.sample.steps / (3 * cfg.train.batch_size)
    left = 60 * minutes - spent - sampling - EVALUATE_SECONDS
    return int(min(cfg.train.max_steps, max(done, done + left // pace)))


def steady_pace(step_seconds: Sequence[float]) -> float:
    """Mean seconds a step, leaving out steps that took more than twice the median: those a moment's
    load held up (another program starting), while the steps that regularly cost a little more
    (logging, checkpoints) still count."""
    times = np.asarray(step_seconds, dtype=float)
    return float(times[times <= 2 * np.median(times)].mean())


def train_in_time(
    cfg,
    cohort: Cohort,
    run_dir: Path,
    minutes: float,
    started: float,
    num_samples: int,
    threads: int,
    log: Callable[[str], None],
    on_step: Callable[[Any], None] | None,
    try_one_thread: bool = False,
):
    """Train ``cfg`` on the cohort so that the whole demo, begun at ``started`` (perf_counter), ends in
    about ``minutes``, with its learning-rate schedule run to the end: a slow machine trains fewer
    steps rather than stopping half-way down the decay.

    The warm-up steps (``train.warmup_steps``, whose learning rate does not depend on max_steps) are
    trained and timed first; then the run resumes with max_steps fitted to the time left
    (``fitted_steps``). After about RETIME_SECONDS of those steps it stops (``stop_after``), times
    that stretch (``steady_pace``: a moment's load does not move it) and resumes with max_steps
    fitted again. Resuming is exact, so the weights are those of one uninterrupted run but for the
    learning rate of the re-timed stretch, which followed the first fit's cosine decay: that early in
    the decay, a fit a quarter longer (2,381 to 3,000 steps, paused at 310) moves it by 1% of the peak.
    ``train.max_minutes`` stays a ceiling in case the machine slows down. A config with fewer than
    2 x TIMED_FROM warm-up steps is trained for its max_steps or ``minutes``.

    With ``try_one_thread`` and more than one of ``threads``, the second half of the warm-up runs on one
    torch thread, and the rest of the demo on whichever was faster: on idle cores every thread helps,
    while where other programs keep the cores busy the threads mostly wait for one another
    (benchmarks/RESULTS.md, "CPU threads"). The choice stays set (``torch.set_num_threads``).
    """
    import torch

    from medddpm.training.loop import train

    tc = cfg.train

    def train_for(steps: int, resume: bool = False, on_step=on_step, stop_after=None, **fields):
        """``train`` with max_steps = ``steps`` and the other ``train`` ``fields`` replaced."""
        changed = cfg.model_copy(update={"train": tc.model_copy(update={"max_steps": steps, **fields})})
        return train(
            changed,
            cohort.train_dir,
            run_dir,
            resume=resume,
            conditions=cohort.train_conditions,
            log=log,
            on_step=on_step,
            stop_after=stop_after,
        )

    cores = f"{threads} CPU thread{'s' if threads > 1 else ''}"
    timed = tc.warmup_steps
    if not 2 * TIMED_FROM <= timed < tc.max_steps:
        log(f"Training for {tc.max_steps} steps or {minutes:g} minutes, whichever ends first ({cores}) ...")
        return train_for(tc.max_steps)

    clock: dict[int, float] = {}
    halves = try_one_thread and threads > 1
    switch = (TIMED_FROM + timed) // 2  # with halves: steps after this one run on one thread

    def timing(entry) -> None:
        clock[entry.step] = entry.seconds
        if halves and entry.step == switch:
            torch.set_num_threads(1)
        if on_step is not None:  # the progress bar sees the whole run, not the timed steps alone
            on_step(replace(entry, max_steps=tc.max_steps))

    if halves:
        cores += ", then 1"
    log(f"Timing the first {timed} training steps on this machine ({cores}) ...")
    trained = train_for(timed, on_step=timing, preview_every=0)
    if trained.interrupted or trained.step < timed:
        return trained
    if halves:
        every = (clock[switch] - clock[TIMED_FROM]) / (switch - TIMED_FROM)
        one = (clock[timed] - clock[switch + 1]) / (timed - switch - 1)  # the first on one thread untimed
        pace = min(every, one)
        torch.set_num_threads(1 if one < every else threads)
        n = torch.get_num_threads()
        on = f" on {n} thread{'s' if n > 1 else ''} ({threads} threads: {every:.2f} s, 1 thread: {one:.2f} s)"
    else:
        pace, on = (clock[timed] - clock[TIMED_FROM]) / (timed - TIMED_FROM), ""
    spent = time.perf_counter() - started
    steps = fitted_steps(cfg, minutes, spent, pace, timed, num_samples)
    log(
        f"Training for {steps} steps (at most {tc.max_steps}): {pace:.2f} s a step here{on}, so that the "
        f"demo ends in about {minutes:g} minutes ..."
    )
    if steps <= timed:
        return trained
    retimed = timed + int(RETIME_SECONDS / pace)
    if retimed < steps:
        seconds: list[float] = []

        def retiming(entry) -> None:
            seconds.append(entry.seconds)
            if on_step is not None:
                on_step(entry)

        trained = train_for(steps, resume=True, on_step=retiming, stop_after=retimed)
        if trained.interrupted or trained.step < retimed:
            return trained
        pace = steady_pace(np.diff([0.0, *seconds]))
        spent = time.perf_counter() - started
        steps = fitted_steps(cfg, minutes, spent, pace, retimed, num_samples)
        log(f"Re-timed steps {timed + 1}-{retimed} at {pace:.2f} s a step: training for {steps} steps in all")
        timed = retimed
        if steps <= timed:
            return trained
    ceiling = 1.25 * pace * (steps - timed) / 60  # the time left, with room for a busier machine
    return train_for(steps, resume=True, max_minutes=ceiling)


def run_demo(
    output: str | Path = "medddpm-demo",
    minutes: float | None = None,
    *,
    device: str = "auto",
    config: str | Path = "demo",
    overrides: tuple[str, ...] | list[str] = (),
    image_size: int | None = None,
    n_subjects: int | None = None,
    num_samples: int = 16,
    seed: int = 0,
    threads: int | None = None,
    overwrite: bool = False,
    log: Callable[[str], None] = _no_log,
    on_step: Callable[[Any], None] | None = None,
    on_volumes: Callable[[int, int], None] | None = None,
    on_sample_step: Callable[[int, int], None] | None = None,
) -> DemoResult:
    """The whole tool on the built-in cohort, in ``output``: cohort/, run/, samples/, report/.

    Makes a cohort of ``n_subjects`` (None: 64) scans of ``image_size``³ voxels (None: the config's
    ``data.image_size``, which must then be a cube), trains ``config`` (a preset name or YAML file;
    ``overrides`` as for ``--set``) conditioned on the cohort's groups for the steps that end the
    demo in about ``minutes`` (None: DEFAULT_MINUTES), at most its ``train.max_steps``, draws ``num_samples``
    volumes with the config's sampler, each with the group of a training scan drawn from its seed
    (``--match-training``), and evaluates them
    against the held-out quarter, both preprocessed with the run's transforms, with the condition
    check of the group. ``threads``: torch CPU threads while the demo runs (None: every core this
    process may use, ``available_cores()``, or one where the timed warm-up finds one faster; the
    previous setting is restored afterwards).
    ``on_step`` receives training's StepLog; ``on_volumes`` and ``on_sample_step`` are sampling's
    progress callbacks.
    """
    import torch

    from medddpm.config import build_config
    from medddpm.evaluation.evaluate import evaluate
    from medddpm.inference.sample_to_folder import ConditionRequest, sample_to_folder
    from medddpm.output_folder import DEMO_FOLDER, prepare_output
    from medddpm.runtime import available_cores, stopwatch, torch_threads

    output = Path(output)
    minutes = DEFAULT_MINUTES if minutes is None else minutes
    n_subjects = DEFAULT_SUBJECTS if n_subjects is None else n_subjects
    if not minutes > 0:
        raise InputError(f"--minutes must be above 0; got {minutes:g}")
    if threads is not None and threads < 1:
        raise InputError(f"--threads must be at least 1; got {threads}")
    if num_samples < 2:
        raise InputError(f"the demo needs at least 2 samples to evaluate; got {num_samples}")
    _require_nilearn()
    cfg = build_config(
        config,
        overrides,
        {
            "data.image_size": image_size,
            "train.max_minutes": minutes,
            "train.device": device,
            "train.seed": seed,
        },
    )
    size = cfg.data.image_size
    if len(set(size)) != 1:
        raise InputError(f"the demo cohort is a cube: data.image_size must be one number, not {list(size)}")
    check_demo_folder(output, overwrite)
    prepare_output(output, DEMO_FOLDER, clear=overwrite)
    started = time.perf_counter()
    seconds: dict[str, float] = {}
    stage = stopwatch(seconds)
    choose = threads is None  # every core, or one if the warm-up finds it faster
    threads = available_cores() if choose else threads
    with torch_threads(threads):
        with stage("cohort"):
            cohort = make_cohort(output / "cohort", n_subjects, size[0], seed, log=log)

        with stage("train"):
            trained = train_in_time(
                cfg, cohort, output / "run", minutes, started, num_samples, threads, log, on_step,
                try_one_thread=choose,
            )  # fmt: skip
            threads = torch.get_num_threads()  # one, where the warm-up found one thread faster
        if trained.interrupted or trained.checkpoint is None:
            raise KeyboardInterrupt

        with stage("sample"):
            sampled = sample_to_folder(
                trained.run_dir,
                output / "samples",
                num_samples,
                seed=seed,
                device=device,
                conditions=ConditionRequest(match_training=cohort.train_conditions is not None),
                log=log,
                on_volumes=on_volumes,
                on_step=on_sample_step,
            )

        with stage("evaluate"):
            log(f"Evaluating {num_samples} samples against {len(cohort.heldout)} held-out scans ...")
            evaluated = evaluate(
                cohort.heldout_dir,
                sampled.out_dir,
                output / "report",
                run_dir=trained.run_dir,
                device=device,
                conditions=cohort.heldout_conditions,
                log=log,
            )
            like = likeness(cfg, cohort, sampled.files)

    previews = sorted((trained.run_dir / "previews").glob("step-*.png"))
    return DemoResult(
        output=output,
        cohort=cohort,
        run_dir=trained.run_dir,
        steps=trained.step,
        samples_dir=sampled.out_dir,
        report_dir=evaluated.report_dir,
        report_html=evaluated.html,
        samples_preview=sampled.out_dir / "preview.png",
        training_preview=previews[-1] if previews else None,
        metrics=evaluated.metrics,
        likeness=like,
        threads=threads,
        seconds=seconds,
    )
