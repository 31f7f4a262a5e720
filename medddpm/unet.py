"""The denoising network: MONAI's DiffusionModelUNet in 3D, plus optional gradient checkpointing."""

from __future__ import annotations

import functools

import torch
from monai.networks.nets import DiffusionModelUNet
from torch.utils.checkpoint import checkpoint

from medddpm.config import ModelConfig


def build_unet(cfg: ModelConfig, spatial_dims: int = 3) -> DiffusionModelUNet:
    """A single-channel U-Net mapping (x_t [B, 1, *spatial], t [B]) to eps or v of the same shape."""
    model = DiffusionModelUNet(
        spatial_dims=spatial_dims,
        in_channels=1,
        out_channels=1,
        channels=tuple(cfg.channels),
        attention_levels=tuple(cfg.attention_levels),
        num_res_blocks=cfg.num_res_blocks,
        num_head_channels=cfg.num_head_channels,
        norm_num_groups=cfg.norm_num_groups,
        use_flash_attention=cfg.use_flash_attention,
    )
    if cfg.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    return model


def enable_gradient_checkpointing(model: DiffusionModelUNet) -> None:
    """Recompute each down, middle and up block's activations in the backward pass.

    MONAI's U-Net has no switch for this. Each block's class is swapped for a subclass whose
    ``forward`` runs under ``torch.utils.checkpoint``, so state-dict keys (and checkpoints) are the
    same with and without it, and copies (the EMA model) behave the same. Only active while
    gradients are being recorded; sampling runs the plain forward.
    """
    for block in [*model.down_blocks, model.middle_block, *model.up_blocks]:
        block.__class__ = _checkpointed(type(block))


@functools.cache
def _checkpointed(cls: type[torch.nn.Module]) -> type[torch.nn.Module]:
    if getattr(cls, "_medddpm_checkpointed", False):
        return cls

    def forward(self, *args, **kwargs):
        parent_forward = super(wrapped, self).forward
        if torch.is_grad_enabled():
            return checkpoint(parent_forward, *args, use_reentrant=False, **kwargs)
        return parent_forward(*args, **kwargs)

    wrapped = type(f"Checkpointed{cls.__name__}", (cls,), {"forward": forward, "_medddpm_checkpointed": True})
    return wrapped


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
