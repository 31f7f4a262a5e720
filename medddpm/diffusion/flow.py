"""The rflow process: rectified flow (Liu et al. 2022, "Flow Straight and Fast"), with
logit-normal timesteps (Esser et al. 2024, "Scaling Rectified Flow Transformers", Sec. 3.1).

Notation and conventions (the same as MONAI's ``RFlowScheduler`` and NVIDIA MAISI v2):

    t in [0, 1]            t = 0 is data, t = 1 pure noise
    x_t                    (1 - t) x_0 + t eps                      (Esser et al. Eq. 2 with b_t = t)
    target v               x_0 - eps: the network regresses v = -dx_t/dt, MONAI's training target
                           ``inputs - noise``, so that ``RFlowScheduler.step`` adds v dt going down in t
    x-hat_0, eps-hat       x_t + t v, x_t - (1 - t) v
    network time           t T: the time embedding sees t scaled to the T training timesteps
                           (MONAI feeds ``RFlowScheduler`` timesteps in [0, T] to the U-Net)
    shift s                t -> s t / (1 + (s - 1) t) (Esser et al. Eq. 23; MONAI's
                           ``timestep_transform`` with ratio s): s > 1 spends more time at high noise,
                           as larger volumes need. Applied to training draws and sampling times alike.

Training t: logit-normal, t = shift(sigmoid(u)), u ~ N(0, 1) (Esser et al.'s "lognorm(0, 1)"),
which favours the middle of the path where the velocity is hardest to predict, or uniform,
t = shift(u), u ~ U(0, 1) (MONAI's default), which also trains the low-noise end that clears the last
noise from a sample (logit-normal draws t < 0.05 once in 600). Sampling times: a
uniform grid from 1 down to 0 (MONAI's ``set_timesteps``), shifted the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Protocol

import torch

from medddpm.diffusion.noise import RandomSource, rand, randn
from medddpm.diffusion.schedule import append_dims
from medddpm.errors import InputError


class FlowSettings(Protocol):
    """What a flow is built from: medddpm.config.DiffusionConfig has these fields."""

    num_train_timesteps: int
    rflow_shift: float
    rflow_timesteps: str


def shift_time(t: torch.Tensor, shift: float) -> torch.Tensor:
    """Esser et al. (2024) Eq. 23: t -> s t / (1 + (s - 1) t); s = 1 is the identity."""
    return shift * t / (1 + (shift - 1) * t)


@dataclass(frozen=True)
class RectifiedFlow:
    """The rflow process: straight paths from x_0 (t = 0) to eps (t = 1), velocity target v = x_0 - eps."""

    num_timesteps: int = 1000
    """T: the network sees t T, as a DDPM network sees its timestep index."""
    shift: float = 1.0
    timesteps: str = "logit-normal"
    """How training draws t: logit-normal (Esser et al.) or uniform on (0, 1) (MONAI's default)."""
    name: ClassVar[str] = "rflow"
    prediction: ClassVar[str] = "velocity"
    TIMESTEPS: ClassVar[tuple[str, ...]] = ("logit-normal", "uniform")

    def __post_init__(self) -> None:
        if self.timesteps not in self.TIMESTEPS:  # else a misspelt name would train logit-normal
            raise ValueError(f"timesteps must be one of {', '.join(self.TIMESTEPS)}; got {self.timesteps!r}")

    @classmethod
    def from_config(cls, cfg: FlowSettings) -> RectifiedFlow:
        return cls(
            num_timesteps=cfg.num_train_timesteps, shift=cfg.rflow_shift, timesteps=cfg.rflow_timesteps
        )

    @property
    def objective(self) -> str:
        return "rectified-flow velocity (x_0 - eps) mean squared error"

    def draw_times(self, n: int, generator: RandomSource, device: torch.device | str) -> torch.Tensor:
        """Training times [n] float32 in (0, 1): t = shift(sigmoid(u)) with u ~ N(0, 1) (logit-normal),
        or t = shift(u) with u ~ U(0, 1) (uniform)."""
        if self.timesteps == "uniform":
            u = rand((n,), generator, dtype=torch.float32, device=device)
            return shift_time(u, self.shift)
        u = randn((n,), generator, dtype=torch.float32, device=device)
        return shift_time(torch.sigmoid(u), self.shift)

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """x_t = (1 - t) x_0 + t eps."""
        t = append_dims(t, x0.ndim).to(x0.dtype)
        return (1 - t) * x0 + t * eps

    def target(self, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """v = x_0 - eps (= -dx_t/dt), whatever t."""
        return x0 - eps

    def loss_weights(self, t: torch.Tensor) -> None:
        """Unweighted (logit-normal t already concentrates the loss where it matters)."""
        return None

    def network_time(self, t: torch.Tensor) -> torch.Tensor:
        """t T, float: the range of training timesteps the U-Net's time embedding was built for."""
        return t.float() * self.num_timesteps

    def sampling_times(self, steps: int) -> torch.Tensor:
        """shift(1 - i/steps) for i = 0..steps-1: [steps] float64, strictly decreasing from 1."""
        if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= self.num_timesteps:
            raise InputError(
                f"sampling steps must be an integer between 1 and {self.num_timesteps}, got {steps!r}"
            )
        return shift_time(1 - torch.arange(steps, dtype=torch.float64) / steps, self.shift)

    def time_grid(self, count: int) -> list[float]:
        """``count`` times evenly spread over (0, 1): the midpoints of equal parts."""
        return [(i + 0.5) / count for i in range(count)]
