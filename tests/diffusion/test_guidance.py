"""Classifier-free guidance: a model wrapper, so every registered sampler supports it."""

from __future__ import annotations

import pytest
import torch

from medddpm.diffusion.flow import RectifiedFlow
from medddpm.diffusion.guidance import Guided
from medddpm.diffusion.noise import PerSampleGenerator
from medddpm.diffusion.samplers import SAMPLERS, timesteps_for
from medddpm.diffusion.schedule import NoiseSchedule, linear_betas


def _process(name: str) -> NoiseSchedule | RectifiedFlow:
    """A small process of the kind sampler ``name`` fits."""
    if SAMPLERS[name].process == "rflow":
        return RectifiedFlow(num_timesteps=100)
    return NoiseSchedule(alphas_cumprod=torch.cumprod(1 - linear_betas(100, 1e-4, 0.02), 0))


class Toy(torch.nn.Module):
    """eps-hat depends on x, t and, when given, a per-sample condition c [B]; without c: unconditional."""

    def forward(self, x, t, c=None):
        shift = 0.0 if c is None else c.view(-1, *([1] * (x.ndim - 1)))
        return torch.tanh(0.3 * x + 0.001 * t.view(-1, *([1] * (x.ndim - 1))) + shift)


def _run(name, model, model_kwargs):
    x = PerSampleGenerator.from_seeds([1, 2]).randn((2, 1, 4, 4, 4))
    entry = SAMPLERS[name]
    sched = _process(name)
    return entry.function(
        model, x, sched, timesteps_for(sched, 6), eta=entry.eta,
        generator=PerSampleGenerator.from_seeds([5, 6]), model_kwargs=model_kwargs,
    )  # fmt: skip


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_guidance_one_is_conditional_and_zero_unconditional_for_every_sampler(name: str):
    model, kwargs = Toy(), {"c": torch.tensor([0.5, -0.7])}
    conditional = _run(name, model, kwargs)
    unconditional = _run(name, model, None)
    assert (conditional - unconditional).abs().max() > 1e-3
    assert torch.equal(_run(name, Guided(model, 1.0), kwargs), conditional)
    assert torch.equal(_run(name, Guided(model, 0.0), kwargs), unconditional)
    stronger = _run(name, Guided(model, 3.0), kwargs)
    assert not torch.equal(stronger, conditional)


def test_guided_output_is_the_cfg_formula_and_rescale_matches_lin_et_al():
    model = Toy()
    x, t, c = torch.randn(2, 1, 4, 4, 4), torch.tensor([10, 90]), torch.tensor([0.4, -0.2])
    cond, uncond = model(x, t, c=c), model(x, t)
    w = 2.5
    cfg = uncond + w * (cond - uncond)
    torch.testing.assert_close(Guided(model, w)(x, t, c=c), cfg)
    # Lin et al. 2024, Algorithm 2, by hand per sample.
    phi = 0.7
    expected = torch.stack(
        [phi * cfg[i] * (cond[i].std() / cfg[i].std()) + (1 - phi) * cfg[i] for i in range(2)]
    )
    torch.testing.assert_close(Guided(model, w, rescale=phi)(x, t, c=c), expected)
    with pytest.raises(ValueError):
        Guided(model, w, rescale=1.5)
