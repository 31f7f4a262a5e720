"""One typed configuration for every command.

Precedence, lowest first: the defaults below < a ``--config`` YAML file < repeated
``--set section.key=value`` < dedicated command-line flags. The resolved config is saved beside
everything it produces (``RUN_DIR/config.yaml``, each checkpoint's ``meta.json``).

Every default carries a comment saying why; ``configs/default.yaml`` repeats them and a test keeps
the two equal.

Saved configs hold every field. A config or checkpoint saved before a field existed lacks it, and
reading it back gives that field the value the code had before it existed (``LEGACY_VALUES``), not
today's default, so old runs resume and sample as they were trained.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveFloat,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import to_jsonable_python

# The sampler registry is the one list of sampler names (it imports torch; nothing in
# medddpm.diffusion imports this module at run time, so there is no circle).
from medddpm.diffusion.process import PROCESSES, process_entry
from medddpm.diffusion.samplers import SAMPLERS, check_sampler_fits, sampler_entry
from medddpm.errors import InputError

PRESET_DIR = Path(__file__).parent / "configs"

Precision = Literal["auto", "fp32", "bf16", "fp16"]
Device = Literal["auto", "cpu", "cuda"]


def _triple(value: Any, name: str) -> Any:
    """Accept one number (isotropic) or three (D, H, W)."""
    if value is None or isinstance(value, (list, tuple)):
        return value
    return (value, value, value)


class Section(BaseModel):
    # Unknown keys are errors (with a suggestion, see _explain); assignments are validated too.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, use_attribute_docstrings=True)


class DataConfig(Section):
    modality: Literal["ct", "mri"] = "mri"
    """ct: fixed HU window, samples written in HU. mri: per-volume percentiles, samples on [0, 1]."""
    image_size: tuple[int, int, int] = (64, 64, 64)
    """Voxels (D, H, W) after preprocessing; 64³ fits a brain at ~3 mm on any GPU."""
    spacing: tuple[float, float, float] | None = None
    """Resample to this voxel size (mm, RAS order); None keeps each file's own spacing."""
    a_min: float = -1000.0
    """CT only: HU mapped to -1 (air)."""
    a_max: float = 1000.0
    """CT only: HU mapped to +1 (dense bone saturates; soft tissue keeps most of the range)."""
    lower_percentile: float = 0.5
    """MRI only: percentile mapped to -1; robust to a few dark outlier voxels."""
    upper_percentile: float = 99.5
    """MRI only: percentile mapped to +1; robust to bright vessels and artefacts."""
    foreground_crop: bool = False
    """Crop to the bounding box of voxels above the minimum before fitting to image_size."""
    resize: Literal["pad_crop", "resize"] = "pad_crop"
    """pad_crop keeps the voxel size (geometry stays true); resize interpolates (voxel = view / size)."""
    cache: Literal["memory", "disk"] = "memory"
    """memory: MONAI CacheDataset; disk: PersistentDataset under RUN_DIR/cache for large cohorts."""
    num_workers: int = 0
    """Loader workers; 0 is fastest when the cache is in memory (no transform runs per step)."""

    _size = field_validator("image_size", mode="before")(lambda v: _triple(v, "image_size"))
    _spacing = field_validator("spacing", mode="before")(lambda v: _triple(v, "spacing"))

    @field_validator("image_size")
    @classmethod
    def _positive_size(cls, v: tuple[int, int, int]) -> tuple[int, int, int]:
        if min(v) < 8:
            raise ValueError("every side must be at least 8 voxels")
        return v

    @model_validator(mode="after")
    def _ordered(self) -> DataConfig:
        if self.a_min >= self.a_max:
            raise ValueError("a_min must be below a_max")
        if not 0 <= self.lower_percentile < self.upper_percentile <= 100:
            raise ValueError("need 0 <= lower_percentile < upper_percentile <= 100")
        return self


class ModelConfig(Section):
    channels: tuple[int, ...] = (32, 64, 64)
    """Feature channels per resolution level; three levels downsample 64³ to 16³."""
    attention_levels: tuple[bool, ...] = (False, False, True)
    """Self-attention only at the coarsest level: attention cost grows with voxels squared."""
    num_res_blocks: int = 1
    """Residual blocks per level; one keeps 3D memory in check."""
    num_head_channels: int = 32
    """Channels per attention head; must divide the channels at levels with attention and the last level."""
    norm_num_groups: int = 16
    """GroupNorm groups; must divide every entry of channels."""
    use_flash_attention: bool = True
    """torch scaled_dot_product_attention (flash / memory-efficient kernels on CUDA)."""
    gradient_checkpointing: bool = False
    """Recompute U-Net block activations in the backward pass: ~30% slower, far less memory."""
    space: Literal["pixel", "wavelet", "latent"] = "pixel"
    """pixel: the volume; wavelet: Haar bands at half size (Friedrich 2024); latent: train --autoencoder."""
    latent_channels: int | None = None
    """Latent space: the autoencoder's latent channels (the U-Net's); None: read from it, others refused."""

    @model_validator(mode="after")
    def _consistent(self) -> ModelConfig:
        if len(self.channels) != len(self.attention_levels):
            raise ValueError("channels and attention_levels need the same length")
        for c in self.channels:
            if c % self.norm_num_groups:
                raise ValueError(f"norm_num_groups={self.norm_num_groups} must divide channel count {c}")
        # MONAI's DiffusionModelUNet splits channels into heads only where it builds attention: at
        # the levels of attention_levels, and always in the middle block (at the last level's
        # channels). Levels without attention need not divide.
        last = len(self.channels) - 1
        for level, (c, attention) in enumerate(zip(self.channels, self.attention_levels, strict=True)):
            if (attention or level == last) and c % self.num_head_channels:
                where = "has attention" if attention else "feeds the middle block, which always has attention"
                raise ValueError(
                    f"num_head_channels={self.num_head_channels} must divide channel count {c} "
                    f"of level {level}, which {where}"
                )
        return self


class DiffusionConfig(Section):
    num_train_timesteps: int = 1000
    """T of Ho et al. (2020)."""
    schedule: Literal["linear", "cosine", "scaled_linear"] = "linear"
    """linear: Ho et al. 2020; cosine: Nichol & Dhariwal 2021, for low resolution; scaled_linear: MONAI."""
    beta_start: float = 1e-4
    """Linear schedule: beta_1 (Ho et al. 2020)."""
    beta_end: float = 0.02
    """Linear schedule: beta_T (Ho et al. 2020)."""
    prediction: Literal["eps", "v"] = "v"
    """v = sqrt(ab) eps - sqrt(1-ab) x0 (Salimans & Ho 2022): short runs learn shapes, eps gave noise."""
    process: str = Field(
        "ddpm",
        description=f"One of {', '.join(PROCESSES)} (medddpm.diffusion.process.PROCESSES): ddpm as above, "
        "or rflow (rectified flow, velocity target x0 - eps, logit-normal t); the default sampler "
        "follows it.",
    )
    min_snr_gamma: PositiveFloat | None = None
    """ddpm only: min-SNR-gamma loss weights (Hang et al. 2023 use 5); null: unweighted, as before."""
    rflow_shift: PositiveFloat = 1.0
    """rflow only: time shift s t / (1 + (s-1) t) (Esser et al. 2024); > 1 favours high noise."""
    rflow_timesteps: Literal["logit-normal", "uniform"] = "logit-normal"
    """rflow only: training t, logit-normal (Esser et al. 2024; rarely t < 0.05) or uniform (MONAI's)."""

    @field_validator("process")
    @classmethod
    def _registered(cls, name: str) -> str:
        try:
            process_entry(name)
        except InputError as e:
            raise ValueError(str(e)) from None
        return name

    @model_validator(mode="after")
    def _weighting_fits(self) -> DiffusionConfig:
        if self.min_snr_gamma is not None and self.process != "ddpm":
            raise ValueError(f"min_snr_gamma weights the ddpm process only, not {self.process}")
        return self


class TrainConfig(Section):
    max_steps: int = 20000
    """Optimizer steps; a small cohort at 64³ shows anatomy after ~10k."""
    max_minutes: PositiveFloat | None = None
    """Also stop after this many minutes of training steps in one call, with a checkpoint; None: no limit."""
    batch_size: int = 2
    """Volumes per step per process; 3D volumes are large, accumulate for bigger batches."""
    grad_accum: int = 1
    """Micro-batches summed per optimizer step (effective batch = batch_size x grad_accum x ranks)."""
    lr: float = 2e-3
    """AdamW peak LR: 2e-3 learnt the toy cohort in 400 steps, 1e-3 fell short (benchmarks/RESULTS.md)."""
    weight_decay: float = 0.0
    """AdamW weight decay; diffusion U-Nets rarely overfit at these sizes."""
    warmup_steps: int = 100
    """Linear LR warm-up: steadies AdamW's second-moment estimates; short, so short runs reach the peak."""
    min_lr_ratio: float = 0.1
    """Cosine decay ends at lr x this."""
    grad_clip: float = 1.0
    """Clip the global gradient norm; guards against rare spikes at high t."""
    ema_decay: float = 0.999
    """EMA of the weights used for sampling; 0.999 averages ~1000 steps."""
    ema_warmup: bool = True
    """Warm-up as diffusers: decay min(ema_decay, (1+n)/(10+n)) at update n; short runs forget the init."""
    precision: Precision = "auto"
    """auto: bf16 on CUDA that supports it, else fp32 (fp16 uses a GradScaler)."""
    compile: bool = False
    """torch.compile the U-Net: faster steps on GPU after a minute of compiling."""
    device: Device = "auto"
    """auto: CUDA when available, else CPU."""
    seed: int = 0
    """Seeds weights, batch order, timesteps and noise; the same seed gives the same run."""
    checkpoint_every: int = 1000
    """Steps between checkpoints."""
    keep_last: int = 3
    """Complete checkpoints kept; older ones are deleted once a newer one is in place."""
    log_every: int = 10
    """Steps between rows of metrics.csv."""
    preview_every: int = 1000
    """Steps between preview PNGs (0: none)."""
    preview_num: int = 2
    """EMA samples per preview."""
    preview_steps: int = 20
    """DDIM steps per preview sample: enough to see anatomy, cheap enough to not slow training."""
    max_nonfinite: int = 10
    """Consecutive non-finite losses or gradients that abort training."""
    tensorboard: bool = False
    """Also log scalars to RUN_DIR/tensorboard (needs the tensorboard package)."""


class ConditionsConfig(Section):
    types: dict[str, Literal["categorical", "continuous"]] = {}
    """Kind per variable of the --conditions table, where inference (all numbers: continuous) is wrong."""
    allow_missing: bool = False
    """Empty cells are errors unless allowed; allowed, they take the variable's learned 'unknown' vector."""
    p_all: float = 0.1
    """Training: probability of dropping every condition of a sample together (classifier-free guidance)."""
    p_each: float = 0.1
    """Training: probability of dropping each variable on its own (so any subset can be left unknown)."""

    @field_validator("p_all", "p_each")
    @classmethod
    def _probability(cls, value: float) -> float:
        if not 0.0 <= value <= 1.0:
            raise ValueError("must be a probability between 0 and 1")
        return value


class SampleConfig(Section):
    sampler: str = Field(
        "dpm++",
        description=f"One of {', '.join(SAMPLERS)} (medddpm.diffusion.samplers.SAMPLERS); "
        "unset: the process's own (dpm++ = DPM-Solver++(2M) for ddpm, near-DDPM quality in tens of steps; "
        "euler for rflow).",
    )
    steps: int = 25
    """Network evaluations per volume for the default sampler."""
    eta: float | None = Field(
        None,
        description="Sampler noise: None uses each sampler's own ("
        + ", ".join(f"{name} {entry.eta:g}" for name, entry in SAMPLERS.items())
        + "); allowed: "
        + ", ".join(f"{name} {entry.eta_bounds}" for name, entry in SAMPLERS.items())
        + ".",
    )
    batch_size: int = 4
    """Volumes denoised at once."""

    @field_validator("sampler")
    @classmethod
    def _registered(cls, name: str) -> str:
        try:
            sampler_entry(name)
        except InputError as e:
            raise ValueError(str(e)) from None
        return name

    @field_validator("steps", "batch_size")
    @classmethod
    def _at_least_one(cls, value: int) -> int:
        if value < 1:
            raise ValueError("must be at least 1")
        return value

    @field_validator("eta")
    @classmethod
    def _within_bounds(cls, eta: float | None, info: ValidationInfo) -> float | None:
        sampler = info.data.get("sampler")  # absent when the sampler itself was invalid
        if eta is not None and sampler is not None and not SAMPLERS[sampler].allows_eta(eta):
            raise ValueError(f"must be {SAMPLERS[sampler].eta_bounds} for the {sampler} sampler")
        return eta

    def with_flags(self, **flags: Any) -> SampleConfig:
        """This section (a checkpoint's) with each command-line flag that is not None on top:
        defaults < checkpoint config < flags, as ``build_config`` does for ``train``.

        ``flags`` are field names (``steps=10``); an invalid value is an InputError that names its
        flag (``--steps``), or this section's key when the flag made this section's own value invalid
        (``--sampler ddim`` with ``eta: 2`` in the checkpoint config).
        """
        given = {k: v for k, v in flags.items() if v is not None}
        try:
            return SampleConfig.model_validate({**self.model_dump(), **given})
        except ValidationError as e:
            first = e.errors()[0]
            key = str(first["loc"][0]) if first["loc"] else ""
            where = f"--{key.replace('_', '-')}" if key in given else f"sample.{key} of the checkpoint config"
            msg = first["msg"].removeprefix("Value error, ")
            raise InputError(f"invalid value for {where}: {_with_input(msg, first.get('input'))}") from None


class EvalConfig(Section):
    features: Literal["resnet10", "resnet18", "resnet34", "resnet50"] = "resnet10"
    """MedicalNet-style 3D ResNet depth for FID / MMD / PRDC features."""
    max_pairs: int = 500
    """MS-SSIM pairs per set (a seeded random subset when there are more)."""
    seed: int = 0
    """Seeds the random-init feature network and the pair subset."""
    nearest_k: int = 5
    """k for precision / recall / density / coverage (Naeem et al. 2020)."""


class AutoencoderConfig(Section):
    """``medddpm train-autoencoder``: the AutoencoderKL, its losses and its patches. The optimizer,
    steps, EMA, precision, seed and checkpointing come from the ``train`` section, as for ``train``."""

    channels: tuple[int, ...] = (64, 128, 256)
    """Feature channels per level; three levels downsample 4x per side (Rombach et al. 2022, f=4)."""
    latent_channels: int = 4
    """Channels of the latent z; 4 at f=4 keeps fine detail (Rombach et al. 2022, Table 8)."""
    num_res_blocks: int = 1
    """Residual blocks per level; one keeps 3D memory in check (MONAI's 3D LDM tutorial)."""
    norm_num_groups: int = 32
    """GroupNorm groups; must divide every entry of channels."""
    attention: bool = False
    """Self-attention at the bottleneck: its memory grows with latent voxels squared (MAISI has none)."""
    patch_size: tuple[int, int, int] = (64, 64, 64)
    """Random patches trained on (voxels, cut to data.image_size): they bound memory at any volume size."""
    kl_weight: float = 1e-7
    """KL(q(z|x) || N(0, I)) weight: just enough to keep the latent scale bounded (MAISI)."""
    adversarial_weight: float = 0.01
    """PatchGAN generator loss weight: sharpens texture that L1 blurs (MONAI's 3D LDM tutorial)."""
    adversarial_warmup_steps: int = 2000
    """Steps of L1 + KL alone before the discriminator joins: it cannot help a blurry start."""
    discriminator_channels: int = 32
    """Channels of the PatchDiscriminator's first layer (MONAI's 3D LDM tutorial)."""
    discriminator_layers: int = 3
    """Strided layers of the PatchDiscriminator: a 70-voxel receptive field."""
    discriminator_lr: float = 1e-4
    """Adam learning rate of the discriminator (constant)."""
    perceptual_weight: float = 0.001
    """Weight of the perceptual loss, used only with --perceptual medicalnet:PATH (local weights)."""
    perceptual: str | None = None
    """Perceptual loss from local weights only, 'medicalnet:PATH' (a MedicalNet ResNet file); None: none."""
    held_out: float = 0.1
    """Fraction of scans (at least one of two or more) kept out of training to measure reconstruction on."""
    slab_voxels: int = 65536
    """Output voxels per convolution call in whole-volume encoding / decoding: bounds the workspace."""

    _patch = field_validator("patch_size", mode="before")(lambda v: _triple(v, "patch_size"))

    @model_validator(mode="before")
    @classmethod
    def _drop_overlap(cls, data: Any) -> Any:
        """Configs written before slab-wise decoding have a sliding-window ``overlap``; slabs need none."""
        if isinstance(data, Mapping) and "overlap" in data:
            data = {k: v for k, v in data.items() if k != "overlap"}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> AutoencoderConfig:
        for c in self.channels:
            if c % self.norm_num_groups:
                raise ValueError(f"norm_num_groups={self.norm_num_groups} must divide channel count {c}")
        factor = 2 ** (len(self.channels) - 1)
        if any(p % factor for p in self.patch_size):
            raise ValueError(f"every side of patch_size must be a multiple of {factor} (the downsampling)")
        if self.perceptual is not None and not self.perceptual.startswith("medicalnet:"):
            raise ValueError("perceptual takes medicalnet:PATH (a local MedicalNet ResNet weights file)")
        if not 0 <= self.held_out < 1:
            raise ValueError("held_out is a fraction in [0, 1)")
        if self.slab_voxels < 1:
            raise ValueError("slab_voxels must be at least 1")
        return self


class LatentConfig(Section):
    """``model.space: latent``: the autoencoder a diffusion run works in. ``train --autoencoder AE_DIR``
    fills it; the scale factor and the weights' hash are computed by ``train`` and saved with the run."""

    autoencoder: str | None = None
    """The autoencoder folder (train-autoencoder's AE_DIR) whose EMA weights were copied into the run."""
    autoencoder_sha256: str | None = None
    """sha256 of those weights (RUN_DIR/autoencoder.safetensors): any other file is refused."""
    scale_factor: float | None = None
    """1 / std(mu) over scale_volumes scans: latents of unit variance (Rombach et al. 2022); set by train."""
    scale_volumes: int = 50
    """Volumes the scale factor is computed over (all when fewer): one volume's std is a noisy estimate."""

    @field_validator("scale_volumes")
    @classmethod
    def _at_least_one(cls, value: int) -> int:
        if value < 1:
            raise ValueError("scale_volumes must be at least 1")
        return value


class Config(Section):
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    diffusion: DiffusionConfig = DiffusionConfig()
    train: TrainConfig = TrainConfig()
    sample: SampleConfig = SampleConfig()
    conditions: ConditionsConfig = ConditionsConfig()
    eval: EvalConfig = EvalConfig()
    autoencoder: AutoencoderConfig = AutoencoderConfig()
    latent: LatentConfig = LatentConfig()

    @model_validator(mode="before")
    @classmethod
    def _sampler_follows_process(cls, data: Any) -> Any:
        """A sample section that names no sampler gets the process's default sampler and steps
        (PROCESSES: dpm++ 25 steps for ddpm, euler 30 for rflow), so changing diffusion.process
        alone gives a config that samples."""
        if not isinstance(data, Mapping):
            return data
        diffusion, sample = data.get("diffusion") or {}, data.get("sample") or {}
        if isinstance(diffusion, BaseModel):
            diffusion = diffusion.model_dump()
        if not isinstance(diffusion, Mapping) or not isinstance(sample, Mapping) or "sampler" in sample:
            return data  # a SampleConfig, or a section that names its sampler, stays as given
        name = diffusion.get("process", "ddpm")
        if name not in PROCESSES:
            return data  # DiffusionConfig reports it
        entry = PROCESSES[name]
        return {**data, "sample": {"sampler": entry.sampler, "steps": entry.steps, **sample}}

    @model_validator(mode="after")
    def _sampler_fits_process(self) -> Config:
        try:
            check_sampler_fits(self.sample.sampler, self.diffusion.process)
        except InputError as e:
            raise ValueError(f"sample.sampler: {e}") from None
        return self

    def to_dict(self) -> dict[str, Any]:
        """Plain types only (lists, not tuples), ready for YAML or JSON."""
        return self.model_dump(mode="json")


# ---------------------------------------------------------------------------------------------
# Loading, overriding, saving


def _known_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    keys = []
    for name, field in model.model_fields.items():
        keys.append(prefix + name)
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            keys.extend(_known_keys(ann, prefix + name + "."))
    return keys


def _with_input(msg: str, value: Any) -> str:
    """pydantic's message, with the offending value unless the message already names it."""
    return msg if repr(value) in msg else f"{msg} (got {value!r})"


def _explain(error: ValidationError, source: str) -> InputError:
    """Turn pydantic's report into one line that names the key and, for typos, the closest name."""
    first = error.errors()[0]
    key = ".".join(str(p) for p in first["loc"])
    if first["type"] == "extra_forbidden":
        close = difflib.get_close_matches(key, _known_keys(Config), n=1, cutoff=0.5)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        return InputError(f"unknown config key '{key}'{hint}", source)
    msg = first["msg"].removeprefix("Value error, ")
    return InputError(
        f"invalid value for '{key}': {_with_input(msg, first.get('input'))}" if key else msg, source
    )


def _deep_merge(base: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in update.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def resolve_config_path(name: str | Path) -> Path:
    """A YAML path, or the name of a preset in configs/ ('tiny', 'brain-mri-64', 'ct-128', ...)."""
    path = Path(name)
    if path.is_file():
        return path
    preset = PRESET_DIR / f"{name}.yaml"
    if preset.is_file():
        return preset
    presets = ", ".join(sorted(p.stem for p in PRESET_DIR.glob("*.yaml")))
    raise InputError(f"no such config file, nor a preset of that name (presets: {presets})", name)


def preset_header(name: str) -> dict[str, str]:
    """A preset's header comment: ``about`` (its first sentence), ``fits`` (the GPU or CPU its
    ``# fits:`` line names, "" when it names none) and ``text`` (every line, without the ``# ``)."""
    lines = []
    for line in (PRESET_DIR / f"{name}.yaml").read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line[1:].strip())
    fits = next((line.removeprefix("fits:").strip() for line in lines if line.startswith("fits:")), "")
    about = " ".join(lines).split(". ")[0].rstrip(".") + "." if lines else ""
    return {"about": about, "fits": fits, "text": "\n".join(lines)}


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise InputError(f"cannot read YAML: {str(e).splitlines()[0]}", path) from None
    if not isinstance(data, dict):
        raise InputError("a config file must be a mapping of sections (data:, model:, ...)", path)
    return data


def parse_set(assignments: Iterable[str]) -> dict[str, Any]:
    """``["train.lr=3e-4", "data.image_size=[32,32,48]"]`` -> a nested dict (values read as YAML)."""
    out: dict[str, Any] = {}
    for item in assignments:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise InputError(f"--set expects section.key=value, got '{item}'")
        parts = key.strip().split(".")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        node = out
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise InputError(f"--set '{item}' conflicts with another --set for '{p}'")
        node[parts[-1]] = value
    return out


def build_config(
    config_file: str | Path | None = None,
    overrides: Iterable[str] = (),
    flags: Mapping[str, Any] | None = None,
    *,
    saved: bool = False,
) -> Config:
    """Defaults < config file < ``--set`` overrides < flags (``{"train.max_steps": 10}``, None skipped).

    ``saved``: the file is a config a run saved (RUN_DIR/config.yaml), whose missing fields mean their
    LEGACY_VALUES (see ``with_legacy_values``).
    """
    data: dict[str, Any] = {}
    source = "command line"
    if config_file is not None:
        path = resolve_config_path(config_file)
        data = read_yaml(path)
        data = with_legacy_values(data) if saved else data
        source = f"{path} (with command-line overrides)" if overrides or flags else str(path)
    data = _deep_merge(data, parse_set(overrides))
    data = _deep_merge(data, _flags_nested(flags or {}))
    return config_from_dict(data, source)


def _flags_nested(flags: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in flags.items():
        if value is not None:
            section, name = key.split(".")
            out.setdefault(section, {})[name] = value
    return out


LEGACY_VALUES: dict[str, Any] = {
    "model.space": "pixel",
    "model.latent_channels": None,
    "diffusion.process": "ddpm",
    "diffusion.min_snr_gamma": None,
    "diffusion.rflow_shift": 1.0,
    "diffusion.rflow_timesteps": "logit-normal",
    "train.ema_warmup": False,
}
"""Fields added after configs were first saved -> what the code did before the field existed. A saved
config (RUN_DIR/config.yaml, a checkpoint's meta.json) that lacks a field was trained that way, so
``saved_config_from_dict`` fills it from here, not from today's default."""


def with_legacy_values(data: Mapping[str, Any]) -> dict[str, Any]:
    """``data`` (a saved config) with every field of LEGACY_VALUES it lacks set to its legacy value."""
    out = {k: dict(v) if isinstance(v, Mapping) else v for k, v in data.items()}
    for dotted, value in LEGACY_VALUES.items():
        section, name = dotted.split(".")
        if isinstance(out.setdefault(section, {}), dict):
            out[section].setdefault(name, value)
    return out


def saved_config_from_dict(data: Mapping[str, Any], source: str = "config") -> Config:
    """A config an earlier run saved: fields it lacks mean their LEGACY_VALUES, then the defaults."""
    return config_from_dict(with_legacy_values(data), source)


def config_from_dict(data: Mapping[str, Any], source: str = "config") -> Config:
    try:
        return Config.model_validate(dict(data))
    except ValidationError as e:
        raise _explain(e, source) from None


def load_config(path: str | Path) -> Config:
    """A config a run saved (RUN_DIR/config.yaml): missing fields mean their LEGACY_VALUES."""
    path = Path(path)
    return saved_config_from_dict(read_yaml(path), str(path))


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the config as YAML atomically: a crash never leaves a half-written config.yaml to resume from."""
    from medddpm.output_folder import atomic_path

    with atomic_path(Path(path)) as tmp:
        tmp.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def default_yaml() -> str:
    """configs/default.yaml: every field at its default, each with the reason for it as a comment."""
    lines = [
        "# Every medddpm setting at its default, with why. Copy, edit, and pass with --config.",
        "# Regenerate with: python -m medddpm.config > medddpm/configs/default.yaml",
    ]
    defaults = Config()
    for section in Config.model_fields:
        lines.append("")
        lines.append(f"{section}:")
        sub = getattr(defaults, section)
        for name, info in type(sub).model_fields.items():
            plain = to_jsonable_python(getattr(sub, name))  # also the fields written only when set
            value = yaml.safe_dump(plain, default_flow_style=True).strip()
            value = value.removesuffix("\n...").strip()
            lines.append(f"  # {info.description}" if info.description else "")
            lines.append(f"  {name}: {value}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(default_yaml(), end="")
