"""The latent space's networks: MONAI's 3D ``AutoencoderKL`` and its ``PatchDiscriminator``, and
whole-volume encoding / decoding tile by tile.

Shapes: an image x is [B, 1, D, H, W] in [-1, 1]; its latent z is [B, latent_channels, D/f, H/f,
W/f] with f = 2 ** (len(channels) - 1) (4 for the default three levels). ``encode`` returns the
posterior mean mu (Rombach et al. 2022 keep mu, not a sample, as the latent of a scan).

``encode_tiled`` / ``decode_tiled`` take a whole volume through the network layer by layer, each
convolution in slabs with its halo and each GroupNorm with whole-volume statistics
(medddpm.models.slabs): the same result as one whole-volume pass, in the memory of one layer's
activations. (Overlapping sliding windows would not be: the AutoencoderKL's GroupNorms would
normalise each window by its own statistics.)
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from monai.networks.nets import AutoencoderKL, PatchDiscriminator

from medddpm.config import AutoencoderConfig
from medddpm.errors import InputError
from medddpm.models.slabs import decode_slabs, encode_slabs

SLAB_VOXELS = AutoencoderConfig().slab_voxels


def downsampling(ac: AutoencoderConfig) -> int:
    """Image voxels per latent voxel along each side."""
    return 2 ** (len(ac.channels) - 1)


class Autoencoder(AutoencoderKL):
    """MONAI's AutoencoderKL whose training forward pass can take its posterior noise: ``forward(x, eps)``
    decodes z = mu + eps * sigma, so that each sample's draw comes from its own seeded generator (the
    same draws however the batch is split over processes); without ``eps``, MONAI's global-RNG draw.
    Modules and weights are MONAI's own."""

    def forward(
        self, x: torch.Tensor, eps: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        z_mu, z_sigma = self.encode(x)
        z = self.sampling(z_mu, z_sigma) if eps is None else z_mu + eps * z_sigma
        return self.decode(z), z_mu, z_sigma


def build_autoencoder(ac: AutoencoderConfig) -> Autoencoder:
    """MONAI's 3D AutoencoderKL (1 channel in and out) as ``ac`` describes it; weights from the global RNG."""
    levels = len(ac.channels)
    return Autoencoder(
        spatial_dims=3,
        in_channels=1,
        out_channels=1,
        channels=tuple(ac.channels),
        latent_channels=ac.latent_channels,
        num_res_blocks=(ac.num_res_blocks,) * levels,
        attention_levels=(False,) * levels,
        norm_num_groups=ac.norm_num_groups,
        with_encoder_nonlocal_attn=ac.attention,
        with_decoder_nonlocal_attn=ac.attention,
    )


def build_discriminator(ac: AutoencoderConfig) -> PatchDiscriminator:
    """MONAI's 3D PatchDiscriminator (Isola et al. 2017) on one channel; one logit per patch."""
    return PatchDiscriminator(
        spatial_dims=3,
        channels=ac.discriminator_channels,
        in_channels=1,
        out_channels=1,
        num_layers_d=ac.discriminator_layers,
    )


def encode(autoencoder: AutoencoderKL, x: torch.Tensor) -> torch.Tensor:
    """The posterior mean mu of x [B, 1, D, H, W] -> [B, latent_channels, D/f, H/f, W/f]."""
    z_mu, _ = autoencoder.encode(x)
    return z_mu


@torch.no_grad()
def encode_tiled(autoencoder: AutoencoderKL, x: torch.Tensor, slab_voxels: int = SLAB_VOXELS) -> torch.Tensor:
    """mu of a whole volume x [B, 1, D, H, W], layer by layer in slabs of at most ``slab_voxels``
    output voxels (medddpm.models.slabs): equal to ``encode(autoencoder, x)`` in bounded memory.
    D, H and W must be multiples of the downsampling factor."""
    return encode_slabs(autoencoder, x, slab_voxels)


@torch.no_grad()
def decode_tiled(autoencoder: AutoencoderKL, z: torch.Tensor, slab_voxels: int = SLAB_VOXELS) -> torch.Tensor:
    """The image of a whole latent z [B, C, d, h, w] -> [B, 1, d*f, h*f, w*f], layer by layer in
    slabs of at most ``slab_voxels`` output voxels: equal to ``autoencoder.decode(z)`` in bounded memory."""
    return decode_slabs(autoencoder, z, slab_voxels)


def file_sha256(path: Path) -> str:
    """The sha256 of a file's bytes, read in 1 MiB blocks (hex)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_autoencoder_file(path: Path, ac: AutoencoderConfig, sha256: str | None = None) -> AutoencoderKL:
    """The AutoencoderKL of ``ac`` with the weights of the safetensors file ``path``, in eval mode.

    ``sha256``: the hash the file must have (the one recorded when a diffusion run was trained on
    it); an InputError, one line, when it differs, when the file is missing or unreadable, or when
    its tensors do not fit ``ac`` (another channel count)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise InputError("missing: the autoencoder weights this latent run was trained with", path)
    if sha256 is not None:
        found = file_sha256(path)
        if found != sha256:
            raise InputError(
                f"autoencoder weights differ from the ones the run was trained with (sha256 {found[:12]}, "
                f"expected {sha256[:12]}); use the autoencoder it was trained with, or train a new run",
                path,
            )
    try:
        state = load_file(path)
    except (SafetensorError, OSError, ValueError) as e:
        raise InputError(f"corrupt or unreadable weights ({str(e).splitlines()[0]})", path) from None
    autoencoder = build_autoencoder(ac)
    expected = autoencoder.state_dict()
    wrong = [k for k in expected if k not in state or state[k].shape != expected[k].shape]
    if wrong or len(state) != len(expected):
        k = wrong[0] if wrong else next(k for k in state if k not in expected)
        raise InputError(
            f"autoencoder weights do not fit its config (channels {list(ac.channels)}, "
            f"{ac.latent_channels} latent channels): e.g. {k}",
            path,
        )
    autoencoder.load_state_dict(state)
    return autoencoder.eval()
