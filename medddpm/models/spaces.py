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
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

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
}
"""Space names as written in the config (``model.space``)."""


def space_for(model_space: str, image_size: Sequence[int], levels: int) -> SpaceEntry:
    """The space called ``model_space``, with ``image_size`` checked against it and the U-Net's levels
    (``len(model.channels)``): an InputError, one line, when a side does not fit."""
    space = SPACES[model_space]
    space.check_size(image_size, levels)
    return space


def config_space(cfg) -> SpaceEntry:
    """The space of a medddpm Config (``model.space``), checked against ``data.image_size``."""
    return space_for(cfg.model.space, cfg.data.image_size, len(cfg.model.channels))
