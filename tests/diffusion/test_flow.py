"""The rflow process and its samplers: against MONAI's RFlowScheduler and closed-form cases."""

from __future__ import annotations

import pytest
import torch
from monai.networks.schedulers import RFlowScheduler

from medddpm.config import build_config
from medddpm.diffusion.flow import RectifiedFlow, shift_time
from medddpm.diffusion.noise import PerSampleGenerator
from medddpm.diffusion.objective import diffusion_loss
from medddpm.diffusion.samplers import SAMPLERS, sample, timesteps_for
from medddpm.diffusion.schedule import NoiseSchedule, linear_betas
from medddpm.errors import InputError

SHAPE = (2, 1, 8, 8, 8)
RFLOW_SAMPLERS = sorted(name for name, entry in SAMPLERS.items() if entry.process == "rflow")


def noise(seed: int = 0, shape=SHAPE, dtype=torch.float64) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def test_noising_is_monai_add_noise_and_the_network_sees_monai_timesteps():
    flow = RectifiedFlow(num_timesteps=1000)
    monai = RFlowScheduler(num_train_timesteps=1000, use_discrete_timesteps=False)
    x0, eps = noise(1), noise(2)
    t = torch.tensor([0.25, 0.8], dtype=torch.float64)
    expected = monai.add_noise(x0, eps, flow.network_time(t))
    torch.testing.assert_close(flow.q_sample(x0, t, eps), expected.to(x0.dtype), rtol=0, atol=1e-6)
    assert torch.equal(flow.network_time(t), torch.tensor([250.0, 800.0]))


def test_one_euler_step_is_monai_rflow_step():
    """From t = 750 to 500 (of T = 1000): medddpm's Euler step on a fixed velocity field equals
    ``RFlowScheduler.step`` on the same network output (no clipping, as MONAI does none)."""
    flow = RectifiedFlow(num_timesteps=1000)
    x = noise(3)
    v = noise(4)
    ts = timesteps_for(flow, 4)
    assert ts.tolist() == [1.0, 0.75, 0.5, 0.25]
    seen = []

    def model(x_t, t):
        seen.append(t)
        return v

    ours = sample("euler", model, x, flow, ts[1:2], clip=None)  # one step: 0.75 -> 0 (the last)
    monai = RFlowScheduler(num_train_timesteps=1000)
    monai.set_timesteps(4)
    assert monai.timesteps.tolist() == [1000, 750, 500, 250]
    expected, _ = monai.step(v, 750, x, 0)
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-12)
    # and a middle step, 750 -> 500, inside a longer run
    two = sample("euler", model, x, flow, torch.tensor([0.75, 0.5], dtype=torch.float64), clip=None)
    mid, _ = monai.step(v, 750, x, 500)
    last, _ = monai.step(v, 500, mid, 0)
    torch.testing.assert_close(two, last, rtol=0, atol=1e-12)
    assert seen[0].tolist() == [750.0, 750.0]


def single_point_velocity(x0_star: torch.Tensor):
    """The exact velocity of data that is one point x0*: E[x0 - eps | x_t] = (x0* - x_t) / t."""

    def model(x_t, t):
        return (x0_star - x_t) / (t.to(x_t.dtype) / 1000).view(-1, 1, 1, 1, 1)

    return model


@pytest.mark.parametrize(("name", "eta"), [*((name, 0.0) for name in RFLOW_SAMPLERS), ("euler", 1.0)])
@pytest.mark.parametrize("steps", [1, 5])
def test_single_point_data_lands_on_it(name, eta, steps):
    flow = RectifiedFlow(num_timesteps=1000, shift=3.0)
    x0_star = 0.9 * torch.tanh(noise(5, SHAPE[1:]))
    model, g = single_point_velocity(x0_star), torch.Generator().manual_seed(7)
    out = sample(name, model, noise(6), flow, timesteps_for(flow, steps), eta=eta, generator=g)
    # exact but for the network time, which the U-Net gets in float32
    torch.testing.assert_close(out, x0_star.expand_as(out), rtol=0, atol=1e-6)


def test_sampling_times_and_shift():
    flow = RectifiedFlow(num_timesteps=1000, shift=3.0)
    t = timesteps_for(flow, 5)
    plain = torch.tensor([1.0, 0.8, 0.6, 0.4, 0.2], dtype=torch.float64)
    torch.testing.assert_close(t, 3 * plain / (1 + 2 * plain))
    assert t[0] == 1 and bool((t[1:] > plain[1:]).all())  # shift > 1 spends more steps at high noise
    torch.testing.assert_close(shift_time(plain, 1.0), plain)
    with pytest.raises(InputError, match="between 1 and 1000"):
        timesteps_for(flow, 0)


def test_training_times_are_logit_normal():
    flow = RectifiedFlow(num_timesteps=1000)
    t = flow.draw_times(20000, torch.Generator().manual_seed(0), "cpu")
    logit = torch.log(t / (1 - t))
    assert abs(float(logit.mean())) < 0.03 and abs(float(logit.std()) - 1) < 0.03
    per_sample = flow.draw_times(3, PerSampleGenerator.from_seeds([1, 2, 3]), "cpu")
    assert per_sample[1] == flow.draw_times(1, PerSampleGenerator.from_seeds([2]), "cpu")[0]
    assert float((t < 0.05).float().mean()) < 0.004  # the low-noise end is almost never trained


def test_uniform_training_times_are_monai_uniform_draws_shifted():
    flow = RectifiedFlow(num_timesteps=1000, timesteps="uniform")
    t = flow.draw_times(20000, torch.Generator().manual_seed(0), "cpu")
    assert torch.equal(t, torch.rand(20000, generator=torch.Generator().manual_seed(0)))
    assert abs(float((t < 0.05).float().mean()) - 0.05) < 0.005
    shifted = RectifiedFlow(timesteps="uniform", shift=3.0).draw_times(
        5, torch.Generator().manual_seed(1), "cpu"
    )
    torch.testing.assert_close(
        shifted, shift_time(torch.rand(5, generator=torch.Generator().manual_seed(1)), 3.0)
    )
    per_sample = flow.draw_times(3, PerSampleGenerator.from_seeds([1, 2, 3]), "cpu")
    assert per_sample[1] == flow.draw_times(1, PerSampleGenerator.from_seeds([2]), "cpu")[0]
    cfg = build_config(overrides=["diffusion.process=rflow", "diffusion.rflow_timesteps=uniform"])
    assert RectifiedFlow.from_config(cfg.diffusion).timesteps == "uniform"
    with pytest.raises(ValueError, match="logit-normal, uniform"):
        RectifiedFlow(timesteps="unifrom")


def test_loss_target_is_x0_minus_eps():
    flow = RectifiedFlow(num_timesteps=1000)
    x0 = torch.full((1, 1, 4, 4, 4), 0.5)
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    t = flow.draw_times(1, g2, "cpu")
    eps = torch.randn(x0.shape, generator=g2)

    def oracle(x_t, network_t):
        torch.testing.assert_close(network_t, t * 1000)
        return x0 - eps

    assert float(diffusion_loss(oracle, flow, x0, g1)) == 0.0


def test_a_sampler_of_the_other_process_is_refused():
    ddpm = NoiseSchedule(torch.cumprod(1 - linear_betas(100, 1e-3, 0.2), dim=0))
    flow = RectifiedFlow(num_timesteps=100)
    with pytest.raises(InputError, match="euler sampler is for rflow models.*ddpm process"):
        sample("euler", lambda x, t: x, noise(), ddpm, timesteps_for(ddpm, 3))
    with pytest.raises(InputError, match="ddim sampler is for ddpm models.*rflow process.*euler, heun"):
        sample("ddim", lambda x, t: x, noise(), flow, timesteps_for(flow, 3))


@pytest.mark.parametrize(("name", "expected"), [("euler", 0.625), ("heun", 0.46875 + 0.0625)])
def test_euler_and_heun_integrate_a_known_ode_by_their_rules(name, expected):
    """v = -t, so dx/dt = t: from t = 1 to 0 over 1, .75, .5, .25. Euler sums t h over the left ends
    (0.625); Heun is exact (the trapezoid rule) on the three inner steps and Euler on the last
    (Karras et al. Algorithm 1): 0.46875 + 0.25 * 0.25."""
    flow = RectifiedFlow(num_timesteps=1000)

    def model(x_t, t):
        return -(t.to(x_t.dtype) / 1000).view(-1, 1, 1, 1, 1).expand_as(x_t)

    x1 = torch.zeros(SHAPE, dtype=torch.float64)
    out = sample(name, model, x1, flow, timesteps_for(flow, 4), clip=None)
    torch.testing.assert_close(out, torch.full(SHAPE, -expected, dtype=torch.float64), rtol=0, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# Ancestral Euler (eta > 0)


def k_diffusion_euler_ancestral(model, x, ts, eta, g):
    """Reference: k-diffusion's ``sample_euler_ancestral`` (with its ``get_ancestral_step``, ``to_d``)
    as k-diffusion writes it, on y = x_t / (1 - t) = x_0 + sigma eps, sigma = t / (1 - t), with the
    denoiser D(y, sigma) = x-hat_0 = x_t + t v of the flow network at x_t = (1 - t) y."""

    def get_ancestral_step(sigma_from, sigma_to, eta=1.0):
        if not eta:
            return sigma_to, 0.0
        sigma_up = min(sigma_to, eta * (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5)
        sigma_down = (sigma_to**2 - sigma_up**2) ** 0.5
        return sigma_down, sigma_up

    def denoised(y, t):
        x_t = (1 - t) * y
        return x_t + t * model(x_t, torch.full((y.shape[0],), t * 1000, dtype=torch.float64))

    ts = [float(t) for t in ts] + [0.0]
    y = x / (1 - ts[0])
    for t, s in zip(ts, ts[1:], strict=False):
        sigma, sigma_next = t / (1 - t), s / (1 - s)
        den = denoised(y, t)
        sigma_down, sigma_up = get_ancestral_step(sigma, sigma_next, eta=eta)
        d = (y - den) / sigma
        y = y + d * (sigma_down - sigma)
        if sigma_up > 0:  # k-diffusion adds noise * 0 after the last step; no draw here
            y = y + torch.randn(y.shape, generator=g, dtype=y.dtype) * sigma_up
    return y  # at s = 0, y is x_0


@pytest.mark.parametrize("eta", [1.0, 0.5])
def test_ancestral_euler_is_k_diffusion_euler_ancestral(eta):
    """Three ancestral steps 0.9 -> 0.6 -> 0.3 -> 0 on a fixed random velocity field, unclipped: the
    same volumes as k-diffusion's algorithm in its own coordinates, with the same noise draws."""
    flow = RectifiedFlow(num_timesteps=1000)
    v = noise(11)
    model = lambda x_t, t: v  # noqa: E731
    x, ts = noise(12), torch.tensor([0.9, 0.6, 0.3], dtype=torch.float64)
    ours = sample("euler", model, x, flow, ts, eta=eta, clip=None, generator=torch.Generator().manual_seed(3))
    ref = k_diffusion_euler_ancestral(model, x, ts, eta, torch.Generator().manual_seed(3))
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-10)
    # eta = 0 is the ODE itself, draw for draw
    ode = sample("euler", model, x, flow, ts, eta=0.0, clip=None)
    torch.testing.assert_close(ode, k_diffusion_euler_ancestral(model, x, ts, 0.0, None), rtol=0, atol=1e-10)


def gaussian_velocity(mean: float, std: float):
    """The exact velocity of data x_0 ~ N(mean, std^2) per voxel: (E[x_0 | x_t] - x_t) / t, with
    E[x_0 | x_t] = mean + (1 - t) std^2 / ((1 - t)^2 std^2 + t^2) (x_t - (1 - t) mean)."""

    def model(x_t, t):
        t = (t.to(x_t.dtype) / 1000).view(-1, 1, 1, 1, 1)
        x0 = mean + (1 - t) * std**2 / ((1 - t) ** 2 * std**2 + t**2) * (x_t - (1 - t) * mean)
        return (x0 - x_t) / t

    return model


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_euler_samples_gaussian_data_with_the_right_spread(eta):
    """With the exact network for Gaussian data, Euler (ODE or ancestral) over 400 steps ends with
    the data's mean and standard deviation (65,536 voxels: 0.3% standard error on the std; no
    clipping, which would cut the Gaussian's tails; both are first order: at 100 steps the std is
    1-3% short). Adding
    fresh noise of the wrong size (e.g. re-noising x-hat_0 from scratch at every step) shrinks it."""
    flow = RectifiedFlow(num_timesteps=1000)
    x = noise(13, (4, 1, 16, 32, 32))
    g = torch.Generator().manual_seed(4)
    model = gaussian_velocity(0.3, 0.5)
    out = sample("euler", model, x, flow, timesteps_for(flow, 400), eta=eta, generator=g, clip=None)
    assert abs(float(out.mean()) - 0.3) < 0.01
    assert abs(float(out.std()) - 0.5) < 0.01


def test_ancestral_euler_draws_per_sample():
    """Sample i's noise comes from generator i: the same volume alone or in a batch."""
    flow = RectifiedFlow(num_timesteps=1000)
    model = gaussian_velocity(0.0, 0.5)

    def run(*seeds: int) -> torch.Tensor:
        x = noise(14, (len(seeds), *SHAPE[1:]))[:1].expand(len(seeds), *SHAPE[1:]).clone()
        gen = PerSampleGenerator.from_seeds(list(seeds))
        return sample("euler", model, x, flow, timesteps_for(flow, 5), eta=1.0, generator=gen)

    both = run(1, 2)
    torch.testing.assert_close(both[:1], run(1), rtol=0, atol=0)
    torch.testing.assert_close(both[1:], run(2), rtol=0, atol=0)
    assert not torch.equal(both[0], both[1])
