"""The ddpm process: the forward process and the training target of a DDPM (Ho et al. 2020).

``NoiseSchedule`` is the ``ddpm`` entry of the process registry (``medddpm.diffusion.process``):
it noises (``q_sample``), names the target (eps or v), draws training timesteps, weights the loss
(min-SNR-gamma, Hang et al. 2023, when ``min_snr_gamma`` is set) and spaces sampling timesteps.

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
from dataclasses import dataclass
from typing import ClassVar, Protocol

import torch

from medddpm.diffusion.noise import RandomSource, randint
from medddpm.errors import InputError


class ScheduleSettings(Protocol):
    """What a schedule is built from: medddpm.config.DiffusionConfig has these fields. (The config
    reads the sampler registry, so the diffusion package sits below it and never imports it.)"""

    schedule: str
    num_train_timesteps: int
    beta_start: float
    beta_end: float
    prediction: str
    min_snr_gamma: float | None  # optional: absent means None


def append_dims(x: torch.Tensor, ndim: int) -> torch.Tensor:
    """Append trailing singleton dimensions so a per-sample [B] tensor broadcasts over [B, C, *spatial]."""
    return x.reshape(x.shape + (1,) * (ndim - x.ndim))


def linear_betas(num_timesteps: int, beta_start: float, beta_end: float) -> torch.Tensor:
    """Ho et al. (2020), Sec. 4: betas rise linearly from beta_1 to beta_T."""
    return torch.linspace(beta_start, beta_end, num_timesteps, dtype=torch.float64)


def scaled_linear_betas(num_timesteps: int, beta_start: float, beta_end: float) -> torch.Tensor:
    """sqrt(beta) rises linearly (Rombach et al. 2022; MONAI's ``scaled_linear_beta``, the schedule
    of MONAI's 3D DDPM tutorial with beta 0.0005-0.0195)."""
    return torch.linspace(beta_start**0.5, beta_end**0.5, num_timesteps, dtype=torch.float64) ** 2


def cosine_betas(num_timesteps: int, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """Nichol & Dhariwal (2021), Eq. 17: alpha-bar_t = f(t)/f(0), f(t) = cos²(((t/T + s)/(1 + s)) π/2)."""
    t = torch.arange(num_timesteps + 1, dtype=torch.float64) / num_timesteps
    f = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
    alphas_cumprod = f / f[0]
    betas = 1 - alphas_cumprod[1:] / alphas_cumprod[:-1]
    return betas.clamp(max=max_beta)


def min_snr_weights(snr: torch.Tensor, gamma: float, prediction: str) -> torch.Tensor:
    """Hang et al. (2023), "Efficient Diffusion Training via Min-SNR Weighting Strategy", Eq. 8-9.

    The x_0-loss weight min(SNR_t, gamma), carried over to the target the network regresses: an
    eps-loss equals the x_0-loss divided by SNR_t, a v-loss the x_0-loss divided by SNR_t + 1, so
    the weights are min(SNR_t, gamma) / SNR_t (eps) and min(SNR_t, gamma) / (SNR_t + 1) (v).
    ``snr``: SNR_t = alpha-bar_t / (1 - alpha-bar_t), any shape; returns weights of that shape.
    """
    clipped = snr.clamp(max=gamma)
    if prediction == "eps":
        return clipped / snr
    if prediction == "v":
        return clipped / (snr + 1)
    raise ValueError(f"unknown prediction target {prediction!r}; expected 'eps' or 'v'")


def trailing_timesteps(num_timesteps: int, steps: int) -> torch.Tensor:
    """The training timesteps a ``steps``-step sampler visits: [steps] long, strictly decreasing.

    "Trailing" spacing (Lin et al. 2024, "Common Diffusion Noise Schedules and Sample Steps are
    Flawed", Table 2; diffusers ``timestep_spacing="trailing"``): t_i = round(T - i T/steps) - 1 for
    i = 0..steps-1. It starts at t = T-1, where the network was trained on (nearly) pure noise, and
    ends at T/steps - 1; "leading" spacing would start at T - T/steps and never show the network its
    noisiest input. With steps = T it visits every timestep T-1, ..., 0.
    """
    T = num_timesteps
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= T:
        raise InputError(
            f"sampling steps must be an integer between 1 and the {T} training timesteps, got {steps!r}"
        )
    # T - i (T/steps) as numpy's arange computes it, so the rounding matches diffusers bit for bit.
    t = T - torch.arange(steps, dtype=torch.float64) * (T / steps)
    return t.round().long() - 1


@dataclass(frozen=True)
class NoiseSchedule:
    """The ddpm process: alpha-bar_t for t = 0..T-1 (float64), the prediction target the network
    was trained for, and the min-SNR-gamma of its loss weights (None: unweighted)."""

    alphas_cumprod: torch.Tensor
    prediction: str = "eps"
    min_snr_gamma: float | None = None
    name: ClassVar[str] = "ddpm"

    @classmethod
    def from_config(cls, cfg: ScheduleSettings) -> NoiseSchedule:
        if cfg.schedule == "linear":
            betas = linear_betas(cfg.num_train_timesteps, cfg.beta_start, cfg.beta_end)
        elif cfg.schedule == "scaled_linear":
            betas = scaled_linear_betas(cfg.num_train_timesteps, cfg.beta_start, cfg.beta_end)
        else:
            betas = cosine_betas(cfg.num_train_timesteps)
        alphas_cumprod = torch.cumprod(1 - betas, dim=0)
        gamma = getattr(cfg, "min_snr_gamma", None)  # settings from before the weighting existed: none
        return cls(alphas_cumprod, prediction=cfg.prediction, min_snr_gamma=gamma)

    @property
    def num_timesteps(self) -> int:
        return self.alphas_cumprod.shape[0]

    @property
    def objective(self) -> str:
        """The unweighted training objective in words (audit reports)."""
        return f"{self.prediction}-prediction mean squared error"

    def draw_times(self, n: int, generator: RandomSource, device: torch.device | str) -> torch.Tensor:
        """Training timesteps t ~ U{0..T-1} (Ho et al. Algorithm 1): [n] long."""
        return randint(0, self.num_timesteps, (n,), generator, device=device)

    def network_time(self, t: torch.Tensor) -> torch.Tensor:
        """What the network's time embedding sees: the timestep index itself."""
        return t

    def sampling_times(self, steps: int) -> torch.Tensor:
        """The timesteps a ``steps``-step sampler visits (``trailing_timesteps``)."""
        return trailing_timesteps(self.num_timesteps, steps)

    def time_grid(self, count: int) -> list[int]:
        """``count`` timesteps evenly spread over 0..T-1 (the midpoints of equal parts)."""
        return sorted({int((i + 0.5) * self.num_timesteps / count) for i in range(count)})  # audit grid

    def snr(self, t: torch.Tensor) -> torch.Tensor:
        """SNR_t = alpha-bar_t / (1 - alpha-bar_t), float64, shaped like t."""
        ab = self.alphas_cumprod.to(t.device)[t]
        return ab / (1 - ab)

    def loss_weights(self, t: torch.Tensor) -> torch.Tensor | None:
        """Per-sample loss weights [B] (float32): min-SNR-gamma, or None when unweighted."""
        if self.min_snr_gamma is None:
            return None
        return min_snr_weights(self.snr(t), self.min_snr_gamma, self.prediction).float()

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


# The objective works for every process; its functions keep their old import path here.
from medddpm.diffusion.objective import denoising_errors, diffusion_loss  # noqa: E402

__all__ = ["NoiseSchedule", "diffusion_loss", "denoising_errors", "min_snr_weights", "trailing_timesteps"]
