"""Condition variables into the U-Net: one embedding per variable, summed and added to the time
embedding, so every residual block sees them (how NVIDIA MAISI extends MONAI's DiffusionModelUNet
with spacing and body-region embeddings).

The network takes the encoding of ``medddpm.data.conditions`` as keyword arguments, the way
samplers pass ``model_kwargs`` untouched::

    model(x [B, C, *spatial], t [B], cond_values=[B, V] float, cond_known=[B, V] bool)

A variable whose ``cond_known`` is False gets its own learned "unknown" embedding: an extra row of
the category table, or a learned vector for a continuous variable. Called without conditions the
network is its unconditional model (every variable unknown): what condition dropout trains and
classifier-free guidance (``medddpm.diffusion.guidance``) calls.

Label maps (med-ddpm's paired use) are concatenated to the input instead::

    model(x, t, labels=[B, 1, *image_size] label values, labels_known=[B] bool)

``label_channels`` turns the map into channels: one-hot over the label set when it has at most
ONE_HOT_MAX values, else the bits of each voxel's index in the set; plus a "mask present" channel,
1 where the sample has a mask. A sample without one (``labels_known`` False, or no ``labels`` at all)
gets all-zero channels, which mask dropout trains as the unconditional model. The map comes at the
volume's resolution whatever the space, and is average-pooled to the resolution the network works at
(half size in wavelet space): the space is unchanged, the mask is an input of the network.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.nets import DiffusionModelUNet
from monai.networks.nets.diffusion_model_unet import get_timestep_embedding
from torch import nn


class ConditionEmbedding(nn.Module):
    """Per variable an embedding into ``dim`` (the time embedding's width), summed over variables.

    ``sizes[j]``: the number of categories of variable j (an ``nn.Embedding`` with one more row, the
    "unknown" one), or 0 for a continuous variable (a small MLP of the standardised value, and a
    learned vector for "unknown").
    """

    def __init__(self, sizes: Sequence[int], dim: int):
        super().__init__()
        self.sizes = [int(s) for s in sizes]
        self.embeds = nn.ModuleList()
        self.unknown = nn.ParameterDict()  # continuous variable j: key str(j); categorical: the last row
        for j, size in enumerate(self.sizes):
            if size > 0:
                self.embeds.append(nn.Embedding(size + 1, dim))
            else:
                self.embeds.append(nn.Sequential(nn.Linear(1, dim), nn.SiLU(), nn.Linear(dim, dim)))
                self.unknown[str(j)] = nn.Parameter(torch.randn(dim) * 0.02)

    def forward(self, values: torch.Tensor | None, known: torch.Tensor | None, batch: int) -> torch.Tensor:
        """values [B, V] float, known [B, V] bool (None: all unknown) -> [B, dim]."""
        device = next(self.parameters()).device
        if values is None or known is None:
            values = torch.zeros(batch, len(self.sizes), device=device)
            known = torch.zeros(batch, len(self.sizes), dtype=torch.bool, device=device)
        if values.shape != (batch, len(self.sizes)) or known.shape != values.shape:
            raise ValueError(
                f"conditions must be [{batch}, {len(self.sizes)}], got {tuple(values.shape)} and "
                f"{tuple(known.shape)}"
            )
        total = 0
        for j, (size, embed) in enumerate(zip(self.sizes, self.embeds, strict=True)):
            k = known[:, j].to(device)
            v = values[:, j].to(device)
            if size > 0:
                index = torch.where(k, v.long(), torch.full_like(v, size, dtype=torch.long))
                total = total + embed(index)
            else:
                e = embed(v.float().unsqueeze(1))
                unknown = self.unknown[str(j)].to(e.dtype).expand_as(e)
                total = total + torch.where(k.unsqueeze(1), e, unknown)
        return total


ONE_HOT_MAX = 8
"""Label sets up to this size are one-hot encoded; larger ones as the bits of the value's index."""


def label_channel_count(n_values: int) -> int:
    """Channels ``label_channels`` makes for a label set of ``n_values`` values (the last: present)."""
    planes = n_values if n_values <= ONE_HOT_MAX else math.ceil(math.log2(n_values))
    return planes + 1


def label_channels(
    labels: torch.Tensor, known: torch.Tensor | None, values: Sequence[int], size: Sequence[int]
) -> torch.Tensor:
    """labels [B, 1, *S] holding values of ``values`` (sorted), known [B] bool (None: all known) ->
    [B, label_channel_count(len(values)), *size] in [0, 1]: one-hot or index bits, then "present";
    rows not known are all zero. Average-pooled to ``size`` when it differs from S."""
    table = torch.as_tensor(list(values), device=labels.device, dtype=torch.float32)
    index = torch.bucketize(labels.float().contiguous(), table)[:, 0].clamp_(max=len(values) - 1)  # [B, *S]
    if len(values) <= ONE_HOT_MAX:
        planes = F.one_hot(index, len(values)).movedim(-1, 1).float()
    else:
        bits = torch.arange(label_channel_count(len(values)) - 1, device=labels.device)
        planes = ((index.unsqueeze(1) >> bits.view(1, -1, *[1] * (index.ndim - 1))) & 1).float()
    out = torch.cat([planes, torch.ones_like(planes[:, :1])], dim=1)
    if known is not None:
        out = out * known.to(out.device, out.dtype).view(-1, *[1] * (out.ndim - 1))
    if tuple(out.shape[2:]) != tuple(size):
        out = F.interpolate(out, size=tuple(size), mode="area")
    return out


class ConditionalUNet(DiffusionModelUNet):
    """MONAI's DiffusionModelUNet with ``condition_embed`` added to its time embedding, and label-map
    channels concatenated to its input.

    ``condition_sizes``: the variables (``ConditionEmbedding``; none: no embedding). ``label_values``:
    the label set of the training masks (none: no label channels; else ``in_channels`` must include
    ``label_channel_count(len(label_values))`` channels). Its state dict is the plain U-Net's plus
    ``condition_embed.*``; an unconditional model is the plain DiffusionModelUNet, so its checkpoints
    are unchanged. Attention context, class labels and ControlNet residuals of MONAI's forward are
    not used by medddpm and not taken here.
    """

    def __init__(self, condition_sizes: Sequence[int], label_values: Sequence[int] = (), **unet_kwargs):
        super().__init__(**unet_kwargs)
        self.label_values = tuple(int(v) for v in label_values)
        self.condition_embed = (
            ConditionEmbedding(condition_sizes, self.time_embed[-1].out_features) if condition_sizes else None
        )

    def forward(
        self,
        x: torch.Tensor,
        timesteps: torch.Tensor,
        cond_values: torch.Tensor | None = None,
        cond_known: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        labels_known: torch.Tensor | None = None,
    ) -> torch.Tensor:
        # 1. time (MONAI's forward, step 1), plus 2'. the conditions' embedding
        t_emb = get_timestep_embedding(timesteps, self.block_out_channels[0]).to(dtype=x.dtype)
        emb = self.time_embed(t_emb)
        if self.condition_embed is not None:
            emb = emb + self.condition_embed(cond_values, cond_known, x.shape[0]).to(emb.dtype)
        if self.label_values:  # 2''. the label map's channels beside x
            n = label_channel_count(len(self.label_values))
            if labels is None:
                extra = x.new_zeros((x.shape[0], n, *x.shape[2:]))
            else:
                extra = label_channels(labels, labels_known, self.label_values, x.shape[2:])
            x = torch.cat([x, extra.to(x.dtype)], dim=1)
        # 3.-7. MONAI's forward from the initial convolution on, without context or ControlNet inputs.
        h = self.conv_in(x)
        skips: list[torch.Tensor] = [h]
        for block in self.down_blocks:
            h, res = block(hidden_states=h, temb=emb, context=None)
            skips.extend(res)
        h = self.middle_block(hidden_states=h, temb=emb, context=None)
        for block in self.up_blocks:
            n = len(block.resnets)
            h = block(hidden_states=h, res_hidden_states_list=skips[-n:], temb=emb, context=None)
            skips = skips[:-n]
        return self.out(h)
