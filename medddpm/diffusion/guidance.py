"""Classifier-free guidance as a model wrapper (Ho & Salimans 2022), so every sampler gets it.

Convention: ``W`` weights the conditional prediction against the unconditional one,

    out = uncond + W (cond - uncond)                       (Ho & Salimans 2022, Eq. 6 with w = W - 1)

W = 1 is plain conditional sampling (returns the conditional output itself, one network call),
W = 0 unconditional sampling (the unconditional output itself, one call), W > 1 strengthens the
condition. ``rescale`` phi in [0, 1] is Lin et al. (2024, "Common Diffusion Noise Schedules and
Sample Steps are Flawed", Eq. 15-16): the guided output's standard deviation per sample is pulled
back towards the conditional output's, ``phi * out * std(cond) / std(out) + (1 - phi) * out``,
against the over-exposure that large W causes.

The unconditional output is the network called without ``model_kwargs``: a conditional network
takes missing conditions as "unknown" (condition dropout trains exactly that), as EDM's networks
take ``class_labels=None``.
"""

from __future__ import annotations

import torch

from medddpm.diffusion.samplers import Model


class Guided:
    """``Guided(model, W, rescale)(x, t, **model_kwargs)``: the guided eps or v (module docstring)."""

    def __init__(self, model: Model, scale: float, rescale: float = 0.0):
        if not 0.0 <= rescale <= 1.0:
            raise ValueError(f"guidance rescale must be between 0 and 1, got {rescale}")
        self.model, self.scale, self.rescale = model, float(scale), float(rescale)

    def __call__(self, x: torch.Tensor, t: torch.Tensor, **model_kwargs) -> torch.Tensor:
        if self.scale == 0.0 or not model_kwargs:
            return self.model(x, t)
        cond = self.model(x, t, **model_kwargs)
        if self.scale == 1.0:
            return cond
        uncond = self.model(x, t)
        out = uncond + self.scale * (cond - uncond)
        if self.rescale > 0:
            dims = tuple(range(1, out.ndim))
            ratio = cond.std(dim=dims, keepdim=True) / out.std(dim=dims, keepdim=True)
            out = self.rescale * (out * ratio) + (1 - self.rescale) * out
        return out
