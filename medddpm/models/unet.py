"""The denoising network: MONAI's DiffusionModelUNet in 3D, plus optional gradient checkpointing."""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
from monai.networks.nets import DiffusionModelUNet
from torch.utils.checkpoint import checkpoint

from medddpm.config import ModelConfig
from medddpm.models.spaces import model_channels


def build_unet(
    cfg: ModelConfig,
    spatial_dims: int = 3,
    condition_sizes: Sequence[int] = (),
    label_values: Sequence[int] = (),
) -> DiffusionModelUNet:
    """A U-Net mapping (x_t [B, C, *spatial], t [B]) to the process's target of the same shape;
    C is the channels of ``cfg.space`` (pixel 1, wavelet 8, latent ``cfg.latent_channels``).

    ``condition_sizes``: per condition variable, its number of categories or 0 for a continuous one
    (``medddpm.data.conditions.ConditionSpec.sizes``); with any, the network is a ConditionalUNet
    that also takes ``cond_values`` and ``cond_known`` (``medddpm.models.conditioning``). Without,
    it is MONAI's DiffusionModelUNet itself. ``label_values``: the label set of training masks; with
    any, the network also takes ``labels`` and ``labels_known`` and sees their channels beside x.
    """
    channels = model_channels(cfg)
    extra = 0
    if label_values:
        from medddpm.models.conditioning import label_channel_count

        extra = label_channel_count(len(label_values))
    kwargs = dict(
        spatial_dims=spatial_dims,
        in_channels=channels + extra,
        out_channels=channels,
        channels=tuple(cfg.channels),
        attention_levels=tuple(cfg.attention_levels),
        num_res_blocks=cfg.num_res_blocks,
        num_head_channels=cfg.num_head_channels,
        norm_num_groups=cfg.norm_num_groups,
        use_flash_attention=cfg.use_flash_attention,
    )
    if condition_sizes or label_values:
        from medddpm.models.conditioning import ConditionalUNet

        model: DiffusionModelUNet = ConditionalUNet(condition_sizes, label_values, **kwargs)
    else:
        model = DiffusionModelUNet(**kwargs)
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


def preferred_memory_format(device: torch.device) -> torch.memory_format:
    """Layout for the U-Net's weights and activations when training or sampling on ``device``.

    CPU: channels-last (NDHWC), in which oneDNN's 3D convolutions (most of a training step and of a
    sampler's network evaluation) run faster; see ``to_memory_format`` and benchmarks/RESULTS.md
    ("Training throughput", "Sampling on CPU"). CUDA: the default layout, as
    channels-last 3D has been reported slower there with GroupNorm
    (``benchmarks/bench_train.py --compare-layouts`` measures it).
    """
    return torch.channels_last_3d if device.type == "cpu" else torch.contiguous_format


def to_memory_format(
    model: DiffusionModelUNet, memory_format: torch.memory_format | None = None
) -> DiffusionModelUNet:
    """Put the weights, and so the activations, in ``memory_format`` (None: the layout
    ``preferred_memory_format`` gives the device the weights are on); returns ``model``.

    For channels-last 3D every down, middle and up block also returns its outputs in that layout
    (a forward hook): MONAI's attention blocks end in ``.contiguous()``, which would put all later
    layers back in NCDHW and make each convolution convert its input and gradients. Results are
    the same up to float rounding; state-dict keys and checkpoints do not change.
    """
    if memory_format is None:
        memory_format = preferred_memory_format(next(model.parameters()).device)
    model.to(memory_format=memory_format)
    if memory_format == torch.channels_last_3d and not getattr(model, "_medddpm_channels_last", False):
        for block in [*model.down_blocks, model.middle_block, *model.up_blocks]:
            block.register_forward_hook(_outputs_channels_last)
        model._medddpm_channels_last = True
    return model


def _outputs_channels_last(module: torch.nn.Module, args: tuple, output):
    def convert(x):
        if isinstance(x, torch.Tensor) and x.dim() == 5:
            return x.contiguous(memory_format=torch.channels_last_3d)
        if isinstance(x, (list, tuple)):
            return type(x)(convert(v) for v in x)
        return x

    return convert(output)


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
