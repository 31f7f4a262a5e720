"""The space axis: where the denoising network works.

    pixel    the preprocessed volume itself, [B, 1, *image_size] in [-1, 1]
    wavelet  its orthonormal 3D Haar transform (medddpm.models.wavelet; Friedrich et al. 2024, "WDM:
             3D Wavelet Diffusion Models for High-Resolution Medical Image Synthesis"):
             [B, 8, *image_size / 2], the low band LLL divided by 3 as WDM does, so that all 8
             channels have a comparable spread (the low band of a [-1, 1] volume spans
             [-2 sqrt 2, 2 sqrt 2] before the division)

Training encodes each batch before the loss; sampling draws x_T in the space's shape, runs any
sampler unchanged and decodes the result before the inverse intensity mapping (MONAI's
``LatentDiffusionInferer`` has the same shape). Each space also says how the sampler clips x-hat_0:
pixel clips to [-1, 1]; wavelet decodes x-hat_0, clips the volume to [-1, 1] and encodes it again
(WDM's ``process_xstart``): the nearest coefficients of a volume in range, which a per-channel box
cannot express. A new space is one ``SpaceEntry`` in ``SPACES`` plus its name in
``medddpm.config.ModelConfig.space``.

    latent   an AutoencoderKL's posterior mean times the run's scale factor s = 1 / std(mu)
             (Rombach et al. 2022): [B, latent_channels, *image_size / f]. Encoded and decoded whole,
             layer by layer in slabs (medddpm.models.autoencoder.encode_tiled / decode_tiled: exact,
             in bounded memory); decoding divides by the same s that training multiplied by
             (MONAI's 3D LDM tutorial trains with 1 / std(z) and samples with 1.0). No x-hat_0
             clipping: latents have no fixed range. Its channels and factor come from the run's
             config, its networks from the run folder (``bind``: ``config_space(cfg, run_dir)``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from medddpm.diffusion.samplers import X0_RANGE, ClipRange
from medddpm.errors import InputError
from medddpm.models.wavelet import haar_forward, haar_inverse

WDM_LOW_BAND_SCALE = 3.0
"""The low band LLL is divided by this in wavelet space (WDM: ``LLL / 3.``) and multiplied back."""


def wavelet_encode(x: torch.Tensor) -> torch.Tensor:
    """[B, 1, D, H, W] in [-1, 1] -> [B, 8, D/2, H/2, W/2]: Haar bands, low band / 3."""
    z = haar_forward(x)
    return torch.cat([z[:, :1] / WDM_LOW_BAND_SCALE, z[:, 1:]], dim=1)


def wavelet_decode(z: torch.Tensor) -> torch.Tensor:
    """[B, 8, D, H, W] -> [B, 1, 2D, 2H, 2W]: the exact inverse of ``wavelet_encode``."""
    return haar_inverse(torch.cat([z[:, :1] * WDM_LOW_BAND_SCALE, z[:, 1:]], dim=1))


def wavelet_clip(z: torch.Tensor) -> torch.Tensor:
    """x-hat_0 in wavelet space projected onto volumes in [-1, 1]: decode, clamp, encode."""
    return wavelet_encode(wavelet_decode(z).clamp(*X0_RANGE))


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def _needs_autoencoder(x: torch.Tensor) -> torch.Tensor:
    raise InputError("the latent space needs its run's autoencoder: config_space(cfg, run_dir)")


AUTOENCODER_FILE = "autoencoder.safetensors"
"""In a latent run's folder: the autoencoder's EMA weights it was trained with (sha256 in the config)."""


def latent_space(autoencoder: torch.nn.Module, scale_factor: float, ac, latent_channels: int) -> SpaceEntry:
    """The latent space of ``autoencoder`` (an AutoencoderKL built from AutoencoderConfig ``ac``):
    encode x -> s * mu(x), decode z -> D(z / s), both whole volumes layer by layer in slabs (exact)."""
    from medddpm.models.autoencoder import decode_tiled, downsampling, encode_tiled

    f = downsampling(ac)

    def encode(x: torch.Tensor) -> torch.Tensor:
        return scale_factor * encode_tiled(autoencoder.to(x.device), x, ac.slab_voxels)

    def decode(z: torch.Tensor) -> torch.Tensor:
        return decode_tiled(autoencoder.to(z.device), z / scale_factor, ac.slab_voxels)

    return replace(
        SPACES["latent"], channels=latent_channels, factor=f, encode=encode, decode=decode,
        bind=None, scale_factor=scale_factor,
    )  # fmt: skip


def bind_latent(cfg, run_dir: Path | None = None) -> SpaceEntry:
    """The latent space of a run's config: its shape alone (``run_dir`` None: encode / decode refuse),
    or with the run folder's autoencoder (its sha256 checked against the config's) and scale factor."""
    from medddpm.models.autoencoder import downsampling, load_autoencoder_file

    channels = cfg.model.latent_channels or cfg.autoencoder.latent_channels
    if run_dir is None:
        return replace(SPACES["latent"], channels=channels, factor=downsampling(cfg.autoencoder), bind=None)
    lc = cfg.latent
    if lc.scale_factor is None or lc.autoencoder_sha256 is None:
        raise InputError(
            "a latent run's config lacks latent.scale_factor or latent.autoencoder_sha256", run_dir
        )
    path = Path(run_dir) / AUTOENCODER_FILE
    autoencoder = load_autoencoder_file(path, cfg.autoencoder, lc.autoencoder_sha256)
    return latent_space(autoencoder, lc.scale_factor, cfg.autoencoder, channels)


@dataclass(frozen=True)
class SpaceEntry:
    """A space: how a batch enters it, how a sample leaves it, and its shape."""

    name: str
    channels: int
    """Channels the U-Net sees and returns."""
    factor: int
    """Each side of the volume is this many times the side the U-Net sees."""
    encode: Callable[[torch.Tensor], torch.Tensor]
    """[B, 1, *image_size] in [-1, 1] -> [B, channels, *latent_size]."""
    decode: Callable[[torch.Tensor], torch.Tensor]
    """The inverse of ``encode``."""
    clip: ClipRange
    """What samplers do to x-hat_0 (see medddpm.diffusion.samplers)."""
    description: str
    bind: Callable[..., SpaceEntry] | None = None
    """``bind(cfg, run_dir)``: the entry made for one run's config (and, with ``run_dir``, its
    networks); None: the entry is the same for every run."""
    scale_factor: float = 1.0
    """What ``encode`` multiplies the space's raw coordinates by and ``decode`` divides them by."""

    def latent_size(self, image_size: Sequence[int]) -> tuple[int, ...]:
        """The spatial size the U-Net works at, for volumes of ``image_size``."""
        return tuple(int(s) // self.factor for s in image_size)

    def check_size(self, image_size: Sequence[int], levels: int) -> None:
        """An InputError unless every side of ``image_size`` survives this space and the U-Net's
        ``levels`` resolution levels (each below the first halves it) without rounding."""
        need = self.factor * 2 ** (levels - 1)
        if any(int(s) % need for s in image_size):
            shown = "x".join(str(int(s)) for s in image_size)
            why = f"{self.name} space halves it once and " if self.factor > 1 else ""
            raise InputError(
                f"data.image_size {shown} does not fit model.space={self.name} with {levels} U-Net levels: "
                f"every side must be a multiple of {need} ({why}each level after the first halves it)"
            )


SPACES: dict[str, SpaceEntry] = {
    "pixel": SpaceEntry("pixel", 1, 1, _identity, _identity, X0_RANGE, "the volume itself"),
    "wavelet": SpaceEntry(
        "wavelet",
        8,
        2,
        wavelet_encode,
        wavelet_decode,
        wavelet_clip,
        "3D Haar wavelets, 8 channels at half size",
    ),
    "latent": SpaceEntry(
        "latent",
        0,  # the autoencoder's latent channels and downsampling: bind() reads them from the config
        1,
        _needs_autoencoder,
        _needs_autoencoder,
        None,
        "an autoencoder's latent (train --autoencoder AE_DIR), scaled to unit variance",
        bind=bind_latent,
    ),
}
"""Space names as written in the config (``model.space``)."""


def space_for(model_space: str, image_size: Sequence[int], levels: int) -> SpaceEntry:
    """The space called ``model_space``, with ``image_size`` checked against it and the U-Net's levels
    (``len(model.channels)``): an InputError, one line, when a side does not fit."""
    space = SPACES[model_space]
    space.check_size(image_size, levels)
    return space


def config_space(cfg, run_dir: str | Path | None = None) -> SpaceEntry:
    """The space of a medddpm Config (``model.space``), checked against ``data.image_size``.
    ``run_dir``: the run folder, for a space whose networks live there (latent); without it such a
    space gives its shape only."""
    space = SPACES[cfg.model.space]
    if space.bind is not None:
        space = space.bind(cfg, None if run_dir is None else Path(run_dir))
    space.check_size(cfg.data.image_size, len(cfg.model.channels))
    return space


def model_channels(mc) -> int:
    """Channels the U-Net of ModelConfig ``mc`` sees: its space's (latent: ``mc.latent_channels``)."""
    return mc.latent_channels if mc.space == "latent" else SPACES[mc.space].channels
