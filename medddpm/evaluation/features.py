"""3D feature networks for FID: MedicalNet-format ResNets built with MONAI.

MedicalNet (Med3D, Chen et al. 2019) released 3D ResNets pretrained on 23 medical segmentation
datasets; they are the field's usual feature network for 3D FID. The networks here are MONAI's
``monai.networks.nets.resnet{10,18,34,50}`` configured as ``resnet{N}(pretrained=True)`` configures
them for MedicalNet weights: ``spatial_dims=3, n_input_channels=1, feed_forward=False`` and

    depth   shortcut_type   bias_downsample   features
    10      B               False             512
    18      A               (unused by A)     512
    34      A               (unused by A)     512
    50      B               False             2048

(the shortcut types are MedicalNet's README table; ``bias_downsample=False`` because MedicalNet's
1x1 shortcut convolutions have no bias; MONAI's ``get_medicalnet_pretrained_resnet_args`` says the
same). Features are the global average pool of the last residual stage.

MONAI's ResNet is not MedicalNet's forward pass: MedicalNet strides its first convolution by 2 and
dilates stages 3 and 4 instead of striding them; the weights fit both. Features from here therefore
match MONAI's ``resnet{N}(pretrained=True)``, not the original MedicalNet code, and an FID is
comparable only with FIDs from the same network, weights (sha256) and preprocessing.

Without weights the network is randomly initialised from a fixed seed; its FIDs are labelled
"comparable only with itself".

Weights files a user hands in are never unpickled as arbitrary objects: torch files are read with
``torch.load(weights_only=True)``, and ``.safetensors`` files with safetensors.
"""

from __future__ import annotations

import pickle
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from monai.networks.nets import resnet10, resnet18, resnet34, resnet50

from medddpm.errors import InputError
from medddpm.output_folder import sha256_of

FeatureNetName = Literal["resnet10", "resnet18", "resnet34", "resnet50"]


@dataclass(frozen=True)
class _Architecture:
    build: Callable[..., torch.nn.Module]
    shortcut_type: Literal["A", "B"]
    bias_downsample: bool
    feature_dim: int


ARCHITECTURES: dict[str, _Architecture] = {
    "resnet10": _Architecture(resnet10, "B", False, 512),
    "resnet18": _Architecture(resnet18, "A", True, 512),
    "resnet34": _Architecture(resnet34, "A", True, 512),
    "resnet50": _Architecture(resnet50, "B", False, 2048),
}

_SHOWN_KEYS = 5  # offending keys listed in an error message


def build_resnet(name: str) -> torch.nn.Module:
    """MONAI's ResNet ``name`` in MedicalNet's configuration, randomly initialised from the global RNG."""
    if name not in ARCHITECTURES:
        raise InputError(f"unknown feature network {name!r}: choose one of {', '.join(ARCHITECTURES)}")
    arch = ARCHITECTURES[name]
    return arch.build(
        pretrained=False,
        spatial_dims=3,
        n_input_channels=1,
        feed_forward=False,
        shortcut_type=arch.shortcut_type,
        bias_downsample=arch.bias_downsample,
    )


FEATURE_NORMALISATION = "each volume z-scored over every voxel (MONAI's medicalnet_intensity_normalisation)"
"""How volumes are normalised before the feature network, as metrics.json records it."""


def medicalnet_normalize(volumes: torch.Tensor) -> torch.Tensor:
    """Per-volume z-score over every voxel: MONAI's ``medicalnet_intensity_normalisation`` (the
    normalisation ``monai.losses.PerceptualLoss`` gives MedicalNet networks), one volume at a time.

    volumes: [N, 1, D, H, W] on any intensity scale. A constant volume is only shifted (to 0).

    Why every voxel: a z-score over the nonzero voxels alone (MedicalNet's own training data, and
    medddpm before) jumps when a background that was exactly 0 becomes 0.001: the background then
    joins the statistics and is z-scored far below 0. Real scans scaled to [0, 1] have exact-zero
    backgrounds and synthetic ones almost never do, so features, FID and coverage then mostly
    measured that (benchmarks/RESULTS.md, "Features"). The whole-volume z-score moves smoothly with
    the intensities.
    """
    from monai.losses.perceptual import medicalnet_intensity_normalisation

    out = []
    for v in volumes.float():
        out.append(medicalnet_intensity_normalisation(v) if bool(v.std() > 0) else v - v.mean())
    return torch.stack(out) if out else volumes.float()


@dataclass
class FeatureExtractor:
    """A feature network in eval mode with the provenance a report needs.

    label: how reports name the features, e.g. "MedicalNet resnet10 (sha256 0123456789ab…)" or
    "random-init resnet10 (seed 0): comparable only with itself".
    """

    model: torch.nn.Module
    name: str
    label: str
    weights_sha256: str | None
    feature_dim: int
    device: torch.device
    memory_format: torch.memory_format = torch.contiguous_format
    """Layout of the weights and inputs: channels-last 3D on CPU, where oneDNN's 3D convolutions run
    about 1.6x faster in it (benchmarks/RESULTS.md, audit); the features agree to float rounding."""

    def extract(self, volumes: torch.Tensor, batch_size: int = 4) -> np.ndarray:
        """Features [N, feature_dim] (float64) of volumes [N, 1, D, H, W].

        Each volume is z-scored first (medicalnet_normalize), so inputs on [0, 1], [-1, 1] or in HU
        give features on one footing. Runs in eval mode without gradients, batch_size volumes at a time.
        """
        if volumes.ndim != 5 or volumes.shape[1] != 1:
            raise ValueError(f"expected volumes [N, 1, D, H, W], got shape {tuple(volumes.shape)}")
        if not torch.isfinite(volumes).all():
            raise ValueError("volumes contain non-finite values")
        self.model.eval()
        out = []
        with torch.inference_mode():
            for start in range(0, volumes.shape[0], batch_size):
                batch = medicalnet_normalize(volumes[start : start + batch_size]).to(self.device)
                batch = batch.contiguous(memory_format=self.memory_format)
                out.append(self.model(batch).cpu().double())
        if not out:
            return np.zeros((0, self.feature_dim))
        return torch.cat(out).numpy()


def _read_weights_file(path: Path) -> dict[str, torch.Tensor]:
    """The raw state dict of a MedicalNet checkpoint ({"state_dict": ...}), a state dict or safetensors."""
    expected = "expected a MedicalNet checkpoint (a torch file holding 'state_dict') or a .safetensors file"
    if not path.is_file():
        raise InputError("feature-network weights not found (no such file)", path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(path, device="cpu")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns about pickle protocols before refusing or loading
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise InputError(
            "refused to load feature-network weights: the file asks to build objects other than tensors "
            "(it could run code when unpickled), so it was not unpickled",
            path,
        ) from None
    except EOFError:
        raise InputError(
            f"cannot read feature-network weights: the file is empty or truncated; {expected}", path
        ) from None
    except Exception as e:  # corrupt zip, not a pickle at all, bad safetensors header, ...
        detail = str(e).strip().splitlines()[0].split(". ")[0][:160] if str(e).strip() else ""
        reason = f"{type(e).__name__}: {detail}" if detail else type(e).__name__
        raise InputError(
            f"cannot read feature-network weights, not a readable checkpoint ({reason}); {expected}", path
        ) from None

    if isinstance(obj, dict) and "state_dict" in obj:
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise InputError(f"no tensor state dict in the file; {expected}", path)
    return obj


def load_medicalnet_weights(model: torch.nn.Module, path: str | Path) -> str:
    """Load MedicalNet-format weights into ``model``; return the file's sha256.

    Keys lose a leading ``module.`` (DataParallel), the segmentation head ``conv_seg.*`` is dropped,
    and the rest must match the model exactly: missing or unexpected keys and shape mismatches are
    InputErrors naming the file and the first offending keys. BatchNorm ``num_batches_tracked``
    counters may be absent (older PyTorch); they do not affect eval-mode features.
    """
    path = Path(path)
    raw = _read_weights_file(path)
    state = {}
    for key, value in raw.items():
        key = key.removeprefix("module.")
        if not key.startswith("conv_seg."):
            state[key] = value

    own = model.state_dict()
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    mismatched = [
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    problems = []
    for what, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", mismatched)):
        if keys:
            more = f" and {len(keys) - _SHOWN_KEYS} more" if len(keys) > _SHOWN_KEYS else ""
            problems.append(f"{what}: {', '.join(keys[:_SHOWN_KEYS])}{more}")
    if problems:
        raise InputError(
            f"weights do not fit this feature network ({'; '.join(problems)}); "
            "check that --features names the checkpoint's depth",
            path,
        )
    for key in own:
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = own[key]
    model.load_state_dict(state, strict=True)
    return sha256_of(path)


def build_feature_extractor(
    name: FeatureNetName = "resnet10",
    weights: str | Path | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> FeatureExtractor:
    """A MedicalNet-style 3D ResNet feature extractor, from ``weights`` or randomly initialised.

    Random initialisation runs under ``torch.random.fork_rng`` seeded with ``seed`` on the CPU, so
    the same seed gives the same weights on every machine and the caller's RNG state is untouched.
    With ``weights`` (a MedicalNet ``.pth``/``.pt`` checkpoint or ``.safetensors``), see
    load_medicalnet_weights; ``seed`` is then irrelevant.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_resnet(name)
    if weights is None:
        sha, label = None, f"random-init {name} (seed {seed}): comparable only with itself"
    else:
        sha = load_medicalnet_weights(model, weights)
        label = f"MedicalNet {name} (sha256 {sha[:12]}…)"
    device = torch.device(device)
    memory_format = torch.channels_last_3d if device.type == "cpu" else torch.contiguous_format
    model = model.to(device, memory_format=memory_format).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return FeatureExtractor(
        model=model,
        name=name,
        label=label,
        weights_sha256=sha,
        feature_dim=ARCHITECTURES[name].feature_dim,
        device=device,
        memory_format=memory_format,
    )
