"""The process registry and the ddpm process's min-SNR-gamma loss weights."""

from __future__ import annotations

import pytest
import torch

from medddpm.config import DiffusionConfig, config_from_dict
from medddpm.diffusion.objective import diffusion_loss
from medddpm.diffusion.process import PROCESSES, build_process
from medddpm.diffusion.samplers import SAMPLERS
from medddpm.diffusion.schedule import NoiseSchedule, min_snr_weights
from medddpm.errors import InputError


@pytest.mark.parametrize("name", sorted(PROCESSES))
def test_each_process_has_fitting_default_and_preview_samplers(name):
    entry = PROCESSES[name]
    assert SAMPLERS[entry.sampler].process == name and SAMPLERS[entry.preview_sampler].process == name
    cfg = config_from_dict({"diffusion": {"process": name}})
    assert (cfg.sample.sampler, cfg.sample.steps) == (entry.sampler, entry.steps)
    assert build_process(cfg.diffusion).name == name
    # a sampler given explicitly stays, and steps given alone keep the process's sampler
    assert (
        config_from_dict({"diffusion": {"process": name}, "sample": {"steps": 7}}).sample.sampler
        == entry.sampler
    )


def test_a_config_pairing_a_sampler_with_the_wrong_process_is_refused():
    with pytest.raises(InputError, match="the dpm\\+\\+ sampler is for ddpm models.*rflow process"):
        config_from_dict({"diffusion": {"process": "rflow"}, "sample": {"sampler": "dpm++"}})
    with pytest.raises(InputError, match="min_snr_gamma weights the ddpm process only"):
        config_from_dict({"diffusion": {"process": "rflow", "min_snr_gamma": 5}})


def test_a_config_from_before_the_new_fields_loads_with_the_old_behaviour():
    from medddpm.config import saved_config_from_dict

    old = {"diffusion": {"num_train_timesteps": 1000, "schedule": "linear", "prediction": "eps"},
           "sample": {"sampler": "ddim", "steps": 10}}  # fmt: skip
    cfg = saved_config_from_dict(old)
    assert (cfg.diffusion.process, cfg.diffusion.min_snr_gamma, cfg.model.space) == ("ddpm", None, "pixel")
    assert cfg.diffusion.rflow_shift == 1.0
    # saved configs hold every field, so what a run used is never left to a later default
    assert {"process", "min_snr_gamma", "rflow_shift"} <= set(cfg.to_dict()["diffusion"])
    assert config_from_dict({"model": {"space": "wavelet"}}).to_dict()["model"]["space"] == "wavelet"


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_min_snr_weights_follow_their_formula(prediction):
    cfg = DiffusionConfig(prediction=prediction, min_snr_gamma=5.0)
    schedule = build_process(cfg)
    t = torch.tensor([0, 10, 100, 400, 999])
    ab = schedule.alphas_cumprod[t]
    snr = (ab / (1 - ab)).numpy()
    by_hand = [min(s, 5.0) / (s if prediction == "eps" else s + 1) for s in snr]
    torch.testing.assert_close(schedule.loss_weights(t), torch.tensor(by_hand, dtype=torch.float32))
    assert snr[0] > 5 > snr[-1]  # the weights clip at the low-noise end and are 1 (eps) at the noisy end
    assert schedule.loss_weights(t)[-1] == pytest.approx(
        1.0 if prediction == "eps" else snr[-1] / (snr[-1] + 1)
    )
    with pytest.raises(ValueError, match="prediction"):
        min_snr_weights(torch.tensor([1.0]), 5.0, "x0")


def test_the_loss_is_weighted_per_sample():
    weighted = build_process(DiffusionConfig(min_snr_gamma=5.0, prediction="eps"))
    plain = NoiseSchedule(weighted.alphas_cumprod)
    assert plain.loss_weights(torch.tensor([3])) is None

    def zero(x_t, t):
        return torch.zeros_like(x_t)

    x0 = torch.linspace(-1, 1, 2 * 4**3).reshape(2, 1, 4, 4, 4)
    g = [torch.Generator().manual_seed(3) for _ in range(3)]
    t = torch.randint(0, 1000, (2,), generator=g[2])
    eps = torch.randn(x0.shape, generator=g[2])
    per_sample = (eps**2).flatten(1).mean(1)  # a zero network's squared error against eps
    expected = (weighted.loss_weights(t) * per_sample).mean()
    torch.testing.assert_close(diffusion_loss(zero, weighted, x0, g[0]), expected)
    torch.testing.assert_close(diffusion_loss(zero, plain, x0, g[1]), per_sample.mean())


def test_scaled_linear_betas_are_monai_scaled_linear_beta():
    from monai.networks.schedulers import DDPMScheduler

    monai = DDPMScheduler(1000, schedule="scaled_linear_beta", beta_start=0.0005, beta_end=0.0195)
    ours = build_process(DiffusionConfig(schedule="scaled_linear", beta_start=0.0005, beta_end=0.0195))
    torch.testing.assert_close(ours.alphas_cumprod.float(), monai.alphas_cumprod, rtol=1e-5, atol=1e-7)
