"""``sample_to_folder``: synthetic scans from a trained checkpoint, written with true geometry.

1. Check every option, open the checkpoint, rebuild the network from the checkpoint's own config
   and load its weights (EMA by default): all before the output folder is touched, so bad input
   leaves nothing behind. Sampler, steps, eta and batch size come as one ``sample`` config section:
   the checkpoint config's own, or that with the command's flags on top (``SampleConfig.with_flags``).
2. Decide what the output folder is: new, a sampling of the same recipe to finish (resume), or
   something else (refused unless ``overwrite``).
3. Draw the missing samples (sample i from seed + i; under torchrun rank r draws the i with
   i % world_size == r) and write each file atomically as its batch finishes.
4. Rank 0 writes ``manifest.json`` and ``preview.png``.

Files. ``sample_0000.nii.gz`` ... in RAS with the training voxel size (checkpoint meta.json
``output_spacing``), qform and sform set, origin at the volume centre (medddpm.data.nifti.write_volume).
Intensities are in training units (medddpm.data.transforms.IntensityMapping): CT in HU, written as int16 as
CT scans usually are (1 HU steps are far below what a model resolves over a 2000 HU window, and
files are half the size); MRI on the documented [0, 1] scale, written as float32.

Resuming. ``manifest.json`` is written before the first sample, with the recipe: the weights'
sha256, EMA or not, sampler, steps, eta, seed, precision and format. A folder whose manifest holds
the same recipe is finished: files already there (complete, since every file is renamed into place)
are kept untouched, the rest are drawn. ``num`` may differ between runs (asking for more extends the
set). Any other non-empty folder is refused unless ``overwrite``, which deletes only the files a
sampling writes (samples, manifest, preview) before starting again.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, get_args

import numpy as np
import torch

from medddpm.config import Config, Device, Precision, SampleConfig
from medddpm.data.nifti import OUTPUT_FORMATS, write_volume
from medddpm.data.transforms import IntensityMapping
from medddpm.diffusion.advice import sampling_warnings
from medddpm.diffusion.process import Process, build_process
from medddpm.diffusion.samplers import check_sampler_fits, resolve_eta
from medddpm.errors import InputError
from medddpm.output_folder import atomic_path, sha256_of
from medddpm.runtime import (
    Distributed,
    check_conv3d_bf16,
    check_torch_version,
    init_distributed,
    library_versions,
    resolve_device,
    resolve_precision,
    shutdown_distributed,
)
from medddpm.training.checkpoint import FILES, Checkpoint, load_weights, open_checkpoint, resolve_checkpoint

MANIFEST = "manifest.json"
PREVIEW = "preview.png"
PREVIEW_MAX = 8
"""Samples shown in preview.png (one row each)."""
RECIPE_KEYS = (
    "sha256", "weights", "sampler", "steps", "eta", "seed", "precision", "format", "conditions", "guidance",
    "masks",
)  # fmt: skip
"""What must match for a folder to be resumed: anything that changes the voxels or the files."""


def _no_log(message: str) -> None:
    pass


def sample_name(index: int, fmt: str) -> str:
    """File name of sample ``index``: sample_0000.nii.gz, ..."""
    return f"sample_{index:04d}.{fmt}"


def sidecar_name(index: int) -> str:
    """The JSON beside a conditional sample: its seed, conditions and guidance (sample_0000.json)."""
    return f"sample_{index:04d}.json"


def shard(indices: list[int], rank: int, world_size: int) -> list[int]:
    """The samples one process draws: those with index % world_size == rank."""
    return [i for i in indices if i % world_size == rank]


def mask_sample_name(name: str, fmt: str, part: str = "img") -> str:
    """File names of the sample drawn for mask NAME: NAME_img.nii.gz and NAME_seg.nii.gz."""
    return f"{name}_{part}.{fmt}"


def missing_samples(out_dir: Path, num: int, fmt: str, names: list[str] | None = None) -> list[int]:
    """Indices 0 .. num-1 with no file in ``out_dir`` yet (every process's share). ``names``: the
    samples' NAMEs when drawn for masks (NAME_seg is written first, so NAME_img marks a sample done)."""
    file = (lambda i: sample_name(i, fmt)) if names is None else (lambda i: mask_sample_name(names[i], fmt))
    return [i for i in range(num) if not (Path(out_dir) / file(i)).exists()]


@dataclass
class SampleResult:
    out_dir: Path
    files: list[Path]
    """Samples 0 .. num-1, written by every process."""
    drawn: int
    """Samples drawn in this call, by every process."""
    kept: int
    """Samples already in the folder, kept untouched."""
    seconds_per_volume: float | None
    """Sampling time per volume on one device (batch time / batch size); None when none was drawn."""
    wall_seconds: float
    """Sampling time of the slowest process."""
    checkpoint: Path
    manifest: Path
    warnings: list[str] = field(default_factory=list)
    """Why these samples may not look like the data (``medddpm.diffusion.advice``), as logged."""


@dataclass
class _Plan:
    """Everything the options and the checkpoint resolve to, checked before any file is written."""

    checkpoint: Checkpoint
    weights_file: Path
    sha256: str
    model: torch.nn.Module
    schedule: Process
    settings: SampleConfig
    """Sampler, steps, eta (None: the sampler's own) and batch size."""
    eta: float
    """The eta the sampler runs with: ``settings.eta``, or the sampler's default."""
    seed: int
    precision: str
    device: torch.device
    fmt: str
    spacing: tuple[float, float, float]
    image_size: tuple[int, int, int]
    space: Any
    """The model's space (medddpm.models.spaces.SpaceEntry): samples are decoded from it."""
    mapping: IntensityMapping
    dtype: type
    recipe: dict[str, Any] = field(default_factory=dict)
    conditions: SampleConditions | None = None
    """What each sample is conditioned on; None for an unconditional checkpoint."""
    warnings: list[str] = field(default_factory=list)
    masks: Any = None
    """medddpm.inference.masks.SampleMasks: each sample's mask (--masks); None: no masks."""
    guidance: tuple[float, float] = (1.0, 0.0)
    """W and rescale for the masks (the conditions carry their own)."""

    @property
    def names(self) -> list[str] | None:
        return None if self.masks is None else self.masks.names

    def file_name(self, index: int) -> str:
        """Sample ``index``'s (image) file: sample_0000.nii.gz, or NAME_img.nii.gz for a mask."""
        if self.masks is None:
            return sample_name(index, self.fmt)
        return mask_sample_name(self.masks.names[index], self.fmt)


# ---------------------------------------------------------------------------------------------
# 1. Options and checkpoint


def find_checkpoint(run_dir: Path, spec: str | Path = "latest") -> Path:
    """``latest`` / ``step-N`` of a run folder, a checkpoint folder given as RUN_DIR, or a PATH."""
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise InputError("no such run or checkpoint folder", run_dir)
    if not run_dir.is_dir():
        raise InputError(
            "not a folder: expected a run folder or one of its checkpoints/step-N folders", run_dir
        )
    spec = str(spec)
    is_checkpoint = any((run_dir / name).exists() for name in FILES) or re.fullmatch(
        r"step-\d+", run_dir.name
    )
    if is_checkpoint and spec == "latest":
        return run_dir
    if is_checkpoint and spec.startswith("step-"):
        return resolve_checkpoint(spec, run_dir.parent.parent)
    if spec != "latest" and not spec.startswith("step-"):
        return resolve_checkpoint(spec)
    return resolve_checkpoint(spec, run_dir)


def _choice(value: str, choices: tuple[str, ...], option: str) -> str:
    if value not in choices:
        raise InputError(f"{option} must be one of {', '.join(choices)}; got '{value}'")
    return value


def checkpoint_config(run_dir: str | Path, checkpoint: str | Path = "latest") -> tuple[Path, Config]:
    """The checkpoint folder ``run_dir`` and ``checkpoint`` name (see ``find_checkpoint``) and the
    config it was trained with, whose ``sample`` section is what sampling runs with by default."""
    path = find_checkpoint(Path(run_dir), checkpoint)
    return path, open_checkpoint(path).config


def _plan(
    run_dir: Path,
    num: int,
    checkpoint: str | Path,
    settings: SampleConfig | None,
    seed: int,
    ema: bool,
    precision: str,
    device: str,
    fmt: str,
    request: ConditionRequest,
) -> _Plan:
    from medddpm.models.spaces import config_space
    from medddpm.models.unet import build_unet

    check_torch_version()
    if num < 1:
        raise InputError(f"--num must be at least 1; got {num}")
    if seed < 0:
        raise InputError(f"--seed must be at least 0; got {seed}")
    fmt = _choice(fmt.lstrip("."), OUTPUT_FORMATS, "--format")
    _choice(precision, get_args(Precision), "--precision")
    _choice(device, get_args(Device), "--device")

    ckpt = open_checkpoint(find_checkpoint(run_dir, checkpoint))
    cfg = ckpt.config
    # A SampleConfig has checked the sampler, eta against its bounds, steps and batch size >= 1.
    settings = cfg.sample if settings is None else settings
    try:
        check_sampler_fits(settings.sampler, cfg.diffusion.process)
    except InputError as e:
        raise InputError(f"invalid value for --sampler: {e}") from None
    T = cfg.diffusion.num_train_timesteps
    if settings.steps > T:
        raise InputError(f"--steps must be between 1 and the {T} training timesteps; got {settings.steps}")
    spacing = ckpt.meta.get("output_spacing")
    if not (
        isinstance(spacing, list)
        and len(spacing) == 3
        and all(isinstance(s, (int, float)) and s > 0 for s in spacing)
    ):
        raise InputError(
            "meta.json has no valid 'output_spacing' (three voxel sizes in mm)", ckpt.path / "meta.json"
        )

    label_values = tuple((ckpt.meta.get("labels") or {}).get("values") or ())
    conditions = resolve_conditions(ckpt, request, num, seed, labelled=bool(label_values))
    masks = None
    if request.masks is not None:
        from medddpm.inference.masks import read_masks

        if not label_values:
            raise InputError(
                "this checkpoint was trained without label maps (no --labels); drop --masks", ckpt.path
            )
        if fmt not in ("nii.gz", "nii"):
            raise InputError(f"--masks writes NIfTI pairs; --format {fmt} is not NIfTI")
        masks = read_masks(request.masks, num, cfg.data, label_values, seed, request.mask_augment)
    elif request.mask_augment:
        raise InputError("--mask-augment needs --masks")
    space = config_space(cfg, ckpt.path.parent.parent)  # latent: the run's autoencoder
    weights_file = ckpt.path / ("ema.safetensors" if ema else "model.safetensors")
    model = build_unet(
        cfg.model,
        condition_sizes=[] if conditions is None else conditions.spec.sizes,
        label_values=label_values,
    )
    load_weights(model, ckpt.weights(ema=ema), weights_file)
    torch_device = resolve_device(device)
    resolved_precision = resolve_precision(precision, torch_device)
    mapping = IntensityMapping.from_config(cfg.data)
    plan = _Plan(
        checkpoint=ckpt,
        weights_file=weights_file,
        sha256=sha256_of(weights_file),
        model=model,
        schedule=build_process(cfg.diffusion),
        settings=settings,
        eta=resolve_eta(settings.sampler, settings.eta),
        seed=seed,
        precision=resolved_precision,
        device=torch_device,
        fmt=fmt,
        spacing=tuple(float(s) for s in spacing),
        image_size=tuple(cfg.data.image_size),
        space=space,
        mapping=mapping,
        dtype=np.int16 if mapping.modality == "ct" else np.float32,
        conditions=conditions,
        masks=masks,
        guidance=(request.guidance, request.guidance_rescale),
    )
    plan.warnings = sampling_warnings(
        step=ckpt.step, prediction=plan.schedule.prediction, sampler=settings.sampler, steps=settings.steps,
        eta=plan.eta, use_ema=ema, ema_decay=cfg.train.ema_decay, ema_warmup=cfg.train.ema_warmup,
    )  # fmt: skip
    plan.recipe = {
        "sha256": plan.sha256,
        "weights": weights_file.name,
        "sampler": settings.sampler,
        "steps": settings.steps,
        "eta": plan.eta,
        "seed": seed,
        "precision": resolved_precision,
        "format": fmt,
    }
    if conditions is not None:  # unconditional recipes keep the keys they always had
        plan.recipe.update(conditions=conditions.source, guidance=conditions.guidance)
    if cfg.model.space == "latent":  # decoded with these weights and this scale factor
        plan.recipe.update(autoencoder_sha256=cfg.latent.autoencoder_sha256, scale_factor=space.scale_factor)
    if masks is not None:
        plan.recipe.update(masks=masks.recipe(), guidance=request.guidance)
    return plan


@dataclass(frozen=True)
class ConditionRequest:
    """What ``medddpm sample`` is asked to condition on; at most one source of conditions.

    ``assignments``: one value per variable for every sample (``--condition sex=F``); ``table``: a
    CSV with one row per sample and a column per variable (``--conditions-csv``); ``match_training``:
    sample i takes the conditions of a training scan drawn with seed + i, so the set follows the
    training set's proportions. None of them: unconditional samples (every variable unknown).
    ``guidance``: W (``medddpm.diffusion.guidance``: 1 conditional, 0 unconditional). Variables left
    out are unknown. Numbers outside the training range are refused unless ``extrapolate``.
    """

    assignments: tuple[str, ...] = ()
    table: Path | None = None
    match_training: bool = False
    guidance: float = 1.0
    guidance_rescale: float = 0.0
    extrapolate: bool = False
    masks: Path | None = None
    """A folder of masks, one sample each (``medddpm.inference.masks``); needs a --labels checkpoint."""
    mask_augment: float = 0.0

    @property
    def given(self) -> bool:
        return bool(self.assignments) or self.table is not None or self.match_training


@dataclass
class SampleConditions:
    """Each sample's conditions (raw values, None unknown) and their encoding for the network."""

    spec: Any  # medddpm.data.conditions.ConditionSpec
    rows: list[dict[str, Any]]
    source: dict[str, Any] | None
    """How the rows were chosen (the manifest's recipe); None: unconditional."""
    guidance: float
    guidance_rescale: float
    values: np.ndarray
    known: np.ndarray

    def generate_kwargs(self, indices: list[int]) -> dict[str, Any]:
        """``generate_batches``' conditioning arguments for samples ``indices``."""
        if self.source is None:  # unconditional: the network without conditions
            return {}
        return {
            "model_kwargs": {
                "cond_values": torch.from_numpy(self.values[indices]),
                "cond_known": torch.from_numpy(self.known[indices]),
            },
            "guidance": self.guidance,
            "guidance_rescale": self.guidance_rescale,
        }

    def describe(self) -> str:
        if self.source is None:
            return "none (unconditional samples)"
        first = ", ".join(f"{k}={v}" for k, v in self.rows[0].items())
        return f"{next(iter(self.source))} (sample 0: {first}), guidance {self.guidance:g}"


def resolve_conditions(
    ckpt: Checkpoint, request: ConditionRequest, num: int, seed: int, labelled: bool = False
) -> SampleConditions | None:
    """Every sample's conditions, checked against the checkpoint's variables; None when the checkpoint
    has none (and then conditions, or guidance without label maps, are an InputError)."""
    from medddpm.data.conditions import ConditionSpec, parse_assignments, read_table

    saved = ckpt.meta.get("conditioning")
    if request.guidance < 0:
        raise InputError(f"--guidance must be at least 0; got {request.guidance:g}")
    if not 0 <= request.guidance_rescale <= 1:
        raise InputError(f"--guidance-rescale must be between 0 and 1; got {request.guidance_rescale:g}")
    if not saved:
        if request.given or (request.guidance != 1.0 and not labelled):
            raise InputError(
                "this checkpoint was trained without conditions (no --conditions table); "
                "drop --condition, --conditions-csv, --match-training and --guidance",
                ckpt.path,
            )
        return None
    spec = ConditionSpec.from_dict(saved, ckpt.path / "meta.json")
    if sum([bool(request.assignments), request.table is not None, request.match_training]) > 1:
        raise InputError("use one of --condition, --conditions-csv and --match-training")
    where = None
    if request.assignments:
        fixed = parse_assignments(request.assignments)
        rows: list[dict[str, Any]] = [dict(fixed)] * num
        source: dict[str, Any] | None = {"condition": fixed}
        where = ["--condition"] * num
    elif request.table is not None:
        header, table = read_table(request.table)
        if len(table) != num:
            raise InputError(
                f"has {len(table)} rows but --num is {num}: give one row per sample", request.table
            )
        rows = [{k: v for k, v in r.items() if k != "file"} for r in table]
        where = [f"{request.table}: row {i + 2}" for i in range(num)]
        source = {"conditions_csv": {"path": str(request.table), "rows": rows}}
    elif request.match_training:
        training = ckpt.meta.get("condition_rows") or []
        if not training:
            raise InputError("meta.json holds no training conditions to match", ckpt.path / "meta.json")
        picks = [
            int(torch.randint(len(training), (1,), generator=torch.Generator().manual_seed(seed + i)))
            for i in range(num)
        ]
        rows = [training[p] for p in picks]
        source = {"match_training": True}
    else:
        rows, source = [{} for _ in range(num)], None
    values, known = spec.encode(rows, allow_missing=True, extrapolate=request.extrapolate, where=where)
    decoded = [spec.decode_row(r) for r in rows]
    return SampleConditions(spec, decoded, source, request.guidance, request.guidance_rescale, values, known)


# ---------------------------------------------------------------------------------------------
# 2. The output folder


def read_manifest(out_dir: Path) -> dict[str, Any] | None:
    path = Path(out_dir) / MANIFEST
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def check_output_folder(out_dir: Path, recipe: dict[str, Any], overwrite: bool) -> str:
    """'new', 'resume' or 'overwrite'; raises InputError for a folder that must not be touched.

    medddpm.output_folder's policy (SAMPLE_FOLDER says what a sampling writes), with one addition:
    a folder whose manifest holds the same recipe is resumed without --overwrite.
    """
    from medddpm.output_folder import SAMPLE_FOLDER, check_writable, is_empty, not_empty

    check_writable(out_dir)
    if is_empty(out_dir):
        return "new"
    if overwrite:
        return "overwrite"
    manifest = read_manifest(out_dir)
    if manifest is None:
        raise not_empty(out_dir, SAMPLE_FOLDER, " and holds no manifest.json of a sampling run")
    previous = manifest.get("recipe", {})
    for key in RECIPE_KEYS:
        if previous.get(key) != recipe.get(key):
            what = "weights (sha256)" if key == "sha256" else key
            raise InputError(
                f"output folder holds samples of another recipe ({what} {previous.get(key)!r} there, "
                f"{recipe.get(key)!r} here); {SAMPLE_FOLDER.remedy}",
                out_dir,
            )
    return "resume"


def _prepare_folder(out_dir: Path, state: str) -> None:
    """Create the folder, remove leftover temporaries and, for 'overwrite', what a sampling wrote."""
    from medddpm.output_folder import SAMPLE_FOLDER, prepare_output

    prepare_output(out_dir, SAMPLE_FOLDER, clear=state == "overwrite")


# ---------------------------------------------------------------------------------------------
# 3 and 4. Drawing, writing, recording


def _write_json(path: Path, data: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2))


def read_output(path: Path) -> np.ndarray:
    """A written sample back as a RAS [D, H, W] float32 array (NIfTI via nibabel, NRRD/MHA via SimpleITK)."""
    if path.name.endswith((".nii", ".nii.gz")):
        import nibabel as nib

        return np.asarray(nib.load(str(path)).dataobj, dtype=np.float32)
    import SimpleITK as sitk

    return sitk.GetArrayFromImage(sitk.ReadImage(str(path))).transpose(2, 1, 0).astype(np.float32)


def _manifest(
    plan: _Plan,
    num: int,
    records: dict[int, dict[str, Any]],
    status: str,
    dist: Distributed,
    wall_seconds: float | None,
) -> dict[str, Any]:
    drawn = [r["seconds"] for r in records.values() if r.get("seconds") is not None]
    ckpt = plan.checkpoint
    return {
        "status": status,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "checkpoint": {
            "path": str(ckpt.path.resolve()),
            "step": ckpt.step,
            "weights": plan.weights_file.name,
            "sha256": plan.sha256,
        },
        "recipe": plan.recipe,
        "sampler": plan.settings.sampler,
        "steps": plan.settings.steps,
        "eta": plan.eta,
        "seed": plan.seed,
        "num": num,
        "batch_size": plan.settings.batch_size,
        "precision": plan.precision,
        "device": plan.device.type if plan.device.type == "cpu" else torch.cuda.get_device_name(plan.device),
        "world_size": dist.world_size,
        "seconds_per_volume": sum(drawn) / len(drawn) if drawn else None,
        "wall_seconds": wall_seconds,
        "geometry": {
            "image_size": list(plan.image_size),
            "spacing": list(plan.spacing),
            "orientation": "RAS",
            "origin": "volume centre at (0, 0, 0) mm",
        },
        "intensity": {
            "modality": plan.mapping.modality,
            "units": plan.mapping.units,
            "dtype": np.dtype(plan.dtype).name,
        },
        "samples": [records[i] for i in sorted(records)],
        "config": ckpt.config.to_dict(),
        "versions": library_versions(),
    }


def _gather(dist: Distributed, value: Any) -> list[Any]:
    if not dist.enabled:
        return [value]
    out: list[Any] = [None] * dist.world_size
    torch.distributed.all_gather_object(out, value)
    return out


def _draw(
    plan: _Plan,
    out_dir: Path,
    todo: list[int],
    on_written: Callable[[int], None],
    on_step: Callable[[int, int], None] | None,
) -> dict[int, dict[str, Any]]:
    """Draw samples ``todo`` batch by batch, writing each file as its batch finishes; their records."""
    from medddpm.diffusion.generate import generate_batches
    from medddpm.models.unet import to_memory_format

    model = to_memory_format(plan.model.to(plan.device))  # the layout preferred on the device
    seeds = [plan.seed + i for i in todo]
    settings = plan.settings
    cond = plan.conditions
    guidance = {} if cond is None else cond.generate_kwargs(todo)
    if plan.masks is not None:
        guidance.setdefault("model_kwargs", {})
        guidance["model_kwargs"]["labels"] = plan.masks.maps[todo]
        guidance["model_kwargs"]["labels_known"] = torch.ones(len(todo), dtype=torch.bool)
        guidance["guidance"], guidance["guidance_rescale"] = plan.guidance
    batches = generate_batches(
        model, plan.schedule, plan.image_size, seeds, settings.sampler, settings.steps, eta=settings.eta,
        device=plan.device, precision=plan.precision, batch_size=settings.batch_size, on_step=on_step,
        **guidance,
        space=plan.space,
    )  # fmt: skip
    records: dict[int, dict[str, Any]] = {}
    t_batch = time.perf_counter()
    for batch_seeds, volumes in batches:
        seconds = (time.perf_counter() - t_batch) / len(batch_seeds)
        for s, volume in zip(batch_seeds, volumes, strict=True):
            i = s - plan.seed
            name = plan.file_name(i)
            if plan.masks is not None:  # the seg first: the img file marks the pair complete
                from medddpm.inference.masks import seg_dtype

                seg = mask_sample_name(plan.masks.names[i], plan.fmt, "seg")
                values = plan.checkpoint.meta["labels"]["values"]
                write_volume(plan.masks.maps[i, 0].numpy(), out_dir / seg, plan.spacing, seg_dtype(values))
            write_volume(plan.mapping.to_output(volume[0].numpy()), out_dir / name, plan.spacing, plan.dtype)
            records[i] = {"index": i, "file": name, "seed": s, "seconds": round(seconds, 4)}
            if plan.masks is not None:
                records[i].update(segmentation=seg, **plan.masks.sources[i], guidance=plan.guidance[0])
                sidecar = f"{plan.masks.names[i]}_img.json"
                _write_json(out_dir / sidecar, {k: v for k, v in records[i].items() if k != "seconds"})
            if cond is not None:
                records[i]["conditions"] = cond.rows[i]
                records[i]["guidance"] = cond.guidance
                sidecar = sidecar_name(i) if plan.masks is None else f"{plan.masks.names[i]}_img.json"
                _write_json(out_dir / sidecar, {k: v for k, v in records[i].items() if k != "seconds"})
        on_written(len(batch_seeds))
        t_batch = time.perf_counter()
    return records


def _write_preview(plan: _Plan, out_dir: Path, num: int) -> None:
    """preview.png: mid-slices of the first PREVIEW_MAX samples, read back from their files."""
    from medddpm.preview import save_montage

    shown = list(range(min(num, PREVIEW_MAX)))
    settings = plan.settings
    lo, hi = (plan.mapping.a_min, plan.mapping.a_max) if plan.mapping.modality == "ct" else (0.0, 1.0)
    with atomic_path(out_dir / PREVIEW) as tmp:
        save_montage(
            [read_output(out_dir / plan.file_name(i)) for i in shown],
            tmp,
            spacing=plan.spacing,
            titles=[f"seed {plan.seed + i}" for i in shown],
            value_range=(lo, hi),
            suptitle=f"{settings.sampler}, {settings.steps} steps, checkpoint step {plan.checkpoint.step}",
        )


@dataclass
class _VolumeCounter:
    """This process's volumes written so far, reported to ``on_volumes(done, total)`` as they come."""

    done: int
    total: int
    on_volumes: Callable[[int, int], None] | None

    def add(self, n: int) -> None:
        self.done += n
        if self.on_volumes is not None:
            self.on_volumes(self.done, self.total)


def _open_folder(
    plan: _Plan, out_dir: Path, num: int, state: str, previous: dict[str, Any] | None, dist: Distributed
) -> dict[int, dict[str, Any]]:
    """Create (or clear, or resume) ``out_dir`` and write the "incomplete" manifest; the records of
    samples 0 .. num-1 a resumed folder already holds."""
    records: dict[int, dict[str, Any]] = {}
    for r in (previous or {}).get("samples", []):
        if isinstance(r, dict) and isinstance(r.get("index"), int) and 0 <= r["index"] < num:
            records[r["index"]] = r
    if dist.is_main:
        _prepare_folder(out_dir, state)
        _write_json(out_dir / MANIFEST, _manifest(plan, num, records, "incomplete", dist, None))
    dist.barrier()
    return records


def _finish(
    plan: _Plan,
    out_dir: Path,
    num: int,
    records: dict[int, dict[str, Any]],
    drawn: dict[int, dict[str, Any]],
    wall: float,
    dist: Distributed,
) -> tuple[dict[int, dict[str, Any]], float]:
    """Gather every process's records; rank 0 writes the "complete" manifest and preview.png.
    Returns the records of the samples drawn by all processes and the slowest process's time."""
    drawn_all: dict[int, dict[str, Any]] = {}
    for part in _gather(dist, drawn):
        drawn_all.update(part)
    wall = max(_gather(dist, wall))
    records.update(drawn_all)
    for i in range(num):
        records.setdefault(i, {"index": i, "file": plan.file_name(i), "seed": plan.seed + i, "seconds": None})
        if plan.conditions is not None:
            records[i].setdefault("conditions", plan.conditions.rows[i])
    if dist.is_main:
        _write_json(out_dir / MANIFEST, _manifest(plan, num, records, "complete", dist, round(wall, 3)))
        _write_preview(plan, out_dir, num)
    dist.barrier()
    return drawn_all, wall


def sample_to_folder(
    run_dir: str | Path,
    out_dir: str | Path,
    num: int,
    settings: SampleConfig | None = None,
    *,
    checkpoint: str | Path = "latest",
    seed: int = 0,
    ema: bool = True,
    precision: str = "auto",
    device: str = "auto",
    fmt: str = "nii.gz",
    overwrite: bool = False,
    conditions: ConditionRequest | None = None,
    log: Callable[[str], None] = _no_log,
    on_volumes: Callable[[int, int], None] | None = None,
    on_step: Callable[[int, int], None] | None = None,
) -> SampleResult:
    """Write samples 0 .. ``num``-1 of a checkpoint into ``out_dir`` (see the module docstring).

    ``run_dir``: a run folder or a checkpoint folder; ``checkpoint``: latest, step-N or a folder.
    ``settings``: sampler, steps, eta and batch size; None takes the checkpoint config's ``sample``
    section (``checkpoint_config(...)[1].sample.with_flags(steps=10)`` changes one of them).
    ``precision`` and ``device`` are this machine's, not the recipe's. ``conditions``: what to
    condition on and the guidance (``ConditionRequest``; None: unconditional, W = 1). Rank 0 alone
    logs and reports progress: ``on_volumes(done, total)`` for its share of the samples (files
    already there count as done), ``on_step(i, total)`` for each network evaluation of the current
    batch. Log lines are plain text.
    """
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    # 1. Everything checked before the output folder is touched.
    plan = _plan(
        run_dir,
        num,
        checkpoint,
        settings,
        seed,
        ema,
        precision,
        device,
        fmt,
        conditions or ConditionRequest(),
    )
    owns_group = not (torch.distributed.is_available() and torch.distributed.is_initialized())
    dist = init_distributed(plan.device)
    try:
        if dist.enabled and plan.device.type == "cuda":
            plan.device = torch.device("cuda", dist.local_rank)
        if not dist.is_main:
            log, on_volumes, on_step = _no_log, None, None
        # Every rank decides (and fails) alike, before rank 0 changes anything.
        state = check_output_folder(out_dir, plan.recipe, overwrite)
        previous = read_manifest(out_dir) if state == "resume" else None
        dist.barrier()
        # bf16 on CUDA: one conv3d at the model's full-resolution size against fp32 (a cuDNN bug).
        width = plan.checkpoint.config.model.channels[0]
        bf16_warning = check_conv3d_bf16(plan.device, plan.precision, (1, width, *plan.image_size))
        if bf16_warning:
            log(f"warning: {bf16_warning}")

        # 2. The folder: created, cleared for --overwrite, or resumed (keeping earlier records).
        records = _open_folder(plan, out_dir, num, state, previous, dist)
        missing = missing_samples(out_dir, num, plan.fmt, plan.names)
        if state == "resume":
            log(f"Resuming {out_dir}: {num - len(missing)} of {num} samples are there")
        if plan.conditions is not None:
            log(f"Conditions: {plan.conditions.describe()}")
        log(
            f"Sampling {len(missing)} volume{'s' if len(missing) != 1 else ''} from {plan.checkpoint.path} "
            f"({plan.weights_file.name}, step {plan.checkpoint.step}): {plan.settings.sampler}, "
            f"{plan.settings.steps} steps, eta {plan.eta:g}, {plan.device.type} {plan.precision}"
            + (f", {dist.world_size} processes" if dist.enabled else "")
        )
        for warning in plan.warnings:
            log(f"warning: {warning}")

        # 3. This process's share of the missing samples.
        mine = shard(list(range(num)), dist.rank, dist.world_size)
        todo = shard(missing, dist.rank, dist.world_size)
        counter = _VolumeCounter(done=len(mine) - len(todo), total=len(mine), on_volumes=on_volumes)
        counter.add(0)
        t_start = time.perf_counter()
        drawn = _draw(plan, out_dir, todo, counter.add, on_step)
        wall = time.perf_counter() - t_start

        # 4. One manifest and one preview, by rank 0, once every rank has written its files.
        drawn_all, wall = _finish(plan, out_dir, num, records, drawn, wall, dist)
    finally:
        if owns_group and dist.enabled:
            shutdown_distributed()
    seconds = [r["seconds"] for r in drawn_all.values()]
    per_volume = sum(seconds) / len(seconds) if seconds else None
    kept = num - len(drawn_all)
    speed = "" if per_volume is None else f", {per_volume:.2f} s per volume"
    log(f"Done: {num} samples in {out_dir} ({len(drawn_all)} drawn, {kept} already there{speed})")
    return SampleResult(
        out_dir=out_dir,
        files=[out_dir / plan.file_name(i) for i in range(num)],
        drawn=len(drawn_all),
        kept=kept,
        seconds_per_volume=per_volume,
        wall_seconds=wall,
        checkpoint=plan.checkpoint.path,
        manifest=out_dir / MANIFEST,
        warnings=plan.warnings,
    )
