"""An AutoencoderKL run layer by layer over a whole volume, exactly, in bounded memory.

Each convolution is computed on slabs of output rows along the first spatial axis (D), every slab
reading the input rows its kernel needs (the halo) with the zero padding the whole tensor would
have had; each GroupNorm's mean and variance are accumulated over the whole tensor, chunk by chunk
(two passes, float64), and then applied to each slab as it is read; each nearest-neighbour upsampling
happens inside the slab the following convolution reads. NVIDIA MAISI's autoencoder splits its
convolutions and GroupNorms the same way. The result equals one whole-volume pass up to float
rounding, whatever the slab size: unlike overlapping sliding windows, whose GroupNorms normalise
each window by its own statistics.

Memory: the activations of one layer are held whole ([B, C, D, H, W]: a ResBlock's input, its middle
and its output), never a whole layer's convolution workspace (CPU im2col: C_in x 27 x voxels
x 4 bytes; cuDNN workspaces), nor the upsampled copy a convolution reads, nor the normalised and
SiLU copies: those exist for one slab of at most ``slab_voxels`` output voxels (at least one row
of D, so H x W voxels).

Self-attention blocks (``autoencoder.attention``, off by default) attend over every voxel at once:
they run on the whole tensor at the bottleneck, with the memory of a whole pass there.

Every module of MONAI's AutoencoderKL has one rule in ``LAYERS``; any other module is a bug here
(NotImplementedError), never a silent approximation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from math import prod

import torch
import torch.nn.functional as F
from monai.networks.blocks import Convolution, SpatialAttentionBlock
from monai.networks.blocks.upsample import UpSample
from monai.networks.nets.autoencoderkl import AEKLDownsample, AEKLResBlock, AutoencoderKL
from torch import nn

Pointwise = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Activation:
    """A layer's output as the next layer reads it: ``base`` [B, C, D, H, W] held whole, read row by
    row along D through ``pointwise`` (elementwise maps: a GroupNorm with whole-tensor statistics,
    SiLU) and then repeated ``upsample`` times along every spatial axis (nearest neighbour)."""

    base: torch.Tensor
    pointwise: tuple[Pointwise, ...] = ()
    upsample: int = 1

    @property
    def shape(self) -> tuple[int, ...]:
        b, c, *spatial = self.base.shape
        return (b, c, *(s * self.upsample for s in spatial))

    def rows(self, start: int, stop: int) -> torch.Tensor:
        """Rows [start, stop) along D, as a tensor [B, C, stop - start, H, W]."""
        u = self.upsample
        low, high = start // u, -(-stop // u)
        x = self.base[:, :, low:high]
        for f in self.pointwise:
            x = f(x)
        if u > 1:  # nearest: output voxel i reads input voxel floor(i / u), as nn.Upsample does
            x = F.interpolate(x, scale_factor=u, mode="nearest")[:, :, start - low * u : stop - low * u]
        return x

    def whole(self) -> torch.Tensor:
        return self.rows(0, self.shape[2])

    def then(self, f: Pointwise) -> Activation:
        """This activation with ``f`` applied to every voxel (it commutes with nearest upsampling)."""
        return replace(self, pointwise=(*self.pointwise, f))


def _chunks(rows: int, plane: int, slab_voxels: int) -> list[tuple[int, int]]:
    """[start, stop) row ranges of at most ``slab_voxels`` voxels (at least one row) covering ``rows``."""
    step = max(1, slab_voxels // plane)
    return [(a, min(a + step, rows)) for a in range(0, rows, step)]


# ---------------------------------------------------------------------------------------------
# The three operations: convolution by slabs, GroupNorm by chunks, SiLU


def _padding(conv: nn.Conv3d, extra: Sequence[tuple[int, int]] | None) -> list[tuple[int, int]]:
    """(before, after) zero padding per spatial axis: the convolution's own plus ``extra``."""
    if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
        raise NotImplementedError(f"slab-wise convolution needs integer zero padding, not {conv.padding}")
    extra = extra or [(0, 0)] * 3
    return [(p + lo, p + hi) for p, (lo, hi) in zip(conv.padding, extra, strict=True)]


def _conv_rows(conv: nn.Conv3d, x: Activation, pad: Sequence[tuple[int, int]], start: int, stop: int):
    """Output rows [start, stop) along D of ``conv`` applied to ``x`` zero-padded by ``pad``.

    Output row o reads padded input rows o*s .. o*s + d*(k-1): input rows o*s - pad_before on."""
    (k, s, d), n = (conv.kernel_size[0], conv.stride[0], conv.dilation[0]), x.shape[2]
    first = start * s - pad[0][0]
    last = (stop - 1) * s + d * (k - 1) + 1 - pad[0][0]  # exclusive
    slab = x.rows(max(first, 0), min(last, n))
    (h0, h1), (w0, w1) = pad[1], pad[2]
    slab = F.pad(slab, (w0, w1, h0, h1, max(0, -first), max(0, last - n)))
    return F.conv3d(
        slab, conv.weight, conv.bias, stride=conv.stride, dilation=conv.dilation, groups=conv.groups
    )


def conv(
    conv: nn.Conv3d,
    x: Activation,
    slab_voxels: int,
    extra_padding: Sequence[tuple[int, int]] | None = None,
    add: Callable[[int, int], torch.Tensor] | None = None,
) -> torch.Tensor:
    """``conv`` over the whole of ``x`` (plus ``extra_padding`` zeros per side), computed in slabs of
    at most ``slab_voxels`` output voxels; ``add(start, stop)``: rows to add to each output slab
    (a residual). The output [B, C_out, D', H', W'] is the only whole tensor made."""
    pad = _padding(conv, extra_padding)
    size = [
        (n + lo + hi - d * (k - 1) - 1) // s + 1
        for n, (lo, hi), k, s, d in zip(
            x.shape[2:], pad, conv.kernel_size, conv.stride, conv.dilation, strict=True
        )
    ]
    out = None
    for start, stop in _chunks(size[0], prod(size[1:]), slab_voxels):
        y = _conv_rows(conv, x, pad, start, stop)
        if add is not None:
            y = y + add(start, stop)
        if out is None:
            out = y.new_empty(y.shape[0], y.shape[1], *size)
        out[:, :, start:stop] = y
    assert out is not None
    return out


def group_norm(norm: nn.GroupNorm, x: Activation, slab_voxels: int) -> Activation:
    """``x`` to be read through ``norm``: mean and (biased) variance per sample and group over the
    whole tensor, accumulated chunk by chunk in float64 (mean first, then squared deviations)."""
    b, c, *spatial = x.shape
    g = norm.num_groups
    chunks = _chunks(spatial[0], prod(spatial[1:]), slab_voxels)
    count = c // g * prod(spatial)

    def grouped(start: int, stop: int) -> torch.Tensor:
        return x.rows(start, stop).double().reshape(b, g, -1)

    mean = sum(grouped(*r).sum(dim=-1) for r in chunks) / count
    var = sum(((grouped(*r) - mean[..., None]) ** 2).sum(dim=-1) for r in chunks) / count
    scale = torch.rsqrt(var + norm.eps).repeat_interleave(c // g, dim=1)  # [B, C]
    shift = -mean.repeat_interleave(c // g, dim=1) * scale
    if norm.affine:
        scale, shift = scale * norm.weight.double(), shift * norm.weight.double() + norm.bias.double()
    scale, shift = (t.float().reshape(b, c, 1, 1, 1) for t in (scale, shift))
    return x.then(lambda t: torch.addcmul(shift, t.float(), scale))


def silu(x: Activation) -> Activation:
    return x.then(F.silu)


# ---------------------------------------------------------------------------------------------
# One rule per module of MONAI's AutoencoderKL


def _inner_conv(module: nn.Module) -> nn.Conv3d:
    """The Conv3d of a MONAI ``Convolution(conv_only=True)``."""
    names = [name for name, _ in module.named_children()]
    if names != ["conv"] or not isinstance(module.conv, nn.Conv3d):
        raise NotImplementedError(f"slab-wise rules cover conv_only 3D Convolutions, not one with {names}")
    return module.conv


def _convolution(module: Convolution, x: Activation, slab_voxels: int) -> Activation:
    return Activation(conv(_inner_conv(module), x, slab_voxels))


def _group_norm(module: nn.GroupNorm, x: Activation, slab_voxels: int) -> Activation:
    return group_norm(module, x, slab_voxels)


def _res_block(block: AEKLResBlock, x: Activation, slab_voxels: int) -> Activation:
    """norm1 -> SiLU -> conv1 -> norm2 -> SiLU -> conv2, plus the shortcut of x (identity or 1x1)."""
    h = Activation(conv(_inner_conv(block.conv1), silu(group_norm(block.norm1, x, slab_voxels)), slab_voxels))
    h = silu(group_norm(block.norm2, h, slab_voxels))
    if isinstance(block.nin_shortcut, nn.Identity):
        shortcut = x.rows
    else:
        one = _inner_conv(block.nin_shortcut)
        if one.kernel_size != (1, 1, 1) or one.stride != (1, 1, 1):
            raise NotImplementedError("slab-wise ResBlocks need a 1x1x1 shortcut")
        pad = _padding(one, None)

        def shortcut(start: int, stop: int) -> torch.Tensor:
            return _conv_rows(one, x, pad, start, stop)

    return Activation(conv(_inner_conv(block.conv2), h, slab_voxels, add=shortcut))


def _downsample(block: AEKLDownsample, x: Activation, slab_voxels: int) -> Activation:
    """AsymmetricPad (one zero after each side), then the strided convolution."""
    pad = block.pad.pad  # F.pad order: (W before, W after, H before, H after, D before, D after)
    extra = [(pad[4], pad[5]), (pad[2], pad[3]), (pad[0], pad[1])]
    return Activation(conv(_inner_conv(block.conv), x, slab_voxels, extra_padding=extra))


def _upsample(block: UpSample, x: Activation, slab_voxels: int) -> Activation:
    """Nearest-neighbour upsampling by an integer factor, done inside the slabs ``postconv`` reads."""
    children = dict(block.named_children())
    up = children.get("upsample_non_trainable")
    if set(children) != {"upsample_non_trainable", "postconv"} or up.mode != "nearest":
        raise NotImplementedError(
            f"slab-wise rules cover nearest upsampling + postconv, not {list(children)}"
        )
    scale = up.scale_factor if isinstance(up.scale_factor, tuple) else (up.scale_factor,) * 3
    if len(set(scale)) != 1 or float(scale[0]) != int(scale[0]):
        raise NotImplementedError(f"slab-wise upsampling needs one integer factor, not {up.scale_factor}")
    factor = int(scale[0])
    return Activation(
        conv(_inner_conv(block.postconv), replace(x, upsample=x.upsample * factor), slab_voxels)
    )


def _attention(block: SpatialAttentionBlock, x: Activation, slab_voxels: int) -> Activation:
    """Attention is global: the block runs on the whole tensor (at the bottleneck)."""
    return Activation(block(x.whole()))


def _identity(module: nn.Identity, x: Activation, slab_voxels: int) -> Activation:
    return x


LAYERS: dict[type[nn.Module], Callable[[nn.Module, Activation, int], Activation]] = {
    Convolution: _convolution,
    nn.GroupNorm: _group_norm,
    AEKLResBlock: _res_block,
    AEKLDownsample: _downsample,
    UpSample: _upsample,
    SpatialAttentionBlock: _attention,
    nn.Identity: _identity,
}
"""How each module of MONAI's AutoencoderKL runs over a whole tensor slab by slab."""


@torch.no_grad()
def run_layers(modules: Sequence[nn.Module], x: torch.Tensor, slab_voxels: int) -> torch.Tensor:
    """``modules`` applied in turn to x [B, C, D, H, W], each by its rule in ``LAYERS``."""
    if slab_voxels < 1:
        raise ValueError("slab_voxels must be at least 1")
    a = Activation(x)
    for module in modules:
        rule = LAYERS.get(type(module))
        if rule is None:
            raise NotImplementedError(f"no slab-wise rule for {type(module).__name__}")
        a = rule(module, a, slab_voxels)
    return a.whole()


def encode_slabs(autoencoder: AutoencoderKL, x: torch.Tensor, slab_voxels: int) -> torch.Tensor:
    """The posterior mean mu of x [B, 1, D, H, W]: ``autoencoder.encode(x)[0]``, slab by slab."""
    return run_layers([*autoencoder.encoder.blocks, autoencoder.quant_conv_mu], x, slab_voxels)


def decode_slabs(autoencoder: AutoencoderKL, z: torch.Tensor, slab_voxels: int) -> torch.Tensor:
    """The image of latent z [B, C, d, h, w]: ``autoencoder.decode(z)``, slab by slab."""
    return run_layers([autoencoder.post_quant_conv, *autoencoder.decoder.blocks], z, slab_voxels)
