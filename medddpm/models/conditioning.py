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
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
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


class ConditionalUNet(DiffusionModelUNet):
    """MONAI's DiffusionModelUNet with ``condition_embed`` added to its time embedding.

    Its state dict is the plain U-Net's plus ``condition_embed.*``; an unconditional model is the plain
    DiffusionModelUNet, so its checkpoints are unchanged. Attention context, class labels and
    ControlNet residuals of MONAI's forward are not used by medddpm and not taken here.
    """

    def __init__(self, condition_sizes: Sequence[int], **unet_kwargs):
        super().__init__(**unet_kwargs)
        self.condition_embed = ConditionEmbedding(condition_sizes, self.time_embed[-1].out_features)

    def forward(
        self,
        x: torch.Tensor,
        timesteps: torch.Tensor,
        cond_values: torch.Tensor | None = None,
        cond_known: torch.Tensor | None = None,
    ) -> torch.Tensor:
        # 1. time (MONAI's forward, step 1), plus 2'. the conditions' embedding
        t_emb = get_timestep_embedding(timesteps, self.block_out_channels[0]).to(dtype=x.dtype)
        emb = self.time_embed(t_emb)
        emb = emb + self.condition_embed(cond_values, cond_known, x.shape[0]).to(emb.dtype)
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
