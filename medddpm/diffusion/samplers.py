"""Samplers: from noise x_T to a volume x_0 with a trained network (ddpm: eps or v; rflow: velocity).

Every sampler is a free function with one signature (k-diffusion's ``sample_x(model, x, sigmas,
extra_args=...)``, with timesteps in place of sigmas)::

    sample_x(model, x, schedule, timesteps, *, eta, generator=None, clip=X0_RANGE,
             model_kwargs=None, callback=None) -> x_0

    model         model(x_t, t, **model_kwargs) -> the process's target (per ``schedule.prediction``);
                  x_t [B, C, *spatial], t [B]: ``schedule.network_time`` of the time visited
    x             x_T ~ N(0, I), [B, C, *spatial]; the caller draws it (medddpm.diffusion.noise)
    schedule      the process (medddpm.diffusion.process): a NoiseSchedule (alpha-bar_t for the T
                  training timesteps, float64) for the ddpm samplers, a RectifiedFlow for euler/heun
    timesteps     the times to visit, strictly decreasing, one network evaluation each (two for
                  heun): ``timesteps_for`` asks the process (ddpm: trailing spacing of timestep
                  indices; rflow: shifted uniform times from 1 towards 0)
    eta           how much fresh noise each step adds (its meaning per sampler is in each docstring;
                  its default and bounds are in the sampler's registry entry, SAMPLERS)
    generator     where that noise comes from: None (torch's global generator), one
                  torch.Generator, or a PerSampleGenerator, so that sample i is the same whatever
                  the batch (medddpm.diffusion.noise)
    clip          (low, high) range x-hat_0 is clipped to, a function that projects x-hat_0 onto the
                  values data can take (a wavelet space: medddpm.models.spaces), or None for no
                  clipping (a latent space)
    model_kwargs  keyword arguments for the model, passed untouched on every call (conditioning:
                  EDM's ``class_labels``, k-diffusion's ``extra_args``); None passes none
    callback      callback(i, total) after step i = 1..total, for progress bars

A new sampler is one such function and one ``SamplerEntry`` in ``SAMPLERS``: the config's allowed
names (``sample.sampler``) and ``medddpm sample --help`` are read from the registry. Each entry
names the process it fits; ``sample`` refuses a sampler of another process. ``plan_steps``
and ``denoise`` are the building blocks every sampler here uses.

Notation (paper symbol -> code name). Paper conventions differ: Song et al. write alpha_t for what
Ho et al. call alpha-bar_t; Lu et al. write alpha_t for its square root. The code uses one set:

    t, s                           t (current timestep), s (next, less noisy; s = -1 means "clean")
    alpha-bar_t                    ab_t; alpha-bar_{-1} = 1
    alpha_t, sigma_t (Lu et al.)   sqrt(ab_t), sqrt(1 - ab_t)
    lambda_t = log(alpha_t/sigma_t) lam_t, half the log signal-to-noise ratio
    x-hat_0, eps-hat               x0, eps (the network's estimates at x_t)
    beta_t of the respaced chain   1 - ab_t / ab_s (Nichol & Dhariwal 2021, Sec. 4)

Shared conventions, chosen to match the reference implementations the tests compare against:

* Timesteps are "trailing" (Lin et al. 2024, Table 2; diffusers ``timestep_spacing="trailing"``):
  the first step is always t = T-1, where x_T is pure noise, and the last step jumps to s = -1.
* x-hat_0 is clipped to [-1, 1] by default, the range training volumes are scaled to: MONAI's
  schedulers do so by default (``clip_sample=True``), as did Ho et al.'s released code; for
  DPM-Solver++ it is the static case of the thresholding Lu et al. (2022b) apply to the data
  prediction. eps-hat is not recomputed from the clipped x-hat_0 (MONAI's and diffusers' default).
* Schedule arithmetic is done in float64 (Python floats, one timestep per step for the whole batch);
  latents are at least float32; the network's output is cast to the latents' dtype, so it may run
  under autocast.
* The last step of every sampler returns x-hat_0 at the smallest timestep visited.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from medddpm.diffusion.flow import RectifiedFlow
from medddpm.diffusion.noise import RandomSource, randn_like
from medddpm.diffusion.schedule import NoiseSchedule
from medddpm.errors import InputError

Model = Callable[..., torch.Tensor]
"""model(x_t [B, C, *spatial], t [B], **model_kwargs) -> eps, v or velocity, shaped like x_t."""
Callback = Callable[[int, int], None]
ClipRange = tuple[float, float] | Callable[[torch.Tensor], torch.Tensor] | None

X0_RANGE = (-1.0, 1.0)
"""x-hat_0 is clipped to this range by default, the one preprocessing scales training volumes to."""


class Sampler(Protocol):
    """The one signature every sampler has (see the module docstring)."""

    def __call__(
        self,
        model: Model,
        x: torch.Tensor,
        schedule: NoiseSchedule | RectifiedFlow,
        timesteps: torch.Tensor | Sequence[int],
        *,
        eta: float,
        generator: RandomSource = None,
        clip: ClipRange = X0_RANGE,
        model_kwargs: Mapping[str, Any] | None = None,
        callback: Callback | None = None,
    ) -> torch.Tensor: ...


# ---------------------------------------------------------------------------------------------
# Spacing and the pieces every sampler shares


def timesteps_for(schedule: NoiseSchedule | RectifiedFlow, steps: int) -> torch.Tensor:
    """The times a ``steps``-step sampler visits, strictly decreasing: the process's own spacing.

    ddpm: trailing spacing of timestep indices ([steps] long, ``trailing_timesteps``: it starts at
    t = T-1 and, with steps = T, visits every timestep). rflow: shifted uniform times in (0, 1]
    ([steps] float64, ``RectifiedFlow.sampling_times``).
    """
    return schedule.sampling_times(steps)


def _latent(x: torch.Tensor) -> torch.Tensor:
    """Latents in float32 at least (float64 stays float64), whatever the caller's dtype."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def plan_steps(
    schedule: NoiseSchedule, timesteps: torch.Tensor | Sequence[int]
) -> list[tuple[int, float, int, float]]:
    """(t, ab_t, s, ab_s) for each step, s the next timestep visited and -1 (ab = 1) after the last."""
    ts = [int(t) for t in timesteps]
    T = schedule.num_timesteps
    if not ts or not all(0 <= t < T for t in ts) or any(a <= b for a, b in zip(ts, ts[1:], strict=False)):
        raise ValueError(f"timesteps must be strictly decreasing and within 0..{T - 1}, got {ts}")
    ab = schedule.alphas_cumprod.detach().to("cpu", torch.float64)
    pairs = zip(ts, ts[1:] + [-1], strict=True)
    return [(t, float(ab[t]), s, float(ab[s]) if s >= 0 else 1.0) for t, s in pairs]


def denoise(
    model: Model,
    x: torch.Tensor,
    t: int,
    ab_t: float,
    prediction: str,
    clip: ClipRange = X0_RANGE,
    model_kwargs: Mapping[str, Any] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The network's x-hat_0 (clipped to ``clip`` unless None) and eps-hat at x_t, both shaped like x."""
    t_batch = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
    out = model(x, t_batch, **(model_kwargs or {}))
    if out.shape != x.shape:
        raise ValueError(
            f"the network returned shape {tuple(out.shape)} for input {tuple(x.shape)}; "
            "samplers need eps or v with the input's shape (no learned variance channels)"
        )
    out = out.to(x.dtype)
    a, s = math.sqrt(ab_t), math.sqrt(1 - ab_t)
    if prediction == "eps":
        eps = out
        x0 = (x - s * eps) / a  # Ho et al. Eq. 15
    elif prediction == "v":
        x0 = a * x - s * out  # Salimans & Ho 2022, Sec. 4: v = a eps - s x_0
        eps = a * out + s * x
    else:
        raise ValueError(f"unknown prediction target {prediction!r}; expected 'eps' or 'v'")
    return clip_x0(x0, clip), eps


def clip_x0(x0: torch.Tensor, clip: ClipRange) -> torch.Tensor:
    """x-hat_0 clipped to a (low, high) range, projected by a function, or as it is (None)."""
    if clip is None:
        return x0
    if callable(clip):
        return clip(x0)
    return x0.clamp(*clip)


# ---------------------------------------------------------------------------------------------
# Samplers


@torch.no_grad()
def sample_ddpm(
    model: Model,
    x: torch.Tensor,
    schedule: NoiseSchedule,
    timesteps: torch.Tensor | Sequence[int],
    *,
    eta: float,
    generator: RandomSource = None,
    clip: ClipRange = X0_RANGE,
    model_kwargs: Mapping[str, Any] | None = None,
    callback: Callback | None = None,
) -> torch.Tensor:
    """Ancestral DDPM sampling (Ho et al. 2020, "Denoising Diffusion Probabilistic Models", Algorithm 2).

    Visiting fewer than T timesteps, it samples the posterior of the respaced chain over them
    (Nichol & Dhariwal 2021, Sec. 4), as diffusers' DDPMScheduler does. eta scales the posterior
    standard deviation: eta = 1 is Algorithm 2; eta < 1 lowers the sampling temperature, and eta = 0
    follows the posterior mean (deterministic, blurrier, and not DDIM: for the deterministic end of
    the DDIM family use ``sample_ddim``). x: x_T [B, C, *spatial]; returns x_0 (within ``clip``).
    """
    x = _latent(x)
    plan = plan_steps(schedule, timesteps)
    for i, (t, ab_t, s, ab_s) in enumerate(plan, start=1):
        alpha = ab_t / ab_s
        beta = 1 - alpha
        # 1. x-hat_0 from the network (Eq. 15), clipped.
        x0, _ = denoise(model, x, t, ab_t, schedule.prediction, clip, model_kwargs)
        # 2. Posterior mean mu-tilde(x_t, x-hat_0), Eq. 7 (equal to Eq. 11 when nothing is clipped).
        x = (math.sqrt(ab_s) * beta / (1 - ab_t)) * x0 + (math.sqrt(alpha) * (1 - ab_s) / (1 - ab_t)) * x
        # 3. Add sigma z, sigma^2 = beta-tilde = (1 - ab_s) / (1 - ab_t) beta (Eq. 7; the "fixed small"
        #    variance of Sec. 3.2, MONAI's default); none after the last step.
        if s >= 0 and eta > 0:
            sigma = eta * math.sqrt((1 - ab_s) / (1 - ab_t) * beta)
            x = x + sigma * randn_like(x, generator)
        if callback is not None:
            callback(i, len(plan))
    return x


@torch.no_grad()
def sample_ddim(
    model: Model,
    x: torch.Tensor,
    schedule: NoiseSchedule,
    timesteps: torch.Tensor | Sequence[int],
    *,
    eta: float,
    generator: RandomSource = None,
    clip: ClipRange = X0_RANGE,
    model_kwargs: Mapping[str, Any] | None = None,
    callback: Callback | None = None,
) -> torch.Tensor:
    """DDIM sampling (Song et al. 2021, "Denoising Diffusion Implicit Models", Eq. 12).

    eta in [0, 1] sets sigma_t(eta) of Eq. 16: 0 is the deterministic DDIM, 1 the same process as
    DDPM. x: x_T [B, C, *spatial]; returns x_0 (within ``clip``).
    """
    x = _latent(x)
    plan = plan_steps(schedule, timesteps)
    for i, (t, ab_t, _, ab_s) in enumerate(plan, start=1):
        # 1. x-hat_0 ("predicted x_0" of Eq. 12), clipped, and eps-hat.
        x0, eps = denoise(model, x, t, ab_t, schedule.prediction, clip, model_kwargs)
        # 2. sigma_t(eta) = eta sqrt((1 - ab_s) / (1 - ab_t)) sqrt(1 - ab_t / ab_s), Eq. 16.
        sigma = eta * math.sqrt((1 - ab_s) / (1 - ab_t) * (1 - ab_t / ab_s))
        # 3. Eq. 12: x_s = sqrt(ab_s) x-hat_0 + sqrt(1 - ab_s - sigma^2) eps-hat + sigma z.
        x = math.sqrt(ab_s) * x0 + math.sqrt(max(1 - ab_s - sigma**2, 0.0)) * eps
        if sigma > 0:
            x = x + sigma * randn_like(x, generator)
        if callback is not None:
            callback(i, len(plan))
    return x


@torch.no_grad()
def sample_dpmpp_2m(
    model: Model,
    x: torch.Tensor,
    schedule: NoiseSchedule,
    timesteps: torch.Tensor | Sequence[int],
    *,
    eta: float,
    generator: RandomSource = None,
    clip: ClipRange = X0_RANGE,
    model_kwargs: Mapping[str, Any] | None = None,
    callback: Callback | None = None,
) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022b, "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion
    Probabilistic Models", Algorithm 2): a second-order multistep solver of the diffusion ODE in the
    data prediction x-hat_0 and half-log-SNR lambda.

    The first step is first order (there is no history yet) and so is the last, which goes to
    sigma = 0 and returns x-hat_0 (diffusers' ``lower_order_final``: there h is infinite, and the
    second-order weight 1/(2r) = h/(2 h_prev) with it). eta = 0 is the ODE solver of the paper;
    eta > 0 adds noise as in SDE-DPM-Solver++(2M) (diffusers ``algorithm_type="sde-dpmsolver++"`` is
    eta = 1; k-diffusion's ``sample_dpmpp_2m_sde`` has the same eta). x: x_T [B, C, *spatial];
    returns x_0 (within ``clip``).
    """
    x = _latent(x)
    plan = plan_steps(schedule, timesteps)
    x0_prev, h_prev = None, None
    for i, (t, ab_t, s, ab_s) in enumerate(plan, start=1):
        # 1. Data prediction x_theta(x_t, t) = x-hat_0, clipped.
        x0, _ = denoise(model, x, t, ab_t, schedule.prediction, clip, model_kwargs)
        if s < 0:
            # 2'. Final first-order step to sigma_s = 0: exp(-h) = 0, so x_s = x-hat_0.
            x = x0
        else:
            # 2. alpha, sigma and lambda = log(alpha / sigma) at both ends; h = lambda_s - lambda_t.
            alpha_s, sigma_s, sigma_t = math.sqrt(ab_s), math.sqrt(1 - ab_s), math.sqrt(1 - ab_t)
            h = 0.5 * (math.log(ab_s / (1 - ab_s)) - math.log(ab_t / (1 - ab_t)))
            # 3. D: x-hat_0 (first step) or (1 + 1/(2r)) x-hat_0 - 1/(2r) x-hat_0 of the previous
            #    step with r = h_prev / h (Algorithm 2).
            D = x0 if x0_prev is None else x0 + (0.5 * h / h_prev) * (x0 - x0_prev)
            # 4. x_s = (sigma_s / sigma_t) e^{-eta h} x_t - alpha_s (e^{-(1 + eta) h} - 1) D (Algorithm 2
            #    for eta = 0), plus sigma_s sqrt(1 - e^{-2 eta h}) z.
            x = (sigma_s / sigma_t * math.exp(-eta * h)) * x - (alpha_s * math.expm1(-(1 + eta) * h)) * D
            if eta > 0:
                x = x + (sigma_s * math.sqrt(-math.expm1(-2 * eta * h))) * randn_like(x, generator)
            x0_prev, h_prev = x0, h
        if callback is not None:
            callback(i, len(plan))
    return x


def flow_denoise(
    model: Model,
    x: torch.Tensor,
    t: float,
    flow: RectifiedFlow,
    clip: ClipRange = X0_RANGE,
    model_kwargs: Mapping[str, Any] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The network's x-hat_0 = x_t + t v (clipped per ``clip``) and the ODE derivative
    d = dx_t/dt = (x_t - x-hat_0) / t at time t in (0, 1], both shaped like x.

    Without clipping d = -v, the velocity field itself; with it, d follows the clipped x-hat_0 as
    k-diffusion's ``to_d`` does (Karras et al. 2022, Algorithm 1, with sigma = t / (1 - t) folded in).
    """
    t_batch = torch.full((x.shape[0],), t, dtype=torch.float64, device=x.device)
    v = model(x, flow.network_time(t_batch), **(model_kwargs or {}))
    if v.shape != x.shape:
        raise ValueError(f"the network returned shape {tuple(v.shape)} for input {tuple(x.shape)}")
    x0 = clip_x0(x + t * v.to(x.dtype), clip)
    return x0, (x - x0) / t


@torch.no_grad()
def sample_euler(
    model: Model,
    x: torch.Tensor,
    schedule: RectifiedFlow,
    timesteps: torch.Tensor | Sequence[float],
    *,
    eta: float,
    generator: RandomSource = None,
    clip: ClipRange = X0_RANGE,
    model_kwargs: Mapping[str, Any] | None = None,
    callback: Callback | None = None,
) -> torch.Tensor:
    """Euler's method on the rectified-flow ODE dx_t/dt = -v(x_t, t) (Liu et al. 2022, Sec. 2.1):
    x_s = x_t + (s - t) d from each time t to the next s, the last step to s = 0. Without clipping
    one step is MONAI's ``RFlowScheduler.step``. x: x_T = x_1 [B, C, *spatial]; returns x_0.

    eta in [0, 1] makes the steps ancestral: x_s = (1 - s) x-hat_0 + sqrt(s^2 - c^2) eps-hat + c z,
    with eps-hat = (x_t - (1 - t) x-hat_0) / t and c = ``flow_ancestral_std(t, s, eta)``. This is DDIM's
    Eq. 12 (Song et al. 2021) on the flow's path x_t = (1 - t) x_0 + t eps, and k-diffusion's
    ``sample_euler_ancestral`` in its coordinates (x_t / (1 - t), sigma = t / (1 - t)). eta = 0 is
    the ODE above; eta = 1 samples the posterior q(x_s | x_t, x-hat_0), as DDPM does, so fresh noise
    at every step washes out part of what the network got wrong at earlier ones (Karras et al. 2022,
    Sec. 4). The last step returns x-hat_0.
    """
    x = _latent(x)
    ts = [float(t) for t in timesteps]
    for i, (t, s) in enumerate(zip(ts, ts[1:] + [0.0], strict=True), start=1):
        x0, d = flow_denoise(model, x, t, schedule, clip, model_kwargs)
        c = flow_ancestral_std(t, s, eta)
        if c > 0:
            eps = x0 + d  # (x_t - (1 - t) x-hat_0) / t, as d = (x_t - x-hat_0) / t
            x = (1 - s) * x0 + math.sqrt(max(s * s - c * c, 0.0)) * eps + c * randn_like(x, generator)
        else:
            x = x + (s - t) * d
        if callback is not None:
            callback(i, len(ts))
    return x


def flow_ancestral_std(t: float, s: float, eta: float) -> float:
    """The noise an ancestral rectified-flow step from t to s < t adds: eta times the standard
    deviation of q(x_s | x_t, x_0) on the path x_t = (1 - t) x_0 + t eps,
    c = eta s sqrt(1 - (s (1 - t) / (t (1 - s)))^2) (DDIM's sigma_t(eta), Song et al. 2021 Eq. 16,
    there with alpha_t = 1 - t and sigma_t = t); 0 for eta = 0 and for the last step (s = 0).
    """
    if eta <= 0 or s <= 0:
        return 0.0
    ratio = s * (1 - t) / (t * (1 - s))  # the ratio of the noise levels sigma = t / (1 - t)
    return eta * s * math.sqrt(max(1 - ratio * ratio, 0.0))


@torch.no_grad()
def sample_heun(
    model: Model,
    x: torch.Tensor,
    schedule: RectifiedFlow,
    timesteps: torch.Tensor | Sequence[float],
    *,
    eta: float,
    generator: RandomSource = None,
    clip: ClipRange = X0_RANGE,
    model_kwargs: Mapping[str, Any] | None = None,
    callback: Callback | None = None,
) -> torch.Tensor:
    """Heun's second-order method on the rectified-flow ODE (Karras et al. 2022, "Elucidating the
    Design Space of Diffusion-Based Generative Models", Algorithm 1 without churn): an Euler step to
    s, then the mean of the derivatives at t and s; the last step, to s = 0, is plain Euler (the
    derivative at t = 0 is undefined). Two network evaluations per step but the last.
    Deterministic (eta is unused). x: x_T = x_1 [B, C, *spatial]; returns x_0.
    """
    x = _latent(x)
    ts = [float(t) for t in timesteps]
    for i, (t, s) in enumerate(zip(ts, ts[1:] + [0.0], strict=True), start=1):
        # 1. Euler predictor.
        _, d = flow_denoise(model, x, t, schedule, clip, model_kwargs)
        x_next = x + (s - t) * d
        # 2. Trapezoidal corrector with the derivative at the predicted point.
        if s > 0:
            _, d_next = flow_denoise(model, x_next, s, schedule, clip, model_kwargs)
            x_next = x + (s - t) * 0.5 * (d + d_next)
        x = x_next
        if callback is not None:
            callback(i, len(ts))
    return x


# ---------------------------------------------------------------------------------------------
# Registry


@dataclass(frozen=True)
class SamplerEntry:
    """A sampler as the config, the command line and ``sample`` know it."""

    function: Sampler
    eta: float
    """eta when none is given (``sample.eta: null``)."""
    eta_range: tuple[float, float]
    """Allowed eta, both ends included (math.inf: no upper bound)."""
    description: str
    """One line for ``medddpm sample --help``: the algorithm and its paper."""
    process: str = "ddpm"
    """The process (medddpm.diffusion.process.PROCESSES) whose trained networks it samples."""

    def allows_eta(self, eta: float) -> bool:
        return self.eta_range[0] <= eta <= self.eta_range[1]

    @property
    def eta_bounds(self) -> str:
        """The allowed range in words: "between 0 and 1", "at least 0"."""
        lo, hi = self.eta_range
        return f"between {lo:g} and {hi:g}" if math.isfinite(hi) else f"at least {lo:g}"


SAMPLERS: dict[str, SamplerEntry] = {
    "ddpm": SamplerEntry(
        sample_ddpm, eta=1.0, eta_range=(0.0, math.inf), description="ancestral DDPM (Ho et al. 2020)"
    ),
    "ddim": SamplerEntry(sample_ddim, eta=0.0, eta_range=(0.0, 1.0), description="DDIM (Song et al. 2021)"),
    "dpm++": SamplerEntry(
        sample_dpmpp_2m, eta=0.0, eta_range=(0.0, math.inf), description="DPM-Solver++(2M) (Lu et al. 2022)"
    ),
    "euler": SamplerEntry(
        sample_euler,
        eta=0.0,
        eta_range=(0.0, 1.0),
        description="Euler, rectified flow (eta > 0: ancestral)",
        process="rflow",
    ),
    "heun": SamplerEntry(
        sample_heun,
        eta=0.0,
        eta_range=(0.0, 0.0),
        description="Heun (Karras et al. 2022), rectified flow",
        process="rflow",
    ),
}
"""Sampler names as written in the config (``sample.sampler``) and on the command line."""


def sampler_entry(name: str) -> SamplerEntry:
    """The registry entry called ``name``; an InputError naming the choices when there is none."""
    if name not in SAMPLERS:
        close = difflib.get_close_matches(str(name).lower(), SAMPLERS, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise InputError(f"unknown sampler '{name}' (choose one of: {', '.join(SAMPLERS)}{hint})")
    return SAMPLERS[name]


def check_sampler_fits(name: str, process: str) -> None:
    """An InputError when sampler ``name`` does not sample networks trained with ``process``."""
    entry = sampler_entry(name)
    if entry.process != process:
        fits = ", ".join(k for k, e in SAMPLERS.items() if e.process == process)
        raise InputError(
            f"the {name} sampler is for {entry.process} models, but this one was trained with the "
            f"{process} process (use one of: {fits})"
        )


def resolve_eta(name: str, eta: float | None) -> float:
    """The eta sampler ``name`` runs with: ``eta``, or its entry's default when None; an
    InputError when it is outside the entry's bounds."""
    entry = sampler_entry(name)
    if eta is None:
        return entry.eta
    if not entry.allows_eta(eta):
        raise InputError(f"eta must be {entry.eta_bounds} for the {name} sampler, got {eta:g}")
    return float(eta)


def sample(
    name: str,
    model: Model,
    x: torch.Tensor,
    schedule: NoiseSchedule | RectifiedFlow,
    timesteps: torch.Tensor | Sequence[int],
    *,
    eta: float | None = None,
    generator: RandomSource = None,
    clip: ClipRange = X0_RANGE,
    model_kwargs: Mapping[str, Any] | None = None,
    callback: Callback | None = None,
) -> torch.Tensor:
    """Run the sampler called ``name`` (a key of SAMPLERS) with ``eta`` checked against its bounds
    (None: its default); the other arguments go to it unchanged (see the module docstring). A
    sampler of another process than ``schedule``'s is an InputError."""
    check_sampler_fits(name, schedule.name)
    return sampler_entry(name).function(
        model,
        x,
        schedule,
        timesteps,
        eta=resolve_eta(name, eta),
        generator=generator,
        clip=clip,
        model_kwargs=model_kwargs,
        callback=callback,
    )
