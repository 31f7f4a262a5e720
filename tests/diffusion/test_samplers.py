"""Samplers against MONAI's and diffusers' schedulers, a closed form, and the randomness contract.

The reference loops are configured to the same schedule by name (each library computes its own
betas, so a wrong schedule of ours shows up here too), the same trailing timesteps, the same x-hat_0
clipping to [-1, 1] and the same noise (identical generators), so the samples must agree to float32
round-off.
"""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from medddpm.diffusion.noise import PerSampleGenerator, randn_like
from medddpm.diffusion.samplers import (
    SAMPLERS,
    X0_RANGE,
    sample,
    sample_ddim,
    sample_ddpm,
    sample_dpmpp_2m,
    timesteps_for,
)
from medddpm.diffusion.schedule import NoiseSchedule, append_dims, cosine_betas, linear_betas
from medddpm.errors import InputError

DDPM_SAMPLERS = sorted(name for name, entry in SAMPLERS.items() if entry.process == "ddpm")
"""The samplers of the ddpm process (the rflow ones are tested in test_flow.py)."""
T = 100  # a short chain keeps the full-length DDPM reference cheap
SHAPE = (2, 1, 8, 8, 8)  # [B, C, D, H, W]
ATOL = 1e-5
# Cosine schedule, eps prediction: sqrt(alpha-bar_{T-1}) ~ 5e-4, so x-hat_0 = (x - sqrt(1-ab) eps) / sqrt(ab)
# turns float32 round-off (~6e-8 relative) into ~1e-4 at the first step. Both implementations are
# 2-4e-5 from a float64 run there; they round differently, not wrongly.
ATOL_LOW_SNR = 5e-5
# MONAI computes its betas and alpha-bar in float32 (ours are float64): over the 100 stochastic steps
# of a full DDPM chain the ~1e-7 relative schedule difference grows to ~2e-5.
ATOL_FLOAT32_SCHEDULE = 4e-5


LINEAR = (1e-3, 0.2)  # beta_1, beta_T


def make_schedule(kind: str = "linear", prediction: str = "eps") -> NoiseSchedule:
    # The usual linear 1e-4..0.02 over 1000 steps, compressed to T = 100: alpha-bar_{T-1} ~ 4e-5.
    betas = linear_betas(T, *LINEAR) if kind == "linear" else cosine_betas(T)
    return NoiseSchedule(alphas_cumprod=torch.cumprod(1 - betas, dim=0), prediction=prediction)


def kind_of(schedule: NoiseSchedule) -> str:
    return "linear" if torch.allclose(schedule.alphas_cumprod, make_schedule().alphas_cumprod) else "cosine"


class FakeDenoiser:
    """A fixed estimate g(x_t, t) of x_0, returned as eps or v as a trained network would.

    g is the optimal denoiser for N(0, 0.5^2) data plus a spatial, time-dependent term, so that its
    x_0 estimates sometimes leave [-1, 1] (clipping is exercised) and differ from step to step (the
    second-order terms are exercised). With ``x0_star`` set, g = x0_star: the exact model for data
    that is a single point. Basic arithmetic only, so any batch size gives bitwise the same output.
    """

    def __init__(self, schedule: NoiseSchedule, x0_star: torch.Tensor | None = None):
        self.schedule, self.x0_star = schedule, x0_star
        self.seen: list[tuple[int, torch.Tensor]] = []

    def __call__(self, xt: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        assert t.dtype == torch.long and t.shape == xt.shape[:1]
        self.seen.append((int(t[0]), xt.clone()))
        ab = append_dims(self.schedule.alphas_cumprod[t], xt.ndim)
        a, s = ab.sqrt(), (1 - ab).sqrt()
        x = xt.double()
        if self.x0_star is None:
            tau = append_dims(t.double() / T, xt.ndim)
            g = x * a * 0.25 / (0.25 * ab + 1 - ab) + 0.3 * (1 - tau) * torch.roll(x, 1, dims=-1)
        else:
            g = self.x0_star.double().expand_as(x)
        eps = (x - a * g) / s
        out = eps if self.schedule.prediction == "eps" else a * eps - s * g
        return out.float()


def noise(seed: int = 0, shape: tuple[int, ...] = SHAPE) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def generators(*seeds: int) -> PerSampleGenerator:
    return PerSampleGenerator.from_seeds(seeds)


def run_loop(scheduler, model, x: torch.Tensor, step) -> torch.Tensor:
    """The loop every scheduler tutorial writes; ``step(out, t, x)`` returns the next x."""
    for t in scheduler.timesteps:
        x = step(model(x, t.long().repeat(x.shape[0])), t, x)
    return x


# ---------------------------------------------------------------------------------------------
# Reference schedulers, configured like ours


def diffusers_kind(schedule: NoiseSchedule) -> str:
    """The prediction_type both MONAI and diffusers use for our eps / v."""
    return "epsilon" if schedule.prediction == "eps" else "v_prediction"


def monai_scheduler(cls, schedule: NoiseSchedule):
    """MONAI's scheduler with the schedule MONAI computes itself (float32), not ours."""
    name = "linear_beta" if kind_of(schedule) == "linear" else "cosine"
    return cls(
        num_train_timesteps=T,
        schedule=name,
        beta_start=LINEAR[0],
        beta_end=LINEAR[1],
        prediction_type=diffusers_kind(schedule),
        clip_sample=True,
    )


def diffusers_schedule(schedule: NoiseSchedule) -> dict:
    """diffusers' arguments for the same schedule, computed by diffusers itself (float32), not ours."""
    if kind_of(schedule) == "linear":
        return {"beta_schedule": "linear", "beta_start": LINEAR[0], "beta_end": LINEAR[1]}
    return {"beta_schedule": "squaredcos_cap_v2"}


# ---------------------------------------------------------------------------------------------
# Timesteps


@pytest.mark.parametrize(
    ("num_train", "steps"), [(1000, 10), (1000, 7), (1000, 3), (1000, 1), (100, 16), (100, 100)]
)
def test_timesteps_are_diffusers_trailing(num_train, steps):
    diffusers = pytest.importorskip("diffusers")
    ref = diffusers.DDPMScheduler(num_train_timesteps=num_train, timestep_spacing="trailing")
    ref.set_timesteps(steps)
    schedule = NoiseSchedule(alphas_cumprod=torch.cumprod(1 - linear_betas(num_train, 1e-4, 0.02), 0))
    ours = timesteps_for(schedule, steps)
    assert ours.tolist() == ref.timesteps.tolist()
    assert ours[0] == num_train - 1 and (ours.diff() < 0).all()


@pytest.mark.parametrize("steps", [0, T + 1, 2.5])
def test_steps_out_of_range(steps):
    with pytest.raises(InputError, match="between 1 and"):
        timesteps_for(make_schedule(), steps)


# ---------------------------------------------------------------------------------------------
# Cross-checks against the references


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_ddpm_full_chain_matches_monai(prediction):
    from monai.networks.schedulers import DDPMScheduler

    schedule = make_schedule(prediction=prediction)
    model, x = FakeDenoiser(schedule), noise()
    ref = monai_scheduler(DDPMScheduler, schedule)
    ref.set_timesteps(T)  # MONAI's DDPM steps t -> t-1, so only the full chain is comparable
    g = torch.Generator().manual_seed(1)
    expected = run_loop(ref, model, x, lambda out, t, x: ref.step(out, int(t), x, generator=g)[0])
    ours = sample_ddpm(
        model, x, schedule, timesteps_for(schedule, T), eta=1.0, generator=torch.Generator().manual_seed(1)
    )
    torch.testing.assert_close(ours, expected, atol=ATOL_FLOAT32_SCHEDULE, rtol=0)


@pytest.mark.parametrize("prediction", ["eps", "v"])
@pytest.mark.parametrize("steps", [10, 7])
def test_ddpm_respaced_matches_diffusers(prediction, steps):
    diffusers = pytest.importorskip("diffusers")
    schedule = make_schedule(prediction=prediction)
    model, x = FakeDenoiser(schedule), noise()
    ref = diffusers.DDPMScheduler(
        num_train_timesteps=T,
        **diffusers_schedule(schedule),
        prediction_type=diffusers_kind(schedule),
        variance_type="fixed_small",
        clip_sample=True,
        clip_sample_range=1.0,
        timestep_spacing="trailing",
    )
    ref.set_timesteps(steps)
    gs = generators(3, 4).generators  # diffusers takes a list, one generator per sample
    expected = run_loop(ref, model, x, lambda out, t, x: ref.step(out, t, x, generator=gs).prev_sample)
    ours = sample_ddpm(
        model, x, schedule, timesteps_for(schedule, steps), eta=1.0, generator=generators(3, 4)
    )
    torch.testing.assert_close(ours, expected, atol=ATOL, rtol=0)


@pytest.mark.parametrize("prediction", ["eps", "v"])
@pytest.mark.parametrize("eta", [0.0, 0.5])
def test_ddim_matches_monai(prediction, eta):
    from monai.networks.schedulers import DDIMScheduler

    schedule = make_schedule(prediction=prediction)
    model, x = FakeDenoiser(schedule), noise()
    ref = monai_scheduler(DDIMScheduler, schedule)
    ref.set_timesteps(10)
    # MONAI's step goes from t to t - T // steps; its own linspace timesteps are not spaced that way,
    # trailing ones are (when steps divides T).
    ref.timesteps = timesteps_for(schedule, 10)
    g = torch.Generator().manual_seed(2)
    expected = run_loop(ref, model, x, lambda out, t, x: ref.step(out, int(t), x, eta=eta, generator=g)[0])
    ours = sample_ddim(
        model, x, schedule, timesteps_for(schedule, 10), eta=eta, generator=torch.Generator().manual_seed(2)
    )
    torch.testing.assert_close(ours, expected, atol=ATOL, rtol=0)


@pytest.mark.parametrize("prediction", ["eps", "v"])
@pytest.mark.parametrize("kind", ["linear", "cosine"])
@pytest.mark.parametrize(("steps", "eta"), [(10, 0.0), (7, 0.0), (20, 0.0), (10, 1.0)])
def test_dpmpp_2m_matches_diffusers(prediction, kind, steps, eta):
    diffusers = pytest.importorskip("diffusers")
    schedule = make_schedule(kind, prediction)
    model, x = FakeDenoiser(schedule), noise()
    ref = diffusers.DPMSolverMultistepScheduler(
        num_train_timesteps=T,
        **diffusers_schedule(schedule),
        prediction_type=diffusers_kind(schedule),
        algorithm_type="dpmsolver++" if eta == 0 else "sde-dpmsolver++",
        solver_order=2,
        solver_type="midpoint",
        lower_order_final=True,
        final_sigmas_type="zero",
        timestep_spacing="trailing",
        # Static clipping to [-1, 1]: the percentile s is clamped to [1, sample_max_value] = {1}.
        thresholding=True,
        sample_max_value=1.0,
    )
    ref.set_timesteps(steps)
    gs = generators(5, 6).generators
    expected = run_loop(ref, model, x, lambda out, t, x: ref.step(out, t, x, generator=gs).prev_sample)
    ours = sample_dpmpp_2m(
        model, x, schedule, timesteps_for(schedule, steps), eta=eta, generator=generators(5, 6)
    )
    atol = ATOL_LOW_SNR if (kind, prediction) == ("cosine", "eps") else ATOL
    torch.testing.assert_close(ours, expected, atol=atol, rtol=0)


# ---------------------------------------------------------------------------------------------
# Closed form: data that is a single point x0*


STOCHASTIC = [("ddpm", 1.0), ("ddim", 0.5), ("dpm++", 1.0)]
DETERMINISTIC = [("ddim", 0.0), ("dpm++", 0.0)]


@pytest.mark.parametrize("prediction", ["eps", "v"])
@pytest.mark.parametrize(("name", "eta"), DETERMINISTIC + STOCHASTIC)
def test_point_data_closed_form(prediction, name, eta):
    """With the exact model eps = (x_t - sqrt(ab) x0*) / sqrt(1 - ab), every sampler ends on x0*.

    On the way, each x_t the network sees is sqrt(ab_t) x0* + sqrt(1 - ab_t) z: for the deterministic
    samplers z is the starting noise (they solve the probability-flow ODE exactly, its solution
    having a constant x_0), for the stochastic ones a fresh N(0, I) draw (they keep the marginals).
    """
    schedule = make_schedule(prediction=prediction)
    x0_star = 0.9 * torch.tanh(noise(7, SHAPE[1:]))
    model, x = FakeDenoiser(schedule, x0_star), noise()
    out = sample(name, model, x, schedule, timesteps_for(schedule, 10), eta=eta, generator=generators(8, 9))
    torch.testing.assert_close(out, x0_star.expand_as(out), atol=1e-4, rtol=0)

    ab0 = schedule.alphas_cumprod[T - 1]
    z0 = (x.double() - ab0.sqrt() * x0_star) / (1 - ab0).sqrt()
    assert [t for t, _ in model.seen] == timesteps_for(schedule, 10).tolist()
    for t, xt in model.seen:
        ab = schedule.alphas_cumprod[t]
        z = (xt.double() - ab.sqrt() * x0_star) / (1 - ab).sqrt()
        if (name, eta) in DETERMINISTIC:
            torch.testing.assert_close(z, z0, atol=1e-4, rtol=0)
        else:
            assert abs(z.mean()) < 0.2 and abs(z.std() - 1) < 0.2, (t, z.mean(), z.std())


# ---------------------------------------------------------------------------------------------
# Randomness, progress, errors


@pytest.mark.parametrize(("name", "eta"), STOCHASTIC)
def test_per_sample_generators_make_batches_irrelevant(name, eta):
    schedule = make_schedule()
    model = FakeDenoiser(schedule)

    def run(*seeds: int) -> torch.Tensor:
        x = randn_like(torch.empty((len(seeds), *SHAPE[1:])), generators(*seeds))
        return sample(
            name, model, x, schedule, timesteps_for(schedule, 5), eta=eta, generator=generators(*seeds)
        )

    alone, batch = run(0), run(0, 1, 2)
    assert torch.equal(alone[0], batch[0])
    assert torch.equal(run(0), alone)  # same seed, same voxels
    assert not torch.allclose(batch[0], batch[1])  # different seeds, different samples


def test_single_generator_is_reproducible():
    schedule, x = make_schedule(), noise()
    model = FakeDenoiser(schedule)
    ts = timesteps_for(schedule, 5)
    a = sample_ddpm(model, x, schedule, ts, eta=1.0, generator=torch.Generator().manual_seed(0))
    b = sample_ddpm(model, x, schedule, ts, eta=1.0, generator=torch.Generator().manual_seed(0))
    c = sample_ddpm(model, x, schedule, ts, eta=1.0, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.allclose(a, c)


def test_generator_must_match_batch():
    with pytest.raises(ValueError, match="one per sample"):
        randn_like(torch.empty(SHAPE), generators(0))


@pytest.mark.parametrize("name", DDPM_SAMPLERS)
def test_callback_reports_each_step_and_dtype_is_kept(name):
    schedule = make_schedule(prediction="v")
    calls: list[tuple[int, int]] = []
    out = sample(
        name,
        FakeDenoiser(schedule),
        noise(),
        schedule,
        timesteps_for(schedule, 4),
        callback=lambda i, n: calls.append((i, n)),
    )
    assert calls == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert out.shape == SHAPE and out.dtype == torch.float32
    assert out.abs().max() <= 1  # the last step returns the clipped x-hat_0


def test_unknown_sampler_names_the_choices():
    schedule = make_schedule()
    with pytest.raises(InputError, match=r"'lms' \(choose one of: ddpm, ddim, dpm\+\+, euler, heun\)$"):
        sample("lms", FakeDenoiser(schedule), noise(), schedule, timesteps_for(schedule, 4))
    with pytest.raises(InputError, match="did you mean 'ddim'"):
        sample("DDIM", FakeDenoiser(schedule), noise(), schedule, timesteps_for(schedule, 4))


@pytest.mark.parametrize(("name", "eta"), [("ddim", 1.5), ("ddim", -0.1), ("ddpm", -1.0), ("dpm++", -0.5)])
def test_eta_out_of_range(name, eta):
    schedule = make_schedule()
    with pytest.raises(InputError, match=f"eta must be .* for the {re.escape(name)} sampler"):
        sample(name, FakeDenoiser(schedule), noise(), schedule, timesteps_for(schedule, 4), eta=eta)


def test_schedule_prediction_is_followed():
    # The same denoiser read as eps and as v must give the same sample: the bookkeeping is consistent.
    eps, v = make_schedule(prediction="eps"), dataclasses.replace(make_schedule(), prediction="v")
    x, ts = noise(), timesteps_for(eps, 6)
    for name in DDPM_SAMPLERS:
        entry = SAMPLERS[name]
        a = entry.function(FakeDenoiser(eps), x, eps, ts, eta=0.0)
        b = entry.function(FakeDenoiser(v), x, v, ts, eta=0.0)
        torch.testing.assert_close(a, b, atol=1e-4, rtol=0)


# ---------------------------------------------------------------------------------------------
# The interface: timesteps as input, clip range, model keyword arguments, the registry


def test_timesteps_are_an_input():
    schedule = make_schedule()
    model = FakeDenoiser(schedule)
    visited = [T - 1, 60, 59, 20, 3]  # no spacing function makes these
    out = sample("ddim", model, noise(), schedule, torch.tensor(visited))
    assert [t for t, _ in model.seen] == visited and out.shape == SHAPE
    for bad in ([], [3, 20], [T, 5], [5, 5, 1], [4, -1]):
        with pytest.raises(ValueError, match="strictly decreasing"):
            sample("ddim", model, noise(), schedule, bad)


@pytest.mark.parametrize("name", DDPM_SAMPLERS)
def test_clip_range_is_a_parameter(name):
    """Point data x0* reaching |x| = 1.5: no clipping (a latent space) or a wide range ends on x0*;
    the default [-1, 1] keeps every x-hat_0, and so the result, inside [-1, 1]."""
    schedule = make_schedule()
    x0_star = 1.5 * torch.tanh(3 * noise(7, SHAPE[1:]))
    assert x0_star.abs().max() > 1.4
    x, ts = noise(), timesteps_for(schedule, 10)

    def run(**clip) -> torch.Tensor:
        model = FakeDenoiser(schedule, x0_star)
        return sample(name, model, x, schedule, ts, eta=0.0, generator=generators(1, 2), **clip)

    default = run()
    assert default.abs().max() <= 1
    torch.testing.assert_close(default, run(clip=X0_RANGE), atol=0, rtol=0)
    for unclipped in (run(clip=None), run(clip=(-2.0, 2.0))):
        torch.testing.assert_close(unclipped, x0_star.expand_as(unclipped), atol=1e-4, rtol=0)
    narrow = run(clip=(-0.5, 0.5))
    assert narrow.abs().max() <= 0.5


@pytest.mark.parametrize("name", DDPM_SAMPLERS)
def test_model_kwargs_reach_the_model_on_every_call(name):
    schedule = make_schedule()
    fake = FakeDenoiser(schedule)
    labels, mask = torch.tensor([3, 5]), torch.ones(SHAPE)
    calls: list[dict] = []

    def model(x: torch.Tensor, t: torch.Tensor, **kwargs) -> torch.Tensor:
        calls.append(kwargs)
        return fake(x, t)

    kwargs = {"class_labels": labels, "mask": mask}
    ts = timesteps_for(schedule, 5)
    sample(name, model, noise(), schedule, ts, eta=1.0, generator=generators(1, 2), model_kwargs=kwargs)
    assert len(calls) == 5
    for seen in calls:  # the same objects, untouched, on every call
        assert seen.keys() == {"class_labels", "mask"}
        assert seen["class_labels"] is labels and seen["mask"] is mask
    assert labels.tolist() == [3, 5] and bool((mask == 1).all())

    calls.clear()
    sample(name, model, noise(), schedule, timesteps_for(schedule, 3))
    assert calls == [{}, {}, {}]  # no model_kwargs: the model gets none


@pytest.mark.parametrize("name", DDPM_SAMPLERS)
def test_eta_none_is_the_entry_default(name):
    schedule = make_schedule()
    entry = SAMPLERS[name]

    def run(**eta) -> torch.Tensor:
        ts = timesteps_for(schedule, 4)
        return sample(name, FakeDenoiser(schedule), noise(), schedule, ts, generator=generators(1, 2), **eta)

    torch.testing.assert_close(run(), run(eta=entry.eta), atol=0, rtol=0)
    lo, hi = entry.eta_range
    assert entry.allows_eta(lo) and entry.allows_eta(min(hi, 7.0)) and not entry.allows_eta(lo - 0.1)


def test_config_accepts_exactly_the_registered_names_and_eta_bounds():
    from medddpm.config import SampleConfig, config_from_dict

    for name, entry in SAMPLERS.items():
        process = {"process": entry.process}
        assert config_from_dict({"sample": {"sampler": name}, "diffusion": process}).sample.sampler == name
        assert name in SampleConfig.model_fields["sampler"].description
        assert f"{name} {entry.eta:g}" in SampleConfig.model_fields["eta"].description
    with pytest.raises(
        InputError, match=r"sample.sampler.*unknown sampler 'lms' \(choose one of: ddpm, ddim"
    ):
        config_from_dict({"sample": {"sampler": "lms"}})
    with pytest.raises(InputError, match="sample.eta.*between 0 and 1 for the ddim sampler"):
        config_from_dict({"sample": {"sampler": "ddim", "eta": 1.5}})
    assert config_from_dict({"sample": {"sampler": "dpm++", "eta": 1.5}}).sample.eta == 1.5


@pytest.mark.parametrize(
    "first", ["medddpm.config", "medddpm.diffusion.schedule", "medddpm.diffusion.generate"]
)
def test_config_and_registry_import_in_any_order(first):
    # medddpm.config reads the registry, so nothing the registry imports may import medddpm.config
    code = f"import {first}, medddpm.config, medddpm.diffusion.samplers as s; assert 'ddim' in s.SAMPLERS"
    root = Path(__file__).parents[2]  # python -c imports from its working directory first
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, cwd=root)
