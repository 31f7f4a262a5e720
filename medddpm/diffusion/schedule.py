"""The forward process and the training objective of a DDPM (Ho et al. 2020).

Notation (paper symbol -> code name):

    beta_t                      betas[t]
    alpha_t = 1 - beta_t        alphas[t]
    alpha-bar_t = prod alpha_s  alphas_cumprod[t]
    x_0, x_t                    x0, xt
    epsilon                     eps
    v (Salimans & Ho 2022)      v = sqrt(alpha-bar_t) eps - sqrt(1 - alpha-bar_t) x_0

Schedules are computed in float64 and cast only when they meet a tensor, so that 1 - alpha-bar_t
stays accurate near t = 0. Timesteps are 0-indexed: t = 0 is the least noisy step.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from medddpm.diffusion.noise import RandomSource, randint, randn


class ScheduleSettings(Protocol):
    """What a schedule is built from: medddpm.config.DiffusionConfig has these fields. (The config
    reads the sampler registry, so the diffusion package sits below it and never imports it.)"""

    schedule: str
    num_train_timesteps: int
    beta_start: float
    beta_end: float
    prediction: str


def append_dims(x: torch.Tensor, ndim: int) -> torch.Tensor:
    """Append trailing singleton dimensions so a per-sample [B] tensor broadcasts over [B, C, *spatial]."""
    return x.reshape(x.shape + (1,) * (ndim - x.ndim))


def linear_betas(num_timesteps: int, beta_start: float, beta_end: float) -> torch.Tensor:
    """Ho et al. (2020), Sec. 4: betas rise linearly from beta_1 to beta_T."""
    return torch.linspace(beta_start, beta_end, num_timesteps, dtype=torch.float64)


def cosine_betas(num_timesteps: int, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """Nichol & Dhariwal (2021), Eq. 17: alpha-bar_t = f(t)/f(0), f(t) = cos²(((t/T + s)/(1 + s)) π/2)."""
    t = torch.arange(num_timesteps + 1, dtype=torch.float64) / num_timesteps
    f = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
    alphas_cumprod = f / f[0]
    betas = 1 - alphas_cumprod[1:] / alphas_cumprod[:-1]
    return betas.clamp(max=max_beta)


@dataclass(frozen=True)
class NoiseSchedule:
    """alpha-bar_t for t = 0..T-1 (float64) and the prediction target the network was trained for."""

    alphas_cumprod: torch.Tensor
    prediction: str = "eps"

    @classmethod
    def from_config(cls, cfg: ScheduleSettings) -> NoiseSchedule:
        if cfg.schedule == "linear":
            betas = linear_betas(cfg.num_train_timesteps, cfg.beta_start, cfg.beta_end)
        else:
            betas = cosine_betas(cfg.num_train_timesteps)
        return cls(alphas_cumprod=torch.cumprod(1 - betas, dim=0), prediction=cfg.prediction)

    @property
    def num_timesteps(self) -> int:
        return self.alphas_cumprod.shape[0]

    def coefficients(self, t: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """sqrt(alpha-bar_t) and sqrt(1 - alpha-bar_t), shaped to broadcast against ``like``."""
        ab = self.alphas_cumprod.to(t.device)[t]
        a = append_dims(ab.sqrt(), like.ndim).to(like.dtype)
        s = append_dims((1 - ab).sqrt(), like.ndim).to(like.dtype)
        return a, s

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """Eq. 4 of Ho et al.: x_t = sqrt(alpha-bar_t) x_0 + sqrt(1 - alpha-bar_t) eps."""
        a, s = self.coefficients(t, x0)
        return a * x0 + s * eps

    def target(self, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """What the network regresses: eps (Ho et al. Eq. 14) or v (Salimans & Ho 2022, Sec. 4)."""
        if self.prediction == "eps":
            return eps
        a, s = self.coefficients(t, x0)
        return a * eps - s * x0


def diffusion_loss(
    model: torch.nn.Module,
    schedule: NoiseSchedule,
    x0: torch.Tensor,
    generator: RandomSource = None,
    model_kwargs: Mapping[str, Any] | None = None,
) -> torch.Tensor:
    """Ho et al. Algorithm 1: t ~ U{0..T-1}, eps ~ N(0, I), loss = ||target - model(x_t, t)||² (mean).

    x0: [B, C, *spatial] in [-1, 1]. ``generator``: None (torch's global one), one for the batch, or
    a PerSampleGenerator (then a sample's t and eps do not depend on which batch, or which process,
    it lands in). Each generator draws t first, then eps. ``model_kwargs`` go to the model untouched
    (conditioning). Returns a scalar float32 loss.
    """
    t = randint(0, schedule.num_timesteps, (x0.shape[0],), generator, device=x0.device)
    eps = randn(x0.shape, generator, dtype=x0.dtype, device=x0.device)
    xt = schedule.q_sample(x0, t, eps)
    prediction = model(xt, t, **(model_kwargs or {}))
    return torch.nn.functional.mse_loss(prediction.float(), schedule.target(x0, t, eps).float())


def denoising_errors(
    model: torch.nn.Module, schedule: NoiseSchedule, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor
) -> torch.Tensor:
    """The training objective at given t [B] and eps (shaped like x0), per sample: float32 [B].

    Row i is ||target - model(x_t, t)||² averaged over its elements, so the mean of the rows is
    ``diffusion_loss`` drawn with the same t and eps. Fixing t and eps makes the loss of one scan
    comparable with another's (the membership signal of ``medddpm audit``).
    """
    xt = schedule.q_sample(x0, t, eps)
    error = (model(xt, t).float() - schedule.target(x0, t, eps).float()) ** 2
    return error.flatten(1).mean(dim=1)
