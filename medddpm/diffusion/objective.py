"""The training objective of every process: draw t and eps, noise, regress the process's target.

``process`` is an entry of ``medddpm.diffusion.process.PROCESSES`` (a NoiseSchedule for ddpm, a
RectifiedFlow for rflow): it draws t, noises x_0 into x_t, names the target, says what the network's
time input is and, optionally, weights each sample's loss. Nothing here branches on which process.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import torch

from medddpm.diffusion.noise import RandomSource, randn


class Process(Protocol):
    """What every process provides (see the module docstring). Times are [B] tensors: long
    timestep indices for ddpm, floats in [0, 1] for rflow; only the process itself reads them."""

    name: str
    prediction: str
    num_timesteps: int

    @property
    def objective(self) -> str: ...
    def draw_times(self, n: int, generator: RandomSource, device: torch.device | str) -> torch.Tensor: ...
    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor: ...
    def target(self, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor: ...
    def loss_weights(self, t: torch.Tensor) -> torch.Tensor | None: ...
    def network_time(self, t: torch.Tensor) -> torch.Tensor: ...
    def sampling_times(self, steps: int) -> torch.Tensor: ...
    def time_grid(self, count: int) -> list: ...


def diffusion_loss(
    model: torch.nn.Module,
    process: Process,
    x0: torch.Tensor,
    generator: RandomSource = None,
    model_kwargs: Mapping[str, Any] | None = None,
) -> torch.Tensor:
    """Ho et al. Algorithm 1 for any process: t ~ the process's law, eps ~ N(0, I),
    loss = mean over samples of w_t ||target - model(x_t, t)||² (w_t = 1 unless the process weights).

    x0: [B, C, *spatial], in the space the network works in. ``generator``: None (torch's global
    one), one for the batch, or a PerSampleGenerator (then a sample's t and eps do not depend on
    which batch, or which process, it lands in). Each generator draws t first, then eps.
    ``model_kwargs`` go to the model untouched (conditioning). Returns a scalar float32 loss.
    """
    t = process.draw_times(x0.shape[0], generator, x0.device)
    eps = randn(x0.shape, generator, dtype=x0.dtype, device=x0.device)
    xt = process.q_sample(x0, t, eps)
    prediction = model(xt, process.network_time(t), **(model_kwargs or {}))
    target = process.target(x0, t, eps)
    weights = process.loss_weights(t)
    if weights is None:
        return torch.nn.functional.mse_loss(prediction.float(), target.float())
    per_sample = ((prediction.float() - target.float()) ** 2).flatten(1).mean(dim=1)
    return (weights.to(per_sample.device) * per_sample).mean()


def denoising_errors(
    model: torch.nn.Module, process: Process, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor
) -> torch.Tensor:
    """The unweighted objective at given t [B] and eps (shaped like x0), per sample: float32 [B].

    Row i is ||target - model(x_t, t)||² averaged over its elements, so for an unweighted process
    the mean of the rows is ``diffusion_loss`` drawn with the same t and eps. Fixing t and eps makes
    the loss of one scan comparable with another's (the membership signal of ``medddpm audit``).
    """
    xt = process.q_sample(x0, t, eps)
    error = (model(xt, process.network_time(t)).float() - process.target(x0, t, eps).float()) ** 2
    return error.flatten(1).mean(dim=1)
